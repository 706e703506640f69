"""Per-layer control: how one layer's tensors are quantized, stated on the layer.

:func:`annotate` wraps a layer in TFMOT's ``QuantizeAnnotate`` wrapper (what TFMOT's
``quantize_annotate_layer`` does) with a :class:`LayerAnnotation` as its ``quantize_config``.
The annotated float model is an ordinary Keras model: it trains, saves and loads (inside
:func:`tfadaqat.quantize_scope`) with the annotations. :func:`tfadaqat.quantize_model` then
quantizes every layer with its annotation's settings and the others with the call's:

    >>> model = keras.Sequential([
    ...     keras.Input((28, 28, 1)),
    ...     annotate(keras.layers.Conv2D(8, 3), method="lsq", weight_bits=8, activation_bits=8),
    ...     keras.layers.ReLU(),
    ...     keras.layers.Flatten(),
    ...     annotate(keras.layers.Dense(10), weight_bits=4, max_bits=6),
    ... ])
    >>> qmodel = tfadaqat.quantize_model(model, "adaqat")  # doctest: +SKIP

so one model can mix methods (the first layer fixed at 8 bits with LSQ, the rest learned by
AdaQAT) and ranges per layer and per tensor (kernel against output). A setting left None takes
the value given to ``quantize_model``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from tfadaqat import methods as methods_lib
from tfadaqat._compat import keras, quantize_annotate_class
from tfadaqat.configurable import Configurable
from tfadaqat.quantizers import validate_bits

FIELDS = ("method", "weight_bits", "activation_bits", "min_bits", "max_bits", "learn_bits",
          "skip", "options")


@keras.utils.register_keras_serializable(package="tfadaqat")
class LayerAnnotation(Configurable):
    """The quantization settings of one layer; None fields take ``quantize_model``'s values.

    Args:
      method: A registered method name (:func:`tfadaqat.methods.names`) for this layer's
        tensors, or None.
      weight_bits: Initial (LSQ: fixed) bit-width of the layer's weights.
      activation_bits: Initial (LSQ: fixed) bit-width of the layer's output.
      min_bits: Lowest bit-width a learned bit-width of this layer may take.
      max_bits: Highest bit-width a learned bit-width of this layer may take.
      learn_bits: For "adaqat": whether this layer's bit-widths are learned.
      skip: Keep the layer in float.
      options: Options of the layer's method's quantizers (e.g. ``{"grid": "dorefa"}``); None
        takes ``quantize_model``'s when the layer's method is the call's.

    Raises:
      ValueError: For an unknown method, a bit-width outside 1..16 (2..16 for weights),
        ``min_bits > max_bits``, or options the method does not take.
    """

    def __init__(self, method: Optional[str] = None, weight_bits: Optional[int] = None,
                 activation_bits: Optional[int] = None, min_bits: Optional[int] = None,
                 max_bits: Optional[int] = None, learn_bits: Optional[bool] = None,
                 skip: bool = False, options: Optional[Dict[str, Any]] = None):
        if method is not None:
            methods_lib.get(method)
        for name, value, low in (("weight_bits", weight_bits, 2),
                                 ("activation_bits", activation_bits, 1),
                                 ("min_bits", min_bits, 1), ("max_bits", max_bits, 1)):
            if value is not None:
                validate_bits(name, value, low=low)
        if min_bits is not None and max_bits is not None and min_bits > max_bits:
            raise ValueError(f"min_bits ({min_bits}) must be <= max_bits ({max_bits})")
        for name, value in (("learn_bits", learn_bits), ("skip", skip)):
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        if options is not None:
            if not isinstance(options, dict):
                raise ValueError(f"options must be a dict, got {options!r}")
            if method is not None:
                methods_lib.get(method).validate_options(options)
        self.method, self.weight_bits, self.activation_bits = method, weight_bits, activation_bits
        self.min_bits, self.max_bits, self.learn_bits = min_bits, max_bits, learn_bits
        self.skip = bool(skip)
        self.options = None if options is None else dict(options)

    def get_config(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}

    def __repr__(self):
        given = ", ".join(f"{name}={value!r}" for name, value in self.get_config().items()
                          if value is not None and not (name == "skip" and not value))
        return f"LayerAnnotation({given})"


def annotate(layer, *, method: Optional[str] = None, weight_bits: Optional[int] = None,
             activation_bits: Optional[int] = None, min_bits: Optional[int] = None,
             max_bits: Optional[int] = None, learn_bits: Optional[bool] = None,
             skip: bool = False, **options):
    """Returns `layer` wrapped with the quantization settings :func:`tfadaqat.quantize_model`
    gives it (see :class:`LayerAnnotation` for the arguments; method options by keyword).

    Use it where the layer is built (``x = annotate(Conv2D(...))(x)``, or in a Sequential
    list), as TFMOT's ``quantize_annotate_layer``.

    Raises:
      ValueError: For bad settings (see :class:`LayerAnnotation`), a layer that is a model, or
        one that is annotated already.
    """
    if isinstance(layer, keras.Model) or not isinstance(layer, keras.layers.Layer):
        raise ValueError(f"annotate expects a Keras layer (not a model), got "
                         f"{type(layer).__name__}")
    if isinstance(layer, quantize_annotate_class):
        raise ValueError(f"layer {layer.layer.name!r} is annotated already")
    annotation = LayerAnnotation(method=method, weight_bits=weight_bits,
                                 activation_bits=activation_bits, min_bits=min_bits,
                                 max_bits=max_bits, learn_bits=learn_bits, skip=skip,
                                 options=options or None)
    return quantize_annotate_class(layer, quantize_config=annotation,
                                   name=f"{layer.name}_annotated")
