"""``quantize_model`` and friends: turn a float Keras model into a learned-bit-width QAT model.

:func:`quantize_model` works in three passes:

1. **Flatten.** Sequential and Functional models, nested ones included, are replayed layer by
   layer into one Functional graph (:func:`tfadaqat.graph.flatten_model`, which also splits
   constructs without one integer kernel into standard pieces), with an identity
   "quantization point" after every model input so the first layer sees integer inputs.
2. **Annotate.** Each layer gets a :class:`tfadaqat.configs.LayerQuantizeConfig` from its
   :class:`tfadaqat.layer_kinds.LayerKind`: the kind's weights are quantized; a tensor is
   quantized where an integer kernel produces it, at the end of the chain the integer model
   fuses (``conv [-> BatchNormalization] [-> ReLU]``, ``Add [-> ReLU]``); softmax, sigmoid
   and tanh outputs lie on the fixed grids of TFLite's kernels; shape-only layers (Flatten,
   Reshape, Dropout, padding, cropping, max pooling) keep values on their input's grid and
   need nothing. A Keras layer without a kind stays float and is named in one warning; a
   custom layer without a kind is an error that says how to register or skip it. A
   LayerNormalization over the last axis is replaced by an
   :class:`tfadaqat.layer_normalization.Int8LayerNormalization` with its name and weights,
   which rounds its intermediates as the exported file's int8 ops do.
3. **Apply.** TFMOT's ``quantize_apply`` wraps the annotated layers in ``QuantizeWrapperV2``
   with a scheme that adds no layout transform of its own.

Tensors that cannot be negative (ReLU, softmax and sigmoid outputs, and what pooling,
concatenating, adding or multiplying only such tensors gives) are quantized on an unsigned
grid, all others on a signed one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from tfadaqat import configs as configs_lib
from tfadaqat import methods as methods_lib
from tfadaqat import quantizers as quantizers_lib
from tfadaqat._compat import (functional_nodes_by_depth, is_graph_network, is_keras3_object,
                              keras, tf, tfmot)
from tfadaqat.annotation import LayerAnnotation
from tfadaqat.budget import QUANTITIES, Budget
from tfadaqat.graph import flatten_annotated_model
from tfadaqat.keras3 import from_keras3
from tfadaqat.layer_kinds import (activation_name, is_custom_layer, is_non_negative_activation,
                                  kind_of)
from tfadaqat.layer_normalization import (Int8LayerNormalization, copy_weights,
                                          normalizes_last_axis)
from tfadaqat.layers import ChannelAffine, QuantizationPoint
from tfadaqat.model import QuantizedModel
from tfadaqat.tensors import (QuantizedTensor, bit_widths, quantized_tensors,  # noqa: F401
                              set_bit_widths, unwrapped_layer)

_layers = keras.layers
_RELU_FAMILY = ("relu", "relu6", "relu_capped")


def quantize_model(model, method: str = "adaqat", *, weight_bits: int = 8,
                   activation_bits: int = 8, min_bits: int = 2, max_bits: int = 8,
                   skip: Sequence[str] = (), learn_bits: bool = True,
                   quantize_inputs: bool = True, layer_bits: Optional[Dict[str, int]] = None,
                   budget=None, cost_weight=10.0, adaqat_rule="default", **method_options):
    """Returns a copy of `model` ready for quantization-aware training with learned bit-widths.

    The arguments set how every layer is quantized; a layer wrapped with
    :func:`tfadaqat.annotate` takes its annotation's settings (method, bits, range, options,
    skip) and these for what the annotation leaves unset, so one model can mix methods.

    Args:
      model: A built tf-keras Sequential or Functional model (nested models are flattened),
        or a Keras 3 one of standard layers, which is first rebuilt in tf-keras with the
        same weights (:func:`tfadaqat.keras3.from_keras3`).
      method: "adaqat" (relaxed bit-widths learned by finite differences, DoReFa weights,
        PACT activations), "dq" (learned step and range, derived bit-width) or "lsq" (fixed
        bit-widths, learned step).
      weight_bits: Initial bit-width of every weight tensor (the fixed one for "lsq").
      activation_bits: Initial bit-width of every activation tensor.
      min_bits: Lowest bit-width a learned bit-width may take.
      max_bits: Highest bit-width a learned bit-width may take.
      skip: Names of layers to leave in float.
      learn_bits: For "adaqat": keep relaxed bit-width variables (False fixes the bits).
      quantize_inputs: Quantize the model inputs (signed grid).
      layer_bits: Bit-widths by layer name that replace `weight_bits` and `activation_bits`
        for every tensor of that layer (e.g. ``{"stem_conv": 8, "classifier": 8}`` to keep
        the first and last layers at 8 bits; the input's quantizer is the layer
        ``"<input name>_quantize_point"``). Fixed for "lsq", the initial bits otherwise.
      budget: A :class:`tfadaqat.Budget` the learned bit-widths must meet by the end of ``fit``
        ("dq": a penalty on the loss; "adaqat": its rule's cost term with prices adapted
        to the budget, see :func:`tfadaqat.adaqat.probe`). It is resolved against this model
        at once.
      cost_weight: "dq" only: a float ``c``, giving DQ's penalty weights
        ``lambda_j = c / budget_j^2`` (so the penalty is ``c sum_j (excess_j / budget_j)^2``,
        one scale for BitOPs and KB), or a dict of explicit ``lambda_j`` by quantity
        ("bitops", "weight_kb", "activation_kb").
      adaqat_rule: For "adaqat" with `learn_bits`: the :class:`tfadaqat.adaqat.AdaQATRule`
        that learns the bit-widths during ``fit`` ("default": the authors' settings; None: the
        bit-widths stay where they are set).
      **method_options: Constructor options of the method's quantizers: "grid", "rescale"
        (adaqat); "parametrization", "power_of_two", "min_step", "max_step" (dq).

    Returns:
      A :class:`tfadaqat.QuantizedModel` (a Functional tf-keras model) whose quantized layers
      are TFMOT ``QuantizeWrapperV2`` objects, with the original weights. Its data-dependent
      quantizer parameters initialise on the first batch of ``fit``/``evaluate``/``predict``.

    Raises:
      ValueError: For bad arguments (naming the argument and allowed values), a subclassed
        or already quantized model, a Keras 3 model with layers tf-keras lacks (named),
        `skip` naming a missing layer, or a budget that the model cannot reach (the message
        states the smallest reachable cost).

    Example:
      >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
      >>> qmodel = quantize_model(model, "lsq", weight_bits=4, activation_bits=4)
      >>> bit_widths(qmodel)["dense"]["kernel"]
      4
    """
    method_definition = methods_lib.get(method)
    for name, value in (("weight_bits", weight_bits), ("activation_bits", activation_bits),
                        ("min_bits", min_bits), ("max_bits", max_bits)):
        quantizers_lib.validate_bits(name, value)
    if min_bits > max_bits:
        raise ValueError(f"min_bits ({min_bits}) must be <= max_bits ({max_bits})")
    if method_definition.learns_bits:
        for name, value in (("weight_bits", weight_bits), ("activation_bits", activation_bits)):
            if not min_bits <= value <= max_bits:
                raise ValueError(f"{name} must lie in min_bits..max_bits = {min_bits}..{max_bits} "
                                 f"for method {method!r}, got {value}")
    if weight_bits < 2:
        raise ValueError(f"weight_bits must be an integer in 2..16 (signed weights need 2 bits), "
                         f"got {weight_bits}")
    method_definition.validate_options(method_options)
    settings = method_definition.settings_from_arguments(learn_bits=learn_bits,
                                                         adaqat_rule=adaqat_rule)
    _check_budget_arguments(method_definition, budget, cost_weight, learn_bits, settings)
    del settings  # given to each method the model ends up using, below
    if is_keras3_object(model):
        model = from_keras3(model)
    _check_model(model)
    if isinstance(skip, str):
        skip = (skip,)
    flat, annotations = flatten_annotated_model(model, quantize_inputs=quantize_inputs)
    names = {layer.name for layer in flat.layers}
    missing = sorted(set(skip) - names)
    if missing:
        raise ValueError(f"skip names layer(s) {missing} that the model does not have; "
                         f"layers: {sorted(names)}")

    defaults = _LayerSettings(method_definition, weight_bits, activation_bits, min_bits,
                              max_bits, learn_bits, dict(method_options))
    per_layer = _layer_bits_settings(defaults, layer_bits, names)
    skip = set(skip)
    for name, annotation in annotations.items():
        if annotation is None or not isinstance(annotation, LayerAnnotation):
            raise ValueError(
                f"layer {name!r} is annotated with {type(annotation).__name__} (TFMOT's "
                "quantize_annotate_layer); tfadaqat reads the annotations of tfadaqat.annotate")
        if annotation.skip:
            skip.add(name)
        elif name in per_layer:
            raise ValueError(f"layer {name!r} has both an annotation and layer_bits; give its "
                             "bits in one place")
        else:
            per_layer[name] = _annotated_settings(defaults, annotation, name)

    def quantizer(kind: str, signed: bool, layer_names: List[str]):
        """The quantizer of a tensor that ends the fused chain `layer_names` (nearest
        first): with the layer's own settings, else those of the nearest annotated layer
        of the chain (``layer_bits`` names one layer's own tensors only)."""
        settings = per_layer.get(layer_names[0]) or next(
            (per_layer[name] for name in layer_names[1:]
             if name in annotations and name in per_layer), defaults)
        return settings.method.make_quantizer(
            kind, signed=signed,
            bits=settings.weight_bits if kind == "weight" else settings.activation_bits,
            min_bits=max(settings.min_bits, 2) if signed else settings.min_bits,
            max_bits=settings.max_bits, learn_bits=settings.learn_bits,
            options=settings.options)

    layer_configs, unsupported = _plan(flat, skip, quantizer)
    if unsupported:
        warnings.warn(
            "tfadaqat.quantize_model leaves these layers in float (no integer kernel is known "
            f"for them): {', '.join(unsupported)}. Pass skip=[...] to silence this warning for "
            "layers you keep in float on purpose.", stacklevel=2)
    if not layer_configs:
        raise ValueError("the model has no layer tfadaqat can quantize")

    replaced_norms = []

    def annotate(layer):
        config = layer_configs.get(layer.name)
        if config is None:
            return layer
        if type(layer) is keras.layers.LayerNormalization and normalizes_last_axis(
                layer, len(layer.input_shape)):
            # Its intermediates on the file's int8 grids (tfadaqat.layer_normalization).
            replaced_norms.append((layer, Int8LayerNormalization.from_layer(layer)))
            layer = replaced_norms[-1][1]
        return tfmot.quantization.keras.quantize_annotate_layer(layer, quantize_config=config)

    with quantize_scope():
        annotated = keras.models.clone_model(flat, clone_function=annotate)
        for source, replacement in replaced_norms:
            copy_weights(source, replacement)
        applied = tfmot.quantization.keras.quantize_apply(
            annotated, scheme=_AnnotatedOnlyScheme(), quantized_layer_name_prefix="quant_")
        quantized = _rebuild_from_config(applied)
    _finalize_adapted_normalizations(quantized)
    used = methods_lib.in_model(quantized)
    if budget is not None:
        _check_one_learning_method(used, method_definition)
        resolved = budget.resolve(quantized)
        quantized.set_budget(resolved, _penalty_weights(resolved, cost_weight))
    for used_method in used:
        learning = any(getattr(quantizer, "learn_bits", True) for _, _, quantizer, _, _ in
                       quantized_tensors(quantized) if used_method.owns(quantizer))
        method_settings = used_method.settings_from_arguments(learn_bits=learning,
                                                              adaqat_rule=adaqat_rule)
        if method_settings is not None:
            quantized.set_method_settings(used_method.name, method_settings)
    return quantized


@dataclasses.dataclass(frozen=True)
class _LayerSettings:
    """How one layer's tensors are quantized: ``quantize_model``'s arguments, or a layer's
    own (``layer_bits``, :func:`tfadaqat.annotate`)."""

    method: methods_lib.Method
    weight_bits: int
    activation_bits: int
    min_bits: int
    max_bits: int
    learn_bits: bool
    options: Dict[str, Any]


def _layer_bits_settings(defaults: _LayerSettings, layer_bits, names) -> Dict[str, Any]:
    """The settings `layer_bits` (bits by layer name) gives its layers."""
    layer_bits = dict(layer_bits or {})
    missing = sorted(set(layer_bits) - names)
    if missing:
        raise ValueError(f"layer_bits names layer(s) {missing} that the model does not have; "
                         f"layers: {sorted(names)}")
    low = max(defaults.min_bits, 2)
    for name, value in layer_bits.items():
        quantizers_lib.validate_bits(f"layer_bits[{name!r}]", value, low=2)
        if defaults.method.learns_bits and not low <= value <= defaults.max_bits:
            raise ValueError(f"layer_bits[{name!r}] must lie in min_bits..max_bits = "
                             f"{low}..{defaults.max_bits} for method "
                             f"{defaults.method.name!r}, got {value}")
    return {name: dataclasses.replace(defaults, weight_bits=value, activation_bits=value)
            for name, value in layer_bits.items()}


def _annotated_settings(defaults: _LayerSettings, annotation, name: str) -> _LayerSettings:
    """`defaults` with what `annotation` sets for layer `name`.

    Raises:
      ValueError: Naming the layer, for bits outside its min..max (methods that learn bits)
        or options its method does not take.
    """
    method = methods_lib.get(annotation.method or defaults.method.name)
    options = annotation.options
    if options is None:
        options = defaults.options if method is defaults.method else {}

    def pick(field):
        value = getattr(annotation, field)
        return getattr(defaults, field) if value is None else value

    settings = _LayerSettings(method, pick("weight_bits"), pick("activation_bits"),
                              pick("min_bits"), pick("max_bits"), pick("learn_bits"),
                              dict(options))
    where = f"annotation of layer {name!r}"
    if settings.min_bits > settings.max_bits:
        raise ValueError(f"{where}: min_bits ({settings.min_bits}) must be <= max_bits "
                         f"({settings.max_bits})")
    if method.learns_bits:
        for field in ("weight_bits", "activation_bits"):
            value = getattr(settings, field)
            if not settings.min_bits <= value <= settings.max_bits:
                raise ValueError(f"{where}: {field} must lie in min_bits..max_bits = "
                                 f"{settings.min_bits}..{settings.max_bits} for method "
                                 f"{method.name!r}, got {value}")
    try:
        method.validate_options(settings.options)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    return settings


def _check_one_learning_method(used, default_method) -> None:
    """A budget is met by one method's bit-width learning: refuse a model whose layers learn
    bits with two, or with none."""
    learning = [method.name for method in used if method.learns_bits]
    if len(learning) > 1:
        raise ValueError(f"a budget is met by one method's bit-width learning, but this model's "
                         f"layers learn bit-widths with {learning}; annotate the other layers "
                         f"with one of them, or with method='lsq' (fixed bits)")
    if not learning:
        raise ValueError(f"a budget needs learned bit-widths, but every quantized layer has "
                         f"fixed ones (methods {[method.name for method in used]}); the "
                         f"method {default_method.name!r} learns none here")


def _check_budget_arguments(method, budget, cost_weight, learn_bits: bool, settings) -> None:
    if budget is None:
        return
    if not isinstance(budget, Budget):
        raise TypeError(f"budget must be a tfadaqat.Budget, got {type(budget).__name__}")
    method.check_budget_arguments(learn_bits=learn_bits, settings=settings)
    if isinstance(cost_weight, dict):
        unknown = sorted(set(cost_weight) - set(QUANTITIES))
        if unknown:
            raise ValueError(f"cost_weight keys must be among {QUANTITIES}, got {unknown}")
        values = list(cost_weight.values())
    else:
        values = [cost_weight]
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"cost_weight must be a non-negative number or a dict of them, "
                             f"got {cost_weight!r}")


def _penalty_weights(budget, cost_weight) -> Dict[str, float]:
    if isinstance(cost_weight, dict):
        return dict(cost_weight)
    return {name: float(cost_weight) / budget.limit(name) ** 2
            for name in QUANTITIES if budget.limit(name) is not None}


def _rebuild_from_config(model):
    """Rebuilds `model` from its config and copies its weights by layer and name.

    TFMOT's wrapper orders its weights differently when it wraps an already-built layer (as in
    ``quantize_apply``) than when it is built from a config (as in ``load_model``), and the
    optimizer saves its slots in weight order. Returning the model in its loaded form makes a
    saved and reloaded model, optimizer state included, identical to the one trained.
    Layer classes the model uses that Keras does not know by name (custom layers, which
    ``load_model`` then needs in ``custom_objects`` too) are passed along.
    """
    # Only custom classes: passing Keras' own ones changes how TFMOT's wrapper builds and so
    # the weight order this function exists to fix.
    classes = {type(unwrapped_layer(layer)).__name__: type(unwrapped_layer(layer))
               for layer in model.layers if is_custom_layer(unwrapped_layer(layer))}
    rebuilt = QuantizedModel.from_config(model.get_config(), custom_objects=classes or None)
    source_layers = {layer.name: layer for layer in model.layers}
    for layer in rebuilt.layers:
        values = {_short_name(weight): weight for weight in source_layers[layer.name].weights}
        for weight in layer.weights:
            weight.assign(values[_short_name(weight)])
    return rebuilt


def _short_name(weight) -> str:
    """``'quant_conv/kernel:0'`` -> ``'kernel'``: unique within a layer, whatever the scope."""
    return weight.name.split(":")[0].split("/")[-1]


def _check_model(model) -> None:
    if not isinstance(model, keras.Model):
        raise ValueError(f"model must be a tf-keras Model, got {type(model).__name__}")
    if not is_graph_network(model):
        raise ValueError(
            f"model {model.name!r} is a subclassed Keras model ({type(model).__name__}); "
            "quantize_model needs a Sequential or Functional model, whose layer graph it can "
            "read. Rebuild it with the Functional API.")
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built; give its first layer an input "
                         "shape or call model.build(input_shape)")
    if any(isinstance(layer, tfmot.quantization.keras.QuantizeWrapper)
           for layer in _all_layers(model)):
        raise ValueError(f"model {model.name!r} is already quantized; pass the float model")


def _all_layers(model) -> Iterator[Any]:
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _plan(flat, skip, quantizer) -> Tuple[Dict[str, configs_lib.LayerQuantizeConfig], List[str]]:
    """Decides the QuantizeConfig of every layer of the flattened model from its kind.

    Raises:
      ValueError: For a custom layer class that has no kind (named, with what to do).
    """
    producers: Dict[str, List[Any]] = {}
    consumers: Dict[str, List[Any]] = {layer.name: [] for layer in flat.layers}
    ordered = []
    nodes_by_depth = functional_nodes_by_depth(flat)
    for depth in sorted(nodes_by_depth, reverse=True):
        for node in nodes_by_depth[depth]:
            ordered.append(node.layer)
            inbound = [tensor._keras_history.layer for tensor in tf.nest.flatten(node.keras_inputs)]
            producers[node.layer.name] = inbound
            for producer in inbound:
                consumers[producer.name].append(node.layer)
    output_layers = {tensor._keras_history.layer.name for tensor in flat.outputs}
    kinds = {layer.name: kind_of(layer) for layer in ordered}

    def fused_into_consumer(layer) -> bool:
        kind, users = kinds[layer.name], consumers[layer.name]
        if layer.name in output_layers or len(users) != 1:
            return False
        user = users[0]
        if user.name in skip or kinds[user.name] is None:
            return False
        linear = activation_name(layer) in (None, "linear")
        if kind.folds_batch_norm and linear and isinstance(user, _layers.BatchNormalization):
            return True
        return (kind.fuses_into_relu and linear and kinds[user.name].name == "relu"
                and activation_name(user) in _RELU_FAMILY)

    non_negative: Dict[str, bool] = {}
    # The layers whose output a layer's output quantizer ends (conv -> BN -> ReLU: the ReLU
    # carries the conv's and the BN's), nearest first: a layer's own settings (see
    # tfadaqat.annotate) apply to the output of its fused chain.
    carried: Dict[str, List[str]] = {}
    configs: Dict[str, configs_lib.LayerQuantizeConfig] = {}
    unsupported: List[str] = []
    for layer in ordered:
        kind = kinds[layer.name]
        inbound = producers.get(layer.name, [])
        if kind is None:
            non_negative[layer.name] = False
            if layer.name in skip:
                continue
            if is_custom_layer(layer):
                raise ValueError(
                    f"layer {layer.name!r} is of the custom class {type(layer).__name__} "
                    f"({type(layer).__module__}), which tfadaqat has no integer kernel for. "
                    f"Keep it in float with skip=[{layer.name!r}] (export then needs "
                    "allow_float_ops=True), or, if it only moves values (a reshape or crop), "
                    f"call tfadaqat.register_layer_kind({type(layer).__name__}, 'same_grid') "
                    "first.")
            unsupported.append(f"{layer.name} ({type(layer).__name__})")
            continue
        if kind.sign == "non_negative":
            non_negative[layer.name] = True
        elif kind.sign == "activation":
            non_negative[layer.name] = is_non_negative_activation(activation_name(layer))
        elif kind.sign == "inputs":
            non_negative[layer.name] = bool(inbound) and all(
                non_negative.get(p.name, False) for p in inbound)
        else:
            non_negative[layer.name] = False
        if kind.output == "keep" or layer.name in skip:
            continue
        attributes = kind.weights
        weight_quantizer = quantizer("weight", True, [layer.name]) if attributes else None
        output_quantizer = None
        if kind.output == "fixed":
            output_quantizer = quantizers_lib.FixedGridQuantizer(*kind.fixed_grid)
        elif not fused_into_consumer(layer):
            output_quantizer = quantizer("activation", not non_negative[layer.name],
                                         [layer.name] + carried.get(layer.name, []))
        else:
            carried[consumers[layer.name][0].name] = [layer.name] + carried.get(layer.name, [])
        if weight_quantizer is None and output_quantizer is None:
            continue
        configs[layer.name] = configs_lib.LayerQuantizeConfig(attributes, weight_quantizer,
                                                              output_quantizer)
    return configs, unsupported


class _NoLayoutTransform(tfmot.quantization.keras.QuantizeLayoutTransform):
    """tfadaqat plans the graph itself (see module docstring): nothing to transform."""

    def apply(self, model, layer_quantize_map):
        return model, layer_quantize_map


class _NoDefaultRegistry(tfmot.quantization.keras.QuantizeRegistry):
    """Layers tfadaqat did not annotate stay float: no default QuantizeConfig."""

    def get_quantize_config(self, layer):
        return None

    def supports(self, layer):
        return False


class _AnnotatedOnlyScheme(tfmot.quantization.keras.QuantizeScheme):

    def get_layout_transformer(self):
        return _NoLayoutTransform()

    def get_quantize_registry(self):
        return _NoDefaultRegistry()


@contextlib.contextmanager
def quantize_scope():
    """Scope in which Keras can deserialize tfadaqat and TFMOT objects (for ``load_model``).

    Example:
      >>> with quantize_scope():
      ...     model = keras.models.load_model(path)  # doctest: +SKIP
    """
    objects = {f"tfadaqat>{name}": cls for name, cls in quantizers_lib.QUANTIZER_CLASSES.items()}
    objects["tfadaqat>LayerQuantizeConfig"] = configs_lib.LayerQuantizeConfig
    objects["tfadaqat>LayerAnnotation"] = LayerAnnotation
    objects["tfadaqat>QuantizedModel"] = QuantizedModel
    objects["tfadaqat>ChannelAffine"] = ChannelAffine
    objects["tfadaqat>QuantizationPoint"] = QuantizationPoint
    with tfmot.quantization.keras.quantize_scope(objects):
        yield


def load_model(path, **kwargs):
    """Loads a model saved with ``model.save(path)``, quantizer variables included."""
    with quantize_scope():
        model = keras.models.load_model(path, **kwargs)
    _finalize_adapted_normalizations(model)
    return model


def _finalize_adapted_normalizations(model) -> None:
    """Recomputes the mean and variance an adapted Normalization normalizes with.

    tf-keras keeps an adapted Normalization's statistics in variables (``adapt_mean``,
    ``adapt_variance``) and normalizes with tensors computed from them by ``finalize_state``;
    a layer rebuilt and given the variables' values by ``set_weights`` (cloning, quantize_apply,
    loading) still held the tensors of its fresh build (mean 0, variance 1).
    """
    for layer in model.layers:
        inner = unwrapped_layer(layer)
        if (isinstance(inner, keras.layers.Normalization) and inner.built
                and inner.input_mean is None):
            inner.finalize_state()
