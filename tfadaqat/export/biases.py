"""Bias alignment: an explicit step before conversion that moves every integer kernel's bias
(and every exported channel-affine offset) onto the int32 grid TFLite stores it on, in the
Keras model, so that model and file compute the same integers.

It changes the model in place (by under half a bias unit per channel, a thousandth of an
output step or less), which is why :func:`tfadaqat.export_tflite` saves the weights and the
Rescaling/Normalization constants first (:func:`offset_constants`) and puts them back when
the export fails (:func:`restore_offset_constants`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from tfadaqat._compat import keras, tf
from tfadaqat.export.integers import INT8_WEIGHT_LIMIT, stored_kernel
from tfadaqat.export.plan import input_scale, make_plan
from tfadaqat.layers import ChannelAffine
from tfadaqat.tensors import unwrapped_layer

_layers = keras.layers


def align_biases(model, weight_storage: str = "int8") -> int:
    """Moves every integer kernel's bias onto the grid TFLite stores it on; in place.

    TFLite keeps a conv or dense layer's bias (with a folded BatchNormalization: ``m_c b_c +
    offset_c``) as an int32 count of ``input scale x stored weight scale``. This shifts each
    such bias by less than half of that unit, through BatchNormalization's ``beta`` (or the
    layer's own bias), so that the Keras model in inference mode computes what the integer
    kernels compute. The shifts are far below the quantization steps (a thousandth of an
    output step or less); without them, the rounding moved 0.1-0.3% of the values of layers
    fed by 3-4-bit activations to the neighbouring integer, which deeper layers amplified.

    A channel-affine layer exported on its own (BatchNormalization that folds into nothing,
    Rescaling, Normalization: a 1x1 depthwise convolution of weight 127 and scale
    ``|m_c| / 127``) has its offset moved the same way: BatchNormalization's ``beta``,
    Rescaling's ``offset``, Normalization's mean (by ``-shift / m_c``). Left unaligned,
    EfficientNetV2B0's Normalization put 2.3% of its outputs one step away from Keras's, and
    the file's logits ended 49 output steps away.

    Args:
      model: A model returned by :func:`tfadaqat.quantize_model`.
      weight_storage: As :func:`export_tflite`'s (int4 kernels have a coarser bias grid).

    Returns:
      How many layers had a bias or offset to align (layers whose input is not on a learned
      grid, and layers with neither bias nor a centred BatchNormalization, are left as they
      are).
    """
    plan = make_plan(model, weight_storage)
    aligned = 0
    for name, kernel in plan.weights.items():
        input_step = input_scale(plan, name)
        wrapper = next(node.layer for node in plan.nodes if node.layer.name == name)
        inner, batch_norm = wrapper.layer, plan.folded.get(name)
        if input_step is None or not (inner.use_bias or (batch_norm and batch_norm.center)):
            continue
        multiplier, offset = plan.affines.get(name, (None, 0.0))
        _, weight_scale = stored_kernel(kernel, multiplier)
        unit = input_step * np.asarray(weight_scale, np.float64)
        total = (plan.biases[name] * (1.0 if multiplier is None else multiplier)
                 + np.asarray(offset, np.float64))
        shift = np.round(total / unit) * unit - total
        if batch_norm is not None and batch_norm.center:
            batch_norm.beta.assign(batch_norm.beta.numpy() + shift.astype(np.float32))
        elif multiplier is not None:  # bias before a BN without beta: m_c b_c moves by shift
            safe = np.where(multiplier == 0, 1.0, multiplier)
            inner.bias.assign(inner.bias.numpy() + (shift / safe).astype(np.float32))
        else:
            inner.bias.assign(inner.bias.numpy() + np.broadcast_to(shift, inner.bias.shape)
                              .astype(np.float32))
        aligned += 1
    for node in plan.nodes:
        inner = unwrapped_layer(node.layer)
        if inner.name not in plan.channel_affines:
            continue
        input_step = input_scale(plan, node.layer.name)
        if input_step is None or (isinstance(inner, _layers.BatchNormalization)
                                   and not inner.center):
            continue
        multiplier, offset = plan.channel_affines[inner.name]
        output_shape = node.layer.output.shape
        channels = int(output_shape[-1]) if output_shape.rank else 1
        multiplier = np.broadcast_to(multiplier, (channels,)).astype(np.float64)
        unit = input_step * np.maximum(np.abs(multiplier).astype(np.float32)
                                        / INT8_WEIGHT_LIMIT, 1e-12).astype(np.float32)
        offset = np.broadcast_to(offset, (channels,)).astype(np.float64)
        shift = np.round(offset / unit) * unit - offset
        _move_offset(inner, shift, multiplier)
        aligned += 1
    if aligned:  # Rescaling and Normalization constants are captured by traced functions
        model.predict_function = model.test_function = model.train_function = None
    return aligned


def _move_offset(layer, shift: np.ndarray, multiplier: np.ndarray) -> None:
    """Adds `shift` (per channel) to the offset ``o`` of a channel-affine ``m x + o`` layer.

    BatchNormalization moves ``beta``, ChannelAffine its ``offset``, Rescaling its ``offset``
    constant, Normalization its mean (``(x - mean) / d`` has ``o = -mean / d``, so the mean
    moves by ``-shift d``; inverted, ``mean + d x`` moves it by ``shift``).
    """
    if isinstance(layer, _layers.BatchNormalization):
        layer.beta.assign((layer.beta.numpy() + _per_channel(shift, layer.beta.shape))
                          .astype(np.float32))
    elif isinstance(layer, ChannelAffine) and layer.offset is None:
        if np.any(shift != 0):  # a zero offset is on every grid: nothing to move
            raise ValueError(f"layer {layer.name!r} has no offset to move by {shift}")
    elif isinstance(layer, ChannelAffine):
        layer.offset.assign((layer.offset.numpy() + _per_channel(shift, layer.offset.shape))
                            .astype(np.float32))
    elif isinstance(layer, _layers.Rescaling):
        offset = np.asarray(layer.offset, np.float64) + shift
        layer.offset = (float(offset[0]) if np.all(offset == offset[0])
                        else [float(value) for value in offset])
    elif isinstance(layer, _layers.Normalization):
        mean = np.broadcast_to(np.asarray(layer.mean, np.float64).reshape(-1), shift.shape)
        mean = mean + (shift if layer.invert else -shift / multiplier)
        if layer.input_mean is None:  # adapted: the state lives in variables
            layer.adapt_mean.assign(_per_channel(mean, layer.adapt_mean.shape)
                                    .astype(layer.adapt_mean.dtype.as_numpy_dtype))
            layer.finalize_state()
        else:
            layer.input_mean = (float(mean[0]) if np.size(layer.input_mean) == 1
                                and np.all(mean == mean[0]) else mean.astype(np.float32))
            layer.mean = tf.cast(tf.reshape(tf.constant(mean, tf.float64),
                                            layer._broadcast_shape), layer.compute_dtype)
    else:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no offset to align")


def _per_channel(values: np.ndarray, shape) -> np.ndarray:
    """`values` (one per channel) in a variable's `shape`; a variable shared by all
    channels (a scalar) takes their common value."""
    shape = tuple(shape)
    if values.size == int(np.prod(shape)):
        return values.reshape(shape)
    if np.all(values == values.flat[0]):
        return np.full(shape, values.flat[0])
    raise ValueError(f"{values.size} different per-channel values for a variable of shape "
                     f"{shape}")


def offset_constants(model) -> List[Tuple[Any, Dict[str, Any]]]:
    """The Rescaling and Normalization constants :func:`align_biases` may change (their
    variables are restored with the model's weights)."""
    saved = []
    for layer in model.layers:
        inner = unwrapped_layer(layer)
        if isinstance(inner, _layers.Rescaling):
            saved.append((inner, {"offset": inner.offset}))
        elif isinstance(inner, _layers.Normalization) and inner.input_mean is not None:
            saved.append((inner, {"input_mean": inner.input_mean, "mean": inner.mean}))
    return saved


def restore_offset_constants(model, saved) -> None:
    for layer, attributes in saved:
        for name, value in attributes.items():
            setattr(layer, name, value)
    for layer in model.layers:
        inner = unwrapped_layer(layer)
        if isinstance(inner, _layers.Normalization) and inner.input_mean is None:
            inner.finalize_state()
    model.predict_function = model.test_function = model.train_function = None
