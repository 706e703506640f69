"""Verification of a converted file: every kernel integer (or the float ops listed), the
distinct values each stored kernel holds, and the outputs against the Keras model's on each
runtime (:mod:`tfadaqat.runtimes`), counted in output steps."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from tfadaqat._compat import tf, tflite_interpreter, tflite_ops, wrapper_output_quantizer
from tfadaqat.export.plan import ExportPlan
from tfadaqat.export.report import ExportReport, LayerExport
from tfadaqat.export.simulation import NotSimulated, simulate
from tfadaqat.layer_kinds import INTEGER_OPS
from tfadaqat.runtimes import run as run_on_runtime
from tfadaqat.runtimes import tflm_arena
from tfadaqat.tensors import is_quantized_wrapper, unwrapped_layer


#: Ops whose inputs must all be integer tensors in an exported file.
INTEGER_KERNELS = INTEGER_OPS


_CONVERSION_OPS = ("QUANTIZE", "DEQUANTIZE")


def check_integer_kernels(interpreter, allow_float_ops: bool = False
                           ) -> Tuple[List[str], List[str]]:
    """``(op names, float op names)``; raises for a float op unless `allow_float_ops`."""
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    names, float_ops = [], []
    for op_name, inputs in tflite_ops(interpreter):
        names.append(op_name)
        if op_name in _CONVERSION_OPS or op_name == "DELEGATE":
            continue
        floats = [details[i]["name"] for i in inputs
                  if i >= 0 and details[i]["dtype"] not in (np.int8, np.int32)]
        if not floats:
            continue
        if not allow_float_ops:
            raise ValueError(
                f"the converted file runs {op_name} on float tensors {floats}: a tensor lacks "
                "a learned range (pass representative_dataset), or the op has no integer "
                "kernel here (allow_float_ops=True writes a hybrid file)")
        float_ops.append(op_name)
    return names, float_ops


def stored_weights(plan: ExportPlan, interpreter) -> List[LayerExport]:
    """Per quantized kernel: its learned bits and the distinct int8 values of its file tensor."""
    tensors = [d for d in interpreter.get_tensor_details()
               if d["dtype"] == np.int8 and len(d["shape"]) in (2, 4)]
    rows = []
    for node in plan.nodes:
        kernel = plan.weights.get(node.layer.name)
        if kernel is None:
            continue
        name = unwrapped_layer(node.layer).name
        matches = [d for d in tensors if d["name"].split("/")[0] == name
                   and "FakeQuant" in d["name"]
                   and int(np.prod(d["shape"])) == kernel.integers.size
                   and _has_data(interpreter, d["index"])]
        distinct = len(np.unique(interpreter.get_tensor(matches[0]["index"]))) if matches else -1
        rows.append(LayerExport(name, kernel.bits, kernel.allowed, distinct))
    return rows


def _has_data(interpreter, index: int) -> bool:
    """Whether tensor `index` is a constant of the file (weights), not an activation."""
    try:
        interpreter.get_tensor(index)
    except ValueError:
        return False
    return True


def examples_array(model, data) -> np.ndarray:
    """Examples as one float32 array from an array or a dataset of examples or batches."""
    if isinstance(data, tf.data.Dataset):
        parts = [part[0] if isinstance(part, (tuple, list)) else part
                 for part in data.as_numpy_iterator()]
        rank = len(model.inputs[0].shape)
        data = np.concatenate(parts) if parts[0].ndim == rank else np.stack(parts)
    return np.asarray(data, np.float32)


def verify(model, content: bytes, data, runtimes, report: ExportReport) -> None:
    images = examples_array(model, data)
    expected = model.predict(images, verbose=0)
    output_wrapper = model.outputs[0]._keras_history.layer
    quantizer, variables = wrapper_output_quantizer(output_wrapper) \
        if is_quantized_wrapper(output_wrapper) else (None, None)
    if quantizer is not None:
        step = quantizer.integer_grid(None, variables)[0]
    else:  # an output tfadaqat did not quantize: the file's int8 step, else float units
        step = _output_tensor_step(content) or 1.0
    report.examples = len(images)
    report.output_step = float(step)
    reference_runtimes = [runtime for runtime in runtimes if runtime in ("builtin", "tflm")]
    simulations = _simulations(content, images, reference_runtimes, report)
    if "single" in simulations:
        report.integer_model = output_agreement(simulations["single"], expected, step)
    for runtime in runtimes:
        outputs = run_on_runtime(content, runtime, images)
        report.runtimes[runtime] = output_agreement(outputs, expected, step)
        if runtime in simulations:
            report.reference_arithmetic[runtime] = output_agreement(
                outputs, simulations[runtime], step)
    if "tflm" in runtimes:
        report.tflm_arena = tflm_arena(content)
    for name, value in report.runtimes[runtimes[0]].items():
        if hasattr(report, name):
            setattr(report, name, value)


def _simulations(content: bytes, images: np.ndarray, runtimes, report: ExportReport
                 ) -> Dict[str, np.ndarray]:
    """The file's outputs simulated in each reference runtime's arithmetic and rounded once
    (``"single"``), when a reference runtime is verified on; none when the file holds an op
    the simulation does not cover (the reason goes to ``report.simulation_error``)."""
    if not runtimes:
        return {}
    try:
        return {arithmetic: simulate(content, images, arithmetic)
                for arithmetic in list(runtimes) + ["single"]}
    except NotSimulated as error:
        report.simulation_error = str(error)
        return {}


def _output_tensor_step(content: bytes) -> Optional[float]:
    """The scale of the file's output when it is int8 (None for a float output)."""
    interpreter = tflite_interpreter(content)
    interpreter.allocate_tensors()
    detail = interpreter.get_output_details()[0]
    return float(detail["quantization"][0]) if detail["dtype"] == np.int8 else None


def output_agreement(outputs: np.ndarray, expected: np.ndarray, step: float
                     ) -> Dict[str, float]:
    """How far `outputs` are from `expected` (both ``[examples, ..., classes]``), as in
    :class:`ExportReport`.

    Args:
      outputs: The outputs to judge (the file's).
      expected: The reference (the Keras model's).
      step: The output grid's step: differences are counted in it, and values within a
        quarter of it of the largest are tied at the top.

    Returns:
      ``top1_agreement`` (some class is at the top of both; ties count once),
      ``top1_strict_agreement`` (``argmax`` equal, ties broken by index),
      ``max_output_difference`` (in steps), ``within_one_step``, ``within_two_steps`` and
      ``differing`` (shares of values: within 1 or 2 steps, not equal).
    """
    tops = [np.isclose(values, values.max(-1, keepdims=True), rtol=0, atol=step / 4)
            for values in (outputs, expected)]
    steps = np.abs(outputs - expected) / step
    return {"top1_agreement": float(np.mean(np.any(tops[0] & tops[1], axis=-1))),
            "top1_strict_agreement": float(np.mean(np.argmax(outputs, -1)
                                                   == np.argmax(expected, -1))),
            "max_output_difference": float(np.max(steps)),
            "within_one_step": float(np.mean(steps <= 1.0 + 1e-3)),
            "within_two_steps": float(np.mean(steps <= 2.0 + 1e-3)),
            "differing": float(np.mean(steps > 1e-3))}
