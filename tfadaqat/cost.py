"""Hardware cost of a quantized model: MACs, BitOPs and memory, from static shapes and bits.

For a layer with weights (Conv2D, DepthwiseConv2D, Dense)::

    MACs   = (output positions) x (kernel elements)        # H_out W_out kh kw C_in C_out for a conv
    BitOPs = MACs x b_w x b_a

where ``b_w`` is the bit-width of the layer's kernel and ``b_a`` the bit-width of the tensor
entering it (the nearest quantized tensor upstream, through shape-only layers). Float layers
and float inputs count at 32 bits.

Memory, in bits: weights ``params x b_w`` per kernel, plus 32 bits per bias element (biases
are stored as int32); BatchNormalization parameters are folded into the preceding layer at
export and are not counted. Activations: ``elements per example x b_a`` for each quantized
tensor, reduced over the model by ``max`` (the largest tensor, what a layer-by-layer
accelerator must buffer) or ``sum``. ``KB`` means 1024 bytes.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import numpy as np

from tfadaqat._compat import functional_nodes_by_depth, keras, tf, tfmot
from tfadaqat.quantize import WEIGHT_ATTRIBUTES, quantized_tensors

FLOAT_BITS = 32
BITS_PER_KB = 8 * 1024
ACTIVATION_REDUCTIONS = ("max", "sum")


class _Kilobytes:
    """``weight_kb`` and ``activation_kb`` from the ``*_memory_bits`` of a cost."""

    @property
    def weight_kb(self) -> float:
        return self.weight_memory_bits / BITS_PER_KB

    @property
    def activation_kb(self) -> float:
        return self.activation_memory_bits / BITS_PER_KB


@dataclasses.dataclass(frozen=True)
class LayerCost(_Kilobytes):
    """Cost of one layer. Bits are None where the layer has no such quantized tensor."""

    name: str
    weight_bits: Optional[int]
    input_bits: Optional[int]
    activation_bits: Optional[int]
    params: int
    macs: int
    bitops: int
    weight_memory_bits: int
    activation_elements: int
    activation_memory_bits: int


@dataclasses.dataclass(frozen=True)
class ModelCost(_Kilobytes):
    """Totals and per-layer rows of :func:`cost`."""

    layers: List[LayerCost]
    activation_reduce: str

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def bitops(self) -> int:
        return sum(layer.bitops for layer in self.layers)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def weight_memory_bits(self) -> int:
        return sum(layer.weight_memory_bits for layer in self.layers)

    @property
    def activation_memory_bits(self) -> int:
        sizes = [layer.activation_memory_bits for layer in self.layers]
        if not sizes:
            return 0
        return max(sizes) if self.activation_reduce == "max" else sum(sizes)


def _elements(shape) -> int:
    return int(np.prod([int(d) for d in shape[1:]], dtype=np.int64)) if len(shape) > 1 else 1


def _positions(shape) -> int:
    """Output positions a kernel is applied at: product of the non-batch, non-channel dims."""
    return int(np.prod([int(d) for d in shape[1:-1]], dtype=np.int64)) if len(shape) > 2 else 1


def cost(model, *, activation_reduce: str = "max",
         bits: Optional[Dict[str, Dict[str, int]]] = None) -> ModelCost:
    """Exact MACs, BitOPs and memory of `model` at its current (or the given) integer bits.

    Args:
      model: A model returned by :func:`tfadaqat.quantize_model` (float layers count at 32 bits).
      activation_reduce: "max" or "sum" over the quantized activation tensors.
      bits: Optional bit-widths keyed like :func:`tfadaqat.bit_widths`, replacing the model's
        own (e.g. to price a uniform 8-bit assignment).

    Returns:
      A :class:`ModelCost` with totals ``bitops``, ``weight_kb``, ``activation_kb`` and rows
      ``layers``.

    Raises:
      ValueError: For an unknown `activation_reduce`.
    """
    if activation_reduce not in ACTIVATION_REDUCTIONS:
        raise ValueError(f"activation_reduce must be one of {ACTIVATION_REDUCTIONS}, "
                         f"got {activation_reduce!r}")
    current: Dict[str, Dict[str, int]] = {}
    for layer_name, role, quantizer, variables, _ in quantized_tensors(model):
        current.setdefault(layer_name, {})[role] = int(quantizer.bit_width(variables))
    for layer_name, roles in (bits or {}).items():
        current.setdefault(layer_name, {}).update(roles)

    output_bits: Dict[str, Optional[int]] = {}
    rows: List[LayerCost] = []
    nodes_by_depth = functional_nodes_by_depth(model)
    for depth in sorted(nodes_by_depth, reverse=True):
        for node in nodes_by_depth[depth]:
            layer = node.layer
            inner = layer.layer if isinstance(layer, tfmot.quantization.keras.QuantizeWrapper) \
                else layer
            name = inner.name
            inbound = [t._keras_history.layer for t in tf.nest.flatten(node.keras_inputs)]
            upstream = [output_bits.get(p.name) for p in inbound]
            input_bits = upstream[0] if len(upstream) == 1 else None
            own = current.get(name, {})
            if "output" in own:
                output_bits[layer.name] = own["output"]
            elif isinstance(inner, keras.layers.InputLayer):
                output_bits[layer.name] = None
            else:
                # Shape-only and fused layers carry the grid of what enters them.
                output_bits[layer.name] = input_bits
            attributes = WEIGHT_ATTRIBUTES.get(type(inner))
            macs = params = weight_memory = 0
            weight_bits = None
            if attributes is not None:
                kernel = getattr(inner, attributes[0])
                kernel_elements = int(np.prod(kernel.shape))
                output_shape = node.outputs.shape if hasattr(node.outputs, "shape") \
                    else tf.nest.flatten(node.outputs)[0].shape
                macs = _positions(output_shape) * kernel_elements
                weight_bits = own.get(attributes[0])
                bias = getattr(inner, "bias", None)
                bias_elements = int(np.prod(bias.shape)) if bias is not None else 0
                params = kernel_elements + bias_elements
                weight_memory = kernel_elements * (weight_bits or FLOAT_BITS) \
                    + bias_elements * FLOAT_BITS
            elif not isinstance(inner, keras.layers.BatchNormalization):
                for weight in inner.weights:
                    params += int(np.prod(weight.shape))
                weight_memory = params * FLOAT_BITS
            activation_bits = own.get("output")
            elements = _elements(tf.nest.flatten(node.outputs)[0].shape) if activation_bits else 0
            bitops = macs * (weight_bits or FLOAT_BITS) * (input_bits or FLOAT_BITS)
            if macs == 0 and params == 0 and activation_bits is None:
                continue
            rows.append(LayerCost(
                name=name, weight_bits=weight_bits, input_bits=input_bits if macs else None,
                activation_bits=activation_bits, params=params, macs=macs, bitops=bitops,
                weight_memory_bits=weight_memory, activation_elements=elements,
                activation_memory_bits=elements * (activation_bits or 0)))
    return ModelCost(layers=rows, activation_reduce=activation_reduce)


def uniform_bits(model, bits: int) -> Dict[str, Dict[str, int]]:
    """Bit-widths keyed like :func:`tfadaqat.bit_widths`, with every quantized tensor at `bits`."""
    result: Dict[str, Dict[str, int]] = {}
    for layer_name, role, _, _, _ in quantized_tensors(model):
        result.setdefault(layer_name, {})[role] = bits
    return result
