"""Stateful quantizers: the learned parameters of one quantized tensor.

A quantizer is a TFMOT :class:`~tfmot.quantization.keras.quantizers.Quantizer`: ``build``
creates its variables on the layer that owns the tensor, ``__call__`` fake-quantizes the tensor
with the math of :mod:`tfadaqat.ops`. Each one is made of the same parts:

* **bit-width** -- fixed (a Python int), *relaxed and learned* (AdaQAT: a real variable ``N``,
  used as ``b = ceil(N)``; ``learn_bits=True``), or *derived* from step and range (DQ);
* **scale** -- a learned step (LSQ, DQ), a learned clip (PACT), or the tensor's own maximum
  (DoReFa);
* **grid** -- signed symmetric or unsigned, see :func:`tfadaqat.ops.integer_range`.

Parameters that depend on data (steps, clips) are initialised from the first tensor the
quantizer sees in :func:`initialization_mode`; an ``initialized`` flag variable records it, so
a saved and reloaded model never re-initialises.

Every quantizer serialises all its constructor arguments (``get_config``) and is registered
with Keras under the package ``"tfadaqat"``. One module per family: :mod:`.base` (the shared
plumbing), :mod:`.relaxed_bits` (AdaQAT's DoReFa and PACT), :mod:`.lsq`, :mod:`.dq` and
:mod:`.fixed_grid` (softmax, sigmoid and tanh outputs); this module looks them up by name.
"""

from __future__ import annotations

from typing import Optional

from tfadaqat.quantizers.base import (MAX_SUPPORTED_BITS, MIN_SUPPORTED_BITS,
                                      TENSOR_KINDS, TensorQuantizer, initialization_active,
                                      initialization_mode, validate_bits)
from tfadaqat.quantizers.dq import DQ_PARAMETRIZATIONS, DQQuantizer
from tfadaqat.quantizers.fixed_grid import FixedGridQuantizer
from tfadaqat.quantizers.lsq import LSQQuantizer
from tfadaqat.quantizers.relaxed_bits import DoReFaWeightQuantizer, PACTActivationQuantizer

__all__ = [
    "DQ_PARAMETRIZATIONS", "MAX_SUPPORTED_BITS", "MIN_SUPPORTED_BITS", "QUANTIZER_CLASSES",
    "TENSOR_KINDS", "DQQuantizer", "DoReFaWeightQuantizer", "FixedGridQuantizer",
    "LSQQuantizer", "PACTActivationQuantizer", "TensorQuantizer", "deserialize", "get",
    "initialization_active", "initialization_mode", "register", "serialize",
    "validate_bits",
]

QUANTIZER_CLASSES = {cls.__name__: cls for cls in
                     (DoReFaWeightQuantizer, PACTActivationQuantizer, LSQQuantizer, DQQuantizer,
                      FixedGridQuantizer)}


def register(cls):
    """Makes the quantizer class `cls` known by its name to :func:`get`, :func:`deserialize`
    and :func:`tfadaqat.quantize_scope` (what a new method's quantizer needs); usable as a
    class decorator.

    Raises:
      TypeError: If `cls` is not a subclass of :class:`TensorQuantizer`.
      ValueError: If another class of that name is registered.
    """
    if not (isinstance(cls, type) and issubclass(cls, TensorQuantizer)):
        raise TypeError(f"register expects a TensorQuantizer subclass, got {cls!r}")
    known = QUANTIZER_CLASSES.get(cls.__name__)
    if known is not None and known is not cls:
        raise ValueError(f"a quantizer class named {cls.__name__!r} is registered already "
                         f"({known.__module__})")
    QUANTIZER_CLASSES[cls.__name__] = cls
    return cls


def serialize(quantizer: Optional[TensorQuantizer]):
    """JSON-safe description of `quantizer` (None stays None)."""
    if quantizer is None:
        return None
    return {"class_name": type(quantizer).__name__, "config": quantizer.get_config()}


def deserialize(config) -> Optional[TensorQuantizer]:
    """The quantizer :func:`serialize` described (None stays None).

    Raises:
      ValueError: If `config` is not such a description of a tfadaqat quantizer.
    """
    if config is not None and not (isinstance(config, dict) and "class_name" in config):
        raise ValueError(f"deserialize expects None or {{'class_name': ..., 'config': ...}}, "
                         f"got {config!r}")
    return get(config)


def get(identifier) -> Optional[TensorQuantizer]:
    """Looks a quantizer up from None, a class name, a serialized dict or an instance.

    Raises:
      ValueError: If `identifier` names no tfadaqat quantizer.
    """
    if identifier is None or isinstance(identifier, TensorQuantizer):
        return identifier
    if isinstance(identifier, str):
        name = identifier.split(">")[-1]
        if name in QUANTIZER_CLASSES:
            return QUANTIZER_CLASSES[name]()
    if isinstance(identifier, dict) and "class_name" in identifier:
        name = str(identifier["class_name"]).split(">")[-1]
        if name in QUANTIZER_CLASSES:
            return QUANTIZER_CLASSES[name].from_config(identifier.get("config", {}))
    raise ValueError(f"Could not interpret quantizer identifier {identifier!r}; expected None, "
                     f"an instance, or one of {sorted(QUANTIZER_CLASSES)} (name or "
                     "{'class_name': ..., 'config': ...})")
