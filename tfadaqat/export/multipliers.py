"""Output multipliers every runtime accepts, rewritten in the converted flatbuffer.

An int8 convolution (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV) requantizes
its int32 sum with the multiplier ``r_c = s_in s_w,c / s_out`` per output channel. XNNPACK,
LiteRT's default CPU kernels, refuses a file where some ``r_c >= 256`` ("failed to prepare"):
the output step is then finer than 1/256 of the sum's unit, which a learned output step can
be when the layer's outputs are mostly zero (an LSQ step starts at ``2 mean|y| / sqrt(Q_p)``;
Xception's last separable convolution had ``r = 692``).

Such a channel computes a sign: its sum (bias included) is an integer ``a``, so ``|a r_c| >=
256`` for every ``a != 0``, which saturates at either end of int8 whatever the zero point,
and ``a = 0`` gives the zero point. With ``r_c = 255`` the same holds (``|a| 255`` reaches the
end of int8's range from any zero point), so :func:`limit_output_multipliers` sets those
channels' weight scales to ``255 s_out / s_in`` and their bias scales to match, leaving every
stored integer, and every output of every runtime, as it was.
"""

from __future__ import annotations

from typing import List, Tuple

import flatbuffers  # installed with TensorFlow
import numpy as np

from tfadaqat._compat import tflite_schema

LARGEST_MULTIPLIER = 255.0  # XNNPACK requires r < 256
_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


def limit_output_multipliers(content: bytes) -> Tuple[bytes, List[str]]:
    """The file `content` with every output multiplier ``r_c >= 256`` set to 255.

    Returns:
      ``(content, names)``: the file (unchanged when nothing was over) and the names of the
      output tensors of the operators changed.
    """
    schema = tflite_schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(content, 0))
    names = {value: name for name, value in vars(schema.BuiltinOperator).items()
             if not name.startswith("_")}
    codes = {index: names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
             for index, code in enumerate(model.operatorCodes)}
    changed = []
    for subgraph in model.subgraphs:
        tensors = subgraph.tensors
        for operator in subgraph.operators:
            name = codes.get(operator.opcodeIndex)
            if name not in _WEIGHT_OPS:
                continue
            data_index = 2 if name == "TRANSPOSE_CONV" else 0  # its inputs: shape, weights, x
            weight_index = 1
            bias_index = 3 if name == "TRANSPOSE_CONV" else 2
            data, weights = (tensors[operator.inputs[data_index]],
                             tensors[operator.inputs[weight_index]])
            output = tensors[operator.outputs[0]]
            if not all(_scales(t) is not None for t in (data, weights, output)):
                continue
            input_scale, output_scale = _scales(data)[0], _scales(output)[0]
            weight_scales = _scales(weights)
            multipliers = input_scale * weight_scales / output_scale
            over = multipliers >= 256.0
            if not over.any():
                continue
            limited = np.float32(LARGEST_MULTIPLIER * output_scale / input_scale)
            weights.quantization.scale = np.where(over, limited, weight_scales).astype(
                np.float32).tolist()
            bias_position = len(operator.inputs) > bias_index and operator.inputs[bias_index]
            if bias_position is not False and bias_position >= 0:
                bias = tensors[bias_position]
                if _scales(bias) is not None:
                    bias.quantization.scale = (np.float32(input_scale) * np.asarray(
                        weights.quantization.scale, np.float32)).astype(np.float32).tolist()
            changed.append(output.name.decode() if isinstance(output.name, bytes)
                           else str(output.name))
    if not changed:
        return content, []
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), changed


def _scales(tensor):
    """The tensor's quantization scales as a float64 array, or None when it has none."""
    quantization = tensor.quantization
    if quantization is None or quantization.scale is None or len(quantization.scale) == 0:
        return None
    return np.asarray(quantization.scale, np.float64)
