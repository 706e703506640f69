"""Quantization methods by name: one module each, registered on import.

* :mod:`.adaqat`: AdaQAT, relaxed bit-widths learned by finite differences;
* :mod:`.dq`: DQ, learned step and range, the bit-width derived;
* :mod:`.lsq`: LSQ, fixed bit-widths and a learned step.

OQAT's shared-step LSQ trains a supernet, not a :class:`tfadaqat.QuantizedModel`; its quantizer
is in :mod:`.shared_step` and its training step in :mod:`tfadaqat.oqat.supernet`. A new method
is one module: a :class:`~.base.Method` subclass registered with :func:`~.base.register`
(imported here), and nothing else changes (see :mod:`.base` for what it declares).

Example:
  >>> from tfadaqat import methods
  >>> methods.names()
  ('adaqat', 'dq', 'lsq')
  >>> methods.get("dq").option_names
  ('parametrization', 'power_of_two', 'min_step', 'max_step')
"""

from typing import Any, Dict, Optional

from tfadaqat.methods import adaqat, dq, lsq  # each registers its method on import
from tfadaqat.methods.base import (Method, StepHooks, get, in_model, learning_methods, names,
                                   of_quantizer, register)
from tfadaqat.quantizers import TensorQuantizer

__all__ = ["adaqat", "dq", "lsq", "METHODS", "Method", "StepHooks", "get", "in_model",
           "learning_methods", "make_quantizer", "names", "of_quantizer", "register"]

METHODS = names()  # the methods of this package (names() also lists those registered later)


def make_quantizer(method: str, kind: str, *, signed: bool, bits: int, min_bits: int,
                   max_bits: int, learn_bits: bool = True,
                   options: Optional[Dict[str, Any]] = None) -> TensorQuantizer:
    """The quantizer `method` uses for a tensor of `kind` ("weight" or "activation").

    A shortcut for ``get(method).make_quantizer(kind, ...)``.

    Args:
      method: A registered method name: "adaqat" (DoReFa weights, PACT activations, relaxed
        learned bits), "dq" (learned step and range) or "lsq" (fixed bits, learned step).
      kind: "weight" or "activation".
      signed: Whether the tensor can be negative (weights always are).
      bits: Initial bit-width (the fixed one for "lsq").
      min_bits: Lowest bit-width a learned bit-width may reach.
      max_bits: Highest bit-width a learned bit-width may reach.
      learn_bits: For "adaqat": keep a relaxed bit-width variable.
      options: Extra constructor arguments of the method's quantizer, e.g.
        ``{"parametrization": "U1"}`` for "dq" or ``{"grid": "dorefa"}`` for "adaqat" weights.

    Raises:
      ValueError: For an unknown `method` or `kind`, or an option the method does not take.

    Example:
      >>> make_quantizer("lsq", "weight", signed=True, bits=4, min_bits=2, max_bits=8)
      LSQQuantizer(bits=4, signed=True, kind='weight')
    """
    return get(method).make_quantizer(kind, signed=signed, bits=bits, min_bits=min_bits,
                                      max_bits=max_bits, learn_bits=learn_bits, options=options)
