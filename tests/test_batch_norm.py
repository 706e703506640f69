"""tfadaqat.batch_norm: moving statistics re-estimated with the trained grids."""

import numpy as np
import pytest

import tfadaqat
from tfadaqat._compat import keras
from tfadaqat.batch_norm import batch_norm_layers

layers = keras.layers


def _model():
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(3, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(momentum=0.99, name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x))


def _images(count=96, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (count, 6, 6, 2)).astype(np.float32)


def test_statistics_are_the_average_batch_statistics():
    keras.utils.set_random_seed(0)
    model = _model()
    images = _images()
    used = tfadaqat.reestimate_batch_norm(model, images, batches=2, batch_size=32)
    assert used == 2
    # Oracle: the conv output computed by a sub-model, its biased moments per batch in NumPy.
    conv = keras.Model(model.inputs, model.get_layer("conv").output).predict(images, verbose=0)
    batches = [conv[:32], conv[32:64]]
    means = [batch.mean(axis=(0, 1, 2)) for batch in batches]
    # Keras keeps the Bessel-corrected variance (n / (n - 1)) in its moving statistics.
    variances = [batch.reshape(-1, 3).var(axis=0, ddof=1) for batch in batches]
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean(means, axis=0), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean(variances, axis=0),
                               rtol=1e-4, atol=1e-6)
    assert bn.momentum == 0.99  # restored


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


def test_iterable_of_batches_and_the_batch_limit():
    keras.utils.set_random_seed(0)
    model = _model()
    images = _images()
    pairs = [(images[i:i + 32], np.zeros(32)) for i in range(0, 96, 32)]
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
