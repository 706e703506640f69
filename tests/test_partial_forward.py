"""tfadaqat.partial_forward: recorded and resumed forward passes against Keras' own pass."""

import numpy as np
import pytest

import tfadaqat
from tfadaqat import adaqat, partial_forward
from tfadaqat._compat import keras, tf


@pytest.fixture(scope="module")
def mobilenet():
    """keras.applications' MobileNetV2 (residual Adds, BatchNormalization, ReLU6), quantized
    with AdaQAT at mixed bits, and a batch of images."""
    tf.keras.utils.set_random_seed(3)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                           classes=10, classifier_activation=None)
    qmodel = tfadaqat.quantize_model(model, "adaqat", weight_bits=4, activation_bits=5)
    images = tf.random.stateless_uniform((8, 32, 32, 3), seed=(5, 6))
    qmodel.initialize_quantizers(images)
    return qmodel, images


def _moving_statistics(model):
    return [variable.numpy().copy() for variable in partial_forward.moving_statistics(model, 0)]


def test_execution_order_has_every_non_input_node(mobilenet):
    qmodel, _ = mobilenet
    order = partial_forward.execution_order(qmodel)
    nodes = [node for nodes in qmodel._nodes_by_depth.values() for node in nodes]
    assert len(order) == len([node for node in nodes if not node.is_input]) > 100
    assert len({id(node) for node in order}) == len(order)


def test_recorded_forward_is_keras_forward_and_records_every_layer(mobilenet):
    qmodel, images = mobilenet
    expected = qmodel(images, training=True).numpy()
    outputs, record = qmodel.recorded_forward(images)
    np.testing.assert_array_equal(outputs.numpy(), expected)
    for node in partial_forward.execution_order(qmodel):
        for tensor_id in node.flat_output_ids:
            assert tensor_id in record.outputs, node.layer.name


def test_resumed_forward_equals_full_forward_and_changes_no_statistics(mobilenet):
    qmodel, images = mobilenet
    _, record = qmodel.recorded_forward(images)
    expected = qmodel(images, training=True).numpy()
    kept = _moving_statistics(qmodel)
    order = partial_forward.execution_order(qmodel)
    for start in (0, 1, len(order) // 3, len(order) // 2, len(order) - 1):
        resumed = qmodel.resumed_forward(images, record, start).numpy()
        np.testing.assert_array_equal(resumed, expected, err_msg=f"start {start}")
    for before, after in zip(kept, _moving_statistics(qmodel)):
        np.testing.assert_array_equal(after, before)
    # A full training-mode call does write them (so the check above can fail).
    qmodel(images, training=True)
    assert any(not np.array_equal(before, after)
               for before, after in zip(kept, _moving_statistics(qmodel)))


def test_resumed_forward_uses_the_record_before_the_restart_point(mobilenet):
    """A record from other inputs changes a resumed pass only through the layers it skips."""
    qmodel, images = mobilenet
    other = tf.random.stateless_uniform(images.shape, seed=(7, 8))
    _, other_record = qmodel.recorded_forward(other)
    expected = qmodel(images, training=True).numpy()
    order = partial_forward.execution_order(qmodel)
    np.testing.assert_array_equal(qmodel.resumed_forward(images, other_record, 0).numpy(),
                                  expected)
    assert not np.array_equal(
        qmodel.resumed_forward(images, other_record, len(order) // 2).numpy(), expected)


def test_restart_points_golden():
    points, branch = partial_forward.restart_points([5, 1, 9, 3, 7], 2)
    assert (points, branch) == ([1, 5], [1, 0, 1, 0, 1])
    points, branch = partial_forward.restart_points([4, 4, 2], 8)
    assert (points, branch) == ([2, 4], [1, 1, 0])
    assert partial_forward.restart_points([6, 2], 1) == ([2], [0, 0])
    assert partial_forward.restart_points([], 3) == ([], [])
    with pytest.raises(ValueError, match="count must be >= 1, got 0"):
        partial_forward.restart_points([1], 0)


def test_first_positions_names_a_layer_the_model_does_not_call(mobilenet):
    qmodel, _ = mobilenet
    with pytest.raises(ValueError, match="layer 'stranger' is not called"):
        partial_forward.first_positions(qmodel, [keras.layers.Dense(2, name="stranger")])


def test_probe_loss_is_the_full_forward_loss_with_the_chosen_tensor_lowered(mobilenet):
    """The oracle: Keras' own full forward pass with the probed tensor one bit lower, for a
    tensor in every restart point's stretch (the others frozen, so that it is the one probed)."""
    qmodel, images = mobilenet
    labels = tf.constant(np.arange(8) % 10)
    qmodel.compile(optimizer="sgd",
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rule = adaqat.AdaQATRule(learning_rate=1.0)
    tensors = adaqat.learned_tensors(qmodel)
    restarts, restart_of = partial_forward.restart_points(
        partial_forward.first_positions(qmodel, [t.layer for t in tensors]),
        adaqat.PROBE_RESTART_POINTS)
    assert len(restarts) == adaqat.PROBE_RESTART_POINTS
    frozen = [float(t.variables["frozen"].numpy()) for t in tensors]
    for branch in range(len(restarts)):
        chosen = max(index for index in range(len(tensors)) if restart_of[index] == branch)
        for index, tensor in enumerate(tensors):
            tensor.variables["frozen"].assign(0.0 if index == chosen else 1.0)
        outputs, record = qmodel.recorded_forward(images)
        loss = qmodel.plain_loss(labels, outputs, None)
        before = [float(t.variables["relaxed_bits"].numpy()) for t in tensors]
        bits = int(tensors[chosen].quantizer.bit_width(tensors[chosen].variables))
        kept = _moving_statistics(qmodel)
        probe_loss = float(adaqat.probe(qmodel, rule, images, labels, None, loss, record))
        for before_value, after_value in zip(kept, _moving_statistics(qmodel)):
            np.testing.assert_array_equal(after_value, before_value)
        after = [float(t.variables["relaxed_bits"].numpy()) for t in tensors]
        assert [index for index in range(len(tensors)) if after[index] != before[index]] \
            == [chosen]
        relaxed = tensors[chosen].variables["relaxed_bits"]
        relaxed.assign(float(bits - 1))
        expected = float(qmodel.plain_loss(labels, qmodel(images, training=True), None))
        relaxed.assign(after[chosen])
        assert probe_loss == expected, f"branch {branch}"  # the same ops: the same bits
        assert probe_loss != float(loss)  # one bit less shows
    for tensor, value in zip(tensors, frozen):
        tensor.variables["frozen"].assign(value)
