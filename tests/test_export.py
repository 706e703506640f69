"""tfadaqat.export: integer TFLite files against the Keras model they came from."""

import os

import numpy as np
import pytest

import tfadaqat
from tfadaqat import export
from tfadaqat.export import integers as export_integers
from tfadaqat.export import convert as export_convert
from tfadaqat.export import plan as export_plan
from tfadaqat._compat import keras, tf, tflite_interpreter, tflite_ops, tflite_schema

layers = keras.layers
WEIGHT_KERNELS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _export_model():
    """Conv-BN-ReLU, Add, depthwise-BN, concatenation, pooling, Flatten and Dense."""
    inputs = keras.Input((8, 8, 2), name="image")
    x = layers.Conv2D(6, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    y = layers.Conv2D(6, 3, padding="same", name="block_conv")(x)
    y = layers.BatchNormalization(name="block_bn")(y)
    x = layers.ReLU(name="block_out")(layers.Add(name="block_add")([x, y]))
    z = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise")(x)
    z = layers.BatchNormalization(name="depthwise_bn")(z)
    z = layers.ReLU(name="depthwise_relu")(z)
    x = layers.Concatenate(name="concat")([x, z])
    x = layers.AveragePooling2D(name="average")(x)
    x = layers.MaxPooling2D(name="max")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(5, name="logits")(x)
    return keras.Model(inputs, outputs)


def _data(count=48, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, size=(count, 8, 8, 2)).astype("float32"),
            rng.integers(0, 5, size=count))


def _trained(method, **kwargs):
    keras.utils.set_random_seed(0)
    qmodel = tfadaqat.quantize_model(_export_model(), method, **kwargs)
    qmodel.compile(keras.optimizers.Adam(1e-2),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images, labels = _data()
    qmodel.fit(images, labels, epochs=2, batch_size=16, verbose=0)  # BN statistics move
    return qmodel


def _tensor_types(content):
    interpreter = tflite_interpreter(content)
    interpreter.allocate_tensors()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    return [(name, [details[i]["dtype"] for i in inputs if i >= 0])
            for name, inputs in tflite_ops(interpreter)]


@pytest.mark.parametrize("method, bits", [
    ("adaqat", 2), ("adaqat", 3), ("adaqat", 4), ("adaqat", 7),
    ("lsq", 2), ("lsq", 4), ("lsq", 8),
    ("dq", 3), ("dq", 8),
])
def test_round_trip_agrees_and_stores_learned_bits(tmp_path, method, bits):
    options = {"adaqat_rule": None} if method == "adaqat" else {}
    qmodel = _trained(method, weight_bits=bits, activation_bits=bits, **options)
    path = str(tmp_path / "model.tflite")
    images, _ = _data(64, seed=1)
    report = export.export_tflite(qmodel, path, verify_with=images)
    assert os.path.getsize(path) == report.file_bytes
    assert report.examples == 64
    assert report.max_output_difference <= 2.0 + 1e-4  # in output quantization steps
    # Top-1 on these untrained, near-tied logits says little: see the digits test.
    learned = tfadaqat.bit_widths(qmodel)
    for row in report.layers:
        assert row.bits == learned[row.layer][next(iter(learned[row.layer]))]
        # Every method's kernels use a symmetric grid with zero: 2^b - 1 integers at most.
        assert 0 < row.distinct_values <= row.allowed_values <= 2**row.bits - 1
    # Every kernel runs on int8 tensors (int32 bias); only the edges are float.
    content = open(path, "rb").read()
    for name, dtypes in _tensor_types(content):
        if name in export.INTEGER_KERNELS:
            assert all(d in (np.int8, np.int32) for d in dtypes), (name, dtypes)
    names = [name for name, _ in _tensor_types(content)]
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD"} <= set(names)


def test_mixed_bits_and_int8_input_output(tmp_path):
    qmodel = _trained("adaqat", adaqat_rule=None, grid="symmetric")
    tfadaqat.set_bit_widths(qmodel, {"stem_conv": {"kernel": 2}, "block_conv": {"kernel": 5},
                                     "depthwise": {"depthwise_kernel": 3},
                                     "stem_relu": {"output": 3}, "block_out": {"output": 6}})
    images, _ = _data(64, seed=2)
    report = export.export_tflite(qmodel, str(tmp_path / "mixed.tflite"), input_type=tf.int8,
                                  output_type=tf.int8, verify_with=images)
    assert report.max_output_difference <= 2.0 + 1e-4
    stored = {row.layer: row for row in report.layers}
    # Symmetric grids: 2 bits hold {-1, 0, 1}, 3 bits {-3, ..., 3}; -1 would be "not found".
    assert stored["stem_conv"].bits == 2 and 2 <= stored["stem_conv"].distinct_values <= 3
    assert 2 <= stored["depthwise"].distinct_values <= 7
    content = open(str(tmp_path / "mixed.tflite"), "rb").read()
    interpreter = tflite_interpreter(content)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    # int8 at both edges: no op reads a float tensor (QUANTIZE ops left only requantize).
    for name, dtypes in _tensor_types(content):
        assert all(d in (np.int8, np.int32) for d in dtypes), (name, dtypes)
    assert "DEQUANTIZE" not in [name for name, _ in _tensor_types(content)]


def test_activation_takes_at_most_two_to_the_bits_values(tmp_path):
    qmodel = _trained("lsq", weight_bits=4, activation_bits=3)
    path = str(tmp_path / "three_bits.tflite")
    export.export_tflite(qmodel, path)
    interpreter = tflite_interpreter(open(path, "rb").read(), preserve_all_tensors=True)
    interpreter.allocate_tensors()
    images, _ = _data(8, seed=3)
    seen = {}
    for image in images:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        for detail in interpreter.get_tensor_details():
            if detail["name"].startswith("stem_relu/") and detail["dtype"] == np.int8:
                values = interpreter.get_tensor(detail["index"])
                seen.setdefault(detail["name"], set()).update(np.unique(values).tolist())
    assert seen  # the ReLU's quantized output is in the file
    # The tensor the clamp produces holds 2^3 levels at most (the conv before it may hold more).
    assert min(len(values) for values in seen.values()) <= 2**3


def _two_bit_conv_bn_relu():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, keras.layers.ReLU(name="relu")(x))
    rng = np.random.default_rng(1)
    model.get_layer("conv").set_weights([rng.normal(0, 0.3, (3, 3, 3, 16))])
    bn = model.get_layer("bn")
    bn.set_weights([rng.uniform(0.5, 2.0, 16), rng.normal(0, 1, 16), rng.normal(0, 1, 16),
                    rng.uniform(0.5, 2.0, 16)])
    # 8-bit weights (stored as they are, r = 1) on 2-bit inputs: a coarse int32 bias unit.
    qmodel = tfadaqat.quantize_model(model, "lsq", weight_bits=8, activation_bits=2)
    images = rng.normal(0, 1, (32, 8, 8, 3)).astype(np.float32)
    qmodel.initialize_quantizers(images)
    return qmodel, images


def _values_off_by_a_step(qmodel, path, images):
    """Outputs of the file (built-in kernels) that differ from Keras by half a step or more."""
    interpreter = tflite_interpreter(open(path, "rb").read(), preserve_all_tensors=True)
    interpreter.allocate_tensors()
    step = export_plan.make_plan(qmodel).output_grids["quant_relu"][0]
    off = 0
    for image, expected in zip(images, qmodel.predict(images, verbose=0)):
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        found = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]
        off += int((np.abs(found - expected) >= 0.5 * step).sum())
    return off


def test_aligned_biases_make_the_file_compute_what_keras_computes(tmp_path):
    qmodel, images = _two_bit_conv_bn_relu()
    export.export_tflite(qmodel, str(tmp_path / "rounded.tflite"), align=False)
    assert _values_off_by_a_step(qmodel, str(tmp_path / "rounded.tflite"), images) > 0
    beta = qmodel.get_layer("bn").beta.numpy()
    assert export.align_biases(qmodel) == 1
    # The folded offset now lies on the int32 grid: input step x stored weight step per channel.
    plan = export_plan.make_plan(qmodel)
    multiplier, offset = plan.affines["quant_conv"]
    kernel = plan.weights["quant_conv"]
    _, weight_scale = export_integers.stored_kernel(kernel, multiplier)
    unit = plan.output_grids["quant_input_1_quantize_point"][0] * weight_scale
    counts = offset / unit
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)
    moved = np.abs(qmodel.get_layer("bn").beta.numpy() - beta)
    assert moved.max() <= 0.5 * unit.max() * 1.001 and moved.max() > 0
    export.export_tflite(qmodel, str(tmp_path / "aligned.tflite"))
    assert _values_off_by_a_step(qmodel, str(tmp_path / "aligned.tflite"), images) == 0


def _int4_tensors(content):
    schema = tflite_schema()
    model = schema.Model.GetRootAsModel(content, 0)
    graph = model.Subgraphs(0)
    return [graph.Tensors(i).Name().decode() for i in range(graph.TensorsLength())
            if graph.Tensors(i).Type() == schema.TensorType.INT4]


def test_int4_storage_packs_kernels_of_at_most_4_bits(tmp_path):
    qmodel = _trained("lsq", weight_bits=4, activation_bits=6)
    images, _ = _data(16, seed=5)
    int8 = export.export_tflite(qmodel, str(tmp_path / "int8.tflite"), verify_with=images)
    int4 = export.export_tflite(qmodel, str(tmp_path / "int4.tflite"), verify_with=images,
                                weight_storage="int4")
    kernels = len(int4.layers)
    assert int4.packing == f"int4: {kernels} of {kernels} kernels packed, two values per byte"
    packed = _int4_tensors(open(tmp_path / "int4.tflite", "rb").read())
    assert len(packed) == kernels and not _int4_tensors(open(tmp_path / "int8.tflite",
                                                             "rb").read())
    weights = sum(w.shape.num_elements() for w in qmodel.trainable_weights
                  if w.name.endswith("kernel:0"))
    # Half a byte saved per weight, give or take a byte of padding per tensor.
    assert int8.file_bytes - int4.file_bytes >= weights // 2 - kernels
    assert int4.top1_agreement == 1.0 and int4.max_output_difference <= 2.0 + 1e-4
    assert all(0 < row.distinct_values <= row.allowed_values <= 15 for row in int4.layers)


def test_int4_storage_leaves_wider_kernels_in_int8(tmp_path):
    qmodel = _trained("lsq", weight_bits=8, activation_bits=8)
    report = export.export_tflite(qmodel, str(tmp_path / "m.tflite"), weight_storage="int4")
    assert report.packing.startswith(f"int4: 0 of {len(report.layers)} kernels packed")
    with pytest.raises(ValueError, match="weight_storage must be one of"):
        export.export_tflite(qmodel, str(tmp_path / "n.tflite"), weight_storage="int2")
    assert not os.path.exists(tmp_path / "n.tflite")


def test_target_sets_weight_storage_and_runtimes_where_not_given(tmp_path):
    qmodel = _trained("lsq", weight_bits=4, activation_bits=6)
    images, _ = _data(16, seed=5)
    litert = export.export_tflite(qmodel, str(tmp_path / "litert.tflite"), verify_with=images)
    assert (litert.target, list(litert.runtimes)) == ("litert", ["xnnpack"])
    assert litert.packing.startswith("not packed: int8")
    tflm = export.export_tflite(qmodel, str(tmp_path / "tflm.tflite"), verify_with=images,
                                target="tflm")
    kernels = len(tflm.layers)
    assert (tflm.target, list(tflm.runtimes)) == ("tflm", ["tflm"])
    assert tflm.packing == f"int4: {kernels} of {kernels} kernels packed, two values per byte"
    assert tflm.file_bytes < litert.file_bytes
    # What is given explicitly wins over the target's defaults.
    both = export.export_tflite(qmodel, str(tmp_path / "both.tflite"), verify_with=images,
                                target="tflm", weight_storage="int8",
                                runtimes=("xnnpack", "tflm"))
    assert both.packing.startswith("not packed") and list(both.runtimes) == ["xnnpack", "tflm"]
    assert both.file_bytes == litert.file_bytes
    with pytest.raises(ValueError, match="target must be one of \\('litert', 'tflm'\\), "
                                         "got 'edgetpu'"):
        export.export_tflite(qmodel, str(tmp_path / "n.tflite"), target="edgetpu")
    assert not os.path.exists(tmp_path / "n.tflite")


def test_relu6_cap_below_the_grid_top_is_exported_exactly(tmp_path):
    # 4-bit unsigned grid of step 0.75 reaches 15 x 0.75 = 11.25; ReLU6 caps at 6, i.e. at the
    # integer round(6 / 0.75) = 8. Keras: round(min(y, 6) / s); the file: its clamped grid.
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(3, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.ReLU(6.0, name="relu6")(x)
    model = keras.Model(inputs, keras.layers.Flatten(name="flat")(outputs))
    qmodel = tfadaqat.quantize_model(model, "lsq", weight_bits=8, activation_bits=4)
    images = np.random.default_rng(0).normal(0, 4, (32, 4, 4, 2)).astype(np.float32)
    qmodel.initialize_quantizers(images)
    steps = [v for v in qmodel.get_layer("quant_relu6").weights if v.name == "output_step:0"]
    assert len(steps) == 1
    steps[0].assign(0.75)
    keras_outputs = qmodel.predict(images, verbose=0)
    assert keras_outputs.max() == pytest.approx(6.0) and (keras_outputs > 0).mean() > 0.2
    report = export.export_tflite(qmodel, str(tmp_path / "relu6.tflite"), verify_with=images)
    assert "CONV_2D" in report.ops
    assert report.max_output_difference <= 1.0 + 1e-4
    interpreter = tflite_interpreter(open(tmp_path / "relu6.tflite", "rb").read())
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images[:1])
    interpreter.invoke()
    assert interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).max() <= 6.0


@pytest.mark.parametrize("method", ["adaqat", "dq", "lsq"])
def test_top1_agrees_on_digits(tmp_path, method):
    """Measured bounds of this export on the digits test split (450 images).

    Issue 4 targets top-1 >= 99.5% and <= 2 output steps. The int32 bias of a folded
    BatchNorm is rounded to the grid ``input step x weight step`` in the file, not in Keras,
    so a value within a few hundredths of a step of a rounding boundary moves by one step now
    and then; at the top of 6-bit logits that makes or breaks ties.
    """
    from models import small_cnn
    from recipes.data import load_digits
    train_x, test_x, train_y, test_y = load_digits()
    keras.utils.set_random_seed(0)
    model = small_cnn(num_classes=10)
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(train_x, train_y, batch_size=64, epochs=8, verbose=0)
    options = {"adaqat_rule": None} if method == "adaqat" else {}
    qmodel = tfadaqat.quantize_model(model, method, weight_bits=4, activation_bits=6, **options)
    qmodel.compile(keras.optimizers.Adam(1e-3),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(train_x, train_y, batch_size=64, epochs=2, verbose=0)
    report = export.export_tflite(qmodel, str(tmp_path / "digits.tflite"), verify_with=test_x)
    assert report.examples == len(test_x) == 450
    assert report.top1_agreement >= 0.995
    assert report.top1_strict_agreement >= 0.99
    assert report.max_output_difference <= 2.0 + 1e-4


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="not quantized with tfadaqat.quantize_model"):
        export.export_tflite(_export_model(), str(tmp_path / "float.tflite"))
    qmodel = _trained("lsq", weight_bits=4, activation_bits=4)
    missing = str(tmp_path / "no" / "such" / "folder" / "m.tflite")
    with pytest.raises(OSError, match="missing or not writable"):
        export.export_tflite(qmodel, missing)
    assert not os.path.exists(os.path.dirname(missing))
    with pytest.raises(ValueError, match="input_type must be tf.float32 or tf.int8"):
        export.export_tflite(qmodel, str(tmp_path / "m.tflite"), input_type=tf.int16)
    assert os.listdir(tmp_path) == []  # nothing partial left behind


def test_layer_without_integer_kernel_is_named(tmp_path):
    inputs = keras.Input((6,))
    hidden = layers.Dense(4, name="hidden")(inputs)
    outputs = layers.LeakyReLU(0.1, name="leaky")(hidden)
    with pytest.warns(UserWarning, match="leaky"):
        qmodel = tfadaqat.quantize_model(keras.Model(inputs, outputs), "lsq")
    qmodel.initialize_quantizers(np.ones((4, 6), np.float32))
    before = [w.copy() for w in qmodel.get_weights()]
    with pytest.raises(ValueError, match="'leaky' \\(LeakyReLU\\) cannot be exported "
                                         "with integer kernels.*allow_float_ops=True"):
        export.export_tflite(qmodel, str(tmp_path / "m.tflite"))
    assert os.listdir(tmp_path) == []
    for old, new in zip(before, qmodel.get_weights()):  # a failed export changes nothing
        np.testing.assert_array_equal(old, new)
    # The hybrid file runs it in float and says so.
    report = export.export_tflite(qmodel, str(tmp_path / "m.tflite"), allow_float_ops=True)
    assert "LEAKY_RELU" in report.float_ops and os.path.exists(tmp_path / "m.tflite")


def test_representative_dataset_forms(tmp_path):
    qmodel = _trained("lsq", weight_bits=4, activation_bits=4)
    images, labels = _data(8, seed=4)
    sizes = set()
    for index, data in enumerate([
            images,
            tf.data.Dataset.from_tensor_slices((images, labels)).batch(4),
            lambda: iter(images)]):
        report = export.export_tflite(qmodel, str(tmp_path / f"r{index}.tflite"),
                                      representative_dataset=data)
        sizes.add(report.file_bytes)
    assert len(sizes) == 1  # every range is learned: the calibration data changes nothing


def test_activations_above_8_bits_are_refused(tmp_path):
    qmodel = tfadaqat.quantize_model(_export_model(), "lsq", weight_bits=4, activation_bits=10)
    qmodel.initialize_quantizers(_data(4)[0])
    with pytest.raises(ValueError, match="10 bits; activations above 8 bits \\(int16\\)"):
        export.export_tflite(qmodel, str(tmp_path / "m.tflite"))
    assert os.listdir(tmp_path) == []


def test_paper_dorefa_grid_at_8_bits_is_refused_with_the_fix():
    qmodel = tfadaqat.quantize_model(_export_model(), "adaqat", adaqat_rule=None, grid="dorefa")
    with pytest.raises(ValueError, match="grid='symmetric'"):
        export.integer_function(qmodel)


@pytest.mark.parametrize("method", tfadaqat.METHODS)
def test_every_method_exports_with_its_defaults(method, tmp_path):
    """quantize_model(model, method) -> fit -> export works at the default 8 bits."""
    keras.utils.set_random_seed(0)
    images, labels = _data(32, seed=5)
    qmodel = tfadaqat.quantize_model(_export_model(), method)
    qmodel.compile(keras.optimizers.Adam(1e-3),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(images, labels, batch_size=16, epochs=1, verbose=0)
    assert {bits for roles in tfadaqat.bit_widths(qmodel).values()
            for bits in roles.values()} == {8}
    report = export.export_tflite(qmodel, str(tmp_path / "m.tflite"), verify_with=images)
    assert report.top1_agreement == 1.0 and report.max_output_difference <= 2.0 + 1e-3
    assert report.layers and all(2 <= row.distinct_values <= 255 for row in report.layers)


def test_command_line_exports_and_verifies(tmp_path, capsys):
    from models import small_cnn
    qmodel = tfadaqat.quantize_model(small_cnn(), "lsq", weight_bits=4, activation_bits=4)
    qmodel.initialize_quantizers(np.random.default_rng(0).uniform(0, 1, (8, 8, 8, 1)))
    model_path, out = str(tmp_path / "m.keras"), str(tmp_path / "m.tflite")
    qmodel.save(model_path)
    assert export.main(["--model", model_path, "--out", out, "--verify-digits"]) == 0
    printed = capsys.readouterr().out
    for stage in ("loading", "building the integer graph", "converting", "writing",
                  "verifying", "verified on 450 images"):
        assert stage in printed
    assert os.path.getsize(out) > 0
    packed = str(tmp_path / "m4.tflite")
    assert export.main(["--model", model_path, "--out", packed, "--weight-storage", "int4"]) == 0
    assert "int4: 5 of 5 kernels packed" in capsys.readouterr().out
    assert os.path.getsize(packed) < os.path.getsize(out)
    # --runtimes: a line per runtime; an unknown one is refused before anything is written.
    assert export.main(["--model", model_path, "--out", out, "--verify-digits",
                        "--runtimes", "builtin,tflm"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("verified on 450 images with ")]
    assert [line.split(" with ")[1].split(":")[0] for line in lines] == ["builtin", "tflm"]
    with pytest.raises(ValueError, match=r"unknown runtime\(s\) \['phone'\]"):
        export.main(["--model", model_path, "--out", str(tmp_path / "x.tflite"),
                     "--runtimes", "phone"])
    assert not os.path.exists(tmp_path / "x.tflite")


def test_output_agreement_golden_values():
    # Step 0.5. Example 0: both put class 1 on top. Example 1: the file ties classes 0 and 2
    # (within a quarter step), Keras puts 2 on top: agrees, but argmax picks 0 (strict miss).
    # Example 2: the file's top is 0, Keras's is 1: a miss.
    outputs = np.array([[0.0, 1.0, 0.5], [1.1, 0.0, 1.0], [2.0, 0.5, 0.0]])
    expected = np.array([[0.0, 1.5, 0.5], [0.5, 0.0, 1.0], [0.0, 1.0, 0.0]])
    agreement = export.output_agreement(outputs, expected, 0.5)
    # Differences in steps: [0, 1, 0], [1.2, 0, 0], [4, 1, 0].
    assert agreement == {"top1_agreement": 2 / 3, "top1_strict_agreement": 1 / 3,
                         "max_output_difference": 4.0, "within_one_step": 7 / 9,
                         "within_two_steps": 8 / 9, "differing": 4 / 9}


def test_a_two_output_model_is_refused_with_the_way_out_and_that_way_exports(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 2), name="image")
    x = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = layers.ReLU(name="relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    class_logits = layers.Dense(5, name="class_logits")(x)
    box = layers.Dense(4, name="box")(x)
    qmodel = tfadaqat.quantize_model(keras.Model(inputs, [class_logits, box]), "lsq")
    images, _ = _data(16)
    qmodel.initialize_quantizers(images)
    before = [w.copy() for w in qmodel.get_weights()]
    with pytest.raises(ValueError, match=r"1 input\(s\) and 2 output\(s\) \['class_logits', "
                                         r"'box'\].*keras.Model\(qmodel.inputs, "
                                         r"qmodel.outputs\[0\]\)"):
        export.export_tflite(qmodel, str(tmp_path / "two.tflite"))
    assert os.listdir(tmp_path) == []
    for old, new in zip(before, qmodel.get_weights()):
        np.testing.assert_array_equal(old, new)
    # The way out the message gives: one output at a time, the same trained layers.
    for index, name in enumerate(["class_logits", "box"]):
        single = keras.Model(qmodel.inputs, qmodel.outputs[index])
        report = export.export_tflite(single, str(tmp_path / f"{name}.tflite"),
                                      verify_with=images)
        assert report.examples == 16
        assert report.max_output_difference <= 1.0 + 1e-4


def test_packed_bytes_is_kernels_at_their_learned_bits_plus_int32_biases(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)   # 36 weights, 4 biases
    outputs = layers.Dense(3, name="logits")(layers.Flatten()(x))    # 432 weights, 3 biases
    qmodel = tfadaqat.quantize_model(keras.Model(inputs, outputs), "lsq",
                                     layer_bits={"conv": 3, "logits": 5})
    qmodel.initialize_quantizers(_data(8)[0][..., :1])
    report = export.export_tflite(qmodel, str(tmp_path / "m.tflite"))
    assert report.packed_bytes == (36 * 3 + 432 * 5) / 8 + (4 + 3) * 4
    assert report.float32_bytes == (36 + 4 + 432 + 3) * 4


def _filter_of(interpreter, op_name):
    """The int8 filter (input 1) of the first `op_name` op in the file."""
    for op in interpreter._get_ops_details():
        if op["op_name"] == op_name:
            return interpreter.get_tensor(op["inputs"][1])
    raise AssertionError(f"no {op_name} in the file")


def test_file_stores_the_learned_integers_times_floor_127_over_n(tmp_path):
    # LSQ's kernel integers are k = round(clip(w / s, -q, q)), q = 2^(b-1) - 1 (computed here
    # from the Keras weights); the file stores each as r k with r = floor(127 / n), n the
    # largest |k| the kernel reaches.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    outputs = layers.Dense(3, name="logits")(layers.Flatten()(x))
    qmodel = tfadaqat.quantize_model(keras.Model(inputs, outputs), "lsq",
                                     layer_bits={"conv": 3, "logits": 2})
    qmodel.initialize_quantizers(_data(8)[0][..., :1])
    path = str(tmp_path / "m.tflite")
    export.export_tflite(qmodel, path)
    interpreter = tflite_interpreter(open(path, "rb").read())
    for layer_name, op_name, q in (("conv", "CONV_2D", 3), ("logits", "FULLY_CONNECTED", 1)):
        wrapper = next(layer for layer in qmodel.layers
                       if getattr(layer, "layer", None) is not None
                       and layer.layer.name == layer_name)
        kernel = wrapper.layer.kernel.numpy()
        step = next(float(w.numpy()) for w in wrapper.weights
                    if w.name.split("/")[-1].startswith("kernel_step"))
        integers = np.clip(np.round(kernel / step), -q, q)
        n = int(np.abs(integers).max())
        if kernel.ndim == 4:  # Keras HWIO -> TFLite OHWI
            integers = np.transpose(integers, (3, 0, 1, 2))
        else:                 # Keras (in, out) -> TFLite (out, in)
            integers = integers.T
        stored = _filter_of(interpreter, op_name)
        np.testing.assert_array_equal(stored, (127 // n) * integers, err_msg=layer_name)


def _mostly_zero_depthwise():
    inputs = keras.Input((6, 6, 4))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(x)))


@pytest.mark.parametrize("limit", [True, False])
def test_an_output_step_below_1_256_of_the_sum_still_runs_on_xnnpack(limit, tmp_path,
                                                                    monkeypatch):
    # A depthwise output step far finer than its sum's unit (Xception's last separable
    # convolution after LSQ's initialisation: the file's multiplier was 692): XNNPACK refused
    # the file. With the multiplier set to 255 every output is the same and XNNPACK runs it.
    if not limit:
        monkeypatch.setattr(export_convert, "limit_output_multipliers",
                            lambda content: (content, []))
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).normal(size=(32, 6, 6, 4)).astype(np.float32)
    qmodel = tfadaqat.quantize_model(_mostly_zero_depthwise(), "lsq")
    qmodel.initialize_quantizers(images)
    variables = {(layer, role): v for layer, role, _, v, _ in tfadaqat.quantized_tensors(qmodel)}
    unit = (variables[("conv", "output")]["step"].numpy()
            * variables[("depthwise", "depthwise_kernel")]["step"].numpy())
    # The file stores the kernel's integers times up to 127 (integers.py's refinement): a
    # step 10^5 times finer than the learned unit is >= 787 times finer than the file's.
    variables[("depthwise", "output")]["step"].assign(unit / 1e5)
    path = str(tmp_path / "m.tflite")
    if not limit:
        with pytest.raises(RuntimeError, match="XNNPACK"):
            export.export_tflite(qmodel, path, verify_with=images)
        return
    report = export.export_tflite(qmodel, path, verify_with=images,
                                  runtimes=("xnnpack", "builtin"))
    for runtime in ("xnnpack", "builtin"):
        assert report.runtimes[runtime]["max_output_difference"] == 0.0, report.runtimes
    interpreter = tflite_interpreter(open(path, "rb").read())
    interpreter.allocate_tensors()
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    op = next(op for op in interpreter._get_ops_details() if op["op_name"] == "DEPTHWISE_CONV_2D")
    scale = lambda index: details[index]["quantization_parameters"]["scales"]
    multiplier = scale(op["inputs"][0])[0] * scale(op["inputs"][1]) / scale(op["outputs"][0])[0]
    np.testing.assert_allclose(multiplier, 255.0, rtol=1e-5)


def test_a_failed_export_leaves_every_weight_bit_identical(tmp_path, monkeypatch):
    """The export moves biases onto the int32 grid before converting; a failure after that
    (here in verification) puts every weight back."""
    qmodel = _trained("lsq", weight_bits=4, activation_bits=4)
    images, _ = _data(16)
    before = [w.copy() for w in qmodel.get_weights()]

    def fail(*args, **kwargs):
        moved = [not np.array_equal(old, new) for old, new in zip(before, qmodel.get_weights())]
        assert any(moved)  # the alignment did change the model before the failure
        raise RuntimeError("verification failed")

    monkeypatch.setattr(export_convert, "verify", fail)
    with pytest.raises(RuntimeError, match="verification failed"):
        export.export_tflite(qmodel, str(tmp_path / "m.tflite"), verify_with=images)
    for old, new in zip(before, qmodel.get_weights()):
        np.testing.assert_array_equal(old, new)
    assert os.listdir(tmp_path) == []
