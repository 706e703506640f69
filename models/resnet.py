"""CIFAR-style ResNets (He et al. 2016, arXiv:1512.03385, section 4.2) as Functional models.

Three stages of ``n`` basic blocks with 16, 32 and 64 filters; depth ``6n + 2`` (ResNet20:
``n = 3``, about 0.27M parameters). Shortcuts that change shape use a 1x1 projection with
BatchNormalization (option B; the paper's CIFAR models use option A, zero-padded identity
shortcuts, which have no parameters; option B adds two 1x1 convolutions and their
BatchNormalization, 2,752 trainable weights for ResNet20). Layer names are deterministic, so
checkpoints and reports line up across runs.
"""

from __future__ import annotations

import tfadaqat  # noqa: F401  (legacy Keras before any Keras object is built)
from tfadaqat._compat import keras

from models._blocks import (check_bn_momentum, check_input_shape, check_positive, conv_bn,
                            residual_stages_and_classifier)

layers = keras.layers


def resnet_cifar(depth: int = 20, *, input_shape=(32, 32, 3), num_classes: int = 10,
                 width: int = 16, bn_momentum: float = 0.99, name: str = None):
    """A CIFAR ResNet of `depth` = 6n + 2 layers.

    Args:
      depth: 20, 32, 44, 56, ... (``(depth - 2) % 6 == 0``, depth >= 8).
      input_shape: ``(height, width, channels)``.
      num_classes: Size of the classifier output (logits).
      width: Filters of the first stage (16 in the paper); stages use width, 2 width, 4 width.
      bn_momentum: Momentum of every BatchNormalization's moving statistics. Keras' 0.99
        needs a few thousand steps to settle; runs of a few hundred steps want 0.9.
      name: Model name (default ``resnet{depth}``).

    Returns:
      A Functional model from images to logits.

    Raises:
      ValueError: For a depth that is not 6n + 2, an input_shape that is not three positive
        integers, non-positive sizes or a bn_momentum outside [0, 1).

    Example:
      >>> resnet_cifar(8, width=4).count_params()
      5382
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, ...), got {depth!r}")
    input_shape = check_input_shape(input_shape)
    check_positive(num_classes=num_classes, width=width)
    check_bn_momentum(bn_momentum)
    blocks = (depth - 2) // 6
    inputs = keras.Input(input_shape, name="image")
    x = conv_bn(inputs, width, 3, 1, "stem", relu=True, bn_momentum=bn_momentum)
    outputs = residual_stages_and_classifier(x, (width, 2 * width, 4 * width), (blocks,) * 3,
                                             num_classes, bn_momentum=bn_momentum)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


def resnet20(**kwargs):
    """ResNet20 for CIFAR-10 (about 0.27M parameters); arguments as :func:`resnet_cifar`."""
    return resnet_cifar(20, **kwargs)


def resnet32(**kwargs):
    """ResNet32 for CIFAR-10 (about 0.47M parameters); arguments as :func:`resnet_cifar`."""
    return resnet_cifar(32, **kwargs)


def resnet44(**kwargs):
    """ResNet44 for CIFAR-10 (about 0.66M parameters); arguments as :func:`resnet_cifar`."""
    return resnet_cifar(44, **kwargs)


def resnet56(**kwargs):
    """ResNet56 for CIFAR-10 (about 0.86M parameters); arguments as :func:`resnet_cifar`."""
    return resnet_cifar(56, **kwargs)
