"""Hardware cost of a quantized model: MACs, BitOPs and memory, from static shapes and bits.

For a layer with weights (the kinds of :mod:`tfadaqat.layer_kinds` that have weights: Conv2D,
DepthwiseConv2D, Dense, Conv2DTranspose)::

    MACs   = (output positions) x (kernel elements)        # H_out W_out kh kw C_in C_out for a conv
           = (input positions) x (kernel elements)         # for a transposed convolution
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
from typing import Dict, List, Optional, Tuple

import numpy as np

from tfadaqat._compat import functional_nodes_by_depth, keras, tf
from tfadaqat.layer_kinds import kind_of
from tfadaqat.tensors import quantized_tensors, unwrapped_layer

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


class _LayerTotal:
    """A read-only attribute of :class:`ModelCost`: the sum of that attribute over its layers."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, cost, owner=None) -> int:
        if cost is None:
            return self
        return sum(getattr(layer, self.name) for layer in cost.layers)


@dataclasses.dataclass(frozen=True)
class ModelCost(_Kilobytes):
    """Totals and per-layer rows of :func:`cost`.

    ``macs``, ``bitops``, ``params`` and ``weight_memory_bits`` are sums over the layers;
    ``activation_memory_bits`` is their largest or their sum (``activation_reduce``).
    """

    layers: List[LayerCost]
    activation_reduce: str
    macs = _LayerTotal()
    bitops = _LayerTotal()
    params = _LayerTotal()
    weight_memory_bits = _LayerTotal()

    @property
    def activation_memory_bits(self) -> int:
        sizes = [layer.activation_memory_bits for layer in self.layers]
        if not sizes:
            return 0
        return max(sizes) if self.activation_reduce == "max" else sum(sizes)


def _elements(shape) -> int:
    return int(np.prod([int(d) for d in shape[1:]], dtype=np.int64)) if len(shape) > 1 else 1


TensorKey = Tuple[str, str]


@dataclasses.dataclass(frozen=True)
class _LayerTerms:
    """The static part of a layer's cost; bits are looked up by tensor key when evaluated."""

    name: str
    kernel_key: Optional[TensorKey]
    input_key: Optional[TensorKey]
    output_key: Optional[TensorKey]
    kernel_elements: int
    bias_elements: int
    float_params: int
    macs: int
    activation_elements: int


def _cost_terms(model) -> List[_LayerTerms]:
    """Walks the model graph once: MACs, element counts, and which quantized tensor feeds what."""
    quantized = {(name, role) for name, role, _, _, _ in quantized_tensors(model)}
    carried: Dict[str, Optional[TensorKey]] = {}  # wrapper name -> quantized tensor it outputs
    terms: List[_LayerTerms] = []
    nodes_by_depth = functional_nodes_by_depth(model)
    for depth in sorted(nodes_by_depth, reverse=True):
        for node in nodes_by_depth[depth]:
            layer = node.layer
            inner = unwrapped_layer(layer)
            inbound = [t._keras_history.layer for t in tf.nest.flatten(node.keras_inputs)]
            upstream = [carried.get(p.name) for p in inbound]
            input_key = upstream[0] if len(upstream) == 1 else None
            output_key = (inner.name, "output") if (inner.name, "output") in quantized else None
            if output_key is None and not isinstance(inner, keras.layers.InputLayer):
                carried[layer.name] = input_key  # shape-only and fused layers keep the grid
            else:
                carried[layer.name] = output_key
            output = tf.nest.flatten(node.outputs)[0]
            kind = kind_of(inner)
            attributes = kind.weights if kind is not None and kind.weights else None
            macs = kernel_elements = bias_elements = float_params = 0
            kernel_key = None
            if attributes is not None:
                kernel = getattr(inner, attributes[0])
                kernel_elements = int(np.prod(kernel.shape))
                entering = tf.nest.flatten(node.keras_inputs)[0]
                macs = kind.macs(inner, kernel, entering.shape, output.shape)
                bias = getattr(inner, "bias", None)
                bias_elements = int(np.prod(bias.shape)) if bias is not None else 0
                if (inner.name, attributes[0]) in quantized:
                    kernel_key = (inner.name, attributes[0])
            elif not isinstance(inner, keras.layers.BatchNormalization):
                float_params = sum(int(np.prod(w.shape)) for w in inner.weights)
            if macs == 0 and float_params == 0 and output_key is None:
                continue
            terms.append(_LayerTerms(
                name=inner.name, kernel_key=kernel_key,
                input_key=input_key if macs else None, output_key=output_key,
                kernel_elements=kernel_elements, bias_elements=bias_elements,
                float_params=float_params, macs=macs,
                activation_elements=_elements(output.shape) if output_key else 0))
    return terms


def _current_bits(model) -> Dict[TensorKey, int]:
    return {(name, role): int(quantizer.bit_width(variables))
            for name, role, quantizer, variables, _ in quantized_tensors(model)}


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
    _check_reduction(activation_reduce)
    lookup = _current_bits(model)
    for layer_name, roles in (bits or {}).items():
        for role, value in roles.items():
            lookup[(layer_name, role)] = value
    rows = []
    for terms in _cost_terms(model):
        weight_bits = lookup[terms.kernel_key] if terms.kernel_key else None
        input_bits = lookup[terms.input_key] if terms.input_key else None
        activation_bits = lookup[terms.output_key] if terms.output_key else None
        rows.append(LayerCost(
            name=terms.name, weight_bits=weight_bits, input_bits=input_bits,
            activation_bits=activation_bits,
            params=terms.kernel_elements + terms.bias_elements + terms.float_params,
            macs=terms.macs,
            bitops=terms.macs * (weight_bits or FLOAT_BITS) * (input_bits or FLOAT_BITS),
            weight_memory_bits=(terms.kernel_elements * (weight_bits or FLOAT_BITS)
                                + (terms.bias_elements + terms.float_params) * FLOAT_BITS),
            activation_elements=terms.activation_elements,
            activation_memory_bits=terms.activation_elements * (activation_bits or 0)))
    return ModelCost(layers=rows, activation_reduce=activation_reduce)


def differentiable_cost(model, *, activation_reduce: str = "max",
                        mac_weighted: bool = True) -> Dict[str, tf.Tensor]:
    """The totals of :func:`cost` as float32 tensors that carry gradients to learned bit-widths.

    Each quantized tensor contributes :meth:`~tfadaqat.TensorQuantizer.differentiable_bit_width`:
    the integer bits forward, the gradient of the relaxed bit-width backward (DQ: through ``d``
    and ``q_max``; AdaQAT: through ``N``; fixed bits: none). The forward values equal
    ``cost(model).bitops``, ``weight_kb`` and ``activation_kb``.

    Args:
      model: A model returned by :func:`tfadaqat.quantize_model`.
      activation_reduce: "max" or "sum" over the quantized activation tensors.
      mac_weighted: False counts every layer with weights as one MAC, so ``bitops`` becomes
        ``sum_layers b_w b_a``: AdaQAT's per-layer cost, ``d/d(b_w) = b_a``.

    Returns:
      ``{"bitops": ..., "weight_kb": ..., "activation_kb": ...}``.
    """
    _check_reduction(activation_reduce)
    bits = {(name, role): quantizer.differentiable_bit_width(variables)
            for name, role, quantizer, variables, _ in quantized_tensors(model)}
    float_bits = tf.constant(float(FLOAT_BITS))
    bitops, weight_bits, activations = tf.constant(0.0), tf.constant(0.0), []
    for terms in _cost_terms(model):
        kernel = bits[terms.kernel_key] if terms.kernel_key else float_bits
        entering = bits[terms.input_key] if terms.input_key else float_bits
        if terms.macs:
            bitops += (float(terms.macs) if mac_weighted else 1.0) * kernel * entering
        weight_bits += (float(terms.kernel_elements) * kernel
                        + float(terms.bias_elements + terms.float_params) * float_bits)
        if terms.output_key:
            activations.append(float(terms.activation_elements) * bits[terms.output_key])
    stacked = tf.stack(activations) if activations else tf.zeros([1])
    activation_bits = (tf.reduce_max(stacked) if activation_reduce == "max"
                       else tf.reduce_sum(stacked))
    return {"bitops": bitops, "weight_kb": weight_bits / BITS_PER_KB,
            "activation_kb": activation_bits / BITS_PER_KB}


def _check_reduction(activation_reduce: str) -> None:
    if activation_reduce not in ACTIVATION_REDUCTIONS:
        raise ValueError(f"activation_reduce must be one of {ACTIVATION_REDUCTIONS}, "
                         f"got {activation_reduce!r}")


def uniform_bits(model, bits: int) -> Dict[str, Dict[str, int]]:
    """Bit-widths keyed like :func:`tfadaqat.bit_widths`, with every quantized tensor at `bits`."""
    result: Dict[str, Dict[str, int]] = {}
    for layer_name, role, _, _, _ in quantized_tensors(model):
        result.setdefault(layer_name, {})[role] = bits
    return result
