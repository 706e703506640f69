"""The ``tfadaqat`` command line: ``tfadaqat export --model M.keras --out M.tflite [...]``.

Installed as the console script ``tfadaqat``; ``python -m tfadaqat_cli`` runs the same.

This module lives outside the :mod:`tfadaqat` package on purpose: importing the package
imports TensorFlow, whose native libraries write start-up lines to standard error while they
load (CUDA probing, CPU feature notes), before any Python code can set a log level, and
LiteRT writes a line whenever it creates an interpreter, with no setting to stop it. Here the
command line is read first; unless ``--verbose`` is given, the native libraries' standard
error (file descriptor 2) is pointed at the null device for the whole command, while
Python's ``sys.stderr`` keeps the terminal: tracebacks, the command's errors and tfadaqat's
own warnings still show. ``TF_CPP_MIN_LOG_LEVEL`` is set to 3 (unless already set), and
Python warnings raised inside TensorFlow, Keras, TFMOT and absl are ignored. What is left on
the terminal is the command's own progress. A native crash also goes unreported that way:
rerun with ``--verbose`` to see it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Optional, Sequence

USAGE = """usage: tfadaqat [--verbose] COMMAND [ARGS]

commands:
  export    export a model saved from tfadaqat to an integer TFLite file
            (tfadaqat export --help lists its arguments)

--verbose shows TensorFlow's own log lines and warnings."""
COMMANDS = ("export",)
_LIBRARY_MODULES = r"(tensorflow|tf_keras|keras|tensorflow_model_optimization|absl)(\.|$)"


@contextlib.contextmanager
def _native_stderr_silenced():
    """Points file descriptor 2 (where native libraries write) at the null device for the
    duration, with ``sys.stderr`` writing to the original standard error meanwhile."""
    sys.stderr.flush()
    saved_descriptor, saved_stream = os.dup(2), sys.stderr
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    sys.stderr = open(os.dup(saved_descriptor), "w", buffering=1, encoding="utf-8",
                      errors="backslashreplace")
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = saved_stream
        os.dup2(saved_descriptor, 2)
        os.close(saved_descriptor)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line `argv` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [argument for argument in argv if argument != "--verbose"]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, arguments = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"tfadaqat: unknown command {command!r}; commands: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    if verbose:  # everything shows, tracebacks included
        from tfadaqat import export as export_lib
        return export_lib.main(arguments, prog="tfadaqat export")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with warnings.catch_warnings(), _native_stderr_silenced():
        warnings.filterwarnings("ignore", module=_LIBRARY_MODULES)
        from absl import logging as absl_logging
        from tfadaqat import export as export_lib
        from tfadaqat._compat import tf
        absl_logging.set_verbosity(absl_logging.ERROR)
        tf.get_logger().setLevel("ERROR")
        try:
            return export_lib.main(arguments, prog="tfadaqat export")
        except (OSError, ValueError) as error:  # a bad file or model: no traceback
            print(f"tfadaqat {command}: error: {error} (--verbose shows the traceback)",
                  file=sys.stderr)
            return 1


if __name__ == "__main__":
    raise SystemExit(main())
