"""The supernet's fixed skeleton and the float Keras model of one sub-network.

The skeleton (:class:`SupernetSpec`) fixes what the search does not: the input, a 3x3 stem
convolution, each stage's output channels and stride, and the classifier (global average
pooling, Dense). A sub-network (:class:`tfadaqat.oqat.space.SubnetConfig`) fills each stage
with MobileNetV3-style inverted residual blocks::

    expand 1x1 conv (C_in -> e C_in) -> BN -> ReLU
    -> depthwise k x k conv (stride s on the stage's first block) -> BN -> ReLU
    -> project 1x1 conv (e C_in -> C_out) -> BN  (+ input, when s = 1 and C_in = C_out)

Simplifications against MobileNetV3, documented here because they change the numbers: ReLU
everywhere (no h-swish), no squeeze-and-excitation, no final 960/1280 feature layers, and the
hidden width is exactly ``e C_in`` (no rounding to multiples of 8).

:func:`subnet_cost` counts MACs, BitOPs and weight memory of the searchable blocks (stem and
classifier excluded: OQAT keeps them in float, and they are the same in every sub-network);
it agrees with :func:`tfadaqat.cost` on those layers (tested).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Iterator, Tuple

from tfadaqat._compat import keras
from tfadaqat.oqat.space import SearchSpace, SubnetConfig

_layers = keras.layers


@dataclasses.dataclass(frozen=True)
class SupernetSpec:
    """What every sub-network shares.

    Attributes:
      input_shape: ``(height, width, channels)``.
      num_classes: Logits of the classifier.
      stem_channels: Output channels of the 3x3 stem convolution.
      stem_stride: Its stride.
      stage_channels: Output channels of each stage.
      stage_strides: Stride of each stage's first block.
      bn_momentum: Momentum of every BatchNormalization.

    Raises:
      ValueError: For non-positive sizes, strides other than 1 and 2, or per-stage tuples of
        different lengths.
    """

    input_shape: Tuple[int, int, int] = (32, 32, 3)
    num_classes: int = 10
    stem_channels: int = 16
    stem_stride: int = 1
    stage_channels: Tuple[int, ...] = (24, 40, 80, 112, 160)
    stage_strides: Tuple[int, ...] = (1, 2, 2, 1, 2)
    bn_momentum: float = 0.99

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "stage_channels", tuple(self.stage_channels))
        object.__setattr__(self, "stage_strides", tuple(self.stage_strides))
        sizes = (*self.input_shape, self.num_classes, self.stem_channels, *self.stage_channels)
        if len(self.input_shape) != 3 or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes):
            raise ValueError(f"input_shape, num_classes and channel counts must be positive "
                             f"integers (input_shape of length 3), got input_shape="
                             f"{self.input_shape}, num_classes={self.num_classes}, "
                             f"stem_channels={self.stem_channels}, "
                             f"stage_channels={self.stage_channels}")
        if len(self.stage_strides) != len(self.stage_channels):
            raise ValueError(f"stage_strides {self.stage_strides} and stage_channels "
                             f"{self.stage_channels} must have one entry per stage each")
        for stride in (self.stem_stride, *self.stage_strides):
            if stride not in (1, 2):
                raise ValueError(f"strides must be 1 or 2, got {stride!r}")
        if not 0.0 <= self.bn_momentum < 1.0:
            raise ValueError(f"bn_momentum must lie in [0, 1), got {self.bn_momentum!r}")

    @classmethod
    def for_input(cls, input_shape, num_classes: int, **overrides) -> "SupernetSpec":
        """The default skeleton with strides for the input size: ImageNet-like (>= 128 pixels:
        stem stride 2, stages 2, 2, 2, 1, 2), CIFAR-like (>= 32: 1, 2, 2, 1, 2) or smaller
        (digits' 8x8: 1, 1, 2, 1, 2)."""
        size = min(input_shape[:2])
        if size >= 128:
            strides = {"stem_stride": 2, "stage_strides": (2, 2, 2, 1, 2)}
        elif size >= 32:
            strides = {"stem_stride": 1, "stage_strides": (1, 2, 2, 1, 2)}
        else:
            strides = {"stem_stride": 1, "stage_strides": (1, 1, 2, 1, 2)}
        return cls(input_shape=tuple(input_shape), num_classes=num_classes,
                   **{**strides, **overrides})

    @property
    def stages(self) -> int:
        return len(self.stage_channels)

    def check(self, space: SearchSpace) -> None:
        """Raises ValueError if `space` has another number of stages."""
        if space.stages != self.stages:
            raise ValueError(f"the search space has {space.stages} stages, the supernet "
                             f"{self.stages}")


@dataclasses.dataclass(frozen=True)
class BlockShape:
    """Static shapes of one running block of a sub-network."""

    stage: int
    block: int
    kernel_size: int
    expand_ratio: int
    stride: int
    input_channels: int
    hidden_channels: int
    output_channels: int
    input_size: Tuple[int, int]
    output_size: Tuple[int, int]

    @property
    def name(self) -> str:
        return f"stage{self.stage + 1}_block{self.block + 1}"

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.input_channels == self.output_channels


def _same_padding_size(size: Tuple[int, int], stride: int) -> Tuple[int, int]:
    return tuple(math.ceil(extent / stride) for extent in size)


def block_shapes(config: SubnetConfig, spec: SupernetSpec) -> Iterator[BlockShape]:
    """The running blocks of `config` with their static shapes, in order."""
    size = _same_padding_size(spec.input_shape[:2], spec.stem_stride)
    channels = spec.stem_channels
    for stage, block, kernel_size, expand_ratio in config.blocks():
        stride = spec.stage_strides[stage] if block == 0 else 1
        output_size = _same_padding_size(size, stride)
        shape = BlockShape(stage, block, kernel_size, expand_ratio, stride, channels,
                           channels * expand_ratio, spec.stage_channels[stage], size,
                           output_size)
        yield shape
        size, channels = output_size, shape.output_channels


def _conv_bn(x, layer, name: str, momentum: float, relu: bool):
    x = layer(x)
    x = _layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
    return _layers.ReLU(name=f"{name}_relu")(x) if relu else x


def build_subnet(config: SubnetConfig, spec: SupernetSpec, space: SearchSpace = SearchSpace(),
                 name: str = "subnet"):
    """The float tf-keras Functional model of sub-network `config`.

    Layer names: ``stem_conv``, ``stem_bn``, ``stem_relu``; per block
    ``stage{s}_block{b}_{expand,depthwise,project}_{conv,bn}``, ``..._{expand,depthwise}_relu``
    and ``..._add``; ``pool`` and ``classifier``.

    Raises:
      ValueError: If `config` lies outside `space` or `space` does not fit `spec`.
    """
    spec.check(space)
    space.validate(config)
    momentum = spec.bn_momentum
    inputs = keras.Input(spec.input_shape, name="image")
    x = _conv_bn(inputs, _layers.Conv2D(spec.stem_channels, 3, strides=spec.stem_stride,
                                        padding="same", use_bias=False, name="stem_conv"),
                 "stem", momentum, relu=True)
    for block in block_shapes(config, spec):
        prefix = block.name
        y = _conv_bn(x, _layers.Conv2D(block.hidden_channels, 1, use_bias=False,
                                       name=f"{prefix}_expand_conv"),
                     f"{prefix}_expand", momentum, relu=True)
        y = _conv_bn(y, _layers.DepthwiseConv2D(block.kernel_size, strides=block.stride,
                                                padding="same", use_bias=False,
                                                name=f"{prefix}_depthwise_conv"),
                     f"{prefix}_depthwise", momentum, relu=True)
        y = _conv_bn(y, _layers.Conv2D(block.output_channels, 1, use_bias=False,
                                       name=f"{prefix}_project_conv"),
                     f"{prefix}_project", momentum, relu=False)
        x = _layers.Add(name=f"{prefix}_add")([x, y]) if block.residual else y
    x = _layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = _layers.Dense(spec.num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name=name)


def subnet_cost(config: SubnetConfig, spec: SupernetSpec, *, weight_bits: int,
                activation_bits: int) -> Dict[str, float]:
    """MACs, BitOPs (``MACs x b_w x b_a``) and weight memory (KB) of the searchable blocks of
    `config` at uniform bit-widths. The same numbers as :func:`tfadaqat.cost` of the
    quantized :func:`build_subnet` model, summed over the blocks' convolutions."""
    macs = params = 0
    for block in block_shapes(config, spec):
        in_positions = block.input_size[0] * block.input_size[1]
        out_positions = block.output_size[0] * block.output_size[1]
        expand = block.input_channels * block.hidden_channels
        depthwise = block.kernel_size**2 * block.hidden_channels
        project = block.hidden_channels * block.output_channels
        macs += in_positions * expand + out_positions * (depthwise + project)
        params += expand + depthwise + project
    return {"macs": macs, "bitops": macs * weight_bits * activation_bits,
            "weight_kb": params * weight_bits / (8 * 1024)}
