"""Every layer kind: quantized, trained one step, exported to integer TFLite, and the file
agrees with the Keras model (tfadaqat.layer_kinds read by quantize, cost and export)."""

import numpy as np
import pytest

import tfadaqat
from tfadaqat import export
from tfadaqat.export import convert as export_convert
from tfadaqat.export import graph as export_graph
from tfadaqat.export import plan as export_plan
from tfadaqat._compat import keras

layers = keras.layers


def _conv_block(x, filters=4, name="conv"):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def softmax_head():
    inputs = keras.Input((8, 8, 3))
    x = layers.GlobalAveragePooling2D()(_conv_block(inputs))
    return keras.Model(inputs, layers.Dense(5, activation="softmax", name="head")(x))


def sigmoid_and_tanh():
    inputs = keras.Input((8, 8, 3))
    x = _conv_block(inputs)
    a = layers.Conv2D(4, 1, activation="sigmoid", name="gate")(x)
    b = layers.Activation("tanh", name="squash")(layers.Conv2D(4, 1, name="value")(x))
    x = layers.GlobalAveragePooling2D()(layers.Multiply(name="gated")([a, b]))
    return keras.Model(inputs, layers.Dense(5, name="logits")(x))


def squeeze_excite_swish():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="swish", name="stem")(inputs)
    s = layers.GlobalAveragePooling2D(keepdims=True)(x)
    s = layers.Conv2D(2, 1, activation="relu", name="reduce")(s)
    s = layers.Conv2D(8, 1, activation="sigmoid", name="expand")(s)
    x = layers.Multiply(name="excite")([x, s])
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(5, name="logits")(x))


def hard_swish_operators():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    gate = layers.ReLU(6.0, name="gate_relu6")(x + 3.0) * (1.0 / 6.0)
    x = layers.Multiply(name="hard_swish")([x, gate])
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(5, name="logits")(x))


def rescaling_and_normalization():
    inputs = keras.Input((8, 8, 3))
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = layers.Normalization(mean=[0.4, 0.5, 0.6], variance=[0.05, 0.06, 0.07],
                             name="normalize")(x)
    x = layers.GlobalAveragePooling2D()(_conv_block(x))
    return keras.Model(inputs, layers.Dense(5, name="logits")(x))


def preactivation_batch_norm():
    """BatchNormalization after an Add and after a Concatenate (ResNetV2, DenseNet)."""
    inputs = keras.Input((8, 8, 3))
    x = _conv_block(inputs, name="a")
    y = layers.Conv2D(4, 3, padding="same", name="b")(x)
    x = layers.Add(name="add")([x, y])
    x = layers.ReLU(name="pre_relu")(layers.BatchNormalization(name="pre_bn")(x))
    x = layers.Concatenate(name="cat")([x, layers.Conv2D(4, 1, name="c")(x)])
    x = layers.BatchNormalization(name="cat_bn")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(5, name="logits")(x))


def separable():
    inputs = keras.Input((8, 8, 3))
    x = layers.SeparableConv2D(8, 3, padding="same", use_bias=False, name="sep")(inputs)
    x = layers.ReLU(name="sep_relu")(layers.BatchNormalization(name="sep_bn")(x))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(5, name="logits")(x))


def dense_batch_norm():
    inputs = keras.Input((12,))
    x = layers.Dense(8, name="dense")(inputs)
    x = layers.ReLU(name="relu")(layers.BatchNormalization(name="bn")(x))
    return keras.Model(inputs, layers.Dense(12, name="reconstruction")(x))


def transpose_and_resizing():
    inputs = keras.Input((8, 8, 3))
    x = _conv_block(inputs)
    x = layers.MaxPooling2D()(x)
    up = layers.Conv2DTranspose(4, 2, strides=2, name="up")(x)
    nearest = layers.UpSampling2D(interpolation="nearest", name="nearest")(x)
    bilinear = layers.UpSampling2D(interpolation="bilinear", name="bilinear")(x)
    x = layers.Concatenate(name="cat")([up, nearest, bilinear])
    x = layers.Cropping2D(1, name="crop")(layers.ZeroPadding2D(1, name="pad")(x))
    return keras.Model(inputs, layers.Conv2D(3, 1, name="classes")(x))


def gelu_on_feature_map_dense():
    inputs = keras.Input((4, 4, 6))
    x = layers.Dense(8, name="expand")(inputs)           # a Dense on a feature map
    x = layers.Activation("gelu", name="gelu")(x)
    x = layers.Dense(6, name="project")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(5, name="logits")(x))


def layer_scale_residual():
    """ConvNeXt's LayerScale (a trained per-channel multiplier, no offset) on a residual."""
    from tf_keras.src.applications.convnext import LayerScale
    inputs = keras.Input((8, 8, 3))
    x = _conv_block(inputs)
    scaled = LayerScale(0.5, 4, name="layer_scale")(layers.Conv2D(4, 1, name="branch")(x))
    x = layers.GlobalAveragePooling2D()(layers.Add(name="residual")([x, scaled]))
    return keras.Model(inputs, layers.Dense(5, name="logits")(x))


def conv1d_sequence():
    inputs = keras.Input((16, 4))
    x = layers.Conv1D(6, 3, padding="same", use_bias=False, name="conv1d")(inputs)
    x = layers.ReLU(name="relu")(layers.BatchNormalization(name="bn")(x))
    x = layers.Conv1D(6, 3, strides=2, activation="relu", name="strided")(x)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(5, name="logits")(x))


def pass_through_layers():
    """Layers that keep their input's grid: Dropout, Identity, Reshape, GlobalMaxPooling2D."""
    inputs = keras.Input((8, 8, 3))
    x = layers.Dropout(0.25, name="dropout")(_conv_block(inputs))
    x = layers.Identity(name="identity")(x)
    x = layers.Reshape((4, 16, 4), name="reshape")(x)
    x = layers.GlobalMaxPooling2D(name="max")(x)
    return keras.Model(inputs, layers.Dense(5, name="logits")(x))


MODELS = {model.__name__: model for model in (
    conv1d_sequence, layer_scale_residual, pass_through_layers,
    softmax_head, sigmoid_and_tanh, squeeze_excite_swish, hard_swish_operators,
    rescaling_and_normalization, preactivation_batch_norm, separable, dense_batch_norm,
    transpose_and_resizing, gelu_on_feature_map_dense)}
REGRESSION = ("dense_batch_norm", "transpose_and_resizing")
CLASSIFIERS = tuple(name for name in MODELS if name not in REGRESSION)
EXPECTED_OPS = {
    "conv1d_sequence": {"CONV_2D"}, "layer_scale_residual": {"DEPTHWISE_CONV_2D", "ADD"},
    "softmax_head": {"SOFTMAX"}, "sigmoid_and_tanh": {"LOGISTIC", "TANH", "MUL"},
    "squeeze_excite_swish": {"LOGISTIC", "MUL"}, "hard_swish_operators": {"MUL"},
    "rescaling_and_normalization": {"DEPTHWISE_CONV_2D"},
    "preactivation_batch_norm": {"DEPTHWISE_CONV_2D", "CONCATENATION"},
    "separable": {"DEPTHWISE_CONV_2D", "CONV_2D"}, "dense_batch_norm": {"CONV_2D"},
    "transpose_and_resizing": {"TRANSPOSE_CONV", "RESIZE_NEAREST_NEIGHBOR",
                               "RESIZE_BILINEAR", "STRIDED_SLICE"},
    "gelu_on_feature_map_dense": {"GELU"},
    "pass_through_layers": {"RESHAPE", "REDUCE_MAX"},
}


def _inputs(model, count=32):
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    high = 255.0 if "rescal" in model.layers[1].name else 1.0
    return np.random.default_rng(1).uniform(0.0, high, (count,) + shape).astype(np.float32)


@pytest.mark.parametrize("builder", list(MODELS), ids=str)
@pytest.mark.parametrize("method", ["lsq", "adaqat"])
def test_layer_kind_exports_and_agrees(builder, method, tmp_path):
    keras.utils.set_random_seed(0)
    model = MODELS[builder]()
    x = _inputs(model)
    qmodel = tfadaqat.quantize_model(model, method, weight_bits=6, activation_bits=6,
                                     min_bits=2, max_bits=8, adaqat_rule=None)
    float_model = tfadaqat.flatten_model(model)
    target = float_model.predict(x, verbose=0)
    qmodel.compile(keras.optimizers.Adam(1e-3), "mse")
    qmodel.fit(x, target, batch_size=16, epochs=1, verbose=0)
    report = export.export_tflite(qmodel, str(tmp_path / "m.tflite"), verify_with=x)
    assert not report.float_ops
    assert EXPECTED_OPS[builder] <= set(report.ops), report.ops
    assert report.within_two_steps >= 0.99, report
    if builder in CLASSIFIERS:
        assert report.top1_agreement >= 0.95, report


def test_softmax_output_lies_on_tflite_grid():
    qmodel = tfadaqat.quantize_model(softmax_head(), "dq")
    roles = tfadaqat.bit_widths(qmodel)["head_softmax"]
    quantizer = next(t.quantizer for t in tfadaqat.quantized_tensors(qmodel)
                     if t.layer == "head_softmax")
    assert roles == {"output": 8}
    assert quantizer.integer_grid(None, {}) == (1.0 / 256, 0, 255)
    assert tfadaqat.bit_widths(qmodel)["head"] == {"kernel": 8, "output": 8}  # logits quantized


def test_kinds_table_drives_cost():
    """A transposed convolution's MACs are input positions x kernel elements."""
    inputs = keras.Input((4, 4, 3))
    outputs = layers.Conv2DTranspose(5, 3, strides=2, padding="same", name="up")(inputs)
    qmodel = tfadaqat.quantize_model(keras.Model(inputs, outputs), "lsq", weight_bits=4,
                                     activation_bits=4)
    row = next(layer for layer in tfadaqat.cost(qmodel).layers if layer.name == "up")
    assert row.macs == 4 * 4 * (3 * 3 * 5 * 3)
    assert row.bitops == row.macs * 4 * 4


def test_layer_normalization_over_other_axes_exports_with_a_representative_dataset(tmp_path):
    """Over the last axis it becomes an Int8LayerNormalization (tests/test_layer_normalization);
    over others it stays Keras' own, whose statistics the converter calibrates."""
    inputs = keras.Input((4, 4, 6))
    x = layers.Dense(8, name="expand")(inputs)
    x = layers.LayerNormalization(axis=[1, 2, 3], name="norm")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(5, name="logits")(x))
    qmodel = tfadaqat.quantize_model(model, "lsq")
    assert type(qmodel.get_layer("quant_norm").layer) is layers.LayerNormalization
    assert tfadaqat.bit_widths(qmodel)["norm"] == {"output": 8}
    x = _inputs(model)
    qmodel.initialize_quantizers(x)
    with pytest.raises(ValueError, match="'norm'.*representative_dataset"):
        export.export_tflite(qmodel, str(tmp_path / "m.tflite"))
    report = export.export_tflite(qmodel, str(tmp_path / "m.tflite"), verify_with=x,
                                  representative_dataset=x)
    assert not report.float_ops and "RSQRT" in report.ops
    assert report.top1_agreement >= 0.9, report


class Scale(layers.Layer):
    def call(self, inputs):
        return inputs * 2.0


class Crop(layers.Layer):
    def call(self, inputs):
        return inputs[:, 1:5, 1:5, :]


def test_unregistered_custom_layer_is_refused_with_what_to_do():
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(3, 3, name="conv")(inputs)
    model = keras.Model(inputs, Scale(name="my_scale")(x))
    with pytest.raises(ValueError, match="'my_scale' is of the custom class Scale.*"
                                         "skip=\\['my_scale'\\].*register_layer_kind"):
        tfadaqat.quantize_model(model, "lsq")


def test_registered_custom_layer_keeps_its_input_grid_and_exports(tmp_path):
    tfadaqat.register_layer_kind(Crop, "same_grid")
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(3, 3, padding="same", name="conv")(inputs)
    x = Crop(name="my_crop")(x)
    model = keras.Model(inputs, layers.Conv2D(2, 1, name="out")(x))
    qmodel = tfadaqat.quantize_model(model, "lsq")
    assert "my_crop" not in tfadaqat.bit_widths(qmodel)
    x = _inputs(model, 8)
    with pytest.raises(ValueError, match="never initialised.*initialize_quantizers"):
        export.export_tflite(qmodel, str(tmp_path / "m.tflite"))
    qmodel.initialize_quantizers(x)
    report = export.export_tflite(qmodel, str(tmp_path / "m.tflite"), verify_with=x)
    assert not report.float_ops and report.within_two_steps == 1.0
    with pytest.raises(ValueError, match="kind must be one of"):
        tfadaqat.register_layer_kind(Scale, "conv")


def _concatenation_of_two_grids():
    inputs = keras.Input((8, 8, 3))
    unsigned = layers.Conv2D(8, 3, padding="same", activation="relu", name="unsigned")(inputs)
    signed = layers.Conv2D(8, 3, padding="same", name="signed")(inputs)
    return keras.Model(inputs, layers.Concatenate(name="cat")([unsigned, signed]))


@pytest.mark.parametrize("requantize_by_convolution", [True, False])
def test_concatenation_inputs_requantized_exactly(requantize_by_convolution, tmp_path,
                                                  monkeypatch):
    # Each input of a quantized Concatenate moves onto the output's step in the file. As a
    # plain requantization XNNPACK rounds with an 8-bit multiplier and puts some values one
    # step off Keras; through a 1x1 depthwise convolution of weight 1 the file is exact.
    if not requantize_by_convolution:
        monkeypatch.setattr(export_graph, "_identity_conv", lambda x: x)
    keras.utils.set_random_seed(0)
    model = _concatenation_of_two_grids()
    x = np.random.default_rng(1).uniform(0.0, 1.0, (64, 8, 8, 3)).astype(np.float32)
    qmodel = tfadaqat.quantize_model(model, "lsq")
    qmodel.compile(keras.optimizers.Adam(1e-3), "mse")
    qmodel.fit(x, model.predict(x, verbose=0), batch_size=32, epochs=1, verbose=0)
    grids = [tfadaqat.bit_widths(qmodel)[name]["output"] for name in ("unsigned", "signed")]
    assert grids == [8, 8]
    report = export.export_tflite(qmodel, str(tmp_path / "m.tflite"), verify_with=x)
    if requantize_by_convolution:
        assert "DEPTHWISE_CONV_2D" in report.ops
        assert report.max_output_difference == 0.0, report
    else:
        assert report.max_output_difference >= 1.0, report


def _signed_means():
    inputs = keras.Input((4, 4, 3))
    x = layers.Conv2D(16, 3, padding="same", name="signed")(inputs)
    x = layers.Reshape((1, 1, 16))(layers.GlobalAveragePooling2D(name="mean")(x))
    return keras.Model(inputs, layers.Conv2D(8, 1, name="excite")(x))


def test_signed_average_pool_rounds_once(tmp_path):
    # A MEAN of signed values (grid bottom by a MAXIMUM) before a Reshape, as in the
    # squeeze-excite blocks of keras.applications: the file must round the mean onto the
    # output step once (a MEAN on the input's step followed by a QUANTIZE put 24-30% of
    # EfficientNetV2B0's squeeze-excite means one step off, and this model's outputs 3 off).
    keras.utils.set_random_seed(0)
    model = _signed_means()
    x = np.random.default_rng(1).normal(0.0, 1.0, (64, 4, 4, 3)).astype(np.float32)
    qmodel = tfadaqat.quantize_model(model, "lsq")
    qmodel.compile(keras.optimizers.Adam(1e-3), "mse")
    qmodel.fit(x, model.predict(x, verbose=0) * 0.5, batch_size=32, epochs=1, verbose=0)
    plan = export_plan.make_plan(qmodel)
    output_grid, input_grid = plan.output_grids["quant_mean"], plan.output_grids["quant_signed"]
    assert output_grid[1] < 0 and not np.isclose(output_grid[0], input_grid[0])
    report = export.export_tflite(qmodel, str(tmp_path / "m.tflite"), verify_with=x)
    assert report.max_output_difference == 0.0, report


def _average_pool(padding, pool, stride):
    inputs = keras.Input((7, 7, 3))
    x = layers.ReLU(name="relu")(layers.BatchNormalization(name="bn")(
        layers.Conv2D(8, 3, padding="same", name="conv")(inputs)))
    x = layers.AveragePooling2D(pool, stride, padding=padding, name="pool")(x)
    x = layers.Conv2D(6, 1, name="after")(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(layers.Flatten()(x)))


@pytest.mark.parametrize("padding, pool, stride", [("valid", 2, 2), ("same", 3, 1),
                                                   ("same", 3, 2), ("same", 2, 2)])
@pytest.mark.parametrize("method", ["lsq", "adaqat"])
def test_average_pool_rounds_once(padding, pool, stride, method, tmp_path):
    # TFLite's int8 AVERAGE_POOL_2D keeps its input's scale and a QUANTIZE rounds again onto
    # the pool's own grid: 28-75% of this model's outputs were one to six steps off Keras.
    # As depthwise convolutions (one per kind of window the "same" padding cuts) the file
    # rounds once, as Keras does: at most a float32 rounding tie apart on XNNPACK.
    keras.utils.set_random_seed(0)
    model = _average_pool(padding, pool, stride)
    x = np.random.default_rng(0).normal(size=(128, 7, 7, 3)).astype(np.float32)
    qmodel = tfadaqat.quantize_model(model, method, adaqat_rule=None)
    qmodel.compile(keras.optimizers.Adam(1e-3),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(x, np.arange(128) % 10, batch_size=32, epochs=2, verbose=0)
    plan = export_plan.make_plan(qmodel)
    assert not np.isclose(plan.output_grids["quant_pool"][0], plan.output_grids["quant_relu"][0])
    report = export.export_tflite(qmodel, str(tmp_path / "m.tflite"), verify_with=x)
    assert "AVERAGE_POOL_2D" not in report.ops and "DEPTHWISE_CONV_2D" in report.ops
    assert report.max_output_difference <= 1.0 + 1e-5, report
    assert report.runtimes["xnnpack"]["differing"] <= 0.005, report.runtimes


def _rescaling_and_adapted_normalization():
    inputs = keras.Input((8, 8, 3))
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    normalization = layers.Normalization(name="normalize")
    normalization.adapt(np.random.default_rng(2).uniform(0.2, 0.9, (16, 8, 8, 3)))
    x = layers.GlobalAveragePooling2D()(_conv_block(normalization(x)))
    return keras.Model(inputs, layers.Dense(5, name="logits")(x))


@pytest.mark.parametrize("builder", [rescaling_and_normalization,
                                     _rescaling_and_adapted_normalization],
                         ids=lambda builder: builder.__name__)
def test_alignment_puts_rescaling_and_normalization_offsets_on_the_bias_grid(builder, tmp_path):
    # Exported alone, Rescaling and Normalization are 1x1 depthwise convolutions of weight
    # 127 and scale |m| / 127 whose int32 bias is the offset in units of input step x scale.
    # A Normalization given its mean keeps it in a constant, an adapted one in a variable.
    keras.utils.set_random_seed(0)
    model = builder()
    x = _inputs(model, 64)
    qmodel = tfadaqat.quantize_model(model, "lsq")
    qmodel.compile(keras.optimizers.Adam(1e-3), "mse")
    qmodel.fit(x, model.predict(x, verbose=0), batch_size=32, epochs=1, verbose=0)
    wrappers = [next(layer for layer in qmodel.layers if layer.name.endswith(name))
                for name in ("rescale", "normalize")]
    before = [export.channel_affine_parameters(wrapper.layer)[1] for wrapper in wrappers]
    tfadaqat.align_biases(qmodel)
    plan = export_plan.make_plan(qmodel)
    for wrapper, offset_before in zip(wrappers, before):  # Rescaling's offset 0 is on it
        multiplier, offset = export.channel_affine_parameters(wrapper.layer)
        multiplier = np.broadcast_to(np.asarray(multiplier, np.float64), (3,))
        unit = (export_plan.input_scale(plan, wrapper.name)
                * np.abs(multiplier).astype(np.float32) / 127.0)
        units = np.broadcast_to(offset, (3,)) / unit
        np.testing.assert_allclose(units, np.round(units), atol=1e-3)
        # Each offset moved by at most half a bias unit.
        shift = np.abs(np.broadcast_to(offset, (3,)) - np.broadcast_to(offset_before, (3,)))
        assert np.all(shift <= unit * (0.5 + 1e-3)), (shift, unit)
        assert np.any(shift > 0) or wrapper.name.endswith("rescale"), (shift, unit)
    report = export.export_tflite(qmodel, str(tmp_path / "m.tflite"), verify_with=x)
    assert report.max_output_difference == 0.0, report


def test_failed_export_restores_rescaling_and_normalization_constants(tmp_path, monkeypatch):
    keras.utils.set_random_seed(0)
    model = rescaling_and_normalization()
    x = _inputs(model, 32)
    qmodel = tfadaqat.quantize_model(model, "lsq")
    qmodel.compile(keras.optimizers.Adam(1e-3), "mse")
    qmodel.fit(x, model.predict(x, verbose=0), batch_size=32, epochs=1, verbose=0)
    rescale = next(layer for layer in qmodel.layers if layer.name.endswith("rescale")).layer
    normalize = next(layer for layer in qmodel.layers if layer.name.endswith("normalize")).layer
    saved_offset, saved_mean = rescale.offset, np.array(normalize.mean)
    before = qmodel.predict(x, verbose=0)

    def fail(*args, **kwargs):
        assert rescale.offset != saved_offset or not np.array_equal(normalize.mean, saved_mean)
        raise RuntimeError("verification failed")

    monkeypatch.setattr(export_convert, "verify", fail)
    with pytest.raises(RuntimeError, match="verification failed"):
        export.export_tflite(qmodel, str(tmp_path / "m.tflite"), verify_with=x)
    assert rescale.offset == saved_offset
    np.testing.assert_array_equal(np.array(normalize.mean), saved_mean)
    np.testing.assert_array_equal(qmodel.predict(x, verbose=0), before)
    assert not (tmp_path / "m.tflite").exists()


def test_two_relus_on_one_tensor_stay_integer(tmp_path):
    # NASNetMobile's cells apply separate ReLU layers to one tensor, each with its own grid:
    # the converter merged the two RELU ops into one with two output scales and left it in
    # float (every NASNetMobile file had float RELU ops at e041bf8).
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = layers.BatchNormalization(name="bn0")(layers.Conv2D(8, 3, padding="same",
                                                            name="conv0")(inputs))
    a = layers.Conv2D(8, 1, name="conv_a")(layers.Activation("relu", name="relu_a")(x))
    b = layers.Conv2D(8, 1, name="conv_b")(layers.ReLU(name="relu_b")(x))
    model = keras.Model(inputs, layers.Dense(4)(layers.Flatten()(layers.Add()([a, b]))))
    images = np.random.default_rng(0).normal(size=(64, 8, 8, 3)).astype(np.float32)
    qmodel = tfadaqat.quantize_model(model, "lsq")
    qmodel.compile(keras.optimizers.Adam(1e-2), "mse")
    qmodel.fit(images, model.predict(images, verbose=0), epochs=2, batch_size=16, verbose=0)
    plan = export_plan.make_plan(qmodel)
    assert not np.isclose(plan.output_grids["quant_relu_a"][0], plan.output_grids["quant_relu_b"][0])
    report = export.export_tflite(qmodel, str(tmp_path / "m.tflite"), verify_with=images)
    assert not report.float_ops and report.ops.count("RELU") <= 2
    assert report.max_output_difference <= 1.0 + 1e-5, report
