"""Fake-quantization math: pure functions with straight-through (STE) gradients.

Every function here maps a float tensor onto a uniform grid and back ("fake quantization")
and defines the gradient used to train through it. They own no variables: the stateful
quantizers of :mod:`tfadaqat.quantizers` create the learned parameters (step, range, clip,
bit-width) and call these functions.

Rounding is *round half up*, ``floor(v + 1/2)``, everywhere: it is what TensorFlow's fused
``FakeQuantWithMinMaxVars`` kernel does, and the fused kernel is what keeps a quantized
training step close to the cost of a float one (one element-wise pass instead of four).
Large activation tensors take the fused path; weight tensors, which are small, take
element-wise formulas that put values exactly on ``k * step``. LSQ's and DQ's element-wise
forward and their backward pass (input gradient, step and range gradients) run in one pass
each, in the kernels of :mod:`tfadaqat.fused_kernels` (TensorFlow ops where they cannot be
built: the same values, and the same sums to float rounding).

Integer grids. A *signed* tensor of ``b`` bits uses the symmetric, narrow grid
``k in [-(2^(b-1) - 1), 2^(b-1) - 1]`` (``2^b - 1`` values, zero point 0, as TFLite's int8
weights require); an *unsigned* tensor uses ``k in [0, 2^b - 1]``.

References:
  AdaQAT: Gernigon et al., arXiv:2404.16876. DoReFa: Zhou et al., arXiv:1606.06160.
  PACT: Choi et al., arXiv:1805.06085. LSQ: Esser et al., arXiv:1902.08153.
  DQ: Uhlich et al., arXiv:1905.11452. OQAT: Shen et al., arXiv:2010.04354.
"""

from __future__ import annotations

from typing import Sequence, Union

from tfadaqat import fused_kernels
from tfadaqat._compat import tf

Bits = Union[int, tf.Tensor]

#: Bit-widths the fused TensorFlow kernel accepts.
FUSED_KERNEL_BITS = (2, 16)


def round_half_up(values: tf.Tensor) -> tf.Tensor:
    """Rounds to the nearest integer, ties upwards: ``floor(v + 1/2)``. No gradient defined."""
    return tf.floor(values + 0.5)


def straight_through(values: tf.Tensor, quantized: tf.Tensor) -> tf.Tensor:
    """Returns `quantized` in the forward pass and passes the gradient to `values` unchanged."""
    return values + tf.stop_gradient(quantized - values)


def integer_range(bits: Bits, signed: bool):
    """The integer grid ``(low, high)`` of a `bits`-bit tensor.

    Signed: ``(-(2^(b-1) - 1), 2^(b-1) - 1)``; unsigned: ``(0, 2^b - 1)``. Works on Python ints
    (returns ints) and on tensors (returns float32 tensors).

    Example:
      >>> integer_range(4, signed=True)
      (-7, 7)
    """
    if isinstance(bits, int):
        if signed:
            return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
        return 0, 2**bits - 1
    bits = tf.cast(bits, tf.float32)
    if signed:
        high = tf.pow(2.0, bits - 1.0) - 1.0
        return -high, high
    return tf.zeros_like(bits), tf.pow(2.0, bits) - 1.0


def bit_length(values: tf.Tensor, max_bits: int = 16) -> tf.Tensor:
    """Number of binary digits of non-negative integers (``ceil(log2(v + 1))``), exactly.

    Computed by comparison with powers of two, so no logarithm rounding can add a bit.
    """
    values = tf.convert_to_tensor(values, tf.float32)
    powers = tf.constant([2.0**j for j in range(max_bits + 1)], tf.float32)
    return tf.reduce_sum(tf.cast(values[..., None] >= powers, tf.int32), axis=-1)


def fused_fake_quantize(x: tf.Tensor, low: tf.Tensor, high: tf.Tensor, bits: Bits, *,
                        narrow_range: bool = False,
                        bit_range: Sequence[int] = (2, 8)) -> tf.Tensor:
    """Fake-quantizes `x` onto ``2^bits - 1`` steps between `low` and `high` with the fused kernel.

    Forward (TensorFlow ``FakeQuantWithMinMaxVars``, with ``low`` nudged so zero is on the grid):
    ``q = round_half_up((clip(x, low, high) - low) / s) * s + low``,
    ``s = (high - low) / (2^b - 1 - narrow_range)``.
    Gradient: ``dq/dx = 1`` on ``[low, high]``, else 0; ``dq/dlow = 1`` where ``x < low``;
    ``dq/dhigh = 1`` where ``x > high``.

    Args:
      x: Tensor to quantize.
      low: Scalar lower end of the range.
      high: Scalar upper end of the range.
      bits: A Python int, or an integer scalar tensor whose value lies in `bit_range` (it is
        clipped into it). TensorFlow's kernel takes the bit-width as a static attribute, so a
        tensor goes to :func:`tfadaqat.fused_kernels.fake_quantize` (the same kernel reading
        the bit-width at run time) where the fused kernels are built and `bit_range` lies in
        ``[2, 16]``, else to a `tf.switch_case` over one kernel per bit-width.
      narrow_range: Use ``2^b - 1`` values instead of ``2^b`` (symmetric signed grids).
      bit_range: Inclusive ``(min, max)`` of the values a tensor `bits` may take.

    Returns:
      The fake-quantized tensor, shaped like `x`.
    """
    if isinstance(bits, int):
        return _fused_kernel(x, low, high, bits, narrow_range)
    lowest, highest = bit_range
    if lowest >= FUSED_KERNEL_BITS[0] and highest <= FUSED_KERNEL_BITS[1]:
        # One kernel that reads the bit-width (tfadaqat.fused_kernels), where it is built.
        bits = tf.clip_by_value(tf.cast(bits, tf.int32), lowest, highest)
        quantized = fused_kernels.fake_quantize(x, low, high, bits, narrow_range=narrow_range)
        if quantized is not None:
            return quantized
    branches = [
        (lambda b=b: _fused_kernel(x, low, high, b, narrow_range))
        for b in range(lowest, highest + 1)
    ]
    index = tf.clip_by_value(tf.cast(bits, tf.int32) - lowest, 0, highest - lowest)
    return tf.switch_case(index, branches)


def _fused_kernel(x, low, high, bits: int, narrow_range: bool):
    if bits >= FUSED_KERNEL_BITS[0]:
        return tf.quantization.fake_quant_with_min_max_vars(
            x, low, high, num_bits=bits, narrow_range=narrow_range)
    # One bit: the kernel stops at two; the same grid ({low, high}) element-wise.
    clipped = tf.clip_by_value(x, low, high)
    step = high - low
    return straight_through(clipped, low + round_half_up((clipped - low) / step) * step)


def pact_quantize(x: tf.Tensor, alpha: tf.Tensor, bits: Bits, *, signed: bool = False,
                  bit_range: Sequence[int] = (2, 8)) -> tf.Tensor:
    """PACT activation quantizer with a learned clip `alpha` (AdaQAT's activations).

    Forward, unsigned: ``y = clip(x, 0, alpha)``, ``q = round(y (2^b - 1) / alpha) alpha / (2^b - 1)``.
    Signed: ``y = clip(x, -alpha, alpha)`` on the symmetric grid of ``2^b - 1`` values,
    step ``alpha / (2^(b-1) - 1)``.
    Gradient: ``dq/dx = 1`` inside the clip range, 0 outside; ``dq/dalpha = 1`` where
    ``x > alpha``, ``-1`` where ``x < -alpha`` (signed), 0 inside (STE through the rounding).

    Args:
      x: Activations.
      alpha: Scalar clip level, > 0.
      bits: Bit-width (int or integer tensor in `bit_range`).
      signed: Clip to ``[-alpha, alpha]`` instead of ``[0, alpha]``.
      bit_range: Inclusive range of values a tensor `bits` may take.

    Returns:
      Quantized activations.

    Example:
      >>> pact_quantize(tf.constant([-1.0, 0.4, 0.5, 3.0]), tf.constant(1.0), 1).numpy()
      array([0., 0., 1., 1.], dtype=float32)

    References:
      Choi et al., PACT, arXiv:1805.06085; Gernigon et al., AdaQAT, arXiv:2404.16876.
    """
    low = -alpha if signed else tf.zeros_like(alpha)
    return fused_fake_quantize(x, low, alpha, bits, narrow_range=signed, bit_range=bit_range)


def dorefa_weight_quantize(weights: tf.Tensor, bits: Bits, *, grid: str = "dorefa",
                           rescale: bool = True) -> tf.Tensor:
    """DoReFa weight quantizer (AdaQAT's weights), STE through the rounding.

    Forward, ``grid="dorefa"`` (the paper): ``t = tanh(w)``,
    ``u = t / (2 max|t|) + 1/2`` in ``[0, 1]``, ``q = round(u L) / L`` with ``L = 2^b - 1``,
    weights used ``2q - 1``: ``2^b`` odd multiples of ``1/L``, zero excluded.
    ``grid="symmetric"``: ``u = t / max|t|`` in ``[-1, 1]``, ``q = round(u L) / L`` with
    ``L = 2^(b-1) - 1``: ``2^b - 1`` values including zero (fits int8 at 8 bits).
    With `rescale`, the result is multiplied by ``max|w|`` (held constant in the gradient),
    so a float checkpoint keeps its output scale; the paper's weights lie in ``[-1, 1]``.
    Gradient: STE through ``round``; exact through ``tanh`` and the normalisation.

    Args:
      weights: Float weights.
      bits: Bit-width, int or tensor (any value >= 1 for "dorefa", >= 2 for "symmetric").
      grid: "dorefa" or "symmetric".
      rescale: Multiply by ``max|w|``.

    Returns:
      Quantized weights.

    Raises:
      ValueError: If `grid` is not one of the allowed values.

    References:
      Zhou et al., DoReFa-Net, arXiv:1606.06160.
    """
    if grid not in ("dorefa", "symmetric"):
        raise ValueError(f"grid must be 'dorefa' or 'symmetric', got {grid!r}")
    bits_float = tf.cast(bits, tf.float32)
    tanh = tf.tanh(weights)
    largest = tf.maximum(tf.reduce_max(tf.abs(tanh)), 1e-12)
    if grid == "dorefa":
        levels = tf.pow(2.0, bits_float) - 1.0
        unit = tanh / (2.0 * largest) + 0.5
        quantized = straight_through(unit, round_half_up(unit * levels) / levels)
        result = 2.0 * quantized - 1.0
    else:
        levels = tf.pow(2.0, bits_float - 1.0) - 1.0
        unit = tanh / largest
        result = straight_through(unit, round_half_up(unit * levels) / levels)
    if rescale:
        result = result * tf.stop_gradient(tf.reduce_max(tf.abs(weights)))
    return result


def dorefa_integer_scale(weights: tf.Tensor, bits: Bits, *, grid: str = "dorefa",
                         rescale: bool = True) -> tf.Tensor:
    """Scale ``s`` such that every output of :func:`dorefa_weight_quantize` is ``s`` times an integer.

    "dorefa": ``s = 1/L`` (integers ``2k - L``, odd, in ``[-L, L]``, ``L = 2^b - 1``);
    "symmetric": ``s = 1/(2^(b-1) - 1)``; both times ``max|w|`` with `rescale`.
    """
    bits_float = tf.cast(bits, tf.float32)
    if grid == "dorefa":
        scale = 1.0 / (tf.pow(2.0, bits_float) - 1.0)
    else:
        scale = 1.0 / (tf.pow(2.0, bits_float - 1.0) - 1.0)
    if rescale:
        scale = scale * tf.reduce_max(tf.abs(weights))
    return scale


def lsq_quantize(x: tf.Tensor, step: tf.Tensor, bits: int, *, signed: bool,
                 gradient_scale: float = 1.0, fused: bool = True) -> tf.Tensor:
    """LSQ quantizer: fixed bit-width, learned step (OQAT's quantizer and the fixed-bit baseline).

    Forward: ``q = round(clip(x / s, Q_n, Q_p)) s`` with ``(Q_n, Q_p) = integer_range(b, signed)``.
    Gradient: ``dq/dx = 1`` for ``Q_n <= x/s <= Q_p``, else 0;
    ``dq/ds = (round(x/s) - x/s)`` inside, ``Q_n`` below, ``Q_p`` above, all multiplied by
    `gradient_scale` (LSQ uses ``1 / sqrt(numel * Q_p)``).

    Args:
      x: Tensor to quantize.
      step: Scalar step ``s`` > 0.
      bits: Fixed bit-width (Python int; >= 2 when signed).
      signed: Symmetric signed grid, else unsigned.
      gradient_scale: Factor applied to the step gradient.
      fused: Use the fused kernel (activations); else element-wise formulas (weights), which
        put the outputs exactly on ``k * s``.

    Returns:
      Quantized tensor.

    References:
      Esser et al., LSQ, arXiv:1902.08153; Shen et al., OQAT, arXiv:2010.04354.
    """
    low_int, high_int = integer_range(bits, signed)
    narrow = bool(signed)
    # Variables (mirrored ones too) enter the custom gradient as tensors read from them.
    x, step = tf.convert_to_tensor(x), tf.convert_to_tensor(step)

    @tf.custom_gradient
    def quantize(x, step):
        low, high = low_int * step, high_int * step
        if fused:
            y = fused_fake_quantize(x, low, high, bits, narrow_range=narrow)
        else:
            y = fused_kernels.grid_quantize(x, step, integer_low=low_int, integer_high=high_int)

        def gradient(upstream):
            inside, error_sum, below, above = fused_kernels.quantizer_gradient(
                upstream, x, y, low, high, nudge=fused)
            step_gradient = error_sum / step + low_int * below + high_int * above
            return inside, step_gradient * gradient_scale

        return y, gradient

    return quantize(x, step)


def dq_quantize(x: tf.Tensor, step: tf.Tensor, q_max: tf.Tensor, *, signed: bool
                ) -> tf.Tensor:
    """DQ quantizer in the U3 parametrization (learned step `d` and range `q_max`).

    Forward: ``Q(x) = d round(clip(x, -q_max, q_max) / d)`` (signed) or
    ``d round(clip(x, 0, q_max) / d)`` (unsigned). Inside the range this is the paper's
    ``sign(x) d floor(|x|/d + 1/2)`` (ties rounded up rather than away from zero); outside it
    saturates at ``d round(q_max/d)``, the grid point nearest ``q_max``, instead of ``q_max``
    itself, so every output is ``d`` times an integer and exports exactly to integer storage.
    Gradient (the paper's): inside, ``dQ/dd = (Q - x)/d``, ``dQ/dq_max = 0``, ``dQ/dx = 1``;
    outside, ``dQ/dd = 0``, ``dQ/dq_max = sign(x)``, ``dQ/dx = 0``.

    Args:
      x: Tensor to quantize.
      step: Scalar step ``d`` > 0.
      q_max: Scalar range ``q_max`` >= ``d``.
      signed: Symmetric range, else ``[0, q_max]``.

    Returns:
      Quantized tensor.

    References:
      Uhlich et al., Mixed Precision DNNs, arXiv:1905.11452.
    """
    x = tf.convert_to_tensor(x)
    step, q_max = tf.convert_to_tensor(step), tf.convert_to_tensor(q_max)

    @tf.custom_gradient
    def quantize(x, step, q_max):
        # One pass where the fused kernels are built (tfadaqat.fused_kernels): clip, round, and
        # every output exactly d times an integer.
        low = -q_max if signed else tf.zeros_like(q_max)
        y = fused_kernels.grid_quantize(x, step, clip_low=low, clip_high=q_max)

        def gradient(upstream):
            inside, error_sum, below, above = fused_kernels.quantizer_gradient(
                upstream, x, y, low, q_max, nudge=False)
            step_gradient = error_sum / step
            q_max_gradient = above - below if signed else above
            return inside, step_gradient, q_max_gradient

        return y, gradient

    return quantize(x, step, q_max)


def dq_bits(step: tf.Tensor, q_max: tf.Tensor, *, signed: bool) -> tf.Tensor:
    """Bit-width implied by DQ's step and range, from the grid the forward pass uses.

    ``K = round(q_max / d)`` steps on each side; ``b = ceil(log2(K + 1)) + 1`` signed,
    ``ceil(log2(K + 1))`` unsigned (the paper's ``ceil(log2(q_max/d + 1) (+ 1))`` evaluated on
    the grid point nearest ``q_max``, exactly, without logarithm round-off).

    Example:
      >>> int(dq_bits(tf.constant(0.5), tf.constant(63.5), signed=True))
      8
    """
    steps = tf.maximum(round_half_up(q_max / step), 1.0)
    return bit_length(steps) + (1 if signed else 0)


def dq_range_from_bits(step: tf.Tensor, bits: tf.Tensor, *, signed: bool) -> tf.Tensor:
    """``q_max = (2^(b-1) - 1) d`` (signed) or ``(2^b - 1) d`` (unsigned): U1 derives the range."""
    return integer_range(bits, signed)[1] * step


def dq_step_from_bits(q_max: tf.Tensor, bits: tf.Tensor, *, signed: bool) -> tf.Tensor:
    """``d = q_max / (2^(b-1) - 1)`` (signed) or ``q_max / (2^b - 1)``: U2 derives the step."""
    return q_max / integer_range(bits, signed)[1]


def round_bits_straight_through(relaxed_bits: tf.Tensor) -> tf.Tensor:
    """``round(b)`` forward, identity gradient: real-valued bit-widths of DQ's U1 and U2."""
    return straight_through(relaxed_bits, round_half_up(relaxed_bits))


def power_of_two_straight_through(step: tf.Tensor) -> tf.Tensor:
    """``2^round(log2 d)`` forward, identity gradient: DQ's hardware-friendly step."""
    return straight_through(step, tf.pow(2.0, round_half_up(tf.math.log(step) / tf.math.log(2.0))))


def relaxed_to_integer_bits(relaxed_bits: tf.Tensor, min_bits: int, max_bits: int) -> tf.Tensor:
    """AdaQAT's integer bit-width ``b = ceil(N)``, clipped to ``[min_bits, max_bits]``."""
    return tf.clip_by_value(tf.cast(tf.math.ceil(relaxed_bits), tf.int32), min_bits, max_bits)
