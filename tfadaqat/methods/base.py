"""What a quantization method is to the rest of tfadaqat, and the registry of methods by name.

A method is one object (a :class:`Method` subclass in its own module) that declares:

* **quantizers**: :meth:`Method.make_quantizer` builds the quantizer of one weight or activation
  tensor; :attr:`Method.quantizer_classes` are the classes it builds, which is how a trained
  model's tensors are traced back to their method (one model may mix methods, see
  :func:`tfadaqat.annotate`);
* **options**: :attr:`Method.option_names` are the extra constructor arguments its quantizers
  take (``quantize_model(..., grid="dorefa")``), checked by :meth:`Method.validate_options`;
* **training**: its settings (AdaQAT's rule), its model state (variables saved with the model,
  created by :meth:`Method.create_state`) and :meth:`Method.step_hooks`, the
  :class:`StepHooks` that :meth:`tfadaqat.QuantizedModel.train_step` calls without knowing
  which method they come from.

The training step calls every method's hooks in this order::

    forward, loss L                      (inside the gradient tape)
    L <- L + sum of hooks.loss()         (inside the tape: a penalty, e.g. DQ's budget term)
    gradients of L
    hooks.before_update(batch, ...)      (e.g. AdaQAT's probe, with the weights of the forward)
    gradients <- hooks.gradients(...)    (summed over replicas first; e.g. DQ's clipping)
    optimizer update
    hooks.after_update()                 (e.g. DQ's projection back within the budget)

A method without hooks for a model (LSQ, DQ without a budget) returns None and the step is
plain Keras.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from tfadaqat._compat import tf
from tfadaqat.quantizers import TENSOR_KINDS, TensorQuantizer
from tfadaqat.tensors import quantized_tensors


class StepHooks:
    """One method's part of one training step (a new object every time the step is traced).

    Attributes:
      transforms_gradients: Whether :meth:`gradients` changes gradients; the step then sums
        them over replicas before calling it and applies them without a second aggregation.
      records_forward: Whether the step keeps the tensors of its forward pass for the hooks:
        it then sets ``forward_record`` (a :class:`tfadaqat.partial_forward.ForwardRecord`)
        before :meth:`before_update`.
    """

    transforms_gradients = False
    records_forward = False
    forward_record = None

    def loss(self) -> Optional[tf.Tensor]:
        """A term added to the loss inside the gradient tape (same on every replica), or None."""
        return None

    def logs(self) -> Dict[str, tf.Tensor]:
        """Values added to the step's logs (e.g. ``budget_penalty``)."""
        return {}

    def before_update(self, x, y, sample_weight, y_pred) -> None:
        """Runs after the gradients are taken and before the optimizer changes anything."""

    def gradients(self, variables: Sequence[tf.Variable],
                  gradients: Sequence[Optional[tf.Tensor]]) -> List[Optional[tf.Tensor]]:
        """The gradients to apply (summed over replicas), in the order of `variables`."""
        return list(gradients)

    def after_update(self) -> None:
        """Runs after the optimizer update."""


class Method:
    """A quantization method (subclass it in a module of its own and :func:`register` it).

    Attributes:
      name: The name users pass to ``quantize_model(model, name)``.
      option_names: Extra constructor arguments of its quantizers, by name.
      quantizer_classes: The quantizer classes :meth:`make_quantizer` builds.
      learns_bits: Whether bit-widths change during ``fit`` (a budget needs it).
      settings_config_key: The model-config key its settings are saved under, or None.
    """

    name: str = ""
    option_names: Tuple[str, ...] = ()
    quantizer_classes: Tuple[type, ...] = ()
    learns_bits: bool = False
    settings_config_key: Optional[str] = None

    def validate_options(self, options: Mapping[str, Any]) -> None:
        """Raises ValueError naming the options this method does not take, and those it does."""
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            raise ValueError(f"method {self.name!r} does not take option(s) {unknown}; "
                             f"allowed: {list(self.option_names)}")

    def make_quantizer(self, kind: str, *, signed: bool, bits: int, min_bits: int,
                       max_bits: int, learn_bits: bool = True,
                       options: Optional[Mapping[str, Any]] = None) -> TensorQuantizer:
        """The quantizer of one tensor of `kind` ("weight" or "activation").

        Raises:
          ValueError: For an unknown `kind` or an option this method does not take.
        """
        check_kind(kind)
        options = dict(options or {})
        self.validate_options(options)
        return self.build_quantizer(kind, signed=signed, bits=bits, min_bits=min_bits,
                                    max_bits=max_bits, learn_bits=learn_bits, options=options)

    def build_quantizer(self, kind: str, **settings) -> TensorQuantizer:
        """:meth:`make_quantizer` once its arguments are checked (what a method defines):
        `settings` are ``signed``, ``bits``, ``min_bits``, ``max_bits``, ``learn_bits`` and
        ``options``."""
        raise NotImplementedError

    def check_budget_arguments(self, *, learn_bits: bool, settings: Any) -> None:
        """Raises ValueError when this method cannot train towards a budget as configured."""
        if not self.learns_bits:
            raise ValueError(f"method {self.name!r} has fixed bit-widths and cannot learn to "
                             f"meet a budget; use one of {learning_methods()}")

    def owns(self, quantizer) -> bool:
        """Whether `quantizer` is one this method builds (its exact class: a method may
        subclass another method's quantizer)."""
        return type(quantizer) in self.quantizer_classes

    # Settings: what the method trains with besides its quantizers (AdaQAT's rule).
    def settings_from_arguments(self, *, learn_bits: bool, adaqat_rule: Any):
        """The settings ``quantize_model``'s arguments give this method, or None for none."""
        return None

    def settings_to_config(self, settings) -> Dict[str, Any]:
        raise NotImplementedError

    def settings_from_config(self, config: Dict[str, Any]):
        raise NotImplementedError

    def create_state(self, model) -> Dict[str, tf.Variable]:
        """Adds the variables this method keeps on `model` (saved with it); {} for none.

        Called when the model's budget or this method's settings change; it returns {} until
        what the state needs is there (it is then called again later).
        """
        return {}

    def step_hooks(self, model) -> Optional[StepHooks]:
        """This method's part of `model`'s training step, or None for a plain step."""
        return None


_REGISTRY: Dict[str, Method] = {}


def register(method: Method) -> Method:
    """Makes `method` available by its name (``quantize_model(model, method.name)``).

    Raises:
      ValueError: If a method of that name is registered already.
    """
    if not method.name:
        raise ValueError(f"{type(method).__name__} has no name")
    if method.name in _REGISTRY:
        raise ValueError(f"a method named {method.name!r} is registered already")
    _REGISTRY[method.name] = method
    return method


def names() -> Tuple[str, ...]:
    """The registered method names, in registration order."""
    return tuple(_REGISTRY)


def learning_methods() -> List[str]:
    """The names of the registered methods that learn bit-widths."""
    return [name for name, method in _REGISTRY.items() if method.learns_bits]


def get(name) -> Method:
    """The method registered as `name` (a method object is returned as it is).

    Raises:
      ValueError: For a name no method has, listing the names.
    """
    if isinstance(name, Method):
        return name
    if name not in _REGISTRY:
        raise ValueError(f"method must be one of {names()}, got {name!r}")
    return _REGISTRY[name]


def of_quantizer(quantizer) -> Optional[Method]:
    """The method that builds `quantizer`, or None (fixed-grid outputs belong to none)."""
    return next((method for method in _REGISTRY.values() if method.owns(quantizer)), None)


def in_model(model) -> List[Method]:
    """The methods whose quantizers `model` holds, in registration order."""
    present = {id(method) for _, _, quantizer, _, _ in quantized_tensors(model)
               for method in [of_quantizer(quantizer)] if method is not None}
    return [method for method in _REGISTRY.values() if id(method) in present]


def check_kind(kind: str) -> None:
    if kind not in TENSOR_KINDS:
        raise ValueError(f"kind must be one of {TENSOR_KINDS}, got {kind!r}")

