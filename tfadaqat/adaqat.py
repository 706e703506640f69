"""AdaQAT's finite-difference bit-width rule (Gernigon et al., arXiv:2404.16876).

Each AdaQAT tensor owns a relaxed bit-width ``N`` (used as ``b = ceil(N)``). Every
``probe_every`` training steps, after the usual gradient step, one not-yet-frozen tensor is
*probed*: the batch is run again with that tensor one bit lower, giving ``L_minus``, and

    g = (L - L_minus) + lambda * dC/db,        N <- max(N - eta g, min_bits - 1/2)

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

The probe forward pass runs in training mode, like the step it is compared with, so both see
batch statistics; BatchNormalization's moving averages are updated once more with the batch.
"""

from __future__ import annotations

import dataclasses
from typing import List

from tfadaqat import ops
from tfadaqat._compat import tf, wrapper_weight_quantizers
from tfadaqat.quantizers import DoReFaWeightQuantizer, PACTActivationQuantizer


@dataclasses.dataclass(frozen=True)
class AdaQATRule:
    """Settings of the finite-difference bit-width rule.

    Args:
      learning_rate: ``eta``.
      weight_cost_weight: ``lambda`` while weight bit-widths are learned.
      activation_cost_weight: ``lambda`` while activation bit-widths are learned.
      oscillation_limit: Rises of a tensor's integer bit-width before it is frozen.
      probe_every: Probe on one step in this many.

    Raises:
      ValueError: For non-positive rates or counts.
    """

    learning_rate: float = 0.1
    weight_cost_weight: float = 0.02
    activation_cost_weight: float = 0.01
    oscillation_limit: int = 10
    probe_every: int = 1

    def __post_init__(self):
        for name in ("learning_rate", "weight_cost_weight", "activation_cost_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        for name in ("oscillation_limit", "probe_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


def relaxed_bits_update(relaxed_bits, loss, probe_loss, cost_gradient, cost_weight,
                        learning_rate, min_bits):
    """``N' = max(N - eta ((L - L_minus) + lambda dC/db), min_bits - 1/2)``."""
    gradient = (loss - probe_loss) + cost_weight * cost_gradient
    return tf.maximum(relaxed_bits - learning_rate * gradient, float(min_bits) - 0.5)


def freeze_rule(old_bits, new_relaxed_bits, rises, min_bits: int, max_bits: int,
                oscillation_limit: int):
    """Counts rises of ``b = ceil(N)`` and decides freezing.

    A rise is an update whose ``ceil(N)`` exceeds the integer bit-width before it, including
    one that `max_bits` then caps.

    Returns:
      ``(relaxed_bits, rises, frozen)``: a rise past `oscillation_limit` freezes the tensor at
      the higher integer bit-width (``N`` set to it); reaching `min_bits` freezes it there.
    """
    new_bits = ops.relaxed_to_integer_bits(new_relaxed_bits, min_bits, max_bits)
    # An update that would raise b counts as a rise even where max_bits caps it, so a tensor
    # that needs all its bits freezes there instead of being probed forever.
    pushed_up = tf.cast(tf.math.ceil(new_relaxed_bits), tf.int32) > old_bits
    rises = rises + tf.cast(pushed_up, tf.float32)
    oscillating = rises > float(oscillation_limit)
    relaxed = tf.where(oscillating, tf.cast(new_bits, tf.float32),
                       tf.minimum(new_relaxed_bits, float(max_bits)))
    frozen = tf.logical_or(oscillating, new_bits <= min_bits)
    return relaxed, rises, frozen


@dataclasses.dataclass
class _LearnedTensor:
    quantizer: object
    variables: dict
    is_weight: bool
    weight: object  # the float weight variable, for weight tensors


def learned_tensors(model) -> List[_LearnedTensor]:
    """The AdaQAT tensors of `model` whose bit-widths are learned, weights first."""
    from tfadaqat.quantize import quantized_tensors  # quantize -> model -> this module
    result = []
    for _, role, quantizer, variables, wrapper in quantized_tensors(model):
        if not isinstance(quantizer, (DoReFaWeightQuantizer, PACTActivationQuantizer)):
            continue
        if not quantizer.learn_bits:
            continue
        weight = None
        if role != "output":
            weight = next(w for w, q, _ in wrapper_weight_quantizers(wrapper) if q is quantizer)
        result.append(_LearnedTensor(quantizer, variables, role != "output", weight))
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


def probe(model, rule: AdaQATRule, x, y, sample_weight, loss, active=None) -> tf.Tensor:
    """Runs one AdaQAT probe and updates the probed tensor's relaxed bit-width.

    Under a distribution strategy with several replicas, ``L`` and ``L_minus`` are averaged
    over the replicas before the update, so every replica writes the same bit-width state; the
    probe then runs on every call with its writes gated (a ``tf.cond`` around mirrored-variable
    writes is a synchronisation point TensorFlow refuses in replica context).

    Args:
      model: The :class:`tfadaqat.QuantizedModel`.
      rule: The rule's settings.
      x, y, sample_weight: The batch of the training step.
      loss: ``L``, the step's loss on this batch.
      active: Optional boolean tensor; False skips this probe (``probe_every``).

    Returns:
      The probe loss ``L_minus`` (the step loss `loss` when nothing is probed).
    """
    from tfadaqat.cost import differentiable_cost  # cost -> quantize -> model
    tensors = learned_tensors(model)
    if not tensors:
        return loss
    frozen = tf.stack([t.variables["frozen"] > 0.5 for t in tensors])
    is_weight = tf.constant([t.is_weight for t in tensors])
    weights_open = tf.reduce_any(tf.logical_and(is_weight, tf.logical_not(frozen)))
    candidate = tf.logical_and(tf.logical_not(frozen),
                               tf.where(weights_open, is_weight, tf.logical_not(is_weight)))
    scores = tf.stack([quantization_error_increase(t) for t in tensors])
    scores = tf.where(candidate, scores, tf.fill(tf.shape(scores), -float("inf")))
    chosen = tf.argmax(scores, output_type=tf.int32)
    gate = tf.reduce_any(candidate)
    if active is not None:
        gate = tf.logical_and(gate, active)
    replica_context = tf.distribute.get_replica_context()
    replicas = tf.distribute.get_strategy().num_replicas_in_sync

    def replica_mean(value):
        if replicas > 1 and replica_context is not None:
            return replica_context.all_reduce(tf.distribute.ReduceOp.MEAN, value)
        return value

    def run_probe():
        relaxed = [t.variables["relaxed_bits"] for t in tensors]
        saved = [variable.read_value() for variable in relaxed]
        bits = [t.quantizer.bit_width(t.variables) for t in tensors]
        for index, (variable, value, b) in enumerate(zip(relaxed, saved, bits)):
            lowered = tf.logical_and(gate, chosen == index)
            variable.assign(tf.where(lowered, tf.cast(b - 1, tf.float32), value))
        probe_loss = replica_mean(model._plain_loss(y, model(x, training=True), sample_weight))
        step_loss = replica_mean(loss)
        for variable, value in zip(relaxed, saved):
            variable.assign(value)
        with tf.GradientTape() as tape:
            tape.watch(relaxed)
            per_layer_cost = differentiable_cost(model, mac_weighted=False)["bitops"]
        cost_gradients = tf.stack(tape.gradient(
            per_layer_cost, relaxed, unconnected_gradients=tf.UnconnectedGradients.ZERO))
        cost_weight = tf.where(tf.gather(is_weight, chosen), rule.weight_cost_weight,
                               rule.activation_cost_weight)
        for index, tensor in enumerate(tensors):
            quantizer, variables = tensor.quantizer, tensor.variables
            updated = relaxed_bits_update(
                variables["relaxed_bits"], step_loss, probe_loss, cost_gradients[index],
                cost_weight,
                rule.learning_rate, quantizer.min_bits)
            new_relaxed, rises, now_frozen = freeze_rule(
                bits[index], updated, variables["rises"], quantizer.min_bits,
                quantizer.max_bits, rule.oscillation_limit)
            this = tf.logical_and(gate, chosen == index)
            variables["relaxed_bits"].assign(tf.where(this, new_relaxed, saved[index]))
            variables["rises"].assign(tf.where(this, rises, variables["rises"]))
            variables["frozen"].assign(
                tf.where(tf.logical_and(this, now_frozen), 1.0, variables["frozen"]))
        return probe_loss

    if replicas > 1:
        return run_probe()
    return tf.cond(gate, run_probe, lambda: tf.identity(loss))
