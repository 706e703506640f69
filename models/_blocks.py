"""Building blocks and argument checks shared by the model builders of this package.

Every block names its layers from one ``name`` prefix (``{name}_conv``, ``{name}_bn``,
``{name}_relu``, ...), so two builds of the same model have identical layer names and
checkpoints, bit-width reports and exported files line up across runs.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import tfadaqat  # noqa: F401  (legacy Keras before any Keras object is built)
from tfadaqat._compat import keras

layers = keras.layers


def check_input_shape(input_shape) -> tuple:
    """Returns `input_shape` as a tuple after checking it holds three positive integers.

    Raises:
      ValueError: If `input_shape` is not ``(height, width, channels)`` of positive integers.
    """
    try:
        values = tuple(input_shape)
    except TypeError:
        values = None
    if (values is None or len(values) != 3
            or not all(isinstance(value, numbers.Integral) and not isinstance(value, bool)
                       and value > 0 for value in values)):
        raise ValueError("input_shape must be (height, width, channels) of three positive "
                         f"integers, got {input_shape!r}")
    return tuple(int(value) for value in values)


def check_positive(**sizes: int) -> None:
    """Checks each keyword argument is a positive integer.

    Raises:
      ValueError: Naming the first argument that is not a positive integer.
    """
    for name, value in sizes.items():
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_bn_momentum(bn_momentum: float) -> None:
    """Checks the BatchNormalization momentum lies in [0, 1).

    Raises:
      ValueError: For a momentum outside [0, 1).
    """
    if (not isinstance(bn_momentum, numbers.Real) or isinstance(bn_momentum, bool)
            or not 0.0 <= bn_momentum < 1.0):
        raise ValueError(f"bn_momentum must be a number in [0, 1), got {bn_momentum!r}")


def conv_bn(x, filters: int, kernel_size: int, strides: int, name: str, *, relu: bool,
            bn_momentum: float, relu_max_value: float = None):
    """Conv2D (no bias: BatchNormalization's beta replaces it), BatchNormalization, ReLU.

    Args:
      x: Input tensor.
      filters: Output channels.
      kernel_size: Square kernel size.
      strides: Convolution stride ("same" padding).
      name: Prefix of the layer names ``{name}_conv``, ``{name}_bn``, ``{name}_relu``.
      relu: Whether to end with a ReLU.
      bn_momentum: Momentum of the BatchNormalization moving statistics.
      relu_max_value: Upper clip of the ReLU (6.0 for ReLU6), or None for none.

    Returns:
      The output tensor.
    """
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    if relu:
        x = layers.ReLU(relu_max_value, name=f"{name}_relu")(x)
    return x


def basic_block(x, filters: int, strides: int, name: str, *, bn_momentum: float):
    """The two-convolution residual block of He et al. 2016 (arXiv:1512.03385).

    ``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))``, where the shortcut is the
    identity, or a strided 1x1 convolution with BatchNormalization (option B) when the block
    changes the number of channels or the resolution.

    Args:
      x: Input tensor.
      filters: Output channels of both convolutions.
      strides: Stride of the first convolution and of the projection shortcut.
      name: Prefix of the layer names (``{name}_1_conv``, ``{name}_shortcut_bn``,
        ``{name}_add``, ``{name}_out``, ...).
      bn_momentum: Momentum of the BatchNormalization moving statistics.

    Returns:
      The output tensor.
    """
    shortcut = x
    y = conv_bn(x, filters, 3, strides, f"{name}_1", relu=True, bn_momentum=bn_momentum)
    y = conv_bn(y, filters, 3, 1, f"{name}_2", relu=False, bn_momentum=bn_momentum)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv_bn(x, filters, 1, strides, f"{name}_shortcut", relu=False,
                           bn_momentum=bn_momentum)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def residual_stages_and_classifier(x, stage_filters: Sequence[int],
                                   blocks_per_stage: Sequence[int], num_classes: int, *,
                                   bn_momentum: float):
    """Stages of basic blocks, then global average pooling and the Dense logits.

    Stage ``s`` (from 1) has ``blocks_per_stage[s - 1]`` blocks of ``stage_filters[s - 1]``
    filters named ``stage{s}_block{b}``; every stage after the first halves the resolution in
    its first block. The classifier layers are ``pool`` and ``logits``.
    """
    for stage, (filters, blocks) in enumerate(zip(stage_filters, blocks_per_stage)):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = basic_block(x, filters, strides, f"stage{stage + 1}_block{block + 1}",
                            bn_momentum=bn_momentum)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return layers.Dense(num_classes, name="logits")(x)
