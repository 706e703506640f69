"""The one place where TensorFlow, legacy Keras and TFMOT versions are reconciled.

TensorFlow 2.21 resolves ``tf.keras`` to Keras 3 unless ``TF_USE_LEGACY_KERAS=1`` is set
before the first Keras object is built. TensorFlow Model Optimization (TFMOT) 0.8.1 only
supports Keras 2 (the ``tf_keras`` package). Importing :mod:`tfadaqat` first therefore sets
the variable, and every other module of the package imports ``keras``, ``tf`` and ``tfmot``
from here, never directly.
"""

import os

# Must happen before TensorFlow resolves `tf.keras` for the first time.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

base_quantizer_class = tfmot.quantization.keras.quantizers.Quantizer
base_quantize_config_class = tfmot.quantization.keras.QuantizeConfig
from tensorflow.lite.python import schema_py_generated  # noqa: E402  (already loaded by tf)

# What quantize_annotate_layer wraps a layer in (TFMOT does not export the class itself).
from tensorflow_model_optimization.python.core.quantization.keras.quantize_annotate import (  # noqa: E402,E501
    QuantizeAnnotate as quantize_annotate_class)

if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise ImportError(
        "tfadaqat needs legacy Keras (tf-keras): TF_USE_LEGACY_KERAS is set to "
        f"{os.environ['TF_USE_LEGACY_KERAS']!r}; unset it or set it to '1' before importing "
        "tfadaqat.")


def is_keras3_object(obj) -> bool:
    """Whether `obj` was built with Keras 3 (`import keras`) rather than tf-keras."""
    module = type(obj).__module__ or ""
    return module == "keras" or module.startswith("keras.")


def wrapper_weight_quantizers(wrapper):
    """Yields `(weight_variable, quantizer, quantizer_variables)` of a TFMOT wrapper."""
    return list(getattr(wrapper, "_weight_vars", []))


def wrapper_output_quantizer(wrapper):
    """Returns `(quantizer, quantizer_variables)` of a wrapper's output, or `(None, None)`."""
    quantizers = getattr(wrapper, "_output_quantizers", None)
    if not quantizers:
        return None, None
    return quantizers[0], wrapper._output_quantizer_vars


def functional_nodes_by_depth(model):
    """The nodes of a Functional model keyed by depth (tf-keras internal)."""
    return model._nodes_by_depth


def is_graph_network(model) -> bool:
    return isinstance(model, keras.Sequential) or bool(getattr(model, "_is_graph_network", False))


def tflite_interpreter(model_content: bytes, num_threads: int = 1,
                       preserve_all_tensors: bool = False, reference_kernels: bool = False):
    """A TFLite interpreter: LiteRT's (``ai-edge-litert``) where installed, else TensorFlow's.

    `preserve_all_tensors` keeps intermediate tensors readable after ``invoke`` (tests).
    `reference_kernels` runs TFLite's built-in reference kernels instead of the default
    (XNNPACK-delegated) ones.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:  # LiteRT has no wheel for this platform
        Interpreter, OpResolverType = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
    return Interpreter(model_content=model_content, num_threads=num_threads,
                       experimental_preserve_all_tensors=preserve_all_tensors,
                       experimental_op_resolver_type=resolver)


def tflite_ops(interpreter):
    """``[(op name, [input tensor indices])]`` of a TFLite interpreter (an internal API)."""
    return [(op["op_name"], list(op["inputs"])) for op in interpreter._get_ops_details()]


def tflite_schema():
    """TensorFlow's generated TFLite flatbuffer schema module (an internal API)."""
    return schema_py_generated
