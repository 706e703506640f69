"""tfadaqat.oqat.supernet: shared steps, slicing, sandwich training, inheritance, extraction."""

import numpy as np
import pytest

import tfadaqat
from tfadaqat._compat import keras, tf
from tfadaqat.oqat import (SearchSpace, SubnetConfig, SupernetSpec, block_shapes, network_cost,
                           subnet_cost)
from tfadaqat.oqat.supernet import (Supernet, extract, inherit, recalibrate, shared_steps,
                                    step_values)

SPACE = SearchSpace(stages=2, depths=(1, 2))
SPEC = SupernetSpec(input_shape=(8, 8, 3), stem_channels=8, stage_channels=(8, 16),
                    stage_strides=(1, 2))


def _data(count=32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(count, 8, 8, 3)).astype(np.float32),
            rng.integers(0, 10, count).astype(np.int32))


def _compiled(images, optimizer, bits=4, edge_bits=None):
    """A supernet built and with its steps initialised on `images`, compiled for labels."""
    net = Supernet(SPEC, SPACE, bits=bits, edge_bits=edge_bits)
    net(images[:1])
    net.initialize_steps(images)
    net.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return net


def _trained(bits=4, edge_bits=None):
    keras.utils.set_random_seed(0)
    images, labels = _data()
    net = _compiled(images, keras.optimizers.Adam(1e-2), bits, edge_bits)
    net.fit(images, labels, batch_size=16, epochs=2, verbose=0)
    return net, images


def test_two_subnets_read_and_train_the_same_step_variable():
    net, images = _trained()
    step = net.slots[0][0].steps["expand_conv"].log_step
    gradients = []
    for config in (SPACE.largest(), SPACE.smallest()):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(net(images, config=config) ** 2)
        gradients.append(float(tape.gradient(loss, step)))
    assert all(g != 0.0 for g in gradients) and gradients[0] != gradients[1]
    steps = [v for v in net.trainable_variables if v is step]
    assert len(steps) == 1  # one variable, not one per sub-network


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_extracted_subnet_has_the_config_shapes_and_the_supernet_outputs(seed):
    net, images = _trained()
    config = SPACE.sample(np.random.default_rng(seed))
    recalibrate(net, config, [images[:16], images[16:]])
    model = extract(net, config)
    for block in block_shapes(config, SPEC):
        layer = model.get_layer(f"quant_{block.name}_depthwise_conv")
        kernel, = [w for w in layer.weights if w.name.endswith("depthwise_kernel:0")]
        assert kernel.shape == (block.kernel_size, block.kernel_size, block.hidden_channels, 1)
    expected = net(images, config=config).numpy()
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, rtol=0, atol=1e-5)
    kernels = {layer: tensors["kernel"] for layer, tensors in tfadaqat.bit_widths(model).items()
               if "kernel" in tensors}
    assert set(kernels.values()) == {4}


def test_extracted_subnet_is_summarised_and_its_float_stem_named_by_export(tmp_path):
    net, images = _trained()
    config = SPACE.smallest()
    recalibrate(net, config, [images])
    model = extract(net, config)
    table = tfadaqat.summary(model, print_fn=None)
    rows = {row["layer"]: row for row in table["layers"]}
    assert rows["stem_conv"]["weight_bits"] is None  # float, as OQAT keeps it
    assert rows["stage1_block1_expand_conv"]["weight_bits"] == 4
    # OQAT's float stem has no integer kernel: export says so.
    with pytest.raises(ValueError, match="'stem_conv' .* is not quantized"):
        tfadaqat.export_tflite(model, str(tmp_path / "subnet.tflite"))
    assert not (tmp_path / "subnet.tflite").exists()


def test_subnet_of_an_8_bit_edged_supernet_equals_it_and_exports_to_integer_tflite(tmp_path):
    net, images = _trained(bits=3, edge_bits=8)
    config = SPACE.sample(np.random.default_rng(4))
    recalibrate(net, config, [images])
    model = extract(net, config)
    np.testing.assert_allclose(model.predict(images, verbose=0),
                               net(images, config=config).numpy(), rtol=0, atol=1e-5)
    bits = tfadaqat.bit_widths(model)
    assert bits["image_quantize_point"] == {"output": 8}
    assert bits["stem_conv"] == {"kernel": 8} and bits["classifier"] == {"kernel": 8,
                                                                          "output": 8}
    assert bits["stem_relu"] == {"output": 3} and bits["pool"] == {"output": 3}
    whole, blocks = network_cost(config, SPEC, SPACE, 3, 8), subnet_cost(
        config, SPEC, weight_bits=3, activation_bits=3)
    assert whole.bitops == tfadaqat.cost(model).bitops
    # The stem (8-bit input and kernel, 3-bit output) and the classifier on top of the blocks:
    stem = 8 * 8 * 3 * 3 * 3 * 8 * (8 * 8)
    classifier = 16 * 10 * (8 * 3)
    assert whole.bitops == blocks["bitops"] + stem + classifier
    assert {b for name, roles in bits.items() if name.startswith("stage")
            for b in roles.values()} == {3}
    report = tfadaqat.export_tflite(model, str(tmp_path / "subnet.tflite"), verify_with=images)
    assert report.max_output_difference <= 2.0 + 1e-4  # in output quantization steps
    stored = {row.layer: row for row in report.layers}
    assert stored["stem_conv"].bits == 8 and stored["classifier"].bits == 8
    for row in report.layers:
        assert 0 < row.distinct_values <= row.allowed_values <= 2**row.bits
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= set(report.ops)


def test_inheritance_keeps_the_edge_steps():
    net, _ = _trained(bits=4, edge_bits=8)
    child = inherit(net, 2)
    assert child.edge_bits == 8 and child.bits == 2
    for name, step in net.edge_steps.items():
        assert float(child.edge_steps[name].step) == float(step.step)
    assert step_values(child)["pool"] == pytest.approx(4 * step_values(net)["pool"])


def test_recalibration_sets_the_moving_statistics_of_the_config():
    net, images = _trained()
    config = SPACE.largest()
    recalibrate(net, config, [images])
    batch_norm = net.slots[0][0].project_bn
    # The project BN input, recomputed: the sub-network's forward up to that point.
    moments = []
    net._forward(images, net.config_tensors(config), batch_statistics=True, moments=moments)
    (_, mean, variance), = [(b, m, v) for b, m, v in moments if b is batch_norm]
    np.testing.assert_allclose(batch_norm.moving_mean.numpy(), mean.numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(batch_norm.moving_variance.numpy(), variance.numpy(),
                               rtol=1e-5, atol=1e-6)


def test_one_sandwich_step_updates_every_slot():
    keras.utils.set_random_seed(0)
    images, labels = _data(16)
    net = _compiled(images, keras.optimizers.SGD(0.1))
    before = [v.numpy().copy() for v in net.trainable_variables]
    history = net.fit(images, labels, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, net.trainable_variables)]
    assert sum(changed) >= 0.9 * len(changed)  # the largest sub-network reaches every slot


def test_sandwich_training_traces_its_step_once():
    # The first call of the train function runs eagerly and creates the optimizer's slots and
    # the metrics; the traced step is then traced once (twice before: tf.function traces
    # again after a call that created variables). 4 steps: 1 eager call + 1 trace.
    keras.utils.set_random_seed(0)
    images, labels = _data(32)
    net = _compiled(images, keras.optimizers.SGD(0.1))
    calls = []
    step = net.train_step
    net.train_step = lambda data: calls.append(1) or step(data)
    history = net.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert int(net.optimizer.iterations.numpy()) == 4
    assert len(calls) == 2
    assert net.train_function.experimental_get_tracing_count() == 1


def test_inheritance_doubles_every_step_and_keeps_the_weights():
    net, images = _trained(bits=4)
    child = inherit(net, 3)
    assert child.bits == 3
    parent_steps, child_steps = step_values(net), step_values(child)
    assert parent_steps.keys() == child_steps.keys() and len(parent_steps) == 2 + 7 * 4
    for name, value in parent_steps.items():
        assert child_steps[name] == pytest.approx(2 * value, rel=1e-6)
    steps = {id(v) for v in shared_steps(net).values()}
    for parent, inherited in zip(net.variables, child.variables):
        if id(parent) not in steps:
            np.testing.assert_array_equal(parent.numpy(), inherited.numpy())
    assert step_values(inherit(net, 2))["pool"] == pytest.approx(4 * parent_steps["pool"])


@pytest.mark.parametrize("bits, message", [(4, r"bits must be an integer in \[2, 3\]"),
                                           (1, r"bits must be an integer in \[2, 3\]"),
                                           (5, r"below the supernet's 4 bits")])
def test_inheritance_to_a_bad_bit_width_is_refused(bits, message):
    net = Supernet(SPEC, SPACE, bits=4)
    with pytest.raises(ValueError, match=message):
        inherit(net, bits)


def test_a_config_outside_the_space_is_refused():
    net = Supernet(SPEC, SPACE, bits=4)
    outside = SubnetConfig((3, 1), ((3, 3, 3), (3,)), ((3, 3, 3), (3,)))
    with pytest.raises(ValueError, match=r"config.depths\[0\]=3 is outside the search space"):
        net(np.zeros((1, 8, 8, 3), np.float32), config=outside)
    with pytest.raises(ValueError, match=r"bits must be an integer in \[2, 8\]"):
        Supernet(SPEC, SPACE, bits=1)
    with pytest.raises(ValueError, match=r"edge_bits must be None or an integer in \[2, 8\]"):
        Supernet(SPEC, SPACE, bits=4, edge_bits=16)


@pytest.mark.parametrize("distillation", [False, True])
def test_sandwich_loss_with_and_without_in_place_distillation(distillation):
    keras.utils.set_random_seed(0)
    images, labels = _data(16)
    net = Supernet(SPEC, SPACE, bits=4, random_subnets=0, distillation=distillation)
    net(images[:1])
    net.initialize_steps(images)
    largest, smallest = (net._forward(images, net.config_tensors(config), batch_statistics=True)
                         for config in (SPACE.largest(), SPACE.smallest()))
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if distillation:  # the smallest learns the largest's predictions, not the labels
        second = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
            tf.nn.softmax(largest), smallest))
    else:
        second = cross_entropy(labels, smallest)
    expected = (float(cross_entropy(labels, largest)) + float(second)) / 2
    net.compile(keras.optimizers.SGD(0.0), cross_entropy)
    history = net.fit(images, labels, batch_size=16, epochs=1, verbose=0)
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)
    assert inherit(net, 3).distillation is distillation
