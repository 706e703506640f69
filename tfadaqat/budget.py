"""Hardware budgets and the penalty that steers learned bit-widths into them.

A :class:`Budget` caps some of a model's BitOPs, weight memory and activation memory (see
:mod:`tfadaqat.cost`), either in absolute units or as fractions of the same model at uniform
8 bits (:meth:`Budget.relative`). :meth:`Budget.resolve` turns it into absolute numbers for a
given quantized model and refuses budgets that cannot be met even with every tensor at its
lowest bit-width.

DQ (Uhlich et al., arXiv:1905.11452) adds to the training loss

    penalty = sum_j lambda_j max(0, size_j - budget_j)^2

over the constrained quantities ``j`` (:func:`budget_penalty`), with sizes from
:func:`tfadaqat.cost.differentiable_cost`. The sizes are those of the integer bit-widths, so
they move in steps: once a model is within its budget the penalty is zero and the task loss
pulls ranges up until a bit-width rises and the penalty returns. :func:`budget_met` is the test
:class:`tfadaqat.QuantizedModel` uses to undo such a rise (see its ``train_step``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional

from tfadaqat._compat import tf
from tfadaqat.cost import ACTIVATION_REDUCTIONS, cost, uniform_bits
from tfadaqat.tensors import quantized_tensors

#: The quantities a budget can constrain, in the units of :class:`tfadaqat.ModelCost`.
QUANTITIES = ("bitops", "weight_kb", "activation_kb")


@dataclasses.dataclass(frozen=True)
class Budget:
    """Upper bounds on BitOPs, weight memory (KB) and activation memory (KB); None = no bound.

    Args:
      bitops: Largest total BitOPs.
      weight_kb: Largest weight memory, KB (1024 bytes).
      activation_kb: Largest activation memory, KB, reduced by `activation_reduce`.
      activation_reduce: "max" (largest tensor) or "sum" (all tensors).
      relative_to_8bit: The bounds are fractions of the model's cost at uniform 8 bits
        (use :meth:`relative`).

    Raises:
      ValueError: If no bound is given, a bound is not a positive finite number, or
        `activation_reduce` is unknown.

    Example:
      >>> Budget.relative(bitops=0.25).bitops
      0.25
    """

    bitops: Optional[float] = None
    weight_kb: Optional[float] = None
    activation_kb: Optional[float] = None
    activation_reduce: str = "max"
    relative_to_8bit: bool = False

    def __post_init__(self):
        if self.activation_reduce not in ACTIVATION_REDUCTIONS:
            raise ValueError(f"activation_reduce must be one of {ACTIVATION_REDUCTIONS}, "
                             f"got {self.activation_reduce!r}")
        if all(self.limit(name) is None for name in QUANTITIES):
            raise ValueError(f"a Budget needs at least one of {QUANTITIES}")
        for name in QUANTITIES:
            value = self.limit(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise ValueError(f"budget {name} must be a positive finite number, got {value!r}")

    @classmethod
    def relative(cls, bitops: Optional[float] = None, weight_kb: Optional[float] = None,
                 activation_kb: Optional[float] = None, activation_reduce: str = "max"):
        """A budget given as fractions of the model's cost at uniform 8 bits (0.25 = a quarter)."""
        return cls(bitops, weight_kb, activation_kb, activation_reduce, relative_to_8bit=True)

    def limit(self, name: str) -> Optional[float]:
        """The bound on `name` (one of :data:`QUANTITIES`), or None."""
        return getattr(self, name)

    def resolve(self, model) -> "Budget":
        """The absolute budget for `model`, checked against the smallest cost it can reach.

        Raises:
          ValueError: If `model` has no tfadaqat-quantized tensor, or a bound lies below the cost
            with every quantized tensor at its lowest bit-width (the message states that cost).
        """
        lowest = {}
        for layer_name, role, quantizer, _, _ in quantized_tensors(model):
            lowest.setdefault(layer_name, {})[role] = quantizer.lowest_bits
        if not lowest:
            raise ValueError(f"model {model.name!r} has nothing quantized by tfadaqat; a budget "
                             "needs quantized tensors whose bit-widths can change")
        reduce = self.activation_reduce
        smallest = cost_totals(cost(model, activation_reduce=reduce, bits=lowest))
        reference = cost_totals(cost(model, activation_reduce=reduce, bits=uniform_bits(model, 8)))
        absolute = {}
        for name in QUANTITIES:
            value = self.limit(name)
            if value is not None and self.relative_to_8bit:
                value = value * reference[name]
            if value is not None and value < smallest[name]:
                raise ValueError(
                    f"budget {name}={value:,.4g} is below the smallest reachable cost "
                    f"{smallest[name]:,.4g} (every quantized tensor at its min_bits; "
                    f"{smallest[name] / reference[name]:.4f} of the 8-bit model)")
            absolute[name] = value
        return Budget(activation_reduce=reduce, **absolute)


def cost_totals(model_cost) -> Dict[str, float]:
    """The totals of a :class:`tfadaqat.ModelCost` keyed by :data:`QUANTITIES`."""
    return {"bitops": float(model_cost.bitops), "weight_kb": model_cost.weight_kb,
            "activation_kb": model_cost.activation_kb}


def budget_penalty(sizes: Dict[str, tf.Tensor], budget: Budget,
                   cost_weights: Dict[str, float]) -> tf.Tensor:
    """DQ's penalty ``sum_j lambda_j max(0, size_j - budget_j)^2`` over the bounded quantities.

    Gradient: ``d penalty / d size_j = 2 lambda_j max(0, size_j - budget_j)``.

    Args:
      sizes: Tensors keyed by quantity (from :func:`tfadaqat.cost.differentiable_cost`).
      budget: An absolute budget (see :meth:`Budget.resolve`).
      cost_weights: ``lambda_j`` by quantity; a bounded quantity without a weight is an error.

    Returns:
      A scalar float32 tensor.

    Raises:
      ValueError: For a relative budget or a bounded quantity with no weight.
    """
    if budget.relative_to_8bit:
        raise ValueError("budget_penalty needs an absolute budget: call budget.resolve(model)")
    penalty = tf.constant(0.0)
    for name in QUANTITIES:
        limit = budget.limit(name)
        if limit is None:
            continue
        if name not in cost_weights:
            raise ValueError(f"cost_weights has no weight for the bounded quantity {name!r}")
        excess = tf.nn.relu(tf.cast(sizes[name], tf.float32) - float(limit))
        penalty += float(cost_weights[name]) * tf.square(excess)
    return penalty


def budget_met(sizes: Dict[str, tf.Tensor], budget: Budget) -> tf.Tensor:
    """Whether every bounded quantity of `sizes` is at most its limit, as a scalar bool tensor.

    Args:
      sizes: Tensors keyed by quantity (from :func:`tfadaqat.cost.differentiable_cost`).
      budget: An absolute budget.

    Raises:
      ValueError: For a relative budget.

    Example:
      >>> bool(budget_met({"bitops": tf.constant(10.0)}, Budget(bitops=10.0)))
      True
    """
    if budget.relative_to_8bit:
        raise ValueError("budget_met needs an absolute budget: call budget.resolve(model)")
    met = tf.constant(True)
    for name in QUANTITIES:
        limit = budget.limit(name)
        if limit is not None:
            met = tf.logical_and(met, tf.cast(sizes[name], tf.float32) <= float(limit))
    return met
