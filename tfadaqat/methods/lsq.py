"""LSQ (Esser et al.): fixed bit-widths, a learned step per tensor.

Quantizer: :class:`tfadaqat.quantizers.LSQQuantizer` (``q = s round(clip(x / s, Q_n, Q_p))``,
the step's gradient scaled by ``1 / sqrt(numel Q_p)``). No options, no settings and nothing
added to the training step: the bit-widths are what the user sets, so no budget applies.
"""

from __future__ import annotations

from tfadaqat.methods.base import Method, register
from tfadaqat.quantizers import LSQQuantizer


class LSQ(Method):
    """Learned step size quantization at fixed bit-widths (a tensor's range is unused)."""

    name, quantizer_classes = "lsq", (LSQQuantizer,)

    def build_quantizer(self, kind, *, signed, bits, **unused):
        return LSQQuantizer(bits=bits, signed=signed, kind=kind)


LSQ_METHOD = register(LSQ())
