"""tfadaqat.keras3: Keras 3 models rebuilt in tf-keras compute what they computed, and
quantize_model takes them."""

import keras as keras3  # Keras 3, installed beside tf-keras
import numpy as np
import pytest

import tfadaqat
from tfadaqat import export
from tfadaqat._compat import keras
from tfadaqat.keras3 import from_keras3


def _images(shape, count=8, high=1.0, seed=0):
    return np.random.default_rng(seed).uniform(0.0, high, (count,) + shape).astype(np.float32)


def _branchy():
    """Functional: conv-BN-ReLU, a depthwise branch, Add, Keras 3 ops written as Python
    operators, a hard-swish activation (Keras 3's, which tf-keras lacks), a regularizer."""
    inputs = keras3.Input((8, 8, 3), name="image")
    x = keras3.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv",
                             kernel_regularizer=keras3.regularizers.L2(1e-3))(inputs)
    x = keras3.layers.BatchNormalization(name="bn")(x)
    x = keras3.layers.ReLU(name="relu")(x)
    y = keras3.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras3.layers.Add(name="add")([x, y])
    x = keras3.layers.Activation("hard_silu", name="hard_swish")(x * 2.0 - 1.0)
    x = keras3.layers.Conv2D(4, 1, activation="hard_sigmoid", name="gate")(x)
    x = keras3.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras3.Model(inputs, keras3.layers.Dense(5, name="logits")(x), name="branchy")
    rng = np.random.default_rng(1)
    model.get_layer("bn").set_weights([rng.uniform(0.5, 1.5, 4), rng.normal(size=4),
                                       rng.normal(size=4), rng.uniform(0.5, 1.5, 4)])
    return model


def test_a_functional_model_computes_the_same_after_the_rebuild():
    model = _branchy()
    rebuilt = from_keras3(model)
    x = _images((8, 8, 3), high=4.0)  # inputs reaching both sides of the hard-swish kinks
    np.testing.assert_allclose(rebuilt.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert isinstance(rebuilt, keras.Model) and rebuilt.name == "branchy"
    assert len(rebuilt.losses) == 1  # the L2 regularizer came along
    np.testing.assert_allclose(float(rebuilt.losses[0]),
                               1e-3 * np.sum(model.get_layer("conv").get_weights()[0] ** 2),
                               rtol=1e-5)


def test_a_sequential_model_computes_the_same_after_the_rebuild():
    model = keras3.Sequential([keras3.Input((6,)), keras3.layers.Dense(4, activation="relu"),
                               keras3.layers.Dense(3)], name="mlp")
    x = _images((6,))
    np.testing.assert_allclose(from_keras3(model).predict(x, verbose=0),
                               model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name, options", [
    ("MobileNetV2", {"alpha": 0.35}),
    ("MobileNetV3Small", {"alpha": 0.75}),  # Rescaling, hard-swish, squeeze-excite
    ("EfficientNetB0", {}),                 # Normalization, swish, Multiply, Dropout
])
def test_keras3_applications_compute_the_same_after_the_rebuild(name, options):
    model = getattr(keras3.applications, name)(input_shape=(32, 32, 3), weights=None,
                                                classes=10, classifier_activation=None,
                                                **options)
    x = _images((32, 32, 3), count=4, high=255.0)
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(from_keras3(model).predict(x, verbose=0), expected,
                               rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_quantize_model_takes_a_keras3_model_and_the_result_exports(tmp_path):
    model = _branchy()
    qmodel = tfadaqat.quantize_model(model, "lsq", weight_bits=6, activation_bits=6)
    x = _images((8, 8, 3), count=16, high=4.0)
    qmodel.initialize_quantizers(x)
    report = export.export_tflite(qmodel, str(tmp_path / "m.tflite"), verify_with=x)
    assert not report.float_ops
    assert report.max_output_difference <= 2.0 + 1e-4


def test_layers_without_a_tf_keras_counterpart_are_all_named():
    class Doubling(keras3.layers.Layer):
        def call(self, inputs):
            return inputs * 2.0

    inputs = keras3.Input((4,))
    x = Doubling(name="doubling")(inputs)
    x = keras3.layers.Dense(3, activation="celu", name="dense_celu")(x)
    x = keras3.ops.exp(x)
    model = keras3.Model(inputs, x)
    with pytest.raises(ValueError) as raised:
        tfadaqat.quantize_model(model, "lsq")
    message = str(raised.value)
    assert "'doubling'" in message and "Doubling" in message
    assert "'dense_celu'" in message and "activation 'celu'" in message
    assert "Exp" in message
    assert "Rebuild those parts with standard layers" in message
    with pytest.raises(ValueError, match="not a Keras 3 model"):
        from_keras3(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
