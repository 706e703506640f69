"""The export plan: the model's layers in graph order, who feeds whom, which
BatchNormalization layers fold into the kernel before them, and every learned value (kernel
integers, biases, output grids, channel-affine maps) read once, eagerly, so that the traced
integer graph (:mod:`tfadaqat.export.graph`) holds constants only."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

from tfadaqat._compat import (functional_nodes_by_depth, keras, tf, wrapper_output_quantizer,
                              wrapper_weight_quantizers)
from tfadaqat.export.integers import (batch_norm_affine, channel_affine_parameters,
                                      weight_integers)
from tfadaqat.layer_kinds import activation_name, kind_of
from tfadaqat.tensors import is_quantized_wrapper, unwrapped_layer

_layers = keras.layers


WEIGHT_STORAGES = ("int8", "int4")


class ExportPlan:
    """The model's layers in graph order, with who feeds whom and which BN layers fold."""

    def __init__(self, model, int4: bool = False, allow_float_ops: bool = False,
                 calibrated: bool = False):
        self.allow_float_ops = allow_float_ops
        self.calibrated = calibrated  # a representative dataset will be given
        self.nodes = []
        for depth in sorted(functional_nodes_by_depth(model), reverse=True):
            self.nodes.extend(functional_nodes_by_depth(model)[depth])
        self.inputs = {}
        consumers: Dict[str, List[Any]] = {}
        for node in self.nodes:
            names = [t._keras_history.layer.name for t in tf.nest.flatten(node.keras_inputs)]
            self.inputs[node.layer.name] = names
            for name in names:
                consumers.setdefault(name, []).append(node.layer)
        self.folded: Dict[str, Any] = {}  # weight layer name -> the BatchNormalization it absorbs
        for node in self.nodes:
            inner = unwrapped_layer(node.layer)
            following = consumers.get(node.layer.name, [])
            kind = kind_of(inner)
            if (kind is not None and kind.folds_batch_norm
                    and activation_name(inner) in (None, "linear")
                    and wrapper_output_quantizer(node.layer)[0] is None
                    and len(following) == 1
                    and isinstance(unwrapped_layer(following[0]), _layers.BatchNormalization)):
                self.folded[node.layer.name] = unwrapped_layer(following[0])
        self.folded_batch_norms = {bn.name for bn in self.folded.values()}
        # Read every learned value now, eagerly: the traced function holds constants only.
        self.weights, self.biases, self.output_grids = {}, {}, {}
        self.affines = {name: batch_norm_affine(bn) for name, bn in self.folded.items()}
        self.channel_affines = {}  # unwrapped layer name -> (m, o) of the ones not folded
        for node in self.nodes:
            inner = unwrapped_layer(node.layer)
            kind = kind_of(inner)
            if (kind is not None and kind.name == "channel_affine"
                    and inner.name not in self.folded_batch_norms):
                self.channel_affines[inner.name] = channel_affine_parameters(inner)
        for node in self.nodes:
            layer = node.layer
            if not is_quantized_wrapper(layer):
                continue
            if wrapper_weight_quantizers(layer):
                self.weights[layer.name] = weight_integers(layer, int4)
                self.biases[layer.name] = (layer.layer.bias.numpy() if layer.layer.use_bias
                                           else 0.0)
            quantizer, variables = wrapper_output_quantizer(layer)
            if quantizer is not None:
                scale, low, high = quantizer.integer_grid(None, variables)
                cap = output_cap(layer.layer)  # see _quantize_output
                if cap is not None:
                    high = min(high, int(math.floor(cap / scale + 0.5)))
                self.output_grids[layer.name] = (scale, low, high,
                                                 int(quantizer.bit_width(variables)))


def make_plan(model, weight_storage: str = "int8", allow_float_ops: bool = False,
          calibrated: bool = False) -> ExportPlan:
    if not any(is_quantized_wrapper(layer) for layer in getattr(model, "layers", [])):
        raise ValueError(f"model {getattr(model, 'name', model)!r} was not quantized with "
                         "tfadaqat.quantize_model: nothing to export with integer kernels")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        outputs = [unwrapped_layer(tensor._keras_history.layer).name
                   for tensor in model.outputs]
        raise ValueError(
            f"export_tflite supports models with one input and one output; model "
            f"{model.name!r} has {len(model.inputs)} input(s) and {len(model.outputs)} "
            f"output(s) {outputs}. Export one output at a time from a model of the same "
            "trained layers, e.g. export_tflite(keras.Model(qmodel.inputs, "
            "qmodel.outputs[0]), path)" + (
                "" if len(model.inputs) == 1 else
                ", after merging the inputs into one (e.g. a Concatenate of them before the "
                "model is quantized)"))
    if weight_storage not in WEIGHT_STORAGES:
        raise ValueError(f"weight_storage must be one of {WEIGHT_STORAGES}, got "
                         f"{weight_storage!r}")
    return ExportPlan(model, int4=weight_storage == "int4", allow_float_ops=allow_float_ops,
                       calibrated=calibrated)


def input_scale(plan: ExportPlan, layer_name: str) -> Optional[float]:
    """The step of the grid a layer's input lies on, or None if it is not quantized."""
    grid = input_grid(plan, layer_name)
    return None if grid is None else grid[0]


def input_grid(plan: ExportPlan, layer_name: str):
    """``(scale, low, high, bits)`` of the grid a layer's input lies on, or None."""
    source = plan.inputs[layer_name][0] if len(plan.inputs[layer_name]) == 1 else None
    while source is not None and source not in plan.output_grids:
        layer = next(node.layer for node in plan.nodes if node.layer.name == source)
        inputs = plan.inputs.get(source, [])
        kind = kind_of(unwrapped_layer(layer))
        keeps_grid = kind is not None and kind.output == "keep"
        source = inputs[0] if keeps_grid and len(inputs) == 1 else None
    return None if source is None else plan.output_grids[source]


def output_cap(layer) -> Optional[float]:
    """The upper clip of a ReLU-like layer (ReLU(max_value), relu6), or None."""
    if isinstance(layer, _layers.ReLU):
        return None if layer.max_value is None else float(layer.max_value)
    return 6.0 if is_relu6(getattr(layer, "activation", None)) else None


def is_relu6(activation) -> bool:
    """tf-keras has no ``activations.relu6``; ``tf.nn.relu6`` is passed as a function."""
    return getattr(activation, "__name__", "") == "relu6"
