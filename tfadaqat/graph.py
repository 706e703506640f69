"""The graph tfadaqat quantizes: one flat Functional model of layers with integer kernels.

:func:`flatten_model` replays a Sequential or Functional model, nested models included, into
one Functional graph, and on the way rewrites constructs that have no single integer TFLite
kernel into standard pieces that compute the same floats:

* a Conv2D / DepthwiseConv2D / Dense / Conv2DTranspose whose activation is not linear, ReLU
  or ReLU6 becomes the layer with a linear activation followed by an ``Activation`` layer
  named ``<layer>_<activation>`` (the activation gets its own grid: softmax's fixed one, for
  instance);
* ``SeparableConv2D`` becomes a ``DepthwiseConv2D`` named ``<layer>_depthwise`` and a 1x1
  ``Conv2D`` that keeps the layer's name, each with its own learned bit-width;
* ``Activation("swish")`` (SiLU) becomes ``x * sigmoid(x)``: an ``Activation("sigmoid")``
  named ``<layer>_sigmoid`` and a ``Multiply`` that keeps the name;
* ``TFOpLambda`` additions and multiplications (``x + y``, ``x * 3.0``, ``x / 6``) become
  ``Add`` / ``Multiply`` layers, or a :class:`tfadaqat.layers.ChannelAffine` when one operand
  is a constant; keras.applications' ``CustomScaleLayer`` (InceptionResNetV2) becomes a
  ``ChannelAffine`` and an ``Add``, and ``LayerScale`` (ConvNeXt) a ``ChannelAffine``.

Rewritten layers start from the original weights, so the flattened model computes what the
original does (tested against it).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import numpy as np

from tfadaqat._compat import (functional_nodes_by_depth, is_graph_network, keras,
                              quantize_annotate_class, tf)
from tfadaqat.layer_kinds import FUSED_ACTIVATIONS, activation_name
from tfadaqat.layers import ChannelAffine, QuantizationPoint

_layers = keras.layers
INPUT_POINT_SUFFIX = "_quantize_point"
_WEIGHT_LAYERS = (_layers.Conv1D, _layers.Conv2D, _layers.DepthwiseConv2D, _layers.Dense,
                  _layers.SeparableConv2D, _layers.Conv2DTranspose)
_ADD_SYMBOLS = ("__operators__.add", "math.add")
_MULTIPLY_SYMBOLS = ("math.multiply", "__operators__.mul")
_SUBTRACT_SYMBOLS = ("math.subtract", "__operators__.sub")
_DIVIDE_SYMBOLS = ("math.truediv", "math.divide", "__operators__.truediv")


def flatten_model(model, *, quantize_inputs: bool = False):
    """Replays `model` into one flat Functional graph of integer-friendly layers.

    Layers that are not rewritten are the same objects (weights shared with `model`);
    rewritten ones (see the module docstring) are new layers starting from the same weights.
    With `quantize_inputs`, an identity layer named ``<input>_quantize_point`` follows each
    input. Annotated layers (TFMOT ``QuantizeAnnotate`` wrappers, see
    :func:`tfadaqat.annotate`) are replaced by the layer they wrap.

    Raises:
      ValueError: If a nested model is subclassed or a layer is called more than once.
    """
    return flatten_annotated_model(model, quantize_inputs=quantize_inputs)[0]


def flatten_annotated_model(model, *, quantize_inputs: bool = False):
    """:func:`flatten_model`, and the annotations of the flat layers.

    Returns:
      ``(flat model, {flat layer name: the quantize_config of the QuantizeAnnotate wrapper
      it comes from})``; every layer a rewrite makes of an annotated layer (a separable
      convolution's two convolutions, a split activation) carries the layer's annotation.
    """
    inputs = [keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype,
                          name=tensor.name.split(":")[0]) for tensor in model.inputs]
    entry = [QuantizationPoint(name=f"{tensor.name.split(':')[0]}{INPUT_POINT_SUFFIX}")(t)
             if quantize_inputs else t for tensor, t in zip(model.inputs, inputs)]
    annotations: Dict[str, Any] = {}
    outputs = _replay(model, entry, annotations)
    flat = keras.Model(inputs, outputs, name=model.name)
    called: Dict[str, int] = {}
    for nodes in functional_nodes_by_depth(flat).values():
        for node in nodes:
            if not node.is_input:
                called[node.layer.name] = called.get(node.layer.name, 0) + 1
    shared = sorted(name for name, count in called.items() if count > 1)
    if shared:
        raise ValueError(f"layer(s) {shared} are called more than once; tfadaqat quantizes "
                         "each layer for one input tensor, so use one layer per call")
    return flat, annotations


def _replay(model, inputs: List[Any], annotations: Dict[str, Any]):
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
                outputs = _replay(node.layer, tf.nest.flatten(args[0]), annotations)
            elif isinstance(node.layer, quantize_annotate_class):
                inner = node.layer.layer
                rewrite = _rewrite(inner, args, kwargs)
                outputs = rewrite() if rewrite is not None else inner(*args, **kwargs)
                for layer in _layers_between(outputs, (args, kwargs)):
                    annotations[layer.name] = node.layer.quantize_config
            else:
                rewrite = _rewrite(node.layer, args, kwargs)
                outputs = rewrite() if rewrite is not None else node.layer(*args, **kwargs)
            for old, new in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(outputs)):
                tensors[id(old)] = new
    result = [tensors[id(tensor)] for tensor in model.outputs]
    return result[0] if len(result) == 1 else result


def _layers_between(outputs, inputs) -> List[Any]:
    """The layers of the graph from the tensors `inputs` (a nested structure) to `outputs`."""
    stop = {id(value) for value in tf.nest.flatten(inputs) if _is_symbolic(value)}
    pending, seen, found = list(tf.nest.flatten(outputs)), set(), []
    while pending:
        tensor = pending.pop()
        if id(tensor) in stop or id(tensor) in seen or not _is_symbolic(tensor):
            continue
        seen.add(id(tensor))
        layer, node_index, _ = tensor._keras_history
        if layer not in found:
            found.append(layer)
        pending.extend(tf.nest.flatten(layer._inbound_nodes[node_index].keras_inputs))
    return found


def _rewrite(layer, args, kwargs) -> Optional[Callable[[], Any]]:
    """A function applying the rewritten pieces of `layer` to its inputs, or None."""
    name = type(layer).__name__
    if isinstance(layer, _layers.SeparableConv2D):
        return lambda: _separable(layer, args[0])
    if isinstance(layer, _WEIGHT_LAYERS) and activation_name(layer) not in FUSED_ACTIVATIONS:
        return lambda: _split_activation(layer, args[0])
    if type(layer) is _layers.Activation and activation_name(layer) in ("swish", "silu"):
        return lambda: _swish(layer.name, args[0])
    if name == "TFOpLambda":
        return _tf_op(layer, args, kwargs)
    if name == "CustomScaleLayer":  # keras.applications.InceptionResNetV2
        residual, branch = args[0]
        return lambda: _layers.Add(name=layer.name)([
            residual, ChannelAffine(float(layer.scale), 0.0, trainable=False,
                                    name=f"{layer.name}_scale")(branch)])
    if name == "LayerScale":  # keras.applications.ConvNeXt
        return lambda: ChannelAffine(layer.gamma.numpy().tolist(), None,
                                     name=layer.name)(args[0])
    return None


def _clone(layer, **changes):
    config = {**layer.get_config(), **changes}
    return type(layer).from_config(config)


def _split_activation(layer, x):
    activation = activation_name(layer)
    y = _with_weights(_clone(layer, activation="linear"), x, layer.get_weights())
    return _activation(f"{layer.name}_{activation}", activation, y)


def _activation(name: str, activation: str, x):
    if activation in ("swish", "silu"):
        return _swish(name, x)
    return _layers.Activation(activation, name=name)(x)


def _swish(name: str, x):
    return _layers.Multiply(name=name)([x, _layers.Activation("sigmoid",
                                                              name=f"{name}_sigmoid")(x)])


def _separable(layer, x):
    config = layer.get_config()
    activation = activation_name(layer)
    fused = activation in FUSED_ACTIVATIONS
    depthwise = _layers.DepthwiseConv2D(
        kernel_size=config["kernel_size"], strides=config["strides"],
        padding=config["padding"], depth_multiplier=config["depth_multiplier"],
        dilation_rate=config["dilation_rate"], use_bias=False,
        name=f"{layer.name}_depthwise")
    pointwise = _layers.Conv2D(
        filters=config["filters"], kernel_size=1, use_bias=config["use_bias"],
        activation=config["activation"] if fused else "linear", name=layer.name)
    y = _with_weights(depthwise, x, [layer.depthwise_kernel.numpy()])
    z = _with_weights(pointwise, y, [layer.pointwise_kernel.numpy()]
                      + ([layer.bias.numpy()] if config["use_bias"] else []))
    return z if fused else _activation(f"{layer.name}_{activation}", activation, z)


def _with_weights(layer, x, weights):
    y = layer(x)
    layer.set_weights(weights)
    return y


def _tf_op(layer, args, kwargs) -> Optional[Callable[[], Any]]:
    """Rewrites ``x + y``, ``x * y``, ``x + c``, ``x * c``, ``x - c``, ``x / c``."""
    operands = list(args) + [value for key, value in kwargs.items() if key in ("x", "y")]
    if len(operands) != 2:
        return None
    tensors = [value for value in operands if _is_symbolic(value)]
    constants = [value for value in operands if not _is_symbolic(value)]
    symbol = layer.symbol
    if len(tensors) == 2:
        if symbol in _ADD_SYMBOLS:
            return lambda: _layers.Add(name=layer.name)(tensors)
        if symbol in _MULTIPLY_SYMBOLS:
            return lambda: _layers.Multiply(name=layer.name)(tensors)
        return None
    if len(tensors) != 1 or not _is_constant(constants[0]):
        return None
    constant = np.asarray(constants[0], np.float32)
    tensor_first = _is_symbolic(operands[0])
    if symbol in _ADD_SYMBOLS:
        multiplier, offset = 1.0, constant
    elif symbol in _MULTIPLY_SYMBOLS:
        multiplier, offset = constant, 0.0
    elif symbol in _SUBTRACT_SYMBOLS:
        multiplier, offset = (1.0, -constant) if tensor_first else (-1.0, constant)
    elif symbol in _DIVIDE_SYMBOLS and tensor_first and np.all(constant != 0):
        multiplier, offset = 1.0 / constant, 0.0
    else:
        return None
    return lambda: ChannelAffine(np.asarray(multiplier).tolist(), np.asarray(offset).tolist(),
                                 trainable=False, name=layer.name)(tensors[0])


def _is_symbolic(value) -> bool:
    """Whether `value` is a tensor of the graph being built (not a Python constant)."""
    return getattr(value, "_keras_history", None) is not None


def _is_constant(value) -> bool:
    try:
        array = np.asarray(value, np.float32)
    except (TypeError, ValueError):
        return False
    return array.ndim <= 1
