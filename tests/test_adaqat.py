"""tfadaqat.adaqat: the finite-difference bit-width rule, on golden values and a toy problem."""

import numpy as np
import pytest

import tfadaqat
from tfadaqat import adaqat
from tfadaqat._compat import keras, tf


def test_relaxed_bits_update_golden():
    # g = (L - L_minus) + lambda dC/db = (1.0 - 1.5) + 0.02 * 8 = -0.34; N' = 6 + 0.1 * 0.34
    updated = adaqat.relaxed_bits_update(6.0, 1.0, 1.5, 8.0, 0.02, 0.1, min_bits=2)
    assert float(updated) == pytest.approx(6.034)
    # Loss unchanged one bit lower: only the cost term, N' = 6 - 0.1 * 0.16
    assert float(adaqat.relaxed_bits_update(6.0, 1.0, 1.0, 8.0, 0.02, 0.1, 2)) == \
        pytest.approx(5.984)
    # Floor at min_bits - 1/2.
    assert float(adaqat.relaxed_bits_update(1.6, 1.0, 1.0, 100.0, 1.0, 1.0, 2)) == 1.5


def test_freeze_at_floor_and_after_oscillation_limit():
    relaxed, rises, frozen = adaqat.freeze_rule(tf.constant(3), tf.constant(1.9), 0.0, 2, 8, 10)
    assert float(relaxed) == pytest.approx(1.9)
    assert (float(rises), bool(frozen)) == (0.0, True)  # b = 2 = min_bits
    # Asking for more than max_bits counts as a rise, and N stays capped.
    relaxed, rises, frozen = adaqat.freeze_rule(tf.constant(8), tf.constant(8.3), 0.0, 2, 8, 10)
    assert (float(relaxed), float(rises), bool(frozen)) == (8.0, 1.0, False)
    # A bit-width that goes 4 -> 5 -> 4 -> 5 ...: rises are counted; the 11th freezes at 5.
    rises, bits = 0.0, 4
    for step in range(30):
        target = 4.6 if bits == 4 else 3.6  # ceil: 5, then 4, ...
        relaxed, rises, frozen = adaqat.freeze_rule(tf.constant(bits), tf.constant(target),
                                                    tf.constant(rises), 2, 8, 10)
        rises = float(rises)
        bits = int(np.ceil(float(relaxed)))
        if bool(frozen):
            break
    assert rises == 11.0 and bits == 5 and float(relaxed) == 5.0


@pytest.mark.parametrize("kwargs, message", [
    ({"learning_rate": -1.0}, "learning_rate must be a non-negative number"),
    ({"probe_every": 0}, "probe_every must be a positive integer"),
    ({"oscillation_limit": 2.5}, "oscillation_limit must be a positive integer"),
])
def test_bad_rule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tfadaqat.AdaQATRule(**kwargs)


def _toy_problem(rule):
    """needed(x) + zero(useless(x)): 'useless' and 'zero' cannot change the output."""
    inputs = keras.Input((16,), name="x")
    needed = keras.layers.Dense(16, use_bias=False, name="needed",
                                kernel_initializer=keras.initializers.RandomNormal(0, 0.3, 1))(inputs)
    useless = keras.layers.Dense(16, use_bias=False, name="useless")(inputs)
    zero = keras.layers.Dense(16, use_bias=False, kernel_initializer="zeros", name="zero")(useless)
    model = keras.Model(inputs, keras.layers.Add(name="sum")([needed, zero]))
    qmodel = tfadaqat.quantize_model(model, "adaqat", adaqat_rule=rule)
    x = np.random.default_rng(0).normal(size=(64, 16)).astype("float32")
    target = qmodel.predict(x, verbose=0)  # the 8-bit model is exact: loss 0 at the start

    def scaled_mse(y_true, y_pred):  # loss sensitive enough that 'needed' must keep its bits
        return 1e4 * tf.reduce_mean(tf.square(y_true - y_pred), axis=-1)

    qmodel.compile(keras.optimizers.SGD(0.0), scaled_mse)  # weights fixed: only bits move
    return qmodel, x, target


def _state(qmodel, layer):
    variables = next(v for name, role, _, v, _ in tfadaqat.quantized_tensors(qmodel)
                     if (name, role) == (layer, "kernel"))
    return float(variables["relaxed_bits"]), float(variables["frozen"])


def test_toy_problem_unused_layers_fall_to_min_bits_needed_layer_keeps_its_bits():
    qmodel, x, target = _toy_problem(tfadaqat.AdaQATRule(learning_rate=1.0))
    qmodel.fit(x, target, batch_size=16, epochs=40, verbose=0)
    bits = tfadaqat.bit_widths(qmodel)
    assert bits["useless"]["kernel"] == 2 and bits["zero"]["kernel"] == 2
    assert _state(qmodel, "useless")[1] == 1.0 and _state(qmodel, "zero")[1] == 1.0
    # 'needed' asked for more bits at every probe: frozen at 8 after the oscillation limit.
    assert bits["needed"]["kernel"] == 8
    assert _state(qmodel, "needed") == (8.0, 1.0)


def test_probe_every_k_steps_and_no_rule():
    qmodel, x, target = _toy_problem(tfadaqat.AdaQATRule(learning_rate=1.0, probe_every=1000))
    qmodel.fit(x, target, batch_size=16, epochs=2, verbose=0)  # 8 steps, no probe
    assert _state(qmodel, "useless")[0] == 8.0
    qmodel, x, target = _toy_problem(None)
    assert qmodel.adaqat_rule is None
    qmodel.fit(x, target, batch_size=16, epochs=2, verbose=0)
    assert tfadaqat.bit_widths(qmodel)["useless"]["kernel"] == 8


def test_rule_and_its_state_survive_save_and_load(tmp_path):
    rule = tfadaqat.AdaQATRule(learning_rate=1.0, oscillation_limit=4)
    qmodel, x, target = _toy_problem(rule)
    qmodel.fit(x, target, batch_size=16, epochs=3, verbose=0)
    path = str(tmp_path / "rule.keras")
    qmodel.save(path)
    loaded = tfadaqat.load_model(path, custom_objects={"scaled_mse": qmodel.loss})
    assert loaded.adaqat_rule == rule
    assert _state(loaded, "useless") == _state(qmodel, "useless")
