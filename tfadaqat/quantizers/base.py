"""The base of every tfadaqat quantizer, and what all of them share.

:class:`TensorQuantizer` is a TFMOT :class:`~tfmot.quantization.keras.quantizers.Quantizer`:
``build`` creates its variables on the layer that owns the tensor, ``__call__`` fake-quantizes
the tensor. Data-dependent parameters are assigned from the first tensor seen inside
:func:`initialization_mode`; the statistics they start from (:func:`largest_magnitude`,
:func:`mean_magnitude`) are taken over the whole batch under tf.distribute.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any, Dict, Tuple

from tfadaqat._compat import base_quantizer_class, keras, tf
from tfadaqat.configurable import Configurable

PACKAGE = "tfadaqat"  # the Keras registration package of every quantizer class
MIN_SUPPORTED_BITS = 1
MAX_SUPPORTED_BITS = 16
TENSOR_KINDS = ("weight", "activation")


def validate_bits(name: str, value: Any, *, low: int = MIN_SUPPORTED_BITS,
                  high: int = MAX_SUPPORTED_BITS) -> int:
    """Checks that `value` is an integer bit-width in ``[low, high]``.

    Raises:
      ValueError: Naming `name` and the allowed values.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return value


# A plain module flag, not thread-local: MirroredStrategy traces replicas in their own threads.
_initialization = types.SimpleNamespace(active=False)


@contextlib.contextmanager
def initialization_mode():
    """Within this scope, quantizers traced or called assign their data-dependent initial values.

    :class:`tfadaqat.QuantizedModel` traces its first training, test or predict step in this
    mode and every later step without it, so initialisation costs no per-step branch.
    """
    previous = _initialization.active
    _initialization.active = True
    try:
        yield
    finally:
        _initialization.active = previous


def initialization_active() -> bool:
    return _initialization.active


def read_float(value) -> float:
    """The value of a variable or tensor as a Python float (export-time reads of a grid).

    ``keras.backend.get_value`` also reads a variable created under a distribution strategy
    (a mirrored variable has no ``.numpy()`` in every context).
    """
    return float(keras.backend.get_value(value))


def finite_values(values: tf.Tensor) -> tf.Tensor:
    """`values` with NaN and inf replaced by 0, for statistics that initialise variables."""
    return tf.where(tf.math.is_finite(values), values, tf.zeros_like(values))


def over_replicas(value: tf.Tensor, reduction: str) -> tf.Tensor:
    """`value`, a statistic of this replica's share of the batch, reduced over all replicas.

    Under tf.distribute each replica sees ``batch / replicas`` examples; initial values must
    come from the whole batch, as on one device (the largest ``|x|`` of the batch is the
    largest of the replicas' largest; the mean over equal shares is the mean of their means).
    Outside a multi-replica step this is `value`. `reduction` is "max" or "mean".
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    if reduction == "mean":
        return context.all_reduce(tf.distribute.ReduceOp.MEAN, value)
    return tf.reduce_max(context.all_gather(value[None], axis=0))  # ReduceOp has no MAX


def largest_magnitude(values: tf.Tensor) -> tf.Tensor:
    """``max |values|`` over the finite entries of the whole (global) batch."""
    return over_replicas(tf.reduce_max(tf.abs(finite_values(values))), "max")


def mean_magnitude(values: tf.Tensor) -> tf.Tensor:
    """``mean |values|`` over the whole (global) batch (non-finite entries count as 0)."""
    return over_replicas(tf.reduce_mean(tf.abs(finite_values(values))), "mean")


class TensorQuantizer(Configurable, base_quantizer_class):
    """Shared plumbing of tfadaqat quantizers: variables, lazy initialisation, config.

    Subclasses define ``_variable_specs`` (name -> (initial value, trainable)),
    ``_initial_values(tensor)``, ``_quantize(tensor, variables)``, ``bit_width(variables)`` and
    list their constructor arguments in ``get_config``.
    """

    signed: bool = True

    def _variable_specs(self) -> Dict[str, tuple]:
        raise NotImplementedError

    def _initial_values(self, tensor: tf.Tensor) -> Dict[str, tf.Tensor]:
        return {}

    def _quantize(self, tensor: tf.Tensor, variables: Dict[str, tf.Variable]) -> tf.Tensor:
        raise NotImplementedError

    def _constraint(self, variable_name: str):
        """Projection applied after every optimizer update of `variable_name`, or None."""
        return None

    def bit_width(self, variables: Dict[str, tf.Variable]) -> tf.Tensor:
        """The integer bit-width in use, as an int32 scalar tensor."""
        raise NotImplementedError

    def set_bit_width(self, variables: Dict[str, tf.Variable], bits: int) -> None:
        """Sets the bit-width in use to `bits`."""
        raise ValueError(f"{type(self).__name__} has a fixed bit-width; it cannot be set")

    def differentiable_bit_width(self, variables: Dict[str, tf.Variable]) -> tf.Tensor:
        """The integer bit-width as a float32 tensor, with a gradient where the bits are learned.

        Forward: the same value as :meth:`bit_width`. Gradient: that of the quantizer's relaxed
        bit-width (straight through the rounding); zero for fixed bits.
        """
        return tf.cast(self.bit_width(variables), tf.float32)

    @property
    def lowest_bits(self) -> int:
        """The smallest bit-width this quantizer can reach."""
        raise NotImplementedError

    def integer_grid(self, tensor: tf.Tensor,
                     variables: Dict[str, tf.Variable]) -> Tuple[float, int, int]:
        """``(scale, low, high)``: every output is ``scale`` times an integer in ``[low, high]``.

        This is what integer export stores (see :mod:`tfadaqat.export`). `tensor` is the float
        input (weights); activation quantizers ignore it.
        """
        raise NotImplementedError

    def build(self, tensor_shape, name: str, layer) -> Dict[str, tf.Variable]:
        variables: Dict[str, tf.Variable] = {}
        for variable_name, (initial, trainable) in self._variable_specs().items():
            variables[variable_name] = layer.add_weight(
                f"{name}_{variable_name}",
                shape=(),
                dtype=tf.float32,
                initializer=keras.initializers.Constant(initial),
                trainable=trainable,
                constraint=self._constraint(variable_name),
                aggregation=tf.VariableAggregation.MEAN,
            )
        if self._initial_values_needed():
            variables["initialized"] = layer.add_weight(
                f"{name}_initialized", shape=(), dtype=tf.float32,
                initializer=keras.initializers.Constant(0.0), trainable=False,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        return variables

    def _initial_values_needed(self) -> bool:
        return type(self)._initial_values is not TensorQuantizer._initial_values

    def __call__(self, inputs, training, weights, **kwargs):
        if "initialized" in weights and initialization_active():
            self._initialize(inputs, weights)
        return self._quantize(inputs, weights)

    def _initialize(self, inputs, variables) -> None:
        """Assigns the data-dependent initial values (traced only in initialization mode)."""
        for name, value in self._initial_values(inputs).items():
            variables[name].assign(value)
        variables["initialized"].assign(1.0)

