"""Objects described by their config: quantizers, quantize configs and layer annotations.

A :class:`Configurable` is rebuilt by ``cls(**get_config())``, equal to another of the same
class with the same config, and printed as its constructor call. Keras serializes such objects
by their registered name and config, so equality by config is equality of what is saved.
"""

from __future__ import annotations

from typing import Any, Dict


class Configurable:
    """``from_config``, ``==`` and ``repr`` from ``get_config`` (which subclasses define)."""

    def get_config(self) -> Dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other

    __hash__ = None  # mutable: equal objects need not stay equal

    def __repr__(self):
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({arguments})"
