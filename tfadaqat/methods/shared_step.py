"""OQAT's shared-step LSQ (Shen et al.): one learned step per tensor for every sub-network.

The quantized once-for-all supernet (:mod:`tfadaqat.oqat.supernet`) gives each quantized
tensor of a block slot ONE :class:`SharedStep`, which every sub-network reads whatever slice of
the slot it takes; the supernet's sandwich step trains it. Sub-networks extracted from the
supernet are ordinary LSQ models (:mod:`tfadaqat.methods.lsq`) whose steps start at the shared
ones. This is the method's quantizer factory; it has no options and adds no hooks to
:class:`tfadaqat.QuantizedModel`'s step.
"""

from __future__ import annotations

from tfadaqat._compat import tf
from tfadaqat.quantizers import LSQQuantizer


class SharedStep(tf.Module):
    """One shared LSQ step ``s = exp(log_step)`` and the quantizer that uses it.

    The step is learned in log space: an optimizer that normalises gradients (Adam) then moves
    it by a relative amount per update, where on ``s`` itself it moves it by about the learning
    rate, which drove small weight steps through zero within a few updates (a 3-bit supernet
    from scratch diverged at Adam 3e-3). The gradient is LSQ's, times ``s``.
    """

    def __init__(self, bits: int, signed: bool, kind: str, name: str):
        super().__init__(name=name)
        self.quantizer = LSQQuantizer(bits, signed=signed, kind=kind)
        self.log_step = tf.Variable(0.0, name="log_step")

    @property
    def step(self) -> tf.Tensor:
        return tf.exp(self.log_step)

    def __call__(self, x, initialize: bool = False):
        if initialize:
            self.log_step.assign(tf.math.log(self.quantizer._initial_values(x)["step"]))
        return self.quantizer._quantize(x, {"step": self.step})
