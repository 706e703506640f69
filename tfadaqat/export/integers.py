"""Integer mapping: learned weight grids, BatchNormalization and channel-affine maps as the
integers and scales an int8 TFLite file stores.

Every tfadaqat weight quantizer outputs ``scale x k`` with integers ``k`` in ``[low, high]``
(:meth:`tfadaqat.TensorQuantizer.integer_grid`). The file stores ``r k`` with scale
``scale / r`` where ``r = floor(127 / max|k|)`` (the *refinement*): the same products, and an
int32 bias grid ``r`` times finer (TFLite counts a bias in units of input scale x weight
scale; at 2-3 bits the unrefined unit is a tenth of an output step, and rounding a folded
BatchNormalization offset to it moved 5% of a 2-bit layer's outputs on ResNet20). Kernels
packed as int4 take ``r = floor(7 / max|k|)``: 7 for 2 bits, 2 for 3, 1 for 4. A
BatchNormalization ``m_c y + o_c`` folded into the kernel before it becomes per-output-channel
scales ``scale |m_c| / r``, its sign carried by the stored integers.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple

import numpy as np

from tfadaqat._compat import keras, wrapper_weight_quantizers

_layers = keras.layers


INT8_WEIGHT_LIMIT = 127


INT4_LOW, INT4_HIGH = -8, 7


class Kernel(NamedTuple):
    """A quantized kernel: ``scale x integers``, from a grid of `allowed` values, stored as
    ``refinement x integers`` (int8) or as the integers themselves packed in int4."""

    integers: np.ndarray
    scale: float
    bits: int
    allowed: int
    refinement: int
    packed: bool


def weight_integers(wrapper, int4: bool) -> Kernel:
    """The wrapper's quantized kernel as integers on its learned grid; with `int4`, packed if
    its grid fits in int4's [-8, 7]."""
    (kernel, quantizer, variables), = wrapper_weight_quantizers(wrapper)
    quantized = quantizer(kernel, training=False, weights=variables).numpy()
    scale, low, high = quantizer.integer_grid(kernel, variables)
    bits = int(quantizer.bit_width(variables))
    if max(-low, high) > INT8_WEIGHT_LIMIT:
        raise ValueError(
            f"layer {wrapper.layer.name!r}: its {bits}-bit weight "
            f"grid has integers up to {max(-low, high)}, beyond int8's +-127 (the DoReFa paper "
            "grid at 8 bits); quantize with grid='symmetric' or max_bits=7")
    integers = np.round(quantized / scale)
    packed = int4 and low >= INT4_LOW and high <= INT4_HIGH
    limit = INT4_HIGH if packed else INT8_WEIGHT_LIMIT
    refinement = limit // max(1, int(np.abs(integers).max()))
    # The DoReFa paper grid holds only odd integers: 2^b of its 2 high + 1.
    return Kernel(integers, scale, bits, min(high - low + 1, 2**bits), refinement, packed)


def batch_norm_affine(batch_norm) -> Tuple[np.ndarray, np.ndarray]:
    """``(m, offset)`` with ``BN(y) = m y + offset`` in inference mode."""
    gamma = batch_norm.gamma.numpy() if batch_norm.scale else 1.0
    beta = batch_norm.beta.numpy() if batch_norm.center else 0.0
    mean, variance = batch_norm.moving_mean.numpy(), batch_norm.moving_variance.numpy()
    multiplier = gamma / np.sqrt(variance + batch_norm.epsilon)
    return (np.broadcast_to(multiplier, mean.shape).astype(np.float32),
            (beta - multiplier * mean).astype(np.float32))


def channel_affine_parameters(layer) -> Tuple[np.ndarray, np.ndarray]:
    """``(m, o)`` with ``layer(x) = m x + o`` in inference mode, for a channel-affine layer."""
    if isinstance(layer, _layers.BatchNormalization):
        return batch_norm_affine(layer)
    if isinstance(layer, _layers.Rescaling):
        return (np.asarray(layer.scale, np.float32), np.asarray(layer.offset, np.float32))
    if isinstance(layer, _layers.Normalization):
        mean = np.asarray(layer.mean, np.float32).reshape(-1)
        deviation = np.sqrt(np.maximum(np.asarray(layer.variance, np.float32).reshape(-1),
                                       keras.backend.epsilon()))
        if layer.invert:
            return deviation, mean
        return 1.0 / deviation, -mean / deviation
    return (layer.multiplier.numpy(),
            np.float32(0.0) if layer.offset is None else layer.offset.numpy())


def stored_kernel(kernel: Kernel, channel_multiplier, shape=None):
    """``(stored integers, stored scale)`` of `kernel` (reshaped to `shape` if given): the
    grid's integers ``k`` as ``r k`` with scale ``scale / r`` (``r`` = ``kernel.refinement``,
    see "Bias resolution" in the module docstring), per output channel ``scale |m_c| / r``
    when a BatchNormalization with multipliers ``m_c`` is folded in (its sign is carried by
    the stored values)."""
    integers = kernel.integers if shape is None else kernel.integers.reshape(shape)
    integers, scale = integers * kernel.refinement, kernel.scale / kernel.refinement
    if channel_multiplier is None:
        return integers, scale
    # A channel whose BN multiplier is 0 is constant; any positive scale stores it.
    return (integers * np.sign(channel_multiplier),
            np.maximum(scale * np.abs(channel_multiplier), 1e-12).astype(np.float32))
