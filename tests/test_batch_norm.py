"""tfadaqat.batch_norm: moving statistics re-estimated with the trained grids."""

import numpy as np
import pytest

import tfadaqat
from tfadaqat._compat import keras, tfmot
from tfadaqat.batch_norm import batch_norm_layers
from tfadaqat.tensors import unwrapped_layer

layers = keras.layers


def _model():
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(3, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(momentum=0.99, name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x))


def _two_layer_model():
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(3, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x))


def _images(count=96, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (count, 6, 6, 2)).astype(np.float32)


def _population_moments(values):
    flat = values.reshape(-1, values.shape[-1]).astype(np.float64)
    return flat.mean(axis=0), flat.var(axis=0)


def test_statistics_are_those_of_the_inference_mode_input_layer_by_layer():
    keras.utils.set_random_seed(0)
    model = _two_layer_model()
    images = _images()
    # Statistics far from the data, so the second layer's input depends on the first's.
    model.get_layer("bn1").moving_variance.assign(np.full(3, 9.0, np.float32))
    assert tfadaqat.reestimate_batch_norm(model, images, batches=3, batch_size=32) == 3
    # Oracle: sub-models in inference mode and NumPy moments over all 96 images; bn2's input
    # is computed with bn1's re-estimated statistics.
    conv1 = keras.Model(model.inputs, model.get_layer("conv1").output).predict(images,
                                                                                verbose=0)
    mean1, variance1 = _population_moments(conv1)
    bn1, bn2 = model.get_layer("bn1"), model.get_layer("bn2")
    np.testing.assert_allclose(bn1.moving_mean.numpy(), mean1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn1.moving_variance.numpy(), variance1, rtol=1e-4, atol=1e-6)
    conv2 = keras.Model(model.inputs, model.get_layer("conv2").output).predict(images,
                                                                                verbose=0)
    mean2, variance2 = _population_moments(conv2)
    np.testing.assert_allclose(bn2.moving_mean.numpy(), mean2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn2.moving_variance.numpy(), variance2, rtol=1e-4, atol=1e-6)
    # Measured in one pass, with bn1 still at its old statistics, bn2 would differ by more
    # than the tolerance above: the order matters.
    saved = [w.numpy() for w in model.weights]
    bn1.moving_variance.assign(np.full(3, 9.0, np.float32))
    one_pass_conv2 = keras.Model(model.inputs, model.get_layer("conv2").output)(
        images, training=False).numpy()
    assert np.abs(_population_moments(one_pass_conv2)[1] - variance2).max() > 1e-2
    for weight, value in zip(model.weights, saved):
        weight.assign(value)
    assert "call" not in vars(bn1) and "call" not in vars(bn2)  # the recorders are removed


def test_batches_are_combined_exactly_whatever_their_sizes():
    keras.utils.set_random_seed(0)
    model = _model()
    images = _images(90)
    tfadaqat.reestimate_batch_norm(model, images, batches=10, batch_size=32)  # 32, 32, 26
    conv = keras.Model(model.inputs, model.get_layer("conv").output).predict(images, verbose=0)
    mean, variance = _population_moments(conv)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), variance, rtol=1e-4, atol=1e-6)
    assert bn.momentum == 0.99


def test_a_quantized_model_changes_only_its_moving_statistics():
    keras.utils.set_random_seed(0)
    images = _images()
    qmodel = tfadaqat.quantize_model(_model(), "dq")
    qmodel.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    qmodel.fit(images, np.arange(len(images)) % 4, batch_size=32, epochs=1, verbose=0)
    statistics = {id(v) for layer in batch_norm_layers(qmodel)
                  for v in (layer.moving_mean, layer.moving_variance)}
    assert len(statistics) == 2
    before = {id(v): v.numpy().copy() for v in qmodel.weights}
    tfadaqat.reestimate_batch_norm(qmodel, images, batches=3, batch_size=32)
    for variable in qmodel.weights:
        if id(variable) in statistics:
            assert not np.array_equal(variable.numpy(), before[id(variable)]), variable.name
        else:
            np.testing.assert_array_equal(variable.numpy(), before[id(variable)],
                                          err_msg=variable.name)
    # Oracle: the population moments of the quantized conv's inference-mode output.
    outputs = keras.Model(qmodel.inputs, qmodel.get_layer("quant_conv").output)(
        images, training=False).numpy()
    mean, variance = _population_moments(outputs)
    layer = unwrapped_layer(qmodel.get_layer("bn"))  # after a conv: not wrapped
    np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), variance, rtol=1e-4, atol=1e-6)


def test_a_tfmot_model_gets_the_statistics_of_its_inference_mode_inputs():
    keras.utils.set_random_seed(0)
    images = _images()
    with tfmot.quantization.keras.quantize_scope():
        qmodel = tfmot.quantization.keras.quantize_model(_two_layer_model())
    qmodel.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    qmodel.fit(images, np.arange(len(images)) % 4, batch_size=32, epochs=1, verbose=0)
    before = {v.name: v.numpy().copy() for v in qmodel.weights}
    tfadaqat.reestimate_batch_norm(qmodel, images, batches=3, batch_size=32)
    changed = {v.name for v in qmodel.weights if not np.array_equal(v.numpy(), before[v.name])}
    assert changed == {"bn1/moving_mean:0", "bn1/moving_variance:0", "bn2/moving_mean:0",
                       "bn2/moving_variance:0"}
    for conv, bn in (("quant_conv1", "quant_bn1"), ("quant_conv2", "quant_bn2")):
        outputs = keras.Model(qmodel.inputs, qmodel.get_layer(conv).output)(
            images, training=False).numpy()
        mean, variance = _population_moments(outputs)
        layer = unwrapped_layer(qmodel.get_layer(bn))
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.moving_variance.numpy(), variance, rtol=1e-4,
                                   atol=1e-6)


def test_iterable_of_batches_and_the_batch_limit():
    keras.utils.set_random_seed(0)
    model = _model()
    images = _images()
    # A one-shot generator: read once, however many layers need a pass over it.
    pairs = ((images[i:i + 32], np.zeros(32)) for i in range(0, 96, 32))
    assert tfadaqat.reestimate_batch_norm(model, pairs, batches=2) == 2
    mean_from_pairs = model.get_layer("bn").moving_mean.numpy().copy()
    tfadaqat.reestimate_batch_norm(model, images[:64], batches=5, batch_size=32)
    np.testing.assert_allclose(model.get_layer("bn").moving_mean.numpy(), mean_from_pairs,
                               rtol=1e-6)


def test_bad_arguments_and_empty_data_leave_the_model_unchanged():
    model = _model()
    bn = model.get_layer("bn")
    before = bn.moving_variance.numpy().copy()
    with pytest.raises(ValueError, match="batches must be a positive integer"):
        tfadaqat.reestimate_batch_norm(model, _images(), batches=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        tfadaqat.reestimate_batch_norm(model, _images(), batch_size=0)
    with pytest.raises(ValueError, match="no data"):
        tfadaqat.reestimate_batch_norm(model, [])
    bad = _images()
    bad[5, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="'bn' has non-finite"):
        tfadaqat.reestimate_batch_norm(model, bad, batch_size=32)
    np.testing.assert_array_equal(bn.moving_variance.numpy(), before)
    assert bn.momentum == 0.99


def test_a_model_without_batch_normalization_is_left_alone():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, layers.Dense(2)(inputs))
    assert tfadaqat.reestimate_batch_norm(model, np.ones((8, 4), np.float32)) == 0
