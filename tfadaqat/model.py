"""``QuantizedModel``: the Functional model :func:`tfadaqat.quantize_model` returns.

It is an ordinary tf-keras Functional model (same layers, same ``compile``/``fit``/``save``)
with one addition: quantizer parameters that depend on data (clips and steps) are initialised
from the first batch the model sees in ``fit``, ``evaluate`` or ``predict``. The first step runs
eagerly in :func:`tfadaqat.quantizers.initialization_mode`, where quantizers assign their
initial values (and the optimizer and metrics create their variables); every later step runs
one trace without those assignments, so training pays for no per-step branch and the step is
traced once. A model whose quantizers are already initialised (for instance a reloaded one)
goes straight to the plain trace.

With a budget (``quantize_model(..., method="dq", budget=...)``) its ``train_step`` adds DQ's
penalty on the differentiable cost to the loss, and while the penalty is active clips the
gradients of each DQ step ``d`` and range ``q_max`` to ``[-d, d]`` (the authors' stabiliser).
Once the model's integer cost is within the budget, an update of the DQ parameters (``d``,
``q_max``, relaxed bits) that would take it back over is undone; the weights' update is kept.
Without that projection the penalty switches on and off at the budget's edge: inside, the task
loss raises a range until a bit-width rises; outside, the penalty lowers it again. Bit-widths
then change every few steps until the end of training, BatchNormalization's moving statistics
average networks with different grids, and inference-mode accuracy falls well below
training-mode accuracy (issue 13: 8 points on Fashion-MNIST at 12.5% of the 8-bit BitOPs).

The penalty is multiplied by a pressure ``p`` (a non-trainable weight of the model, starting at
1): after every step that ends over the budget, ``p <- min(p * 1.01, 10^6)``. DQ's squared
hinge has a gradient that vanishes at the budget's edge, so without it training crept towards
the budget and ended 1-3% over it on Fashion-MNIST at 12.5% of the 8-bit BitOPs (the task loss
balances a penalty that small); with it the penalty keeps growing until the model is within,
which the projection above then holds.
The budget is part of the model config, so it survives ``save`` and ``load_model``.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from typing import Dict, Optional

from tfadaqat._compat import keras, tf
from tfadaqat.adaqat import AdaQATRule, create_budget_state, probe
from tfadaqat.budget import Budget, budget_met, budget_penalty
from tfadaqat.cost import differentiable_cost
from tfadaqat import first_execution
from tfadaqat import non_finite as non_finite_lib
from tfadaqat.non_finite import (DEFAULT_MAX_CONSECUTIVE_SKIPPED_STEPS, SKIPPED_STEPS_METRIC,
                                 StopOnSkippedSteps)
from tfadaqat.quantizers import DQQuantizer, initialization_mode
from tfadaqat.report import budget_status, format_budget
from tfadaqat.tensors import quantized_tensors

_BUDGET_CONFIG_KEY = "tfadaqat_budget"
# DQ's penalty pressure: its growth per step over the budget, and its cap.
PRESSURE_GROWTH = 1.01
PRESSURE_CAP = 1e6
_RULE_CONFIG_KEY = "tfadaqat_adaqat_rule"
_SKIP_LIMIT_CONFIG_KEY = "max_consecutive_skipped_steps"
_SKIP_CONFIG_KEY = "skip_non_finite_steps"


@dataclasses.dataclass
class _SkipState:
    """The counters of skipped training steps (held outside Keras' weight tracking, so that
    they are neither saved nor part of ``model.weights``)."""

    metric: keras.metrics.Metric  # per epoch, in the logs as ``skipped_steps``
    total: tf.Variable  # since fit began
    consecutive: tf.Variable  # in a row, up to the last step


@keras.utils.register_keras_serializable(package="tfadaqat")
class QuantizedModel(keras.Model):
    """A Functional model of quantized layers whose quantizers initialise on the first batch."""

    _tfadaqat_budget = None
    _tfadaqat_cost_weights: Optional[Dict[str, float]] = None
    _tfadaqat_rule = None
    _adaqat_budget_state: Optional[Dict[str, tf.Variable]] = None
    _dq_pressure: Optional[tf.Variable] = None
    _skip_state: Optional[_SkipState] = None
    _evaluating = False
    _max_consecutive_skipped_steps: Optional[int] = DEFAULT_MAX_CONSECUTIVE_SKIPPED_STEPS

    @property
    def adaqat_budget_state(self) -> Optional[Dict[str, tf.Variable]]:
        """AdaQAT's budget multipliers and phase targets (with a rule and a budget), or None."""
        return self._adaqat_budget_state

    def _create_adaqat_budget_state(self) -> None:
        if (self._tfadaqat_rule is not None and self._tfadaqat_budget is not None
                and self._adaqat_budget_state is None):
            self._adaqat_budget_state = create_budget_state(self, self._tfadaqat_budget)

    @property
    def dq_pressure(self) -> Optional[tf.Variable]:
        """The factor on DQ's budget penalty (grows while training is over budget), or None."""
        return self._dq_pressure

    def _create_dq_pressure(self) -> None:
        """A model with DQ quantizers and a budget gets the pressure weight (saved with it)."""
        if self._tfadaqat_budget is None or self._dq_pressure is not None:
            return
        if self._dq_parameters():
            self._dq_pressure = self.add_weight(
                "dq_budget_pressure", shape=(), dtype=tf.float32,
                initializer=keras.initializers.Constant(1.0), trainable=False,
                aggregation=tf.VariableAggregation.MEAN)

    @property
    def adaqat_rule(self):
        """The :class:`tfadaqat.adaqat.AdaQATRule` learning AdaQAT bit-widths in ``fit``, or None."""
        return self._tfadaqat_rule

    def set_adaqat_rule(self, rule) -> None:
        """Learns AdaQAT bit-widths with `rule` during ``fit`` (None: bit-widths stay put)."""
        self._tfadaqat_rule = rule
        self._create_adaqat_budget_state()
        self.train_function = None

    @property
    def budget(self):
        """The absolute :class:`tfadaqat.Budget` trained towards, or None."""
        return self._tfadaqat_budget

    def set_budget(self, budget, cost_weights: Dict[str, float]) -> None:
        """Trains towards the absolute `budget` with penalty weights ``lambda_j`` = `cost_weights`.

        Raises:
          ValueError: For a relative budget (resolve it first) or a missing weight.
        """
        if budget.relative_to_8bit:
            raise ValueError("set_budget needs an absolute budget: call budget.resolve(model)")
        missing = [name for name in ("bitops", "weight_kb", "activation_kb")
                   if budget.limit(name) is not None and name not in cost_weights]
        if missing:
            raise ValueError(f"cost_weights has no weight for the bounded quantities {missing}")
        self._tfadaqat_budget = budget
        self._tfadaqat_cost_weights = {k: float(v) for k, v in cost_weights.items()}
        self._create_adaqat_budget_state()
        self._create_dq_pressure()
        self.train_function = None

    def get_config(self):
        config = super().get_config()
        if self._tfadaqat_budget is not None:
            config[_BUDGET_CONFIG_KEY] = {"budget": dataclasses.asdict(self._tfadaqat_budget),
                                          "cost_weights": dict(self._tfadaqat_cost_weights)}
        if self._tfadaqat_rule is not None:
            config[_RULE_CONFIG_KEY] = dataclasses.asdict(self._tfadaqat_rule)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        budget_config = config.pop(_BUDGET_CONFIG_KEY, None)
        rule_config = config.pop(_RULE_CONFIG_KEY, None)
        model = super().from_config(config, custom_objects)
        if budget_config is not None:
            model.set_budget(Budget(**budget_config["budget"]), budget_config["cost_weights"])
        if rule_config is not None:
            model.set_adaqat_rule(AdaQATRule(**rule_config))
        return model

    def fit(self, *args, **kwargs):
        """``keras.Model.fit``; skips non-finite steps (see :mod:`tfadaqat.non_finite`) and
        warns when training ends with the budget not met."""
        if self._skip_state is not None:
            arguments = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs)
            arguments.arguments["callbacks"] = list(
                arguments.arguments.get("callbacks") or []) + [
                    StopOnSkippedSteps(self._max_consecutive_skipped_steps)]
            self._skip_state.total.assign(0)
            self._skip_state.consecutive.assign(0)
            args, kwargs = arguments.args[1:], arguments.kwargs
        history = super().fit(*args, **kwargs)
        if self._tfadaqat_budget is not None:
            status = budget_status(self)
            if not all(entry["met"] for entry in status.values()):
                warnings.warn(f"{self.name}: training ended over its budget (train longer, or "
                              f"raise cost_weight / the AdaQAT rule's rates):\n"
                              f"{format_budget(status)}", stacklevel=2)
        return history

    def compile(self, *args, skip_non_finite_steps: bool = True,
                max_consecutive_skipped_steps=DEFAULT_MAX_CONSECUTIVE_SKIPPED_STEPS, **kwargs):
        """``keras.Model.compile``, plus the guard against non-finite steps.

        Args:
          *args: Passed to ``keras.Model.compile``.
          skip_non_finite_steps: Whether a training step whose loss or gradients are NaN or
            Inf is undone and counted (default), or applied as plain Keras would (no copy
            of the variables per step; no ``skipped_steps`` log).
          max_consecutive_skipped_steps: ``fit`` raises ``FloatingPointError`` after this many
            training steps in a row whose loss or gradients were NaN or Inf (each such step is
            skipped: see :mod:`tfadaqat.non_finite`). None: never stop.
          **kwargs: Passed to ``keras.Model.compile``.

        Raises:
          ValueError: For a `max_consecutive_skipped_steps` that is not None or an int >= 1.
        """
        limit = max_consecutive_skipped_steps
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise ValueError("max_consecutive_skipped_steps must be None or an int >= 1, "
                             f"got {limit!r}")
        if not isinstance(skip_non_finite_steps, bool):
            raise ValueError("skip_non_finite_steps must be True or False, got "
                             f"{skip_non_finite_steps!r}")
        super().compile(*args, **kwargs)
        self._max_consecutive_skipped_steps = limit
        self._skip_state = None
        if not skip_non_finite_steps:
            return
        with self.distribute_strategy.scope():
            self._skip_state = _SkipState(
                metric=non_finite_lib.SkippedStepsMetric(),
                total=tf.Variable(0, dtype=tf.int64, trainable=False,
                                  aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA),
                consecutive=tf.Variable(
                    0, dtype=tf.int64, trainable=False,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA))

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is not None:
            config = dict(config)
            config[_SKIP_LIMIT_CONFIG_KEY] = self._max_consecutive_skipped_steps
            config[_SKIP_CONFIG_KEY] = self._skip_state is not None
        return config

    def compile_from_config(self, config):
        """Compiles a loaded model as it was saved (Keras skips this for a model whose
        ``compile`` is overridden, so it is done here)."""
        config = dict(config)
        limit = config.pop(_SKIP_LIMIT_CONFIG_KEY, DEFAULT_MAX_CONSECUTIVE_SKIPPED_STEPS)
        skip = config.pop(_SKIP_CONFIG_KEY, True)
        self.compile(**keras.saving.deserialize_keras_object(config),
                     skip_non_finite_steps=skip, max_consecutive_skipped_steps=limit)
        if isinstance(self.optimizer, keras.optimizers.Optimizer) and self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        metrics = super().metrics
        if self._skip_state is not None and not self._evaluating:
            metrics = metrics + [self._skip_state.metric]
        return metrics

    def evaluate(self, *args, **kwargs):
        """``keras.Model.evaluate``, whose results leave out ``skipped_steps`` (a count of
        training steps). It is left out of ``metrics`` while evaluating, not dropped from the
        results: Keras reads the metrics again at the end and uses them only when their names
        match the step's logs; otherwise it keeps the last batch's logs, which are summed
        over replicas under a distribution strategy."""
        evaluating, self._evaluating = self._evaluating, True
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self._evaluating = evaluating

    @property
    def skipped_steps_total(self) -> Optional[tf.Variable]:
        """Training steps skipped for a NaN/Inf loss or gradient since ``fit`` began (None
        when compiled with ``skip_non_finite_steps=False``)."""
        return None if self._skip_state is None else self._skip_state.total

    @property
    def consecutive_skipped_steps(self) -> Optional[tf.Variable]:
        """Training steps skipped in a row, up to the last one (None: not guarded)."""
        return None if self._skip_state is None else self._skip_state.consecutive

    def train_step(self, data):
        """One guarded training step (see :mod:`tfadaqat.non_finite`).

        Takes DQ's budget penalty, AdaQAT's probe and the plain Keras update as the model is
        configured; a step whose loss or gradients are not finite on some replica changes no
        variable and no metric except ``skipped_steps``.
        """
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if self._skip_state is None:  # compile(skip_non_finite_steps=False)
            y_pred, _, _, extra, _ = self._update(x, y, sample_weight, keep_metrics=False)
            return self._step_logs(x, y, y_pred, sample_weight, extra)
        non_finite_lib.build_optimizer(self.optimizer, self.trainable_variables)
        kept = non_finite_lib.unique_variables(list(self.variables)
                                               + list(self.optimizer.variables))
        kept_values = non_finite_lib.snapshot(kept)
        y_pred, loss, gradients, extra, kept_metrics = self._update(x, y, sample_weight,
                                                                    keep_metrics=True)
        finite = non_finite_lib.all_finite(loss, gradients)
        non_finite_lib.restore_unless(finite, kept, kept_values)
        return self._guarded_metrics(finite, x, y, y_pred, sample_weight, extra, kept_metrics)

    def _step_logs(self, x, y, y_pred, sample_weight, extra):
        """The compiled metrics of the step and the `extra` logs (DQ's budget penalty)."""
        logs = dict(self.compute_metrics(x, y, y_pred, sample_weight))
        logs.update(extra)
        return logs

    def _guarded_metrics(self, finite, x, y, y_pred, sample_weight, extra, kept_metrics):
        """Metrics of the step; a skipped step's batch is left out of them and counted."""
        state = self._skip_state
        logs = self._step_logs(x, y, y_pred, sample_weight, extra)
        non_finite_lib.restore_unless(finite, *kept_metrics, replica_local=True)
        skipped = 1.0 - tf.cast(finite, tf.float32)
        context = tf.distribute.get_replica_context()
        first = tf.cast(tf.equal(context.replica_id_in_sync_group, 0), tf.float32)
        state.metric.update_state(skipped * first)
        state.total.assign_add(tf.cast(skipped, tf.int64))
        state.consecutive.assign(tf.where(finite, tf.constant(0, tf.int64),
                                          state.consecutive + 1))
        logs[SKIPPED_STEPS_METRIC] = state.metric.result()
        return logs

    def _update(self, x, y, sample_weight, keep_metrics: bool):
        """Forward, loss and update of one step.

        Args:
          keep_metrics: Whether to keep the compiled loss/metric variables' values before
            the batch updates them (the guarded step restores them when it skips).

        Returns:
          ``(y_pred, loss, gradients, extra logs, (metric variables, their values before
          the step) or None)``.
        """
        budget, rule = self._tfadaqat_budget, self._tfadaqat_rule
        if rule is not None:
            budget = None  # AdaQAT meets its budget in its probe (tfadaqat.adaqat): no penalty
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            kept_metrics = self._keep_metrics(y_pred, y) if keep_metrics else None
            loss = self.compute_loss(x, y, y_pred, sample_weight)
            total = loss
            if budget is not None:
                sizes = differentiable_cost(self, activation_reduce=budget.activation_reduce)
                penalty = budget_penalty(sizes, budget, self._tfadaqat_cost_weights)
                if self._dq_pressure is not None:
                    penalty = penalty * self._dq_pressure
                # Gradients are summed over replicas; the penalty is the same on each.
                total = loss + penalty / replicas
        self._validate_target_and_loss(y, loss)
        if rule is not None:
            # Before the update, so that L and L_minus are measured with the same weights.
            self._adaqat_probe(rule, x, y, sample_weight, y_pred)
        variables = self.trainable_variables
        if budget is None:
            if hasattr(self.optimizer, "compute_gradients"):  # loss scaling included
                gradients = [g for g, _ in self.optimizer.compute_gradients(total, variables,
                                                                            tape=tape)]
            else:
                gradients = tape.gradient(total, variables)
            self.optimizer.apply_gradients(zip(gradients, variables))
            if isinstance(self.optimizer, keras.mixed_precision.LossScaleOptimizer):
                # It skips non-finite gradients itself and lowers its scale: not undone.
                gradients = []
            return y_pred, total, gradients, {}, kept_metrics
        gradients = tape.gradient(total, variables)
        met_before = budget_met(sizes, budget)
        dq_variables = self._dq_parameters()
        dq_before = [tf.identity(variable) for variable in dq_variables]
        checked = gradients
        # Clip the summed gradient, not each replica's part: sum first, then clip, then
        # apply without a second aggregation.
        if replicas > 1:
            pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
            summed = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, [g for g, _ in pairs])
            variables = [v for _, v in pairs]
            gradients = self._clip_range_gradients(variables, summed, penalty > 0.0)
            self.optimizer.apply_gradients(zip(gradients, variables),
                                           skip_gradients_aggregation=True)
        else:
            gradients = self._clip_range_gradients(variables, gradients, penalty > 0.0)
            self.optimizer.apply_gradients(zip(gradients, variables))
        self._stay_within_budget(budget, met_before, dq_variables, dq_before)
        return y_pred, total, checked, {"budget_penalty": penalty}, kept_metrics

    def _keep_metrics(self, y_pred, y):
        """Builds the compiled loss and metrics; returns their variables and current values
        (the loss metric is updated inside ``compute_loss``, so this runs before it)."""
        if not self.compiled_loss.built:
            self.compiled_loss.build(y_pred)
        if not self.compiled_metrics.built:
            self.compiled_metrics.build(y_pred, y)
        variables = non_finite_lib.unique_variables(
            variable for metric in self.compiled_loss.metrics + self.compiled_metrics.metrics
            for variable in metric.variables)
        return variables, non_finite_lib.snapshot(variables)

    def _plain_loss(self, y, y_pred, sample_weight):
        """The compiled loss without touching the loss metric (for comparing two forwards)."""
        if isinstance(self.loss, (list, tuple, dict)):
            raise ValueError("AdaQAT's bit-width rule needs a single compiled loss, got "
                             f"{type(self.loss).__name__}")
        loss_fn = keras.losses.get(self.loss)
        if isinstance(loss_fn, keras.losses.Loss):
            return loss_fn(y, y_pred, sample_weight=sample_weight)
        values = loss_fn(y, y_pred)
        if sample_weight is not None:
            values = values * sample_weight
        return tf.reduce_mean(values)

    def _adaqat_probe(self, rule, x, y, sample_weight, y_pred):
        loss = self._plain_loss(y, y_pred, sample_weight)
        active = None
        if rule.probe_every > 1:
            active = tf.equal(self.optimizer.iterations % rule.probe_every, 0)
        probe(self, rule, x, y, sample_weight, loss, active=active)

    def _dq_parameters(self):
        """The trainable variables of DQ quantizers that set a bit-width (d, q_max, bits)."""
        found = []
        for _, _, quantizer, quantizer_variables, _ in quantized_tensors(self):
            if isinstance(quantizer, DQQuantizer):
                found.extend(quantizer_variables[name] for name in ("step", "q_max",
                                                                    "relaxed_bits")
                             if name in quantizer_variables)
        return found

    def _stay_within_budget(self, budget, met_before, variables, before) -> None:
        """Undoes this step's update of the DQ `variables` if it took a model that was within
        `budget` back over it (the values `before` the update are restored), and raises the
        penalty's pressure when the step ends over the budget."""
        if not variables:
            return
        met_after = budget_met(differentiable_cost(
            self, activation_reduce=budget.activation_reduce), budget)
        undo = tf.logical_and(met_before, tf.logical_not(met_after))
        for variable, value in zip(variables, before):
            variable.assign(tf.where(undo, value, variable))
        if self._dq_pressure is not None:
            over = tf.logical_and(tf.logical_not(met_after), tf.logical_not(undo))
            raised = tf.minimum(self._dq_pressure * PRESSURE_GROWTH, PRESSURE_CAP)
            self._dq_pressure.assign(tf.where(over, raised, self._dq_pressure))

    def _clip_range_gradients(self, variables, gradients, active):
        """Clips the gradients of DQ's ``d`` and ``q_max`` to ``[-d, d]`` where `active`."""
        steps = {}
        for _, _, quantizer, quantizer_variables, _ in quantized_tensors(self):
            if isinstance(quantizer, DQQuantizer):
                step, _ = quantizer.step_and_range(quantizer_variables)
                for name in ("step", "q_max"):
                    if name in quantizer_variables:
                        steps[quantizer_variables[name].ref()] = step
        clipped = []
        for variable, gradient in zip(variables, gradients):
            step = steps.get(variable.ref())
            if step is not None and gradient is not None:
                gradient = tf.where(active, tf.clip_by_value(gradient, -step, step), gradient)
            clipped.append(gradient)
        return clipped

    def quantizers_initialized(self) -> bool:
        """Whether every quantizer with data-dependent parameters has been initialised."""
        flags = [weight for weight in self.weights
                 if weight.name.split(":")[0].endswith("_initialized")]
        return all(float(flag.numpy()) > 0.5 for flag in flags)

    def initialize_quantizers(self, inputs) -> None:
        """Initialises the quantizers from one batch of `inputs` now, if they are not yet."""
        if not self.quantizers_initialized():
            with initialization_mode():
                self(inputs, training=False)

    def make_train_function(self, force=False):
        return self._first_step_initializes(super().make_train_function, "train_function",
                                            force)

    def make_test_function(self, force=False):
        return self._first_step_initializes(super().make_test_function, "test_function", force)

    def make_predict_function(self, force=False):
        return self._first_step_initializes(super().make_predict_function, "predict_function",
                                            force)

    def _first_step_initializes(self, make, attribute: str, force: bool):
        function = make(force)
        if getattr(function, "initializes_quantizers", False) or self.quantizers_initialized():
            return function
        # Eager where it can be: the plain step is then traced once (see first_execution).
        initializing = first_execution.eager_function(self, make)
        initialized = []

        def first_step(*args, **kwargs):
            # Keras' evaluate keeps the function it started with for all its batches: once
            # the quantizers are initialised, this runs the plain step (never initialising
            # again from a later batch).
            if initialized:
                return function(*args, **kwargs)
            with initialization_mode():
                result = initializing(*args, **kwargs)
            # A skipped first training step (a NaN batch) initialised nothing: try the next.
            if self.quantizers_initialized():
                initialized.append(True)
                setattr(self, attribute, function)
            return result

        first_step.initializes_quantizers = True
        setattr(self, attribute, first_step)
        return first_step
