"""Integer TFLite export that stores the learned bit-widths and computes what was trained.

Why not hand TFMOT's graph to the converter: with TF 2.21 the TFLite converter refuses
FakeQuant ops below 8 bits on activations (it makes ``i4`` tensors that ``tfl.conv_2d``
rejects) and gives 4-bit weights non-zero zero points that the interpreter refuses. So the
learned ``b``-bit grids are mapped onto int8 storage here, and the converter only ever sees
8-bit FakeQuant ops whose scale *is* the learned step:

* **Weights.** Every tfadaqat weight quantizer outputs ``scale x k`` with integers ``k`` in
  ``[low, high]`` (:meth:`tfadaqat.TensorQuantizer.integer_grid`). The export graph holds those
  values behind a symmetric, narrow-range 8-bit FakeQuant of range ``+-127 scale``, so the file
  stores exactly ``k`` (int8, zero point 0): at most ``2^b`` distinct values (``2^b - 1`` on
  symmetric grids). A BatchNormalization after a convolution or dense layer is folded into
  per-output-channel scales ``scale |m_c|`` (``m_c = gamma_c / sqrt(var_c + eps)``, its sign
  carried by the stored integers) and the int32 bias, so the integers stay the trained ones.
* **Bias resolution.** TFLite's int32 bias counts units of ``input scale x weight scale``. At
  2-3 bits that unit is coarse (a tenth of a 2-bit output step, measured on ResNet20), and
  rounding the folded BN offset to it moved 5% of a 2-bit layer's outputs to the next
  integer. So a kernel whose integers reach only ``n_max`` is stored as ``r k`` with scale
  ``scale / r``, ``r = floor(127 / n_max)``: the same ``2^b`` values, the same products, and
  a bias grid ``r`` times finer (42 times at 3 bits). What rounding remains is taken out of
  the model: :func:`align_biases` (run by :func:`export_tflite` unless ``align=False``) moves
  each bias onto its int32 grid in the Keras model, by under half a unit, so that model and
  file compute the same integers.
* **Activations.** A tensor quantized to ``s k``, ``k`` in ``[low, high]``, is fake-quantized
  with an 8-bit range whose step is ``s``. Unsigned (``[0, high]``): ``[(high - 255) s,
  high s]``, zero point ``127 - high``, so int8's top is ``high s`` and the producing kernel's
  saturation and fused ReLU do the clamp. Signed (``[-high, high]``): the same range, and
  one MAXIMUM op clamps the bottom at ``-high s``. Either way the tensor takes at most
  ``2^b`` values.

* **Fixed grids.** Softmax and sigmoid outputs were trained on step 1/256 (integers 0..255),
  tanh outputs on 1/128 (-128..127): exactly the quantization TFLite's int8 SOFTMAX, LOGISTIC
  and TANH kernels produce.
* **Per-channel affine maps** (a BatchNormalization that follows no convolution, Rescaling,
  Normalization, :class:`tfadaqat.layers.ChannelAffine`): ``y = m_c x + o_c`` becomes one
  integer 1x1 depthwise convolution whose weights are ``127 sign(m_c)`` at scale
  ``|m_c| / 127`` (the float32 multiplier itself) and whose bias is ``o_c``.

Every other layer (convolutions, dense, depthwise, transposed convolutions, add, multiply,
pooling, mean, concatenation, resizing, GELU) runs with TFLite's int8 kernels, as the layer
kinds of :mod:`tfadaqat.layer_kinds` list; :func:`export_tflite` checks the file and refuses
to write one with a float kernel unless ``allow_float_ops=True``. With ``weight_storage="int4"``, kernels of 4 bits or fewer are then
rewritten as TFLite INT4 tensors (packed two per byte; such kernels keep ``r = 1``).
Activations above 8 bits (int16) are not supported: they raise (see the README for what was
tried).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
import warnings
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from tfadaqat._compat import (functional_nodes_by_depth, keras, tf, tflite_interpreter,
                              tflite_ops, tflite_schema, wrapper_output_quantizer,
                              wrapper_weight_quantizers)
from tfadaqat.cost import cost
from tfadaqat.layer_kinds import INTEGER_OPS, activation_name, kind_of
from tfadaqat.layers import ChannelAffine
from tfadaqat.quantize import load_model
from tfadaqat.runtimes import run as run_on_runtime
from tfadaqat.runtimes import RUNTIMES, validate_runtimes
from tfadaqat.tensors import is_quantized_wrapper, unwrapped_layer

_layers = keras.layers
#: Ops whose inputs must all be integer tensors in an exported file.
INTEGER_KERNELS = INTEGER_OPS
_CONVERSION_OPS = ("QUANTIZE", "DEQUANTIZE")
_INT8_WEIGHT_LIMIT = 127
_INT4_LOW, _INT4_HIGH = -8, 7
WEIGHT_STORAGES = ("int8", "int4")
#: Kinds whose unsigned output needs no ReLU before its FakeQuant (it cannot be negative).
_NON_NEGATIVE_KINDS = ("average_pool", "max_pool", "concatenate", "softmax", "sigmoid",
                       "multiply", "resize_bilinear", "same_grid")


@dataclasses.dataclass(frozen=True)
class LayerExport:
    """One quantized weight tensor in the file: learned bits against stored distinct values."""

    layer: str
    bits: int
    allowed_values: int
    distinct_values: int


@dataclasses.dataclass
class ExportReport:
    """What :func:`export_tflite` wrote and, with ``verify_with``, how it agrees with Keras.

    Attributes:
      path: The file written.
      file_bytes: Its size.
      float32_bytes: The model's parameters stored as float32.
      packed_bytes: ``sum(params x bits) / 8`` over kernels, plus int32 biases: what a file
        packing the learned bits would take.
      packing: How kernels are stored: int8, or how many are packed as int4
        (``weight_storage="int4"``).
      ops: The TFLite op names in the file, in order.
      layers: Per quantized kernel, the learned bits and distinct integers in the file.
      examples: Examples compared with the Keras model (0 without ``verify_with``).
      runtimes: Per runtime verified on (:mod:`tfadaqat.runtimes`, ``export_tflite``'s
        `runtimes`), the agreement with the Keras model: ``top1_agreement``,
        ``top1_strict_agreement``, ``max_output_difference``, ``within_one_step``,
        ``within_two_steps`` and ``differing`` (share of output values not equal to Keras').
        The fields below are those of the first runtime.
      top1_agreement: Fraction of examples where the file's and the Keras model's sets of
        top-scoring classes share a class. Quantized logits often tie at the top, and which
        of the tied classes ``argmax`` returns is arbitrary; ties count once.
      top1_strict_agreement: Fraction where ``argmax`` of the two agrees, ties broken by index.
      max_output_difference: Largest ``|tflite - keras|`` over the outputs, in output steps.
      within_two_steps: Fraction of output values within 2 output steps of Keras'.
      output_step: The output step those differences are counted in.
      float_ops: Ops left in float (only with ``allow_float_ops=True``), by TFLite op name.
    """

    path: str
    file_bytes: int
    float32_bytes: int
    packed_bytes: float
    packing: str
    ops: List[str]
    layers: List[LayerExport]
    examples: int = 0
    runtimes: Dict[str, Dict[str, float]] = dataclasses.field(default_factory=dict)
    top1_agreement: Optional[float] = None
    top1_strict_agreement: Optional[float] = None
    max_output_difference: Optional[float] = None
    within_two_steps: Optional[float] = None
    output_step: Optional[float] = None
    float_ops: List[str] = dataclasses.field(default_factory=list)


_PACKING_NOTE = ("not packed: int8 storage (weight_storage='int4' packs kernels of <= 4 bits; "
                 "XNNPACK runs them slower)")
_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _pack_int4(content: bytes) -> bytes:
    """Rewrites the file's conv/depthwise/dense weight tensors whose values lie in [-8, 7] as
    TFLite INT4 tensors (two values per byte, low nibble first).

    TF 2.21's converter stores such weights in int8 even from 4-bit FakeQuant graphs; LiteRT
    reads INT4 filters and unpacks them. Only kernels stored without refinement (the packed
    ones, ``r = 1``) have values in that range.
    """
    import flatbuffers  # installed with TensorFlow
    schema = tflite_schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(content, 0))
    names = {value: name for name, value in vars(schema.BuiltinOperator).items()
             if not name.startswith("_")}
    weight_codes = {index for index, code in enumerate(model.operatorCodes)
                    if names.get(max(code.builtinCode, code.deprecatedBuiltinCode)) in _WEIGHT_OPS}
    for operator in model.subgraphs[0].operators:
        if operator.opcodeIndex not in weight_codes:
            continue
        tensor = model.subgraphs[0].tensors[operator.inputs[1]]
        if tensor.type != schema.TensorType.INT8:
            continue
        values = np.frombuffer(bytes(model.buffers[tensor.buffer].data), np.int8)
        if values.min() < _INT4_LOW or values.max() > _INT4_HIGH:
            continue
        nibbles = (values.astype(np.int16) & 0xF).astype(np.uint8)
        if len(nibbles) % 2:
            nibbles = np.append(nibbles, np.uint8(0))
        model.buffers[tensor.buffer].data = nibbles[0::2] | (nibbles[1::2] << 4)
        tensor.type = schema.TensorType.INT4
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


_quantized_wrapper = is_quantized_wrapper


class _ExportPlan:
    """The model's layers in graph order, with who feeds whom and which BN layers fold."""

    def __init__(self, model, int4: bool = False, allow_float_ops: bool = False,
                 calibrated: bool = False):
        self.allow_float_ops = allow_float_ops
        self.calibrated = calibrated  # a representative dataset will be given
        self.nodes = []
        for depth in sorted(functional_nodes_by_depth(model), reverse=True):
            self.nodes.extend(functional_nodes_by_depth(model)[depth])
        self.inputs = {}
        consumers: Dict[str, List[Any]] = {}
        for node in self.nodes:
            names = [t._keras_history.layer.name for t in tf.nest.flatten(node.keras_inputs)]
            self.inputs[node.layer.name] = names
            for name in names:
                consumers.setdefault(name, []).append(node.layer)
        self.folded: Dict[str, Any] = {}  # weight layer name -> the BatchNormalization it absorbs
        for node in self.nodes:
            inner = unwrapped_layer(node.layer)
            following = consumers.get(node.layer.name, [])
            kind = kind_of(inner)
            if (kind is not None and kind.folds_batch_norm
                    and activation_name(inner) in (None, "linear")
                    and wrapper_output_quantizer(node.layer)[0] is None
                    and len(following) == 1
                    and isinstance(unwrapped_layer(following[0]), _layers.BatchNormalization)):
                self.folded[node.layer.name] = unwrapped_layer(following[0])
        self.folded_batch_norms = {bn.name for bn in self.folded.values()}
        # Read every learned value now, eagerly: the traced function holds constants only.
        self.weights, self.biases, self.output_grids = {}, {}, {}
        self.affines = {name: _batch_norm_affine(bn) for name, bn in self.folded.items()}
        self.channel_affines = {}  # unwrapped layer name -> (m, o) of the ones not folded
        for node in self.nodes:
            inner = unwrapped_layer(node.layer)
            kind = kind_of(inner)
            if (kind is not None and kind.name == "channel_affine"
                    and inner.name not in self.folded_batch_norms):
                self.channel_affines[inner.name] = channel_affine_parameters(inner)
        for node in self.nodes:
            layer = node.layer
            if not _quantized_wrapper(layer):
                continue
            if wrapper_weight_quantizers(layer):
                self.weights[layer.name] = _weight_integers(layer, int4)
                self.biases[layer.name] = (layer.layer.bias.numpy() if layer.layer.use_bias
                                           else 0.0)
            quantizer, variables = wrapper_output_quantizer(layer)
            if quantizer is not None:
                scale, low, high = quantizer.integer_grid(None, variables)
                cap = _output_cap(layer.layer)  # see _quantize_output
                if cap is not None:
                    high = min(high, int(math.floor(cap / scale + 0.5)))
                self.output_grids[layer.name] = (scale, low, high,
                                                 int(quantizer.bit_width(variables)))


class _Kernel(NamedTuple):
    """A quantized kernel: ``scale x integers``, from a grid of `allowed` values, stored as
    ``refinement x integers`` (int8) or as the integers themselves packed in int4."""

    integers: np.ndarray
    scale: float
    bits: int
    allowed: int
    refinement: int
    packed: bool


def _weight_integers(wrapper, int4: bool) -> _Kernel:
    """The wrapper's quantized kernel as integers on its learned grid; with `int4`, packed if
    its grid fits in int4's [-8, 7]."""
    (kernel, quantizer, variables), = wrapper_weight_quantizers(wrapper)
    quantized = quantizer(kernel, training=False, weights=variables).numpy()
    scale, low, high = quantizer.integer_grid(kernel, variables)
    bits = int(quantizer.bit_width(variables))
    if max(-low, high) > _INT8_WEIGHT_LIMIT:
        raise ValueError(
            f"layer {wrapper.layer.name!r}: its {bits}-bit weight "
            f"grid has integers up to {max(-low, high)}, beyond int8's +-127 (the DoReFa paper "
            "grid at 8 bits); quantize with grid='symmetric' or max_bits=7")
    integers = np.round(quantized / scale)
    packed = int4 and low >= _INT4_LOW and high <= _INT4_HIGH
    refinement = 1 if packed else _INT8_WEIGHT_LIMIT // max(1, int(np.abs(integers).max()))
    # The DoReFa paper grid holds only odd integers: 2^b of its 2 high + 1.
    return _Kernel(integers, scale, bits, min(high - low + 1, 2**bits), refinement, packed)


def _batch_norm_affine(batch_norm) -> Tuple[np.ndarray, np.ndarray]:
    """``(m, offset)`` with ``BN(y) = m y + offset`` in inference mode."""
    gamma = batch_norm.gamma.numpy() if batch_norm.scale else 1.0
    beta = batch_norm.beta.numpy() if batch_norm.center else 0.0
    mean, variance = batch_norm.moving_mean.numpy(), batch_norm.moving_variance.numpy()
    multiplier = gamma / np.sqrt(variance + batch_norm.epsilon)
    return (np.broadcast_to(multiplier, mean.shape).astype(np.float32),
            (beta - multiplier * mean).astype(np.float32))


def _stored_kernel(kernel: _Kernel, channel_multiplier, shape=None):
    """``(stored integers, stored scale)`` of `kernel` (reshaped to `shape` if given): the
    grid's integers ``k`` as ``r k`` with scale ``scale / r`` (``r`` = ``kernel.refinement``,
    see "Bias resolution" in the module docstring), per output channel ``scale |m_c| / r``
    when a BatchNormalization with multipliers ``m_c`` is folded in (its sign is carried by
    the stored values)."""
    integers = kernel.integers if shape is None else kernel.integers.reshape(shape)
    integers, scale = integers * kernel.refinement, kernel.scale / kernel.refinement
    if channel_multiplier is None:
        return integers, scale
    # A channel whose BN multiplier is 0 is constant; any positive scale stores it.
    return (integers * np.sign(channel_multiplier),
            np.maximum(scale * np.abs(channel_multiplier), 1e-12).astype(np.float32))


def _fake_quantized_kernel(kernel: _Kernel, channel_multiplier, shape=None):
    """The kernel as the converter must see it: a symmetric narrow-range 8-bit FakeQuant whose
    scale is :func:`_stored_kernel`'s, so the file holds exactly its integers."""
    integers, scale = _stored_kernel(kernel, channel_multiplier, shape)
    values = tf.constant(integers * scale, tf.float32)
    if channel_multiplier is None:
        return tf.quantization.fake_quant_with_min_max_vars(
            values, -127.0 * scale, 127.0 * scale, num_bits=8, narrow_range=True)
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(
        values, -127.0 * scale, 127.0 * scale, num_bits=8, narrow_range=True)


def _weight_layer(wrapper, x, plan):
    inner = wrapper.layer
    kernel = plan.weights[wrapper.name]
    bias = plan.biases[wrapper.name]
    multiplier = None
    if wrapper.name in plan.affines:
        multiplier, offset = plan.affines[wrapper.name]
        bias = multiplier * bias + offset
    kind = kind_of(inner).name
    if kind == "depthwise_conv":
        height, width, channels, depth = kernel.integers.shape
        if multiplier is not None:  # per output channel c * depth + k: last axis of [.., 1, C*D]
            flat = _fake_quantized_kernel(kernel, multiplier,
                                          (height, width, 1, channels * depth))
            weights = tf.reshape(flat, kernel.integers.shape)
        else:
            weights = _fake_quantized_kernel(kernel, None)
        y = tf.nn.depthwise_conv2d(x, weights, (1,) + tuple(inner.strides) + (1,),
                                   inner.padding.upper(), dilations=inner.dilation_rate)
    elif kind == "conv_transpose":
        output_shape = tuple(int(d) for d in inner.compute_output_shape(x.shape))
        y = tf.nn.conv2d_transpose(x, _fake_quantized_kernel(kernel, None), output_shape,
                                   inner.strides, inner.padding.upper(),
                                   dilations=inner.dilation_rate)
    elif kind == "conv":
        y = tf.nn.conv2d(x, _fake_quantized_kernel(kernel, multiplier), inner.strides,
                         inner.padding.upper(), dilations=inner.dilation_rate)
    elif kind == "conv1d":  # as a 2-D convolution over a height of 1
        if inner.padding == "causal":
            raise ValueError(f"layer {inner.name!r}: Conv1D with causal padding has no integer "
                             "kernel here; use padding='valid' or 'same'")
        width, inputs, outputs = kernel.integers.shape
        image = tf.expand_dims(x, 1)
        y = tf.nn.conv2d(image, _fake_quantized_kernel(kernel, multiplier,
                                                       (1, width, inputs, outputs)),
                         (1, inner.strides[0]), inner.padding.upper(),
                         dilations=(1, inner.dilation_rate[0]))
        y = tf.squeeze(y, 1)
    elif len(x.shape) > 2 or multiplier is not None:
        # Dense on a feature map, or with per-channel scales (TFLite's FULLY_CONNECTED takes
        # no per-channel weights from the converter): a 1x1 convolution.
        inputs, outputs = kernel.integers.shape
        shape = x.shape
        image = tf.reshape(x, [-1, 1, 1, inputs]) if len(shape) == 2 else tf.reshape(
            x, [-1, 1, int(np.prod(shape[1:-1])), inputs]) if len(shape) != 4 else x
        y = tf.nn.conv2d(image, _fake_quantized_kernel(kernel, multiplier,
                                                       (1, 1, inputs, outputs)), 1, "VALID")
        y = tf.reshape(y, [-1] + [int(d) for d in shape[1:-1]] + [outputs])
    else:
        y = tf.matmul(x, _fake_quantized_kernel(kernel, multiplier))
    if inner.use_bias or multiplier is not None:
        y = y + tf.constant(np.asarray(bias, np.float32))
    return _activation(inner, inner.activation, y, quantized=wrapper.name in plan.output_grids)


def _channel_affine(layer, x, plan):
    """``m_c x + o_c`` as an integer 1x1 depthwise convolution (see the module docstring)."""
    multiplier, offset = plan.channel_affines[layer.name]
    return _depthwise_affine(x, multiplier, offset)


def _depthwise_affine(x, multiplier, offset=None):
    """``m_c x + o_c`` on the last axis of `x` (any rank) by a 1x1 depthwise convolution whose
    int8 weights are ``127 sign(m_c)`` with scale ``|m_c| / 127``: the file stores ``m_c``
    exactly, and the converter quantizes ``o_c`` onto the int32 bias grid. No offset: no
    bias add."""
    shape = x.shape
    channels = int(shape[-1])
    multiplier = np.broadcast_to(multiplier, (channels,)).astype(np.float32)
    scale = np.maximum(np.abs(multiplier) / _INT8_WEIGHT_LIMIT, 1e-12).astype(np.float32)
    integers = np.where(multiplier == 0, 0.0, _INT8_WEIGHT_LIMIT * np.sign(multiplier))
    weights = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        tf.constant((integers * scale).reshape(1, 1, 1, channels), tf.float32),
        -127.0 * scale, 127.0 * scale, num_bits=8, narrow_range=True)
    image = x if len(shape) == 4 else tf.reshape(
        x, [-1, 1, 1 if len(shape) == 2 else int(np.prod(shape[1:-1])), channels])
    y = tf.nn.depthwise_conv2d(image, tf.reshape(weights, (1, 1, channels, 1)), (1, 1, 1, 1),
                               "VALID")
    if offset is not None:
        y = y + tf.constant(np.broadcast_to(offset, (channels,)).astype(np.float32))
    return y if len(shape) == 4 else tf.reshape(y, [-1] + [int(d) for d in shape[1:]])


def channel_affine_parameters(layer) -> Tuple[np.ndarray, np.ndarray]:
    """``(m, o)`` with ``layer(x) = m x + o`` in inference mode, for a channel-affine layer."""
    if isinstance(layer, _layers.BatchNormalization):
        return _batch_norm_affine(layer)
    if isinstance(layer, _layers.Rescaling):
        return (np.asarray(layer.scale, np.float32), np.asarray(layer.offset, np.float32))
    if isinstance(layer, _layers.Normalization):
        mean = np.asarray(layer.mean, np.float32).reshape(-1)
        deviation = np.sqrt(np.maximum(np.asarray(layer.variance, np.float32).reshape(-1),
                                       keras.backend.epsilon()))
        if layer.invert:
            return deviation, mean
        return 1.0 / deviation, -mean / deviation
    return (layer.multiplier.numpy(),
            np.float32(0.0) if layer.offset is None else layer.offset.numpy())


_ACTIVATION_OPS = {"softmax": tf.nn.softmax, "sigmoid": tf.sigmoid, "tanh": tf.tanh,
                   "gelu": lambda y: tf.nn.gelu(y, approximate=False)}


def _activation(layer, activation, y, quantized: bool = False):
    if activation in (None, keras.activations.linear):
        return y
    if activation is keras.activations.relu:
        return tf.nn.relu(y)
    if _is_relu6(activation):
        return tf.nn.relu(y) if quantized else tf.nn.relu6(y)
    name = activation_name(layer)
    if name in _ACTIVATION_OPS and type(layer) is _layers.Activation:
        if name == "gelu" and getattr(activation, "__defaults__", None) == (True,):
            return tf.nn.gelu(y, approximate=True)
        return _ACTIVATION_OPS[name](y)
    raise ValueError(f"layer {layer.name!r}: activation {name!r} has no integer kernel here; "
                     f"allowed: linear, relu, relu6, {', '.join(_ACTIVATION_OPS)}")


def _relu_layer(layer, y, quantized: bool):
    if layer.negative_slope or layer.threshold:
        raise ValueError(f"layer {layer.name!r}: a ReLU with negative_slope or threshold has no "
                         "integer kernel here")
    if layer.max_value is None or quantized:  # a quantized output's grid holds the cap
        return tf.nn.relu(y)
    return tf.clip_by_value(y, 0.0, float(layer.max_value))


def _output_cap(layer) -> Optional[float]:
    """The upper clip of a ReLU-like layer (ReLU(max_value), relu6), or None."""
    if isinstance(layer, _layers.ReLU):
        return None if layer.max_value is None else float(layer.max_value)
    return 6.0 if _is_relu6(getattr(layer, "activation", None)) else None


def _is_relu6(activation) -> bool:
    """tf-keras has no ``activations.relu6``; ``tf.nn.relu6`` is passed as a function."""
    return getattr(activation, "__name__", "") == "relu6"


def _quantize_output(wrapper, y, plan):
    """Clamps `y` to the learned grid and fake-quantizes it with the 8-bit range of that step.

    A ReLU cap ``c`` (ReLU6) is part of the grid: Keras computes ``round(min(y, c) / s)``,
    which is ``round(y / s)`` clamped at ``round(c / s)``, so the grid's top integer becomes
    ``min(high, floor(c / s + 1/2))``. (The converter leaves a convolution in float when a
    separate clip sits between it and its FakeQuant.)
    """
    scale, low, high, bits = plan.output_grids[wrapper.name]  # a cap is applied there
    if (low == 0 and high > 255) or (low < 0 and high > 127):
        raise ValueError(f"layer {wrapper.layer.name!r}: its output has {bits} bits; "
                         "activations above 8 bits (int16) are not supported by this export yet")
    if low == 0:
        # Pooling and concatenation of unsigned tensors are non-negative already; a ReLU there
        # (no kernel to fuse into) would make the converter round once more on the input grid.
        if kind_of(wrapper.layer).name not in _NON_NEGATIVE_KINDS:
            y = tf.nn.relu(y)
        # Zero point 127 - high puts int8's top at high * scale: the kernel's own saturation
        # clamps there, and its fused ReLU at 0, with no MINIMUM op.
        return _int8_fake_quant(y, scale, high)
    # Signed: the same top at high * scale; the bottom needs one MAXIMUM op. After an average
    # pool whose input cannot take the mean below the grid's bottom (low - 1/2 steps) the clamp
    # is left out: there a MAXIMUM made the converter give the MEAN the input's scale and
    # requantize after it (a second rounding: 24-30% of EfficientNetV2B0's squeeze-excite
    # means one step off Keras's), or refuse the MAXIMUM when the two steps are close
    # (MobileNetV3Small). Where the mean can go below it (an output step finer than the
    # input's), the int8 range reaches (high - 255) steps, far below a low-bit grid's bottom:
    # the mean is rounded onto the grid first, then an exact identity convolution (a MAXIMUM
    # right after the MEAN is what the converter mishandles) carries it to the clamp.
    if kind_of(wrapper.layer).name == "average_pool":
        y = _int8_fake_quant(y, scale, high)
        if _mean_stays_on_grid(plan, wrapper.name, scale, low):
            return y
        return _fake_quant_on_grid(_int8_fake_quant(_identity_conv(y), scale, high), scale,
                                   low, high)
    return _fake_quant_on_grid(y, scale, low, high)


def _mean_stays_on_grid(plan, layer_name: str, scale: float, low: int) -> bool:
    """Whether an average of the layer's input can never round below ``low x scale``."""
    grid = _input_grid(plan, layer_name)
    return grid is not None and grid[0] * grid[1] >= (low - 0.5) * scale


def _same_step(grid, scale: float) -> bool:
    return grid is not None and np.isclose(grid[0], scale, rtol=1e-6, atol=0.0)


def _identity_conv(x):
    """`x` through a 1x1 depthwise convolution of weight 1 (int8 127, scale 1/127): with the
    FakeQuant after it, an int8 DEPTHWISE_CONV_2D that requantizes `x` onto a new step.

    XNNPACK runs a plain requantization (QUANTIZE int8 -> int8) with a multiplier of 8
    fractional bits, which moved 0.4% of the values of a concatenation one step off Keras;
    a convolution's requantization uses 32 bits and matches Keras' rounding."""
    return _depthwise_affine(x, 1.0)


def _fake_quant_on_grid(y, scale: float, low: int, high: int):
    """`y` rounded onto ``scale x [low, high]`` as an int8 tensor of that step and top.

    The clamp at the bottom is kept even where `y` cannot go below it: between two FakeQuant
    ops the converter needs an op to carry the requantization (without one it kept the first
    scale and broke CONCATENATION's same-scale rule)."""
    return _int8_fake_quant(tf.maximum(y, low * scale), scale, high)


def _int8_fake_quant(y, scale: float, high: int):
    """`y` as int8 with step `scale` and top ``high x scale`` (zero point ``127 - high``)."""
    return tf.quantization.fake_quant_with_min_max_vars(y, (high - 255.0) * scale,
                                                        high * scale, num_bits=8)


def _layer_op(layer, inputs, plan) -> tf.Tensor:
    """The float ops of one layer on its input tensors (quantization is added by the caller)."""
    inner = unwrapped_layer(layer)
    kind = kind_of(inner)
    x = inputs[0] if len(inputs) == 1 else None
    name = kind.name if kind is not None else None
    if layer.name in plan.folded or (kind is not None and kind.weights):
        if not _quantized_wrapper(layer) or not wrapper_weight_quantizers(layer):
            return _float_layer(inner, inputs, plan, "it is not quantized (skipped or float)")
        return _weight_layer(layer, x, plan)
    if isinstance(inner, _layers.BatchNormalization) and inner.name in plan.folded_batch_norms:
        return x
    quantized = layer.name in plan.output_grids
    if name == "channel_affine":
        return _channel_affine(inner, x, plan)
    if isinstance(inner, _layers.ReLU):
        return _relu_layer(inner, x, quantized)
    if isinstance(inner, _layers.Activation):
        if kind is None:
            return _float_layer(inner, inputs, plan, f"activation {activation_name(inner)!r} "
                                "has no integer kernel here")
        return _activation(inner, inner.activation, x, quantized)
    if name == "layer_norm":
        if not plan.calibrated:
            return _float_layer(inner, inputs, plan, "the statistics inside a "
                                "LayerNormalization need a representative_dataset to be "
                                "quantized")
        return inner(x)
    if name == "add":
        return tf.add_n(inputs) if len(inputs) > 2 else inputs[0] + inputs[1]
    if name == "multiply":
        y = inputs[0]
        for other in inputs[1:]:
            y = y * other
        return y
    if isinstance(inner, _layers.Concatenate):
        if quantized:
            # Each input moves onto the output's grid first, rounded once, as in Keras. Left
            # to itself the converter requantizes one input onto the other's scale and the
            # concatenation onto the output's: two roundings, one step off for ~16% of values.
            scale, low, high, _ = plan.output_grids[layer.name]
            sources = plan.inputs[layer.name]
            inputs = [_fake_quant_on_grid(
                t if _same_step(plan.output_grids.get(source), scale) else _identity_conv(t),
                scale, low, high) for t, source in zip(inputs, sources)]
        return tf.concat(inputs, axis=inner.axis)
    if isinstance(inner, (_layers.AveragePooling2D, _layers.MaxPooling2D)):
        pool = tf.nn.avg_pool2d if isinstance(inner, _layers.AveragePooling2D) else tf.nn.max_pool2d
        return pool(x, inner.pool_size, inner.strides, inner.padding.upper())
    if isinstance(inner, (_layers.GlobalAveragePooling2D, _layers.GlobalMaxPooling2D,
                          _layers.GlobalAveragePooling1D, _layers.GlobalMaxPooling1D)):
        reduce = (tf.reduce_mean if isinstance(inner, (_layers.GlobalAveragePooling2D,
                                                       _layers.GlobalAveragePooling1D))
                  else tf.reduce_max)
        axes = [1, 2] if len(x.shape) == 4 else [1]
        return reduce(x, axis=axes, keepdims=bool(inner.keepdims))
    if isinstance(inner, _layers.Flatten):
        return tf.reshape(x, [tf.shape(x)[0], -1])
    if isinstance(inner, _layers.Reshape):
        return tf.reshape(x, [tf.shape(x)[0]] + list(inner.target_shape))
    if isinstance(inner, _layers.ZeroPadding2D):
        (top, bottom), (left, right) = inner.padding
        return tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
    if isinstance(inner, (_layers.Dropout, _layers.SpatialDropout2D, _layers.Identity)):
        return x
    if isinstance(inner, (_layers.Cropping2D, _layers.UpSampling2D)) or name in (
            "same_grid", "max_pool", "resize_bilinear"):
        return inner(x)  # slicing and resizing: the converter makes them integer
    return _float_layer(inner, inputs, plan, "it has no integer kernel in this export")


def _float_layer(layer, inputs, plan, reason: str):
    """The layer itself, in float, when `plan` allows float ops; else the error naming it."""
    if not plan.allow_float_ops:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) cannot be exported "
                         f"with integer kernels: {reason}. Pass allow_float_ops=True for a "
                         "file that runs it in float (listed in the report's float_ops), or "
                         "quantize the model without skipping it.")
    return layer(*inputs) if len(inputs) > 1 else layer(inputs[0])


def _pin_kept_grid(layer, y, plan):
    """Restates the grid a value-moving layer (reshape, padding, nearest resizing, max pooling)
    keeps, as a FakeQuant of the same range, so that the converter never gives its output
    another scale (it would propagate a consumer's scale back through these ops and fail
    their same-scale constraint). The values are on that grid already: nothing changes."""
    kind = kind_of(unwrapped_layer(layer))
    if kind is None or kind.output != "keep" or isinstance(layer, _layers.InputLayer):
        return y
    grid = _input_grid(plan, layer.name)
    if grid is None or y.dtype != tf.float32:
        return y
    scale, _, high, _ = grid
    return _int8_fake_quant(y, scale, high)


def integer_function(model) -> Callable:
    """The model as a ``tf.function`` of batch-1 inputs, in the form the converter makes int8.

    Raises:
      ValueError: For a model without tfadaqat quantizers, multiple inputs or outputs, or a
        layer that has no integer kernel (named in the message).
    """
    return _integer_function(model, _plan(model))


def _plan(model, weight_storage: str = "int8", allow_float_ops: bool = False,
          calibrated: bool = False) -> _ExportPlan:
    if not any(_quantized_wrapper(layer) for layer in getattr(model, "layers", [])):
        raise ValueError(f"model {getattr(model, 'name', model)!r} was not quantized with "
                         "tfadaqat.quantize_model: nothing to export with integer kernels")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        outputs = [unwrapped_layer(tensor._keras_history.layer).name
                   for tensor in model.outputs]
        raise ValueError(
            f"export_tflite supports models with one input and one output; model "
            f"{model.name!r} has {len(model.inputs)} input(s) and {len(model.outputs)} "
            f"output(s) {outputs}. Export one output at a time from a model of the same "
            "trained layers, e.g. export_tflite(keras.Model(qmodel.inputs, "
            "qmodel.outputs[0]), path)" + (
                "" if len(model.inputs) == 1 else
                ", after merging the inputs into one (e.g. a Concatenate of them before the "
                "model is quantized)"))
    if weight_storage not in WEIGHT_STORAGES:
        raise ValueError(f"weight_storage must be one of {WEIGHT_STORAGES}, got "
                         f"{weight_storage!r}")
    return _ExportPlan(model, int4=weight_storage == "int4", allow_float_ops=allow_float_ops,
                       calibrated=calibrated)


def _integer_function(model, plan: _ExportPlan) -> Callable:
    output_name = model.outputs[0]._keras_history.layer.name
    spec = tf.TensorSpec([1] + list(model.inputs[0].shape[1:]), tf.float32)

    def forward(images):
        values: Dict[str, tf.Tensor] = {}
        for node in plan.nodes:
            layer = node.layer
            if isinstance(layer, _layers.InputLayer):
                values[layer.name] = images
                continue
            with tf.name_scope(unwrapped_layer(layer).name):
                y = _layer_op(layer, [values[name] for name in plan.inputs[layer.name]], plan)
                if _quantized_wrapper(layer) and wrapper_output_quantizer(layer)[0] is not None:
                    y = _quantize_output(layer, y, plan)
                else:
                    y = _pin_kept_grid(layer, y, plan)
            values[layer.name] = y
        return values[output_name]

    # Build once eagerly so every layer error is raised here, with its name.
    forward(tf.zeros(spec.shape))
    return tf.function(forward, input_signature=[spec])


def _representative(data) -> Callable:
    """A converter representative dataset from an array, a tf.data.Dataset or a generator."""
    def generator():
        source = data() if callable(data) else data
        if isinstance(source, tf.data.Dataset):
            source = source.unbatch().as_numpy_iterator()
        for example in source:
            example = example[0] if isinstance(example, (tuple, list)) else example
            yield [np.asarray(example, np.float32)[None]]
    return generator


def _input_scale(plan: _ExportPlan, layer_name: str) -> Optional[float]:
    """The step of the grid a layer's input lies on, or None if it is not quantized."""
    grid = _input_grid(plan, layer_name)
    return None if grid is None else grid[0]


def _input_grid(plan: _ExportPlan, layer_name: str):
    """``(scale, low, high, bits)`` of the grid a layer's input lies on, or None."""
    source = plan.inputs[layer_name][0] if len(plan.inputs[layer_name]) == 1 else None
    while source is not None and source not in plan.output_grids:
        layer = next(node.layer for node in plan.nodes if node.layer.name == source)
        inputs = plan.inputs.get(source, [])
        kind = kind_of(unwrapped_layer(layer))
        keeps_grid = kind is not None and kind.output == "keep"
        source = inputs[0] if keeps_grid and len(inputs) == 1 else None
    return None if source is None else plan.output_grids[source]


def align_biases(model, weight_storage: str = "int8") -> int:
    """Moves every integer kernel's bias onto the grid TFLite stores it on; in place.

    TFLite keeps a conv or dense layer's bias (with a folded BatchNormalization: ``m_c b_c +
    offset_c``) as an int32 count of ``input scale x stored weight scale``. This shifts each
    such bias by less than half of that unit, through BatchNormalization's ``beta`` (or the
    layer's own bias), so that the Keras model in inference mode computes what the integer
    kernels compute. The shifts are far below the quantization steps (a thousandth of an
    output step or less); without them, the rounding moved 0.1-0.3% of the values of layers
    fed by 3-4-bit activations to the neighbouring integer, which deeper layers amplified.

    A channel-affine layer exported on its own (BatchNormalization that folds into nothing,
    Rescaling, Normalization: a 1x1 depthwise convolution of weight 127 and scale
    ``|m_c| / 127``) has its offset moved the same way: BatchNormalization's ``beta``,
    Rescaling's ``offset``, Normalization's mean (by ``-shift / m_c``). Left unaligned,
    EfficientNetV2B0's Normalization put 2.3% of its outputs one step away from Keras's, and
    the file's logits ended 49 output steps away.

    Args:
      model: A model returned by :func:`tfadaqat.quantize_model`.
      weight_storage: As :func:`export_tflite`'s (int4 kernels have a coarser bias grid).

    Returns:
      How many layers had a bias or offset to align (layers whose input is not on a learned
      grid, and layers with neither bias nor a centred BatchNormalization, are left as they
      are).
    """
    plan = _plan(model, weight_storage)
    aligned = 0
    for name, kernel in plan.weights.items():
        input_scale = _input_scale(plan, name)
        wrapper = next(node.layer for node in plan.nodes if node.layer.name == name)
        inner, batch_norm = wrapper.layer, plan.folded.get(name)
        if input_scale is None or not (inner.use_bias or (batch_norm and batch_norm.center)):
            continue
        multiplier, offset = plan.affines.get(name, (None, 0.0))
        _, weight_scale = _stored_kernel(kernel, multiplier)
        unit = input_scale * np.asarray(weight_scale, np.float64)
        total = (plan.biases[name] * (1.0 if multiplier is None else multiplier)
                 + np.asarray(offset, np.float64))
        shift = np.round(total / unit) * unit - total
        if batch_norm is not None and batch_norm.center:
            batch_norm.beta.assign(batch_norm.beta.numpy() + shift.astype(np.float32))
        elif multiplier is not None:  # bias before a BN without beta: m_c b_c moves by shift
            safe = np.where(multiplier == 0, 1.0, multiplier)
            inner.bias.assign(inner.bias.numpy() + (shift / safe).astype(np.float32))
        else:
            inner.bias.assign(inner.bias.numpy() + np.broadcast_to(shift, inner.bias.shape)
                              .astype(np.float32))
        aligned += 1
    for node in plan.nodes:
        inner = unwrapped_layer(node.layer)
        if inner.name not in plan.channel_affines:
            continue
        input_scale = _input_scale(plan, node.layer.name)
        if input_scale is None or (isinstance(inner, _layers.BatchNormalization)
                                   and not inner.center):
            continue
        multiplier, offset = plan.channel_affines[inner.name]
        output_shape = node.layer.output.shape
        channels = int(output_shape[-1]) if output_shape.rank else 1
        multiplier = np.broadcast_to(multiplier, (channels,)).astype(np.float64)
        unit = input_scale * np.maximum(np.abs(multiplier).astype(np.float32)
                                        / _INT8_WEIGHT_LIMIT, 1e-12).astype(np.float32)
        offset = np.broadcast_to(offset, (channels,)).astype(np.float64)
        shift = np.round(offset / unit) * unit - offset
        _move_offset(inner, shift, multiplier)
        aligned += 1
    if aligned:  # Rescaling and Normalization constants are captured by traced functions
        model.predict_function = model.test_function = model.train_function = None
    return aligned


def _move_offset(layer, shift: np.ndarray, multiplier: np.ndarray) -> None:
    """Adds `shift` (per channel) to the offset ``o`` of a channel-affine ``m x + o`` layer.

    BatchNormalization moves ``beta``, ChannelAffine its ``offset``, Rescaling its ``offset``
    constant, Normalization its mean (``(x - mean) / d`` has ``o = -mean / d``, so the mean
    moves by ``-shift d``; inverted, ``mean + d x`` moves it by ``shift``).
    """
    if isinstance(layer, _layers.BatchNormalization):
        layer.beta.assign((layer.beta.numpy() + _per_channel(shift, layer.beta.shape))
                          .astype(np.float32))
    elif isinstance(layer, ChannelAffine) and layer.offset is None:
        if np.any(shift != 0):  # a zero offset is on every grid: nothing to move
            raise ValueError(f"layer {layer.name!r} has no offset to move by {shift}")
    elif isinstance(layer, ChannelAffine):
        layer.offset.assign((layer.offset.numpy() + _per_channel(shift, layer.offset.shape))
                            .astype(np.float32))
    elif isinstance(layer, _layers.Rescaling):
        offset = np.asarray(layer.offset, np.float64) + shift
        layer.offset = (float(offset[0]) if np.all(offset == offset[0])
                        else [float(value) for value in offset])
    elif isinstance(layer, _layers.Normalization):
        mean = np.broadcast_to(np.asarray(layer.mean, np.float64).reshape(-1), shift.shape)
        mean = mean + (shift if layer.invert else -shift / multiplier)
        if layer.input_mean is None:  # adapted: the state lives in variables
            layer.adapt_mean.assign(_per_channel(mean, layer.adapt_mean.shape)
                                    .astype(layer.adapt_mean.dtype.as_numpy_dtype))
            layer.finalize_state()
        else:
            layer.input_mean = (float(mean[0]) if np.size(layer.input_mean) == 1
                                and np.all(mean == mean[0]) else mean.astype(np.float32))
            layer.mean = tf.cast(tf.reshape(tf.constant(mean, tf.float64),
                                            layer._broadcast_shape), layer.compute_dtype)
    else:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no offset to align")


def _per_channel(values: np.ndarray, shape) -> np.ndarray:
    """`values` (one per channel) in a variable's `shape`; a variable shared by all
    channels (a scalar) takes their common value."""
    shape = tuple(shape)
    if values.size == int(np.prod(shape)):
        return values.reshape(shape)
    if np.all(values == values.flat[0]):
        return np.full(shape, values.flat[0])
    raise ValueError(f"{values.size} different per-channel values for a variable of shape "
                     f"{shape}")


def _offset_constants(model) -> List[Tuple[Any, Dict[str, Any]]]:
    """The Rescaling and Normalization constants :func:`align_biases` may change (their
    variables are restored with the model's weights)."""
    saved = []
    for layer in model.layers:
        inner = unwrapped_layer(layer)
        if isinstance(inner, _layers.Rescaling):
            saved.append((inner, {"offset": inner.offset}))
        elif isinstance(inner, _layers.Normalization) and inner.input_mean is not None:
            saved.append((inner, {"input_mean": inner.input_mean, "mean": inner.mean}))
    return saved


def _restore_offset_constants(model, saved) -> None:
    for layer, attributes in saved:
        for name, value in attributes.items():
            setattr(layer, name, value)
    for layer in model.layers:
        inner = unwrapped_layer(layer)
        if isinstance(inner, _layers.Normalization) and inner.input_mean is None:
            inner.finalize_state()
    model.predict_function = model.test_function = model.train_function = None


def export_tflite(model, path: str, *, representative_dataset=None,
                  input_type=tf.float32, output_type=tf.float32,
                  verify_with=None, runtimes=("xnnpack",), align: bool = True,
                  weight_storage: str = "int8", allow_float_ops: bool = False,
                  progress: Optional[Callable[[str], Any]] = None) -> ExportReport:
    """Writes `model` as a TFLite file with int8 kernels at its learned bit-widths.

    Args:
      model: A model returned by :func:`tfadaqat.quantize_model` (trained or not).
      path: The ``.tflite`` file to write; written whole or not at all.
      representative_dataset: Examples (NumPy array, ``tf.data.Dataset`` of examples or of
        ``(x, y)``, or a generator function) for tensors whose range training did not fix
        (a float output, for instance). Not needed when every tensor is quantized.
      input_type: ``tf.float32`` (quantize inside the file) or ``tf.int8``.
      output_type: ``tf.float32`` (dequantize inside the file) or ``tf.int8``.
      verify_with: Optional examples (array or dataset, as above) run through the file and the
        Keras model in inference mode; the report then holds their agreement.
      runtimes: The runtimes `verify_with` runs the file on (:mod:`tfadaqat.runtimes`):
        "xnnpack" (LiteRT's default), "builtin" (TFLite's reference kernels), "tflm"
        (TensorFlow Lite Micro, package ``tflite-micro``). Checked before anything is done.
      align: First move the model's biases onto TFLite's int32 bias grid, in place
        (:func:`align_biases`), so that file and model compute the same thing. False leaves
        the model untouched, and the file then rounds each bias on its own.
      weight_storage: "int8" (every kernel in int8; the fastest with XNNPACK) or "int4":
        kernels whose learned grid fits in [-8, 7] (4 bits or fewer, except the DoReFa paper
        grid at 4 bits) are stored packed, two values per byte, for a smaller file. LiteRT
        runs them; XNNPACK does not accelerate int4 filters (measured 4.2x slower than int8 on
        ResNet20 by ``bench/int4_packing.py``).
      allow_float_ops: Write a hybrid file when a layer has no integer kernel (or was left
        in float): it runs in float between DEQUANTIZE and QUANTIZE ops, and the report's
        ``float_ops`` lists every such op. False (the default) raises instead.
      progress: Called with a message at each stage (the command line prints them).

    Returns:
      An :class:`ExportReport`.

    Raises:
      ValueError: For a model not quantized with tfadaqat or whose quantizers were never
        initialised (no batch seen yet), a layer without an integer kernel
        (named), bad `input_type`/`output_type`, or a converted file with a float kernel.
        When export fails, no file is written and the model's weights are as they were.
      OSError: If the folder of `path` is missing or not writable (nothing is written).
    """
    for name, value in (("input_type", input_type), ("output_type", output_type)):
        if value not in (tf.float32, tf.int8):
            raise ValueError(f"{name} must be tf.float32 or tf.int8, got {value!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise OSError(f"cannot write {path!r}: folder {folder!r} is missing or not writable")
    say = progress or (lambda message: None)
    runtimes = validate_runtimes(runtimes)
    if weight_storage not in WEIGHT_STORAGES:
        raise ValueError(f"weight_storage must be one of {WEIGHT_STORAGES}, got "
                         f"{weight_storage!r}")
    initialized = getattr(model, "quantizers_initialized", None)
    if initialized is not None and not initialized():
        raise ValueError(
            f"model {model.name!r} has quantizers that were never initialised (their steps and "
            "clips come from the first batch of fit/evaluate/predict): train it, or call "
            "model.initialize_quantizers(examples), before exporting")
    original_weights = model.get_weights() if align else None
    original_constants = _offset_constants(model) if align else None
    try:
        return _export(model, path, folder, say, representative_dataset, input_type,
                       output_type, verify_with, runtimes, align, weight_storage,
                       allow_float_ops)
    except BaseException:
        if original_weights is not None:  # alignment moved biases: put them back
            model.set_weights(original_weights)
            _restore_offset_constants(model, original_constants)
        raise


def _export(model, path, folder, say, representative_dataset, input_type, output_type,
            verify_with, runtimes, align, weight_storage, allow_float_ops) -> ExportReport:
    calibrated = representative_dataset is not None
    if align:
        say(f"aligned the biases of {align_biases(model, weight_storage)} layers with the "
            "int32 bias grid")
    say("building the integer graph")
    plan = _plan(model, weight_storage, allow_float_ops, calibrated)
    function = _integer_function(model, plan)
    say("converting with the TFLite converter")
    holder = tf.Module()  # the function holds constants only: no model to save
    holder.forward = function
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], holder)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = input_type
    converter.inference_output_type = output_type
    if representative_dataset is not None:
        converter.representative_dataset = _representative(representative_dataset)
    with warnings.catch_warnings():
        # The input's range is the input quantization point's FakeQuant, which the converter
        # reads; it warns as if no range were known.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        content = converter.convert()
    packing = _PACKING_NOTE
    packed = sum(kernel.packed for kernel in plan.weights.values())
    if weight_storage == "int4":
        say(f"packing {packed} kernels of <= 4 bits as int4")
        content = _pack_int4(content)
        packing = f"int4: {packed} of {len(plan.weights)} kernels packed, two values per byte"
    interpreter = tflite_interpreter(content)
    interpreter.allocate_tensors()
    say("checking that every kernel is integer")
    ops, float_ops = _check_integer_kernels(interpreter, allow_float_ops)
    report = ExportReport(path=path, file_bytes=len(content), ops=ops, packing=packing,
                          layers=_stored_weights(plan, interpreter), float_ops=float_ops,
                          **_sizes(model))
    if verify_with is not None:
        say(f"verifying against the Keras model on {', '.join(runtimes)}")
        _verify(model, content, verify_with, runtimes, report)
    # Written last: an export that fails or is interrupted (verification included) leaves
    # no file, and an existing file at `path` is replaced whole or not at all.
    say(f"writing {path} ({len(content):,} bytes)")
    handle, temporary = tempfile.mkstemp(suffix=".tflite.partial", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return report


def _check_integer_kernels(interpreter, allow_float_ops: bool = False
                           ) -> Tuple[List[str], List[str]]:
    """``(op names, float op names)``; raises for a float op unless `allow_float_ops`."""
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    names, float_ops = [], []
    for op_name, inputs in tflite_ops(interpreter):
        names.append(op_name)
        if op_name in _CONVERSION_OPS or op_name == "DELEGATE":
            continue
        floats = [details[i]["name"] for i in inputs
                  if i >= 0 and details[i]["dtype"] not in (np.int8, np.int32)]
        if not floats:
            continue
        if not allow_float_ops:
            raise ValueError(
                f"the converted file runs {op_name} on float tensors {floats}: a tensor lacks "
                "a learned range (pass representative_dataset), or the op has no integer "
                "kernel here (allow_float_ops=True writes a hybrid file)")
        float_ops.append(op_name)
    return names, float_ops


def _stored_weights(plan: _ExportPlan, interpreter) -> List[LayerExport]:
    """Per quantized kernel: its learned bits and the distinct int8 values of its file tensor."""
    tensors = [d for d in interpreter.get_tensor_details()
               if d["dtype"] == np.int8 and len(d["shape"]) in (2, 4)]
    rows = []
    for node in plan.nodes:
        kernel = plan.weights.get(node.layer.name)
        if kernel is None:
            continue
        name = unwrapped_layer(node.layer).name
        matches = [d for d in tensors if d["name"].split("/")[0] == name
                   and "FakeQuant" in d["name"]
                   and int(np.prod(d["shape"])) == kernel.integers.size
                   and _has_data(interpreter, d["index"])]
        distinct = len(np.unique(interpreter.get_tensor(matches[0]["index"]))) if matches else -1
        rows.append(LayerExport(name, kernel.bits, kernel.allowed, distinct))
    return rows


def _has_data(interpreter, index: int) -> bool:
    """Whether tensor `index` is a constant of the file (weights), not an activation."""
    try:
        interpreter.get_tensor(index)
    except ValueError:
        return False
    return True


def _sizes(model) -> Dict[str, float]:
    model_cost = cost(model)
    # Weight memory counts kernels at their bits and biases (and float layers) at 32.
    return {"float32_bytes": 4 * model_cost.params,
            "packed_bytes": model_cost.weight_memory_bits / 8}


def _examples(model, data) -> np.ndarray:
    """Examples as one float32 array from an array or a dataset of examples or batches."""
    if isinstance(data, tf.data.Dataset):
        parts = [part[0] if isinstance(part, (tuple, list)) else part
                 for part in data.as_numpy_iterator()]
        rank = len(model.inputs[0].shape)
        data = np.concatenate(parts) if parts[0].ndim == rank else np.stack(parts)
    return np.asarray(data, np.float32)


def _verify(model, content: bytes, data, runtimes, report: ExportReport) -> None:
    images = _examples(model, data)
    expected = model.predict(images, verbose=0)
    output_wrapper = model.outputs[0]._keras_history.layer
    quantizer, variables = wrapper_output_quantizer(output_wrapper) \
        if _quantized_wrapper(output_wrapper) else (None, None)
    if quantizer is not None:
        step = quantizer.integer_grid(None, variables)[0]
    else:  # an output tfadaqat did not quantize: the file's int8 step, else float units
        step = _output_tensor_step(content) or 1.0
    report.examples = len(images)
    report.output_step = float(step)
    for runtime in runtimes:
        outputs = run_on_runtime(content, runtime, images)
        report.runtimes[runtime] = output_agreement(outputs, expected, step)
    for name, value in report.runtimes[runtimes[0]].items():
        if hasattr(report, name):
            setattr(report, name, value)


def _output_tensor_step(content: bytes) -> Optional[float]:
    """The scale of the file's output when it is int8 (None for a float output)."""
    interpreter = tflite_interpreter(content)
    interpreter.allocate_tensors()
    detail = interpreter.get_output_details()[0]
    return float(detail["quantization"][0]) if detail["dtype"] == np.int8 else None


def output_agreement(outputs: np.ndarray, expected: np.ndarray, step: float
                     ) -> Dict[str, float]:
    """How far `outputs` are from `expected` (both ``[examples, ..., classes]``), as in
    :class:`ExportReport`.

    Args:
      outputs: The outputs to judge (the file's).
      expected: The reference (the Keras model's).
      step: The output grid's step: differences are counted in it, and values within a
        quarter of it of the largest are tied at the top.

    Returns:
      ``top1_agreement`` (some class is at the top of both; ties count once),
      ``top1_strict_agreement`` (``argmax`` equal, ties broken by index),
      ``max_output_difference`` (in steps), ``within_one_step``, ``within_two_steps`` and
      ``differing`` (shares of values: within 1 or 2 steps, not equal).
    """
    tops = [np.isclose(values, values.max(-1, keepdims=True), rtol=0, atol=step / 4)
            for values in (outputs, expected)]
    steps = np.abs(outputs - expected) / step
    return {"top1_agreement": float(np.mean(np.any(tops[0] & tops[1], axis=-1))),
            "top1_strict_agreement": float(np.mean(np.argmax(outputs, -1)
                                                   == np.argmax(expected, -1))),
            "max_output_difference": float(np.max(steps)),
            "within_one_step": float(np.mean(steps <= 1.0 + 1e-3)),
            "within_two_steps": float(np.mean(steps <= 2.0 + 1e-3)),
            "differing": float(np.mean(steps > 1e-3))}


def _digits_like(model) -> np.ndarray:
    """scikit-learn's digits test split (the last quarter), resized to the model's input."""
    from sklearn.datasets import load_digits
    images = (load_digits().images / 16.0).astype(np.float32)[..., None]
    height, width, channels = (int(d) for d in model.inputs[0].shape[1:])
    images = tf.image.resize(images, (height, width)).numpy().clip(0.0, 1.0)
    return np.repeat(images, channels, axis=-1)[-len(images) // 4:]


def main(argv=None, prog: str = "python -m tfadaqat.export") -> int:
    """``tfadaqat export --model PATH.keras --out model.tflite [--int8-io]
    [--weight-storage int8|int4] [--verify-digits]`` (see :mod:`tfadaqat_cli`, which keeps
    TensorFlow's start-up lines off the terminal; ``python -m tfadaqat.export`` still works)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Exports a model saved from tfadaqat to an integer TFLite file.")
    parser.add_argument("--model", required=True, help="a .keras file saved from tfadaqat")
    parser.add_argument("--out", required=True, help="the .tflite file to write")
    parser.add_argument("--int8-io", action="store_true", help="int8 input and output")
    parser.add_argument("--weight-storage", choices=WEIGHT_STORAGES, default="int8",
                        help="int4 packs kernels of <= 4 bits (smaller, slower with XNNPACK)")
    parser.add_argument("--verify-digits", action="store_true",
                        help="compare with Keras on scikit-learn's digits (resized)")
    parser.add_argument("--runtimes", default="xnnpack",
                        help=f"comma-separated runtimes to verify on, among "
                             f"{','.join(RUNTIMES)} (default xnnpack)")
    args = parser.parse_args(argv)
    runtimes = validate_runtimes([name.strip() for name in args.runtimes.split(",")
                                  if name.strip()])
    print(f"loading {args.model}", flush=True)
    try:
        model = load_model(args.model)
    except Exception as error:  # h5py, zipfile and Keras each raise their own types
        raise ValueError(f"could not load {args.model} as a saved tfadaqat model: "
                         f"{error}") from error
    io_type = tf.int8 if args.int8_io else tf.float32
    verify = _digits_like(model) if args.verify_digits else None
    report = export_tflite(model, args.out, input_type=io_type, output_type=io_type,
                           verify_with=verify, runtimes=runtimes,
                           weight_storage=args.weight_storage,
                           progress=lambda m: print(m, flush=True))
    print(f"file {report.file_bytes:,} bytes; float32 {report.float32_bytes:,}; packed "
          f"{report.packed_bytes:,.0f}; {report.packing}")
    for row in report.layers:
        print(f"  {row.layer}: {row.bits} bits, {row.distinct_values} distinct of "
              f"{row.allowed_values} allowed")
    for runtime, agreement in report.runtimes.items():
        print(f"verified on {report.examples} images with {runtime}: top-1 agreement "
              f"{agreement['top1_agreement']:.4f}, largest output difference "
              f"{agreement['max_output_difference']:.2f} steps, "
              f"{agreement['differing']:.2%} of outputs differ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
