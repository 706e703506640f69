"""Deployment: file size against the physical limit, TFLite Micro's arena, latency and agreement
on every runtime, for models trained at learned 2-4 bits, beside TFMOT's 8-bit file.

Models: ResNet20 and the keyword spotter of ``models.micro`` (a depthwise-separable CNN), both
on scikit-learn's digits (8x8x1, 10 classes; 1,347 training and 450 test images), each trained
3 float epochs, then quantized with AdaQAT (weights and activations learned between 2 and 4
bits, starting at 4) and trained 3 more epochs. Each is exported twice, ``weight_storage="int8"``
and ``"int4"`` (every kernel of at most 4 bits packed two per byte); INT2 runs on none of the
runtimes for convolutions (``python -m bench.int2_support``), so no file uses it. TFMOT's
default 8-bit QAT of the same float model (3 epochs) is the reference row.

Per file: bytes; the physical limit ``sum(params x bits) / 8`` plus int32 biases; TFLite
Micro's arena (RAM); single-thread latency per inference on XNNPACK, the reference kernels and
TFLite Micro (median of ``--runs`` interleaved rounds over the model's three files and three
runtimes, process CPU time, which holds up on a shared machine, and wall time); and, on the 450 test images, per runtime, top-1 agreement and the share of outputs
within one output step against the Keras model and, for the reference kernels (builtin, TFLite
Micro), against the file simulated in that runtime's arithmetic
(:mod:`tfadaqat.export.simulation`); the agreement with the Keras model of the file's
integers rounded once, as Keras rounds ("integers"); and the share of XNNPACK's outputs that
differ from those integers.

Targets (exit status 1 when one is missed), each top-1 agreement >= 99.9% and >= 99.9% of
outputs within 1 step:

* XNNPACK against the Keras model, on the int8 file (XNNPACK runs int4 kernels through another
  path, which does not compute the file's integers: its agreement is printed, not a target);
* builtin and TFLite Micro against the Keras model in their arithmetic: the file simulated with
  their rounding (a requantization rounds twice there, once in Keras; no one file can be
  within a step of both, see the README's export section);
* the file's integers, rounded once, against the Keras model (the file holds what was trained);
* the int4 file: bytes <= 1.15 x (physical limit + the non-weight bytes of TFMOT's file), and
  TFLite Micro latency <= 1.1 x the int8 file's.

Run from the repository root:  python -m bench.deploy [--runs 200] [--out runs/bench_deploy]
"""

from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np
from absl import app, flags

import tfadaqat
from tfadaqat import runtimes as runtimes_lib
from tfadaqat._compat import keras, tf, tfmot
from tfadaqat.export.simulation import simulate
from bench.verdicts import print_verdicts
from models import micro, resnet20

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """The command line's flags, defined when run as a program only: other benches the tests
    import define ``out`` and ``runs`` too, and absl refuses a flag defined twice."""
    flags.DEFINE_integer("runs", 200, "Timed inferences per file and runtime (median).")
    flags.DEFINE_integer("epochs", 3, "Float epochs, then quantization-aware epochs.")
    flags.DEFINE_string("out", "runs/bench_deploy", "Folder for the files and deploy.json.")

RUNTIMES = ("xnnpack", "builtin", "tflm")
AGREEMENT = 0.999
SIZE_RATIO = 1.15
TFLM_LATENCY_RATIO = 1.1


def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    return train_test_split(images, digits.target, test_size=450, random_state=0,
                            stratify=digits.target)


MODELS = {
    "resnet20": lambda: resnet20(input_shape=(8, 8, 1), num_classes=10),
    "keyword_spotter": lambda: micro.keyword_spotter(input_shape=(8, 8, 1), num_classes=10),
}


def _compile(model, from_logits: bool):
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
                  metrics=["accuracy"])


def _logits(model) -> bool:
    """Whether `model` ends in logits (ResNet20) rather than a softmax (the keyword spotter)."""
    return getattr(model.layers[-1], "activation", None) is not keras.activations.softmax


def _latencies(contents, example: np.ndarray, runs: int):
    """Median ``(CPU ms, wall ms)`` of one inference, per ``(file, runtime)`` of `contents`
    (``{file: bytes}``) and :data:`RUNTIMES`, timed in interleaved rounds (each round runs
    every file on every runtime once), so that a slow spell of the shared machine falls on all
    of them alike rather than on one file's block."""
    invokers = {(file, runtime): runtimes_lib.invoker(content, runtime)
                for file, content in contents.items() for runtime in RUNTIMES}
    times = {key: ([], []) for key in invokers}
    for invoke in invokers.values():
        invoke(example)
    for _ in range(runs):
        for key, invoke in invokers.items():
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            invoke(example)
            times[key][0].append(time.process_time() - cpu_start)
            times[key][1].append(time.perf_counter() - wall_start)
    return {key: (1e3 * statistics.median(cpu), 1e3 * statistics.median(wall))
            for key, (cpu, wall) in times.items()}


def _tfmot_file(float_model, train, logits: bool):
    clone = keras.models.clone_model(float_model)
    clone.set_weights(float_model.get_weights())
    with tfmot.quantization.keras.quantize_scope():
        quantized = tfmot.quantization.keras.quantize_model(clone)
    _compile(quantized, logits)
    quantized.fit(*train, batch_size=64, epochs=FLAGS.epochs, verbose=0)
    converter = tf.lite.TFLiteConverter.from_keras_model(quantized)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert(), _int8_weight_bytes(float_model)


def _int8_weight_bytes(model) -> int:
    """Kernels at one byte a value and an int32 bias a output channel (BatchNormalization
    folds into them): the weight bytes of an 8-bit file."""
    total = 0
    for layer in model.layers:
        kernel = getattr(layer, "depthwise_kernel", None)
        if kernel is None:
            kernel = getattr(layer, "kernel", None)
        if kernel is not None:
            total += int(np.prod(kernel.shape)) + 4 * int(layer.output_shape[-1])
    return total


def _measure(name: str, train, test, out: str):
    keras.utils.set_random_seed(0)
    float_model = MODELS[name]()
    logits = _logits(float_model)
    _compile(float_model, logits)
    float_model.fit(*train, batch_size=64, epochs=FLAGS.epochs, verbose=0)
    qmodel = tfadaqat.quantize_model(float_model, "adaqat", weight_bits=4, activation_bits=4,
                                     min_bits=2, max_bits=4)
    _compile(qmodel, logits)
    qmodel.fit(*train, batch_size=64, epochs=FLAGS.epochs, verbose=0)
    accuracy = float(qmodel.evaluate(*test, verbose=0)[1])
    rows, contents = [], {}
    for storage in ("int8", "int4"):
        path = os.path.join(out, f"{name}_{storage}.tflite")
        report = tfadaqat.export_tflite(qmodel, path, verify_with=test[0],
                                        runtimes=RUNTIMES, weight_storage=storage)
        content = contents[f"adaqat {storage}"] = open(path, "rb").read()
        if report.simulation_error:
            raise RuntimeError(f"{path}: not simulated: {report.simulation_error}")
        row = {"model": name, "file": f"adaqat {storage}", "bytes": report.file_bytes,
               "physical_limit": report.packed_bytes, "accuracy": accuracy,
               "arena_bytes": report.tflm_arena.get("total_bytes"), "runtimes": {},
               "integers": {"top1": report.integer_model["top1_agreement"],
                            "within_one_step": report.integer_model["within_one_step"]}}
        # XNNPACK against the file's integers rounded once (as its int8 kernels round).
        integers = simulate(content, test[0], "single")
        xnnpack = runtimes_lib.run(content, "xnnpack", test[0])
        row["xnnpack_differs_from_integers"] = float(np.mean(
            np.abs(xnnpack - integers) > 1e-3 * report.output_step))
        for runtime in RUNTIMES:
            agreement = report.runtimes[runtime]
            row["runtimes"][runtime] = {"top1": agreement["top1_agreement"],
                                        "within_one_step": agreement["within_one_step"]}
            exact = report.reference_arithmetic.get(runtime)
            if exact is not None:
                row["runtimes"][runtime].update(
                    {"top1_in_its_arithmetic": exact["top1_agreement"],
                     "within_one_step_in_its_arithmetic": exact["within_one_step"],
                     "equal_in_its_arithmetic": 1.0 - exact["differing"]})
        rows.append(row)
    content, weight_bytes = _tfmot_file(float_model, train, logits)
    contents["tfmot int8"] = content
    tfmot_path = os.path.join(out, f"{name}_tfmot.tflite")
    with open(tfmot_path, "wb") as stream:
        stream.write(content)
    rows.append({"model": name, "file": "tfmot int8", "bytes": len(content),
                 "physical_limit": float(weight_bytes),
                 "arena_bytes": runtimes_lib.tflm_arena(content)["total_bytes"],
                 "runtimes": {runtime: {} for runtime in RUNTIMES}})
    latencies = _latencies(contents, test[0][0], FLAGS.runs)
    for row in rows:
        for runtime, values in row["runtimes"].items():
            cpu, wall = latencies[(row["file"], runtime)]
            values.update(cpu_ms=cpu, wall_ms=wall)
    return rows


def _agreement_check(label: str, top1: float, within: float):
    return (f"{label}: top-1 {top1:.4f}, {within:.4f} within 1 step >= {AGREEMENT}",
            top1 >= AGREEMENT and within >= AGREEMENT)


def _checks(rows):
    checks = []
    by_file = {(row["model"], row["file"]): row for row in rows}
    for row in rows:
        if row["file"] == "tfmot int8":
            continue
        label = f"{row['model']} {row['file']}"
        checks.append(_agreement_check(f"{label} integers rounded once vs Keras",
                                       row["integers"]["top1"],
                                       row["integers"]["within_one_step"]))
        for runtime, values in row["runtimes"].items():
            if runtime == "xnnpack" and row["file"] == "adaqat int8":
                checks.append(_agreement_check(f"{label} xnnpack vs Keras", values["top1"],
                                               values["within_one_step"]))
            elif runtime != "xnnpack":
                checks.append(_agreement_check(
                    f"{label} {runtime} vs Keras in {runtime}'s arithmetic (simulated)",
                    values["top1_in_its_arithmetic"],
                    values["within_one_step_in_its_arithmetic"]))
        if row["file"] == "adaqat int4":
            tfmot_row = by_file[(row["model"], "tfmot int8")]
            overhead = tfmot_row["bytes"] - tfmot_row["physical_limit"]
            limit = SIZE_RATIO * (row["physical_limit"] + overhead)
            checks.append((f"{row['model']} int4: {row['bytes']:,} bytes <= {SIZE_RATIO} x "
                           f"(physical {row['physical_limit']:,.0f} + TFMOT's non-weight "
                           f"{overhead:,.0f}) = {limit:,.0f}", row["bytes"] <= limit))
            int8_row = by_file[(row["model"], "adaqat int8")]
            ratio = row["runtimes"]["tflm"]["cpu_ms"] / int8_row["runtimes"]["tflm"]["cpu_ms"]
            checks.append((f"{row['model']} int4: TFLite Micro latency {ratio:.2f}x the int8 "
                           f"file's <= {TFLM_LATENCY_RATIO}", ratio <= TFLM_LATENCY_RATIO))
    return checks


def main(argv) -> int:
    del argv
    os.makedirs(FLAGS.out, exist_ok=True)
    x_train, x_test, y_train, y_test = _digits()
    rows = []
    for name in MODELS:
        print(f"[{name}] training and exporting", flush=True)
        rows.extend(_measure(name, (x_train, y_train), (x_test, y_test), FLAGS.out))
    with open(os.path.join(FLAGS.out, "deploy.json"), "w") as stream:
        json.dump(rows, stream, indent=1)
    print(f"\n{'model':<16} {'file':<12} {'bytes':>9} {'physical':>9} {'arena':>7}  "
          + "  ".join(f"{r + ' ms (cpu/wall)':>21} {'top-1':>6} {'<=1 st':>6}" for r in RUNTIMES))
    for row in rows:
        cells = []
        for runtime in RUNTIMES:
            values = row["runtimes"][runtime]
            top1 = f"{values['top1']:.4f}" if "top1" in values else "-"
            within = f"{values['within_one_step']:.4f}" if "within_one_step" in values else "-"
            cells.append(f"{values['cpu_ms']:>10.3f}/{values['wall_ms']:<10.3f} {top1:>6} "
                         f"{within:>6}")
        print(f"{row['model']:<16} {row['file']:<12} {row['bytes']:>9,} "
              f"{row['physical_limit']:>9,.0f} {row['arena_bytes'] or 0:>7,}  " + "  ".join(cells))
    print("\n(top-1 and <=1 st above: against the Keras model)")
    print(f"\n{'model':<16} {'file':<12} {'integers vs Keras':>18}  "
          + "  ".join(f"{r + ' vs its arithmetic':>27}" for r in RUNTIMES[1:])
          + f"  {'xnnpack != integers':>20}")
    for row in rows:
        if "integers" not in row:
            continue
        cells = []
        for runtime in RUNTIMES[1:]:
            values = row["runtimes"][runtime]
            cells.append(f"{values['top1_in_its_arithmetic']:>8.4f} "
                         f"{values['within_one_step_in_its_arithmetic']:>8.4f} "
                         f"{values['equal_in_its_arithmetic']:>8.4f}")
        print(f"{row['model']:<16} {row['file']:<12} {row['integers']['top1']:>8.4f} "
              f"{row['integers']['within_one_step']:>9.4f}  " + "  ".join(cells)
              + f"  {row['xnnpack_differs_from_integers']:>20.4f}")
    print("(integers: the file's integers rounded once, top-1 and <=1 step against Keras; "
          "per reference runtime: top-1, <=1 step and equal outputs against the file "
          "simulated in its arithmetic; last: share of XNNPACK's outputs that differ from "
          "the integers rounded once)")
    print()
    return print_verdicts(_checks(rows))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
