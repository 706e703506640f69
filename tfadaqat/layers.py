"""Keras layers that tfadaqat adds when it rewrites a model into integer-friendly pieces.

:func:`tfadaqat.flatten_model` replaces a few constructs that TFLite has no single integer
kernel for by standard pieces (see :mod:`tfadaqat.graph`); where no Keras layer says exactly
what the piece computes, it is one of these.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from tfadaqat._compat import keras

Values = Union[float, Sequence[float]]


@keras.utils.register_keras_serializable(package="tfadaqat")
class ChannelAffine(keras.layers.Layer):
    """``y = multiplier x + offset``, per channel (last axis) or with scalars.

    What ``x * 3.0``, ``x + 3.0`` (``TFOpLambda``), InceptionResNetV2's residual scale and
    ConvNeXt's ``LayerScale`` compute. It exports as one integer depthwise 1x1 convolution.

    Args:
      multiplier: Initial multiplier: a float, or one per channel.
      offset: Initial offset: a float, or one per channel; None for none at all (``LayerScale``
        has none: a trainable scalar offset would be a parameter it lacks, and one that the
        export could not align per channel).
      trainable: Whether the multiplier and offset are trained (``LayerScale``'s are).

    Example:
      >>> ChannelAffine(2.0, 1.0)(tf.constant([[1.0, 2.0]])).numpy().tolist()
      [[3.0, 5.0]]
    """

    def __init__(self, multiplier: Values = 1.0, offset: Optional[Values] = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_multiplier = np.asarray(multiplier, np.float32)
        self.initial_offset = None if offset is None else np.asarray(offset, np.float32)
        for name, value in (("multiplier", self.initial_multiplier),
                            ("offset", self.initial_offset)):
            if value is not None and value.ndim > 1:
                raise ValueError(f"{name} must be a float or a list of per-channel floats, "
                                 f"got shape {value.shape}")

    def build(self, input_shape):
        self.multiplier = self.add_weight(
            "multiplier", shape=self.initial_multiplier.shape,
            initializer=keras.initializers.Constant(self.initial_multiplier))
        self.offset = None if self.initial_offset is None else self.add_weight(
            "offset", shape=self.initial_offset.shape,
            initializer=keras.initializers.Constant(self.initial_offset))
        super().build(input_shape)

    def call(self, inputs):
        scaled = inputs * self.multiplier
        return scaled if self.offset is None else scaled + self.offset

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "multiplier": self.initial_multiplier.tolist(),
                "offset": None if self.initial_offset is None else self.initial_offset.tolist()}


@keras.utils.register_keras_serializable(package="tfadaqat")
class QuantizationPoint(keras.layers.Identity):
    """An identity whose output tfadaqat quantizes: the integer model's input grid.

    :func:`tfadaqat.flatten_model` puts one, named ``<input>_quantize_point``, after every
    model input (a plain ``Identity`` of the user's model keeps its input's grid instead).
    """
