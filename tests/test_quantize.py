"""tfadaqat.quantize: graph planning, every layer type, save/load, training, bad input."""

import warnings

import numpy as np
import pytest

import tfadaqat
from tests.conftest import LAYER_CASES, case_inputs, layer_case_model, mlp, small_resnet
from tfadaqat._compat import keras, tf
from tfadaqat import ops

METHODS = ("adaqat", "dq", "lsq")


def _quantize(model, method, bits=8, **kwargs):
    max_bits = max(bits, 8)
    if method == "lsq":
        return tfadaqat.quantize_model(model, method, weight_bits=bits, activation_bits=bits,
                                       **kwargs)
    return tfadaqat.quantize_model(model, method, weight_bits=bits, activation_bits=bits,
                                   max_bits=max_bits, **kwargs)


# ---- which tensors get quantized ---------------------------------------------------------------

def test_small_resnet_plan():
    qmodel = _quantize(small_resnet(), "lsq", bits=4)
    assert tfadaqat.bit_widths(qmodel) == {
        "image_quantize_point": {"output": 4},
        "stem_conv": {"kernel": 4},          # fused with stem_bn -> stem_relu
        "stem_relu": {"output": 4},
        "block_conv": {"kernel": 4},
        "block_bn": {"output": 4},           # feeds Add: quantized
        "block_out": {"output": 4},          # Add -> ReLU fused, quantized after the ReLU
        "depthwise": {"depthwise_kernel": 4, "output": 4},
        "pool": {"output": 4},
        "logits": {"kernel": 4, "output": 4},
    }
    signed = {name: quantizer.signed
              for name, role, quantizer, _, _ in tfadaqat.quantized_tensors(qmodel)
              if role == "output"}
    assert signed == {"image_quantize_point": True, "stem_relu": False, "block_bn": True,
                      "block_out": False, "depthwise": False, "pool": False, "logits": True}
    assert isinstance(qmodel, tfadaqat.QuantizedModel)


def test_sequential_mlp():
    qmodel = _quantize(mlp(), "adaqat", bits=6)
    bits = tfadaqat.bit_widths(qmodel)
    input_points = [name for name in bits if name.endswith("_quantize_point")]
    assert len(input_points) == 1
    assert bits == {input_points[0]: {"output": 6}, "hidden": {"kernel": 6, "output": 6},
                    "out": {"kernel": 6, "output": 6}}  # Dropout is shape-only: no quantizer


def test_nested_models_are_flattened():
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="relu",
                                                                    name="inner_dense")],
                             name="inner")
    inputs = keras.Input((6,))
    outputs = keras.layers.Dense(2, name="head")(inner(inputs))
    model = keras.Model(inputs, outputs)
    qmodel = _quantize(model, "dq", bits=5)
    bits = tfadaqat.bit_widths(qmodel)
    assert bits["inner_dense"] == {"kernel": 5, "output": 5}
    assert bits["head"] == {"kernel": 5, "output": 5}
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    assert qmodel.predict(x, verbose=0).shape == (4, 2)


def test_unsupported_layer_stays_float_with_one_warning():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(4, name="first")(inputs)
    x = keras.layers.LeakyReLU(0.1, name="leaky")(x)
    x = keras.layers.Activation("elu", name="squash")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="last")(x))
    with pytest.warns(UserWarning, match=r"leaky \(LeakyReLU\), squash \(Activation\)") as record:
        qmodel = _quantize(model, "lsq")
    assert len([w for w in record if "leaves these layers in float" in str(w.message)]) == 1
    assert "leaky" not in tfadaqat.bit_widths(qmodel) and "squash" not in tfadaqat.bit_widths(qmodel)


def test_skip_keeps_a_layer_float_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qmodel = _quantize(small_resnet(), "lsq", skip=["logits"])
    assert "logits" not in tfadaqat.bit_widths(qmodel)
    assert "pool" in tfadaqat.bit_widths(qmodel)


# ---- numerics ----------------------------------------------------------------------------------

def _dorefa_surrogate_float_model(model):
    """The float model with each kernel w replaced by tanh(w)/max|tanh(w)| max|w| (DoReFa, no rounding)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for layer in clone.layers:
        for attribute in ("kernel", "depthwise_kernel"):
            if hasattr(layer, attribute) and tfadaqat.kind_of(layer) is not None and tfadaqat.kind_of(layer).weights:
                weight = getattr(layer, attribute)
                tanh = tf.tanh(weight)
                weight.assign(tanh / tf.reduce_max(tf.abs(tanh)) * tf.reduce_max(tf.abs(weight)))
    return clone


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_float_equivalence_at_16_bits(case, method):
    model = layer_case_model(case)
    x = case_inputs(model)
    reference = model if method != "adaqat" else _dorefa_surrogate_float_model(model)
    expected = reference.predict(x, verbose=0)
    qmodel = _quantize(model, method, bits=16)
    actual = qmodel.predict(x, verbose=0)
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(actual, expected, atol=0.01 * scale)


@pytest.mark.parametrize("method", METHODS)
def test_low_bits_change_the_output(method):
    model = small_resnet()
    x = case_inputs(model)
    float_out = model.predict(x, verbose=0)
    quant_out = _quantize(model, method, bits=2).predict(x, verbose=0)
    assert np.max(np.abs(quant_out - float_out)) > 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_save_and_load_are_bit_exact(method, tmp_path, classification_data):
    images, labels = classification_data
    qmodel = _quantize(small_resnet(), method, bits=4)
    qmodel.compile(keras.optimizers.Adam(1e-2),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.fit(images, labels, epochs=1, batch_size=16, verbose=0)
    if method != "lsq":
        tfadaqat.set_bit_widths(qmodel, {"stem_conv": {"kernel": 3}, "stem_relu": {"output": 5}})
    path = str(tmp_path / "model.keras")
    qmodel.save(path)
    loaded = tfadaqat.load_model(path)
    with tfadaqat.quantize_scope():
        loaded_in_scope = keras.models.load_model(path)
    expected = qmodel.predict(images, verbose=0)
    for restored in (loaded, loaded_in_scope):
        assert isinstance(restored, tfadaqat.QuantizedModel)
        np.testing.assert_array_equal(restored.predict(images, verbose=0), expected)
        assert tfadaqat.bit_widths(restored) == tfadaqat.bit_widths(qmodel)
    # Training continues from the restored optimizer state.
    loaded.fit(images, labels, epochs=1, batch_size=16, verbose=0)


def _float_kernel(qmodel, wrapper_name):
    """The float kernel variable (TFMOT replaces ``layer.kernel`` by its quantized tensor)."""
    return next(w for w in qmodel.get_layer(wrapper_name).trainable_weights
                if w.name.split(":")[0].split("/")[-1] == "kernel")


def _quantizer_values(qmodel):
    return {(name, role, key): float(variable.numpy())
            for name, role, _, variables, _ in tfadaqat.quantized_tensors(qmodel)
            for key, variable in variables.items() if key != "initialized"}


@pytest.mark.parametrize("method, options", [("adaqat", {}), ("dq", {}),
                                             ("dq", {"parametrization": "U1"}), ("lsq", {})])
def test_one_fit_step_changes_weights_and_quantizer_variables(method, options,
                                                              classification_data):
    images, labels = classification_data
    keras.utils.set_random_seed(0)  # which clips see values beyond them depends on the init
    qmodel = _quantize(small_resnet(), method, bits=4, **options)
    qmodel.compile(keras.optimizers.SGD(0.05),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qmodel.predict(images, verbose=0)  # initialises the quantizers
    kernel = _float_kernel(qmodel, "quant_stem_conv")
    kernel_before = kernel.numpy().copy()
    before = _quantizer_values(qmodel)
    qmodel.fit(images, labels, epochs=1, batch_size=32, verbose=0)
    assert not np.array_equal(kernel_before, kernel.numpy())
    after = _quantizer_values(qmodel)
    changed = {key for key in before if before[key] != after[key]}
    trainable = {"alpha", "step", "q_max"} | ({"relaxed_bits"} if options else set())
    kinds_present = {key[2] for key in before} & trainable
    # Only trainable variables move by gradient, plus, for AdaQAT, the state of its bit-width
    # rule; each trainable kind moves somewhere (a clip with no value beyond it has zero
    # gradient).
    rule_state = {"relaxed_bits", "rises", "frozen"} if method == "adaqat" else set()
    assert kinds_present and all(key[2] in trainable | rule_state for key in changed)
    assert {key[2] for key in changed} & trainable == kinds_present


def test_quantizers_initialise_on_first_batch_only(classification_data):
    images, _ = classification_data
    qmodel = _quantize(small_resnet(), "adaqat", bits=8)
    assert not qmodel.quantizers_initialized()
    qmodel.predict(images, verbose=0)
    assert qmodel.quantizers_initialized()
    alphas = {k: v for k, v in _quantizer_values(qmodel).items() if k[2] == "alpha"}
    input_alpha = alphas[("image_quantize_point", "output", "alpha")]
    assert input_alpha == pytest.approx(float(np.max(np.abs(images))))
    qmodel.predict(images * 10, verbose=0)
    assert {k: v for k, v in _quantizer_values(qmodel).items() if k[2] == "alpha"} == alphas


def test_nan_inputs_propagate_without_corrupting_variables(classification_data):
    images, _ = classification_data
    qmodel = _quantize(small_resnet(), "dq", bits=4)
    qmodel.predict(images, verbose=0)
    before = _quantizer_values(qmodel)
    poisoned = images.copy()
    poisoned[0, 0, 0, 0] = np.nan
    poisoned[1, 1, 1, 0] = np.inf
    outputs = qmodel.predict(poisoned, verbose=0)
    assert np.all(np.isfinite(outputs[2:]))
    assert _quantizer_values(qmodel) == before


# ---- bad input ---------------------------------------------------------------------------------

class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, inputs):
        return self.dense(inputs)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "int8"}, r"method must be one of \('adaqat', 'dq', 'lsq'\), got 'int8'"),
    ({"min_bits": 6, "max_bits": 4, "weight_bits": 4, "activation_bits": 4},
     r"min_bits \(6\) must be <= max_bits \(4\)"),
    ({"weight_bits": 0}, r"weight_bits must be an integer in 1..16, got 0"),
    ({"activation_bits": 17}, r"activation_bits must be an integer in 1..16, got 17"),
    ({"max_bits": 8, "weight_bits": 12}, r"weight_bits must lie in min_bits..max_bits = 2..8"),
    ({"method": "lsq", "weight_bits": 1}, r"weight_bits must be an integer in 2..16"),
    ({"skip": ["nope"]}, r"skip names layer\(s\) \['nope'\]"),
    ({"method": "lsq", "grid": "dorefa"}, r"method 'lsq' does not take option\(s\) \['grid'\]"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tfadaqat.quantize_model(small_resnet(), **kwargs)


def test_subclassed_model_is_refused():
    model = _Subclassed()
    model.build((None, 3))
    with pytest.raises(ValueError, match="subclassed Keras model.*Functional API"):
        tfadaqat.quantize_model(model)


def test_already_quantized_model_is_refused():
    qmodel = _quantize(mlp(), "lsq")
    with pytest.raises(ValueError, match="already quantized"):
        tfadaqat.quantize_model(qmodel)


def test_bit_widths_of_a_float_model_is_an_error():
    with pytest.raises(ValueError, match="no layer quantized by tfadaqat"):
        tfadaqat.bit_widths(mlp())


def test_set_bit_widths_unknown_tensor():
    qmodel = _quantize(mlp(), "adaqat")
    with pytest.raises(ValueError, match="no quantized tensor 'bias' in layer 'hidden'"):
        tfadaqat.set_bit_widths(qmodel, {"hidden": {"bias": 4}})
    with pytest.raises(ValueError, match="bits must be an integer in 2..8"):
        tfadaqat.set_bit_widths(qmodel, {"hidden": {"kernel": 1}})


def test_layer_bits_override_the_bits_of_named_layers():
    model = keras.Sequential([keras.Input((6, 6, 2), name="image"),
                              keras.layers.Conv2D(4, 3, name="first"),
                              keras.layers.ReLU(name="relu"),
                              keras.layers.Flatten(name="flatten"),
                              keras.layers.Dense(3, name="last")])
    qmodel = tfadaqat.quantize_model(model, "lsq", weight_bits=3, activation_bits=4,
                                     layer_bits={"image_quantize_point": 8, "first": 6,
                                                 "last": 8})
    bits = tfadaqat.bit_widths(qmodel)
    assert bits["image_quantize_point"] == {"output": 8}
    assert bits["first"] == {"kernel": 6} and bits["relu"] == {"output": 4}
    assert bits["last"] == {"kernel": 8, "output": 8}
    adaqat = tfadaqat.quantize_model(model, "adaqat", weight_bits=4, activation_bits=4,
                                     layer_bits={"first": 7})
    assert tfadaqat.bit_widths(adaqat)["first"] == {"kernel": 7}


@pytest.mark.parametrize("layer_bits, message", [
    ({"missing": 8}, r"layer_bits names layer\(s\) \['missing'\]"),
    ({"first": 1}, r"layer_bits\['first'\] must be an integer in 2..16, got 1"),
])
def test_bad_layer_bits_are_refused(layer_bits, message):
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, name="first")])
    with pytest.raises(ValueError, match=message):
        tfadaqat.quantize_model(model, "lsq", layer_bits=layer_bits)
    if "first" in layer_bits:
        with pytest.raises(ValueError, match=r"layer_bits\['first'\] must"):
            tfadaqat.quantize_model(model, "dq", layer_bits={"first": 12})


def test_adapted_normalization_keeps_its_statistics(tmp_path):
    # An adapted Normalization holds its statistics in variables and normalizes with tensors
    # computed from them; rebuilt by quantize_model (and by loading) it normalized with the
    # tensors of a fresh build (mean 0, variance 1).
    inputs = keras.Input((4, 4, 3))
    normalization = keras.layers.Normalization(name="normalize")
    data = np.random.default_rng(0).uniform(0.2, 0.9, (16, 4, 4, 3)).astype(np.float32)
    normalization.adapt(data)
    outputs = keras.layers.Conv2D(2, 1, name="conv")(normalization(inputs))
    model = keras.Model(inputs, outputs)
    expected_mean = data.reshape(-1, 3).mean(0)
    qmodel = tfadaqat.quantize_model(model, "lsq")
    qmodel.predict(data, verbose=0)  # initialises the quantizers
    path = str(tmp_path / "q.keras")
    qmodel.save(path)
    for candidate in (qmodel, tfadaqat.load_model(path)):
        layer = next(layer for layer in candidate.layers if layer.name.endswith("normalize"))
        inner = getattr(layer, "layer", layer)
        np.testing.assert_allclose(np.array(inner.mean).ravel(), expected_mean, rtol=1e-5)
        np.testing.assert_allclose(np.array(inner.variance).ravel(),
                                   data.reshape(-1, 3).var(0), rtol=1e-4)
