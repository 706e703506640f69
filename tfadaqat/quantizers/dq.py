"""DQ's quantizer: learned step and range, the bit-width derived from them (Uhlich et al.)."""

from __future__ import annotations

import math

from tfadaqat import ops
from tfadaqat._compat import keras, tf
from tfadaqat.quantizers.base import (PACKAGE, TensorQuantizer, largest_magnitude, read_float,
                                      validate_bits)

DQ_PARAMETRIZATIONS = ("U1", "U2", "U3")


@keras.utils.register_keras_serializable(package=PACKAGE)
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
        largest = tf.maximum(largest_magnitude(tensor), 1e-8)
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
        step, q_max = (read_float(value) for value in self.step_and_range(variables))
        high = int(math.floor(q_max / step + 0.5))  # saturation at d round(q_max / d)
        return step, (-high if self.signed else 0), high

    def _quantize(self, tensor, variables):
        step, q_max = self.step_and_range(variables)
        return ops.dq_quantize(tensor, step, q_max, signed=self.signed)

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
