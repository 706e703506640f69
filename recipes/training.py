"""The whole workflow of a recipe: float weights, quantization, fit, summary, export, in a workdir.

:func:`train_and_evaluate` is what ``python -m recipes.train`` runs and what the tests call on
mock data. A run writes into ``workdir``:

* ``config.json``: the config; a later run in the same workdir must use the same one.
* ``float_model.keras``: the float model the quantized one starts from (trained here for
  ``float_epochs``, or copied from ``init_from``); absent when training from scratch.
* ``checkpoints/float``, ``checkpoints/quantized``: model and optimizer after every epoch
  (``tf.train.CheckpointManager``, the last ``keep_checkpoints``).
* ``logs/float``, ``logs/quantized``: TensorBoard scalars per epoch: loss, accuracy, their
  validation values, learning rate and, when quantized, ``bits/<layer>/<tensor>``, ``bitops``,
  ``weight_kb``, ``activation_kb``.
* ``bit_history.json``, ``bit_widths.png``: bits per epoch and their plot.
* ``model.keras``: the trained quantized model (``tfadaqat.load_model``).
* ``summary.txt``, ``summary.json``: ``tfadaqat.summary`` and the test accuracy.
* ``model.tflite``, ``export_report.json``: the integer file and its verification.

Resuming: a run that was killed, started again with the same command, restores the last
checkpoint and goes on from the epoch after it; only the epoch in progress is lost. Each
epoch's data order and augmentation depend only on ``(seed, epoch)``: the pipeline is built
afresh for every epoch with that seed, so a resumed run sees the same batches as an
uninterrupted one and ends with the same bits and weights.

Distribution: ``strategy`` is "default" (one device), "mirrored" (all local devices),
"multi_worker" (``TF_CONFIG`` cluster) or "tpu". ``batch_size`` is the global batch, split
evenly over the replicas; the learning rate is ``learning_rate x batch_size /
base_batch_size`` whatever the number of replicas.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy as np

import tfadaqat
from tfadaqat._compat import keras, tf
from tfadaqat.tensors import unwrapped_layer
import models
from recipes import data

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("step", "cosine", "constant")
BUDGET_UNITS = ("relative", "absolute")
GRIDS = ("dorefa", "symmetric")
# Fields that may differ between a run and its resumption in the same workdir.
_RESUMABLE_CHANGES = ("data_dir", "verify_examples", "keep_checkpoints", "export")


# ---------------------------------------------------------------------------------------------
# Checking a config before anything runs


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _choice(config, name: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    _require(config[name] in allowed,
             f"config.{name} must be one of {allowed}, got {config[name]!r}")


def _positive(config, *names: str, integer: bool = False, zero: bool = False) -> None:
    for name in names:
        value = config[name]
        kind = int if integer else (int, float)
        ok = isinstance(value, kind) and not isinstance(value, bool) and (
            value >= 0 if zero else value > 0)
        _require(ok, f"config.{name} must be a {'non-negative' if zero else 'positive'} "
                     f"{'integer' if integer else 'number'}, got {value!r}")


def validate_config(config, strategy: str = "default") -> None:
    """Raises ValueError naming the first bad field of `config` and its allowed values."""
    _choice(config, "model", models.MODEL_NAMES)
    _choice(config, "dataset", data.DATASET_NAMES)
    _choice(config, "method", tfadaqat.METHODS)
    _choice(config, "optimizer", OPTIMIZERS)
    _choice(config, "schedule", SCHEDULES)
    _choice(config, "grid", GRIDS)
    _choice(config, "export_target", tfadaqat.export.TARGETS)
    _require(strategy in STRATEGIES, f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    _positive(config, "batch_size", "base_batch_size", "epochs", integer=True)
    _positive(config, "float_epochs", "steps_per_epoch", "eval_steps", "warmup_epochs",
              "image_size", "verify_examples", "seed", "reestimate_batch_norm_batches",
              integer=True, zero=True)
    _positive(config, "keep_checkpoints", integer=True)
    _positive(config, "learning_rate", "float_learning_rate")
    _positive(config, "weight_decay", "momentum", zero=True)
    _require(0 < config.decay_factor <= 1,
             f"config.decay_factor must lie in (0, 1], got {config.decay_factor!r}")
    _require(all(isinstance(e, int) and 0 < e for e in config.decay_epochs),
             f"config.decay_epochs must be positive epoch numbers, got {config.decay_epochs!r}")
    for name in ("weight_bits", "activation_bits", "min_bits", "max_bits"):
        _require(isinstance(config[name], int) and 1 <= config[name] <= 16,
                 f"config.{name} must be an integer in [1, 16], got {config[name]!r}")
    budget_from_config(config)  # raises for bad units or bounds


def budget_from_config(config) -> Optional[tfadaqat.Budget]:
    """The run's :class:`tfadaqat.Budget`, or None when no bound is set.

    Raises:
      ValueError: For unknown units, negative bounds, or relative bounds above 1 (a relative
        bound is a fraction of the 8-bit model: 0.25 is a quarter; absolute BitOPs or KB
        need ``budget.units='absolute'``).
    """
    budget = config.budget
    _require(budget.units in BUDGET_UNITS,
             f"config.budget.units must be one of {BUDGET_UNITS}, got {budget.units!r}")
    bounds = {}
    for name in ("bitops", "weight_kb", "activation_kb"):
        value = budget[name]
        _require(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
                 f"config.budget.{name} must be a non-negative number (0 = no bound), "
                 f"got {value!r}")
        if value and budget.units == "relative":
            _require(value <= 1.0,
                     f"config.budget.{name}={value:g} with units 'relative' must lie in (0, 1] "
                     "(a fraction of the uniform 8-bit model); for BitOPs or KB set "
                     "config.budget.units='absolute'")
        if value:
            bounds[name] = float(value)
    if not bounds:
        return None
    if budget.units == "relative":
        return tfadaqat.Budget.relative(**bounds)
    return tfadaqat.Budget(**bounds)


# ---------------------------------------------------------------------------------------------
# Pieces of a run


def create_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy `name` (one of :data:`STRATEGIES`)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":  # every GPU, else every (logical) CPU device
        devices = (tf.config.list_logical_devices("GPU")
                   or tf.config.list_logical_devices("CPU"))
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("strategy 'multi_worker' needs the TF_CONFIG environment variable "
                             "describing the cluster (see "
                             "tf.distribute.MultiWorkerMirroredStrategy)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker"
                                             and resolver.task_id == 0)


def learning_rate_schedule(config, base_rate: float, epochs: int, steps_per_epoch: int):
    """The per-step learning rate: linear scaling by batch, warm-up, then `config.schedule`."""
    peak = base_rate * config.batch_size / config.base_batch_size
    total = max(epochs * steps_per_epoch, 1)
    if config.schedule == "step":
        # PiecewiseConstantDecay keeps a value up to and including its boundary step; the first
        # step of epoch e is step e * steps_per_epoch.
        boundaries = [e * steps_per_epoch - 1 for e in config.decay_epochs if e < epochs]
        values = [peak * config.decay_factor**i for i in range(len(boundaries) + 1)]
        schedule = (keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
                    if boundaries else peak)
    elif config.schedule == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(peak, total)
    else:
        schedule = peak
    if config.warmup_epochs:
        return WarmUp(schedule, peak, config.warmup_epochs * steps_per_epoch)
    return schedule


@keras.utils.register_keras_serializable(package="recipes")
class WarmUp(keras.optimizers.schedules.LearningRateSchedule):
    """Linear from 0 to `peak` over `steps`, then `schedule` (counted from the start)."""

    def __init__(self, schedule, peak: float, steps: int):
        self.schedule, self.peak, self.steps = schedule, peak, steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        after = self.schedule(step) if callable(self.schedule) else self.schedule
        return tf.where(step < self.steps, self.peak * (step + 1.0) / self.steps, after)

    def get_config(self):
        schedule = (keras.optimizers.schedules.serialize(self.schedule)
                    if callable(self.schedule) else self.schedule)
        return {"schedule": schedule, "peak": self.peak, "steps": self.steps}

    @classmethod
    def from_config(cls, config):
        schedule = config["schedule"]
        if isinstance(schedule, dict):
            schedule = keras.optimizers.schedules.deserialize(schedule)
        return cls(schedule, config["peak"], config["steps"])


def make_optimizer(config, schedule, model) -> keras.optimizers.Optimizer:
    """SGD (momentum) or Adam, with decoupled weight decay on conv and dense kernels only
    (never on BatchNormalization, biases or quantizer parameters such as steps and bits)."""
    decay = config.weight_decay or None
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum, weight_decay=decay)
    else:
        optimizer = keras.optimizers.Adam(schedule, weight_decay=decay)
    if decay:
        optimizer.exclude_from_weight_decay(var_list=[
            variable for variable in model.trainable_variables
            if not variable.name.split("/")[-1].startswith(("kernel", "depthwise_kernel"))])
    return optimizer


def synchronize_batch_norm(model) -> int:
    """Makes every BatchNormalization of `model` use the global batch's statistics (all-reduced
    over replicas) instead of its replica's share; returns how many it changed.

    Must run before the model is first trained (the training step reads the setting when
    traced). With several replicas, plain BatchNormalization normalises each replica's
    ``batch_size / replicas`` examples on their own, so results would depend on the replica
    count. With one, the synchronized layer computes what the plain one does, without the
    fused kernel. (The quantized copy of a model is made from layer configs, which drop the setting;
    hence a function applied to each model rather than a builder argument.)
    """
    changed = 0
    for layer in model.layers:
        inner = unwrapped_layer(layer)
        if isinstance(inner, keras.layers.BatchNormalization):
            inner.synchronized, inner.fused = True, False
            changed += 1
    return changed


def _compile(model, optimizer) -> None:
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def build_float_model(config, spec: data.DatasetSpec):
    return models.build_model(config.model, input_shape=spec.input_shape,
                              num_classes=spec.num_classes, tiny=config.tiny,
                              bn_momentum=config.bn_momentum)


def load_float_model(path: str, reference) -> None:
    """Copies the weights of the float ``.keras`` model at `path` into `reference`.

    Raises:
      ValueError: If `path` is missing or not a Keras model, or its layers or weight shapes
        differ from `reference` (the first difference is named).
    """
    if not os.path.exists(path):
        raise ValueError(f"init_from {path!r} does not exist")
    try:
        source = keras.models.load_model(path, compile=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"init_from {path!r} is not a Keras model file: {error}") from error
    expected = [(w.name.split(":")[0], tuple(w.shape)) for w in reference.weights]
    found = [(w.name.split(":")[0], tuple(w.shape)) for w in source.weights]
    if expected != found:
        difference = next(((e, f) for e, f in zip(expected, found) if e != f),
                          (f"{len(expected)} weights", f"{len(found)} weights"))
        raise ValueError(f"init_from {path!r} holds model {source.name!r}, whose weights do not "
                         f"match {reference.name!r}: expected {difference[0]}, found "
                         f"{difference[1]}")
    reference.set_weights(source.get_weights())


def check_workdir(config, workdir: str) -> None:
    """Writes ``config.json``, or checks it against `config` when the workdir has a run.

    Raises:
      ValueError: If the workdir holds a run with a different config (the fields are named).
    """
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json())
    if os.path.exists(path):
        with open(path) as handle:
            stored = json.load(handle)
        changed = sorted(key for key in set(stored) | set(current)
                         if key not in _RESUMABLE_CHANGES and stored.get(key) != current.get(key))
        if changed:
            details = ", ".join(f"{key}: {stored.get(key)!r} -> {current.get(key)!r}"
                                for key in changed)
            raise ValueError(f"workdir {workdir!r} holds a run with a different config "
                             f"({details}); use a new --workdir, or the run's own config to "
                             "resume it")
        return
    os.makedirs(workdir, exist_ok=True)
    _write_atomically(path, json.dumps(current, indent=2, sort_keys=True))


def _write_atomically(path: str, text: str) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# Epoch callbacks


class _Progress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, numbering epochs out of the stage's total (fit runs one at a time).

    It comes first among the callbacks, so its epoch line shows the metrics, not the dozens of
    ``bits/...`` entries the bit-width logger adds (:class:`_EpochLog` prints those briefly).
    """

    def __init__(self, total_epochs: int):
        super().__init__(count_mode="steps")
        self.total_epochs = total_epochs

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.total_epochs


class _EpochLog(keras.callbacks.Callback):
    """Writes every scalar of the epoch's logs (bits, BitOPs, metrics) and the learning rate to
    TensorBoard, and appends the bit-width record to ``bit_history.json``."""

    def __init__(self, writer, history_path: Optional[str], bit_logger=None,
                 say: Callable[[str], Any] = print):
        super().__init__()
        self.writer, self.history_path, self.bit_logger = writer, history_path, bit_logger
        self.say = say

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        logs["learning_rate"] = float(keras.backend.get_value(
            self.model.optimizer.learning_rate))  # at this step
        if self.writer is not None:
            with self.writer.as_default():
                for name, value in logs.items():
                    if isinstance(value, (int, float, np.number)):
                        tf.summary.scalar(name, float(value), step=epoch + 1)
            self.writer.flush()
        if self.bit_logger is not None:
            record = self.bit_logger.records[-1]
            kernels = [t["kernel"] for t in record["bits"].values() if "kernel" in t]
            outputs = [t["output"] for t in record["bits"].values() if "output" in t]
            self.say(f"  bits: kernels {_spread(kernels)}, activations {_spread(outputs)}; "
                     f"BitOPs {record['bitops']:,.0f}, weights {record['weight_kb']:.2f} KB, "
                     f"largest activation {record['activation_kb']:.2f} KB")
        if self.history_path is not None and self.bit_logger is not None:
            records = _read_history(self.history_path)
            records = [r for r in records if r["epoch"] < epoch] + [self.bit_logger.records[-1]]
            _write_atomically(self.history_path, json.dumps(records, default=_json_default))


def _spread(values: List[int]) -> str:
    return f"{min(values)}-{max(values)} (mean {np.mean(values):.2f})" if values else "none"


def _read_history(path: str) -> List[Dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return json.load(handle)


# ---------------------------------------------------------------------------------------------
# The workflow


@dataclasses.dataclass
class _Run:
    config: Any
    workdir: str
    strategy: tf.distribute.Strategy
    spec: data.DatasetSpec
    steps_per_epoch: int
    chief: bool
    say: Callable[[str], Any]

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def train_data(self, epoch: int) -> tf.data.Dataset:
        """The batches of `epoch`, a function of ``(seed, epoch)`` only."""
        config = self.config
        dataset = data.build_dataset(config.dataset, "train", batch_size=config.batch_size,
                                     training=True, seed=config.seed * 100_003 + epoch,
                                     data_dir=config.data_dir or None,
                                     image_size=config.image_size or None)
        return dataset.take(self.steps_per_epoch)

    def eval_data(self, limited: bool = True) -> tf.data.Dataset:
        """The evaluation split; `limited` to ``eval_steps`` batches when that is set."""
        config = self.config
        dataset = data.build_dataset(config.dataset, self.spec.eval_split,
                                     batch_size=config.batch_size, training=False,
                                     seed=config.seed, data_dir=config.data_dir or None,
                                     image_size=config.image_size or None)
        return dataset.take(config.eval_steps) if (config.eval_steps and limited) else dataset


def _fit_stage(run: _Run, model, *, stage: str, epochs: int, callbacks: List[Any]) -> None:
    """Fits `model` epoch by epoch up to `epochs`, checkpointing after each, resuming if it can."""
    directory = run.path("checkpoints", stage)
    if not run.chief:  # other workers write their (identical) shards where nobody reads them
        task = run.strategy.cluster_resolver.task_id
        directory = run.path("checkpoints", f"{stage}_worker_{task}")
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")  # one, not mirrored
    with run.strategy.scope():
        model.optimizer.build(model.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epoch)
    manager = tf.train.CheckpointManager(checkpoint, directory,
                                         max_to_keep=run.config.keep_checkpoints)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        run.say(f"[{stage}] resumed from {manager.latest_checkpoint} (epoch {int(epoch)})")
    writer = tf.summary.create_file_writer(run.path("logs", stage)) if run.chief else None
    bit_logger = next((c for c in callbacks if isinstance(c, tfadaqat.BitWidthLogger)), None)
    history = run.path("bit_history.json") if (bit_logger and run.chief) else None
    epoch_log = _EpochLog(writer, history, bit_logger, run.say)
    eval_data = run.eval_data()
    for current in range(int(epoch), epochs):
        with warnings.catch_warnings():
            if current < epochs - 1:  # the budget warning concerns the end of training only
                warnings.filterwarnings("ignore", message=".*training ended over its budget")
            model.fit(run.train_data(current), initial_epoch=current, epochs=current + 1,
                      steps_per_epoch=run.steps_per_epoch, validation_data=eval_data,
                      verbose=1, callbacks=[_Progress(epochs), *callbacks, epoch_log])
        epoch.assign(current + 1)
        manager.save(checkpoint_number=current + 1)
    if writer is not None:
        writer.close()


def _float_weights(run: _Run, float_model) -> None:
    """Gives `float_model` its starting weights: from init_from, the float stage, or as built."""
    config, path = run.config, run.path("float_model.keras")
    if config.init_from:
        load_float_model(config.init_from, float_model)
    elif config.float_epochs and os.path.exists(path):
        load_float_model(path, float_model)
        run.say(f"[float] using the float model of an earlier run: {path}")
        return
    elif config.float_epochs:
        schedule = learning_rate_schedule(config, config.float_learning_rate,
                                          config.float_epochs, run.steps_per_epoch)
        with run.strategy.scope():
            _compile(float_model, make_optimizer(config, schedule, float_model))
        run.say(f"[float] training {config.model} for {config.float_epochs} epochs")
        _fit_stage(run, float_model, stage="float", epochs=config.float_epochs, callbacks=[])
    else:
        return  # from scratch: quantize the fresh initialisation
    _save(run, float_model, path)


def _save(run: _Run, model, path: str) -> None:
    """Saves `model` to `path` on the chief. Every worker takes part: with several workers,
    saving reads variables across them (collective ops), so a save on the chief alone waits
    for workers that have moved on. The others save to a temporary folder, deleted at once."""
    if run.chief:
        model.save(path)
        return
    with tempfile.TemporaryDirectory(prefix="tfadaqat_worker_") as folder:
        model.save(os.path.join(folder, os.path.basename(path)))


def _quantize(run: _Run, float_model):
    config = run.config
    options = {}
    if config.method == "adaqat":
        options = {"grid": config.grid,
                   "adaqat_rule": tfadaqat.AdaQATRule(**config.adaqat.to_dict())}
    return tfadaqat.quantize_model(
        float_model, config.method, weight_bits=config.weight_bits,
        activation_bits=config.activation_bits, min_bits=config.min_bits,
        max_bits=config.max_bits, budget=budget_from_config(config),
        cost_weight=config.cost_weight, **options)


def _verification_images(run: _Run) -> np.ndarray:
    images = [x.numpy() for x, _ in
              run.eval_data(limited=False).unbatch().take(run.config.verify_examples)]
    return np.stack(images)


def train_and_evaluate(config, workdir: str, *, strategy: str = "default",
                       say: Callable[[str], Any] = print) -> Dict[str, Any]:
    """Runs the recipe described by `config` in `workdir` (see the module docstring).

    Args:
      config: An ``ml_collections.ConfigDict`` from ``recipes/configs``.
      workdir: Folder of the run; an existing run with the same config is resumed.
      strategy: One of :data:`STRATEGIES`.
      say: Called with a progress message at each stage.

    Returns:
      ``{"accuracy": test accuracy of the quantized model, "float_accuracy": of the float
      model (None from scratch), "summary": tfadaqat.summary's data, "export": the export
      report as a dict (None without export), "artifacts": {name: path}}``.

    Raises:
      ValueError: For a bad config, strategy, workdir or init_from, before any training.
      recipes.data.DatasetNotPreparedError: If the data set is not where tfds expects it.
    """
    started = time.time()
    validate_config(config, strategy)
    spec = data.dataset_spec(config.dataset, image_size=config.image_size or None)
    distribution = create_strategy(strategy)
    _require(config.batch_size % distribution.num_replicas_in_sync == 0,
             f"config.batch_size={config.batch_size} must be a multiple of the "
             f"{distribution.num_replicas_in_sync} replicas of strategy {strategy!r}")
    data.build_dataset(config.dataset, "train", batch_size=config.batch_size, training=True,
                       seed=config.seed, data_dir=config.data_dir or None,
                       image_size=config.image_size or None)  # a missing data set fails here
    steps = config.steps_per_epoch or spec.train_examples // config.batch_size
    _require(steps > 0, f"config.batch_size={config.batch_size} exceeds the "
                        f"{spec.train_examples} training examples of {config.dataset}")
    chief = _is_chief(distribution)
    if chief:
        check_workdir(config, workdir)
    run = _Run(config, workdir, distribution, spec, steps, chief, say)
    keras.utils.set_random_seed(config.seed)
    with distribution.scope():
        float_model = build_float_model(config, spec)
    # Always, not only with several replicas: the fused kernel used otherwise keeps a
    # Bessel-corrected moving variance, so results would still depend on the replica count.
    synchronize_batch_norm(float_model)
    say(f"{config.model} on {config.dataset} ({spec.train_examples} training examples, "
        f"{steps} steps per epoch of {config.batch_size}), {config.method}, "
        f"{distribution.num_replicas_in_sync} replica(s); workdir {workdir}")

    _float_weights(run, float_model)
    float_accuracy = None
    if config.init_from or config.float_epochs:
        with distribution.scope():
            _compile(float_model, "sgd")
        float_accuracy = float(float_model.evaluate(run.eval_data(), verbose=0)[1])
        say(f"[float] test accuracy {float_accuracy:.4f}")

    with distribution.scope():
        qmodel = _quantize(run, float_model)
        synchronize_batch_norm(qmodel)
        schedule = learning_rate_schedule(config, config.learning_rate, config.epochs, steps)
        _compile(qmodel, make_optimizer(config, schedule, qmodel))
    bit_logger = tfadaqat.BitWidthLogger()
    say(f"[quantized] training with {config.method} for {config.epochs} epochs")
    _fit_stage(run, qmodel, stage="quantized", epochs=config.epochs, callbacks=[bit_logger])
    if config.reestimate_batch_norm_batches:
        used = tfadaqat.reestimate_batch_norm(qmodel, run.train_data(config.epochs),
                                              batches=config.reestimate_batch_norm_batches)
        say(f"[quantized] BatchNormalization statistics re-estimated on {used} training "
            "batches with the trained grids")
    if config.export:  # the model evaluated, saved and exported is the one the file computes
        storage = tfadaqat.export.TARGETS[config.export_target][0]
        aligned = tfadaqat.align_biases(qmodel, storage)
        say(f"[export] aligned the biases of {aligned} layers with TFLite's int32 bias grid")
    accuracy = float(qmodel.evaluate(run.eval_data(), verbose=0)[1])
    return _write_results(run, qmodel, accuracy, float_accuracy, started)


def _write_results(run: _Run, qmodel, accuracy: float, float_accuracy, started: float):
    config, artifacts = run.config, {}
    text = io.StringIO()
    table = tfadaqat.summary(qmodel, print_fn=lambda line: print(line, file=text))
    line = (f"test accuracy: {config.method} {accuracy:.4f}" + (
        f", float {float_accuracy:.4f}" if float_accuracy is not None else ""))
    print(line, file=text)
    export = None
    artifacts["model"] = run.path("model.keras")
    _save(run, qmodel, artifacts["model"])
    if run.chief:
        if isinstance(run.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # The export's Keras predictions would be collective ops the other workers,
            # done after saving, no longer join: the chief exports the saved model instead.
            qmodel = tfadaqat.load_model(artifacts["model"])
        artifacts["bit_widths_plot"] = tfadaqat.plot_bit_widths(
            qmodel, run.path("bit_widths.png"), records=_read_history(run.path("bit_history.json")),
            title=f"{config.model} / {config.dataset} / {config.method}")
        if config.export:
            artifacts["tflite"] = run.path("model.tflite")
            report = tfadaqat.export_tflite(qmodel, artifacts["tflite"], align=False,
                                            target=config.export_target,
                                            verify_with=_verification_images(run),
                                            progress=lambda m: run.say(f"[export] {m}"))
            export = dataclasses.asdict(report)
            artifacts["export_report"] = run.path("export_report.json")
            _write_atomically(artifacts["export_report"],
                              json.dumps(export, indent=2, default=_json_default))
            print(f"export: {report.file_bytes:,} bytes; top-1 agreement with Keras "
                  f"{report.top1_agreement:.2%} on {report.examples} test examples, outputs "
                  f"within {report.max_output_difference:.0f} quantization steps", file=text)
            other = "tflm" if config.export_target == "litert" else "litert"
            storage = tfadaqat.export.TARGETS[config.export_target][0]
            print(f"export target: {report.target} ({storage} kernels, verified on "
                  f"{', '.join(report.runtimes)}; --config.export_target={other} for "
                  f"{'TensorFlow Lite Micro' if other == 'tflm' else 'LiteRT'})", file=text)
        artifacts["summary"] = run.path("summary.txt")
        _write_atomically(artifacts["summary"], text.getvalue())
        artifacts["summary_json"] = run.path("summary.json")
        _write_atomically(artifacts["summary_json"], json.dumps(
            {"summary": table, "accuracy": accuracy, "float_accuracy": float_accuracy,
             "export": export},
            indent=2, default=_json_default))
        artifacts["float_model"] = run.path("float_model.keras")
        artifacts["checkpoints"] = run.path("checkpoints")
        artifacts["tensorboard"] = run.path("logs")
        artifacts = {k: v for k, v in artifacts.items() if os.path.exists(v)}
    run.say(text.getvalue().rstrip())
    run.say(f"done in {time.time() - started:.0f} s; artifacts:")
    for name, path in artifacts.items():
        run.say(f"  {name:16s} {path}")
    return {"accuracy": accuracy, "float_accuracy": float_accuracy, "summary": table,
            "export": export, "artifacts": artifacts}
