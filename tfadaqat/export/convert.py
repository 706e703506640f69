"""``export_tflite``: align, plan, emit, convert, pack, check, verify, then write the file
whole (nothing is written, and the model is left as it was, when any step fails)."""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from tfadaqat._compat import tf, tflite_interpreter
from tfadaqat.cost import cost
from tfadaqat.export.biases import align_biases, offset_constants, restore_offset_constants
from tfadaqat.export.graph import build_integer_function
from tfadaqat.export.multipliers import limit_output_multipliers
from tfadaqat.export.packing import INT8_PACKING_NOTE, pack_int4
from tfadaqat.export.plan import WEIGHT_STORAGES, make_plan
from tfadaqat.export.report import ExportReport
from tfadaqat.export.verification import check_integer_kernels, stored_weights, verify
from tfadaqat.runtimes import validate_runtimes


#: Where a file is deployed, and what that sets when not given: how kernels are stored and the
#: runtimes a ``verify_with`` set runs on. LiteRT on phones and PCs runs XNNPACK, which runs
#: int4 filters about 4x slower than int8 ones (``bench/int4_packing.py``), so int8; TensorFlow
#: Lite Micro runs int4-packed files as fast as int8 ones (1.01-1.06x in ``bench/deploy.py``)
#: in less flash (0.57x the file for ResNet20), though it unpacks them into RAM.
TARGETS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "litert": ("int8", ("xnnpack",)),
    "tflm": ("int4", ("tflm",)),
}


def export_tflite(model, path: str, *, representative_dataset=None,
                  input_type=tf.float32, output_type=tf.float32,
                  verify_with=None, target: str = "litert",
                  runtimes: Optional[Sequence[str]] = None, align: bool = True,
                  weight_storage: Optional[str] = None, allow_float_ops: bool = False,
                  progress: Optional[Callable[[str], Any]] = None) -> ExportReport:
    """Writes `model` as a TFLite file with int8 kernels at its learned bit-widths.

    Args:
      model: A model returned by :func:`tfadaqat.quantize_model` (trained or not).
      path: The ``.tflite`` file to write; written whole or not at all.
      representative_dataset: Examples (NumPy array, ``tf.data.Dataset`` of examples or of
        ``(x, y)``, or a generator function) for tensors whose range training did not fix
        (a float output, for instance). Not needed when every tensor is quantized.
      input_type: ``tf.float32`` (quantize inside the file) or ``tf.int8``.
      output_type: ``tf.float32`` (dequantize inside the file) or ``tf.int8``.
      verify_with: Optional examples (array or dataset, as above) run through the file and the
        Keras model in inference mode; the report then holds their agreement.
      target: Where the file will run, one of :data:`TARGETS`: "litert" (LiteRT with
        XNNPACK, phones and PCs) or "tflm" (TensorFlow Lite Micro, microcontrollers). It
        sets `weight_storage` ("int8" / "int4") and `runtimes` (("xnnpack",) / ("tflm",))
        where those are not given.
      runtimes: The runtimes `verify_with` runs the file on (:mod:`tfadaqat.runtimes`):
        "xnnpack" (LiteRT's default), "builtin" (TFLite's reference kernels), "tflm"
        (TensorFlow Lite Micro, package ``tflite-micro``). Checked before anything is done.
        None: the `target`'s.
      align: First move the model's biases onto TFLite's int32 bias grid, in place
        (:func:`align_biases`), so that file and model compute the same thing. False leaves
        the model untouched, and the file then rounds each bias on its own.
      weight_storage: "int8" (every kernel in int8; the fastest with XNNPACK) or "int4":
        kernels whose learned grid fits in [-8, 7] (4 bits or fewer, except the DoReFa paper
        grid at 4 bits) are stored packed, two values per byte, for a smaller file. LiteRT
        runs them; XNNPACK does not accelerate int4 filters (measured 4.2x slower than int8 on
        ResNet20 by ``bench/int4_packing.py``). None: the `target`'s.
      allow_float_ops: Write a hybrid file when a layer has no integer kernel (or was left
        in float): it runs in float between DEQUANTIZE and QUANTIZE ops, and the report's
        ``float_ops`` lists every such op. False (the default) raises instead.
      progress: Called with a message at each stage (the command line prints them).

    Returns:
      An :class:`ExportReport`.

    Raises:
      ValueError: For a model not quantized with tfadaqat or whose quantizers were never
        initialised (no batch seen yet), a layer without an integer kernel
        (named), bad `input_type`/`output_type`, or a converted file with a float kernel.
        When export fails, no file is written and the model's weights are as they were.
      OSError: If the folder of `path` is missing or not writable (nothing is written).
    """
    for name, value in (("input_type", input_type), ("output_type", output_type)):
        if value not in (tf.float32, tf.int8):
            raise ValueError(f"{name} must be tf.float32 or tf.int8, got {value!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise OSError(f"cannot write {path!r}: folder {folder!r} is missing or not writable")
    say = progress or (lambda message: None)
    if target not in TARGETS:
        raise ValueError(f"target must be one of {tuple(TARGETS)}, got {target!r}")
    default_storage, default_runtimes = TARGETS[target]
    weight_storage = default_storage if weight_storage is None else weight_storage
    runtimes = validate_runtimes(default_runtimes if runtimes is None else runtimes)
    if weight_storage not in WEIGHT_STORAGES:
        raise ValueError(f"weight_storage must be one of {WEIGHT_STORAGES}, got "
                         f"{weight_storage!r}")
    initialized = getattr(model, "quantizers_initialized", None)
    if initialized is not None and not initialized():
        raise ValueError(
            f"model {model.name!r} has quantizers that were never initialised (their steps and "
            "clips come from the first batch of fit/evaluate/predict): train it, or call "
            "model.initialize_quantizers(examples), before exporting")
    original_weights = model.get_weights() if align else None
    original_constants = offset_constants(model) if align else None
    try:
        return _export(model, path, folder, say, representative_dataset, input_type,
                       output_type, verify_with, target, runtimes, align, weight_storage,
                       allow_float_ops)
    except BaseException:
        if original_weights is not None:  # alignment moved biases: put them back
            model.set_weights(original_weights)
            restore_offset_constants(model, original_constants)
        raise


def _export(model, path, folder, say, representative_dataset, input_type, output_type,
            verify_with, target, runtimes, align, weight_storage,
            allow_float_ops) -> ExportReport:
    calibrated = representative_dataset is not None
    if align:
        say(f"aligned the biases of {align_biases(model, weight_storage)} layers with the "
            "int32 bias grid")
    say("building the integer graph")
    plan = make_plan(model, weight_storage, allow_float_ops, calibrated)
    function = build_integer_function(model, plan)
    say("converting with the TFLite converter")
    holder = tf.Module()  # the function holds constants only: no model to save
    holder.forward = function
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], holder)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = input_type
    converter.inference_output_type = output_type
    if representative_dataset is not None:
        converter.representative_dataset = _representative(representative_dataset)
    with warnings.catch_warnings():
        # The input's range is the input quantization point's FakeQuant, which the converter
        # reads; it warns as if no range were known.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        content = converter.convert()
    content, limited = limit_output_multipliers(content)
    if limited:
        say(f"set the output multipliers of {len(limited)} layer(s) whose output step is "
            f"below 1/256 of their sum's to 255 (same outputs; XNNPACK refuses 256 and more): "
            f"{', '.join(limited)}")
    packing = INT8_PACKING_NOTE
    packed = sum(kernel.packed for kernel in plan.weights.values())
    if weight_storage == "int4":
        say(f"packing {packed} kernels of <= 4 bits as int4")
        content = pack_int4(content)
        packing = f"int4: {packed} of {len(plan.weights)} kernels packed, two values per byte"
    interpreter = tflite_interpreter(content)
    interpreter.allocate_tensors()
    say("checking that every kernel is integer")
    ops, float_ops = check_integer_kernels(interpreter, allow_float_ops)
    report = ExportReport(path=path, target=target, file_bytes=len(content), ops=ops,
                          packing=packing,
                          layers=stored_weights(plan, interpreter), float_ops=float_ops,
                          **_sizes(model))
    if verify_with is not None:
        say(f"verifying against the Keras model on {', '.join(runtimes)}")
        verify(model, content, verify_with, runtimes, report)
    # Written last: an export that fails or is interrupted (verification included) leaves
    # no file, and an existing file at `path` is replaced whole or not at all.
    say(f"writing {path} ({len(content):,} bytes)")
    handle, temporary = tempfile.mkstemp(suffix=".tflite.partial", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return report


def _representative(data) -> Callable:
    """A converter representative dataset from an array, a tf.data.Dataset or a generator."""
    def generator():
        source = data() if callable(data) else data
        if isinstance(source, tf.data.Dataset):
            source = source.unbatch().as_numpy_iterator()
        for example in source:
            example = example[0] if isinstance(example, (tuple, list)) else example
            yield [np.asarray(example, np.float32)[None]]
    return generator


def _sizes(model) -> Dict[str, float]:
    model_cost = cost(model)
    # Weight memory counts kernels at their bits and biases (and float layers) at 32.
    return {"float32_bytes": 4 * model_cost.params,
            "packed_bytes": model_cost.weight_memory_bits / 8}
