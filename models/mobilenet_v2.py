"""MobileNetV2 (Sandler et al. 2018, arXiv:1801.04381) as a tf-keras Functional model.

The network is a stack of inverted residual blocks. Each block widens its input ``e`` times with
a 1x1 convolution (skipped when ``e = 1``), filters each channel with a 3x3 depthwise
convolution (which carries the block's stride), and projects back down with a linear 1x1
convolution: no activation after the projection, because a ReLU in the narrow space destroys
information (paper, section 3.2). When the block keeps resolution and width, its input is added
to its output. Every convolution is followed by BatchNormalization and has no bias; the
activations are ReLU6, ``min(max(x, 0), 6)``, whose fixed range suits low-precision
arithmetic.

The body follows table 2 of the paper: a 3x3 stride-2 stem of 32 filters, seven stages
``(expansion, channels, blocks, stride)`` = (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
(6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1), then a 1x1 convolution to 1280
channels, global average pooling and a Dense classifier. A width multiplier scales every channel
count, rounded to a multiple of 8 as the authors' reference implementation does, except the
final 1280, which only grows (for multipliers above 1).

At width multiplier 1.0 with 1000 classes the model has 3,504,872 trainable weights (the
paper's 3.4M and the count of ``keras.applications.MobileNetV2``) and 3,538,984 in all,
BatchNormalization's moving statistics included.
"""

from __future__ import annotations

import math
import numbers

import tfadaqat  # noqa: F401  (legacy Keras before any Keras object is built)
from tfadaqat._compat import keras

from models._blocks import check_bn_momentum, check_input_shape, check_positive, conv_bn

layers = keras.layers

#: ``(expansion, channels, blocks, stride)`` of each stage (paper, table 2).
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_RELU6 = 6.0


def round_channels(channels: float, divisor: int = 8) -> int:
    """Rounds a scaled channel count to the nearest multiple of `divisor`, never below it.

    As the authors' reference implementation: a rounding that loses more than 10% of
    `channels` goes one multiple up instead.

    Args:
      channels: The scaled channel count (``channels x width multiplier``).
      divisor: The multiple to round to.

    Returns:
      The rounded count.

    Example:
      >>> [round_channels(c) for c in (4, 12, 20.0, 33.6, 1280 * 0.35)]
      [8, 16, 24, 32, 448]
    """
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return rounded


def _depthwise_bn(x, strides: int, name: str, *, bn_momentum: float):
    x = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                               depthwise_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    return layers.ReLU(_RELU6, name=f"{name}_relu")(x)


def _inverted_residual(x, expansion: int, filters: int, strides: int, name: str, *,
                       bn_momentum: float):
    channels = x.shape[-1]
    y = x
    if expansion != 1:
        y = conv_bn(y, channels * expansion, 1, 1, f"{name}_expand", relu=True,
                    bn_momentum=bn_momentum, relu_max_value=_RELU6)
    y = _depthwise_bn(y, strides, f"{name}_depthwise", bn_momentum=bn_momentum)
    y = conv_bn(y, filters, 1, 1, f"{name}_project", relu=False, bn_momentum=bn_momentum)
    if strides == 1 and channels == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def mobilenet_v2(*, input_shape=(224, 224, 3), num_classes: int = 1000,
                 width_multiplier: float = 1.0, bn_momentum: float = 0.99,
                 small_input: bool = False, name: str = None):
    """MobileNetV2 from images to logits.

    The network divides the resolution by 32 (224 -> 7). A 32x32 image would reach the
    last stages at 1x1, where the 3x3 depthwise convolutions only see zero padding around one
    pixel; ``small_input=True`` keeps the stem and the first stride-2 stage (24 channels) at
    stride 1, so the resolution is divided by 8 (32 -> 4), as CIFAR adaptations of the network
    do. The weights are the same either way; only strides change.

    Args:
      input_shape: ``(height, width, channels)``.
      num_classes: Size of the classifier output (logits).
      width_multiplier: Scale of every channel count (the paper's alpha: 0.35 to 1.4), rounded
        to multiples of 8; the final 1280 channels are not shrunk.
      bn_momentum: Momentum of every BatchNormalization's moving statistics.
      small_input: Divide the resolution by 8 instead of 32, for images of about 32x32.
      name: Model name (default ``mobilenet_v2``).

    Returns:
      A Functional model.

    Raises:
      ValueError: For an input_shape that is not three positive integers, a num_classes that
        is not positive, a width_multiplier that is not a finite number > 0, or a bn_momentum
        outside [0, 1).

    Example:
      >>> model = mobilenet_v2(input_shape=(32, 32, 3), num_classes=10, small_input=True)
      >>> model.get_layer("head_conv").output_shape
      (None, 4, 4, 1280)

    References:
      Sandler, Howard, Zhu, Zhmoginov, Chen. MobileNetV2: Inverted Residuals and Linear
      Bottlenecks. CVPR 2018, arXiv:1801.04381.
    """
    input_shape = check_input_shape(input_shape)
    check_positive(num_classes=num_classes)
    if (not isinstance(width_multiplier, numbers.Real) or isinstance(width_multiplier, bool)
            or not math.isfinite(width_multiplier) or width_multiplier <= 0):
        raise ValueError("width_multiplier must be a finite number > 0 (the paper uses 0.35 to "
                         f"1.4), got {width_multiplier!r}")
    check_bn_momentum(bn_momentum)
    inputs = keras.Input(input_shape, name="image")
    x = conv_bn(inputs, round_channels(_STEM_CHANNELS * width_multiplier), 3,
                1 if small_input else 2, "stem", relu=True, bn_momentum=bn_momentum,
                relu_max_value=_RELU6)
    for stage, (expansion, channels, blocks, stride) in enumerate(STAGES):
        if small_input and stage == 1:
            stride = 1
        filters = round_channels(channels * width_multiplier)
        for block in range(blocks):
            x = _inverted_residual(x, expansion, filters, stride if block == 0 else 1,
                                   f"stage{stage + 1}_block{block + 1}",
                                   bn_momentum=bn_momentum)
    head = max(_HEAD_CHANNELS, round_channels(_HEAD_CHANNELS * width_multiplier))
    x = conv_bn(x, head, 1, 1, "head", relu=True, bn_momentum=bn_momentum,
                relu_max_value=_RELU6)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or "mobilenet_v2")
