"""tfadaqat.runtimes: the exported file on LiteRT/XNNPACK, TFLite's reference kernels and
TensorFlow Lite Micro, and export_tflite's verification on each."""

import os
import sys

import numpy as np
import pytest

from tfadaqat import export, runtimes
from tfadaqat._compat import tf
from tests.test_export import _data, _trained


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A trained LSQ model (conv, BN, Add, depthwise, concatenation, pooling, dense) and its
    file with float and with int8 input/output."""
    qmodel = _trained("lsq", weight_bits=4, activation_bits=4)
    folder = tmp_path_factory.mktemp("runtimes")
    export.export_tflite(qmodel, str(folder / "float_io.tflite"))
    export.export_tflite(qmodel, str(folder / "int8_io.tflite"), input_type=tf.int8,
                         output_type=tf.int8)
    return qmodel, {name: open(folder / f"{name}.tflite", "rb").read()
                    for name in ("float_io", "int8_io")}


def test_every_runtime_runs_the_file_and_the_reference_ones_agree_bit_for_bit(exported):
    qmodel, files = exported
    images, _ = _data(32, seed=2)
    expected = qmodel.predict(images, verbose=0)
    outputs = {runtime: runtimes.run(files["float_io"], runtime, images)
               for runtime in runtimes.RUNTIMES}
    for runtime, values in outputs.items():
        assert values.shape == expected.shape == (32, 5), runtime
        assert np.all(np.isfinite(values))
    # TFLite Micro runs kernels derived from TFLite's reference ones: on this small model the
    # same integers (on the quickstart's ResNet20, 0.02% of values differ by a step: their
    # FULLY_CONNECTED kernels round differently, see tests/test_simulation.py).
    np.testing.assert_array_equal(outputs["tflm"], outputs["builtin"])
    # Quantizing the input outside the file (int8 input) gives what the file's own QUANTIZE
    # gives, on every runtime (random inputs meet no rounding tie).
    for runtime in runtimes.RUNTIMES:
        np.testing.assert_array_equal(runtimes.run(files["int8_io"], runtime, images),
                                      outputs[runtime], err_msg=runtime)


def test_export_reports_the_agreement_on_each_runtime_asked_for(exported, tmp_path):
    qmodel, _ = exported
    images, _ = _data(32, seed=2)
    report = export.export_tflite(qmodel, str(tmp_path / "m.tflite"), verify_with=images,
                                  runtimes=("tflm", "xnnpack"))
    assert list(report.runtimes) == ["tflm", "xnnpack"]
    content = open(tmp_path / "m.tflite", "rb").read()
    expected = qmodel.predict(images, verbose=0)
    for runtime, agreement in report.runtimes.items():
        # Oracle: the same measure recomputed from the runtime's outputs.
        assert agreement == export.output_agreement(runtimes.run(content, runtime, images),
                                                    expected, report.output_step)
        assert agreement["max_output_difference"] <= 2.0 + 1e-4
        # A value more than one step off is also a value that differs.
        assert agreement["differing"] >= 1.0 - agreement["within_one_step"]
    assert report.tflm_arena == runtimes.tflm_arena(content)
    # The report's own fields are the first runtime's.
    assert report.top1_agreement == report.runtimes["tflm"]["top1_agreement"]
    assert report.max_output_difference == report.runtimes["tflm"]["max_output_difference"]


def test_unknown_runtimes_are_named_with_the_known_ones(exported, tmp_path):
    qmodel, _ = exported
    with pytest.raises(ValueError, match=r"unknown runtime\(s\) \['gpu'\]; known: "
                                         r"\['xnnpack', 'builtin', 'tflm'\]"):
        export.export_tflite(qmodel, str(tmp_path / "m.tflite"), runtimes=("xnnpack", "gpu"))
    with pytest.raises(ValueError, match="non-empty sequence"):
        export.export_tflite(qmodel, str(tmp_path / "m.tflite"), runtimes="tflm")
    with pytest.raises(ValueError, match="non-empty sequence"):
        runtimes.validate_runtimes(())
    assert runtimes.validate_runtimes(["tflm", "xnnpack", "tflm"]) == ("tflm", "xnnpack")
    assert os.listdir(tmp_path) == []


def test_tflm_without_its_package_names_the_package_before_anything_is_written(
        exported, tmp_path, monkeypatch):
    qmodel, _ = exported
    before = [w.copy() for w in qmodel.get_weights()]
    for name in [name for name in sys.modules if name.split(".")[0] == "tflite_micro"] + [
            "tflite_micro"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(ImportError, match="needs the 'tflite-micro' package: pip install "
                                          "tflite-micro"):
        export.export_tflite(qmodel, str(tmp_path / "m.tflite"), runtimes=("tflm",))
    assert os.listdir(tmp_path) == []
    for old, new in zip(before, qmodel.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_tflm_arena_is_the_smallest_ram_tflm_runs_in_and_holds_the_largest_layer(exported):
    qmodel, files = exported
    content = files["float_io"]
    arena = runtimes.tflm_arena(content)
    module = runtimes._tflm_module()
    images, _ = _data(4, seed=3)
    # Oracle: TFLM itself. It runs the file in that arena, with the outputs of a roomy one,
    # and refuses one 16 bytes (its alignment) smaller.
    expected = runtimes.run(content, "tflm", images)
    interpreter = module.Interpreter.from_bytes(content, arena_size=arena["total_bytes"])
    for image, output in zip(images, expected):
        interpreter.set_input(np.asarray(image[None], np.float32), 0)
        interpreter.invoke()
        np.testing.assert_array_equal(interpreter.get_output(0)[0], output)
    with pytest.raises(RuntimeError, match="failed to allocate"):
        module.Interpreter.from_bytes(content, arena_size=arena["total_bytes"] - 16)
    # What the recording allocator keeps in the end fits in it.
    assert arena["activation_bytes"] + arena["persistent_bytes"] <= arena["total_bytes"]
    # Activations are int8 (one byte per value, whatever their learned bits), and a layer's
    # input and output are alive together.
    largest = max(int(np.prod(node.input_shape[1:])) + int(np.prod(node.output_shape[1:]))
                  for node in qmodel.layers
                  if not isinstance(node.input_shape, list) and len(node.input_shape) == 4)
    assert arena["activation_bytes"] >= largest
