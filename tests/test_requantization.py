"""tfadaqat.requantization: golden values, the double-rounding property, and both runtimes'
convolution outputs predicted exactly from the file's integers."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tfadaqat
from tfadaqat import requantization
from tfadaqat._compat import keras, tflite_interpreter


def test_golden_values():
    assert requantization.quantized_multiplier(0.375) == (1610612736, -1)  # 0.75 * 2^31, 2^-1
    assert requantization.quantized_multiplier(1.0) == (1 << 30, 1)
    assert requantization.quantized_multiplier(0.0) == (0, 0)
    accumulators = np.array([1, 2, 3, -1, -2, -3])
    np.testing.assert_array_equal(requantization.single_rounding(accumulators, 0.375),
                                  [0, 1, 1, 0, -1, -1])
    np.testing.assert_array_equal(requantization.reference_rounding(accumulators, 0.375),
                                  [1, 1, 1, -1, -1, -1])
    assert requantization.double_rounding_share(0.0029) == 2.0 ** -9  # 0.0029 = 0.74 x 2^-8
    assert requantization.double_rounding_share(0.75) == 0.0
    with pytest.raises(ValueError, match="multiplier must be a finite number >= 0, got -1.0"):
        requantization.quantized_multiplier(-1.0)


@settings(max_examples=200, deadline=None)
@given(multiplier=st.floats(1e-4, 4.0), seed=st.integers(0, 2**31 - 1))
def test_reference_rounding_is_one_step_off_exactly_below_halves(multiplier, seed):
    accumulators = np.random.default_rng(seed).integers(-(2**16), 2**16, 4000)
    once = requantization.single_rounding(accumulators, multiplier)
    twice = requantization.reference_rounding(accumulators, multiplier)
    exact = np.abs(accumulators * multiplier)
    fraction = exact - np.floor(exact)
    _, shift = requantization.quantized_multiplier(multiplier)
    window = 2.0 ** -(max(-shift, 0) + 1) if shift < 0 else 0.0
    # Off by one step away from zero, and only where the product lies just below a half
    # (the Q31 multiplier's own rounding moves the edges by up to |a| M 2^-31 < 2e-4).
    margin = 2e-4
    off = twice != once
    untied = off & (np.abs(fraction - 0.5) > margin)  # exact halves: each rounds its own way
    np.testing.assert_array_equal(np.abs(twice[untied]) - np.abs(once[untied]), 1)
    inside = (fraction >= 0.5 - window + margin) & (fraction < 0.5 - margin)
    outside = (fraction < 0.5 - window - margin) | (fraction > 0.5 + margin)
    assert off[inside].all() and not off[outside].any()


def _one_convolution_file(tmp_path):
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).normal(size=(32, 8, 8, 3)).astype(np.float32)
    model = keras.Sequential([keras.Input((8, 8, 3)),
                              keras.layers.Conv2D(8, 3, name="conv")])
    qmodel = tfadaqat.quantize_model(model, "lsq")
    qmodel.compile(keras.optimizers.Adam(1e-3), "mse")
    qmodel.fit(images, model.predict(images, verbose=0), batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "conv.tflite")
    tfadaqat.export_tflite(qmodel, path)
    return open(path, "rb").read(), images


@pytest.mark.parametrize("runtime, rounding", [
    ("xnnpack", requantization.single_rounding),
    ("builtin", requantization.reference_rounding)])
def test_each_runtime_rounds_a_convolution_as_predicted(runtime, rounding, tmp_path):
    content, images = _one_convolution_file(tmp_path)
    interpreter = tflite_interpreter(content, preserve_all_tensors=True,
                                     reference_kernels=runtime == "builtin")
    interpreter.allocate_tensors()
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    conv = next(op for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D")
    data, weights, bias = (details[index] for index in conv["inputs"])
    output = details[conv["outputs"][0]]
    scale = lambda detail: detail["quantization_parameters"]["scales"]
    zero_point = lambda detail: int(detail["quantization_parameters"]["zero_points"][0])
    multiplier = float(scale(data)[0] * scale(weights)[0] / scale(output)[0])
    assert len(scale(weights)) == 1 and requantization.double_rounding_share(multiplier) > 0
    off = 0
    for image in images[:8]:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        x = interpreter.get_tensor(data["index"]).astype(np.int64)[0] - zero_point(data)
        w = interpreter.get_tensor(weights["index"]).astype(np.int64)
        accumulators = np.einsum("hwyxc,oyxc->hwo", np.lib.stride_tricks.sliding_window_view(
            x, (3, 3), axis=(0, 1)).transpose(0, 1, 3, 4, 2), w)
        accumulators += interpreter.get_tensor(bias["index"]).astype(np.int64)
        expected = np.clip(rounding(accumulators, multiplier) + zero_point(output), -128, 127)
        got = interpreter.get_tensor(output["index"])[0]
        np.testing.assert_array_equal(got, expected)
        off += int(np.sum(requantization.single_rounding(accumulators, multiplier)
                          != requantization.reference_rounding(accumulators, multiplier)))
    assert off > 0  # the two runtimes do part ways on this file
