"""tfadaqat.methods: the registry, each method's quantizers and options, and a new method added
as one module's worth of code (quantizers, options, settings, state and step hooks) that
trains through QuantizedModel.train_step unchanged."""

import inspect
import re

import numpy as np
import pytest

import tfadaqat
from tfadaqat import methods, quantizers
from tfadaqat._compat import keras, tf
from tfadaqat.methods import base


@pytest.mark.parametrize("method, kind, expected", [
    ("adaqat", "weight", quantizers.DoReFaWeightQuantizer),
    ("adaqat", "activation", quantizers.PACTActivationQuantizer),
    ("dq", "weight", quantizers.DQQuantizer),
    ("dq", "activation", quantizers.DQQuantizer),
    ("lsq", "weight", quantizers.LSQQuantizer),
    ("lsq", "activation", quantizers.LSQQuantizer),
])
def test_make_quantizer(method, kind, expected):
    quantizer = methods.make_quantizer(method, kind, signed=kind == "weight", bits=4,
                                       min_bits=2, max_bits=8)
    assert type(quantizer) is expected
    assert quantizer.signed == (kind == "weight")
    assert methods.of_quantizer(quantizer) is methods.get(method)


def test_make_quantizer_passes_options_and_rejects_unknown():
    quantizer = methods.make_quantizer("dq", "weight", signed=True, bits=4, min_bits=2,
                                       max_bits=8, options={"parametrization": "U2"})
    assert quantizer.parametrization == "U2"
    with pytest.raises(ValueError, match=r"method must be one of \('adaqat', 'dq', 'lsq'\)"):
        methods.make_quantizer("pact", "weight", signed=True, bits=4, min_bits=2, max_bits=8)
    with pytest.raises(ValueError, match="kind must be one of"):
        methods.make_quantizer("dq", "bias", signed=True, bits=4, min_bits=2, max_bits=8)
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['power_of_two'\]; "
                                         r"allowed: \['grid', 'rescale'\]"):
        methods.get("adaqat").validate_options({"power_of_two": True})
    with pytest.raises(ValueError, match="registered already"):
        methods.register(methods.get("lsq"))


def test_the_registry_lists_the_methods_and_which_learn_bits():
    assert methods.names() == ("adaqat", "dq", "lsq") == tfadaqat.METHODS
    assert methods.learning_methods() == ["adaqat", "dq"]
    assert methods.get("dq").option_names == ("parametrization", "power_of_two", "min_step",
                                              "max_step")
    assert methods.of_quantizer(quantizers.FixedGridQuantizer()) is None


def test_the_training_step_names_no_method():
    # The step's method-specific work comes from the hooks.
    source = (inspect.getsource(tfadaqat.QuantizedModel.train_step)
              + inspect.getsource(tfadaqat.QuantizedModel._update)).lower()
    for word in ("adaqat", "dq", "lsq", "quantizer", "probe", "penalty", "budget"):
        assert not re.search(rf"\b{word}\b", source), word


def test_register_quantizer_class(monkeypatch):
    monkeypatch.setattr(quantizers, "QUANTIZER_CLASSES", dict(quantizers.QUANTIZER_CLASSES))
    assert quantizers.register(_ToyQuantizer) is _ToyQuantizer
    assert quantizers.get({"class_name": "_ToyQuantizer", "config": {"bits": 3}}) == \
        _ToyQuantizer(bits=3)
    with pytest.raises(TypeError, match="TensorQuantizer subclass"):
        quantizers.register(int)
    clash = type("LSQQuantizer", (quantizers.LSQQuantizer,), {})
    with pytest.raises(ValueError, match="'LSQQuantizer' is registered already"):
        quantizers.register(clash)


class _ToyQuantizer(quantizers.LSQQuantizer):
    """LSQ's quantizer under another class, so that the toy method owns it."""


class _ToyStep(base.StepHooks):
    """Adds ``weight * sum(step^2)`` over the model's toy weight steps and counts updates."""

    def __init__(self, model, weight, counter):
        self.model, self.weight, self.counter = model, weight, counter
        self.term = None

    def loss(self):
        steps = [variables["step"] for _, role, quantizer, variables, _ in
                 tfadaqat.quantized_tensors(self.model)
                 if type(quantizer) is _ToyQuantizer and role != "output"]
        self.term = self.weight * tf.add_n([tf.square(step) for step in steps])
        return self.term

    def logs(self):
        return {"toy_term": self.term}

    def after_update(self):
        self.counter.assign_add(1.0)


class _ToyMethod(base.Method):
    name = "toy"
    quantizer_classes = (_ToyQuantizer,)
    settings_config_key = "toy_settings"

    def build_quantizer(self, kind, *, signed, bits, **unused):
        return _ToyQuantizer(bits=bits, signed=signed, kind=kind)

    def settings_from_arguments(self, *, learn_bits, adaqat_rule):
        return {"weight": 0.5}

    def settings_to_config(self, settings):
        return dict(settings)

    def settings_from_config(self, config):
        return dict(config)

    def create_state(self, model):
        return {"updates": model.add_weight("toy_updates", shape=(), trainable=False,
                                            initializer="zeros")}

    def step_hooks(self, model):
        return _ToyStep(model, model.method_settings(self.name)["weight"],
                        model.method_state(self.name)["updates"])


def _dense_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(3)])


@pytest.fixture
def toy_method(monkeypatch):
    """The toy method and its quantizer class, registered for one test."""
    monkeypatch.setitem(base._REGISTRY, "toy", _ToyMethod())
    monkeypatch.setitem(quantizers.QUANTIZER_CLASSES, "_ToyQuantizer", _ToyQuantizer)


def test_a_new_method_trains_through_its_hooks_alone(toy_method):
    inputs = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
    labels = np.arange(64) % 3
    qmodel = tfadaqat.quantize_model(_dense_model(), "toy", weight_bits=4, activation_bits=4)
    assert {type(q) for _, _, q, _, _ in tfadaqat.quantized_tensors(qmodel)} == {_ToyQuantizer}
    assert methods.in_model(qmodel) == [methods.get("toy")]
    assert qmodel.method_settings("toy") == {"weight": 0.5}
    counter = qmodel.method_state("toy")["updates"]
    assert any(weight is counter for weight in qmodel.weights)  # saved with the model
    qmodel.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    seen = []  # the weight steps at the start of each batch
    record = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs: seen.append(
        [float(v["step"].numpy()) for _, role, _, v, _ in tfadaqat.quantized_tensors(qmodel)
         if role != "output"]))
    history = qmodel.fit(inputs, labels, batch_size=16, epochs=1, verbose=0,
                         callbacks=[record])
    assert float(counter.numpy()) == 4.0  # after_update ran once per step
    # The logged term is the hooks' loss term at the last step's weights (Keras logs the last
    # step's value).
    expected = 0.5 * sum(step * step for step in seen[-1])
    assert history.history["toy_term"][-1] == pytest.approx(expected, rel=1e-5)
    assert qmodel.get_config()["toy_settings"] == {"weight": 0.5}


def test_the_hook_term_changes_the_update_by_its_gradient(toy_method):
    # One SGD step with the toy term against one without (settings weight 0): the weight
    # steps differ by exactly lr * d(term)/d(step) = lr * 2 * 0.5 * step.
    inputs = np.random.default_rng(1).normal(size=(16, 6)).astype("float32")
    labels = np.arange(16) % 3
    results = {}
    for weight in (0.5, 0.0):
        qmodel = tfadaqat.quantize_model(_dense_model(), "toy", weight_bits=4,
                                         activation_bits=4)
        qmodel.set_method_settings("toy", {"weight": weight})
        qmodel.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(
            from_logits=True), skip_non_finite_steps=False)
        qmodel.initialize_quantizers(inputs)
        before = [float(v["step"].numpy()) for _, role, _, v, _ in
                  tfadaqat.quantized_tensors(qmodel) if role != "output"]
        qmodel.train_on_batch(inputs, labels)
        after = [float(v["step"].numpy()) for _, role, _, v, _ in
                 tfadaqat.quantized_tensors(qmodel) if role != "output"]
        results[weight] = (np.array(before), np.array(after))
    before, with_term = results[0.5]
    np.testing.assert_allclose(before, results[0.0][0])
    np.testing.assert_allclose(with_term, results[0.0][1] - 0.1 * before, rtol=1e-5,
                               atol=1e-7)
