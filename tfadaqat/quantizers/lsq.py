"""LSQ's quantizer: a fixed bit-width and a learned step (the baseline, and OQAT's)."""

from __future__ import annotations

import math

from tfadaqat import ops
from tfadaqat._compat import keras, tf
from tfadaqat.quantizers.base import (PACKAGE, TENSOR_KINDS, TensorQuantizer, mean_magnitude,
                                      read_float, validate_bits)


@keras.utils.register_keras_serializable(package=PACKAGE)
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
        step = 2.0 * mean_magnitude(tensor) / math.sqrt(self._positive_high())
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
        return read_float(variables["step"]), low, high

    def get_config(self):
        return {"bits": self.bits, "signed": self.signed, "kind": self.kind}
