"""Can this LiteRT run int4-packed weights? Packs a tfadaqat file's <= 4-bit kernels and checks.

Takes an int8 file written by ``tfadaqat.export_tflite`` (for example ``bench/export.py``'s
``resnet20_lsq.tflite``), rewrites every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED weight
tensor whose integers fit in [-8, 7] as TFLite's INT4 type (two values per byte, low nibble
first), and compares outputs and single-thread latency, with and without the XNNPACK delegate
LiteRT applies by default.

Measured with ai-edge-litert 2.3.0 (ResNet20, 4-bit LSQ, random weights, one thread):

    file   kernels                     ms  max |output - int8 built-in|
    int8   XNNPACK (default)        0.104     23.3121
    int8   built-in                 0.569      0.0000
    int4   XNNPACK (default)        0.446      0.0002
    int4   built-in                 0.559      0.0000

* The packed file is 0.56x the int8 file, and it runs: its outputs equal the int8 file's under
  the same (built-in) kernels. (``export_tflite`` stores a low-bit kernel as ``r k`` with
  scale ``s / r`` for a finer bias grid; packing divides ``r`` back out and re-rounds the
  biases to the coarser grid, which on this file left the outputs equal.)
* XNNPACK does not accelerate int4 filters. The packed file runs 4.3x slower than the int8 file
  under XNNPACK, so ``export_tflite`` does not pack. Packing would trade speed for size.
* XNNPACK's int8 kernels and the built-in ones requantize with different rounding. On random
  weights the difference grows over 20 layers, hence the 23. On trained models the built-in
  kernels sat about 2 output steps further from Keras than XNNPACK's.

Run from the repository root (after bench.export):
  python -m bench.int4_packing --tflite runs/bench_export/resnet20_lsq.tflite
"""

from __future__ import annotations

import statistics
import time

import flatbuffers
import numpy as np
from absl import app, flags
from tensorflow.lite.python import schema_py_generated as schema  # the TFLite flatbuffer schema

FLAGS = flags.FLAGS
flags.DEFINE_string("tflite", "runs/bench_export/resnet20_lsq.tflite", "An int8 tfadaqat file.")
flags.DEFINE_integer("runs", 200, "Timed invocations (median reported).")
_WEIGHT_OPS = (schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D,
               schema.BuiltinOperator.FULLY_CONNECTED)


def pack_int4(content: bytes):
    """Returns (packed file, tensors packed)."""
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(content, 0))
    weight_codes = {index for index, code in enumerate(model.operatorCodes)
                    if max(code.builtinCode, code.deprecatedBuiltinCode) in _WEIGHT_OPS}
    packed = 0
    for operator in model.subgraphs[0].operators:
        if operator.opcodeIndex not in weight_codes:
            continue
        tensor = model.subgraphs[0].tensors[operator.inputs[1]]
        values = np.frombuffer(bytes(model.buffers[tensor.buffer].data), np.int8)
        if tensor.type != schema.TensorType.INT8:
            continue
        # tfadaqat stores a low-bit kernel as r k with scale s / r (a finer int32 bias grid);
        # packing needs k itself, so r goes back into the scales and the bias is re-rounded
        # to the coarser grid TFLite then requires (bias scale = input scale x weight scale).
        refinement = int(np.gcd.reduce(np.abs(values.astype(np.int64)))) or 1
        values = (values // refinement).astype(np.int8)
        if values.min() < -8 or values.max() > 7:
            continue
        has_bias = len(operator.inputs) > 2 and operator.inputs[2] >= 0
        for index in operator.inputs[1:3] if has_bias else operator.inputs[1:2]:
            quantization = model.subgraphs[0].tensors[index].quantization
            quantization.scale = [value * refinement for value in quantization.scale]
        if has_bias:
            bias = model.subgraphs[0].tensors[operator.inputs[2]]
            bias_values = np.frombuffer(bytes(model.buffers[bias.buffer].data), np.int32)
            model.buffers[bias.buffer].data = np.frombuffer(
                np.round(bias_values / refinement).astype(np.int32).tobytes(), np.uint8)
        nibbles = (values.astype(np.int16) & 0xF).astype(np.uint8)
        if len(nibbles) % 2:
            nibbles = np.append(nibbles, np.uint8(0))
        model.buffers[tensor.buffer].data = nibbles[0::2] | (nibbles[1::2] << 4)
        tensor.type = schema.TensorType.INT4
        packed += 1
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), packed


def _run(content: bytes, image, delegate: bool, runs: int):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    resolver = (OpResolverType.AUTO if delegate
                else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter = Interpreter(model_content=content, num_threads=1,
                              experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        samples.append(time.perf_counter() - start)
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), \
        statistics.median(samples)


def main(argv):
    del argv
    with open(FLAGS.tflite, "rb") as handle:
        content = handle.read()
    packed, count = pack_int4(content)
    print(f"{FLAGS.tflite}: {len(content):,} bytes; {count} kernels packed as int4: "
          f"{len(packed):,} bytes ({len(packed) / len(content):.2f}x)")
    from ai_edge_litert.interpreter import Interpreter
    probe = Interpreter(model_content=content)
    detail = probe.get_input_details()[0]
    image = np.random.default_rng(0).uniform(-1, 1, detail["shape"]).astype(detail["dtype"])
    reference, _ = _run(content, image, False, 1)
    print(f"{'file':6s} {'kernels':22s} {'ms':>7s} {'max |output - int8 builtin|':>28s}")
    for name, data in (("int8", content), ("int4", packed)):
        for delegate in (True, False):
            output, seconds = _run(data, image, delegate, FLAGS.runs)
            kernels = "XNNPACK (default)" if delegate else "built-in"
            print(f"{name:6s} {kernels:22s} {seconds * 1e3:7.3f} "
                  f"{float(np.abs(output - reference).max()):28.4f}")


if __name__ == "__main__":
    app.run(main)
