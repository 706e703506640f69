"""``QuantizedModel``: the Functional model :func:`tfadaqat.quantize_model` returns.

It is an ordinary tf-keras Functional model (same layers, same ``compile``/``fit``/``save``)
with one addition: quantizer parameters that depend on data (clips and steps) are initialised
from the first batch the model sees in ``fit``, ``evaluate`` or ``predict``. The first step is
traced in :func:`tfadaqat.quantizers.initialization_mode`, where quantizers assign their
initial values; every later step runs a second trace without those assignments, so training
pays for no per-step branch. A model whose quantizers are already initialised (for instance a
reloaded one) goes straight to the plain trace.
"""

from __future__ import annotations

from tfadaqat._compat import keras
from tfadaqat.quantizers import initialization_mode


@keras.utils.register_keras_serializable(package="tfadaqat")
class QuantizedModel(keras.Model):
    """A Functional model of quantized layers whose quantizers initialise on the first batch."""

    def quantizers_initialized(self) -> bool:
        """Whether every quantizer with data-dependent parameters has been initialised."""
        flags = [weight for weight in self.weights
                 if weight.name.split(":")[0].endswith("_initialized")]
        return all(float(flag.numpy()) > 0.5 for flag in flags)

    def initialize_quantizers(self, inputs) -> None:
        """Initialises the quantizers from one batch of `inputs` now, if they are not yet."""
        if not self.quantizers_initialized():
            with initialization_mode():
                self(inputs, training=False)

    def make_train_function(self, force=False):
        return self._first_step_initializes(super().make_train_function, "train_function",
                                            force)

    def make_test_function(self, force=False):
        return self._first_step_initializes(super().make_test_function, "test_function", force)

    def make_predict_function(self, force=False):
        return self._first_step_initializes(super().make_predict_function, "predict_function",
                                            force)

    def _first_step_initializes(self, make, attribute: str, force: bool):
        function = make(force)
        if getattr(function, "initializes_quantizers", False) or self.quantizers_initialized():
            return function
        initializing = make(True)

        def first_step(*args, **kwargs):
            with initialization_mode():
                result = initializing(*args, **kwargs)
            setattr(self, attribute, function)
            return result

        first_step.initializes_quantizers = True
        setattr(self, attribute, first_step)
        return first_step
