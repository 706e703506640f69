"""How each TFLite runtime turns an int32 accumulator into an int8 output (pure math).

An int8 kernel (convolution, dense, add, ...) computes an exact int32 sum ``a`` and
requantizes it with a real multiplier ``M`` (input scale x weight scale / output scale):
``q = zero_point + round(a M)``, clamped to int8. The runtimes round differently:

* **XNNPACK** (LiteRT's default CPU kernels) rounds once: :func:`single_rounding`, what the
  Keras model's quantizer computes too (up to float32 ties).
* **TFLite's reference kernels** (LiteRT's ``BUILTIN_REF`` and TensorFlow Lite Micro) write
  ``M = m 2^-e`` with a Q31 integer ``m`` in ``[2^30, 2^31)``, take ``round(a m / 2^31)``
  (gemmlowp's saturating rounding doubling high multiply) and then round that by ``2^-e``
  (rounding divide by a power of two): :func:`reference_rounding`. Rounding twice differs from
  rounding once where ``a M`` lies within ``2^-(e + 1)`` below a half (the first rounding
  lands on the half, the second rounds it away from zero): for a fraction spread evenly, a
  share ``2^-(e + 1)`` of the outputs, one step higher in magnitude
  (:func:`double_rounding_share`).

A network's typical multipliers are ``2^-5 .. 2^-9``, so 0.1-1.6% of each layer's outputs on the
reference kernels are one step off the single rounding, and the differences compound from
layer to layer (the quickstart's model: up to 32 output steps).

Example (``a M`` = 0.375, 0.75, 1.125; ``M = 0.75 x 2^-1``, so ``e = 1``):
  >>> single_rounding(np.array([1, 2, 3]), 0.375)
  array([0, 1, 1])
  >>> reference_rounding(np.array([1, 2, 3]), 0.375)   # 0.75 rounds to 1, then 1/2 to 1
  array([1, 1, 1])
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

_Q31 = 1 << 31


def quantized_multiplier(multiplier: float) -> Tuple[int, int]:
    """``(m, shift)`` with ``multiplier = m 2^(shift - 31)`` and ``m`` in ``[2^30, 2^31)``
    (TFLite's ``QuantizeMultiplier``); ``m = 0`` for a zero multiplier.

    Raises:
      ValueError: For a negative or non-finite multiplier.
    """
    if not np.isfinite(multiplier) or multiplier < 0:
        raise ValueError(f"multiplier must be a finite number >= 0, got {multiplier!r}")
    if multiplier == 0:
        return 0, 0
    fraction, shift = np.frexp(multiplier)  # multiplier = fraction 2^shift, fraction in [1/2, 1)
    fixed = int(np.round(fraction * _Q31))
    if fixed == _Q31:
        fixed, shift = fixed // 2, shift + 1
    return fixed, int(shift)


def single_rounding(accumulators, multiplier: float) -> np.ndarray:
    """``round(a M)``, halves away from zero: the exact product rounded once."""
    exact = np.asarray(accumulators, np.float64) * float(multiplier)
    return (np.sign(exact) * np.floor(np.abs(exact) + 0.5)).astype(np.int64)


def reference_rounding(accumulators, multiplier: float) -> np.ndarray:
    """The reference kernels' ``MultiplyByQuantizedMultiplier(a, m, shift)`` for the real
    `multiplier` (see :func:`multiply_by_quantized_multiplier`)."""
    fixed, shift = quantized_multiplier(multiplier)
    return multiply_by_quantized_multiplier(accumulators, fixed, shift)


def multiply_by_quantized_multiplier(accumulators, fixed, shift) -> np.ndarray:
    """TFLite's ``MultiplyByQuantizedMultiplier(a, m, shift)``, elementwise; `fixed` and
    `shift` (from :func:`quantized_multiplier`) may be arrays broadcast against `a` (one per
    output channel, channels last).

    Forward: ``x = round(a 2^max(shift, 0) m / 2^31)`` (halves up, towards +inf: gemmlowp's
    nudge and C's truncating division), then ``round(x / 2^max(-shift, 0))`` (halves away
    from zero). Computed in int64: ``|a 2^max(shift, 0)| < 2^31`` as in the kernels' int32.
    """
    fixed = np.asarray(fixed, np.int64)
    shift = np.asarray(shift, np.int64)
    values = np.asarray(accumulators, np.int64) << np.maximum(shift, 0)
    product = values * fixed
    nudge = np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    shifted = product + nudge
    high = np.where(shifted >= 0, shifted // _Q31, -((-shifted) // _Q31))  # toward zero
    exponent = np.maximum(-shift, 0)
    mask = (np.int64(1) << exponent) - 1
    threshold = (mask >> 1) + (high < 0)
    return (high >> exponent) + ((high & mask) > threshold)


def multiply_by_reduced_multiplier(accumulators, fixed, shift) -> np.ndarray:
    """TFLite's 64-bit ``MultiplyByQuantizedMultiplier(int64 a, m, shift)``, which LiteRT's
    built-in reference FULLY_CONNECTED uses: one rounding, with the Q31 multiplier first
    reduced to 16 bits.

    Forward: ``m16 = (m + 2^15) >> 16`` (at most ``2^15 - 1``), then
    ``(a m16 + 2^(14 - shift)) >> (15 - shift)``: halves up, towards +inf.
    """
    fixed = np.asarray(fixed, np.int64)
    shift = np.asarray(shift, np.int64)
    reduced = np.where(fixed < 0x7FFF0000, (fixed + (1 << 15)) >> 16, 0x7FFF)
    total_shift = 15 - shift
    product = np.asarray(accumulators, np.int64) * reduced + (np.int64(1) << (total_shift - 1))
    return product >> total_shift


def double_rounding_share(multiplier: float) -> float:
    """The share of outputs the reference kernels put one step off :func:`single_rounding`
    when the fraction of ``a M`` is spread evenly: ``2^-(e + 1)`` for ``M = m 2^-e``."""
    _, shift = quantized_multiplier(multiplier)
    exponent = max(-shift, 0)
    return 0.0 if exponent == 0 else 2.0 ** -(exponent + 1)
