"""An integer simulation of an exported file with the arithmetic of TFLite's reference kernels.

The runtimes that share TFLite's reference kernels (LiteRT's ``BUILTIN_REF`` resolver and
TensorFlow Lite Micro) round every requantization twice (:mod:`tfadaqat.requantization`),
where the trained Keras model and XNNPACK round once. A one-step difference in a hidden layer
on a 2-4-bit grid is a whole learned step, so the two outputs part by tens of output steps on
a deep network, and no file can agree with both: the same int32 sums are rounded in two ways.

:func:`simulate` runs the file's int8 graph in NumPy, op by op, from the integers, scales and
zero points the file stores, with the reference kernels' formulas written out here
(requantization by a Q31 multiplier and a rounding shift, ADD's 20-bit rescaling of both
inputs, MEAN's one requantization of the sum, AVERAGE_POOL's rounded division, ...). It is the
per-runtime reference that :func:`tfadaqat.export_tflite` verifies ``"builtin"`` and
``"tflm"`` against, beside the Keras model: equal outputs there mean the runtime computes
the exported integers with exactly the rounding described here, no other difference.

Ops (each checked bit for bit against both runtimes by the tests): CONV_2D,
DEPTHWISE_CONV_2D, FULLY_CONNECTED (int8 or int4 weights, per-tensor or per-channel scales),
ADD, MUL, MEAN over height and width, MAX_POOL_2D, MAXIMUM, CONCATENATION, PAD, RESHAPE,
STRIDED_SLICE, QUANTIZE, DEQUANTIZE, and SOFTMAX at the model's output. SOFTMAX is computed in
float and rounded once, where the reference kernels use fixed-point exponentials, so it can
be a step off them: it is accepted only where nothing but the model's output reads it.
Any other op raises, naming it.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from tfadaqat._compat import tflite_schema
from tfadaqat.requantization import (multiply_by_quantized_multiplier,
                                     multiply_by_reduced_multiplier, quantized_multiplier)

#: Ops computed in float and rounded once (possibly a step off the reference kernels).
APPROXIMATE_OPS = ("SOFTMAX",)


class NotSimulated(ValueError):
    """The file holds an op, a tensor type or an op option this simulation does not cover."""
_INT8_MIN, _INT8_MAX = -128, 127


class _Tensor:
    """A tensor of the file: its shape (batch 1), type name, scales, zero points, constant."""

    def __init__(self, tensor, buffers, type_names):
        self.name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
        self.shape = [int(d) for d in (tensor.shape if tensor.shape is not None else [])]
        self.type = type_names[tensor.type]
        quantization = tensor.quantization
        scales = getattr(quantization, "scale", None)
        self.scales = (np.asarray(scales, np.float32) if scales is not None and len(scales)
                       else None)
        zero_points = getattr(quantization, "zeroPoint", None)
        self.zero_points = (np.asarray(zero_points, np.int64)
                            if zero_points is not None and len(zero_points) else None)
        data = buffers[tensor.buffer].data if tensor.buffer < len(buffers) else None
        self.constant = None if data is None or len(data) == 0 else _decode(
            bytes(bytearray(data)), self.type, self.shape)

    @property
    def scale(self) -> np.float32:
        return np.float32(1.0) if self.scales is None else self.scales[0]

    @property
    def zero_point(self) -> int:
        return 0 if self.zero_points is None else int(self.zero_points[0])


def _decode(data: bytes, type_name: str, shape: List[int]) -> np.ndarray:
    if type_name == "INT4":  # two values per byte, low nibble first
        packed = np.frombuffer(data, np.uint8)
        nibbles = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(-1).astype(np.int16)
        values = np.where(nibbles > 7, nibbles - 16, nibbles)[:int(np.prod(shape))]
        return values.astype(np.int64).reshape(shape)
    dtypes = {"INT8": np.int8, "INT32": np.int32, "FLOAT32": np.float32, "INT64": np.int64,
              "UINT8": np.uint8, "INT16": np.int16}
    if type_name not in dtypes:
        raise NotSimulated(f"tensor type {type_name} has no simulation here")
    return np.frombuffer(data, dtypes[type_name]).reshape(shape)


class _Graph:
    """The file's first subgraph: tensors, operators (name, inputs, outputs, options)."""

    def __init__(self, content: bytes):
        schema = tflite_schema()
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(content, 0))
        type_names = {value: name for name, value in vars(schema.TensorType).items()
                      if not name.startswith("_")}
        op_names = {value: name for name, value in vars(schema.BuiltinOperator).items()
                    if not name.startswith("_")}
        codes = [op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
                 for code in model.operatorCodes]
        subgraph = model.subgraphs[0]
        self.tensors = [_Tensor(t, model.buffers, type_names) for t in subgraph.tensors]
        self.operators = [(codes[op.opcodeIndex], [int(i) for i in op.inputs],
                           [int(i) for i in op.outputs], op.builtinOptions)
                          for op in subgraph.operators]
        self.inputs = [int(i) for i in subgraph.inputs]
        self.outputs = [int(i) for i in subgraph.outputs]

    def check_covered(self) -> None:
        """Raises :class:`NotSimulated` for an op not in the simulation, or an approximate op
        whose output another op reads (the DEQUANTIZE of the model's float output aside)."""
        read = {index for name, inputs, outputs, _ in self.operators
                if name != "DEQUANTIZE" or outputs[0] not in self.outputs for index in inputs}
        for name, _, outputs, _ in self.operators:
            if name not in _OPS:
                raise NotSimulated(f"op {name} (output {self.tensors[outputs[0]].name!r}) has "
                                   f"no reference-arithmetic simulation here; simulated: "
                                   f"{sorted(_OPS)}")
            if name in APPROXIMATE_OPS and read.intersection(outputs):
                raise NotSimulated(f"op {name} (output {self.tensors[outputs[0]].name!r}) feeds "
                                   "another op: it is simulated in float, which is exact only "
                                   "up to one output step, so it is accepted at the model's "
                                   "output only")


#: The arithmetics simulated: the two runtimes of reference kernels (which differ in
#: FULLY_CONNECTED only) and "single", every requantization rounded once from the exact sum.
ARITHMETICS = ("builtin", "tflm", "single")


def simulate(content: bytes, examples: np.ndarray, arithmetic: str = "tflm") -> np.ndarray:
    """The outputs of the TFLite file `content` for float `examples` (``[count, ...]``),
    computed with the reference kernels' integer arithmetic, as float ``[count, ...]``
    (dequantized when the file's output is int8, as :func:`tfadaqat.runtimes.run` returns).

    Args:
      content: The file.
      examples: Float inputs, batch first.
      arithmetic: ``"tflm"`` (TensorFlow Lite Micro) or ``"builtin"`` (LiteRT's reference
        kernels): they differ in FULLY_CONNECTED, which TFLM requantizes as every other op
        (two roundings) and LiteRT's reference kernel in one rounding with a 16-bit
        multiplier (:func:`tfadaqat.requantization.multiply_by_reduced_multiplier`).
        ``"single"``: every sum, mean and rescaled input rounded once, halves to even, from
        its exact value: what the trained Keras model computes on the file's integers (and,
        up to float32 rounding, XNNPACK on int8 kernels).

    Raises:
      ValueError: For an unknown `arithmetic`.
      NotSimulated: A ``ValueError`` for an op, tensor type or op option this simulation
        does not cover (named), or a SOFTMAX whose output feeds another op (other than the
        DEQUANTIZE of the model's float output).
    """
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"arithmetic must be one of {ARITHMETICS}, got {arithmetic!r}")
    graph = _Graph(content)
    graph.check_covered()
    examples = np.asarray(examples, np.float32)
    result = np.concatenate([  # a few examples at a time bounds the memory of the windows
        _run(graph, examples[start:start + _CHUNK], arithmetic)[graph.outputs[0]]
        for start in range(0, len(examples), _CHUNK)])
    target = graph.tensors[graph.outputs[0]]
    if target.type == "INT8":
        return ((result - target.zero_point) * np.float64(target.scale)).astype(np.float32)
    return np.asarray(result, np.float32)


_CHUNK = 16  # examples simulated at once


def _run(graph: _Graph, examples: np.ndarray, arithmetic: str) -> Dict[int, np.ndarray]:
    """``{tensor index: values}`` of every tensor the simulation computes (the graph's ops
    checked by :meth:`_Graph.check_covered` first)."""
    values: Dict[int, np.ndarray] = {}
    source = graph.tensors[graph.inputs[0]]
    if source.type == "INT8":  # as the runtimes feed it: round half to even, then clamp
        values[graph.inputs[0]] = np.clip(np.round(examples / source.scale) + source.zero_point,
                                          _INT8_MIN, _INT8_MAX).astype(np.int64)
    else:
        values[graph.inputs[0]] = examples
    for name, inputs, outputs, options in graph.operators:
        arguments = [values[i] if i in values else (graph.tensors[i].constant if i >= 0
                                                    else None) for i in inputs]
        tensors = [graph.tensors[i] if i >= 0 else None for i in inputs]
        output = graph.tensors[outputs[0]]
        values[outputs[0]] = _OPS[name](arguments, tensors, output, options, arithmetic)
    return values


# ---------------------------------------------------------------------------------------
# Shared arithmetic.

def activation_range(function: int, output: _Tensor) -> Tuple[int, int]:
    """TFLite's ``CalculateActivationRangeQuantized``: the int8 clamp of a fused activation
    (0 none, 1 ReLU, 2 ReLU between -1 and 1, 3 ReLU6), its bounds rounded half away from
    zero from a float32 division."""
    scale, zero_point = output.scale, output.zero_point

    def quantize(value: float) -> int:
        ratio = np.float32(value) / scale
        return zero_point + int(np.sign(ratio) * np.floor(np.abs(ratio) + np.float32(0.5)))

    if function == 0:
        return _INT8_MIN, _INT8_MAX
    if function == 1:
        return max(_INT8_MIN, quantize(0.0)), _INT8_MAX
    if function == 2:
        return max(_INT8_MIN, quantize(-1.0)), min(_INT8_MAX, quantize(1.0))
    if function == 3:
        return max(_INT8_MIN, quantize(0.0)), min(_INT8_MAX, quantize(6.0))
    raise NotSimulated(f"fused activation {function} has no simulation here")


def _multipliers(real: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per value of `real` (float64): the Q31 multiplier and its shift."""
    pairs = [quantized_multiplier(float(value)) for value in np.ravel(real)]
    return (np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64))


def _requantize(accumulators: np.ndarray, real: np.ndarray, output: _Tensor,
                function: int = 0, arithmetic: str = "tflm", reduced: bool = False
                ) -> np.ndarray:
    """``clamp(zero_point + round(a r_c))``, channels last: the reference kernels'
    ``MultiplyByQuantizedMultiplier`` (with `reduced`, its 16-bit single-rounding form), or
    for "single" the exact product rounded once, halves to even."""
    low, high = activation_range(function, output)
    if arithmetic == "single":
        rounded = np.rint(np.asarray(accumulators, np.float64) * real).astype(np.int64)
    else:
        fixed, shift = _multipliers(real)
        if fixed.size == 1:
            fixed, shift = fixed[0], shift[0]
        multiply = (multiply_by_reduced_multiplier if reduced
                    else multiply_by_quantized_multiplier)
        rounded = multiply(accumulators, fixed, shift)
    return np.clip(rounded + output.zero_point, low, high)


def _options(options, name: str, default=0):
    return default if options is None else getattr(options, name, default)


def _pad_amounts(size: int, kernel: int, stride: int, dilation: int, same: bool):
    """TFLite's ``ComputePaddingHeightWidth``: (before, after, outputs) of one axis."""
    effective = (kernel - 1) * dilation + 1
    if same:
        outputs = (size + stride - 1) // stride
    else:
        outputs = (size - effective + stride) // stride
    total = max((outputs - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2, outputs


def _windows(x: np.ndarray, kernel: Tuple[int, int], strides, dilations, same: bool,
             fill=0.0):
    """``[N, outH, outW, kh, kw, C]`` views of `x` (``[N, H, W, C]``) under padding `fill`."""
    (top, bottom, out_h) = _pad_amounts(x.shape[1], kernel[0], strides[0], dilations[0], same)
    (left, right, out_w) = _pad_amounts(x.shape[2], kernel[1], strides[1], dilations[1], same)
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=fill)
    span_h, span_w = (kernel[0] - 1) * dilations[0] + 1, (kernel[1] - 1) * dilations[1] + 1
    view = np.lib.stride_tricks.sliding_window_view(padded, (span_h, span_w), axis=(1, 2))
    view = view[:, ::strides[0], ::strides[1]][:, :out_h, :out_w]
    view = view[..., ::dilations[0], ::dilations[1]]  # [N, oh, ow, C, kh, kw]
    return np.moveaxis(view, 3, -1)


def _weight_scales(weights: _Tensor) -> np.ndarray:
    return weights.scales.astype(np.float64)


def _bias(bias) -> np.ndarray:
    return 0 if bias is None else np.asarray(bias, np.int64)


# ---------------------------------------------------------------------------------------
# Ops: each takes (input values, input tensors, output tensor, builtin options).

def _convolution(values, tensors, output, options, arithmetic, sums):
    """CONV_2D and DEPTHWISE_CONV_2D: ``sums`` of ``q - z_in`` (the padding reads the zero
    point: 0) against the stored integers, plus the int32 bias, requantized per output
    channel by ``s_in s_w,c / s_out``."""
    x, weights, bias = values[0], values[1], values[2] if len(values) > 2 else None
    source, kernel = tensors[0], tensors[1]
    strides = (_options(options, "strideH", 1), _options(options, "strideW", 1))
    dilations = (_options(options, "dilationHFactor", 1), _options(options, "dilationWFactor", 1))
    same = _options(options, "padding") == 0
    shifted = (x - source.zero_point).astype(np.float64)
    products = sums(shifted, np.asarray(weights, np.float64), strides, dilations, same)
    accumulators = np.rint(products).astype(np.int64) + _bias(bias)
    real = np.float64(source.scale) * _weight_scales(kernel) / np.float64(output.scale)
    return _requantize(accumulators, real, output,
                       _options(options, "fusedActivationFunction"), arithmetic)


def _convolution_sums(x, filters, strides, dilations, same):
    """Filters ``[O, kh, kw, C]``: exact in float64 (integers far below 2^53)."""
    view = _windows(x, filters.shape[1:3], strides, dilations, same)
    return np.tensordot(view, filters, axes=([3, 4, 5], [1, 2, 3]))


def _depthwise_sums(x, filters, strides, dilations, same):
    """Filters ``[1, kh, kw, C D]``: output channel ``c D + d`` reads input channel ``c``."""
    filters = filters[0]
    view = _windows(x, filters.shape[:2], strides, dilations, same)
    view = np.repeat(view, filters.shape[-1] // x.shape[-1], axis=-1)
    return np.einsum("nhwijc,ijc->nhwc", view, filters)


def _fully_connected(values, tensors, output, options, arithmetic):
    """As a convolution; LiteRT's reference kernel ("builtin") requantizes in one rounding
    with a 16-bit multiplier (:func:`multiply_by_reduced_multiplier`)."""
    x, weights, bias = values[0], values[1], values[2] if len(values) > 2 else None
    source, kernel = tensors[0], tensors[1]
    filters = np.asarray(weights, np.int64) - kernel.zero_point
    inputs = filters.shape[1]
    flat = (x - source.zero_point).astype(np.float64).reshape(-1, inputs)
    accumulators = np.rint(flat @ filters.T.astype(np.float64)).astype(np.int64) + _bias(bias)
    real = np.float64(source.scale) * _weight_scales(kernel) / np.float64(output.scale)
    result = _requantize(accumulators, real, output,
                         _options(options, "fusedActivationFunction"), arithmetic,
                         reduced=arithmetic == "builtin")
    count = x.shape[0]
    shape = [count] + list(output.shape[1:]) if len(output.shape) > 1 else [-1]
    return result.reshape(shape)


def _add(values, tensors, output, options, arithmetic):
    """Reference ADD: both inputs shifted left by 20 bits, rescaled by ``s_i / (2 max s)``,
    summed, and the sum requantized by ``2 max s / (2^20 s_out)``; every step a Q31 multiply
    and a rounding shift. "single": ``round((s_1 q_1 + s_2 q_2) / s_out)`` (zero points
    taken off)."""
    first, second = tensors[0], tensors[1]
    function = _options(options, "fusedActivationFunction")
    offsets = [np.asarray(value, np.int64) - tensor.zero_point
               for value, tensor in zip(values[:2], tensors[:2])]
    if arithmetic == "single":
        total = (offsets[0] * np.float64(first.scale) + offsets[1] * np.float64(second.scale))
        return _requantize(total, np.array([1.0 / np.float64(output.scale)]), output, function,
                           arithmetic)
    twice_max = np.float64(np.float32(2.0) * max(first.scale, second.scale))
    parts = []
    for offset, tensor in zip(offsets, tensors[:2]):
        fixed, shift = quantized_multiplier(float(np.float64(tensor.scale) / twice_max))
        parts.append(multiply_by_quantized_multiplier(offset * (1 << 20), fixed, shift))
    real = twice_max / np.float64(np.float32((1 << 20) * output.scale))
    return _requantize(parts[0] + parts[1], np.array([real]), output, function, arithmetic)


def _mul(values, tensors, output, options, arithmetic):
    first, second = tensors[0], tensors[1]
    product = ((np.asarray(values[0], np.int64) - first.zero_point)
               * (np.asarray(values[1], np.int64) - second.zero_point))
    real = np.float64(first.scale) * np.float64(second.scale) / np.float64(output.scale)
    return _requantize(product, np.array([real]), output,
                       _options(options, "fusedActivationFunction"), arithmetic)


def _mean(values, tensors, output, options, arithmetic):
    """Reference int8 MEAN over height and width: the sum of ``q - z_in`` requantized once by
    ``s_in / (n s_out)`` (``n`` values a mean)."""
    x, axes = np.asarray(values[0], np.int64), np.asarray(values[1]).reshape(-1)
    source = tensors[0]
    if x.ndim != 4 or sorted(int(a) % 4 for a in axes) != [1, 2]:
        raise NotSimulated(f"MEAN over axes {axes.tolist()} of a rank-{x.ndim} tensor has no "
                         "simulation here (height and width of a 4-D tensor only)")
    count = x.shape[1] * x.shape[2]
    sums = (x - source.zero_point).sum(axis=(1, 2))
    real = np.float64(source.scale) / (count * np.float64(output.scale))
    result = _requantize(sums, np.array([real]), output, 0, arithmetic)
    return result.reshape([x.shape[0]] + list(output.shape[1:]))


def _max_pool(values, tensors, output, options, arithmetic):
    x = np.asarray(values[0], np.int64)
    kernel = (_options(options, "filterHeight", 1), _options(options, "filterWidth", 1))
    strides = (_options(options, "strideH", 1), _options(options, "strideW", 1))
    same = _options(options, "padding") == 0
    low, high = activation_range(_options(options, "fusedActivationFunction"), output)
    view = _windows(x, kernel, strides, (1, 1), same, fill=np.iinfo(np.int64).min)
    return np.clip(view.max(axis=(3, 4)), low, high)


def _elementwise(function):
    def run(values, tensors, output, options, arithmetic):
        return function(np.asarray(values[0], np.int64), np.asarray(values[1], np.int64))
    return run


def _concatenation(values, tensors, output, options, arithmetic):
    """Copies: the export puts every input on the output's grid first."""
    for tensor in tensors:
        if tensor.scale != output.scale or tensor.zero_point != output.zero_point:
            raise NotSimulated(f"CONCATENATION of {tensor.name!r} onto another scale or zero "
                             f"point (output {output.name!r}) has no simulation here")
    return np.concatenate([np.asarray(value, np.int64) for value in values],
                          axis=_options(options, "axis", 0))


def _round_away(values: np.ndarray) -> np.ndarray:
    return (np.sign(values) * np.floor(np.abs(values) + np.float32(0.5))).astype(np.int64)


def _pad(values, tensors, output, options, arithmetic):
    x, paddings = np.asarray(values[0], np.int64), np.asarray(values[1]).reshape(-1, 2)
    fill = (int(np.asarray(values[2]).reshape(-1)[0]) if len(values) > 2 and values[2] is not None
            else output.zero_point)
    widths = [(0, 0)] + [tuple(int(v) for v in row) for row in paddings[1:]]
    return np.pad(x, widths, constant_values=fill)


def _reshape(values, tensors, output, options, arithmetic):
    x = values[0]
    return np.reshape(x, [x.shape[0]] + list(output.shape[1:]))


def _strided_slice(values, tensors, output, options, arithmetic):
    """Slicing (copies values). The batch axis is kept whole: the file was traced for one
    example, the simulation runs many."""
    x = values[0]
    begin, end, strides = (np.asarray(v).reshape(-1) for v in values[1:4])
    for mask in ("ellipsisMask", "newAxisMask", "shrinkAxisMask"):
        if _options(options, mask):
            raise NotSimulated(f"STRIDED_SLICE with {mask} (output {output.name!r}) has no "
                             "simulation here")
    begin_mask, end_mask = _options(options, "beginMask"), _options(options, "endMask")
    index = [slice(None)]
    for axis in range(1, len(begin)):
        index.append(slice(None if begin_mask >> axis & 1 else int(begin[axis]),
                           None if end_mask >> axis & 1 else int(end[axis]),
                           int(strides[axis])))
    return x[tuple(index)]


def _quantize(values, tensors, output, options, arithmetic):
    x, source = values[0], tensors[0]
    if source.type == "FLOAT32":  # AffineQuantize: round(x / s) half away from zero, + z
        ratio = np.asarray(x, np.float32) / np.float32(output.scale)
        return np.clip(_round_away(ratio) + output.zero_point, _INT8_MIN, _INT8_MAX)
    real = np.float64(source.scale) / np.float64(output.scale)
    return _requantize(np.asarray(x, np.int64) - source.zero_point, np.array([real]), output,
                       0, arithmetic)


def _dequantize(values, tensors, output, options, arithmetic):
    source = tensors[0]
    return ((np.asarray(values[0], np.int64) - source.zero_point).astype(np.float32)
            * np.float32(source.scale))


def _float_then_round(function):
    """`function` (SOFTMAX) in float on the dequantized input, rounded once to the output's
    grid."""
    def run(values, tensors, output, options, arithmetic):
        source = tensors[0]
        x = (np.asarray(values[0], np.int64) - source.zero_point) * np.float64(source.scale)
        y = function(x, options) / np.float64(output.scale)
        return np.clip(np.floor(y + 0.5).astype(np.int64) + output.zero_point,
                       _INT8_MIN, _INT8_MAX)
    return run


def _softmax(x, options):
    beta = _options(options, "beta", 1.0)
    shifted = beta * (x - x.max(axis=-1, keepdims=True))
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


_OPS = {
    "CONV_2D": lambda *arguments: _convolution(*arguments, sums=_convolution_sums),
    "DEPTHWISE_CONV_2D": lambda *arguments: _convolution(*arguments, sums=_depthwise_sums),
    "FULLY_CONNECTED": _fully_connected,
    "ADD": _add,
    "MUL": _mul,
    "MEAN": _mean,
    "MAX_POOL_2D": _max_pool,
    "MAXIMUM": _elementwise(np.maximum),
    "CONCATENATION": _concatenation,
    "PAD": _pad,
    "RESHAPE": _reshape,
    "STRIDED_SLICE": _strided_slice,
    "QUANTIZE": _quantize,
    "DEQUANTIZE": _dequantize,
    "SOFTMAX": _float_then_round(_softmax),
}
