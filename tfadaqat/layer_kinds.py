"""Layer kinds: the one table of what tfadaqat does with each Keras layer type.

Every layer of a flattened model (see :mod:`tfadaqat.graph`) has a :class:`LayerKind` that
says, in one place:

* **quantize** (:mod:`tfadaqat.quantize`): which weight attributes get a weight quantizer,
  whether the output gets a learned grid (``"learned"``), stays on its input's grid
  (``"keep"``: reshapes, padding, max pooling) or lies on the fixed grid TFLite's kernel
  requires (``"fixed"``: softmax, sigmoid, tanh); whether the output is non-negative (an
  unsigned grid), signed, or non-negative exactly when all inputs are; whether the layer can
  absorb a following BatchNormalization, and whether its output quantizer moves past a
  following ReLU (the integer kernel fuses it);
* **cost** (:mod:`tfadaqat.cost`): the multiply-accumulates of layers with weights;
* **export** (:mod:`tfadaqat.export`): the integer TFLite ops the layer becomes, which the
  export audits, and (by the kind's name) how the export graph computes it.

Adding a layer type is one entry here, its op in the export, and its tests.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from tfadaqat._compat import keras
from tfadaqat.layers import ChannelAffine, QuantizationPoint

_layers = keras.layers

OUTPUT_POLICIES = ("learned", "keep", "fixed")
SIGN_RULES = ("signed", "non_negative", "inputs", "activation")


def _elements(shape) -> int:
    return int(np.prod([int(d) for d in shape[1:]], dtype=np.int64)) if len(shape) > 1 else 1


def _positions(shape) -> int:
    """Positions a kernel is applied at: the product of the non-batch, non-channel dims."""
    return int(np.prod([int(d) for d in shape[1:-1]], dtype=np.int64)) if len(shape) > 2 else 1


def _output_positions_macs(layer, kernel, input_shape, output_shape) -> int:
    return _positions(output_shape) * int(np.prod(kernel.shape))


def _input_positions_macs(layer, kernel, input_shape, output_shape) -> int:
    # A transposed convolution multiplies every input position by the whole kernel.
    return _positions(input_shape) * int(np.prod(kernel.shape))


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """What tfadaqat does with one kind of layer (see the module docstring).

    Attributes:
      name: The kind's name (the export dispatches on it).
      weights: Attributes holding the weights that get a weight quantizer.
      output: "learned", "keep" or "fixed".
      sign: "signed", "non_negative", "inputs" (non-negative when every input is) or
        "activation" (non-negative when the layer's fused activation is a ReLU).
      fixed_grid: ``(step, low, high)`` for ``output="fixed"``.
      folds_batch_norm: A BatchNormalization that only this layer feeds folds into its
        integer weights (per-channel scales).
      fuses_into_relu: A ReLU that only this layer feeds is fused into its integer kernel,
        so the layer's output is quantized after the ReLU.
      tflite_ops: The integer TFLite ops it exports to.
      macs: ``(layer, kernel, input shape, output shape) -> MACs`` for layers with weights.
    """

    name: str
    weights: Tuple[str, ...] = ()
    output: str = "learned"
    sign: str = "signed"
    fixed_grid: Optional[Tuple[float, int, int]] = None
    folds_batch_norm: bool = False
    fuses_into_relu: bool = False
    tflite_ops: Tuple[str, ...] = ()
    macs: Optional[Callable] = None

    def __post_init__(self):
        if self.output not in OUTPUT_POLICIES:
            raise ValueError(f"output must be one of {OUTPUT_POLICIES}, got {self.output!r}")
        if self.sign not in SIGN_RULES:
            raise ValueError(f"sign must be one of {SIGN_RULES}, got {self.sign!r}")
        if (self.output == "fixed") != (self.fixed_grid is not None):
            raise ValueError("fixed_grid is given exactly for output='fixed'")


_SOFTMAX_GRID = (1.0 / 256, 0, 255)  # TFLite int8 SOFTMAX / LOGISTIC: scale 1/256, zp -128
_TANH_GRID = (1.0 / 128, -128, 127)  # TFLite int8 TANH: scale 1/128, zero point 0

KINDS: Dict[str, LayerKind] = {kind.name: kind for kind in (
    LayerKind("input", output="keep", sign="signed"),
    LayerKind("quantization_point", sign="inputs"),
    LayerKind("conv", weights=("kernel",), sign="activation", folds_batch_norm=True,
              fuses_into_relu=True, tflite_ops=("CONV_2D",), macs=_output_positions_macs),
    LayerKind("conv1d", weights=("kernel",), sign="activation", folds_batch_norm=True,
              fuses_into_relu=True, tflite_ops=("CONV_2D",), macs=_output_positions_macs),
    LayerKind("depthwise_conv", weights=("depthwise_kernel",), sign="activation",
              folds_batch_norm=True, fuses_into_relu=True, tflite_ops=("DEPTHWISE_CONV_2D",),
              macs=_output_positions_macs),
    LayerKind("dense", weights=("kernel",), sign="activation", folds_batch_norm=True,
              fuses_into_relu=True, tflite_ops=("FULLY_CONNECTED", "CONV_2D"),
              macs=_output_positions_macs),
    LayerKind("conv_transpose", weights=("kernel",), sign="activation", fuses_into_relu=True,
              tflite_ops=("TRANSPOSE_CONV",), macs=_input_positions_macs),
    # A BatchNormalization that folds into the layer before it is handled by that layer; on
    # its own it is a per-channel affine map, like the rest of this kind.
    LayerKind("channel_affine", fuses_into_relu=True, tflite_ops=("DEPTHWISE_CONV_2D",)),
    LayerKind("relu", sign="non_negative", tflite_ops=("RELU", "RELU6")),
    LayerKind("softmax", output="fixed", sign="non_negative", fixed_grid=_SOFTMAX_GRID,
              tflite_ops=("SOFTMAX",)),
    LayerKind("sigmoid", output="fixed", sign="non_negative", fixed_grid=_SOFTMAX_GRID,
              tflite_ops=("LOGISTIC",)),
    LayerKind("tanh", output="fixed", fixed_grid=_TANH_GRID, tflite_ops=("TANH",)),
    LayerKind("gelu", tflite_ops=("GELU",)),
    # Its output is trained on a learned grid; the statistics inside (mean, variance, 1/sqrt)
    # have no trained range, so export calibrates them with a representative dataset.
    LayerKind("layer_norm", tflite_ops=("MEAN", "SQUARED_DIFFERENCE", "RSQRT", "MUL", "SUB",
                                        "ADD")),
    LayerKind("add", sign="inputs", fuses_into_relu=True, tflite_ops=("ADD",)),
    LayerKind("multiply", sign="inputs", tflite_ops=("MUL",)),
    LayerKind("concatenate", sign="inputs", tflite_ops=("CONCATENATION",)),
    LayerKind("average_pool", sign="inputs", tflite_ops=("AVERAGE_POOL_2D", "MEAN")),
    LayerKind("resize_bilinear", sign="inputs", tflite_ops=("RESIZE_BILINEAR",)),
    LayerKind("max_pool", output="keep", sign="inputs",
              tflite_ops=("MAX_POOL_2D", "REDUCE_MAX")),
    LayerKind("same_grid", output="keep", sign="inputs",
              tflite_ops=("RESHAPE", "PAD", "STRIDED_SLICE", "RESIZE_NEAREST_NEIGHBOR")),
)}

#: Integer TFLite ops whose inputs must all be integer tensors in an exported file.
INTEGER_OPS = tuple(sorted({op for kind in KINDS.values() for op in kind.tflite_ops}
                           | {"MINIMUM", "MAXIMUM", "SUM"}))

_BY_CLASS: Dict[type, str] = {
    _layers.InputLayer: "input",
    QuantizationPoint: "quantization_point",
    _layers.Conv2D: "conv",
    _layers.Conv1D: "conv1d",
    _layers.DepthwiseConv2D: "depthwise_conv",
    _layers.Dense: "dense",
    _layers.Conv2DTranspose: "conv_transpose",
    _layers.BatchNormalization: "channel_affine",
    _layers.Rescaling: "channel_affine",
    _layers.Normalization: "channel_affine",
    ChannelAffine: "channel_affine",
    _layers.LayerNormalization: "layer_norm",
    _layers.Add: "add",
    _layers.Multiply: "multiply",
    _layers.Concatenate: "concatenate",
    _layers.AveragePooling2D: "average_pool",
    _layers.GlobalAveragePooling2D: "average_pool",
    _layers.GlobalAveragePooling1D: "average_pool",
    _layers.GlobalMaxPooling1D: "max_pool",
    _layers.MaxPooling2D: "max_pool",
    _layers.GlobalMaxPooling2D: "max_pool",
    _layers.Flatten: "same_grid",
    _layers.Reshape: "same_grid",
    _layers.Dropout: "same_grid",
    _layers.SpatialDropout2D: "same_grid",
    _layers.ZeroPadding2D: "same_grid",
    _layers.Cropping2D: "same_grid",
    _layers.Identity: "same_grid",
}
_ACTIVATION_KINDS = {"relu": "relu", "relu6": "relu", "softmax": "softmax",
                     "sigmoid": "sigmoid", "tanh": "tanh", "gelu": "gelu",
                     "linear": "same_grid"}
#: Activations a weight layer keeps fused in its integer kernel (others become their own
#: layer, see :mod:`tfadaqat.graph`).
FUSED_ACTIVATIONS = ("linear", "relu", "relu6")


def activation_name(layer) -> Optional[str]:
    """The element-wise activation a layer applies ("relu", "softmax", ...), if any.

    A ReLU layer with a negative slope or threshold is "leaky_relu"; one capped at a value
    other than 6 is "relu_capped".
    """
    if isinstance(layer, _layers.ReLU):
        if float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
            return "leaky_relu"
        if layer.max_value is None:
            return "relu"
        return "relu6" if float(layer.max_value) == 6.0 else "relu_capped"
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    name = getattr(activation, "__name__", None)
    if name in ("relu6",):  # tf-keras has no activations.relu6; tf.nn.relu6 is passed
        return name
    serialized = keras.activations.serialize(activation)
    return serialized if isinstance(serialized, str) else (name or "custom")


def kind_of(layer) -> Optional[LayerKind]:
    """The :class:`LayerKind` of `layer` (unwrapped), or None when tfadaqat has none.

    Subclasses of a listed Keras layer get its kind; :func:`register_layer_kind` adds more.
    """
    if isinstance(layer, _layers.UpSampling2D):
        return KINDS["same_grid" if layer.interpolation == "nearest" else "resize_bilinear"]
    if isinstance(layer, _layers.ReLU) or type(layer) is _layers.Activation:
        name = _ACTIVATION_KINDS.get(activation_name(layer))
        return None if name is None else KINDS[name]
    for cls in type(layer).__mro__:
        if cls in _BY_CLASS:
            return KINDS[_BY_CLASS[cls]]
    return None


def register_layer_kind(layer_class: type, kind: str) -> None:
    """Tells tfadaqat that layers of `layer_class` (a custom layer) behave like `kind`.

    Only kinds whose export does not depend on the layer's attributes can be given to a
    custom layer: ``"same_grid"`` (it only moves, copies or drops values: a reshape, a
    crop) and ``"max_pool"``; the export calls the layer itself in the integer graph.

    Raises:
      ValueError: For another kind, or a class that is not a Keras layer.
    """
    allowed = ("same_grid", "max_pool")
    if kind not in allowed:
        raise ValueError(f"kind must be one of {allowed} for a custom layer, got {kind!r}")
    if not (isinstance(layer_class, type) and issubclass(layer_class, _layers.Layer)):
        raise ValueError(f"layer_class must be a tf-keras Layer subclass, got {layer_class!r}")
    _BY_CLASS[layer_class] = kind


def is_custom_layer(layer) -> bool:
    """Whether `layer` is neither a tf-keras layer nor a tfadaqat one (a user's own class)."""
    module = type(layer).__module__ or ""
    return not (module.startswith("tf_keras.") or module.startswith("keras.")
                or module.startswith("tfadaqat."))


def is_non_negative_activation(name: Optional[str]) -> bool:
    return name in ("relu", "relu6", "relu_capped", "sigmoid", "softmax")
