"""Stateful quantizers: the learned parameters of one quantized tensor.

A quantizer is a TFMOT :class:`~tfmot.quantization.keras.quantizers.Quantizer`: ``build``
creates its variables on the layer that owns the tensor, ``__call__`` fake-quantizes the tensor
with the math of :mod:`tfadaqat.ops`. Each one is made of the same parts:

* **bit-width** -- fixed (a Python int), *relaxed and learned* (AdaQAT: a real variable ``N``,
  used as ``b = ceil(N)``; ``learn_bits=True``), or *derived* from step and range (DQ);
* **scale** -- a learned step (LSQ, DQ), a learned clip (PACT), or the tensor's own maximum
  (DoReFa);
* **grid** -- signed symmetric or unsigned, see :func:`tfadaqat.ops.integer_range`.

Parameters that depend on data (steps, clips) are initialised from the first tensor the
quantizer sees in :func:`initialization_mode`; an ``initialized`` flag variable records it, so
a saved and reloaded model never re-initialises.

Every quantizer serialises all its constructor arguments (``get_config``) and is registered
with Keras under the package ``"tfadaqat"``.
"""

from __future__ import annotations

import contextlib
import math
import types
from typing import Any, Dict, Optional, Tuple

from tfadaqat import ops
from tfadaqat._compat import base_quantizer_class, keras, tf

_PACKAGE = "tfadaqat"
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


def _read(value) -> float:
    """The value of a variable or tensor as a Python float (export-time reads of a grid).

    ``keras.backend.get_value`` also reads a variable created under a distribution strategy
    (a mirrored variable has no ``.numpy()`` in every context).
    """
    return float(keras.backend.get_value(value))


def _finite(values: tf.Tensor) -> tf.Tensor:
    """`values` with NaN and inf replaced by 0, for statistics that initialise variables."""
    return tf.where(tf.math.is_finite(values), values, tf.zeros_like(values))


def _over_replicas(value: tf.Tensor, reduction: str) -> tf.Tensor:
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


def _largest_magnitude(values: tf.Tensor) -> tf.Tensor:
    """``max |values|`` over the finite entries of the whole (global) batch."""
    return _over_replicas(tf.reduce_max(tf.abs(_finite(values))), "max")


def _mean_magnitude(values: tf.Tensor) -> tf.Tensor:
    """``mean |values|`` over the whole (global) batch (non-finite entries count as 0)."""
    return _over_replicas(tf.reduce_mean(tf.abs(_finite(values))), "mean")


class TensorQuantizer(base_quantizer_class):
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

    def get_config(self) -> Dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({arguments})"


class _RelaxedBitsMixin:
    """AdaQAT's relaxed bit-width part: a real variable ``N``, used as ``b = ceil(N)``.

    With ``learn_bits=False`` the bit-width is the fixed Python int `bits`, and no variable exists.
    """

    def _init_bits(self, bits: int, min_bits: int, max_bits: int, learn_bits: bool) -> None:
        self.min_bits = validate_bits("min_bits", min_bits)
        self.max_bits = validate_bits("max_bits", max_bits)
        if min_bits > max_bits:
            raise ValueError(f"min_bits ({min_bits}) must be <= max_bits ({max_bits})")
        self.bits = validate_bits("bits", bits, low=min_bits, high=max_bits)
        self.learn_bits = bool(learn_bits)

    def _bits_specs(self) -> Dict[str, tuple]:
        # frozen and rises are the state of AdaQAT's bit-width rule (tfadaqat.adaqat).
        if not self.learn_bits:
            return {}
        return {"relaxed_bits": (float(self.bits), False), "frozen": (0.0, False),
                "rises": (0.0, False)}

    def bit_width(self, variables):
        if not self.learn_bits:
            return tf.constant(self.bits, tf.int32)
        return ops.relaxed_to_integer_bits(variables["relaxed_bits"], self.min_bits, self.max_bits)

    def _bits_in_use(self, variables):
        return self.bit_width(variables) if self.learn_bits else self.bits

    def differentiable_bit_width(self, variables):
        if not self.learn_bits:
            return tf.constant(float(self.bits))
        return ops.straight_through(
            variables["relaxed_bits"], tf.cast(self.bit_width(variables), tf.float32))

    @property
    def lowest_bits(self) -> int:
        return self.min_bits if self.learn_bits else self.bits

    def set_bit_width(self, variables, bits: int) -> None:
        if not self.learn_bits:
            raise ValueError(
                f"{type(self).__name__} was built with learn_bits=False; its bit-width is fixed "
                f"at {self.bits}")
        validate_bits("bits", bits, low=self.min_bits, high=self.max_bits)
        variables["relaxed_bits"].assign(float(bits))

    def _bits_config(self) -> Dict[str, Any]:
        return {"bits": self.bits, "min_bits": self.min_bits, "max_bits": self.max_bits,
                "learn_bits": self.learn_bits}


@keras.utils.register_keras_serializable(package=_PACKAGE)
class DoReFaWeightQuantizer(_RelaxedBitsMixin, TensorQuantizer):
    """AdaQAT's weight quantizer: DoReFa with a relaxed, learned bit-width.

    Forward: :func:`tfadaqat.ops.dorefa_weight_quantize` at ``b = ceil(N)``.
    Gradient: STE through the rounding. ``N`` is not trained by gradient descent: AdaQAT's
    finite-difference rule updates it (``relaxed_bits`` variable, read and set with
    :func:`tfadaqat.bit_widths` / :func:`tfadaqat.set_bit_widths`).

    Args:
      bits: Initial (or fixed) bit-width.
      min_bits: Lowest bit-width ``b`` may take.
      max_bits: Highest bit-width ``b`` may take.
      learn_bits: Keep ``N`` in a variable, else `bits` is fixed.
      grid: "symmetric" (``2^b - 1`` values with zero, integers up to ``2^(b-1) - 1``: what
        int8 storage holds at every bit-width, so the default exports) or "dorefa" (the
        paper's ``2^b`` odd integers without zero, up to ``2^b - 1``: one more level, but
        at 8 bits its integers reach 255 and cannot be stored in int8).
      rescale: Multiply the ``[-1, 1]`` DoReFa weights by ``max|w|``.

    Example:
      >>> quantizer = DoReFaWeightQuantizer(bits=4)
      >>> quantizer.get_config()["bits"]
      4

    References:
      Gernigon et al., AdaQAT, arXiv:2404.16876; Zhou et al., DoReFa-Net, arXiv:1606.06160.
    """

    signed = True

    def __init__(self, bits: int = 8, min_bits: int = 2, max_bits: int = 8,
                 learn_bits: bool = True, grid: str = "symmetric", rescale: bool = True):
        self._init_bits(bits, min_bits, max_bits, learn_bits)
        if grid not in ("dorefa", "symmetric"):
            raise ValueError(f"grid must be 'dorefa' or 'symmetric', got {grid!r}")
        if grid == "symmetric" and min_bits < 2:
            raise ValueError("grid='symmetric' needs min_bits >= 2 (1 bit leaves only zero)")
        self.grid = grid
        self.rescale = bool(rescale)

    def _variable_specs(self):
        return self._bits_specs()

    def _quantize(self, tensor, variables):
        return ops.dorefa_weight_quantize(tensor, self._bits_in_use(variables), grid=self.grid,
                                          rescale=self.rescale)

    def integer_grid(self, tensor, variables):
        bits = int(_read(self.bit_width(variables)))
        scale = _read(self.integer_scale(tensor, variables))
        high = 2**bits - 1 if self.grid == "dorefa" else 2 ** (bits - 1) - 1
        return scale, -high, high

    def integer_scale(self, tensor, variables):
        """Scale that maps this quantizer's outputs to integers (used by export)."""
        return ops.dorefa_integer_scale(tensor, self.bit_width(variables), grid=self.grid,
                                        rescale=self.rescale)

    def get_config(self):
        return {**self._bits_config(), "grid": self.grid, "rescale": self.rescale}


@keras.utils.register_keras_serializable(package=_PACKAGE)
class PACTActivationQuantizer(_RelaxedBitsMixin, TensorQuantizer):
    """AdaQAT's activation quantizer: PACT with a learned clip and a relaxed bit-width.

    Forward: :func:`tfadaqat.ops.pact_quantize` at ``b = ceil(N)`` with clip ``alpha``.
    Gradient: ``dq/dx = 1`` inside ``[0, alpha]`` (``[-alpha, alpha]`` signed);
    ``dq/dalpha = 1`` above the clip (``-1`` below ``-alpha``). ``alpha`` starts at the
    largest finite ``|x|`` of the first batch.

    Args:
      bits: Initial (or fixed) bit-width.
      min_bits: Lowest bit-width.
      max_bits: Highest bit-width.
      learn_bits: Keep ``N`` in a variable, else `bits` is fixed.
      signed: Clip to ``[-alpha, alpha]`` (tensors that can be negative) instead of ``[0, alpha]``.

    References:
      Choi et al., PACT, arXiv:1805.06085; Gernigon et al., AdaQAT, arXiv:2404.16876.
    """

    def __init__(self, bits: int = 8, min_bits: int = 2, max_bits: int = 8,
                 learn_bits: bool = True, signed: bool = False):
        self._init_bits(bits, min_bits, max_bits, learn_bits)
        if signed and min_bits < 2:
            raise ValueError("a signed PACT quantizer needs min_bits >= 2")
        self.signed = bool(signed)

    def _variable_specs(self):
        return {"alpha": (6.0, True), **self._bits_specs()}

    def _initial_values(self, tensor):
        return {"alpha": tf.maximum(_largest_magnitude(tensor), 1e-3)}

    def _constraint(self, variable_name):
        if variable_name == "alpha":
            return lambda alpha: tf.maximum(alpha, 1e-3)
        return None

    def _quantize(self, tensor, variables):
        return ops.pact_quantize(tensor, variables["alpha"], self._bits_in_use(variables),
                                 signed=self.signed, bit_range=(self.min_bits, self.max_bits))

    def integer_grid(self, tensor, variables):
        low, high = ops.integer_range(int(_read(self.bit_width(variables))), self.signed)
        return _read(variables["alpha"]) / high, low, high

    def get_config(self):
        return {**self._bits_config(), "signed": self.signed}


@keras.utils.register_keras_serializable(package=_PACKAGE)
class LSQQuantizer(TensorQuantizer):
    """LSQ: fixed bit-width, learned step with LSQ's gradient scale (baseline; OQAT's quantizer).

    Forward: ``q = round(clip(x/s, Q_n, Q_p)) s`` (:func:`tfadaqat.ops.lsq_quantize`).
    Gradient: STE for ``x`` inside the range; ``dq/ds`` as in LSQ, scaled by
    ``1 / sqrt(numel Q_p)``. The step starts at ``2 mean|x| / sqrt(Q_p)`` of the first tensor.

    Args:
      bits: Bit-width (>= 2 when signed).
      signed: Symmetric signed grid (weights, signed activations), else unsigned.
      kind: "weight" (gradient scale over all elements) or "activation" (over the elements of
        one example, as LSQ does).

    References:
      Esser et al., LSQ, arXiv:1902.08153; Shen et al., OQAT, arXiv:2010.04354.
    """

    def __init__(self, bits: int = 8, signed: bool = True, kind: str = "weight"):
        self.bits = validate_bits("bits", bits, low=2 if signed else 1)
        if kind not in TENSOR_KINDS:
            raise ValueError(f"kind must be one of {TENSOR_KINDS}, got {kind!r}")
        self.signed = bool(signed)
        self.kind = kind

    def _variable_specs(self):
        return {"step": (1.0, True)}

    def _constraint(self, variable_name):
        return lambda step: tf.maximum(step, 1e-8)

    def _positive_high(self) -> int:
        return ops.integer_range(self.bits, self.signed)[1]

    def _initial_values(self, tensor):
        step = 2.0 * _mean_magnitude(tensor) / math.sqrt(self._positive_high())
        return {"step": tf.maximum(step, 1e-8)}

    def bit_width(self, variables):
        return tf.constant(self.bits, tf.int32)

    @property
    def lowest_bits(self) -> int:
        return self.bits

    def _quantize(self, tensor, variables):
        shape = tensor.shape if self.kind == "weight" else tensor.shape[1:]
        elements = shape.num_elements() or 1
        gradient_scale = 1.0 / math.sqrt(elements * self._positive_high())
        return ops.lsq_quantize(tensor, variables["step"], self.bits, signed=self.signed,
                                gradient_scale=gradient_scale, fused=not self.signed)

    def integer_grid(self, tensor, variables):
        low, high = ops.integer_range(self.bits, self.signed)
        return _read(variables["step"]), low, high

    def get_config(self):
        return {"bits": self.bits, "signed": self.signed, "kind": self.kind}


DQ_PARAMETRIZATIONS = ("U1", "U2", "U3")


@keras.utils.register_keras_serializable(package=_PACKAGE)
class DQQuantizer(TensorQuantizer):
    """DQ: learned step ``d`` and range ``q_max``, bit-width derived (Uhlich et al.).

    Forward: :func:`tfadaqat.ops.dq_quantize`, ``Q(x) = d round(clip(x, -q_max, q_max)/d)``.
    Gradients (U3, the default): inside, ``dQ/dd = (Q - x)/d``; outside,
    ``dQ/dq_max = sign(x)``. Bit-width: ``b = ceil(log2(round(q_max/d) + 1)) + 1`` (signed) or
    without ``+ 1`` (unsigned), see :func:`tfadaqat.ops.dq_bits`.

    U1 learns a real bit-width ``b`` and ``d`` (``q_max`` derived); U2 learns ``b`` and
    ``q_max`` (``d`` derived); ``b`` is rounded with an STE. After every optimizer update
    ``d`` is projected into ``[min_step, max_step]``; ``q_max`` is projected in the forward
    pass into the range of ``[min_bits, max_bits]`` bits.

    Args:
      bits: Bit-width the parameters start from.
      min_bits: Lowest bit-width the projection allows.
      max_bits: Highest bit-width the projection allows.
      signed: Symmetric range (weights), else ``[0, q_max]`` (post-ReLU activations).
      parametrization: "U3" (d, q_max), "U1" (b, d) or "U2" (b, q_max).
      power_of_two: Round ``d`` to a power of two in the forward pass (STE backward).
      min_step: Lower bound of ``d``.
      max_step: Upper bound of ``d``.

    References:
      Uhlich et al., Mixed Precision DNNs: All you need is a good parametrization,
      arXiv:1905.11452.
    """

    def __init__(self, bits: int = 8, min_bits: int = 2, max_bits: int = 8,
                 signed: bool = True, parametrization: str = "U3",
                 power_of_two: bool = False, min_step: float = 2.0**-12,
                 max_step: float = 2.0**4):
        self.min_bits = validate_bits("min_bits", min_bits, low=2 if signed else 1)
        self.max_bits = validate_bits("max_bits", max_bits)
        if min_bits > max_bits:
            raise ValueError(f"min_bits ({min_bits}) must be <= max_bits ({max_bits})")
        self.bits = validate_bits("bits", bits, low=min_bits, high=max_bits)
        if parametrization not in DQ_PARAMETRIZATIONS:
            raise ValueError(f"parametrization must be one of {DQ_PARAMETRIZATIONS}, "
                             f"got {parametrization!r}")
        if not 0 < min_step < max_step:
            raise ValueError(f"need 0 < min_step < max_step, got {min_step}, {max_step}")
        self.signed = bool(signed)
        self.parametrization = parametrization
        self.power_of_two = bool(power_of_two)
        self.min_step = float(min_step)
        self.max_step = float(max_step)

    def _high(self, bits):
        return ops.integer_range(bits, self.signed)[1]

    def _variable_specs(self):
        specs = {}
        if self.parametrization in ("U1", "U3"):
            specs["step"] = (2.0**-3, True)
        if self.parametrization in ("U2", "U3"):
            specs["q_max"] = (2.0**-3 * self._high(self.bits), True)
        if self.parametrization in ("U1", "U2"):
            specs["relaxed_bits"] = (float(self.bits), True)
        return specs

    def _constraint(self, variable_name):
        if variable_name == "step":
            return lambda step: tf.clip_by_value(step, self.min_step, self.max_step)
        if variable_name == "relaxed_bits":
            return lambda bits: tf.clip_by_value(bits, float(self.min_bits), float(self.max_bits))
        if variable_name == "q_max":
            return lambda q_max: tf.maximum(q_max, self.min_step)
        return None

    def _initial_values(self, tensor):
        # The paper's rule for weights, d = 2^floor(log2(max|x| / high)), applied to the first
        # tensor seen (weights, or the first batch of activations).
        largest = tf.maximum(_largest_magnitude(tensor), 1e-8)
        high = float(self._high(self.bits))
        step = tf.pow(2.0, tf.floor(tf.math.log(largest / high) / math.log(2.0)))
        step = tf.clip_by_value(step, self.min_step, self.max_step)
        values = {}
        if "step" in self._variable_specs():
            values["step"] = step
        if "q_max" in self._variable_specs():
            values["q_max"] = step * high
        return values

    def step_and_range(self, variables):
        """The ``(d, q_max)`` used in the forward pass, after projection and rounding."""
        if self.parametrization == "U3":
            step, q_max = variables["step"], variables["q_max"]
        else:
            bits = ops.round_bits_straight_through(
                tf.clip_by_value(variables["relaxed_bits"], float(self.min_bits),
                                 float(self.max_bits)))
            if self.parametrization == "U1":
                step = variables["step"]
                q_max = ops.dq_range_from_bits(step, bits, signed=self.signed)
            else:
                q_max = variables["q_max"]
                step = ops.dq_step_from_bits(q_max, bits, signed=self.signed)
        if self.power_of_two:
            step = ops.power_of_two_straight_through(step)
        q_max = tf.clip_by_value(q_max, step * self._high(self.min_bits),
                                 step * self._high(self.max_bits))
        return step, q_max

    def integer_grid(self, tensor, variables):
        step, q_max = (_read(value) for value in self.step_and_range(variables))
        high = int(math.floor(q_max / step + 0.5))  # saturation at d round(q_max / d)
        return step, (-high if self.signed else 0), high

    def _quantize(self, tensor, variables):
        step, q_max = self.step_and_range(variables)
        return ops.dq_quantize(tensor, step, q_max, signed=self.signed, fused=not self.signed)

    def bit_width(self, variables):
        step, q_max = self.step_and_range(variables)
        return ops.dq_bits(step, q_max, signed=self.signed)

    @property
    def lowest_bits(self) -> int:
        return self.min_bits

    def differentiable_bit_width(self, variables):
        """``ceil(log2(q_max/d + 1)) (+ 1)`` forward (on the grid, as :meth:`bit_width`);
        gradient of the relaxed ``log2(q_max/d + 1) (+ 1)`` with respect to ``d`` and ``q_max``.
        """
        step, q_max = self.step_and_range(variables)
        relaxed = tf.math.log(q_max / step + 1.0) / math.log(2.0) + (1.0 if self.signed else 0.0)
        return ops.straight_through(relaxed, tf.cast(self.bit_width(variables), tf.float32))

    def set_bit_width(self, variables, bits: int) -> None:
        validate_bits("bits", bits, low=self.min_bits, high=self.max_bits)
        if self.parametrization == "U3":
            variables["q_max"].assign(variables["step"] * float(self._high(bits)))
        else:
            variables["relaxed_bits"].assign(float(bits))

    def get_config(self):
        return {"bits": self.bits, "min_bits": self.min_bits, "max_bits": self.max_bits,
                "signed": self.signed, "parametrization": self.parametrization,
                "power_of_two": self.power_of_two, "min_step": self.min_step,
                "max_step": self.max_step}


@keras.utils.register_keras_serializable(package=_PACKAGE)
class FixedGridQuantizer(TensorQuantizer):
    """A tensor on a fixed grid: the outputs of softmax, sigmoid and tanh.

    TFLite's int8 kernels for these functions require a fixed output quantization (softmax and
    logistic: step 1/256, integers 0..255 stored with zero point -128; tanh: step 1/128,
    integers -128..127), so their outputs are trained on exactly that grid, whatever the
    method. Nothing is learned.

    Forward: ``q = step clip(round(x / step), low, high)`` (TensorFlow's FakeQuant, exact for
    these grids because ``low step`` is 0 or the range is symmetric about a whole zero point).
    Gradient: straight through inside ``[low step, high step]``, zero outside.

    Args:
      step: The grid's step.
      low: Smallest integer.
      high: Largest integer; ``high - low`` must be below 256 (8 bits).

    Example:
      >>> FixedGridQuantizer(1 / 256, 0, 255).integer_grid(None, {})
      (0.00390625, 0, 255)
    """

    def __init__(self, step: float = 1.0 / 256, low: int = 0, high: int = 255):
        step = float(step)
        if not step > 0:
            raise ValueError(f"step must be positive, got {step}")
        for name, value in (("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if not 0 < high - low <= 255:
            raise ValueError(f"high - low must lie in 1..255 (8 bits), got {low}..{high}")
        self.step, self.low, self.high = step, low, high
        self.signed = low < 0

    def _variable_specs(self):
        return {}

    def _quantize(self, tensor, variables):
        return tf.quantization.fake_quant_with_min_max_args(
            tensor, min=self.low * self.step, max=self.high * self.step, num_bits=8)

    def bit_width(self, variables):
        return tf.constant(8, tf.int32)

    @property
    def lowest_bits(self) -> int:
        return 8

    def integer_grid(self, tensor, variables):
        return self.step, self.low, self.high

    def get_config(self):
        return {"step": self.step, "low": self.low, "high": self.high}


QUANTIZER_CLASSES = {cls.__name__: cls for cls in
                     (DoReFaWeightQuantizer, PACTActivationQuantizer, LSQQuantizer, DQQuantizer,
                      FixedGridQuantizer)}


def serialize(quantizer: Optional[TensorQuantizer]):
    """JSON-safe description of `quantizer` (None stays None)."""
    if quantizer is None:
        return None
    return {"class_name": type(quantizer).__name__, "config": quantizer.get_config()}


def deserialize(config) -> Optional[TensorQuantizer]:
    """The quantizer :func:`serialize` described (None stays None).

    Raises:
      ValueError: If `config` is not such a description of a tfadaqat quantizer.
    """
    if config is not None and not (isinstance(config, dict) and "class_name" in config):
        raise ValueError(f"deserialize expects None or {{'class_name': ..., 'config': ...}}, "
                         f"got {config!r}")
    return get(config)


def get(identifier) -> Optional[TensorQuantizer]:
    """Looks a quantizer up from None, a class name, a serialized dict or an instance.

    Raises:
      ValueError: If `identifier` names no tfadaqat quantizer.
    """
    if identifier is None or isinstance(identifier, TensorQuantizer):
        return identifier
    if isinstance(identifier, str):
        name = identifier.split(">")[-1]
        if name in QUANTIZER_CLASSES:
            return QUANTIZER_CLASSES[name]()
    if isinstance(identifier, dict) and "class_name" in identifier:
        name = str(identifier["class_name"]).split(">")[-1]
        if name in QUANTIZER_CLASSES:
            return QUANTIZER_CLASSES[name].from_config(identifier.get("config", {}))
    raise ValueError(f"Could not interpret quantizer identifier {identifier!r}; expected None, "
                     f"an instance, or one of {sorted(QUANTIZER_CLASSES)} (name or "
                     "{'class_name': ..., 'config': ...})")
