"""tfadaqat.export.simulation: the exported file in the reference kernels' arithmetic, against
the runtimes themselves (LiteRT's built-in reference kernels and TensorFlow Lite Micro, bit for
bit) and, rounded once, against the Keras model; per method."""

import flatbuffers
import numpy as np
import pytest

import tfadaqat
from tfadaqat import requantization, runtimes
from tfadaqat._compat import keras, tflite_interpreter, tflite_schema
from tfadaqat.export import simulation
from models import micro
from tests.test_export import _data, _trained
from tests import test_oqat_supernet as oqat_tests
from tfadaqat.oqat.supernet import extract, recalibrate


def test_reduced_multiplier_golden_values():
    # From a ResNet20 logits layer: M = 0.00061949 = 1362271739 x 2^(-10 - 31). LiteRT's
    # reference FULLY_CONNECTED (16-bit multiplier 20787, one rounding) and TFLM's (Q31, two
    # roundings) part at +-807 M = +-0.49993: one rounding gives 0, two give +-1.
    fixed, shift = requantization.quantized_multiplier(0.0006194894646151342)
    assert (fixed, shift) == (1362271739, -10)
    accumulators = np.array([-807, -4035, 807, 0, 5000])
    np.testing.assert_array_equal(
        requantization.multiply_by_reduced_multiplier(accumulators, fixed, shift),
        [0, -2, 0, 0, 3])  # (a x 20787 + 2^24) >> 25
    np.testing.assert_array_equal(
        requantization.multiply_by_quantized_multiplier(accumulators, fixed, shift),
        [-1, -3, 1, 0, 3])


def test_per_channel_multipliers_equal_one_channel_at_a_time():
    rng = np.random.default_rng(0)
    multipliers = rng.uniform(1e-4, 2.0, 7)
    accumulators = rng.integers(-(2**20), 2**20, (50, 7))
    pairs = [requantization.quantized_multiplier(m) for m in multipliers]
    together = requantization.multiply_by_quantized_multiplier(
        accumulators, [p[0] for p in pairs], [p[1] for p in pairs])
    for channel, multiplier in enumerate(multipliers):
        np.testing.assert_array_equal(
            together[:, channel],
            requantization.reference_rounding(accumulators[:, channel], multiplier))


def _oqat_subnet():
    net, images = oqat_tests._trained(bits=3, edge_bits=8)
    config = oqat_tests.SPACE.sample(np.random.default_rng(4))
    recalibrate(net, config, [images])
    return extract(net, config), images


def _keyword_spotter(method):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 1, (64, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, 4, 64)
    model = micro.keyword_spotter(input_shape=(8, 8, 1), num_classes=4, width=8)
    qmodel = tfadaqat.quantize_model(model, method, weight_bits=3, activation_bits=3)
    qmodel.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    qmodel.fit(images, labels, epochs=2, batch_size=16, verbose=0)
    return qmodel, images


def _multiply_and_pad(method):
    """Two ReLU branches multiplied (MUL), an asymmetric zero padding (PAD) before a strided
    depthwise convolution, a global mean, a dense head. (TFLite Micro crashed on some arena
    sizes of its file while ``tflm_arena`` searched for the smallest: the search now probes
    in child processes.)"""
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input((8, 8, 2))
    a = layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    b = layers.Conv2D(4, 1, activation="relu")(inputs)
    x = layers.ZeroPadding2D(((1, 2), (2, 1)))(layers.Multiply()([a, b]))
    x = layers.DepthwiseConv2D(3, strides=2, activation="relu")(x)
    outputs = layers.Dense(3)(layers.GlobalAveragePooling2D()(x))
    qmodel = tfadaqat.quantize_model(keras.Model(inputs, outputs), method, weight_bits=4,
                                     activation_bits=4)
    qmodel.compile(keras.optimizers.Adam(1e-2),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images, labels = _data(64, seed=4)
    qmodel.fit(images, labels % 3, epochs=2, batch_size=16, verbose=0)
    return qmodel, images


def _trained_model(case):
    """`case`: a method on the export test's model (conv, BN, Add, depthwise, concatenation,
    average pooling as sliced depthwise convolutions, max pooling, dense), on the keyword
    spotter (global average pool, softmax), on :func:`_multiply_and_pad`, or an OQAT
    sub-net."""
    if case == "oqat":
        return _oqat_subnet()
    method, model = case.split("-")
    if model == "spotter":
        return _keyword_spotter(method)
    if model == "multiply":
        return _multiply_and_pad(method)
    qmodel = _trained(method, weight_bits=3, activation_bits=3,
                      **({"adaqat_rule": None} if method == "adaqat" else {}))
    return qmodel, _data(64, seed=3)[0]


@pytest.mark.parametrize("case, storage", [
    ("adaqat-export", "int8"), ("adaqat-export", "int4"), ("dq-export", "int8"),
    ("lsq-export", "int4"), ("lsq-spotter", "int8"), ("dq-spotter", "int4"),
    ("adaqat-multiply", "int8"), ("oqat", "int8")])
def test_reference_runtimes_equal_the_simulation_and_its_integers_agree_with_keras(
        case, storage, tmp_path):
    qmodel, images = _trained_model(case)
    path = str(tmp_path / "model.tflite")
    report = tfadaqat.export_tflite(qmodel, path, verify_with=images, weight_storage=storage,
                                    runtimes=("xnnpack", "builtin", "tflm"))
    content = open(path, "rb").read()
    assert report.simulation_error is None
    for runtime in ("builtin", "tflm"):
        simulated = simulation.simulate(content, images, runtime)
        # Bit for bit: every output value of the runtime is the simulation's.
        np.testing.assert_array_equal(runtimes.run(content, runtime, images), simulated,
                                      err_msg=runtime)
        exact = report.reference_arithmetic[runtime]
        assert exact["differing"] == 0.0 and exact["max_output_difference"] == 0.0
        assert exact["top1_agreement"] == 1.0
    assert "xnnpack" not in report.reference_arithmetic
    _every_tensor_equals_the_reference_kernels(content, images[:6])
    # The file's integers rounded once are the Keras model's outputs, to a step.
    assert report.integer_model["top1_agreement"] >= 0.98
    assert report.integer_model["within_one_step"] >= 0.99
    single = simulation.simulate(content, images, "single")
    expected = qmodel.predict(images, verbose=0)
    steps = np.abs(single - expected) / report.output_step
    assert np.mean(steps <= 1.0 + 1e-3) == pytest.approx(report.integer_model["within_one_step"])
    if storage == "int8":  # XNNPACK rounds int8 requantizations once, as "single" does
        assert np.mean(np.abs(runtimes.run(content, "xnnpack", images) - single)
                       <= report.output_step * (1 + 1e-3)) >= 0.99


def _every_tensor_equals_the_reference_kernels(content, images):
    """Each op's output, not only the model's: LiteRT's reference kernels keep them all."""
    graph = simulation._Graph(content)
    values = simulation._run(graph, np.asarray(images, np.float32), "builtin")
    compared = set()
    for index, image in enumerate(images):
        interpreter = tflite_interpreter(content, preserve_all_tensors=True,
                                         reference_kernels=True)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        for name, _, outputs, _ in graph.operators:
            expected = interpreter.get_tensor(outputs[0])[0]
            np.testing.assert_array_equal(values[outputs[0]][index].reshape(expected.shape),
                                          expected, err_msg=name)
            compared.add(name)
    assert {"CONV_2D", "FULLY_CONNECTED", "QUANTIZE"} <= compared


def test_no_reference_runtime_no_simulation(tmp_path):
    qmodel, images = _trained_model("lsq-export")
    report = tfadaqat.export_tflite(qmodel, str(tmp_path / "m.tflite"), verify_with=images)
    assert report.reference_arithmetic == {} and report.integer_model == {}
    assert report.simulation_error is None


def _with_operator_renamed(content, old, new):
    schema = tflite_schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(content, 0))
    for code in model.operatorCodes:
        if code.builtinCode == getattr(schema.BuiltinOperator, old):
            code.builtinCode = code.deprecatedBuiltinCode = getattr(schema.BuiltinOperator, new)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_uncovered_ops_and_arithmetics_are_named(tmp_path):
    qmodel, images = _trained_model("lsq-export")
    path = str(tmp_path / "m.tflite")
    tfadaqat.export_tflite(qmodel, path)
    content = open(path, "rb").read()
    with pytest.raises(ValueError, match=r"arithmetic must be one of \('builtin', 'tflm', "
                                         r"'single'\), got 'xnnpack'"):
        simulation.simulate(content, images, "xnnpack")
    renamed = _with_operator_renamed(content, "MAX_POOL_2D", "L2_POOL_2D")
    with pytest.raises(simulation.NotSimulated,
                       match=r"op L2_POOL_2D \(output '[^']*max[^']*'\) has no "
                             "reference-arithmetic simulation here"):
        simulation.simulate(renamed, images)
    # SOFTMAX, simulated in float, is refused inside the network (not at its output).
    renamed = _with_operator_renamed(content, "MAX_POOL_2D", "SOFTMAX")
    with pytest.raises(simulation.NotSimulated, match=r"op SOFTMAX .* feeds another op"):
        simulation.simulate(renamed, images)
