"""``quantize_model`` and friends: turn a float Keras model into a learned-bit-width QAT model.

:func:`quantize_model` works in three passes:

1. **Flatten.** Sequential and Functional models, nested ones included, are replayed layer by
   layer into one Functional graph, with an identity "quantization point" after every model
   input so the first layer sees integer inputs.
2. **Annotate.** Each layer gets a :class:`tfadaqat.configs.LayerQuantizeConfig`: Conv2D,
   DepthwiseConv2D and Dense have their kernel quantized; a tensor is quantized where an
   integer kernel produces it, at the end of the chain the integer model fuses
   (``conv [-> BatchNormalization] [-> ReLU]``, ``Add [-> ReLU]``), and after Concatenate and
   average pooling. Shape-only layers (Flatten, Reshape, Dropout, padding, max pooling) keep
   values on their input's grid and need nothing. Any other layer stays float and is named in
   one warning.
3. **Apply.** TFMOT's ``quantize_apply`` wraps the annotated layers in ``QuantizeWrapperV2``
   with a scheme that adds no layout transform of its own.

The tensors a ReLU produces are quantized on an unsigned grid, all others on a signed one.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from tfadaqat import configs as configs_lib
from tfadaqat import quantizers as quantizers_lib
from tfadaqat.model import QuantizedModel
from tfadaqat._compat import (functional_nodes_by_depth, is_graph_network, is_keras3_object,
                              keras, tf, tfmot, wrapper_output_quantizer,
                              wrapper_weight_quantizers)

_layers = keras.layers

#: Layers whose weights are quantized, with the attributes holding them.
WEIGHT_ATTRIBUTES = {
    _layers.Conv2D: ("kernel",),
    _layers.DepthwiseConv2D: ("depthwise_kernel",),
    _layers.Dense: ("kernel",),
}
#: Layers whose output needs a quantizer (unless fused into the next layer).
OUTPUT_LAYERS = (_layers.BatchNormalization, _layers.ReLU, _layers.Activation, _layers.Add,
                 _layers.Concatenate, _layers.AveragePooling2D, _layers.GlobalAveragePooling2D,
                 _layers.Identity)
#: Layers that keep their input's grid: nothing to quantize.
PASS_THROUGH_LAYERS = (_layers.InputLayer, _layers.Flatten, _layers.Reshape, _layers.Dropout,
                       _layers.SpatialDropout2D, _layers.ZeroPadding2D, _layers.MaxPooling2D,
                       _layers.GlobalMaxPooling2D)
_RELU_FAMILY = ("relu", "relu6")
_NON_NEGATIVE_ACTIVATIONS = _RELU_FAMILY + ("sigmoid", "softmax")
_INPUT_POINT_SUFFIX = "_quantize_point"


def quantize_model(model, method: str = "adaqat", *, weight_bits: int = 8,
                   activation_bits: int = 8, min_bits: int = 2, max_bits: int = 8,
                   skip: Sequence[str] = (), learn_bits: bool = True,
                   quantize_inputs: bool = True, layer_bits: Optional[Dict[str, int]] = None,
                   budget=None, cost_weight=10.0, adaqat_rule="default", **method_options):
    """Returns a copy of `model` ready for quantization-aware training with learned bit-widths.

    Args:
      model: A built tf-keras Sequential or Functional model (nested models are flattened).
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
      **method_options: Constructor options of the method's quantizers: "grid", "rescale"
        (adaqat); "parametrization", "power_of_two", "min_step", "max_step" (dq).

      adaqat_rule: For "adaqat" with `learn_bits`: the :class:`tfadaqat.adaqat.AdaQATRule`
        that learns the bit-widths during ``fit`` ("default": the authors' settings; None: the
        bit-widths stay where they are set).

    Returns:
      A :class:`tfadaqat.QuantizedModel` (a Functional tf-keras model) whose quantized layers
      are TFMOT ``QuantizeWrapperV2`` objects, with the original weights. Its data-dependent
      quantizer parameters initialise on the first batch of ``fit``/``evaluate``/``predict``.

    Raises:
      ValueError: For bad arguments (naming the argument and allowed values), a subclassed,
        Keras 3 or already quantized model, `skip` naming a missing layer, or a budget that
        the model cannot reach (the message states the smallest reachable cost).

    Example:
      >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
      >>> qmodel = quantize_model(model, "lsq", weight_bits=4, activation_bits=4)
      >>> bit_widths(qmodel)["dense"]["kernel"]
      4
    """
    if method not in configs_lib.METHODS:
        raise ValueError(f"method must be one of {configs_lib.METHODS}, got {method!r}")
    for name, value in (("weight_bits", weight_bits), ("activation_bits", activation_bits),
                        ("min_bits", min_bits), ("max_bits", max_bits)):
        quantizers_lib.validate_bits(name, value)
    if min_bits > max_bits:
        raise ValueError(f"min_bits ({min_bits}) must be <= max_bits ({max_bits})")
    if method != "lsq":
        for name, value in (("weight_bits", weight_bits), ("activation_bits", activation_bits)):
            if not min_bits <= value <= max_bits:
                raise ValueError(f"{name} must lie in min_bits..max_bits = {min_bits}..{max_bits} "
                                 f"for method {method!r}, got {value}")
    if weight_bits < 2:
        raise ValueError(f"weight_bits must be an integer in 2..16 (signed weights need 2 bits), "
                         f"got {weight_bits}")
    configs_lib.validate_options(method, method_options)
    _check_budget_arguments(method, budget, cost_weight, learn_bits, adaqat_rule)
    _check_model(model)
    if isinstance(skip, str):
        skip = (skip,)
    flat = flatten_model(model, quantize_inputs=quantize_inputs)
    names = {layer.name for layer in flat.layers}
    missing = sorted(set(skip) - names)
    if missing:
        raise ValueError(f"skip names layer(s) {missing} that the model does not have; "
                         f"layers: {sorted(names)}")

    layer_bits = dict(layer_bits or {})
    missing = sorted(set(layer_bits) - names)
    if missing:
        raise ValueError(f"layer_bits names layer(s) {missing} that the model does not have; "
                         f"layers: {sorted(names)}")
    for name, value in layer_bits.items():
        quantizers_lib.validate_bits(f"layer_bits[{name!r}]", value, low=2)
        if method != "lsq" and not max(min_bits, 2) <= value <= max_bits:
            raise ValueError(f"layer_bits[{name!r}] must lie in min_bits..max_bits = "
                             f"{max(min_bits, 2)}..{max_bits} for method {method!r}, got "
                             f"{value}")

    def quantizer(kind: str, signed: bool, layer_name: str):
        bits = layer_bits.get(layer_name,
                              weight_bits if kind == "weight" else activation_bits)
        return configs_lib.make_quantizer(
            method, kind, signed=signed, bits=bits,
            min_bits=max(min_bits, 2) if signed else min_bits, max_bits=max_bits,
            learn_bits=learn_bits, options=method_options)

    layer_configs, unsupported = _plan(flat, set(skip), quantizer)
    if unsupported:
        warnings.warn(
            "tfadaqat.quantize_model leaves these layers in float (no integer kernel is known "
            f"for them): {', '.join(unsupported)}. Pass skip=[...] to silence this warning for "
            "layers you keep in float on purpose.", stacklevel=2)
    if not layer_configs:
        raise ValueError("the model has no layer tfadaqat can quantize")

    def annotate(layer):
        config = layer_configs.get(layer.name)
        if config is None:
            return layer
        return tfmot.quantization.keras.quantize_annotate_layer(layer, quantize_config=config)

    with quantize_scope():
        annotated = keras.models.clone_model(flat, clone_function=annotate)
        applied = tfmot.quantization.keras.quantize_apply(
            annotated, scheme=_AnnotatedOnlyScheme(), quantized_layer_name_prefix="quant_")
        quantized = _rebuild_from_config(applied)
    if budget is not None:
        resolved = budget.resolve(quantized)
        quantized.set_budget(resolved, _penalty_weights(resolved, cost_weight))
    if method == "adaqat" and learn_bits and adaqat_rule is not None:
        from tfadaqat.adaqat import AdaQATRule  # adaqat -> quantize
        if adaqat_rule == "default":
            adaqat_rule = AdaQATRule()
        if not isinstance(adaqat_rule, AdaQATRule):
            raise TypeError("adaqat_rule must be a tfadaqat.adaqat.AdaQATRule, 'default' or "
                            f"None, got {adaqat_rule!r}")
        quantized.set_adaqat_rule(adaqat_rule)
    return quantized


def _check_budget_arguments(method: str, budget, cost_weight, learn_bits: bool,
                            adaqat_rule) -> None:
    from tfadaqat.budget import QUANTITIES, Budget  # budget -> cost -> this module
    if budget is None:
        return
    if not isinstance(budget, Budget):
        raise TypeError(f"budget must be a tfadaqat.Budget, got {type(budget).__name__}")
    if method == "lsq":
        raise ValueError("method 'lsq' has fixed bit-widths and cannot learn to meet a budget; "
                         "use method 'dq' or 'adaqat'")
    if method == "adaqat" and (not learn_bits or adaqat_rule is None):
        raise ValueError("a budget with method 'adaqat' needs learned bit-widths: pass "
                         "learn_bits=True and an adaqat_rule (not None)")
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
    from tfadaqat.budget import QUANTITIES  # see _check_budget_arguments
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
    """
    rebuilt = QuantizedModel.from_config(model.get_config())
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
    if is_keras3_object(model):
        raise ValueError(
            "this model was built with Keras 3 (`import keras` / `tf.keras` without legacy "
            "Keras); tfadaqat and TFMOT need tf-keras. Build it with `import tfadaqat` first "
            "(which enables legacy Keras) and `import tf_keras as keras`, or use "
            "`tf.keras` after `import tfadaqat`.")
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
    if any(isinstance(layer, tfmot.quantization.keras.QuantizeWrapper) or
           type(layer).__name__ == "QuantizeAnnotate" for layer in _all_layers(model)):
        raise ValueError(f"model {model.name!r} is already quantized; pass the float model")


def _all_layers(model) -> Iterator[Any]:
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def flatten_model(model, *, quantize_inputs: bool = False):
    """Replays `model` into one Functional graph without nested models.

    The layers are the same objects (weights shared with `model`). With `quantize_inputs`, an
    identity layer named ``<input>_quantize_point`` follows each input.

    Raises:
      ValueError: If a nested model is subclassed or a layer is called more than once.
    """
    inputs = [keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype,
                          name=tensor.name.split(":")[0]) for tensor in model.inputs]
    entry = [keras.layers.Identity(name=f"{tensor.name.split(':')[0]}{_INPUT_POINT_SUFFIX}")(t)
             if quantize_inputs else t for tensor, t in zip(model.inputs, inputs)]
    outputs = _replay(model, entry)
    flat = keras.Model(inputs, outputs, name=model.name)
    called = {}
    for nodes in functional_nodes_by_depth(flat).values():
        for node in nodes:
            if not node.is_input:
                called[node.layer.name] = called.get(node.layer.name, 0) + 1
    shared = sorted(name for name, count in called.items() if count > 1)
    if shared:
        raise ValueError(f"layer(s) {shared} are called more than once; tfadaqat quantizes "
                         "each layer for one input tensor, so use one layer per call")
    return flat


def _replay(model, inputs: List[Any]):
    if not is_graph_network(model):
        raise ValueError(f"nested model {model.name!r} is subclassed ({type(model).__name__}); "
                         "quantize_model needs Sequential or Functional models throughout")
    tensors: Dict[int, Any] = {id(old): new for old, new in zip(model.inputs, inputs)}
    nodes_by_depth = functional_nodes_by_depth(model)
    for depth in sorted(nodes_by_depth, reverse=True):
        for node in nodes_by_depth[depth]:
            if node.is_input:
                continue
            args = tf.nest.map_structure(lambda value: tensors.get(id(value), value),
                                         node.call_args)
            kwargs = tf.nest.map_structure(lambda value: tensors.get(id(value), value),
                                           node.call_kwargs)
            if isinstance(node.layer, keras.Model):
                outputs = _replay(node.layer, tf.nest.flatten(args[0]))
            else:
                outputs = node.layer(*args, **kwargs)
            for old, new in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(outputs)):
                tensors[id(old)] = new
    result = [tensors[id(tensor)] for tensor in model.outputs]
    return result[0] if len(result) == 1 else result


def _activation_name(layer) -> Optional[str]:
    """Name of the element-wise activation a layer applies, if any."""
    if isinstance(layer, _layers.ReLU):
        if float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
            return "leaky_relu"
        if layer.max_value is None:
            return "relu"
        return "relu6" if float(layer.max_value) == 6.0 else "relu_capped"
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    name = keras.activations.serialize(activation)
    return name if isinstance(name, str) else getattr(activation, "__name__", "custom")


def _is_activation_layer(layer) -> bool:
    return isinstance(layer, (_layers.ReLU, _layers.Activation))


def _weight_attributes(layer) -> Optional[Tuple[str, ...]]:
    return WEIGHT_ATTRIBUTES.get(type(layer))


def _plan(flat, skip, quantizer) -> Tuple[Dict[str, configs_lib.LayerQuantizeConfig], List[str]]:
    """Decides the QuantizeConfig of every layer of the flattened model."""
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

    def supported(layer) -> bool:
        if layer.name in skip:
            return False
        if _weight_attributes(layer) is not None or isinstance(layer, PASS_THROUGH_LAYERS):
            return True
        if isinstance(layer, OUTPUT_LAYERS) and not isinstance(layer, _layers.Activation):
            return True
        return _is_activation_layer(layer)

    def fused_into_consumer(layer) -> bool:
        users = consumers[layer.name]
        if layer.name in output_layers or len(users) != 1 or not supported(users[0]):
            return False
        user = users[0]
        linear = _activation_name(layer) in (None, "linear")
        if _weight_attributes(layer) is not None and linear and isinstance(
                user, _layers.BatchNormalization):
            return True
        fusable_source = (_weight_attributes(layer) is not None and linear) or isinstance(
            layer, (_layers.BatchNormalization, _layers.Add))
        return fusable_source and _is_activation_layer(user) and _activation_name(
            user) in _RELU_FAMILY

    non_negative: Dict[str, bool] = {}
    configs: Dict[str, configs_lib.LayerQuantizeConfig] = {}
    unsupported: List[str] = []
    for layer in ordered:
        inbound = producers.get(layer.name, [])
        activation = _activation_name(layer)
        if activation is not None and activation != "linear":
            non_negative[layer.name] = activation in _NON_NEGATIVE_ACTIVATIONS
        elif isinstance(layer, (PASS_THROUGH_LAYERS, _layers.Add, _layers.Concatenate,
                                _layers.AveragePooling2D, _layers.GlobalAveragePooling2D)):
            non_negative[layer.name] = bool(inbound) and all(
                non_negative.get(p.name, False) for p in inbound)
        else:
            non_negative[layer.name] = False
        if isinstance(layer, _layers.InputLayer) or isinstance(layer, PASS_THROUGH_LAYERS):
            continue
        if layer.name in skip:
            continue
        if not supported(layer):
            unsupported.append(f"{layer.name} ({type(layer).__name__})")
            continue
        attributes = _weight_attributes(layer) or ()
        weight_quantizer = quantizer("weight", True, layer.name) if attributes else None
        output_quantizer = None
        if not fused_into_consumer(layer):
            output_quantizer = quantizer("activation", not non_negative[layer.name], layer.name)
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
    objects["tfadaqat>QuantizedModel"] = QuantizedModel
    with tfmot.quantization.keras.quantize_scope(objects):
        yield


def load_model(path, **kwargs):
    """Loads a model saved with ``model.save(path)``, quantizer variables included."""
    with quantize_scope():
        return keras.models.load_model(path, **kwargs)


def unwrapped_layer(layer):
    """The layer a TFMOT ``QuantizeWrapper`` wraps, or `layer` itself if it is not wrapped."""
    return layer.layer if isinstance(layer, tfmot.quantization.keras.QuantizeWrapper) else layer


def _quantized_layers(model) -> Iterator[Any]:
    for layer in model.layers:
        if isinstance(layer, tfmot.quantization.keras.QuantizeWrapper) and isinstance(
                layer.quantize_config, configs_lib.LayerQuantizeConfig):
            yield layer


def quantized_tensors(model) -> Iterator[Tuple[str, str, quantizers_lib.TensorQuantizer,
                                               Dict[str, tf.Variable], Any]]:
    """Yields ``(layer name, tensor role, quantizer, quantizer variables, wrapper)``.

    The role is the weight attribute (``"kernel"``, ``"depthwise_kernel"``) or ``"output"``;
    the layer name is the original (unwrapped) layer's.
    """
    for wrapper in _quantized_layers(model):
        attributes = wrapper.quantize_config.weight_attributes
        for attribute, (_, quantizer, variables) in zip(attributes,
                                                        wrapper_weight_quantizers(wrapper)):
            yield wrapper.layer.name, attribute, quantizer, variables, wrapper
        quantizer, variables = wrapper_output_quantizer(wrapper)
        if quantizer is not None:
            yield wrapper.layer.name, "output", quantizer, variables, wrapper


def bit_widths(model) -> Dict[str, Dict[str, int]]:
    """Integer bit-width of every quantized tensor: ``{layer: {"kernel": 4, "output": 6}}``.

    Raises:
      ValueError: If `model` has no tfadaqat-quantized layer.
    """
    result: Dict[str, Dict[str, int]] = {}
    for layer_name, role, quantizer, variables, _ in quantized_tensors(model):
        result.setdefault(layer_name, {})[role] = int(quantizer.bit_width(variables))
    if not result:
        raise ValueError(f"model {model.name!r} has no layer quantized by tfadaqat")
    return result


def set_bit_widths(model, bits: Dict[str, Dict[str, int]]) -> None:
    """Sets integer bit-widths, keyed like :func:`bit_widths` (a subset is fine).

    Raises:
      ValueError: For a layer or tensor the model does not quantize, a bit-width outside the
        quantizer's ``[min_bits, max_bits]``, or a quantizer with fixed bits.
    """
    tensors = {(name, role): (quantizer, variables)
               for name, role, quantizer, variables, _ in quantized_tensors(model)}
    for layer_name, roles in bits.items():
        for role, value in roles.items():
            if (layer_name, role) not in tensors:
                raise ValueError(f"no quantized tensor {role!r} in layer {layer_name!r}; "
                                 f"quantized: {sorted(tensors)}")
            quantizer, variables = tensors[(layer_name, role)]
            quantizer.set_bit_width(variables, value)
