"""Training-step time of ResNet20 (32x32x3, batch 128): float vs TFMOT 8-bit vs tfadaqat methods.

Rows: float; TFMOT's default 8-bit ``quantize_model``; each tfadaqat method as plain QAT steps;
AdaQAT with its finite-difference bit-width probe on every step.

All models are built from one float model and timed in this one process, interleaved in many
short rounds: this machine has bursts where a step takes twice as long whatever the model, so
each row is timed a few steps at a time, round after round, and the median round is reported.
Prints images per second and the ratio of each step time to the float one, in wall time and
in process CPU time (the machine is shared; CPU time is what other jobs disturb least).
The row "lsq, no NaN guard" is LSQ compiled with ``skip_non_finite_steps=False``: beside
the LSQ row it prices the copy of every variable that lets a non-finite step be undone. The row
"lsq, TensorFlow ops" is LSQ traced without the fused quantizer kernels
(:mod:`tfadaqat.fused_kernels`): beside the LSQ row it prices what the kernels save. The table's
first line says whether the kernels were in use.

Scheduling: with TensorFlow's default two inter-op threads on this 2-core machine, identical
copies of one quantized model were measured persistently 1.2x to 1.7x float, depending on how
the executor happened to overlap small ops with convolutions. ``--inter_op_threads=1`` (the
default here) runs ops one after another, each on all cores, which makes every row
reproducible; pass 0 for TensorFlow's default.

Where the time goes (TF profiler, ResNet20 batch 128, ops run one at a time): float spends
~145 ms of kernel time per step, almost all in convolutions. A tfadaqat step adds about 26 ms
of FakeQuant forward and gradient kernels on ~20 activation tensors, ~12 ms of small ops for
the weight quantizers, and ~16 ms because oneDNN convolutions run slower when their filter is
a computed tensor rather than a variable read; LSQ and DQ add the passes of their exact step
gradient (``sum(g (Q - x)) / d``). A per-step ``tf.cond`` for lazy initialisation cost another
~70 ms and was removed (see tfadaqat/model.py). LSQ's and DQ's element-wise forward (weights,
signed activations: five to six ops) and their backward (four passes) each take one pass in
the fused kernels, and so does DQ's unsigned activation quantizer (it was a minimum and a
16-bit FakeQuant: 7.55 ms of Minimum kernels per step at a54d8da's parent, 0.88 ms after).
AdaQAT's activations, whose bit-width is a variable, ran a ``tf.switch_case`` over seven
FakeQuant kernels in each direction; one kernel that reads the bit-width replaced it (9,325
executor events per step instead of 10,057; first two steps 5.5 s instead of 9.3 s).

The AdaQAT probe is one more training-mode forward pass with the probed tensor a bit lower
(the authors' finite difference on the same batch and weights). A full pass measured ~0.38x a
float step, and probing every step cost 1.57x float where a plain step cost ~1.2x. The probe
now re-runs only the layers from one of four restart points at or before the probed tensor's
layer and takes the earlier layers' outputs from the step's own forward pass
(:mod:`tfadaqat.partial_forward`; same loss bit for bit, tested against a full pass), and it
no longer writes BatchNormalization statistics. ``AdaQATRule(probe_every=k)`` divides what is
left by ``k``.

Targets (process CPU time, ratios within this one run; exits 1 on a miss):

* each tfadaqat method's plain step <= 1.00x TFMOT's default 8-bit QAT step;
* AdaQAT probing every step <= 1.5x float.

Run from the repository root:  python -m bench.step_time [--rounds 25 --steps 2]
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import time

from absl import app, flags

import tfadaqat
from tfadaqat import fused_kernels
from tfadaqat._compat import keras, tf, tfmot
from bench.verdicts import print_verdicts
from models import resnet20

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags (defined when run, not on import: the tests import
    :func:`check_targets` beside other benches' flags)."""
    flags.DEFINE_integer("batch_size", 128, "Images per training step.")
    flags.DEFINE_integer("steps", 2, "Training steps timed per round and model.")
    flags.DEFINE_integer("rounds", 25, "Interleaved rounds; the median round is reported.")
    flags.DEFINE_list("methods", list(tfadaqat.METHODS), "tfadaqat methods to time.")
    flags.DEFINE_integer("bits", 4, "Weight and activation bits of the tfadaqat models.")
    flags.DEFINE_integer("inter_op_threads", 1,
                         "TensorFlow inter-op threads (0: TF's default).")


#: LSQ traced with TensorFlow ops instead of the fused kernels: what the kernels save.
TENSORFLOW_OP_ROW = "tfadaqat lsq, TensorFlow ops"


def _compiled(model, **options):
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), **options)
    return model


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def build_rows(batch_size: int, methods, bits: int):
    """Returns [(name, compiled model)] all derived from one float ResNet20."""
    float_model = resnet20()
    rows = [("float", _compiled(float_model))]
    with tfmot.quantization.keras.quantize_scope():
        rows.append(("tfmot default 8-bit",
                     _compiled(tfmot.quantization.keras.quantize_model(resnet20()))))
    for method in methods:
        # Plain QAT steps: AdaQAT's bit-width probing is timed in its own row below.
        qmodel = tfadaqat.quantize_model(float_model, method, weight_bits=bits,
                                         activation_bits=bits, adaqat_rule=None)
        rows.append((f"tfadaqat {method} ({bits}-bit start)", _compiled(qmodel)))
    if "lsq" in methods:  # what the fused gradient kernel (tfadaqat.fused_kernels) saves
        qmodel = tfadaqat.quantize_model(float_model, "lsq", weight_bits=bits,
                                         activation_bits=bits)
        rows.append((TENSORFLOW_OP_ROW, _compiled(qmodel)))
    if "lsq" in methods:  # what the non-finite step guard (tfadaqat.non_finite) costs
        qmodel = tfadaqat.quantize_model(float_model, "lsq", weight_bits=bits,
                                         activation_bits=bits)
        rows.append(("tfadaqat lsq, no NaN guard", _compiled(qmodel,
                                                             skip_non_finite_steps=False)))
    if "adaqat" in methods:
        qmodel = tfadaqat.quantize_model(float_model, "adaqat", weight_bits=8, activation_bits=8,
                                         adaqat_rule=tfadaqat.AdaQATRule(probe_every=1))
        rows.append(("tfadaqat adaqat, probe every step", _compiled(qmodel)))
    return rows


def time_rows(rows, batch_size: int, steps: int, rounds: int):
    """Median ``(wall, process CPU)`` seconds per training step of each row, interleaved
    over `rounds`; and each row's wall seconds for its first two steps (tracing included)."""
    images = tf.random.stateless_uniform((batch_size, 32, 32, 3), seed=(1, 2))
    labels = tf.random.stateless_uniform((batch_size,), seed=(3, 4), maxval=10, dtype=tf.int32)
    first_steps = {}
    for name, model in rows:  # warm-up: tracing and first-call initialisation
        start = time.perf_counter()
        with (fused_kernels.fused_kernels_disabled() if name == TENSORFLOW_OP_ROW
              else contextlib.nullcontext()):
            for _ in range(2):
                model.train_on_batch(images, labels)
        first_steps[name] = time.perf_counter() - start
    walls = {name: [] for name, _ in rows}
    cpus = {name: [] for name, _ in rows}
    for round_index in range(rounds):
        for name, model in rows:
            start, cpu_start = time.perf_counter(), _cpu_seconds()
            for _ in range(steps):
                model.train_on_batch(images, labels)
            walls[name].append((time.perf_counter() - start) / steps)
            cpus[name].append((_cpu_seconds() - cpu_start) / steps)
        if (round_index + 1) % 5 == 0:
            print(f"round {round_index + 1}/{rounds} done", flush=True)
    return ({name: (statistics.median(walls[name]), statistics.median(cpus[name]))
             for name, _ in rows}, first_steps)


def format_table(medians, batch_size: int) -> str:
    wall_reference, cpu_reference = medians["float"]
    lines = [f"{'model':34s} {'ms/step':>9s} {'img/s':>8s} {'x float':>8s} "
             f"{'CPU ms':>8s} {'CPU x float':>11s}"]
    for name, (seconds, cpu) in medians.items():
        lines.append(f"{name:34s} {seconds * 1e3:9.1f} {batch_size / seconds:8.1f} "
                     f"{seconds / wall_reference:8.2f} {cpu * 1e3:8.1f} "
                     f"{cpu / cpu_reference:11.2f}")
    return "\n".join(lines)


PLAIN_STEP_VS_TFMOT = 1.00
PROBING_VS_FLOAT = 1.5


def check_targets(medians):
    """``[(description, passed)]`` for the targets above, on CPU seconds per step."""
    cpu = {name: seconds for name, (_, seconds) in medians.items()}
    checks = []
    tfmot_cpu = cpu["tfmot default 8-bit"]
    for name, seconds in cpu.items():
        if (name.startswith("tfadaqat") and "probe" not in name and "no NaN guard" not in name
                and name != TENSORFLOW_OP_ROW):
            ratio = seconds / tfmot_cpu
            checks.append((f"{name}: {ratio:.2f}x TFMOT's CPU time per step <= "
                           f"{PLAIN_STEP_VS_TFMOT:.2f}", ratio <= PLAIN_STEP_VS_TFMOT))
    for name, seconds in cpu.items():
        if "probe" in name:
            ratio = seconds / cpu["float"]
            checks.append((f"{name}: {ratio:.2f}x float's CPU time per step <= "
                           f"{PROBING_VS_FLOAT:.2f}", ratio <= PROBING_VS_FLOAT))
    return checks


def main(argv):
    del argv
    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
    rows = build_rows(FLAGS.batch_size, FLAGS.methods, FLAGS.bits)
    medians, first_steps = time_rows(rows, FLAGS.batch_size, FLAGS.steps, FLAGS.rounds)
    print(f"ResNet20, 32x32x3, batch {FLAGS.batch_size}, inter-op threads "
          f"{FLAGS.inter_op_threads or 'default'}, median of {FLAGS.rounds} rounds x "
          f"{FLAGS.steps} steps")
    reason = fused_kernels.unavailable_reason()
    print("fused quantizer kernels: " + ("in use" if reason is None else
                                                 f"NOT in use ({reason})"))
    print(format_table(medians, FLAGS.batch_size))
    print("first two steps, tracing included (wall s): " + ", ".join(
        f"{name} {seconds:.1f}" for name, seconds in first_steps.items()))
    return print_verdicts(check_targets(medians))


if __name__ == "__main__":
    define_flags()
    app.run(main)
