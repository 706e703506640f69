"""NumPy re-implementation of tfadaqat's quantizer math: the independent oracle of the tests.

Written from the formulas in the docstrings of :mod:`tfadaqat.ops` and :mod:`tfadaqat.cost`, without
TensorFlow. Each function returns the forward output and the gradients for an upstream
gradient `upstream`, using float32 arithmetic where the kernels do.
"""

from __future__ import annotations

import numpy as np

f32 = np.float32


def round_half_up(values):
    return np.floor(values + f32(0.5))


def integer_range(bits: int, signed: bool):
    if signed:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def fake_quant_kernel(x, low, high, bits, narrow_range):
    """TensorFlow's FakeQuantWithMinMaxVars forward (nudged range, round half up), float32."""
    x = np.asarray(x, f32)
    quant_min = f32(1 if narrow_range else 0)
    quant_max = f32(2**bits - 1)
    scale = (f32(high) - f32(low)) / (quant_max - quant_min)
    zero_point_from_min = quant_min - f32(low) / scale
    nudged_zero_point = np.clip(np.round(zero_point_from_min), quant_min, quant_max)
    nudged_low = (quant_min - nudged_zero_point) * scale
    nudged_high = (quant_max - nudged_zero_point) * scale
    clamped = np.clip(x, nudged_low, nudged_high)
    inverse = f32(1.0) / scale
    return (np.floor((clamped - nudged_low) * inverse + f32(0.5)) * scale + nudged_low).astype(f32)


def pact(x, alpha, bits, signed, upstream):
    x = np.asarray(x, f32)
    low = -alpha if signed else 0.0
    y = fake_quant_kernel(x, low, alpha, bits, narrow_range=signed)
    inside = (x >= low) & (x <= alpha)
    d_x = np.where(inside, upstream, 0.0)
    d_alpha = np.sum(upstream[x > alpha]) - (np.sum(upstream[x < low]) if signed else 0.0)
    return y, d_x, d_alpha


def lsq(x, step, bits, signed, upstream, gradient_scale=1.0):
    x = np.asarray(x, np.float64)
    low, high = integer_range(bits, signed)
    v = x / step
    y = step * np.clip(round_half_up(v), low, high)
    inside = (v >= low) & (v <= high)
    d_x = np.where(inside, upstream, 0.0)
    d_step = (np.sum(upstream[inside] * (y[inside] - x[inside]) / step)
              + low * np.sum(upstream[v < low]) + high * np.sum(upstream[v > high]))
    return y, d_x, d_step * gradient_scale


def dq(x, step, q_max, signed, upstream):
    x = np.asarray(x, np.float64)
    low = -q_max if signed else 0.0
    y = step * round_half_up(np.clip(x, low, q_max) / step)
    inside = (x >= low) & (x <= q_max)
    d_x = np.where(inside, upstream, 0.0)
    d_step = np.sum(upstream[inside] * (y[inside] - x[inside]) / step)
    d_q_max = np.sum(upstream[x > q_max]) - (np.sum(upstream[x < low]) if signed else 0.0)
    return y, d_x, d_step, d_q_max


def dq_bits(step, q_max, signed):
    steps = max(int(round_half_up(q_max / step)), 1)
    return steps.bit_length() + (1 if signed else 0)


def dorefa(weights, bits, grid="dorefa", rescale=True):
    weights = np.asarray(weights, np.float64)
    tanh = np.tanh(weights)
    largest = max(np.max(np.abs(tanh)), 1e-12)
    if grid == "dorefa":
        levels = 2**bits - 1
        unit = tanh / (2 * largest) + 0.5
        result = 2 * round_half_up(unit * levels) / levels - 1
    else:
        levels = 2 ** (bits - 1) - 1
        result = round_half_up(tanh / largest * levels) / levels
    if rescale:
        result = result * np.max(np.abs(weights))
    return result


def dorefa_surrogate(weights, grid="dorefa", rescale=True):
    """DoReFa without the rounding: the function whose gradient the STE uses."""
    weights = np.asarray(weights, np.float64)
    tanh = np.tanh(weights)
    largest = np.max(np.abs(tanh))
    result = tanh / largest  # both grids: 2 (t / 2m + 1/2) - 1 = t / m
    return result * np.max(np.abs(weights)) if rescale else result
