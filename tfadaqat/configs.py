"""TFMOT QuantizeConfigs: which tensors of a layer are quantized, and by which quantizer.

One config class serves every layer type: it names the weight attributes to quantize
(``kernel``, ``depthwise_kernel``; none for Add, pooling, BatchNormalization...) and holds the
weight quantizer and the output quantizer. :func:`tfadaqat.quantize_model` decides per layer
which of the two are present (see :mod:`tfadaqat.quantize`) with the quantizers of the method
(:mod:`tfadaqat.methods`).

Batch normalization is not folded during training. A convolution followed by
BatchNormalization is trained as ``BN(conv(x, Q(w)))``: its integer weights are the ones
:func:`tfadaqat.export_tflite` writes, and BN's inference-time affine map
``gamma (z - mean) / sqrt(var + eps) + beta`` becomes the per-output-channel scale of those
integers and the conv bias. That is exact (a per-channel scale does not change the integers,
a negative ``gamma`` flips the sign of the channel's integers on the symmetric grid), costs
nothing extra at training time, and keeps BN's batch statistics for training.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

from tfadaqat import quantizers as quantizers_lib
from tfadaqat._compat import base_quantize_config_class, keras
from tfadaqat.configurable import Configurable


@keras.utils.register_keras_serializable(package="tfadaqat")
class LayerQuantizeConfig(Configurable, base_quantize_config_class):
    """Quantizes the named weights of a layer and, optionally, its output.

    Args:
      weight_attributes: Names of the layer attributes holding the weights to quantize, e.g.
        ``("kernel",)``; each gets its own copy of `weight_quantizer`.
      weight_quantizer: Quantizer (or its serialized form) for the weights, or None.
      output_quantizer: Quantizer (or its serialized form) for the layer's output, or None.

    Example:
      >>> config = LayerQuantizeConfig(("kernel",), quantizers_lib.LSQQuantizer(4),
      ...                              quantizers_lib.LSQQuantizer(4, signed=False))
      >>> LayerQuantizeConfig.from_config(config.get_config()) == config
      True
    """

    def __init__(self, weight_attributes: Sequence[str] = (), weight_quantizer=None,
                 output_quantizer=None):
        self.weight_attributes = tuple(weight_attributes)
        self.weight_quantizer = quantizers_lib.get(weight_quantizer)
        self.output_quantizer = quantizers_lib.get(output_quantizer)
        if self.weight_attributes and self.weight_quantizer is None:
            raise ValueError("weight_attributes were given without a weight_quantizer")

    def get_weights_and_quantizers(self, layer):
        return [(getattr(layer, name), quantizers_lib.get(
                    quantizers_lib.serialize(self.weight_quantizer)))
                for name in self.weight_attributes]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        for name, weight in zip(self.weight_attributes, quantize_weights):
            setattr(layer, name, weight)

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [self.output_quantizer] if self.output_quantizer is not None else []

    def get_config(self) -> Dict[str, Any]:
        return {"weight_attributes": list(self.weight_attributes),
                "weight_quantizer": quantizers_lib.serialize(self.weight_quantizer),
                "output_quantizer": quantizers_lib.serialize(self.output_quantizer)}

