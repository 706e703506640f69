"""Integer TFLite export side by side: tfadaqat's files vs float TFLite vs TFMOT's 8-bit QAT file.

Two tables, from one process:

1. **Size and latency** of ResNet20 (32x32x3, random weights, batch 1): the float TFLite file,
   TFMOT's default 8-bit QAT export of the same float model, and tfadaqat's export of it
   quantized with each method (4-bit weights and activations), with int8 weight storage (the
   default) and with int4 storage (kernels packed two values per byte). Latency is the median
   of many single-thread invocations, rows interleaved.
2. **Agreement** with the Keras model on the digits test split (450 images, upsampled to
   32x32x3): ResNet20 trained in float, fine-tuned with each method at 4-bit weights and
   6-bit activations, exported and
   run in the TFLite interpreter: top-1 agreement (tie-aware: quantized logits often tie at the
   top; "strict" breaks ties by index as argmax does) and the largest output difference in
   output quantization steps, and the per-layer learned bits against the distinct integers.

Targets (issue 4): top-1 >= 99.5% (tie-aware and strict), <= 2 output steps, every kernel found
in the file with at most as many distinct integers as its bits allow; size and latency
of the int8 files each at most 1.05x TFMOT's 8-bit file; the int4 files smaller than it (their
latency is printed, not checked: XNNPACK does not accelerate int4 filters). Exits 1 when a target
is missed.

Run from the repository root:  python -m bench.export [--runs 200 --out runs/bench_export]
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
from absl import app, flags, logging

import tfadaqat
from tfadaqat._compat import keras, tf, tflite_interpreter, tfmot
from models import resnet20
from recipes.data import load_digits

FLAGS = flags.FLAGS
flags.DEFINE_integer("runs", 200, "Timed invocations per file (median reported).")
flags.DEFINE_string("out", "runs/bench_export", "Folder for the .tflite files.")
METHODS = ("adaqat", "dq", "lsq")
SIZE_LATENCY_SLACK = 1.05


def _convert(converter_source, optimize: bool) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(converter_source)
    if optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def _method_options(method):
    return {"adaqat_rule": None, "grid": "symmetric"} if method == "adaqat" else {}


def _latency(content: bytes, runs: int) -> float:
    interpreter = tflite_interpreter(content, num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    image = np.random.default_rng(0).uniform(-1, 1, detail["shape"]).astype(np.float32)
    if detail["dtype"] == np.int8:
        image = np.zeros(detail["shape"], np.int8)
    interpreter.set_tensor(detail["index"], image)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def size_and_latency(runs: int, out: str):
    keras.utils.set_random_seed(0)
    float_model = resnet20()
    files = {"float TFLite": _convert(float_model, optimize=False)}
    with tfmot.quantization.keras.quantize_scope():
        files["tfmot default 8-bit QAT"] = _convert(
            tfmot.quantization.keras.quantize_model(float_model), optimize=True)
    images = np.random.default_rng(1).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    for method in METHODS:
        qmodel = tfadaqat.quantize_model(float_model, method, weight_bits=4, activation_bits=4,
                                         **_method_options(method))
        qmodel.initialize_quantizers(images)
        for storage in ("int8", "int4"):
            path = os.path.join(out, f"resnet20_{method}_{storage}.tflite")
            tfadaqat.export_tflite(qmodel, path, weight_storage=storage)
            with open(path, "rb") as handle:
                files[f"tfadaqat {method} 4-bit {storage}"] = handle.read()
    latencies = {name: [] for name in files}
    for _ in range(5):  # interleaved rounds: this machine has slow bursts
        for name, content in files.items():
            latencies[name].append(_latency(content, max(runs // 5, 1)))
    return {name: (len(content), statistics.median(latencies[name]))
            for name, content in files.items()}


def agreement():
    """ResNet20 trained on digits (upsampled to 32x32, grey to 3 channels), per method."""
    train_x, test_x, train_y, _ = (np.repeat(part, 3, axis=-1) if part.ndim == 4 else part
                                   for part in load_digits(upsample=4))
    keras.utils.set_random_seed(0)
    model = resnet20()
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(train_x, train_y, batch_size=64, epochs=8, verbose=0)
    reports = {}
    for method in METHODS:
        qmodel = tfadaqat.quantize_model(model, method, weight_bits=4, activation_bits=6,
                                         **_method_options(method))
        qmodel.compile(keras.optimizers.Adam(1e-3),
                       keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        qmodel.fit(train_x, train_y, batch_size=64, epochs=2, verbose=0)
        reports[method] = tfadaqat.export_tflite(
            qmodel, os.path.join(FLAGS.out, f"digits_{method}.tflite"), verify_with=test_x)
    return reports


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # the converters log every SavedModel they write
    os.makedirs(FLAGS.out, exist_ok=True)
    rows = size_and_latency(FLAGS.runs, FLAGS.out)
    peer_bytes, peer_seconds = rows["tfmot default 8-bit QAT"]
    float_bytes, float_seconds = rows["float TFLite"]
    print("ResNet20, 32x32x3, batch 1, one thread, median of "
          f"{FLAGS.runs} invocations in 5 interleaved rounds")
    print(f"{'file':30s} {'bytes':>9s} {'x float':>8s} {'x tfmot':>8s} {'ms':>7s} "
          f"{'x float':>8s} {'x tfmot':>8s}")
    checks = []
    for name, (size, seconds) in rows.items():
        print(f"{name:30s} {size:9,d} {size / float_bytes:8.2f} {size / peer_bytes:8.2f} "
              f"{seconds * 1e3:7.2f} {seconds / float_seconds:8.2f} {seconds / peer_seconds:8.2f}")
        if name.startswith("tfadaqat") and name.endswith("int8"):
            checks.append((f"{name}: size {size / peer_bytes:.2f}x TFMOT <= {SIZE_LATENCY_SLACK}",
                           size / peer_bytes <= SIZE_LATENCY_SLACK))
            checks.append((f"{name}: latency {seconds / peer_seconds:.2f}x TFMOT <= "
                           f"{SIZE_LATENCY_SLACK}", seconds / peer_seconds <= SIZE_LATENCY_SLACK))
        elif name.startswith("tfadaqat"):  # packed: smaller, at XNNPACK's int4 speed
            checks.append((f"{name}: size {size / peer_bytes:.2f}x TFMOT < 1 (packed)",
                           size < peer_bytes))
    print()
    print("ResNet20 on the digits test split (450 images), 4-bit weights, 6-bit activations")
    print(f"{'method':8s} {'top-1 agree':>11s} {'strict':>7s} {'max diff (steps)':>16s}  "
          "bits / allowed / distinct per kernel")
    for method, report in agreement().items():
        layers = ", ".join(f"{row.layer} {row.bits}/{row.allowed_values}/{row.distinct_values}"
                           for row in report.layers)
        print(f"{method:8s} {report.top1_agreement:11.4f} {report.top1_strict_agreement:7.4f} "
              f"{report.max_output_difference:16.2f}  {layers}")
        checks.append((f"{method}: top-1 agreement {report.top1_agreement:.4f} >= 0.995",
                       report.top1_agreement >= 0.995))
        checks.append((f"{method}: strict top-1 agreement (ties broken by index) "
                       f"{report.top1_strict_agreement:.4f} >= 0.995",
                       report.top1_strict_agreement >= 0.995))
        checks.append((f"{method}: output difference {report.max_output_difference:.2f} <= 2 "
                       "steps", report.max_output_difference <= 2.0 + 1e-4))
        # A kernel whose file tensor was not found reports -1 distinct values: a failure.
        checks.append((f"{method}: every kernel found in the file with 1 to (allowed values "
                       "of its bits) distinct integers",
                       bool(report.layers) and all(1 <= row.distinct_values <= row.allowed_values
                                                   for row in report.layers)))
    print()
    for description, passed in checks:
        print(f"[{'PASS' if passed else 'FAIL'}] {description}")
    failed = sum(not passed for _, passed in checks)
    print(f"targets: {len(checks) - failed} passed, {failed} failed")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    app.run(main)
