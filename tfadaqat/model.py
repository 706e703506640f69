"""``QuantizedModel``: the Functional model :func:`tfadaqat.quantize_model` returns.

It is an ordinary tf-keras Functional model (same layers, same ``compile``/``fit``/``save``)
with one addition: quantizer parameters that depend on data (clips and steps) are initialised
from the first batch the model sees in ``fit``, ``evaluate`` or ``predict``. The first step runs
eagerly in :func:`tfadaqat.quantizers.initialization_mode`, where quantizers assign their
initial values (and the optimizer and metrics create their variables); every later step runs
one trace without those assignments, so training pays for no per-step branch and the step is
traced once. A model whose quantizers are already initialised (for instance a reloaded one)
goes straight to the plain trace.

What a method adds to training (DQ's budget penalty and projection, AdaQAT's probe) comes
from its module in :mod:`tfadaqat.methods` as step hooks; ``train_step`` calls the hooks of
every method whose quantizers the model holds (see :mod:`tfadaqat.methods.base` for the
order) and names none of them. Method settings (AdaQAT's rule) and the variables a method
keeps on the model (DQ's penalty pressure, AdaQAT's budget prices) are held per method name.
The budget is part of the model config, so it survives ``save`` and ``load_model``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import warnings
from typing import Any, Dict, Optional

from tfadaqat import first_execution
from tfadaqat import methods as methods_lib
from tfadaqat._compat import keras, tf
from tfadaqat.budget import Budget
from tfadaqat import non_finite as non_finite_lib
from tfadaqat import partial_forward
from tfadaqat.non_finite import (DEFAULT_MAX_CONSECUTIVE_SKIPPED_STEPS, SKIPPED_STEPS_METRIC,
                                 StopOnSkippedSteps)
from tfadaqat.quantizers import initialization_mode
from tfadaqat.report import budget_status, format_budget

_BUDGET_CONFIG_KEY = "tfadaqat_budget"
_SKIP_LIMIT_CONFIG_KEY = "max_consecutive_skipped_steps"
_SKIP_CONFIG_KEY = "skip_non_finite_steps"


@dataclasses.dataclass
class _SkipState:
    """The counters of skipped training steps (held outside Keras' weight tracking, so that
    they are neither saved nor part of ``model.weights``)."""

    metric: keras.metrics.Metric  # per epoch, in the logs as ``skipped_steps``
    total: tf.Variable  # since fit began
    consecutive: tf.Variable  # in a row, up to the last step


@dataclasses.dataclass
class _MethodStore:
    """Per method name: its settings and the variables it keeps on the model (the variables
    are the model's weights; these dicts only find them by name)."""

    settings: Dict[str, Any] = dataclasses.field(default_factory=dict)
    state: Dict[str, Dict[str, tf.Variable]] = dataclasses.field(default_factory=dict)


@keras.utils.register_keras_serializable(package="tfadaqat")
class QuantizedModel(keras.Model):
    """A Functional model of quantized layers whose quantizers initialise on the first batch."""

    _tfadaqat_budget = None
    _tfadaqat_cost_weights: Optional[Dict[str, float]] = None
    _methods: Optional[_MethodStore] = None
    _skip_state: Optional[_SkipState] = None
    _evaluating = False
    _max_consecutive_skipped_steps: Optional[int] = DEFAULT_MAX_CONSECUTIVE_SKIPPED_STEPS
    _forward_plan: Optional[partial_forward.ForwardPlan] = None

    def _run_internal_graph(self, inputs, training=None, mask=None):
        """Keras' pass through the layers; inside :meth:`recorded_forward` and
        :meth:`resumed_forward`, the same pass with recording or resuming (see
        :mod:`tfadaqat.partial_forward`)."""
        if self._forward_plan is None:
            return super()._run_internal_graph(inputs, training=training, mask=mask)
        return partial_forward.run(self, inputs, mask, self._forward_plan)

    @contextlib.contextmanager
    def _planned_forward(self, plan: partial_forward.ForwardPlan):
        # Not through Keras' __setattr__: the plan is trace-time bookkeeping, not state.
        object.__setattr__(self, "_forward_plan", plan)
        try:
            yield
        finally:
            object.__setattr__(self, "_forward_plan", None)

    def recorded_forward(self, x, training=True):
        """``self(x, training=training)``, and the tensors every layer computed on the way.

        Returns:
          ``(outputs, record)``, the record a :class:`tfadaqat.partial_forward.ForwardRecord`
          for :meth:`resumed_forward`.
        """
        record = partial_forward.ForwardRecord()
        with self._planned_forward(partial_forward.ForwardPlan(record=record)):
            outputs = self(x, training=training)
        return outputs, record

    def resumed_forward(self, x, record: partial_forward.ForwardRecord, start: int):
        """A training-mode forward pass on `x` that runs the layers from position `start` of
        :func:`tfadaqat.partial_forward.execution_order` onwards and takes the outputs of the
        earlier ones from `record` (a :meth:`recorded_forward` of the same `x`, with the same
        weights and bit-widths before `start`).

        It changes no state: the BatchNormalization moving statistics that the layers it runs
        update are given their values back afterwards.
        """
        statistics = partial_forward.moving_statistics(self, start)
        kept = non_finite_lib.snapshot(statistics)
        with self._planned_forward(partial_forward.ForwardPlan(resume_from=(start, record))):
            outputs = self(x, training=True)
        for variable, value in zip(statistics, kept):
            variable.assign(value)
        return outputs

    def _method_store(self) -> _MethodStore:
        if self._methods is None:
            self._methods = _MethodStore()
        return self._methods

    def method_settings(self, name: str):
        """The settings method `name` trains with (AdaQAT: its rule), or None."""
        return self._method_store().settings.get(name)

    def set_method_settings(self, name: str, settings) -> None:
        """Trains method `name`'s tensors with `settings` (None: its default, no hooks)."""
        methods_lib.get(name)
        if settings is None:
            self._method_store().settings.pop(name, None)
        else:
            self._method_store().settings[name] = settings
        self._create_method_state()
        self.train_function = None

    def method_state(self, name: str) -> Dict[str, tf.Variable]:
        """The variables method `name` keeps on this model, by name ({} for none)."""
        return dict(self._method_store().state.get(name, {}))

    def _create_method_state(self) -> None:
        store = self._method_store()
        for method in methods_lib.in_model(self):
            if method.name not in store.state:
                state = method.create_state(self)
                if state:
                    store.state[method.name] = state

    @property
    def adaqat_rule(self):
        """The :class:`tfadaqat.adaqat.AdaQATRule` learning AdaQAT bit-widths in ``fit``, or None."""
        return self.method_settings("adaqat")

    def set_adaqat_rule(self, rule) -> None:
        """Learns AdaQAT bit-widths with `rule` during ``fit`` (None: bit-widths stay put)."""
        self.set_method_settings("adaqat", rule)

    @property
    def adaqat_budget_state(self) -> Optional[Dict[str, tf.Variable]]:
        """AdaQAT's budget multipliers and phase targets (with a rule and a budget), or None."""
        return self.method_state("adaqat") or None

    @property
    def dq_pressure(self) -> Optional[tf.Variable]:
        """The factor on DQ's budget penalty (grows while training is over budget), or None."""
        return self.method_state("dq").get("pressure")

    @property
    def budget(self):
        """The absolute :class:`tfadaqat.Budget` trained towards, or None."""
        return self._tfadaqat_budget

    @property
    def cost_weights(self) -> Optional[Dict[str, float]]:
        """The budget penalty's weights ``lambda_j`` by quantity, or None without a budget."""
        return None if self._tfadaqat_cost_weights is None else dict(self._tfadaqat_cost_weights)

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
        self._create_method_state()
        self.train_function = None

    def get_config(self):
        config = super().get_config()
        if self._tfadaqat_budget is not None:
            config[_BUDGET_CONFIG_KEY] = {"budget": dataclasses.asdict(self._tfadaqat_budget),
                                          "cost_weights": dict(self._tfadaqat_cost_weights)}
        for name, settings in self._method_store().settings.items():
            method = methods_lib.get(name)
            config[method.settings_config_key] = method.settings_to_config(settings)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        budget_config = config.pop(_BUDGET_CONFIG_KEY, None)
        settings = {}
        for name in methods_lib.names():
            key = methods_lib.get(name).settings_config_key
            if key is not None and key in config:
                settings[name] = methods_lib.get(name).settings_from_config(config.pop(key))
        model = super().from_config(config, custom_objects)
        if budget_config is not None:
            model.set_budget(Budget(**budget_config["budget"]), budget_config["cost_weights"])
        for name, value in settings.items():
            model.set_method_settings(name, value)
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

        The plain Keras update with the step hooks of the model's methods (see
        :mod:`tfadaqat.methods.base`); a step whose loss or gradients are not finite on some
        replica changes no variable and no metric except ``skipped_steps``.
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
        """Forward, loss and update of one step, with the step hooks of the model's methods.

        Args:
          keep_metrics: Whether to keep the compiled loss/metric variables' values before
            the batch updates them (the guarded step restores them when it skips).

        Returns:
          ``(y_pred, loss, gradients, extra logs, (metric variables, their values before
          the step) or None)``.
        """
        hooks = [hook for hook in (method.step_hooks(self)
                                   for method in methods_lib.in_model(self)) if hook is not None]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        recording = any(hook.records_forward for hook in hooks)
        with tf.GradientTape() as tape:
            if recording:
                y_pred, record = self.recorded_forward(x)
                for hook in hooks:
                    if hook.records_forward:
                        hook.forward_record = record
            else:
                y_pred = self(x, training=True)
            kept_metrics = self._keep_metrics(y_pred, y) if keep_metrics else None
            loss = self.compute_loss(x, y, y_pred, sample_weight)
            total = loss
            for hook in hooks:
                term = hook.loss()
                if term is not None:
                    # Gradients are summed over replicas; the term is the same on each.
                    total = total + term / replicas
        self._validate_target_and_loss(y, loss)
        extra = {name: value for hook in hooks for name, value in hook.logs().items()}
        variables = self.trainable_variables
        if not any(hook.transforms_gradients for hook in hooks):
            for hook in hooks:
                hook.before_update(x, y, sample_weight, y_pred)
            if hasattr(self.optimizer, "compute_gradients"):  # loss scaling included
                gradients = [g for g, _ in self.optimizer.compute_gradients(total, variables,
                                                                            tape=tape)]
            else:
                gradients = tape.gradient(total, variables)
            self.optimizer.apply_gradients(zip(gradients, variables))
            for hook in hooks:
                hook.after_update()
            if isinstance(self.optimizer, keras.mixed_precision.LossScaleOptimizer):
                # It skips non-finite gradients itself and lowers its scale: not undone.
                gradients = []
            return y_pred, total, gradients, extra, kept_metrics
        gradients = tape.gradient(total, variables)
        for hook in hooks:
            hook.before_update(x, y, sample_weight, y_pred)
        checked = gradients
        # Transform the summed gradient, not each replica's part: sum first, then transform,
        # then apply without a second aggregation.
        if replicas > 1:
            pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
            gradients = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, [g for g, _ in pairs])
            variables = [v for _, v in pairs]
        for hook in hooks:
            gradients = hook.gradients(variables, gradients)
        if replicas > 1:
            self.optimizer.apply_gradients(zip(gradients, variables),
                                           skip_gradients_aggregation=True)
        else:
            self.optimizer.apply_gradients(zip(gradients, variables))
        for hook in hooks:
            hook.after_update()
        return y_pred, total, checked, extra, kept_metrics

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

    def plain_loss(self, y, y_pred, sample_weight):
        """The compiled loss without touching the loss metric (for comparing two forwards).

        Raises:
          ValueError: For a model compiled with several losses.
        """
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
