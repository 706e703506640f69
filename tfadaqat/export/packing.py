"""Packing: kernels whose stored integers fit in [-8, 7] rewritten as TFLite INT4 tensors, two
values per byte, in the converted flatbuffer (``weight_storage="int4"``)."""

from __future__ import annotations

import flatbuffers  # installed with TensorFlow
import numpy as np

from tfadaqat._compat import tflite_schema
from tfadaqat.export.integers import INT4_HIGH, INT4_LOW


INT8_PACKING_NOTE = ("not packed: int8 storage (weight_storage='int4' packs kernels of <= 4 bits; "
                 "XNNPACK runs them slower)")


_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def pack_int4(content: bytes) -> bytes:
    """Rewrites the file's conv/depthwise/dense weight tensors whose values lie in [-8, 7] as
    TFLite INT4 tensors (two values per byte, low nibble first).

    TF 2.21's converter stores such weights in int8 even from 4-bit FakeQuant graphs; LiteRT
    reads INT4 filters and unpacks them. Only the kernels planned for packing (refined to
    ``r = floor(7 / max|k|)``, :mod:`tfadaqat.export.integers`) have values in that range;
    an int8 kernel is refined to reach at least 64.
    """
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
        if values.min() < INT4_LOW or values.max() > INT4_HIGH:
            continue
        nibbles = (values.astype(np.int16) & 0xF).astype(np.uint8)
        if len(nibbles) % 2:
            nibbles = np.append(nibbles, np.uint8(0))
        model.buffers[tensor.buffer].data = nibbles[0::2] | (nibbles[1::2] << 4)
        tensor.type = schema.TensorType.INT4
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
