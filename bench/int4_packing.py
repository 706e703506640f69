"""int8 vs int4 weight storage: file size, outputs and single-thread latency, side by side.

Exports ResNet20 (32x32x3, random weights) quantized with LSQ at 4-bit weights and activations
twice with ``tfadaqat.export_tflite``: ``weight_storage="int8"`` (the default) and ``"int4"``
(every <= 4-bit kernel packed two values per byte), then runs both with LiteRT's default
XNNPACK delegate and with its built-in kernels, one thread, median of many invocations.

Measured with ai-edge-litert 2.3.0 (2026-11-24; the figures are printed by this file):

* int4 storage makes the file 0.56x the int8 one, and LiteRT runs it;
* XNNPACK does not accelerate int4 filters: the int4 file runs about 4x slower than the int8
  file under XNNPACK, so ``int8`` stays the default, and ``int4`` is for when size matters
  more than speed;
* both files compute what the Keras model computes (the export verifies each against it).

Run from the repository root:  python -m bench.int4_packing [--runs 200 --out runs/bench_int4]
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
from absl import app, flags, logging

import tfadaqat
from tfadaqat._compat import keras
from models import resnet20

FLAGS = flags.FLAGS
flags.DEFINE_integer("runs", 200, "Timed invocations per file and kernel set (median).")
flags.DEFINE_string("out", "runs/bench_int4", "Folder for the .tflite files.")


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
    return (interpreter.get_tensor(interpreter.get_output_details()[0]["index"]),
            statistics.median(samples))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    os.makedirs(FLAGS.out, exist_ok=True)
    keras.utils.set_random_seed(0)
    qmodel = tfadaqat.quantize_model(resnet20(), "lsq", weight_bits=4, activation_bits=4)
    images = np.random.default_rng(1).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    qmodel.initialize_quantizers(images)
    files = {}
    for storage in ("int8", "int4"):
        path = os.path.join(FLAGS.out, f"resnet20_lsq_{storage}.tflite")
        report = tfadaqat.export_tflite(qmodel, path, weight_storage=storage,
                                        verify_with=images)
        with open(path, "rb") as handle:
            files[storage] = handle.read()
        print(f"{storage}: {report.file_bytes:,} bytes; {report.packing}; against Keras on "
              f"{report.examples} images: top-1 {report.top1_agreement:.2f}, outputs within "
              f"{report.max_output_difference:.0f} steps")
    print(f"int4 file / int8 file: {len(files['int4']) / len(files['int8']):.2f}x\n")
    print(f"{'file':6s} {'kernels':22s} {'ms':>7s} {'x int8 XNNPACK':>15s}")
    rows = {(storage, delegate): _run(content, images[:1], delegate, FLAGS.runs)[1]
            for storage, content in files.items() for delegate in (True, False)}
    for (storage, delegate), seconds in rows.items():
        kernels = "XNNPACK (default)" if delegate else "built-in"
        print(f"{storage:6s} {kernels:22s} {seconds * 1e3:7.3f} "
              f"{seconds / rows[('int8', True)]:15.2f}")


if __name__ == "__main__":
    app.run(main)
