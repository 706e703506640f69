"""Keras 3 models rebuilt as tf-keras models with the same weights, for quantize_model.

TensorFlow 2.21's ``tf.keras`` is Keras 3 unless legacy Keras is switched on before anything
imports it, while TFMOT, on which tfadaqat builds, works on tf-keras models only. A user who
built a model with Keras 3 (``import keras``) therefore gets it rebuilt here: the same graph
of layers (each Keras 3 layer of ``keras.layers`` becomes the tf-keras layer of the same
class, with the arguments both know) and Keras 3's elementwise ops (``x * 2.0 + 1.0`` in a
Functional model, ``keras.ops.add``, ...) become TensorFlow ops, which tf-keras records as
``TFOpLambda`` layers and :func:`tfadaqat.flatten_model` turns into ``Add``/``Multiply``/
``ChannelAffine`` layers. Every weight is copied, so the rebuilt model computes what the
original computes (up to float round-off: both run TensorFlow kernels).

Initializers are not carried over (the weights are); regularizers and constraints are.
Custom layers, layers without a tf-keras class of the same name and other Keras 3 ops are
refused, all of them named in one error.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from tfadaqat._compat import is_keras3_object, keras, tf

# Keras 3 ops (keras.src.ops.*, by class name) with a TensorFlow op of the same meaning.
ELEMENTWISE_OPS: Dict[str, Callable] = {
    "Add": tf.math.add,
    "Subtract": tf.math.subtract,
    "Multiply": tf.math.multiply,
    "Divide": tf.math.truediv,
    "TrueDivide": tf.math.truediv,
    "Negative": tf.math.negative,
    "Maximum": tf.math.maximum,
    "Minimum": tf.math.minimum,
}
# Keras 3 activations that tf-keras lacks or defines differently (tf-keras' hard_sigmoid is
# clip(0.2 x + 0.5, 0, 1); Keras 3's is relu6(x + 3) / 6), built from layers tf-keras has.


def _hard_sigmoid(x, name: str):
    return keras.layers.ReLU(6.0, name=f"{name}_relu6")(x + 3.0) * (1.0 / 6.0)


def _hard_silu(x, name: str):
    return keras.layers.Multiply(name=name)([x, _hard_sigmoid(x, name)])


KERAS3_ACTIVATIONS: Dict[str, Callable] = {
    "hard_sigmoid": _hard_sigmoid,
    "hard_silu": _hard_silu,
    "hard_swish": _hard_silu,
}
# Constructor arguments every tf-keras layer takes through ``**kwargs``.
_BASE_LAYER_ARGUMENTS = ("name", "trainable", "dtype")
# Arguments whose values are Keras objects serialized by Keras 3.
_REGULARIZERS = ("kernel_regularizer", "bias_regularizer", "activity_regularizer",
                 "depthwise_regularizer", "pointwise_regularizer", "beta_regularizer",
                 "gamma_regularizer", "embeddings_regularizer")
_CONSTRAINTS = ("kernel_constraint", "bias_constraint", "depthwise_constraint",
                "pointwise_constraint", "beta_constraint", "gamma_constraint",
                "embeddings_constraint")


def _is_keras3_layer(operation) -> bool:
    module = type(operation).__module__ or ""
    return module.startswith("keras.src.layers.") or module.startswith("keras.layers")


def _is_keras3_op(operation) -> bool:
    return (type(operation).__module__ or "").startswith("keras.src.ops.")


def _tf_keras_class(operation) -> Optional[type]:
    if not _is_keras3_layer(operation):
        return None
    return getattr(keras.layers, type(operation).__name__, None)


def _describe(operation) -> str:
    return f"{operation.name!r} ({type(operation).__module__}.{type(operation).__name__})"


def _unsupported(operations) -> List[str]:
    refused = []
    for operation in operations:
        if type(operation).__name__ == "InputLayer":
            continue
        if _is_keras3_op(operation):
            if type(operation).__name__ not in ELEMENTWISE_OPS:
                refused.append(_describe(operation))
        elif _tf_keras_class(operation) is None:
            refused.append(_describe(operation))
        elif not _activation_known(operation):
            refused.append(f"{_describe(operation)}, activation "
                           f"{operation.get_config()['activation']!r}")
        elif len(getattr(operation, "_inbound_nodes", [])) > 1:
            refused.append(f"{_describe(operation)}, called more than once")
    return refused


def _activation_of(operation) -> Optional[str]:
    activation = operation.get_config().get("activation") if hasattr(
        operation, "get_config") else None
    if isinstance(activation, dict):
        activation = activation.get("config", {}).get("name", activation.get("class_name"))
    return activation


def _activation_known(operation) -> bool:
    activation = _activation_of(operation)
    if activation is None or activation in KERAS3_ACTIVATIONS:
        return True
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError):
        return False
    return True


def _policy_name(dtype) -> Any:
    """Keras 3 serializes a dtype policy as a dict; tf-keras takes its name."""
    if isinstance(dtype, dict):
        return dtype.get("config", {}).get("name", "float32")
    return dtype


def _keras_object(serialized, module) -> Any:
    if serialized is None or isinstance(serialized, str):
        return serialized
    return module.deserialize({"class_name": serialized["class_name"],
                               "config": serialized.get("config", {})})


def _tf_keras_layer(operation):
    """The tf-keras layer of the class and arguments of the Keras 3 layer `operation`."""
    layer_class = _tf_keras_class(operation)
    config = dict(operation.get_config())
    config["dtype"] = _policy_name(config.get("dtype"))
    accepted = set(inspect.signature(layer_class.__init__).parameters) | set(
        _BASE_LAYER_ARGUMENTS)
    arguments = {}
    for key, value in config.items():
        if key not in accepted or key.endswith("_initializer"):
            continue  # initial values do not matter: the weights are copied
        if key in _REGULARIZERS:
            value = _keras_object(value, keras.regularizers)
        elif key in _CONSTRAINTS:
            value = _keras_object(value, keras.constraints)
        elif key == "activation":
            value = _activation_of(operation)
            if value in KERAS3_ACTIVATIONS:
                value = "linear"  # applied after the layer (see _call)
        arguments[key] = value
    try:
        return layer_class(**arguments)
    except (TypeError, ValueError) as error:
        raise ValueError(f"Keras 3 layer {_describe(operation)} could not be rebuilt as "
                         f"tf-keras' {layer_class.__name__}: {error}") from error


def _copy_weights(source, target) -> None:
    values = source.get_weights()
    expected = target.get_weights()
    if len(values) != len(expected):
        raise ValueError(f"Keras 3 layer {_describe(source)} has {len(values)} weights, the "
                         f"rebuilt tf-keras layer {len(expected)}")
    converted = []
    for value, like in zip(values, expected):
        if value.size != like.size:
            raise ValueError(f"Keras 3 layer {_describe(source)}: a weight of shape "
                             f"{value.shape} cannot fill tf-keras' {like.shape}")
        converted.append(np.reshape(value, like.shape).astype(like.dtype))
    target.set_weights(converted)


def _input(operation):
    batch_shape = tuple(operation.batch_shape) if hasattr(operation, "batch_shape") else (
        (None,) + tuple(operation.output.shape[1:]))
    return keras.Input(batch_shape=batch_shape, dtype=_policy_name(operation.dtype),
                       name=operation.name)


def _map_structure(function, value):
    if isinstance(value, (list, tuple)):
        return type(value)(_map_structure(function, item) for item in value)
    if isinstance(value, dict):
        return {key: _map_structure(function, item) for key, item in value.items()}
    return function(value)


def from_keras3(model):
    """A tf-keras model with `model`'s layers, connections and weights.

    Args:
      model: A built Keras 3 Functional or Sequential model of standard layers
        (``keras.layers``) and elementwise ops (see ``ELEMENTWISE_OPS``).

    Returns:
      A tf-keras Functional model that computes what `model` computes.

    Raises:
      ValueError: For a model that is not a built Functional or Sequential model, or that
        holds layers or ops without a tf-keras counterpart (all of them named).
    """
    if not is_keras3_object(model):
        raise ValueError(f"model {getattr(model, 'name', model)!r} is not a Keras 3 model")
    if type(model).__name__ == "Sequential":
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise ValueError(f"Keras 3 Sequential model {model.name!r} is not built: give it "
                             "an Input (or call it once) before quantizing it")
        graph = functional
    elif hasattr(model, "operations") and hasattr(model, "inputs"):
        graph = model
    else:
        raise ValueError(f"Keras 3 model {model.name!r} ({type(model).__name__}) is not a "
                         "Functional or Sequential model: quantize_model needs its graph of "
                         "layers (subclassed models have none)")
    refused = _unsupported(graph.operations)
    if refused:
        raise ValueError(
            f"Keras 3 model {model.name!r} cannot be rebuilt in tf-keras for quantization: "
            f"{', '.join(refused)} {'has' if len(refused) == 1 else 'have'} no tf-keras "
            f"counterpart here (supported: keras.layers classes that tf-keras also has, used "
            f"once each, and the ops {sorted(ELEMENTWISE_OPS)}). Rebuild those parts with "
            "standard layers, or build the model with tf-keras (import tfadaqat first, then "
            "tf.keras or tf_keras).")
    tensors: Dict[int, Any] = {}
    pairs = []
    for operation in graph.operations:
        node = operation._inbound_nodes[0]
        if type(operation).__name__ == "InputLayer":
            new_tensor = _input(operation)
            tensors[id(operation.output)] = new_tensor
            continue
        arguments = _map_structure(
            lambda value: tensors[id(value)] if id(value) in tensors else value,
            (list(node.arguments.args), dict(node.arguments.kwargs)))
        args, kwargs = arguments
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        activation = _activation_of(operation)
        if _is_keras3_op(operation):
            outputs = ELEMENTWISE_OPS[type(operation).__name__](*args, **kwargs)
        elif type(operation).__name__ == "Activation" and activation in KERAS3_ACTIVATIONS:
            outputs = KERAS3_ACTIVATIONS[activation](args[0], operation.name)
        else:
            layer = _tf_keras_layer(operation)
            kwargs.pop("mask", None)
            outputs = layer(*args, **kwargs)
            pairs.append((operation, layer))
            if activation in KERAS3_ACTIVATIONS:
                outputs = KERAS3_ACTIVATIONS[activation](outputs, f"{operation.name}_{activation}")
        for old, new in zip(tf.nest.flatten(node.output_tensors), tf.nest.flatten(outputs)):
            tensors[id(old)] = new
    inputs = [tensors[id(tensor)] for tensor in graph.inputs]
    outputs = [tensors[id(tensor)] for tensor in graph.outputs]
    rebuilt = keras.Model(inputs[0] if len(inputs) == 1 else inputs,
                          outputs[0] if len(outputs) == 1 else outputs, name=model.name)
    for operation, layer in pairs:
        _copy_weights(operation, layer)
    return rebuilt
