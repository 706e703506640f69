"""tfadaqat.annotate: per-layer methods, bits and ranges, saved with the float model."""

import numpy as np
import pytest

import tfadaqat
from tfadaqat import quantizers
from tfadaqat._compat import keras, tfmot


def _annotated_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    x = tfadaqat.annotate(keras.layers.Conv2D(4, 3, name="stem"), method="lsq",
                          weight_bits=8, activation_bits=8)(inputs)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = tfadaqat.annotate(keras.layers.SeparableConv2D(6, 3, name="separable"),
                          weight_bits=4, activation_bits=6, max_bits=6)(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = tfadaqat.annotate(keras.layers.Dense(5, name="hidden"), skip=True)(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs)


def _quantizers(qmodel):
    return {(layer, role): quantizer for layer, role, quantizer, _, _ in
            tfadaqat.quantized_tensors(qmodel)}


def test_annotated_layers_take_their_settings_and_the_rest_the_call():
    qmodel = tfadaqat.quantize_model(_annotated_model(), "adaqat", weight_bits=5,
                                     activation_bits=5, grid="dorefa")
    found = _quantizers(qmodel)
    assert found[("stem", "kernel")] == quantizers.LSQQuantizer(8, signed=True, kind="weight")
    assert found[("stem_relu", "output")] == quantizers.LSQQuantizer(8, signed=False,
                                                                     kind="activation")
    # The separable convolution's two pieces both carry its annotation; the call's options
    # apply (same method), its own bits and range.
    for layer in ("separable_depthwise", "separable"):
        kernel = found[(layer, "depthwise_kernel" if layer.endswith("depthwise") else "kernel")]
        assert kernel == quantizers.DoReFaWeightQuantizer(4, min_bits=2, max_bits=6,
                                                          grid="dorefa")
    assert found[("separable", "output")] == quantizers.PACTActivationQuantizer(
        6, min_bits=2, max_bits=6, signed=True)
    assert not any(layer == "hidden" for layer, _ in found)  # skipped: float
    assert found[("logits", "kernel")] == quantizers.DoReFaWeightQuantizer(5, grid="dorefa")
    assert [method.name for method in tfadaqat.methods.in_model(qmodel)] == ["adaqat", "lsq"]
    assert qmodel.adaqat_rule == tfadaqat.AdaQATRule()
    bits = tfadaqat.bit_widths(qmodel)
    # The stem's output is its fused ReLU's: the annotation sets that one.
    assert bits["stem"] == {"kernel": 8} and bits["stem_relu"] == {"output": 8}
    assert bits["separable"]["kernel"] == 4 and bits["separable"]["output"] == 6


def test_a_mixed_model_trains_and_its_float_version_round_trips(tmp_path):
    model = _annotated_model()
    path = str(tmp_path / "annotated.keras")
    model.save(path)
    with tfadaqat.quantize_scope():
        loaded = keras.models.load_model(path)
    inputs = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(inputs, verbose=0),
                                  model.predict(inputs, verbose=0))
    first = _quantizers(tfadaqat.quantize_model(model, "dq"))
    again = _quantizers(tfadaqat.quantize_model(loaded, "dq"))
    assert first == again
    assert first[("stem", "kernel")] == quantizers.LSQQuantizer(8, signed=True, kind="weight")
    assert isinstance(first[("logits", "kernel")], quantizers.DQQuantizer)
    qmodel = tfadaqat.quantize_model(model, "dq")
    qmodel.compile(keras.optimizers.Adam(1e-3),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = qmodel.fit(inputs, np.arange(16) % 3, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    # The skipped Dense stays float: exported as a hybrid file that says so, and agreeing.
    report = tfadaqat.export_tflite(qmodel, str(tmp_path / "mixed.tflite"), verify_with=inputs,
                                    allow_float_ops=True)
    assert "FULLY_CONNECTED" in report.float_ops
    assert report.top1_agreement == 1.0


@pytest.mark.parametrize("arguments, message", [
    ({"method": "hawq"}, r"method must be one of \('adaqat', 'dq', 'lsq'\), got 'hawq'"),
    ({"weight_bits": 1}, r"weight_bits must be an integer in 2..16, got 1"),
    ({"min_bits": 6, "max_bits": 4}, r"min_bits \(6\) must be <= max_bits \(4\)"),
    ({"method": "lsq", "grid": "dorefa"}, r"method 'lsq' does not take option\(s\) \['grid'\]"),
    ({"learn_bits": 1}, "learn_bits must be True or False, got 1"),
])
def test_bad_annotations_name_the_argument(arguments, message):
    with pytest.raises(ValueError, match=message):
        tfadaqat.annotate(keras.layers.Dense(2), **arguments)


def test_annotation_errors_at_quantize_time_name_the_layer():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)),
                              tfadaqat.annotate(keras.layers.Dense(3, name="wide"),
                                                weight_bits=8, max_bits=6)])
    with pytest.raises(ValueError, match=r"annotation of layer 'wide': weight_bits must lie in "
                                         r"min_bits..max_bits = 2..6 for method 'adaqat'"):
        tfadaqat.quantize_model(model, "adaqat")
    # LSQ has fixed bits: the range does not apply.
    assert tfadaqat.bit_widths(tfadaqat.quantize_model(model, "lsq"))["wide"]["kernel"] == 8
    model = keras.Sequential([keras.Input((4,)),
                              tfadaqat.annotate(keras.layers.Dense(3, name="gridded"),
                                                grid="dorefa")])
    with pytest.raises(ValueError, match=r"annotation of layer 'gridded': method 'dq' does not "
                                         r"take option\(s\) \['grid'\]"):
        tfadaqat.quantize_model(model, "dq")
    with pytest.raises(ValueError, match="annotated already"):
        tfadaqat.annotate(model.layers[0])
    with pytest.raises(ValueError, match="has both an annotation and layer_bits"):
        tfadaqat.quantize_model(model, "adaqat", layer_bits={"gridded": 4})


def test_tfmot_annotations_are_refused_with_what_to_use():
    config = tfadaqat.LayerQuantizeConfig(("kernel",), quantizers.LSQQuantizer(4))
    wrapped = keras.Sequential([
        keras.Input((4,)),
        tfmot.quantization.keras.quantize_annotate_layer(keras.layers.Dense(3, name="dense"),
                                                         quantize_config=config)])
    with pytest.raises(ValueError, match="layer 'dense' is annotated with "
                                         "LayerQuantizeConfig .*tfadaqat.annotate"):
        tfadaqat.quantize_model(wrapped, "lsq")


def test_a_budget_needs_one_learning_method():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((4,)),
        tfadaqat.annotate(keras.layers.Dense(8, activation="relu", name="dq_layer"),
                          method="dq"),
        keras.layers.Dense(3, name="adaqat_layer")])
    with pytest.raises(ValueError, match=r"learn bit-widths with \['adaqat', 'dq'\]"):
        tfadaqat.quantize_model(model, "adaqat", budget=tfadaqat.Budget.relative(bitops=0.5))
    fixed = keras.Sequential([
        keras.Input((4,)),
        tfadaqat.annotate(keras.layers.Dense(8, activation="relu", name="fixed"),
                          method="lsq"),
        keras.layers.Dense(3, name="learned")])
    qmodel = tfadaqat.quantize_model(fixed, "dq", budget=tfadaqat.Budget.relative(bitops=0.5))
    assert qmodel.budget is not None and qmodel.dq_pressure is not None


def test_a_model_mixing_lsq_and_adaqat_exports_to_integer_kernels(tmp_path):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        tfadaqat.annotate(keras.layers.Conv2D(4, 3, activation="relu", name="stem"),
                          method="lsq", weight_bits=8, activation_bits=8),
        keras.layers.Flatten(),
        tfadaqat.annotate(keras.layers.Dense(6, activation="relu", name="hidden"),
                          weight_bits=4, activation_bits=4),
        keras.layers.Dense(3, name="logits")])
    qmodel = tfadaqat.quantize_model(model, "adaqat", adaqat_rule=None)
    inputs = np.random.default_rng(2).normal(size=(32, 8, 8, 1)).astype("float32")
    qmodel.compile(keras.optimizers.Adam(1e-3),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(inputs, np.arange(32) % 3, batch_size=16, epochs=1, verbose=0)
    report = tfadaqat.export_tflite(qmodel, str(tmp_path / "mixed.tflite"), verify_with=inputs)
    assert not report.float_ops
    assert {row.layer: row.bits for row in report.layers} == {"stem": 8, "hidden": 4,
                                                             "logits": 8}
    assert report.top1_agreement == 1.0 and report.max_output_difference <= 1.0
