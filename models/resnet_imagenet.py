"""The ImageNet ResNet-18 (He et al. 2016, arXiv:1512.03385, table 1) as a Functional model.

A 7x7 stride-2 convolution with BatchNormalization and ReLU, a 3x3 stride-2 max pooling, four
stages of two basic blocks with 64, 128, 256 and 512 filters (the first block of stages 2 to 4
halves the resolution), global average pooling and a Dense classifier. Shortcuts that change
shape are 1x1 projections with BatchNormalization (option B, as in the paper's ImageNet
models). The blocks and layer names are those of :mod:`models.resnet`.

With 1000 classes the model has 11,689,512 trainable weights, torchvision's ``resnet18`` count
(convolutions have no bias; BatchNormalization's gamma and beta count). Keras also counts
BatchNormalization's moving mean and variance, 9,600 non-trainable weights, so
``count_params()`` is 11,699,112.

Padding is Keras' "same": for stride 2 it pads one row and column more at the bottom and right
than at the top and left, where torchvision pads both sides equally. Shapes and counts are the
same; weights trained with one do not carry over exactly to the other.
"""

from __future__ import annotations

import tfadaqat  # noqa: F401  (legacy Keras before any Keras object is built)
from tfadaqat._compat import keras

from models._blocks import (check_bn_momentum, check_input_shape, check_positive, conv_bn,
                            residual_stages_and_classifier)

layers = keras.layers

_RESNET18_BLOCKS_PER_STAGE = (2, 2, 2, 2)


def resnet18(*, input_shape=(224, 224, 3), num_classes: int = 1000, width: int = 64,
             bn_momentum: float = 0.99, name: str = None):
    """The ImageNet ResNet-18.

    Spatial sizes shrink by 32 from input to pooling (224 -> 7); a 32x32 input reaches the last
    stage at 1x1, which works but wastes most of the network: CIFAR-sized images are better
    served by :func:`models.resnet.resnet_cifar`.

    Args:
      input_shape: ``(height, width, channels)``.
      num_classes: Size of the classifier output (logits).
      width: Filters of the stem and the first stage (64 in the paper); the stages use
        width, 2 width, 4 width and 8 width.
      bn_momentum: Momentum of every BatchNormalization's moving statistics.
      name: Model name (default ``resnet18``).

    Returns:
      A Functional model from images to logits.

    Raises:
      ValueError: For an input_shape that is not three positive integers, non-positive sizes
        or a bn_momentum outside [0, 1).

    Example:
      >>> resnet18(input_shape=(32, 32, 3), num_classes=10, width=8).count_params()
      178562
    """
    input_shape = check_input_shape(input_shape)
    check_positive(num_classes=num_classes, width=width)
    check_bn_momentum(bn_momentum)
    inputs = keras.Input(input_shape, name="image")
    x = conv_bn(inputs, width, 7, 2, "stem", relu=True, bn_momentum=bn_momentum)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    stage_filters = [width * 2**stage for stage in range(len(_RESNET18_BLOCKS_PER_STAGE))]
    outputs = residual_stages_and_classifier(x, stage_filters, _RESNET18_BLOCKS_PER_STAGE,
                                             num_classes, bn_momentum=bn_momentum)
    return keras.Model(inputs, outputs, name=name or "resnet18")
