"""A training step whose loss or gradients are NaN/Inf changes nothing (tfadaqat.non_finite).

The oracle is training without the bad batch: with ``shuffle=False`` the remaining batches
are the same, so every weight, BatchNormalization statistic, quantizer variable, optimizer
slot and iteration count, and the epoch's loss and accuracy, must come out bit-identical.
(MirroredStrategy: tests/test_distribute.py.)
"""

import json
import warnings
import zipfile

import numpy as np
import pytest

import tfadaqat
from tfadaqat._compat import keras, tf
from tfadaqat.non_finite import all_finite

BATCH = 16


def _model(method):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Conv2D(4, 3)(inputs)
    hidden = keras.layers.BatchNormalization()(hidden)
    hidden = keras.layers.ReLU()(hidden)
    hidden = keras.layers.Flatten()(hidden)
    outputs = keras.layers.Dense(3)(hidden)
    model = keras.Model(inputs, outputs)
    if method == "dq_budget":
        return tfadaqat.quantize_model(model, "dq", budget=tfadaqat.Budget.relative(bitops=0.3))
    if method == "adaqat_budget":
        return tfadaqat.quantize_model(model, "adaqat",
                                       budget=tfadaqat.Budget.relative(bitops=0.3))
    return tfadaqat.quantize_model(model, method)


def _compiled(method, **compile_options):
    model = _model(method)
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], **compile_options)
    return model


def _data(examples=64):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(examples, 8, 8, 1)).astype("float32"),
            rng.integers(0, 3, examples))


def _state(model):
    return ([v.numpy() for v in model.weights], [v.numpy() for v in model.optimizer.variables])


def _assert_identical(model, other):
    (weights, slots), (other_weights, other_slots) = _state(model), _state(other)
    assert len(weights) == len(other_weights) and len(slots) == len(other_slots)
    for variable, value, other_value in zip(model.weights, weights, other_weights):
        np.testing.assert_array_equal(value, other_value, err_msg=variable.name)
        assert np.all(np.isfinite(value)), variable.name
    for value, other_value in zip(slots, other_slots):
        np.testing.assert_array_equal(value, other_value)


@pytest.mark.parametrize("method", ["lsq", "dq", "adaqat", "dq_budget", "adaqat_budget"])
@pytest.mark.parametrize("bad", ["nan_pixel", "inf_label_weight"])
def test_a_bad_batch_mid_epoch_leaves_training_as_if_it_were_absent(method, bad):
    x, y = _data()
    weights = np.ones(len(y), np.float32)
    bad_batch = slice(2 * BATCH, 3 * BATCH)
    if bad == "nan_pixel":
        x_bad = x.copy()
        x_bad[bad_batch.start + 5, 3, 3, 0] = np.nan
        weights_bad = weights
    else:  # finite inputs, a non-finite loss
        x_bad, weights_bad = x, weights.copy()
        weights_bad[bad_batch.start] = np.inf
    keep = np.ones(len(y), bool)
    keep[bad_batch] = False

    reference = _compiled(method)
    expected = reference.fit(x[keep], y[keep], sample_weight=weights[keep], batch_size=BATCH,
                             epochs=2, shuffle=False, verbose=0).history
    guarded = _compiled(method)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = guarded.fit(x_bad, y, sample_weight=weights_bad, batch_size=BATCH, epochs=2,
                              shuffle=False, verbose=0).history

    _assert_identical(guarded, reference)
    assert history["loss"] == expected["loss"]
    assert history["accuracy"] == expected["accuracy"]
    assert history["skipped_steps"] == [1.0, 1.0]
    assert expected["skipped_steps"] == [0.0, 0.0]
    assert int(guarded.skipped_steps_total.numpy()) == 2
    assert int(guarded.consecutive_skipped_steps.numpy()) == 0
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)
                and "step was skipped" in str(w.message)]
    assert len(messages) == 2 and "batch 2:" in messages[0]


def test_a_bad_first_batch_defers_quantizer_initialisation_to_the_next():
    """The first step also initialises the quantizers from its batch; when it is skipped,
    the next batch initialises them, as if training had started there."""
    x, y = _data()
    x_bad = x.copy()
    x_bad[0, 0, 0, 0] = np.nan
    reference = _compiled("lsq")
    reference.fit(x[BATCH:], y[BATCH:], batch_size=BATCH, shuffle=False, verbose=0)
    guarded = _compiled("lsq")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        history = guarded.fit(x_bad, y, batch_size=BATCH, shuffle=False, verbose=0).history
    assert history["skipped_steps"] == [1.0]
    assert guarded.quantizers_initialized()
    _assert_identical(guarded, reference)


def test_fit_stops_after_the_configured_number_of_bad_steps_in_a_row():
    x, y = _data()
    x[2 * BATCH:] = np.nan  # the last 2 of 4 batches per epoch
    model = _compiled("dq", max_consecutive_skipped_steps=2)
    reference = _compiled("dq")
    reference.fit(x[:2 * BATCH], y[:2 * BATCH], batch_size=BATCH, shuffle=False, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(FloatingPointError, match=r"2 training steps in a row .*"
                                                     r"max_consecutive_skipped_steps=2"):
            model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    # Stopped in the first epoch, holding the weights of its last finite step.
    assert int(model.skipped_steps_total.numpy()) == 2
    _assert_identical(model, reference)


def test_no_limit_trains_through_any_number_of_bad_steps():
    x, y = _data()
    x[BATCH:] = np.nan
    model = _compiled("lsq", max_consecutive_skipped_steps=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    assert history.history["skipped_steps"] == [3.0, 3.0]


def test_without_the_guard_one_nan_poisons_the_model():
    """compile(skip_non_finite_steps=False): plain Keras behaviour, which the guard prevents
    (the same batch as above leaves every weight NaN and no skipped_steps log)."""
    x, y = _data()
    x[2 * BATCH + 5, 3, 3, 0] = np.nan
    model = _compiled("lsq", skip_non_finite_steps=False)
    history = model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0).history
    assert "skipped_steps" not in history and model.skipped_steps_total is None
    kernel = next(w for w in model.trainable_weights if w.name.endswith("kernel:0"))
    assert np.all(np.isnan(kernel.numpy()))
    assert np.isnan(history["loss"][0])


def test_compile_rejects_a_non_boolean_switch():
    with pytest.raises(ValueError, match="skip_non_finite_steps must be True or False, got 1"):
        _compiled("lsq", skip_non_finite_steps=1)


@pytest.mark.parametrize("limit", [0, -1, 2.5, True, "3"])
def test_compile_rejects_a_bad_limit(limit):
    with pytest.raises(ValueError, match="max_consecutive_skipped_steps must be None or an "
                                         r"int >= 1, got " + repr(limit).replace("(", r"\(")):
        _compiled("lsq", max_consecutive_skipped_steps=limit)


def test_the_guard_adds_no_weights_and_stays_out_of_evaluate():
    x, y = _data()
    model = _compiled("lsq")
    uncompiled = [tuple(v.shape) for v in _model("lsq").weights]
    model.fit(x, y, batch_size=BATCH, verbose=0)
    assert [tuple(v.shape) for v in model.weights] == uncompiled
    assert not [v.name for v in model.weights if "skipped" in v.name]
    results = model.evaluate(x, y, verbose=0, return_dict=True)
    assert sorted(results) == ["accuracy", "loss"]
    assert model.evaluate(x, y, verbose=0) == [results["loss"], results["accuracy"]]


def test_all_finite_checks_loss_and_every_gradient():
    finite = [tf.ones(3), None, tf.IndexedSlices(tf.ones(2), tf.constant([0, 1]))]
    assert bool(all_finite(tf.constant(1.0), finite))
    assert not bool(all_finite(tf.constant(np.nan), finite))
    assert not bool(all_finite(tf.constant(1.0), finite + [tf.constant([1.0, np.inf])]))
    assert not bool(all_finite(tf.constant(1.0), [tf.IndexedSlices(
        tf.constant([np.nan]), tf.constant([0]))]))



def test_a_saved_model_is_compiled_on_load_with_its_limit(tmp_path):
    x, y = _data()
    model = _compiled("lsq", max_consecutive_skipped_steps=3)
    model.fit(x, y, batch_size=BATCH, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = tfadaqat.load_model(tmp_path / "model.keras")
    assert loaded._max_consecutive_skipped_steps == 3
    x[BATCH:] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(FloatingPointError, match="3 training steps in a row"):
            loaded.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)


def test_a_model_saved_before_the_guard_existed_loads_and_gets_it(tmp_path):
    # A file written before tfadaqat had the guard: no skip settings in its compile config and
    # no skipped_steps metric among its metrics' saved variables. Made here from a model
    # compiled without the guard, with the two settings taken out of its config.
    x, y = _data()
    model = _compiled("lsq", skip_non_finite_steps=False)
    model.fit(x, y, batch_size=BATCH, verbose=0)
    model.save(tmp_path / "new.keras")
    with zipfile.ZipFile(tmp_path / "new.keras") as source, \
            zipfile.ZipFile(tmp_path / "old.keras", "w") as target:
        for item in source.infolist():
            content = source.read(item)
            if item.filename == "config.json":
                config = json.loads(content)
                for key in ("skip_non_finite_steps", "max_consecutive_skipped_steps"):
                    del config["compile_config"][key]
                content = json.dumps(config).encode()
            target.writestr(item, content)
    loaded = tfadaqat.load_model(tmp_path / "old.keras")
    for old, new in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(old, new)
    assert loaded.skipped_steps_total is not None  # compiled with today's default: guarded
    history = loaded.fit(x, y, batch_size=BATCH, verbose=0)
    assert history.history["skipped_steps"] == [0.0]
    # Saved again (now with the metric) and loaded: the count is not part of the file.
    loaded.save(tmp_path / "again.keras")
    assert tfadaqat.load_model(tmp_path / "again.keras").skipped_steps_total is not None
