"""The ``tfadaqat`` command line (tfadaqat_cli): only its own output unless --verbose."""

import os
import subprocess
import sys

import numpy as np
import pytest

import tfadaqat
from tfadaqat._compat import keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRESS = ("loading ", "aligned the biases", "building the integer graph",
            "converting with the TFLite converter", "checking that every kernel is integer",
            "writing ", "target litert; file ", "  ")


def _cli(*arguments, cwd):
    environment = {key: value for key, value in os.environ.items()
                   if key != "TF_CPP_MIN_LOG_LEVEL"}  # conftest quiets TF for the tests
    environment["PYTHONPATH"] = ROOT
    return subprocess.run([sys.executable, "-m", "tfadaqat_cli", *arguments], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=environment)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(hidden))
    model = tfadaqat.quantize_model(keras.Model(inputs, outputs), "lsq")
    model.compile("adam", "mse")
    rng = np.random.default_rng(0)
    model.fit(rng.random((32, 8, 8, 1), np.float32), rng.random((32, 10), np.float32),
              verbose=0)
    path = tmp_path_factory.mktemp("cli") / "model.keras"
    model.save(path)
    return path


def test_export_prints_only_its_own_progress(saved_model, tmp_path):
    result = _cli("export", "--model", str(saved_model), "--out", "model.tflite",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"loading {saved_model}"
    assert all(line.startswith(PROGRESS) for line in lines), lines
    written = (tmp_path / "model.tflite").stat().st_size
    assert f"writing model.tflite ({written:,} bytes)" in lines


def test_verbose_shows_what_the_quiet_run_hides(saved_model, tmp_path):
    """The quiet run's empty stderr is the CLI's doing: the same export with --verbose
    carries TensorFlow's and LiteRT's native lines."""
    result = _cli("--verbose", "export", "--model", str(saved_model), "--out", "m.tflite",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "XNNPACK" in result.stderr


@pytest.mark.parametrize("content", [None, b"not a zip file", "float"],
                         ids=["missing", "corrupt", "not_quantized"])
def test_a_bad_model_file_is_one_error_line(content, tmp_path):
    if content == "float":  # a valid .keras file of a model tfadaqat did not quantize
        inputs = keras.Input((4,))
        keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(tmp_path / "given.keras")
    elif content is not None:
        (tmp_path / "given.keras").write_bytes(content)
    result = _cli("export", "--model", "given.keras", "--out", "m.tflite", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("tfadaqat export: error: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "given.keras" in result.stderr or "not quantized" in result.stderr
    assert not (tmp_path / "m.tflite").exists()


def test_an_unknown_command_lists_the_commands(tmp_path):
    result = _cli("train", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "tfadaqat: unknown command 'train'; commands: export"
