"""A small ResNet-style CNN for 8x8 (or upsampled) images such as scikit-learn's digits."""

from __future__ import annotations

import tfadaqat  # noqa: F401  (legacy Keras before any Keras object is built)
from tfadaqat._compat import keras

from models._blocks import check_bn_momentum, check_input_shape, check_positive

layers = keras.layers


def small_cnn(input_shape=(8, 8, 1), num_classes: int = 10, width: int = 16,
              name: str = "small_cnn", *, bn_momentum: float = 0.9):
    """Conv-BN-ReLU stem, one residual block, a strided conv, pooling and a classifier.

    BatchNormalization defaults to momentum 0.9: with a few hundred training steps, Keras'
    0.99 leaves the moving statistics far from the data and the inference-mode model wrong.

    Args:
      input_shape: ``(height, width, channels)``.
      num_classes: Number of logits.
      width: Filters of the first convolutions (the strided conv uses twice as many).
      name: Model name.
      bn_momentum: Momentum of every BatchNormalization's moving statistics.

    Returns:
      A Functional model from images to logits.

    Raises:
      ValueError: For an input_shape that is not three positive integers, non-positive sizes
        or a bn_momentum outside [0, 1).
    """
    input_shape = check_input_shape(input_shape)
    check_positive(num_classes=num_classes, width=width)
    check_bn_momentum(bn_momentum)
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(momentum=bn_momentum, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    y = layers.Conv2D(width, 3, padding="same", use_bias=False, name="block_conv1")(x)
    y = layers.BatchNormalization(momentum=bn_momentum, name="block_bn1")(y)
    y = layers.ReLU(name="block_relu1")(y)
    y = layers.Conv2D(width, 3, padding="same", use_bias=False, name="block_conv2")(y)
    y = layers.BatchNormalization(momentum=bn_momentum, name="block_bn2")(y)
    x = layers.ReLU(name="block_out")(layers.Add(name="block_add")([x, y]))
    x = layers.Conv2D(2 * width, 3, strides=2, padding="same", use_bias=False,
                      name="down_conv")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name="down_bn")(x)
    x = layers.ReLU(name="down_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
