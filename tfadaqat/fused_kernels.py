"""Fused quantizer kernels: one pass over a tensor in each direction for LSQ and DQ, and
TensorFlow's FakeQuant with a learned (tensor) bit-width for AdaQAT's activations.

Forward. LSQ's and DQ's element-wise quantizer (weights, signed activations),
``q = s clip(floor(clip(x, a, b) / s + 1/2), n, p)``, is five to six TensorFlow ops, each a
pass over the tensor; :func:`grid_quantize` does it in one, with the same float operations
in the same order (the same bits).

Backward. LSQ's and DQ's backward pass needs, for a quantized tensor ``q = Q(x)`` and the incoming
gradient ``g``:

* ``dL/dx = g`` where ``low <= x <= high``, else 0 (straight-through estimator);
* ``sum(g (q - x))`` over the same elements (the step gradient, times the step);
* ``sum(g)`` where ``x < low`` and where ``x > high`` (the range gradients).

In TensorFlow ops that is four passes over the tensor (the FakeQuant gradient, a subtraction, a
product and a sum); on this project's CPUs each pass over a ResNet20 activation costs a few
milliseconds, which made LSQ and DQ steps 0.3-0.4x of a float step slower than TFMOT's.
:func:`quantizer_gradient` computes all four in one pass. It is compiled against the
installed TensorFlow on first use (``kernels/quantizer.cc``, ``g++``, about 10 s; the
library is cached, see :func:`cache_directory`).

Learned bit-width. TensorFlow's ``FakeQuantWithMinMaxVars`` takes its bit-width as an attribute,
so a bit-width held in a variable (AdaQAT's activations) needs a ``tf.switch_case`` over seven
kernels in each direction; :func:`fake_quantize` is the same kernel reading the bit-width from a
tensor (TensorFlow's functor: the same values and input gradients, range sums to float rounding).

All functions fall back to the TensorFlow ops,
with a one-line warning, where no compiler is present or the build fails. Both paths give the
same ``q`` and ``dL/dx`` bit for bit; the sums agree to float rounding (the kernel adds in
double, in a fixed order).

Environment:
  ``TFADAQAT_FUSED_KERNELS=0`` uses the TensorFlow ops without trying to build.
  ``TFADAQAT_KERNEL_CACHE`` overrides the cache folder.
  ``CXX`` names the compiler (default ``g++``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Iterator, Optional, Tuple

from tfadaqat._compat import tf

SOURCE = Path(__file__).parent / "kernels" / "quantizer.cc"


class FusedKernelUnavailableWarning(RuntimeWarning):
    """The fused kernel could not be built or loaded; the TensorFlow ops are used instead."""


_state = {"module": None, "tried": False, "reason": None, "enabled": True}


def cache_directory() -> Path:
    """Where built kernels are kept: ``$TFADAQAT_KERNEL_CACHE``, else
    ``$XDG_CACHE_HOME/tfadaqat/kernels`` (``~/.cache/tfadaqat/kernels``)."""
    if os.environ.get("TFADAQAT_KERNEL_CACHE"):
        return Path(os.environ["TFADAQAT_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tfadaqat" / "kernels"


def _compiler() -> str:
    return os.environ.get("CXX", "g++")


def _build_command(output: Path) -> list:
    # -ffp-contract=off: no fused multiply-adds, so the forward kernel rounds as TensorFlow does.
    # -fno-trapping-math: lets the compiler vectorize the forward loop's selects and floor; it
    # changes no rounding (and no value but a NaN's payload).
    # -fopenmp-simd: the backward kernel's sums are vectorized OpenMP simd reductions.
    # -DNDEBUG: Eigen without its run-time assertions, as TensorFlow's own kernels are built
    # (with them, the FakeQuant functors ran at less than half the speed).
    return ([_compiler(), "-shared", "-fPIC", "-O3", "-march=native", "-ffp-contract=off",
             "-fno-trapping-math", "-fopenmp-simd", "-DNDEBUG", "-w", str(SOURCE),
             "-o", str(output)]
            + tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags())


def _cpu_signature() -> str:
    """The CPU's model and feature flags: the library is built for this CPU (-march=native)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            lines = [line for line in cpuinfo if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def library_path() -> Path:
    """The path of the built library for this source, TensorFlow, compiler and CPU."""
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), tf.__version__.encode(), " ".join(
            _build_command(Path("out"))).encode(), _cpu_signature().encode()):
        key.update(part)
        key.update(b"\0")
    return cache_directory() / f"quantizer-{key.hexdigest()[:16]}.so"


def build(path: Optional[Path] = None) -> Path:
    """Compiles the kernel into `path` (default :func:`library_path`) unless it is there.

    Concurrent builds (test workers, training workers) wait on a lock file; the library is
    written to a temporary file and renamed, so no process loads a half-written file.

    Raises:
      RuntimeError: If no compiler is found or the compiler fails (with its output).
    """
    path = Path(path or library_path())
    if path.exists():
        return path
    if shutil.which(_compiler()) is None:
        raise RuntimeError(f"no C++ compiler {_compiler()!r} on PATH (set CXX, or install g++)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():  # built by another process while this one waited
            return path
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
            scratch_library = Path(scratch) / path.name
            result = subprocess.run(_build_command(scratch_library), capture_output=True,
                                    text=True, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"building {SOURCE.name} failed: "
                                   f"{_first_error(result.stderr, result.returncode)}\n"
                                   f"{result.stderr[-2000:]}")
            os.replace(scratch_library, path)
    return path


def _first_error(compiler_output: str, returncode: int) -> str:
    """The compiler's first ``error`` line (the warning's one-line reason), else its exit code."""
    for line in compiler_output.splitlines():
        if "error" in line:
            return line.strip()
    return f"the compiler exited with {returncode}"


def kernel_module():
    """The loaded kernel library, or None (with one warning) where it cannot be built or loaded,
    or where it is switched off (``TFADAQAT_FUSED_KERNELS=0``, :func:`fused_kernels_disabled`)."""
    if _switched_off():
        return None
    if not _state["tried"]:
        _state["tried"] = True
        try:
            _state["module"] = tf.load_op_library(str(build()))
        except (RuntimeError, OSError, tf.errors.NotFoundError) as error:
            _state["reason"] = str(error).strip().splitlines()[0]
            warnings.warn(
                "tfadaqat: the fused quantizer kernels are unavailable "
                f"({_state['reason']}); LSQ and DQ use TensorFlow ops instead (same results, "
                "slower steps)", FusedKernelUnavailableWarning, stacklevel=2)
    return _state["module"]


def unavailable_reason() -> Optional[str]:
    """Why the kernel is not in use (None while it is, or before the first use)."""
    if _switched_off():
        return "switched off"
    return _state["reason"]


def _switched_off() -> bool:
    """``TFADAQAT_FUSED_KERNELS=0``, or inside :func:`fused_kernels_disabled`."""
    return not _state["enabled"] or os.environ.get("TFADAQAT_FUSED_KERNELS") == "0"


@contextlib.contextmanager
def fused_kernels_disabled() -> Iterator[None]:
    """Within this block, functions traced use the TensorFlow ops (for tests and comparisons)."""
    previous = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = previous


def grid_quantize(inputs: tf.Tensor, step: tf.Tensor, *, clip_low=-math.inf,
                  clip_high=math.inf, integer_low=-math.inf, integer_high=math.inf) -> tf.Tensor:
    """``q = s clip(round_half_up(clip(x, clip_low, clip_high) / s), integer_low, integer_high)``.

    LSQ clamps the integer (``integer_low``, ``integer_high``); DQ clamps ``x`` (``clip_low``,
    ``clip_high``). Infinite bounds clamp nothing. No gradient: the quantizers define theirs.

    Args:
      inputs: Float tensor ``x``.
      step: Scalar step ``s`` > 0.
      clip_low: Scalar lower clip of ``x``.
      clip_high: Scalar upper clip of ``x``.
      integer_low: Lowest integer.
      integer_high: Highest integer.

    Returns:
      ``q``, shaped like `inputs`.
    """
    module = kernel_module()
    if module is not None:
        bounds = [tf.cast(bound, tf.float32)
                  for bound in (clip_low, clip_high, integer_low, integer_high)]
        return module.tfadaqat_grid_quantize(inputs, step, *bounds)
    if _clamps(clip_low, clip_high):
        inputs = tf.clip_by_value(inputs, clip_low, clip_high)
    rounded = tf.floor(inputs / step + 0.5)
    if _clamps(integer_low, integer_high):
        rounded = tf.clip_by_value(rounded, integer_low, integer_high)
    return step * rounded


def fake_quantize(inputs: tf.Tensor, low: tf.Tensor, high: tf.Tensor, bits: tf.Tensor, *,
                  narrow_range: bool) -> Optional[tf.Tensor]:
    """``FakeQuantWithMinMaxVars`` with the bit-width as an integer tensor in ``[2, 16]``.

    Forward and gradient are TensorFlow's own FakeQuant functors given that bit-width: the
    values and ``dq/dx`` (the upstream gradient where ``x`` lies in the nudged
    ``[low, high]``, else 0) are those of
    ``tf.quantization.fake_quant_with_min_max_vars(..., num_bits=bits)`` and its gradient op
    bit for bit; ``dq/dlow`` and ``dq/dhigh``, the sums of the upstream gradient below and above
    the range, agree to float rounding (Eigen's summation order follows the vector width the
    library is compiled for). The bit-width has no gradient. A bit-width outside
    ``[2, 16]`` is an ``InvalidArgumentError`` when the op runs.

    Returns:
      The fake-quantized tensor, or None where the kernels are not in use (the caller then
      selects TensorFlow's kernel of each bit-width with ``tf.switch_case``).
    """
    module = kernel_module()
    if module is None:
        return None
    bits = tf.cast(bits, tf.int32)

    @tf.custom_gradient
    def quantize(inputs, low, high):
        outputs = module.tfadaqat_fake_quantize(inputs, low, high, bits,
                                                narrow_range=narrow_range)

        def gradient(upstream):
            return module.tfadaqat_fake_quantize_gradient(upstream, inputs, low, high, bits,
                                                          narrow_range=narrow_range)

        return outputs, gradient

    return quantize(tf.convert_to_tensor(inputs), tf.convert_to_tensor(low),
                    tf.convert_to_tensor(high))


def _clamps(low, high) -> bool:
    """Whether ``clip(., low, high)`` can change a finite value (False for Python infinities)."""
    return not (isinstance(low, float) and isinstance(high, float)
                and math.isinf(low) and math.isinf(high))


def quantizer_gradient(upstream: tf.Tensor, inputs: tf.Tensor, outputs: tf.Tensor,
                       low: tf.Tensor, high: tf.Tensor, *, nudge: bool
                       ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """The backward pass of a quantizer with range ``[low, high]``, in one pass where possible.

    With ``m = [low <= x <= high]``, ``g`` = `upstream`, ``x`` = `inputs`, ``q`` = `outputs`:
    returns ``(g m, sum(g m (q - x)), sum(g [x < low]), sum(g [x > high]))``.

    Args:
      upstream: Gradient of the loss with respect to `outputs`.
      inputs: The quantizer's input ``x``.
      outputs: Its output ``q``, shaped like `inputs`.
      low: Scalar lower end of the range.
      high: Scalar upper end of the range.
      nudge: Move ``[low, high]`` first as ``FakeQuantWithMinMaxVarsGradient(num_bits=8)``
        does (TensorFlow's nudging of the range so that zero is on its grid): the mask of the
        fused forward kernel's gradient. Without it the range is used as given.

    Returns:
      ``(input gradient, inside error sum, below sum, above sum)``.
    """
    module = kernel_module()
    if module is not None:
        return module.tfadaqat_quantizer_gradient(upstream, inputs, outputs, low, high,
                                                  num_bits=8, narrow_range=False, nudge=nudge)
    if nudge:
        inside, below, above = tf.quantization.fake_quant_with_min_max_vars_gradient(
            upstream, inputs, low, high, num_bits=8)
    else:
        zeros = tf.zeros_like(upstream)
        inside = tf.where(tf.logical_and(inputs >= low, inputs <= high), upstream, zeros)
        below = tf.reduce_sum(tf.where(inputs < low, upstream, zeros))
        above = tf.reduce_sum(tf.where(inputs > high, upstream, zeros))
    return inside, tf.reduce_sum(inside * (outputs - inputs)), below, above


def main() -> int:
    """``python -m tfadaqat.fused_kernels``: builds the kernels now (the Makefile's install step
    does) and prints one line saying whether they are in use; exits 0 either way, since the
    TensorFlow ops are a working fallback."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FusedKernelUnavailableWarning)
        module = kernel_module()
    if module is None:
        print(f"tfadaqat fused quantizer kernels: NOT in use ({unavailable_reason()}); "
              "LSQ and DQ train with TensorFlow ops (same results, slower steps)")
    else:
        print(f"tfadaqat fused quantizer kernels: in use ({library_path()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
