"""A small ResNet-style CNN for 8x8 (or upsampled) images such as scikit-learn's digits."""

from __future__ import annotations

import tfadaqat  # noqa: F401  (legacy Keras before any Keras object is built)
from tfadaqat._compat import keras

layers = keras.layers


def small_cnn(input_shape=(8, 8, 1), num_classes: int = 10, width: int = 16,
              name: str = "small_cnn"):
    """Conv-BN-ReLU stem, one residual block, a strided conv, pooling and a classifier.

    BatchNormalization uses momentum 0.9: with a few hundred training steps, the default 0.99
    leaves the moving statistics far from the data and the inference-mode model wrong.

    Args:
      input_shape: ``(height, width, channels)``.
      num_classes: Number of logits.
      width: Filters of the first convolutions (the strided conv uses twice as many).
      name: Model name.

    Raises:
      ValueError: For non-positive sizes.
    """
    if num_classes < 1 or width < 1:
        raise ValueError(f"num_classes and width must be positive, got {num_classes}, {width}")
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    y = layers.Conv2D(width, 3, padding="same", use_bias=False, name="block_conv1")(x)
    y = layers.BatchNormalization(momentum=0.9, name="block_bn1")(y)
    y = layers.ReLU(name="block_relu1")(y)
    y = layers.Conv2D(width, 3, padding="same", use_bias=False, name="block_conv2")(y)
    y = layers.BatchNormalization(momentum=0.9, name="block_bn2")(y)
    x = layers.ReLU(name="block_out")(layers.Add(name="block_add")([x, y]))
    x = layers.Conv2D(2 * width, 3, strides=2, padding="same", use_bias=False,
                      name="down_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, name="down_bn")(x)
    x = layers.ReLU(name="down_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
