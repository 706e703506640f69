"""The quantizer of tensors on a grid TFLite fixes: softmax, sigmoid and tanh outputs."""

from __future__ import annotations

from tfadaqat._compat import keras, tf
from tfadaqat.quantizers.base import PACKAGE, TensorQuantizer


@keras.utils.register_keras_serializable(package=PACKAGE)
class FixedGridQuantizer(TensorQuantizer):
    """A tensor on a fixed grid: the outputs of softmax, sigmoid and tanh.

    TFLite's int8 kernels for these functions require a fixed output quantization (softmax and
    logistic: step 1/256, integers 0..255 stored with zero point -128; tanh: step 1/128,
    integers -128..127), so their outputs are trained on exactly that grid, whatever the
    method. Nothing is learned.

    Forward: ``q = step clip(round(x / step), low, high)`` (TensorFlow's FakeQuant, exact for
    these grids because ``low step`` is 0 or the range is symmetric about a whole zero point).
    Gradient: straight through inside ``[low step, high step]``, zero outside.

    Args:
      step: The grid's step.
      low: Smallest integer.
      high: Largest integer; ``high - low`` must be below 256 (8 bits).

    Example:
      >>> FixedGridQuantizer(1 / 256, 0, 255).integer_grid(None, {})
      (0.00390625, 0, 255)
    """

    def __init__(self, step: float = 1.0 / 256, low: int = 0, high: int = 255):
        step = float(step)
        if not step > 0:
            raise ValueError(f"step must be positive, got {step}")
        for name, value in (("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if not 0 < high - low <= 255:
            raise ValueError(f"high - low must lie in 1..255 (8 bits), got {low}..{high}")
        self.step, self.low, self.high = step, low, high
        self.signed = low < 0

    def _variable_specs(self):
        return {}

    def _quantize(self, tensor, variables):
        return tf.quantization.fake_quant_with_min_max_args(
            tensor, min=self.low * self.step, max=self.high * self.step, num_bits=8)

    def bit_width(self, variables):
        return tf.constant(8, tf.int32)

    @property
    def lowest_bits(self) -> int:
        return 8

    def integer_grid(self, tensor, variables):
        return self.step, self.low, self.high

    def get_config(self):
        return {"step": self.step, "low": self.low, "high": self.high}
