"""AdaQAT's finite-difference bit-width rule (Gernigon et al., arXiv:2404.16876).

Each AdaQAT tensor owns a relaxed bit-width ``N`` (used as ``b = ceil(N)``). Every
``probe_every`` training steps, between the step's forward pass and its weight update (so
``L`` and ``L_minus`` see the same weights), one not-yet-frozen tensor is *probed*: the batch
is run again with that tensor one bit lower, giving ``L_minus``, and

    g = (L - L_minus) + lambda * dC/db,     N <- max(N - clip(eta g, -1, 1), min_bits - 1/2)

where ``C = sum_layers b_w b_a`` is the per-layer cost of the authors' code, so
``dC/db_w = b_a`` and ``dC/db_a`` is the sum of ``b_w`` over the layers the activation feeds.
``lambda`` is 0.02 for weights and 0.01 for activations, ``eta`` 0.1 (the authors' code).

Which tensor: weights first, then activations; among the open tensors of the phase, the one
whose quantization error grows most from ``b`` to ``b - 1``: for weights the mean squared
difference of the DoReFa outputs at ``b`` and ``b - 1``; for activations (whose values are not
kept between steps) the growth of the uniform-noise variance ``step^2 / 12`` of the PACT grid,
``step = alpha / (levels at b)``.

Freezing: a tensor that reaches ``min_bits`` is frozen; a tensor whose integer bit-width has
gone back up more than ``oscillation_limit`` times is frozen at the higher value. An update
that would raise ``b`` above ``max_bits`` counts as a rise too: otherwise a tensor that needs
all its bits would win every probe (its error grows most) and starve the others. When every
tensor is frozen, training continues as plain QAT at the learned bit-widths.

With a budget (``quantize_model(..., budget=...)``) the cost term gains budget prices that
are adapted at every probe, the tensors of a phase are probed in turn, and rises past the
budget are refused; see :func:`probe` and :func:`budget_targets`.

The probe forward pass runs in training mode, like the step it is compared with, so both see
batch statistics. It re-runs only the layers from a restart point at or before the probed
tensor's layer, taking the earlier layers' outputs from the step's own pass
(:mod:`tfadaqat.partial_forward`), and it leaves BatchNormalization's moving averages as the
step's pass set them (it measures; only the step trains).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Dict, List

import numpy as np

from tfadaqat import ops, partial_forward
from tfadaqat._compat import keras, tf, wrapper_weight_quantizers
from tfadaqat.budget import QUANTITIES
from tfadaqat.cost import cost, differentiable_cost
from tfadaqat.quantizers import (DoReFaWeightQuantizer, PACTActivationQuantizer,
                                 initialization_active)
from tfadaqat.tensors import quantized_tensors


#: Restart points of the probe's partial forward pass (:func:`probe`): with ``k`` of them a
#: probe re-runs about ``(k + 1) / (2 k)`` of the model on average, and the traced step holds
#: about ``(k + 1) / 2`` copies of the forward pass.
PROBE_RESTART_POINTS = 4


@dataclasses.dataclass(frozen=True)
class AdaQATRule:
    """Settings of the finite-difference bit-width rule.

    Args:
      learning_rate: ``eta``.
      weight_cost_weight: ``lambda`` while weight bit-widths are learned.
      activation_cost_weight: ``lambda`` while activation bit-widths are learned.
      oscillation_limit: Rises of a tensor's integer bit-width before it is frozen.
      probe_every: Probe on one step in this many.
      budget_rate: With a budget, the growth rate of the cost multipliers while the cost is
        over its target (:func:`next_multipliers`).

    Raises:
      ValueError: For non-positive rates or counts.
    """

    learning_rate: float = 0.1
    weight_cost_weight: float = 0.02
    activation_cost_weight: float = 0.01
    oscillation_limit: int = 10
    probe_every: int = 1
    budget_rate: float = 0.1

    def __post_init__(self):
        for name in ("learning_rate", "weight_cost_weight", "activation_cost_weight",
                     "budget_rate"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        for name in ("oscillation_limit", "probe_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


def relaxed_bits_update(relaxed_bits, loss, probe_loss, cost_gradient, cost_weight,
                        learning_rate, min_bits):
    """``N' = max(N - clip(eta ((L - L_minus) + lambda dC/db), -1, 1), min_bits - 1/2)``.

    The probe measures the loss one bit away, so one update moves ``N`` by at most one bit.
    """
    gradient = (loss - probe_loss) + cost_weight * cost_gradient
    step = tf.clip_by_value(learning_rate * gradient, -1.0, 1.0)
    return tf.maximum(relaxed_bits - step, tf.cast(min_bits, tf.float32) - 0.5)


def freeze_rule(old_bits, new_relaxed_bits, rises, min_bits, max_bits,
                oscillation_limit: int, held=False, may_freeze_high=True):
    """Counts rises of ``b = ceil(N)`` and decides freezing.

    A rise is an update whose ``ceil(N)`` exceeds the integer bit-width before it, including
    one that `max_bits` caps. Under a budget, an update that keeps ``b`` counts too (`held`).

    Args:
      old_bits: The integer bit-width before the update.
      new_relaxed_bits: ``N`` after the update.
      rises: Rises counted so far.
      min_bits, max_bits: The tensor's bit-width range.
      oscillation_limit: Rises after which the tensor is frozen.
      held: Count this update like a rise (under a budget: it did not lower ``b``, for
        instance a rise the budget refused).
      may_freeze_high: False keeps the tensor open, at the floor or however often it rose
        (a model over its budget must still be able to lower it, and a tensor pushed to the
        floor on the way down to rise again once the budget allows).

    Returns:
      ``(relaxed_bits, rises, frozen)``: a rise past `oscillation_limit` freezes the tensor at
      the higher integer bit-width (``N`` set to it); reaching `min_bits` freezes it there.
    """
    new_bits = ops.relaxed_to_integer_bits(new_relaxed_bits, min_bits, max_bits)
    # An update that would raise b counts as a rise even where max_bits caps it, so a tensor
    # that needs all its bits freezes there instead of being probed forever.
    pushed_up = tf.logical_or(
        tf.cast(tf.math.ceil(new_relaxed_bits), tf.int32) > old_bits, held)
    rises = rises + tf.cast(pushed_up, tf.float32)
    oscillating = tf.logical_and(rises > float(oscillation_limit), may_freeze_high)
    relaxed = tf.where(oscillating, tf.cast(new_bits, tf.float32),
                       tf.minimum(new_relaxed_bits, tf.cast(max_bits, tf.float32)))
    frozen = tf.logical_or(oscillating,
                           tf.logical_and(new_bits <= min_bits, may_freeze_high))
    return relaxed, rises, frozen


def next_multipliers(multipliers, sizes, targets, rate: float):
    """The budget prices after one probe: geometric growth over target, zero within it.

    ``m_j <- max(m_j, 1) exp(rate min(C_j / T_j - 1, 1))`` while ``C_j > T_j``, else
    ``m_j <- 0``; unconstrained quantities (``T_j = 0``) stay at 0. Within the target the
    bits are steered by the loss alone, and rises that would cross the target are refused
    (see :func:`probe`), so a price left over from the descent cannot push the cost far below
    the budget.
    """
    constrained = targets > 0.0
    ratio = tf.where(constrained, sizes / tf.where(constrained, targets, 1.0), 0.0)
    grown = tf.maximum(multipliers, 1.0) * tf.exp(rate * tf.minimum(ratio - 1.0, 1.0))
    return tf.where(ratio > 1.0, grown, tf.zeros_like(multipliers))


@dataclasses.dataclass
class _LearnedTensor:
    quantizer: object
    variables: dict
    is_weight: bool
    weight: object  # the float weight variable, for weight tensors
    layer: object  # the quantize wrapper it belongs to


def learned_tensors(model) -> List[_LearnedTensor]:
    """The AdaQAT tensors of `model` whose bit-widths are learned, weights first."""
    result = []
    for _, role, quantizer, variables, wrapper in quantized_tensors(model):
        if not isinstance(quantizer, (DoReFaWeightQuantizer, PACTActivationQuantizer)):
            continue
        if not quantizer.learn_bits:
            continue
        weight = None
        if role != "output":
            weight = next(w for w, q, _ in wrapper_weight_quantizers(wrapper) if q is quantizer)
        result.append(_LearnedTensor(quantizer, variables, role != "output", weight, wrapper))
    return sorted(result, key=lambda tensor: not tensor.is_weight)


def quantization_error_increase(tensor: _LearnedTensor) -> tf.Tensor:
    """How much the quantization error of `tensor` grows from ``b`` to ``b - 1`` bits."""
    quantizer, variables = tensor.quantizer, tensor.variables
    bits = quantizer.bit_width(variables)
    lower = tf.maximum(bits - 1, 1 if quantizer.grid == "dorefa" else 2) if tensor.is_weight \
        else tf.maximum(bits - 1, 1)
    if tensor.is_weight:
        at_bits = ops.dorefa_weight_quantize(tensor.weight, bits, grid=quantizer.grid,
                                             rescale=quantizer.rescale)
        below = ops.dorefa_weight_quantize(tensor.weight, lower, grid=quantizer.grid,
                                           rescale=quantizer.rescale)
        return tf.reduce_mean(tf.square(at_bits - below))
    alpha = variables["alpha"]
    high_at = tf.maximum(ops.integer_range(bits, quantizer.signed)[1], 1.0)
    high_below = tf.maximum(ops.integer_range(lower, quantizer.signed)[1], 1.0)
    return (tf.square(alpha / high_below) - tf.square(alpha / high_at)) / 12.0


def budget_targets(model, budget) -> np.ndarray:
    """The per-phase targets of AdaQAT under `budget`: row 0 weights, row 1 activations.

    Columns follow :data:`tfadaqat.budget.QUANTITIES`; 0 marks a quantity the phase does not
    constrain. Weight memory is met while weights are learned, activation memory while
    activations are. BitOPs (``MACs b_w b_a``) depend on both, so the weight phase aims at the
    geometric mean ``sqrt(B C_0)`` of the budget ``B`` and the starting cost ``C_0`` (half of
    the reduction, in log scale), and the activation phase at ``B``.
    """
    tensors = learned_tensors(model)
    has_activations = any(not tensor.is_weight for tensor in tensors)
    start = cost(model, activation_reduce=budget.activation_reduce)
    targets = np.zeros((2, len(QUANTITIES)), np.float32)
    for column, name in enumerate(QUANTITIES):
        limit = budget.limit(name)
        if limit is None:
            continue
        if name == "bitops":
            initial = float(start.bitops)
            targets[0, column] = (math.sqrt(limit * initial)
                                  if has_activations and initial > limit else limit)
            targets[1, column] = limit
        elif name == "weight_kb":
            targets[0, column] = limit
        else:
            targets[1, column] = limit
    return targets


def create_budget_state(model, budget) -> Dict[str, tf.Variable]:
    """Adds the non-trainable variables of AdaQAT's budget control to `model`.

    ``budget_multipliers`` (one price per quantity, starting at 0) and ``budget_targets`` (see
    :func:`budget_targets`) are weights of the model, so they are saved, restored and
    mirrored with it.
    """
    targets = budget_targets(model, budget)
    return {
        "multipliers": model.add_weight(
            "adaqat_budget_multipliers", shape=(len(QUANTITIES),), dtype=tf.float32,
            initializer=keras.initializers.Constant(0.0), trainable=False,
            aggregation=tf.VariableAggregation.MEAN),
        "targets": model.add_weight(
            "adaqat_budget_targets", shape=targets.shape, dtype=tf.float32,
            initializer=keras.initializers.Constant(targets), trainable=False,
            aggregation=tf.VariableAggregation.MEAN),
    }


def _budget_sizes(model, budget) -> tf.Tensor:
    sizes = differentiable_cost(model, activation_reduce=budget.activation_reduce)
    return tf.stack([sizes[name] for name in QUANTITIES])


def probe(model, rule: AdaQATRule, x, y, sample_weight, loss, forward_record,
          active=None) -> tf.Tensor:
    """Runs one AdaQAT probe and updates the probed tensor's relaxed bit-width.

    The probe loss ``L_minus`` is the loss of the batch in training mode with the probed
    tensor one bit lower. The layers before the probed tensor's compute what they computed in
    the step's forward pass, so the probe takes their outputs from `forward_record` and
    re-runs the model from the nearest of :data:`PROBE_RESTART_POINTS` restart points at or
    before the probed tensor's layer (:mod:`tfadaqat.partial_forward`), on average a little
    over half of it (with several replicas, and on the first step, from the first point: the
    choice is a ``tf.switch_case``, and their synchronisation points may not sit in one). The
    probe changes no BatchNormalization statistics.

    The cost term is the authors' ``lambda dC/db`` with ``C = sum_layers b_w b_a``. With a
    budget (see :meth:`tfadaqat.QuantizedModel.budget`) it gains a price term
    ``sum_j m_j (dC_j/db) / T_j`` over the quantities the current phase constrains
    (:func:`budget_targets`), and the tensors are probed in turn instead of by quantization
    error. The prices ``m_j`` grow geometrically while the cost is over its target and drop
    to 0 once within it (:func:`next_multipliers`). Within the target, a rise that would take
    the cost over it is refused, and an update that does not lower ``b`` counts towards
    freezing like a rise; over it, no tensor freezes. So the cost falls while it is over the
    target, never climbs back over it, and the bits settle within the budget once both
    phases end.

    Under a distribution strategy with several replicas, ``L`` and ``L_minus`` are averaged
    over the replicas before the update, so every replica writes the same bit-width state; the
    probe then runs on every call with its writes gated (a ``tf.cond`` around mirrored-variable
    writes is a synchronisation point TensorFlow refuses in replica context).

    Args:
      model: The :class:`tfadaqat.QuantizedModel`.
      rule: The rule's settings.
      x, y, sample_weight: The batch of the training step.
      loss: ``L``, the step's loss on this batch.
      forward_record: The :class:`tfadaqat.partial_forward.ForwardRecord` of the step's
        forward pass (:meth:`tfadaqat.QuantizedModel.recorded_forward`).
      active: Optional boolean tensor; False skips this probe (``probe_every``).

    Returns:
      The probe loss ``L_minus`` (the step loss `loss` when nothing is probed).
    """
    tensors = learned_tensors(model)
    if not tensors:
        return loss
    budget, state = model.budget, model.method_state("adaqat")
    frozen = tf.stack([t.variables["frozen"] > 0.5 for t in tensors])
    is_weight = tf.constant([t.is_weight for t in tensors])
    weights_open = tf.reduce_any(tf.logical_and(is_weight, tf.logical_not(frozen)))
    candidate = tf.logical_and(tf.logical_not(frozen),
                               tf.where(weights_open, is_weight, tf.logical_not(is_weight)))
    if budget is None:
        scores = tf.stack([quantization_error_increase(t) for t in tensors])
        scores = tf.where(candidate, scores, tf.fill(tf.shape(scores), -float("inf")))
        chosen = tf.argmax(scores, output_type=tf.int32)
    else:
        # In turn: the largest-error choice keeps probing the most sensitive tensor, which a
        # growing budget price would then push to the floor before any other moved.
        rank = tf.cumsum(tf.cast(candidate, tf.int32)) - 1
        count = tf.maximum(tf.reduce_sum(tf.cast(candidate, tf.int32)), 1)
        turn = tf.cast(model.optimizer.iterations // rule.probe_every, tf.int32) % count
        chosen = tf.argmax(tf.cast(tf.logical_and(candidate, rank == turn), tf.int32),
                           output_type=tf.int32)
    gate = tf.reduce_any(candidate)
    if active is not None:
        gate = tf.logical_and(gate, active)
    replica_context = tf.distribute.get_replica_context()
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    min_bits = tf.constant([t.quantizer.min_bits for t in tensors])
    max_bits = tf.constant([t.quantizer.max_bits for t in tensors])
    restarts, restart_of = partial_forward.restart_points(
        partial_forward.first_positions(model, [t.layer for t in tensors]),
        PROBE_RESTART_POINTS)

    def probe_forward():
        branches = [functools.partial(model.resumed_forward, x, forward_record, start)
                    for start in restarts]
        if len(branches) == 1 or replicas > 1 or initialization_active():
            # With several replicas, BatchNormalization's updates (and on the first step the
            # quantizers' initialisation) synchronise them, which TensorFlow refuses inside
            # control flow: the probe then re-runs from the first restart point.
            return branches[0]()
        return tf.switch_case(tf.gather(tf.constant(restart_of, tf.int32), chosen), branches)

    def replica_mean(value):
        if replicas > 1 and replica_context is not None:
            return replica_context.all_reduce(tf.distribute.ReduceOp.MEAN, value)
        return value

    def write(name, values, mask):
        for index, tensor in enumerate(tensors):
            variable = tensor.variables[name]
            variable.assign(tf.where(mask[index], values[index], variable))

    def run_probe():
        relaxed = [t.variables["relaxed_bits"] for t in tensors]
        saved = tf.stack([variable.read_value() for variable in relaxed])
        bits = tf.stack([t.quantizer.bit_width(t.variables) for t in tensors])
        this = tf.logical_and(gate, tf.range(len(tensors)) == chosen)
        write("relaxed_bits", tf.cast(bits - 1, tf.float32), this)
        probe_loss = replica_mean(model.plain_loss(y, probe_forward(), sample_weight))
        step_loss = replica_mean(loss)
        write("relaxed_bits", saved, this)
        held, within = tf.constant(False), tf.constant(True)
        cost_weight = tf.where(tf.gather(is_weight, chosen), rule.weight_cost_weight,
                               rule.activation_cost_weight) if budget is None else 0.0
        with tf.GradientTape() as tape:
            tape.watch(relaxed)
            total_cost = cost_weight * differentiable_cost(model, mac_weighted=False)["bitops"]
            if budget is not None:
                targets = tf.where(weights_open, state["targets"][0], state["targets"][1])
                constrained = targets > 0.0
                sizes = _budget_sizes(model, budget)
                total_cost += tf.reduce_sum(tf.where(
                    constrained, state["multipliers"] * sizes / tf.where(constrained, targets,
                                                                         1.0), 0.0))
        cost_gradient = tf.gather(tf.stack(tape.gradient(
            total_cost, relaxed, unconnected_gradients=tf.UnconnectedGradients.ZERO)), chosen)
        if budget is not None:
            within = tf.reduce_all(tf.logical_or(tf.logical_not(constrained), sizes <= targets))
            state["multipliers"].assign(tf.where(
                gate, next_multipliers(state["multipliers"], sizes, targets, rule.budget_rate),
                state["multipliers"]))
        old_bits = tf.gather(bits, chosen)
        updated = relaxed_bits_update(tf.gather(saved, chosen), step_loss, probe_loss,
                                      cost_gradient, 1.0, rule.learning_rate,
                                      tf.gather(min_bits, chosen))
        if budget is not None:
            # Price the rise before taking it: cost with the chosen tensor at its new bits.
            rising = tf.math.ceil(updated) > tf.cast(old_bits, tf.float32)
            write("relaxed_bits", tf.fill([len(tensors)], updated), this)
            over = tf.reduce_any(tf.logical_and(constrained, _budget_sizes(model, budget)
                                                > targets))
            updated = tf.where(tf.logical_and(rising, over), tf.cast(old_bits, tf.float32),
                               updated)
            # Within the target nothing pushes a tensor down, so one the loss keeps where it
            # is settles after `oscillation_limit` such probes, as an oscillating one does.
            held = tf.math.ceil(updated) >= tf.cast(old_bits, tf.float32)
        new_relaxed, rises, now_frozen = freeze_rule(
            old_bits, updated, tf.gather(tf.stack([t.variables["rises"] for t in tensors]),
                                         chosen),
            tf.gather(min_bits, chosen), tf.gather(max_bits, chosen), rule.oscillation_limit,
            held=held, may_freeze_high=within)
        write("relaxed_bits", tf.fill([len(tensors)], new_relaxed), this)
        write("rises", tf.fill([len(tensors)], rises), this)
        write("frozen", tf.fill([len(tensors)], 1.0), tf.logical_and(this, now_frozen))
        return probe_loss

    # Under a tf.distribute strategy (even with one replica) a variable update is a merge
    # call, which TensorFlow does not allow inside tf.cond: there the probe always runs and
    # its writes are masked by `gate` instead.
    if replicas > 1 or tf.distribute.has_strategy():
        return run_probe()
    return tf.cond(gate, run_probe, lambda: tf.identity(loss))
