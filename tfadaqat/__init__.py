"""tfadaqat: mixed-precision quantization-aware training with learned bit-widths for tf-keras.

Import this package before building any Keras model: it switches TensorFlow to legacy Keras
(tf-keras), which TensorFlow Model Optimization needs; ``tfadaqat.keras`` is that Keras.
Quantizers are addressable by name like Keras activations: ``tfadaqat.quantizers.get("LSQQuantizer")``,
``tfadaqat.quantizers.serialize`` / ``deserialize``.

Example:
  >>> import tfadaqat
  >>> qmodel = tfadaqat.quantize_model(model, method="adaqat")  # doctest: +SKIP
  >>> tfadaqat.bit_widths(qmodel)  # doctest: +SKIP
"""

from tfadaqat import _compat  # noqa: F401  (sets up legacy Keras first)
from tfadaqat import ops, quantizers
from tfadaqat._compat import keras  # tf-keras, the Keras every tfadaqat model is built with
from tfadaqat.adaqat import AdaQATRule
from tfadaqat.annotation import LayerAnnotation, annotate
from tfadaqat import methods
from tfadaqat.configs import LayerQuantizeConfig
from tfadaqat.methods import METHODS, make_quantizer
from tfadaqat.model import QuantizedModel
from tfadaqat.graph import flatten_model
from tfadaqat.layer_kinds import LayerKind, kind_of, register_layer_kind
from tfadaqat.layers import ChannelAffine
from tfadaqat.quantize import load_model, quantize_model, quantize_scope
from tfadaqat.tensors import QuantizedTensor, bit_widths, quantized_tensors, set_bit_widths
from tfadaqat.quantizers import (DoReFaWeightQuantizer, DQQuantizer, FixedGridQuantizer,
                                 LSQQuantizer, PACTActivationQuantizer, TensorQuantizer)
from tfadaqat.batch_norm import reestimate_batch_norm
from tfadaqat.budget import Budget, budget_penalty
from tfadaqat.callbacks import BitWidthLogger
from tfadaqat.cost import LayerCost, ModelCost, cost, differentiable_cost, uniform_bits
from tfadaqat.export import ExportReport, align_biases, export_tflite
from tfadaqat.plots import plot_bit_widths
from tfadaqat.report import summary

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "AdaQATRule",
    "LayerAnnotation",
    "annotate",
    "BitWidthLogger",
    "Budget",
    "ChannelAffine",
    "DoReFaWeightQuantizer",
    "DQQuantizer",
    "ExportReport",
    "FixedGridQuantizer",
    "LSQQuantizer",
    "LayerCost",
    "LayerKind",
    "LayerQuantizeConfig",
    "ModelCost",
    "PACTActivationQuantizer",
    "QuantizedModel",
    "QuantizedTensor",
    "TensorQuantizer",
    "align_biases",
    "bit_widths",
    "budget_penalty",
    "cost",
    "differentiable_cost",
    "export_tflite",
    "flatten_model",
    "keras",
    "kind_of",
    "load_model",
    "make_quantizer",
    "methods",
    "ops",
    "plot_bit_widths",
    "quantize_model",
    "quantize_scope",
    "quantizers",
    "quantized_tensors",
    "reestimate_batch_norm",
    "register_layer_kind",
    "set_bit_widths",
    "summary",
    "uniform_bits",
]
