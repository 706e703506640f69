"""The models users bring: every keras.applications family and microcontroller-scale models,
quantized with each method, trained briefly, exported to integer TFLite and verified.

For the smallest member of each of the 16 keras.applications families (weights=None, a small
input, their default heads) and four small models of tfadaqat's own (``models.micro``: a
softmax image classifier, a depthwise-separable keyword spotter, a Dense+BatchNormalization
anomaly autoencoder, a Conv2DTranspose+Concatenate segmentation net), each model goes:

* through TFMOT's default 8-bit QAT (``tfmot.quantization.keras.quantize_model``) and the
  TFLite converter: the reference row (does it export to a full-integer file, its size);
* through ``tfadaqat.quantize_model`` with each method (adaqat, dq, lsq, at their default
  bits), ``fit`` on 64 random examples (two steps of 32), and ``tfadaqat.export_tflite``
  verified in LiteRT on those 64 inputs.

Per model and method it prints the quantized tensors, the ops left in float, whether the
export succeeded, the top-1 agreement with Keras (tie-aware and strict), the largest output
difference and the share of outputs within 2 output steps, and the file size against TFMOT's.
Beside the agreement it prints the model's float noise floor (:func:`noise_floor`): how well
the Keras model agrees with itself when every BatchNormalization scale moves by 1e-5 of itself
(no BatchNormalization: every bias). Float32 and integer arithmetic put a value on different
sides of a rounding tie now and then: layer by layer on Keras' own inputs, the export's graph
and Keras differ by one step on 0.0003-0.0014% of values (EfficientNetB0, adaqat), and this
perturbation flips about as many (one gamma of EfficientNetB0's block2b changed by 1e-5 of
itself flips 0.0003% of that layer's values). Untrained deep networks in inference mode can be
chaotic: there one flipped value grows into many (that one change moved EfficientNetB0's
adaqat logits by 9 output steps and its top-1 on 1 of 64 inputs), and the agreement target
measures the chaos, not the export.
Targets (non-zero exit on a miss):

* every model exports for every method with no float op (integer conv/depthwise/FC/
  elementwise kernels throughout);
* top-1 agreement (tie-aware) >= 99% on the 64 inputs for classifiers; for the autoencoder
  and the segmentation net, >= 99% of output values within 2 output steps. Where the Keras
  model misses that same target against itself under the noise above, the row is printed as
  ``[CHAOTIC]`` with both figures and counted apart: no file can agree with such a model
  better than the model agrees with itself, so it is neither a pass nor a miss of the export;
* file size <= 1.05x TFMOT's int8 file where TFMOT exports the model.

Each model runs in its own subprocess (TensorFlow's graph state grows with every model), so
one crash is one failed row; its output is kept in ``<out>/logs/<model>.out`` and ``.err``.
With ``--jobs 2`` two models run at a time (tracing is single-threaded, so this nearly halves
the wall time on 2 cores), except the ``RUN_ALONE`` models, which need most of the memory.
Run from the repository root:

    python -m bench.model_zoo [--models VGG16,keyword_spotter] [--out runs/bench_model_zoo]
        [--jobs 2] [--resume]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("models", [], "Models to run (default: all).")
flags.DEFINE_list("methods", ["adaqat", "dq", "lsq"], "tfadaqat methods to run.")
flags.DEFINE_string("out", "runs/bench_model_zoo", "Folder for files and the JSON table.")
flags.DEFINE_string("one", None, "Internal: run one model in this process, print JSON.")
flags.DEFINE_integer("jobs", 1, "Models run at the same time (each in its own process).",
                     lower_bound=1)
flags.DEFINE_boolean("resume", False, "Keep the models already in <out>/model_zoo.json "
                     "(those whose process died are run again).")

EXAMPLES = 64
AGREEMENT = 0.99
SIZE_RATIO = 1.05
NOISE = 1e-5  # relative change of the noise floor's perturbation

# name -> (builder source, input shape, inputs in [0, 255] (the model rescales) or [0, 1],
#          output kind)
APPLICATIONS = {
    "ConvNeXtTiny": ("applications.ConvNeXtTiny", (32, 32, 3), True),
    "DenseNet121": ("applications.DenseNet121", (32, 32, 3), False),
    "EfficientNetB0": ("applications.EfficientNetB0", (32, 32, 3), True),
    "EfficientNetV2B0": ("applications.EfficientNetV2B0", (32, 32, 3), True),
    "InceptionResNetV2": ("applications.InceptionResNetV2", (75, 75, 3), False),
    "InceptionV3": ("applications.InceptionV3", (75, 75, 3), False),
    "MobileNet": ("applications.MobileNet", (32, 32, 3), False),
    "MobileNetV2": ("applications.MobileNetV2", (32, 32, 3), False),
    "MobileNetV3Small": ("applications.MobileNetV3Small", (32, 32, 3), True),
    "NASNetMobile": ("applications.NASNetMobile", (32, 32, 3), False),
    "RegNetX002": ("applications.RegNetX002", (32, 32, 3), True),
    "RegNetY002": ("applications.RegNetY002", (32, 32, 3), True),
    "ResNet50": ("applications.ResNet50", (32, 32, 3), False),
    "ResNet50V2": ("applications.ResNet50V2", (32, 32, 3), False),
    "ResNetRS50": ("applications.ResNetRS50", (32, 32, 3), True),
    "VGG16": ("applications.VGG16", (32, 32, 3), False),
    "Xception": ("applications.Xception", (71, 71, 3), False),
}
# The smallest member's width where the family has one.
_APPLICATION_OPTIONS = {"MobileNet": {"alpha": 0.25}, "MobileNetV2": {"alpha": 0.35},
                        "MobileNetV3Small": {"alpha": 0.75}}
MICRO = ("micro_image_classifier", "keyword_spotter", "anomaly_autoencoder",
         "segmentation_net")
REGRESSION = ("anomaly_autoencoder", "segmentation_net")
# Quick ones first, so that a run cut short still reports most of them.
ALL_MODELS = MICRO + ("MobileNet", "MobileNetV2", "MobileNetV3Small", "RegNetX002",
                      "RegNetY002", "EfficientNetB0", "EfficientNetV2B0", "VGG16", "ResNet50",
                      "ResNet50V2", "ResNetRS50", "DenseNet121", "InceptionV3", "Xception",
                      "NASNetMobile", "InceptionResNetV2", "ConvNeXtTiny")
assert set(ALL_MODELS) == set(APPLICATIONS) | set(MICRO)
# Run with no other model beside them under --jobs > 1: the kernel killed them for memory
# beside other TensorFlow processes (NASNetMobile reached 18.7 GB resident while converting,
# InceptionResNetV2 8.4 GB, ResNetRS50 13.9 GB beside DenseNet121 on 2026-12-07, on a 24 GB
# machine).
RUN_ALONE = ("NASNetMobile", "InceptionResNetV2", "ResNetRS50")


def build(name: str):
    """The float model `name` (a fresh one per call, seeded)."""
    from tfadaqat._compat import keras
    import models.micro as micro
    keras.utils.set_random_seed(0)
    if name in MICRO:
        return micro.MICRO_MODELS[name]()
    _, shape, _ = APPLICATIONS[name]
    builder = getattr(keras.applications, name)
    return builder(weights=None, input_shape=shape, classes=10,
                   **_APPLICATION_OPTIONS.get(name, {}))


def data(name: str, model):
    """64 seeded random inputs (pixel range of the model) and targets fitting its output."""
    rng = np.random.default_rng(0)
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    high = 255.0 if name in APPLICATIONS and APPLICATIONS[name][2] else 1.0
    x = rng.uniform(0.0, high, size=(EXAMPLES,) + shape).astype(np.float32)
    output = tuple(int(d) for d in model.outputs[0].shape[1:])
    if name == "anomaly_autoencoder":
        return x, x, "mse"
    y = rng.integers(0, output[-1], size=(EXAMPLES,) + output[:-1])
    return x, y, "sparse_categorical_crossentropy"


def _tfmot_row(name: str, out: str):
    from tfadaqat._compat import keras, tf, tflite_interpreter, tfmot
    from tfadaqat.export.verification import check_integer_kernels
    row = {"method": "tfmot", "ok": False}
    start = time.time()
    try:
        model = build(name)
        x, y, loss = data(name, model)
        with tfmot.quantization.keras.quantize_scope():
            qmodel = tfmot.quantization.keras.quantize_model(model)
        qmodel.compile(keras.optimizers.Adam(1e-3), loss)
        qmodel.fit(x, y, batch_size=32, epochs=1, verbose=0)
        converter = tf.lite.TFLiteConverter.from_keras_model(qmodel)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        content = converter.convert()
        interpreter = tflite_interpreter(content)
        interpreter.allocate_tensors()
        _, float_ops = check_integer_kernels(interpreter, allow_float_ops=True)
        row.update(ok=not float_ops, file_bytes=len(content), float_ops=sorted(set(float_ops)))
    except Exception as error:  # noqa: BLE001 - a failed row is a result here
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    row["seconds"] = round(time.time() - start, 1)
    return row


def _tfadaqat_row(name: str, method: str, out: str):
    import tfadaqat
    from tfadaqat._compat import keras
    row = {"method": method, "ok": False}
    start = time.time()
    try:
        keras.backend.clear_session()
        model = build(name)
        x, y, loss = data(name, model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qmodel = tfadaqat.quantize_model(model, method)
            qmodel.compile(keras.optimizers.Adam(1e-3), loss)
            qmodel.fit(x, y, batch_size=32, epochs=1, verbose=0)
        row["quantized_tensors"] = sum(1 for _ in tfadaqat.quantized_tensors(qmodel))
        # The representative set only calibrates tensors training left without a range
        # (inside a float LayerNormalization); every quantized tensor keeps its trained grid.
        report = tfadaqat.export_tflite(qmodel, os.path.join(out, f"{name}_{method}.tflite"),
                                        verify_with=x, representative_dataset=x,
                                        allow_float_ops=True)
        row.update(ok=not report.float_ops, file_bytes=report.file_bytes,
                   float_ops=sorted(set(report.float_ops)),
                   top1=report.top1_agreement, top1_strict=report.top1_strict_agreement,
                   max_steps=report.max_output_difference,
                   within_two_steps=report.within_two_steps)
        row.update(noise_floor(qmodel, x, report.output_step))
    except Exception as error:  # noqa: BLE001
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    row["seconds"] = round(time.time() - start, 1)
    return row


def noise_floor(model, x, step: float) -> dict:
    """How well the Keras model agrees with itself after a rounding-tie-sized change.

    Every BatchNormalization scale ``gamma`` (in a model without any, every float bias) is
    multiplied by ``1 + NOISE e`` with ``e ~ N(0, 1)`` (seeded), and the outputs compared with
    the unchanged model's as the export report compares the file's: tie-aware top-1, the
    largest difference and the share of outputs within 2 output steps. The size is set so
    that it flips about as many values onto the neighbouring grid point as the float32 and
    integer arithmetic of the export do (see the module docstring); a model whose outputs
    move by many steps under it is chaotic at float precision, and no integer file can agree
    with it better than it agrees with itself.
    """
    from tfadaqat.export import output_agreement  # the parent process imports no TF
    from tfadaqat.batch_norm import batch_norm_layers

    expected = model.predict(x, verbose=0)
    variables = [layer.gamma for layer in batch_norm_layers(model) if layer.scale]
    if not variables:
        variables = [v for v in model.trainable_weights
                     if v.name.split("/")[-1].startswith("bias")]
    saved = [v.numpy() for v in variables]
    rng = np.random.default_rng(0)
    try:
        for variable, value in zip(variables, saved):
            noise = 1.0 + NOISE * rng.standard_normal(value.shape)
            variable.assign((value * noise).astype(value.dtype))
        perturbed = model.predict(x, verbose=0)
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)
    agreement = output_agreement(perturbed, expected, step)
    return {"noise_top1": agreement["top1_agreement"],
            "noise_within_two_steps": agreement["within_two_steps"],
            "noise_max_steps": agreement["max_output_difference"]}


def run_one(name: str, methods, out: str) -> dict:
    rows = [_tfmot_row(name, out)] + [_tfadaqat_row(name, method, out) for method in methods]
    return {"model": name, "rows": rows}


def _check(result: dict):
    """``(description, verdict)`` targets of one model; verdict True (met), False (missed)
    or None (not measurable: the Keras model misses the agreement target against itself
    under float noise, see :func:`noise_floor`)."""
    name = result["model"]
    rows = {row["method"]: row for row in result["rows"]}
    tfmot_row = rows.pop("tfmot")
    checks = []
    for method, row in rows.items():
        label = f"{name} {method}"
        checks.append((f"{label}: exports with integer kernels only"
                       + (f" ({row.get('error') or row.get('float_ops')})" if not row["ok"]
                          else ""), row["ok"]))
        if not row["ok"]:
            continue
        key = "within_two_steps" if name in REGRESSION else "top1"
        floor = row.get(f"noise_{key}")
        note = ""
        if floor is not None:
            note = (f" (Keras vs itself under float noise: top-1 {row['noise_top1']:.4f}, "
                    f"max {row.get('noise_max_steps', float('nan')):.0f} steps, "
                    f"{row['noise_within_two_steps']:.4f} within 2 steps)")
        text = (f"{row['within_two_steps']:.4f} of outputs within 2 steps" if key != "top1"
                else f"top-1 agreement {row['top1']:.4f}")
        verdict = bool(row[key] >= AGREEMENT)
        if not verdict and floor is not None and floor < AGREEMENT:
            verdict = None
        checks.append((f"{label}: {text} >= {AGREEMENT}{note}", verdict))
        if tfmot_row["ok"]:
            ratio = row["file_bytes"] / tfmot_row["file_bytes"]
            checks.append((f"{label}: size {ratio:.3f}x TFMOT <= {SIZE_RATIO}",
                           ratio <= SIZE_RATIO))
    return checks


def _print_table(results) -> None:
    print(f"{'model':<24} {'method':<7} {'ok':<4} {'tensors':>7} {'float ops':<16} "
          f"{'top-1':>6} {'strict':>6} {'max st':>6} {'<=2 st':>7} {'bytes':>11} "
          f"{'x tfmot':>7} {'s':>5} {'noise top-1':>11} {'noise <=2':>9}")
    print("-" * 118)
    for result in results:
        rows = result["rows"]
        tfmot_bytes = rows[0].get("file_bytes") if rows[0]["ok"] else None
        for row in rows:
            def number(key, text="{:.3f}"):
                value = row.get(key)
                return text.format(value) if value is not None else "-"
            ratio = (f"{row['file_bytes'] / tfmot_bytes:.3f}"
                     if tfmot_bytes and row.get("file_bytes") else "-")
            floats = ",".join(row.get("float_ops", [])) or ("-" if row["ok"] else "error")
            print(f"{result['model']:<24} {row['method']:<7} {'yes' if row['ok'] else 'NO':<4} "
                  f"{row.get('quantized_tensors', '-'):>7} {floats[:16]:<16} "
                  f"{number('top1'):>6} {number('top1_strict'):>6} "
                  f"{number('max_steps', '{:.1f}'):>6} {number('within_two_steps', '{:.4f}'):>7} "
                  f"{number('file_bytes', '{:,}'):>11} {ratio:>7} {row['seconds']:>5.0f} "
                  f"{number('noise_top1'):>11} {number('noise_within_two_steps', '{:.4f}'):>9}")
            if row.get("error"):
                print(f"{'':<24} {'':<7} error: {row['error']}")


def _process_died(result) -> bool:
    """Whether `result` (a model's table entry) records its process dying, not a verdict."""
    return all(str(row.get("error", "")).startswith("subprocess exited")
               for row in result["rows"])


def may_start(name: str, running, jobs: int) -> bool:
    """Whether model `name` may start beside the models `running`, with `jobs` at a time:
    a ``RUN_ALONE`` model starts only when nothing runs, and nothing starts beside one."""
    if len(running) >= jobs:
        return False
    return not running or (name not in RUN_ALONE and not set(running) & set(RUN_ALONE))


def main(argv) -> int:
    del argv
    os.makedirs(FLAGS.out, exist_ok=True)
    if FLAGS.one:
        print("RESULT " + json.dumps(run_one(FLAGS.one, FLAGS.methods, FLAGS.out)), flush=True)
        return 0
    names = FLAGS.models or list(ALL_MODELS)
    unknown = sorted(set(names) - set(ALL_MODELS))
    if unknown:
        raise app.UsageError(f"--models: unknown {unknown}; known: {list(ALL_MODELS)}")
    table_path = os.path.join(FLAGS.out, "model_zoo.json")
    done = {}
    if FLAGS.resume and os.path.exists(table_path):
        with open(table_path) as stream:
            done = {result["model"]: result for result in json.load(stream)}
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # A model whose process died (killed for memory, say) is run again; its rows say so.
    pending = [name for name in names if name not in done or _process_died(done[name])]
    log_folder = os.path.join(FLAGS.out, "logs")
    os.makedirs(log_folder, exist_ok=True)
    running = {}  # name -> (process, stdout path, stderr path)

    def start(name):
        print(f"[{len(names) - len(pending)}/{len(names)}] {name}", flush=True)  # of this run
        stdout_path = os.path.join(log_folder, f"{name}.out")
        stderr_path = os.path.join(log_folder, f"{name}.err")
        # Files, not pipes: the parent polls several children and never blocks on a full pipe.
        with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.model_zoo", f"--one={name}",
                 f"--methods={','.join(FLAGS.methods)}", f"--out={FLAGS.out}"],
                stdout=stdout, stderr=stderr, text=True, env=environment)
        running[name] = (process, stdout_path, stderr_path)

    try:
        while pending or running:
            while pending and may_start(pending[0], list(running), FLAGS.jobs):
                start(pending.pop(0))
            finished = [name for name, (process, _, _) in running.items()
                        if process.poll() is not None]
            if not finished:
                time.sleep(2.0)
                continue
            name = finished[0]
            process, stdout_path, stderr_path = running.pop(name)
            with open(stdout_path) as stream:
                stdout = stream.read()
            with open(stderr_path) as stream:
                stderr = stream.read()
            lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
            if lines:
                done[name] = json.loads(lines[-1][len("RESULT "):])
            else:
                tail = (stderr or stdout).strip().splitlines()[-3:]
                done[name] = {"model": name, "rows": [
                    {"method": method, "ok": False, "seconds": 0.0,
                     "error": f"subprocess exited {process.returncode}: {' | '.join(tail)}"}
                    for method in ["tfmot"] + list(FLAGS.methods)]}
            for row in done[name]["rows"]:
                status = ("ok" if row["ok"] else
                          f"FAILED ({row.get('error') or row.get('float_ops')})")
                agreement = "".join(f" {key} {row[key]:.4f}" for key in
                                    ("top1", "top1_strict", "max_steps", "within_two_steps",
                                     "noise_top1", "noise_within_two_steps")
                                    if row.get(key) is not None)
                print(f"    {name} {row['method']}: {status}{agreement} in {row['seconds']:.0f} s",
                      flush=True)
            with open(table_path, "w") as stream:  # after every model: a cut run keeps its rows
                # Every model done, not only those asked for: --models with --resume adds
                # to the table instead of replacing it.
                json.dump([done[n] for n in ALL_MODELS if n in done], stream, indent=1)
    finally:  # an interrupted run leaves no model running on in the background
        for process, _, _ in running.values():
            process.kill()
    results = [done[name] for name in names]
    print()
    _print_table(results)
    tfmot_exports = sum(1 for result in results if result["rows"][0]["ok"])
    print(f"\nTFMOT default QAT exports {tfmot_exports} of {len(results)} models to "
          "full-integer files")
    verdicts = [check for result in results for check in _check(result)]
    labels = {True: "PASS", False: "FAIL", None: "CHAOTIC"}
    for description, verdict in verdicts:
        print(f"[{labels[verdict]}] {description}")
    counts = {verdict: sum(1 for _, v in verdicts if v is verdict)
              for verdict in (True, False, None)}
    print(f"targets: {counts[True]} passed, {counts[False]} failed, {counts[None]} not "
          "measurable (the Keras model misses the agreement target against itself under "
          "float noise)")
    return 1 if counts[False] else 0


if __name__ == "__main__":
    app.run(main)
