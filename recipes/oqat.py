"""OQAT end to end: supernets at decreasing bit-widths, budgeted search, sub-nets and .tflite.

  python -m recipes.oqat --dataset=digits --bits=4,3,2 --budgets=0.5,0.25 --workdir=runs/oqat
  python -m recipes.oqat --dataset=cifar10 --bits=4,3,2 --budgets=0.5,0.25 --epochs=120 \\
      --finetune_epochs=25 --workdir=runs/oqat_cifar10

1. The supernet at the first bit-width is trained with the sandwich rule (``--epochs``);
   each following bit-width inherits from the previous one (steps doubled) and is fine-tuned
   (``--finetune_epochs``). Every supernet is saved in ``--workdir`` when its training ends.
2. For every bit-width, the largest and smallest sub-networks are evaluated on the test split
   after BatchNorm recalibration, and the evolutionary search finds the best sub-network
   under each budget. ``--budgets`` are fractions of the largest sub-network's BitOPs at the
   first bit-width (whole network, as :func:`tfadaqat.cost` counts it), so one budget gives
   one sub-network per bit-width and the bit-widths compete. Search scores are accuracies on
   images held out of training (digits: the last 300 training images) or, for cifar10, on
   the first 5,000 training images without augmentation (tfds' cifar10 has no validation
   split; the test split is kept for the reported numbers).
3. Each found sub-network is extracted (``<workdir>/subnets/*.keras``), summarised, exported
   to ``.tflite`` and verified against the Keras model (with ``--edge_bits`` > 0, the
   default 8: input, stem and classifier quantized so that the file is integer-only).
4. ``pareto.json``/``pareto.txt`` hold every evaluated sub-network (BitOPs, weight KB, test
   accuracy, file size, agreement), ``pareto.png`` plots accuracy against BitOPs per
   bit-width.

Started again with the same command, a run continues: finished supernets are loaded instead
of trained, an interrupted one resumes from its last finished epoch (Keras'
``BackupAndRestore``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from absl import app, flags, logging

import tfadaqat
from recipes import data
from tfadaqat._compat import keras
from tfadaqat.oqat import (SearchSpace, Supernet, SupernetSpec, evolutionary_search, extract,
                           inherit, network_cost, recalibrate, subnet_cost)

DATASETS = ("digits", "cifar10")
_DIGITS_CHANNELS = (8, 16, 24, 32, 48)
_SEARCH_EXAMPLES = {"digits": 300, "cifar10": 5000}
_CALIBRATION_BATCHES = 8  # BatchNorm recalibration on 1,024 training images
_BATCH = 128  # calibration and evaluation batches


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything a run depends on (the flags of this module, same names).

    Raises:
      ValueError: Naming the bad field and the allowed values.
    """

    workdir: str
    dataset: str = "digits"
    bits: Tuple[int, ...] = (4, 3, 2)
    budgets: Tuple[float, ...] = (0.5, 0.25)
    epochs: int = 30
    finetune_epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 3e-3
    finetune_learning_rate: float = 2e-3
    edge_bits: int = 8
    distillation: bool = True
    random_subnets: int = 2
    population: int = 16
    generations: int = 6
    parents: int = 6
    kernel_sizes: Tuple[int, ...] = (3, 5, 7)
    expand_ratios: Tuple[int, ...] = (3, 4, 6)
    depths: Tuple[int, ...] = (2, 3, 4)
    stage_channels: Optional[Tuple[int, ...]] = None
    verify_examples: int = 450
    budget_reference: Optional[float] = None
    data_dir: Optional[str] = None
    seed: int = 0

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        bits = tuple(self.bits)
        if not bits or any(isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 8
                           for b in bits):
            raise ValueError(f"bits must be integers in [2, 8], got {list(bits)}")
        if any(lower >= higher for higher, lower in zip(bits, bits[1:])):
            raise ValueError(f"bits must decrease (each supernet inherits from the previous "
                             f"one), got {list(bits)}")
        if not self.budgets or any(not 0.0 < b <= 1.0 for b in self.budgets):
            raise ValueError(f"budgets must be fractions in (0, 1] of the largest sub-network's "
                             f"BitOPs at {bits[0]} bits (or of budget_reference), got "
                             f"{list(self.budgets)}")
        if self.budget_reference is not None and not self.budget_reference > 0:
            raise ValueError(f"budget_reference must be None or a positive number of BitOPs, "
                             f"got {self.budget_reference!r}")
        if self.edge_bits != 0 and not 2 <= self.edge_bits <= 8:
            raise ValueError(f"edge_bits must be 0 (float stem and classifier) or in [2, 8], "
                             f"got {self.edge_bits}")
        for name in ("learning_rate", "finetune_learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("epochs", "finetune_epochs", "batch_size", "population", "generations",
                     "parents", "verify_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        object.__setattr__(self, "bits", bits)

    def space(self) -> SearchSpace:
        stages = len(self.stage_channels) if self.stage_channels else 5
        return SearchSpace(self.kernel_sizes, self.expand_ratios, self.depths, stages)

    def spec(self) -> SupernetSpec:
        shape = data.dataset_spec(self.dataset).input_shape
        overrides = {}
        if self.stage_channels:
            overrides["stage_channels"] = tuple(self.stage_channels)
        elif self.dataset == "digits":
            overrides["stage_channels"] = _DIGITS_CHANNELS
        if self.dataset == "digits":
            overrides["stem_channels"] = 8
        if self.stage_channels:  # the default strides' last stages, for any stage count
            strides = SupernetSpec.for_input(shape, 10).stage_strides
            overrides["stage_strides"] = (strides * len(self.stage_channels))[
                -len(self.stage_channels):]
        return SupernetSpec.for_input(shape, 10, **overrides)


@dataclasses.dataclass
class _Data:
    """Training pipeline, held-out search images, calibration batches and the test split."""

    train: object  # a tf.data.Dataset or (images, labels)
    search: Tuple[np.ndarray, np.ndarray]
    calibration: List[np.ndarray]
    test: Tuple[np.ndarray, np.ndarray]
    steps_per_epoch: int


def _arrays(dataset) -> Tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(images), np.concatenate(labels)


def load_data(options: Options) -> _Data:
    """The data of a run (digits in memory; cifar10 through tfds, see recipes.data)."""
    held_out = _SEARCH_EXAMPLES[options.dataset]
    if options.dataset == "digits":
        train_x, test_x, train_y, test_y = data.load_digits(seed=options.seed)
        fit = (train_x[:-held_out], train_y[:-held_out])
        search = (train_x[-held_out:], train_y[-held_out:])
        calibration = [fit[0][i:i + _BATCH] for i in range(
            0, min(len(fit[0]), _CALIBRATION_BATCHES * _BATCH), _BATCH)]
        return _Data(fit, search, calibration, (test_x, test_y),
                     -(-len(fit[0]) // options.batch_size))
    spec = data.dataset_spec(options.dataset)
    train = data.build_dataset(options.dataset, "train", batch_size=options.batch_size,
                               training=True, seed=options.seed, data_dir=options.data_dir)
    plain = data.build_dataset(options.dataset, "train", batch_size=_BATCH, training=False,
                               data_dir=options.data_dir)
    search = _arrays(plain.take(held_out // _BATCH))
    calibration = [x.numpy() for x, _ in plain.take(_CALIBRATION_BATCHES)]
    test = _arrays(data.build_dataset(options.dataset, spec.eval_split, batch_size=_BATCH,
                                      training=False, data_dir=options.data_dir))
    return _Data(train, search, calibration, test, spec.train_examples // options.batch_size)


def subnet_accuracy(net: Supernet, config, calibration, images, labels) -> float:
    """Test accuracy of sub-network `config` after recalibrating its BatchNorm statistics."""
    recalibrate(net, config, calibration)
    predictions = np.concatenate([np.argmax(net(images[i:i + _BATCH], config=config), axis=1)
                                  for i in range(0, len(images), _BATCH)])
    return float(np.mean(predictions == labels))


def _compile(net: Supernet, learning_rate: float, epochs: int, steps: int) -> None:
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(epochs * steps, 1))
    net.compile(keras.optimizers.Adam(schedule),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])


def _fit(net: Supernet, run_data: _Data, epochs: int, batch_size: int, backup: str) -> None:
    """``fit`` with an epoch checkpoint in `backup`, removed when training ends."""
    callbacks = [keras.callbacks.BackupAndRestore(backup, delete_checkpoint=True),
                 keras.callbacks.TerminateOnNaN()]
    if isinstance(run_data.train, tuple):
        images, labels = run_data.train
        history = net.fit(images, labels, batch_size=batch_size, epochs=epochs,
                          callbacks=callbacks, verbose=2)
    else:
        history = net.fit(run_data.train, epochs=epochs, callbacks=callbacks, verbose=2)
    losses = history.history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        raise FloatingPointError(
            f"the {net.bits}-bit supernet's loss became {losses[-1]} in epoch {len(losses)}: "
            "training diverged; try a lower --learning_rate")
    shutil.rmtree(backup, ignore_errors=True)


def train_supernets(options: Options, run_data: _Data, spec: SupernetSpec,
               space: SearchSpace) -> Dict[int, Supernet]:
    """Trains (or loads) the supernet at every bit-width of `options.bits`."""
    nets: Dict[int, Supernet] = {}
    sample = run_data.calibration[0]
    edge_bits = options.edge_bits or None
    for index, bits in enumerate(options.bits):
        prefix = os.path.join(options.workdir, "supernets", f"{bits}bit")
        keras.utils.set_random_seed(options.seed + index)
        if index == 0:
            net = Supernet(spec, space, bits=bits, random_subnets=options.random_subnets,
                           seed=options.seed, edge_bits=edge_bits,
                           distillation=options.distillation)
            net(sample[:1])
            net.initialize_steps(sample)
            epochs, rate = options.epochs, options.learning_rate
        else:
            net = inherit(nets[options.bits[index - 1]], bits)
            epochs, rate = options.finetune_epochs, options.finetune_learning_rate
        if os.path.exists(prefix + ".index"):
            status = net.load_weights(prefix)  # the optimizer's slots are not needed
            status.assert_existing_objects_matched().expect_partial()
            print(f"[{bits}-bit supernet] loaded {prefix} (trained in an earlier run)",
                  flush=True)
        else:
            how = "sandwich training" if index == 0 else (
                f"inherited from {options.bits[index - 1]} bits, fine-tuning")
            print(f"[{bits}-bit supernet] {how}: {epochs} epochs", flush=True)
            _compile(net, rate, epochs, run_data.steps_per_epoch)
            start = time.time()
            _fit(net, run_data, epochs, options.batch_size,
                 os.path.join(options.workdir, "backup", f"{bits}bit"))
            net.save_weights(prefix)
            print(f"[{bits}-bit supernet] saved {prefix} ({time.time() - start:.0f} s)",
                  flush=True)
        nets[bits] = net
    return nets


def resolve_budgets(options: Options, spec: SupernetSpec, space: SearchSpace):
    """The BitOPs budgets (absolute), refusing those no sub-network at any bit-width meets."""
    edge_bits = options.edge_bits or None
    reference = options.budget_reference or network_cost(
        space.largest(), spec, space, options.bits[0], edge_bits).bitops
    least = network_cost(space.smallest(), spec, space, options.bits[-1], edge_bits).bitops
    budgets = {fraction: fraction * reference for fraction in options.budgets}
    for fraction, budget in budgets.items():
        if budget < least:
            raise ValueError(
                f"budget {fraction:g} ({budget:,.0f} BitOPs) is below the smallest sub-network "
                f"at {options.bits[-1]} bits ({least:,.0f} BitOPs): budgets must lie in "
                f"[{least / reference:.4g}, 1] (fractions of "
                + (f"budget_reference, {reference:,.0f} BitOPs)" if options.budget_reference
                   else f"the largest sub-network's {reference:,.0f} BitOPs at "
                        f"{options.bits[0]} bits)"))
    return reference, budgets


def _export(net: Supernet, config, name: str, options: Options, run_data: _Data,
            supernet_accuracy: float) -> Dict:
    """Extracts, saves, summarises and (with edge bits) exports and verifies one sub-net.

    ``test_accuracy`` is the extracted model's (equal to the supernet's for `config`). With
    edge bits its biases are then aligned to the int32 grid of the file
    (:func:`tfadaqat.align_biases`, shifts far below a step) so that the ``.keras`` saved and
    the ``.tflite`` written are one model, whose accuracy is ``aligned_accuracy``."""
    folder = os.path.join(options.workdir, "subnets")
    os.makedirs(folder, exist_ok=True)
    model = extract(net, config)
    test_x, test_y = run_data.test

    def accuracy_of(keras_model) -> float:
        logits = keras_model.predict(test_x, batch_size=_BATCH, verbose=0)
        return float(np.mean(np.argmax(logits, axis=1) == test_y))

    accuracy = accuracy_of(model)
    if options.edge_bits:  # what the integer file computes: save and export that
        tfadaqat.align_biases(model)
    model.save(os.path.join(folder, f"{name}.keras"))
    lines: List[str] = []
    tfadaqat.summary(model, print_fn=lines.append)
    with open(os.path.join(folder, f"{name}_summary.txt"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    cost = tfadaqat.cost(model)
    row = {"name": name, "bits": net.bits, "bitops": int(cost.bitops),
           "weight_kb": float(cost.weight_kb), "supernet_accuracy": supernet_accuracy,
           "test_accuracy": accuracy, "config": config.to_dict()}
    if options.edge_bits:
        path = os.path.join(folder, f"{name}.tflite")
        report = tfadaqat.export_tflite(model, path,
                                        verify_with=test_x[:options.verify_examples])
        row.update(aligned_accuracy=accuracy_of(model), tflite=path,
                   tflite_bytes=report.file_bytes,
                   tflite_top1_agreement=report.top1_agreement,
                   tflite_max_output_difference=report.max_output_difference)
    return row


def _table(rows: Sequence[Dict], test_examples: int) -> str:
    header = (f"{'sub-network':<22} {'BitOPs':>13} {'weight KB':>9} {'supernet':>8} "
              f"{'extracted':>9} {'aligned':>7} {'tflite B':>9} {'agree':>6}  depths")
    lines = [f"test split: {test_examples} examples; accuracies after BatchNorm recalibration",
             header, "-" * len(header)]
    for row in rows:
        file_bytes = f"{row['tflite_bytes']:,}" if "tflite_bytes" in row else "-"
        agree = (f"{row['tflite_top1_agreement']:.4f}" if "tflite_top1_agreement" in row
                 else "-")
        aligned = f"{row['aligned_accuracy']:.4f}" if "aligned_accuracy" in row else "-"
        lines.append(f"{row['name']:<22} {row['bitops']:>13,} {row['weight_kb']:>9.2f} "
                     f"{row['supernet_accuracy']:>8.4f} {row['test_accuracy']:>9.4f} "
                     f"{aligned:>7} {file_bytes:>9} {agree:>6}  {row['config']['depths']}")
    return "\n".join(lines)


def _plot(rows: Sequence[Dict], path: str, dataset: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for bits in sorted({row["bits"] for row in rows}, reverse=True):
        points = sorted((r for r in rows if r["bits"] == bits), key=lambda r: r["bitops"])
        axes.plot([r["bitops"] for r in points], [100 * r["test_accuracy"] for r in points],
                  "o-", label=f"{bits}-bit sub-networks")
    axes.set_xscale("log")
    axes.set_xlabel("BitOPs (log scale)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(f"OQAT on {dataset}: searched, largest and smallest sub-networks")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(options: Options) -> List[Dict]:
    """The whole recipe (see the module docstring); returns the Pareto table's rows."""
    spec, space = options.spec(), options.space()
    reference, budgets = resolve_budgets(options, spec, space)
    os.makedirs(options.workdir, exist_ok=True)
    with open(os.path.join(options.workdir, "options.json"), "w") as handle:
        json.dump(dataclasses.asdict(options), handle, indent=2)
    print(f"[data] {options.dataset}", flush=True)
    run_data = load_data(options)
    nets = train_supernets(options, run_data, spec, space)
    edge_bits = options.edge_bits or None
    rows: List[Dict] = []
    for bits, net in nets.items():
        named = [("largest", space.largest(), None), ("smallest", space.smallest(), None)]
        least = network_cost(space.smallest(), spec, space, bits, edge_bits).bitops
        # The stem's and classifier's BitOPs, the same in every sub-network.
        edges = least - subnet_cost(space.smallest(), spec, weight_bits=bits,
                                    activation_bits=bits)["bitops"]
        for fraction, budget in budgets.items():
            name = f"budget{fraction:g}"
            if budget < least:
                print(f"[{bits}-bit search] {name}: unreachable at {bits} bits (smallest "
                      f"sub-network {least:,.0f} BitOPs > {budget:,.0f})", flush=True)
                continue
            print(f"[{bits}-bit search] {name}: at most {budget:,.0f} BitOPs", flush=True)
            result = evolutionary_search(
                space, spec, lambda config: subnet_accuracy(
                    net, config, run_data.calibration, *run_data.search),
                bitops_budget=budget - edges, weight_bits=bits, activation_bits=bits,
                population=options.population, generations=options.generations,
                parents=min(options.parents, options.population), seed=options.seed,
                progress=lambda text, b=bits: print(f"[{b}-bit search]   {text}", flush=True))
            with open(os.path.join(options.workdir, f"search_{bits}bit_{name}.json"),
                      "w") as handle:
                handle.write(result.to_json())
            named.append((name, result.best.config, budget))
        for name, config, budget in named:
            accuracy = subnet_accuracy(net, config, run_data.calibration, *run_data.test)
            row = _export(net, config, f"{bits}bit_{name}", options, run_data, accuracy)
            row["budget"] = budget
            rows.append(row)
            print(f"[{bits}-bit] {name}: {row['bitops']:,} BitOPs, test accuracy "
                  f"{row['test_accuracy']:.4f}", flush=True)
    rows.sort(key=lambda r: r["bitops"])
    table = _table(rows, len(run_data.test[1]))
    print("\n" + table)
    with open(os.path.join(options.workdir, "pareto.txt"), "w") as handle:
        handle.write(table + "\n")
    with open(os.path.join(options.workdir, "pareto.json"), "w") as handle:
        json.dump({"reference_bitops": reference, "rows": rows}, handle, indent=1)
    _plot(rows, os.path.join(options.workdir, "pareto.png"), options.dataset)
    print(f"\nwrote to {options.workdir}: supernets/ (weights per bit-width), search_*.json, "
          "subnets/ (.keras, summaries" + (", .tflite" if options.edge_bits else "")
          + "), pareto.txt, pareto.json, pareto.png")
    return rows


FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line (defined only when run as a program, so that importing this module
    from another absl program adds no flags)."""
    flags.DEFINE_string("workdir", None, "Folder for supernets, searches, sub-nets and tables.")
    flags.DEFINE_enum("dataset", "digits", list(DATASETS), "Data set.")
    flags.DEFINE_list("bits", ["4", "3", "2"], "Decreasing bit-widths: the first is trained with "
                      "the sandwich rule, each next one inherited and fine-tuned.")
    flags.DEFINE_list("budgets", ["0.5", "0.25"], "BitOPs budgets as fractions in (0, 1] of the "
                      "largest sub-network's BitOPs at the first bit-width.")
    flags.DEFINE_integer("epochs", 30, "Sandwich epochs of the first supernet.")
    flags.DEFINE_integer("finetune_epochs", 30, "Fine-tuning epochs after each inheritance.")
    flags.DEFINE_integer("batch_size", 32, "Training batch size.")
    flags.DEFINE_float("learning_rate", 3e-3, "Adam's peak rate (cosine decay), first supernet.")
    flags.DEFINE_float("finetune_learning_rate", 2e-3, "Adam's peak rate after inheritance.")
    flags.DEFINE_integer("edge_bits", 8, "Bits of the input, stem and classifier; 0 keeps stem "
                         "and classifier in float (OQAT's choice; then no .tflite is written).")
    flags.DEFINE_bool("distillation", True, "In-place distillation from the largest sub-net.")
    flags.DEFINE_integer("random_subnets", 2, "Random sub-networks per sandwich step.")
    flags.DEFINE_integer("population", 16, "Search population.")
    flags.DEFINE_integer("generations", 6, "Search generations per budget and bit-width.")
    flags.DEFINE_list("kernel_sizes", ["3", "5", "7"], "Depthwise kernel sizes of the space.")
    flags.DEFINE_list("expand_ratios", ["3", "4", "6"], "Expand ratios of the space.")
    flags.DEFINE_list("depths", ["2", "3", "4"], "Stage depths of the space.")
    flags.DEFINE_list("stage_channels", [], "Output channels per stage (default: 8,16,24,32,48 "
                      "for digits, 24,40,80,112,160 for cifar10).")
    flags.DEFINE_string("data_dir", None, "TensorFlow Datasets folder (cifar10).")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.mark_flags_as_required(["workdir"])


def _numbers(name: str, values: Sequence[str], kind):
    try:
        return tuple(kind(value) for value in values)
    except ValueError:
        raise app.UsageError(f"--{name} must be a comma-separated list of "
                             f"{kind.__name__}s, got {','.join(values)!r}") from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    try:
        options = Options(
            workdir=FLAGS.workdir, dataset=FLAGS.dataset, bits=_numbers("bits", FLAGS.bits, int),
            budgets=_numbers("budgets", FLAGS.budgets, float), epochs=FLAGS.epochs,
            finetune_epochs=FLAGS.finetune_epochs, batch_size=FLAGS.batch_size,
            learning_rate=FLAGS.learning_rate,
            finetune_learning_rate=FLAGS.finetune_learning_rate, edge_bits=FLAGS.edge_bits,
            distillation=FLAGS.distillation, random_subnets=FLAGS.random_subnets,
            population=FLAGS.population, generations=FLAGS.generations,
            kernel_sizes=_numbers("kernel_sizes", FLAGS.kernel_sizes, int),
            expand_ratios=_numbers("expand_ratios", FLAGS.expand_ratios, int),
            depths=_numbers("depths", FLAGS.depths, int),
            stage_channels=_numbers("stage_channels", FLAGS.stage_channels, int) or None,
            data_dir=FLAGS.data_dir, seed=FLAGS.seed)
        run(options)
    except (ValueError, data.DatasetNotPreparedError) as error:
        raise app.UsageError(str(error)) from None


if __name__ == "__main__":
    define_flags()
    app.run(main)
