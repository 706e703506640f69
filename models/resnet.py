"""CIFAR-style ResNets (He et al. 2016, arXiv:1512.03385, section 4.2) as tf-keras Functional models.

Three stages of ``n`` basic blocks with 16, 32 and 64 filters; depth ``6n + 2`` (ResNet20:
``n = 3``, about 0.27M parameters). Shortcuts that change shape use a 1x1 projection with
BatchNormalization (option B). Layer names are deterministic, so checkpoints and reports line up
across runs.
"""

from __future__ import annotations

import tfadaqat  # noqa: F401  (legacy Keras before any Keras object is built)
from tfadaqat._compat import keras

layers = keras.layers


def _conv_bn(x, filters: int, kernel_size: int, strides: int, name: str, relu: bool):
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                      kernel_initializer="he_normal", kernel_regularizer=None,
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    if relu:
        x = layers.ReLU(name=f"{name}_relu")(x)
    return x


def _basic_block(x, filters: int, strides: int, name: str):
    shortcut = x
    y = _conv_bn(x, filters, 3, strides, f"{name}_1", relu=True)
    y = _conv_bn(y, filters, 3, 1, f"{name}_2", relu=False)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, strides, f"{name}_shortcut", relu=False)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def resnet_cifar(depth: int = 20, *, input_shape=(32, 32, 3), num_classes: int = 10,
                 width: int = 16, name: str = None):
    """A CIFAR ResNet of `depth` = 6n + 2 layers.

    Args:
      depth: 20, 32, 44, 56, ... (``(depth - 2) % 6 == 0``, depth >= 8).
      input_shape: ``(height, width, channels)``.
      num_classes: Size of the classifier output (logits).
      width: Filters of the first stage (16 in the paper); stages use width, 2 width, 4 width.
      name: Model name (default ``resnet{depth}``).

    Raises:
      ValueError: For a depth that is not 6n + 2 or non-positive sizes.
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, ...), got {depth!r}")
    if num_classes < 1 or width < 1:
        raise ValueError(f"num_classes and width must be positive, got {num_classes}, {width}")
    blocks = (depth - 2) // 6
    inputs = keras.Input(input_shape, name="image")
    x = _conv_bn(inputs, width, 3, 1, "stem", relu=True)
    for stage, filters in enumerate((width, 2 * width, 4 * width)):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, filters, strides, f"stage{stage + 1}_block{block + 1}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


def resnet20(**kwargs):
    """ResNet20 for CIFAR-10 (about 0.27M parameters); arguments as :func:`resnet_cifar`."""
    return resnet_cifar(20, **kwargs)
