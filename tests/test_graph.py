"""tfadaqat.graph: the flattened model computes what the original computes, piece by piece."""

import numpy as np
import pytest

import tfadaqat
from tfadaqat._compat import keras, tf

layers = keras.layers


def _rewritten(model, x):
    flat = tfadaqat.flatten_model(model)
    np.testing.assert_allclose(flat.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)
    return {type(layer).__name__ for layer in flat.layers}, {layer.name for layer in flat.layers}


def _images(shape=(6, 6, 3), count=4):
    return np.random.default_rng(0).normal(size=(count,) + shape).astype(np.float32)


def test_separable_conv_becomes_depthwise_then_pointwise():
    inputs = keras.Input((6, 6, 3))
    outputs = layers.SeparableConv2D(5, 3, depth_multiplier=2, padding="same",
                                     activation="relu", name="sep")(inputs)
    classes, names = _rewritten(keras.Model(inputs, outputs), _images())
    assert "SeparableConv2D" not in classes and {"sep_depthwise", "sep"} <= names


@pytest.mark.parametrize("activation", ["softmax", "sigmoid", "tanh", "gelu", "swish"])
def test_non_relu_activation_of_a_weight_layer_gets_its_own_layer(activation):
    inputs = keras.Input((4,))
    outputs = layers.Dense(3, activation=activation, name="head")(inputs)
    classes, names = _rewritten(keras.Model(inputs, outputs), _images((4,)))
    assert "head" in names and f"head_{activation}" in names
    if activation == "swish":  # x * sigmoid(x)
        assert "Multiply" in classes and "head_swish_sigmoid" in names


def test_relu_stays_fused_in_its_weight_layer():
    inputs = keras.Input((4,))
    outputs = layers.Dense(3, activation="relu", name="hidden")(inputs)
    classes, names = _rewritten(keras.Model(inputs, outputs), _images((4,)))
    assert "hidden" in names and "hidden_relu" not in names and "Activation" not in classes


def test_tf_operators_become_layers():
    inputs = keras.Input((4, 4, 3))
    x = inputs * 0.5 + 3.0                           # ChannelAffine x2
    y = tf.nn.relu6(x) / 6.0                         # relu6 op stays a TFOpLambda; / -> affine
    z = x * y + x                                    # Multiply, Add
    w = 2.0 - z                                      # ChannelAffine(-1, 2)
    model = keras.Model(inputs, w)
    classes, _ = _rewritten(model, _images((4, 4, 3)))
    assert {"ChannelAffine", "Multiply", "Add"} <= classes


def test_keras_applications_custom_layers_are_rewritten():
    from tf_keras.src.applications.convnext import LayerScale
    from tf_keras.src.applications.inception_resnet_v2 import CustomScaleLayer
    inputs = keras.Input((4, 4, 3))
    scaled = LayerScale(0.5, 3, name="layer_scale")(inputs)
    outputs = CustomScaleLayer(0.17, name="residual")([inputs, scaled])
    classes, names = _rewritten(keras.Model(inputs, outputs), _images((4, 4, 3)))
    assert "LayerScale" not in classes and "CustomScaleLayer" not in classes
    assert {"layer_scale", "residual", "residual_scale"} <= names
    flat = tfadaqat.flatten_model(keras.Model(inputs, outputs))
    # LayerScale trains its multiplier only: no offset weight appears beside it.
    assert [w.name.split("/")[-1] for w in flat.get_layer("layer_scale").trainable_weights] \
        == ["multiplier:0"]


def test_a_layer_called_twice_is_refused_by_name():
    inputs = keras.Input((6,))
    shared = layers.Dense(6, name="shared_dense")
    outputs = layers.Dense(3, name="logits")(shared(shared(inputs)))
    with pytest.raises(ValueError, match=r"\['shared_dense'\] are called more than once.*"
                                         "one layer per call"):
        tfadaqat.flatten_model(keras.Model(inputs, outputs))
    with pytest.raises(ValueError, match="shared_dense"):
        tfadaqat.quantize_model(keras.Model(inputs, outputs), "lsq")
