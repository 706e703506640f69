"""AdaQAT's quantizers: DoReFa weights and PACT activations with a relaxed bit-width.

Both keep AdaQAT's bit-width as a real variable ``N`` used as ``b = ceil(N)`` (the
:class:`RelaxedBits` part), which :mod:`tfadaqat.adaqat`'s finite-difference rule updates,
not gradient descent. With ``learn_bits=False`` the bit-width is a fixed Python int.
"""

from __future__ import annotations

from typing import Any, Dict

from tfadaqat import ops
from tfadaqat._compat import keras, tf
from tfadaqat.quantizers.base import (PACKAGE, TensorQuantizer, largest_magnitude, read_float,
                                      validate_bits)


class RelaxedBits:
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


@keras.utils.register_keras_serializable(package=PACKAGE)
class DoReFaWeightQuantizer(RelaxedBits, TensorQuantizer):
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
        bits = int(read_float(self.bit_width(variables)))
        scale = read_float(self.integer_scale(tensor, variables))
        high = 2**bits - 1 if self.grid == "dorefa" else 2 ** (bits - 1) - 1
        return scale, -high, high

    def integer_scale(self, tensor, variables):
        """Scale that maps this quantizer's outputs to integers (used by export)."""
        return ops.dorefa_integer_scale(tensor, self.bit_width(variables), grid=self.grid,
                                        rescale=self.rescale)

    def get_config(self):
        return {**self._bits_config(), "grid": self.grid, "rescale": self.rescale}


@keras.utils.register_keras_serializable(package=PACKAGE)
class PACTActivationQuantizer(RelaxedBits, TensorQuantizer):
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
        return {"alpha": tf.maximum(largest_magnitude(tensor), 1e-3)}

    def _constraint(self, variable_name):
        if variable_name == "alpha":
            return lambda alpha: tf.maximum(alpha, 1e-3)
        return None

    def _quantize(self, tensor, variables):
        return ops.pact_quantize(tensor, variables["alpha"], self._bits_in_use(variables),
                                 signed=self.signed, bit_range=(self.min_bits, self.max_bits))

    def integer_grid(self, tensor, variables):
        low, high = ops.integer_range(int(read_float(self.bit_width(variables))), self.signed)
        return read_float(variables["alpha"]) / high, low, high

    def get_config(self):
        return {**self._bits_config(), "signed": self.signed}
