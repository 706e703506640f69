"""The TFLite runtimes an exported file is run and verified on.

The same integer file gives different outputs on different runtimes: each rounds its
requantizations (the int32 accumulator times a fixed-point multiplier, shifted back to int8)
in its own way, and one-step differences compound through a deep network.

* ``"xnnpack"``: LiteRT's default CPU path (the XNNPACK delegate, what phones run through
  LiteRT). ``export_tflite`` verifies on it by default.
* ``"builtin"``: LiteRT's built-in reference kernels (``OpResolverType.BUILTIN_REF``), the
  portable C++ kernels TFLite's optimized ones are tested against.
* ``"tflm"``: TensorFlow Lite Micro, the runtime of microcontrollers, through the
  ``tflite-micro`` package's interpreter (an optional dependency:
  ``pip install tflite-micro``); it shares its integer arithmetic with the reference kernels.

:func:`run` feeds float examples one at a time, quantizing them when the file's input is
int8, and returns float outputs, dequantized when the file's output is int8.
:func:`tflm_arena` reads how much RAM (the tensor arena) TensorFlow Lite Micro needs for a file.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import tempfile
from typing import Callable, Dict, Sequence, Tuple

import numpy as np

from tfadaqat._compat import tflite_interpreter

RUNTIMES = ("xnnpack", "builtin", "tflm")
TFLM_PACKAGE = "tflite-micro"


def validate_runtimes(runtimes: Sequence[str]) -> Tuple[str, ...]:
    """`runtimes` as a tuple of known names, each once, in the order given.

    Raises:
      ValueError: For an empty sequence, a string instead of a sequence, or an unknown name
        (the message lists the known ones).
      ImportError: For ``"tflm"`` without the ``tflite-micro`` package (names it).
    """
    if isinstance(runtimes, str) or not runtimes:
        raise ValueError(f"runtimes must be a non-empty sequence of names among {RUNTIMES}, "
                         f"got {runtimes!r}")
    unknown = [name for name in runtimes if name not in RUNTIMES]
    if unknown:
        raise ValueError(f"unknown runtime(s) {unknown}; known: {list(RUNTIMES)}")
    if "tflm" in runtimes:
        _tflm_module()
    return tuple(dict.fromkeys(runtimes))


def _tflm_module():
    try:
        from tflite_micro.python.tflite_micro import runtime as tflm_runtime
    except ImportError as error:
        raise ImportError(
            f"runtime 'tflm' (TensorFlow Lite Micro) needs the {TFLM_PACKAGE!r} package: "
            f"pip install {TFLM_PACKAGE} (or pip install 'tfadaqat[export]')") from error
    return tflm_runtime


def _quantize(values: np.ndarray, dtype, scale: float, zero_point: int) -> np.ndarray:
    if dtype != np.int8:
        return values.astype(np.float32)
    return np.clip(np.round(values / scale) + zero_point, -128, 127).astype(np.int8)


def _dequantize(values: np.ndarray, dtype, scale: float, zero_point: int) -> np.ndarray:
    values = values.astype(np.float32)
    return (values - zero_point) * scale if dtype == np.int8 else values


def _litert_invoker(content: bytes, reference_kernels: bool) -> Callable[[np.ndarray],
                                                                          np.ndarray]:
    interpreter = tflite_interpreter(content, reference_kernels=reference_kernels)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    target = interpreter.get_output_details()[0]

    def invoke(example: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(source["index"], _quantize(example[None], source["dtype"],
                                                          *source["quantization"]))
        interpreter.invoke()
        return _dequantize(interpreter.get_tensor(target["index"])[0], target["dtype"],
                           *target["quantization"])

    return invoke


def _first_quantization(detail: Dict) -> Tuple[float, int]:
    parameters = detail["quantization_parameters"]
    if len(parameters["scales"]) == 0:
        return 1.0, 0
    return float(parameters["scales"][0]), int(parameters["zero_points"][0])


def _tflm_invoker(content: bytes) -> Callable[[np.ndarray], np.ndarray]:
    interpreter = _tflm_module().Interpreter.from_bytes(content)
    source, target = interpreter.get_input_details(0), interpreter.get_output_details(0)

    def invoke(example: np.ndarray) -> np.ndarray:
        interpreter.set_input(_quantize(example[None], source["dtype"],
                                        *_first_quantization(source)), 0)
        interpreter.invoke()
        return _dequantize(interpreter.get_output(0)[0], target["dtype"],
                           *_first_quantization(target))

    return invoke


def invoker(content: bytes, runtime: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function from one float example (no batch axis) to the file's float output on
    `runtime`."""
    validate_runtimes([runtime])
    if runtime == "tflm":
        return _tflm_invoker(content)
    return _litert_invoker(content, reference_kernels=runtime == "builtin")


def run(content: bytes, runtime: str, examples: np.ndarray) -> np.ndarray:
    """The outputs of the TFLite file `content` on `runtime` for float `examples`
    (``[count, ...]``), as float ``[count, ...]``."""
    invoke = invoker(content, runtime)
    return np.stack([invoke(example) for example in np.asarray(examples, np.float32)])


_ARENA_LINE = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")


def _native_stderr_of(function: Callable[[], None]) -> str:
    """What `function` writes to file descriptor 2 (native code's stderr), captured."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            function()
        finally:
            ctypes.CDLL(None).fflush(None)
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        return capture.read().decode(errors="replace")


def _tflm_fits(runtime, content: bytes, size: int) -> bool:
    """Whether TFLM builds an interpreter for `content` in an arena of `size` bytes.

    Probed in a forked child process: for some arenas just below what a file needs, TFLM
    crashes (a segmentation fault) instead of refusing them (a model with a MUL op, at 3,464
    bytes where it needs 4,042), which would take the exporting process down with it.
    A child that crashes or raises counts as "does not fit".
    """
    child = os.fork()
    if child == 0:  # the child: no Python clean-up, no buffered output of the parent's
        try:
            runtime.Interpreter.from_bytes(content, arena_size=size)
            code = 0
        except BaseException:  # "TFLM failed to allocate tensors", or anything else
            code = 1
        os._exit(code)
    _, status = os.waitpid(child, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def tflm_arena(content: bytes) -> Dict[str, int]:
    """The tensor arena TensorFlow Lite Micro needs for the file `content`: the RAM a
    microcontroller must set aside for it (weights stay in flash).

    ``total_bytes`` is the smallest arena TFLM accepts, found by bisection to 16 bytes (its
    alignment): more than what its recording allocator reports in the end, since planning
    the activations borrows arena space for a moment (1,557 bytes more on the quickstart's
    ResNet20). The split comes from the recording allocator: its *head* holds the activations
    (TFLM's memory planner places every int8 activation tensor, one byte per value whatever
    its learned bits, so that tensors alive at the same time do not overlap: at least the
    largest layer's input plus output); its *tail* holds what persists between inferences
    (tensor and operator records, quantization parameters, kernel data).

    Returns:
      ``{"total_bytes", "activation_bytes" (head), "persistent_bytes" (tail)}``; pass
      ``total_bytes`` (or more) as the arena size on the device.

    Raises:
      ImportError: Without the ``tflite-micro`` package (names it).
    """
    runtime = _tflm_module()
    text = _native_stderr_of(lambda: runtime.Interpreter.from_bytes(content)
                             .print_allocations())
    values = {name: int(value) for name, value in _ARENA_LINE.findall(text)}
    if set(values) != {"total", "head", "tail"}:
        raise RuntimeError(f"TFLM did not report its arena (got {text[:200]!r})")
    def smallest_arena() -> int:
        low, high = 0, 2 * values["total"] + 4096
        while not _tflm_fits(runtime, content, high):
            if high > 2**31:
                raise RuntimeError("TFLM accepts no arena up to 2 GB for this file")
            low, high = high, 2 * high
        while high - low > 16:
            middle = (low + high) // 2
            low, high = (low, middle) if _tflm_fits(runtime, content, middle) else (middle, high)
        return high

    found = []  # TFLM writes an error line for every arena too small: kept off the terminal
    _native_stderr_of(lambda: found.append(smallest_arena()))
    return {"total_bytes": found[0], "activation_bytes": values["head"],
            "persistent_bytes": values["tail"]}
