"""DQ (Uhlich et al.): learned step ``d`` and range ``q_max``, the bit-width derived from them.

Quantizer: :class:`tfadaqat.quantizers.DQQuantizer`. Options: ``parametrization`` ("U3":
``d, q_max``; "U1": ``b, d``; "U2": ``b, q_max``), ``power_of_two``, ``min_step``,
``max_step``.

Training under a budget (``quantize_model(..., method="dq", budget=...)``): the step adds DQ's
penalty on the differentiable cost to the loss,

    P = p sum_j lambda_j max(0, C_j - B_j)^2,

and while ``P > 0`` clips the gradients of each DQ step ``d`` and range ``q_max`` to
``[-d, d]`` (the authors' stabiliser). Once the model's integer cost is within the budget, an
update of the DQ parameters (``d``, ``q_max``, relaxed bits) that would take it back over is
undone; the weights' update is kept. Without that projection the penalty switches on and off
at the budget's edge: inside, the task loss raises a range until a bit-width rises; outside,
the penalty lowers it again. Bit-widths then change every few steps until the end of training,
BatchNormalization's moving statistics average networks with different grids, and
inference-mode accuracy falls well below training-mode accuracy (8 points on Fashion-MNIST at
12.5% of the 8-bit BitOPs).

The pressure ``p`` (a non-trainable weight of the model, starting at 1) grows after every
step that ends over the budget, ``p <- min(p * 1.01, 10^6)``. The squared hinge's gradient
vanishes at the budget's edge, so without it training crept towards the budget and ended 1-3%
over it on Fashion-MNIST at 12.5% of the 8-bit BitOPs (the task loss balances a penalty that
small); with it the penalty keeps growing until the model is within, which the projection
then holds.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from tfadaqat._compat import keras, tf
from tfadaqat.budget import budget_met, budget_penalty
from tfadaqat.cost import differentiable_cost
from tfadaqat.methods.base import Method, StepHooks, register
from tfadaqat.quantizers import DQQuantizer
from tfadaqat.tensors import quantized_tensors

OPTIONS = ("parametrization", "power_of_two", "min_step", "max_step")
# The penalty's pressure: its growth per step over the budget, and its cap.
PRESSURE_GROWTH = 1.01
PRESSURE_CAP = 1e6


def range_parameters(model) -> List[tf.Variable]:
    """The trainable variables of `model`'s DQ quantizers that set a bit-width (d, q_max, b)."""
    found = []
    for _, _, quantizer, quantizer_variables, _ in quantized_tensors(model):
        if isinstance(quantizer, DQQuantizer):
            found.extend(quantizer_variables[name] for name in ("step", "q_max", "relaxed_bits")
                         if name in quantizer_variables)
    return found


def clip_range_gradients(model, variables, gradients, active) -> List[Optional[tf.Tensor]]:
    """`gradients` with those of each DQ ``d`` and ``q_max`` clipped to ``[-d, d]`` where
    `active` (a boolean tensor), in the order of `variables`."""
    steps = {}
    for _, _, quantizer, quantizer_variables, _ in quantized_tensors(model):
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


class _BudgetStep(StepHooks):
    """DQ's penalty, clipping, projection and pressure in one training step."""

    transforms_gradients = True

    def __init__(self, model, pressure: Optional[tf.Variable]):
        self.model, self.pressure, self.budget = model, pressure, model.budget
        self.penalty = self.sizes = self.met_before = None
        self.parameters: List[tf.Variable] = []
        self.before: List[tf.Tensor] = []

    def loss(self):
        self.sizes = differentiable_cost(self.model,
                                         activation_reduce=self.budget.activation_reduce)
        self.penalty = budget_penalty(self.sizes, self.budget, self.model.cost_weights)
        if self.pressure is not None:
            self.penalty = self.penalty * self.pressure
        return self.penalty

    def logs(self):
        return {"budget_penalty": self.penalty}

    def before_update(self, x, y, sample_weight, y_pred):
        self.met_before = budget_met(self.sizes, self.budget)
        self.parameters = range_parameters(self.model)
        self.before = [tf.identity(variable) for variable in self.parameters]

    def gradients(self, variables, gradients):
        return clip_range_gradients(self.model, variables, gradients, self.penalty > 0.0)

    def after_update(self):
        stay_within_budget(self.model, self.budget, self.met_before, self.parameters,
                           self.before, self.pressure)


def stay_within_budget(model, budget, met_before, variables, before,
                       pressure: Optional[tf.Variable]) -> None:
    """Undoes this step's update of the DQ `variables` if it took a model that was within
    `budget` back over it (the values `before` the update are restored), and raises the
    penalty's `pressure` when the step ends over the budget."""
    if not variables:
        return
    met_after = budget_met(differentiable_cost(
        model, activation_reduce=budget.activation_reduce), budget)
    undo = tf.logical_and(met_before, tf.logical_not(met_after))
    for variable, value in zip(variables, before):
        variable.assign(tf.where(undo, value, variable))
    if pressure is not None:
        over = tf.logical_and(tf.logical_not(met_after), tf.logical_not(undo))
        raised = tf.minimum(pressure * PRESSURE_GROWTH, PRESSURE_CAP)
        pressure.assign(tf.where(over, raised, pressure))


class DQ(Method):
    """Differentiable quantization: bit-widths follow the learned step and range."""

    name = "dq"
    option_names = OPTIONS
    quantizer_classes = (DQQuantizer,)
    learns_bits = True

    def build_quantizer(self, kind, *, signed, bits, min_bits, max_bits, options, **unused):
        return DQQuantizer(bits=bits, min_bits=min_bits, max_bits=max_bits, signed=signed,
                           **options)

    def check_budget_arguments(self, *, learn_bits, settings):
        pass  # DQ's bit-widths always follow its learned ranges

    def create_state(self, model) -> Dict[str, tf.Variable]:
        """The pressure weight, for a model with a budget and DQ quantizers."""
        if model.budget is None or not range_parameters(model):
            return {}
        return {"pressure": model.add_weight(
            "dq_budget_pressure", shape=(), dtype=tf.float32,
            initializer=keras.initializers.Constant(1.0), trainable=False,
            aggregation=tf.VariableAggregation.MEAN)}

    def step_hooks(self, model):
        if model.budget is None:
            return None
        return _BudgetStep(model, model.method_state(self.name).get("pressure"))


DQ_METHOD = register(DQ())
