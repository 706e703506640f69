"""LayerNormalization computed as an integer TFLite file computes it: every step on an int8 grid.

TFLite has no integer layer-normalization kernel. The converter lowers a LayerNormalization
over the last axis into MEAN, SQUARED_DIFFERENCE, MEAN, ADD, RSQRT and MUL/SUB/ADD ops, and
each rounds its output to int8. Those roundings are coarse next to the layer's own output
grid. The mean of a tensor can only be stored to half a step of an int8 grid that spans its
values, and ``x * gamma / sigma`` spans the normalised values before any clipping. A float
LayerNormalization in the Keras model therefore differs from the file. On keras.applications'
ConvNeXtTiny after one short fit (DQ, 2026-12-07) the file's layer-normalization outputs were
up to 13 output steps away from Keras, more than one step on half of the values of some
layers, and top-1 agreement was 63 of 64.

:class:`Int8LayerNormalization` runs the same ops and fake-quantizes each intermediate on an
8-bit grid spanning that intermediate's minimum and maximum (and zero). The range is set from the first
batch the model sees (the step in which tfadaqat initialises its quantizers) and then
follows an exponential moving average during training; it is fixed at inference. Training
therefore sees the file's roundings, and the export emits these very ops, so the converter
takes every range from them and needs no calibration. The layer's output grid is the
quantized model's usual learned one; these internal grids are fixed at 8 bits (the int8
kernels') and are not counted as learned bits.

Forward, with ``q`` the 8-bit fake quantization on each value's range and ``d`` the last axis::

    m = q(mean_d(x))                     v = q(mean_d(q((x - m)^2)))
    r = q(rsqrt(q(v + q(eps))))          i = q(r * q(gamma))
    y = q(x * i) + q(q(beta) - q(m * i))

Gradient: straight-through inside each range and zero where a value was clipped (the
gradient of ``tf.quantization.fake_quant_with_min_max_vars``). The ranges themselves get no
gradient. A variance rounded to zero has an infinite rsqrt: TFLite's int8 RSQRT gives the top
of its output range there, and so does the clipping here; the range is measured over the
other values, and in training ``rsqrt`` reads ``max(., 1e-20)`` so that its gradient stays
finite.
"""

from __future__ import annotations

from typing import Dict

from tfadaqat._compat import keras, tf
from tfadaqat.quantizers.base import initialization_active

#: The intermediates that get a range, in the order of the forward pass.
INTERMEDIATES = ("mean", "squared_difference", "variance", "variance_plus_epsilon",
                 "rsqrt", "multiplier", "scaled", "scaled_mean", "offset")


def normalizes_last_axis(layer, rank: int) -> bool:
    """Whether the LayerNormalization `layer`, on an input of `rank`, normalises over its last
    axis only."""
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    return [axis % rank for axis in axes] == [rank - 1]


def fake_quantize_on_range(value, minimum, maximum):
    """`value` rounded onto 256 levels from `minimum` to `maximum` (a range that holds zero,
    as :func:`_range_of` gives: TensorFlow's FakeQuant shifts any other range to hold it)."""
    return tf.quantization.fake_quant_with_min_max_vars(value, minimum, maximum, num_bits=8)


def _range_of(value):
    """``[min(value, 0), max(value, 0)]``, at least ``1e-9`` wide (a range of zero width would
    give a step of zero)."""
    low = tf.minimum(tf.reduce_min(value), 0.0)
    return low, tf.maximum(tf.maximum(tf.reduce_max(value), 0.0), low + 1e-9)


def _own_range(value):
    """A constant on its own range, as the converter quantizes a constant operand."""
    return fake_quantize_on_range(value, *_range_of(value))


def _rsqrt_with_finite_gradient(value):
    """``rsqrt(value)`` for training: a value rounded to 0 gives 1e10 instead of inf, which the
    range clips alike, and a finite gradient (0 x inf would make every gradient NaN)."""
    return tf.math.rsqrt(tf.maximum(value, 1e-20))


@keras.utils.register_keras_serializable(package="tfadaqat")
class Int8LayerNormalization(keras.layers.LayerNormalization):
    """A last-axis LayerNormalization whose intermediates are on int8 grids (module docstring).

    Args:
      range_momentum: Weight of the old range in the moving average of each intermediate's
        minimum and maximum during training, in [0, 1).
      **kwargs: Those of ``keras.layers.LayerNormalization``; ``axis`` must be the last one.

    Raises:
      ValueError: For a `range_momentum` outside [0, 1), or when built on an input whose
        normalised axes are not the last axis alone.
    """

    def __init__(self, range_momentum: float = 0.99, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(range_momentum) < 1.0:
            raise ValueError(f"range_momentum must be in [0, 1), got {range_momentum!r}")
        self.range_momentum = float(range_momentum)
        self.ranges: Dict[str, tuple] = {}

    def build(self, input_shape):
        super().build(input_shape)
        rank = len(input_shape)
        if not normalizes_last_axis(self, rank):
            raise ValueError(f"Int8LayerNormalization {self.name!r} normalises the last axis "
                             f"only, got axis {self.axis} for an input of rank {rank}")
        for name in INTERMEDIATES:
            self.ranges[name] = tuple(self.add_weight(
                f"{name}_{end}", shape=(), initializer="zeros", trainable=False,
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.MEAN) for end in ("min", "max"))

    def _quantize(self, name: str, value, training, measured=None):
        """`value` on the range of intermediate `name`: set from `measured` (default: `value`)
        in the initialising step, moved towards it in training, read at inference."""
        minimum, maximum = self.ranges[name]
        low, high = _range_of(value if measured is None else measured)
        if initialization_active():
            minimum.assign(low)
            maximum.assign(high)
            return fake_quantize_on_range(value, low, high)

        def tracked():
            momentum = self.range_momentum
            minimum.assign(momentum * minimum + (1.0 - momentum) * low)
            maximum.assign(momentum * maximum + (1.0 - momentum) * high)
            return fake_quantize_on_range(value, minimum.read_value(), maximum.read_value())

        return tf.__internal__.smart_cond.smart_cond(
            training, tracked, lambda: fake_quantize_on_range(value, minimum, maximum))

    def call(self, inputs, training=None):
        if training is None:
            training = keras.backend.learning_phase()
        x = inputs
        mean = self._quantize("mean", tf.reduce_mean(x, axis=-1, keepdims=True), training)
        squared = self._quantize("squared_difference", tf.math.squared_difference(x, mean),
                                 training)
        variance = self._quantize("variance", tf.reduce_mean(squared, axis=-1, keepdims=True),
                                  training)
        epsilon = _own_range(tf.constant(self.epsilon, x.dtype))
        shifted = self._quantize("variance_plus_epsilon", variance + epsilon, training)
        root = tf.__internal__.smart_cond.smart_cond(
            training, lambda: _rsqrt_with_finite_gradient(shifted),
            lambda: tf.math.rsqrt(shifted))
        # A variance rounded to 0 has an infinite rsqrt: the file's RSQRT gives the top of its
        # range there, and the range is measured without it.
        multiplier = self._quantize("rsqrt", root, training,
                                    measured=tf.where(shifted > 0.0, root, 0.0))
        if self.scale:
            multiplier = self._quantize("multiplier", multiplier * _own_range(self.gamma),
                                        training)
        scaled = self._quantize("scaled", x * multiplier, training)
        scaled_mean = self._quantize("scaled_mean", mean * multiplier, training)
        if not self.center:
            return scaled - scaled_mean
        offset = self._quantize("offset", _own_range(self.beta) - scaled_mean, training)
        return scaled + offset

    def get_config(self):
        return {**super().get_config(), "range_momentum": self.range_momentum}

    @classmethod
    def from_layer(cls, layer) -> "Int8LayerNormalization":
        """A layer with `layer`'s (a LayerNormalization's) config; its weights are copied by
        :func:`copy_weights` once it is built."""
        return cls(**layer.get_config())


def copy_weights(source, target: Int8LayerNormalization) -> None:
    """``gamma`` and ``beta`` of the LayerNormalization `source` into `target` (built)."""
    if source.scale:
        target.gamma.assign(source.gamma)
    if source.center:
        target.beta.assign(source.beta)
