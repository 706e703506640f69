"""The quantized tensors of a model: where they live and what bit-widths they use.

A model returned by :func:`tfadaqat.quantize_model` holds its quantizers inside TFMOT
``QuantizeWrapperV2`` layers. This module is the one registry of them that every higher
layer of the package reads (cost, budget, AdaQAT's rule, the report, export): each quantized
tensor is named by its layer and role, ``(layer name, "kernel" | "depthwise_kernel" |
"output")``. It depends only on the quantizer and config classes, never on the modules that
use it.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, NamedTuple

from tfadaqat import configs as configs_lib
from tfadaqat import quantizers as quantizers_lib
from tfadaqat._compat import tf, tfmot, wrapper_output_quantizer, wrapper_weight_quantizers


class QuantizedTensor(NamedTuple):
    """One quantized tensor of a model.

    Attributes:
      layer: The name of the original (unwrapped) layer.
      role: The weight attribute (``"kernel"``, ``"depthwise_kernel"``) or ``"output"``.
      quantizer: Its :class:`tfadaqat.TensorQuantizer`.
      variables: The quantizer's variables by name.
      wrapper: The TFMOT wrapper layer that owns them.
    """

    layer: str
    role: str
    quantizer: quantizers_lib.TensorQuantizer
    variables: Dict[str, tf.Variable]
    wrapper: Any


def unwrapped_layer(layer):
    """The layer a TFMOT ``QuantizeWrapper`` wraps, or `layer` itself if it is not wrapped."""
    return layer.layer if isinstance(layer, tfmot.quantization.keras.QuantizeWrapper) else layer


def is_quantized_wrapper(layer) -> bool:
    """Whether `layer` is a TFMOT wrapper holding a tfadaqat config."""
    return isinstance(layer, tfmot.quantization.keras.QuantizeWrapper) and isinstance(
        layer.quantize_config, configs_lib.LayerQuantizeConfig)


def quantized_tensors(model) -> Iterator[QuantizedTensor]:
    """Yields every quantized tensor of `model`, weights of a layer before its output."""
    for wrapper in model.layers:
        if not is_quantized_wrapper(wrapper):
            continue
        attributes = wrapper.quantize_config.weight_attributes
        for attribute, (_, quantizer, variables) in zip(attributes,
                                                        wrapper_weight_quantizers(wrapper)):
            yield QuantizedTensor(wrapper.layer.name, attribute, quantizer, variables, wrapper)
        quantizer, variables = wrapper_output_quantizer(wrapper)
        if quantizer is not None:
            yield QuantizedTensor(wrapper.layer.name, "output", quantizer, variables, wrapper)


def bit_widths(model) -> Dict[str, Dict[str, int]]:
    """Integer bit-width of every quantized tensor: ``{layer: {"kernel": 4, "output": 6}}``.

    Raises:
      ValueError: If `model` has no tfadaqat-quantized layer.
    """
    result: Dict[str, Dict[str, int]] = {}
    for tensor in quantized_tensors(model):
        result.setdefault(tensor.layer, {})[tensor.role] = int(
            tensor.quantizer.bit_width(tensor.variables))
    if not result:
        raise ValueError(f"model {model.name!r} has no layer quantized by tfadaqat")
    return result


def set_bit_widths(model, bits: Dict[str, Dict[str, int]]) -> None:
    """Sets integer bit-widths, keyed like :func:`bit_widths` (a subset is fine).

    Raises:
      ValueError: For a layer or tensor the model does not quantize, a bit-width outside the
        quantizer's ``[min_bits, max_bits]``, or a quantizer with fixed bits.
    """
    tensors = {(tensor.layer, tensor.role): tensor for tensor in quantized_tensors(model)}
    for layer_name, roles in bits.items():
        for role, value in roles.items():
            if (layer_name, role) not in tensors:
                raise ValueError(f"no quantized tensor {role!r} in layer {layer_name!r}; "
                                 f"quantized: {sorted(tensors)}")
            tensor = tensors[(layer_name, role)]
            tensor.quantizer.set_bit_width(tensor.variables, value)
