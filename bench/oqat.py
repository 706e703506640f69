"""OQAT on digits: bit inheritance against training from scratch, and sub-networks searched
under BitOPs budgets against bench/budget's uniform 3-bit baseline, in one run, fixed seeds.

1. The baseline of bench/budget: ``models.small_cnn`` on digits upsampled to 16x16, float
   training then uniform 3-bit LSQ fine-tuning (same seeds and epochs as there), and its
   BitOPs by :func:`tfadaqat.cost`.
2. ``recipes.oqat`` with bits 4,3 on digits' own 8x8 images: the 4-bit supernet trained with
   the sandwich rule for ``--epochs``, the 3-bit one inherited from it and fine-tuned for
   ``--finetune_epochs``, searches under budgets that are fractions of the baseline's BitOPs
   (whole network, counted by :func:`tfadaqat.cost` as the baseline's), every found
   sub-network extracted, exported to TFLite and verified.
3. A 3-bit supernet trained from scratch for ``--epochs + --finetune_epochs`` epochs, the
   comparison for inheritance (largest and smallest sub-networks, after BatchNorm
   recalibration, on the test split).

Targets (issue 6): every searched sub-net within its BitOPs budget and its extracted model's
accuracy within 0.5 points of the supernet's for that config; the inherited 3-bit supernet at
least as accurate as the one from scratch for the largest and smallest sub-nets; the 3-bit
Pareto front at or above the uniform 3-bit baseline (a sub-net of at most the baseline's
BitOPs with at least its accuracy). The baseline sees 16x16 inputs as in bench/budget, the
supernet the 8x8 originals (the same information, upsampled); BitOPs count what each network
computes.

Run from the repository root (about 20 minutes on 2 cores):

  python -m bench.oqat [--epochs 30 --finetune_epochs 30 --out runs/bench_oqat]
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time

import numpy as np
from absl import app, flags

import tfadaqat
from bench.digits_baseline import train_float, train_uniform
from recipes import oqat
from recipes.data import load_digits

FLAGS = flags.FLAGS
flags.DEFINE_integer("epochs", 30, "Sandwich epochs of the 4-bit supernet.", lower_bound=1)
flags.DEFINE_integer("finetune_epochs", 30, "Fine-tuning epochs after inheritance.",
                     lower_bound=1)
flags.DEFINE_float("finetune_learning_rate", 2e-3, "Adam's peak rate after inheritance.",
                   lower_bound=0.0)
flags.DEFINE_integer("batch_size", 32, "Training batch size (bench/budget's).", lower_bound=1)
flags.DEFINE_bool("distillation", True, "In-place distillation from the largest sub-net.")
flags.DEFINE_integer("generations", 6, "Search generations per budget.", lower_bound=1)
flags.DEFINE_integer("population", 16, "Search population.", lower_bound=2)
flags.DEFINE_integer("baseline_epochs", 30, "Float and 3-bit epochs of the baseline (as in "
                     "bench/budget).", lower_bound=1)
flags.DEFINE_string("out", "runs/bench_oqat", "Folder for the runs, tables and files.")

BITS = 3
BUDGETS = (1.0, 0.75, 0.5)  # fractions of the baseline's BitOPs
EXTRACTION_TOLERANCE = 0.005
SEED = 0


def _baseline() -> dict:
    upsampled = load_digits(seed=SEED, upsample=2)
    assert np.array_equal(upsampled[3], load_digits(seed=SEED)[3])  # the same test split
    float_model = train_float(upsampled, epochs=FLAGS.baseline_epochs, batch_size=32,
                              seed=SEED)
    qmodel, accuracy = train_uniform(float_model, upsampled, BITS,
                                     epochs=FLAGS.baseline_epochs, batch_size=32, seed=SEED)
    cost = tfadaqat.cost(qmodel)
    return {"name": f"uniform {BITS}-bit small_cnn", "test_accuracy": accuracy,
            "bitops": int(cost.bitops), "weight_kb": float(cost.weight_kb)}


def main(argv):
    del argv
    start = time.time()
    for folder in ("recipe", "scratch"):
        shutil.rmtree(os.path.join(FLAGS.out, folder), ignore_errors=True)
    os.makedirs(FLAGS.out, exist_ok=True)
    print(f"[baseline] small_cnn 16x16: float, then uniform {BITS}-bit LSQ, "
          f"{FLAGS.baseline_epochs} + {FLAGS.baseline_epochs} epochs", flush=True)
    baseline = _baseline()
    print(f"[baseline] accuracy {baseline['test_accuracy']:.4f}, {baseline['bitops']:,} BitOPs",
          flush=True)

    options = oqat.Options(
        workdir=os.path.join(FLAGS.out, "recipe"), dataset="digits", bits=(4, BITS),
        budgets=BUDGETS, budget_reference=baseline["bitops"], epochs=FLAGS.epochs,
        finetune_epochs=FLAGS.finetune_epochs,
        finetune_learning_rate=FLAGS.finetune_learning_rate, batch_size=FLAGS.batch_size,
        distillation=FLAGS.distillation,
        population=FLAGS.population, generations=FLAGS.generations, seed=SEED)
    rows = oqat.run(options)

    scratch_options = dataclasses.replace(
        options, workdir=os.path.join(FLAGS.out, "scratch"), bits=(BITS,),
        epochs=FLAGS.epochs + FLAGS.finetune_epochs)
    run_data = oqat.load_data(scratch_options)
    spec, space = scratch_options.spec(), scratch_options.space()
    scratch = oqat.train_supernets(scratch_options, run_data, spec, space)[BITS]
    three = {row["name"][len(f"{BITS}bit_"):]: row for row in rows if row["bits"] == BITS}
    comparison = {}
    print(f"\n{'3-bit supernet':<20} {'largest':>8} {'smallest':>9}   (test accuracy after "
          "BatchNorm recalibration)")
    for which, config in (("largest", space.largest()), ("smallest", space.smallest())):
        comparison[which] = (three[which]["supernet_accuracy"], oqat.subnet_accuracy(
            scratch, config, run_data.calibration, *run_data.test))
    for index, name in enumerate(("inherited from 4", "from scratch")):
        print(f"{name:<20} {comparison['largest'][index]:>8.4f} "
              f"{comparison['smallest'][index]:>9.4f}")
    print(f"\n{'uniform 3-bit small_cnn (16x16)':<32} {baseline['bitops']:>13,} BitOPs "
          f"{baseline['weight_kb']:>7.2f} KB  accuracy {baseline['test_accuracy']:.4f}")

    checks = []
    for which, (inherited, from_scratch) in comparison.items():
        checks.append((f"inherited 3-bit {which} {inherited:.4f} >= from scratch "
                       f"{from_scratch:.4f}", inherited >= from_scratch))
    for name, row in three.items():
        if row["budget"] is not None:
            checks.append((f"{BITS}-bit {name}: BitOPs {row['bitops']:,} <= budget "
                           f"{row['budget']:,.0f}", row["bitops"] <= row["budget"]))
        checks.append((f"{BITS}-bit {name}: extracted {row['test_accuracy']:.4f} within "
                       f"{EXTRACTION_TOLERANCE} of supernet {row['supernet_accuracy']:.4f}",
                       abs(row["test_accuracy"] - row["supernet_accuracy"])
                       <= EXTRACTION_TOLERANCE))
    within = [row for row in three.values() if row["bitops"] <= baseline["bitops"]]
    best = max(within, key=lambda row: row["test_accuracy"]) if within else None
    checks.append((
        f"{BITS}-bit Pareto front at or above the uniform baseline: best sub-net within "
        f"{baseline['bitops']:,} BitOPs " + (
            f"({best['name']}, {best['bitops']:,}) {best['test_accuracy']:.4f}" if best
            else "(none)") + f" >= {baseline['test_accuracy']:.4f}",
        best is not None and best["test_accuracy"] >= baseline["test_accuracy"]))
    with open(os.path.join(FLAGS.out, "bench_oqat.json"), "w") as handle:
        json.dump({"baseline": baseline, "subnets": rows,
                   "inheritance": {which: {"inherited": values[0], "from_scratch": values[1]}
                                   for which, values in comparison.items()},
                   "checks": [{"target": text, "passed": ok} for text, ok in checks]},
                  handle, indent=1)
    print(f"\nwrote {FLAGS.out}/bench_oqat.json; the recipe's Pareto table, PNG, sub-nets and "
          f".tflite files are in {options.workdir} ({time.time() - start:.0f} s in all)\n")
    for description, passed in checks:
        print(f"[{'PASS' if passed else 'FAIL'}] {description}")
    failed = sum(not passed for _, passed in checks)
    print(f"targets: {len(checks) - failed} passed, {failed} failed")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    app.run(main)
