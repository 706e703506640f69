"""tfadaqat.quantizers: configs, lookup, bit-width access, initialisation, bad arguments."""

import math

import numpy as np
import pytest

import tfadaqat
from tfadaqat import quantizers as Q
from tfadaqat._compat import keras, tf
from tfadaqat.quantize import quantize_scope

ALL_QUANTIZERS = [
    Q.DoReFaWeightQuantizer(bits=5, min_bits=3, max_bits=7, grid="symmetric", rescale=False),
    Q.DoReFaWeightQuantizer(bits=4, learn_bits=False),
    Q.PACTActivationQuantizer(bits=6, min_bits=2, max_bits=8, signed=True),
    Q.LSQQuantizer(bits=3, signed=False, kind="activation"),
    Q.DQQuantizer(bits=5, min_bits=2, max_bits=8, signed=False, parametrization="U2",
                  power_of_two=True, min_step=2.0**-10, max_step=4.0),
    Q.FixedGridQuantizer(1.0 / 128, -128, 127),
]


def _build(quantizer, shape=(4,)):
    holder = keras.layers.Layer(name="holder")
    return quantizer.build(tf.TensorShape(shape), "t", holder)


@pytest.mark.parametrize("quantizer", ALL_QUANTIZERS, ids=lambda q: type(q).__name__)
def test_config_round_trip(quantizer):
    config = quantizer.get_config()
    assert type(quantizer).from_config(config) == quantizer
    assert Q.get(Q.serialize(quantizer)) == quantizer
    assert Q.deserialize(Q.serialize(quantizer)) == quantizer
    assert tfadaqat.quantizers.deserialize(Q.serialize(quantizer)) == quantizer
    with quantize_scope():
        restored = keras.utils.deserialize_keras_object(
            keras.utils.serialize_keras_object(quantizer))
    assert restored == quantizer
    # Every constructor argument is in the config.
    import inspect
    assert set(inspect.signature(type(quantizer).__init__).parameters) - {"self"} == set(config)


def test_get_lookup():
    assert Q.get(None) is None
    instance = Q.LSQQuantizer(4)
    assert Q.get(instance) is instance
    assert isinstance(Q.get("LSQQuantizer"), Q.LSQQuantizer)
    assert isinstance(Q.get("tfadaqat>DQQuantizer"), Q.DQQuantizer)
    with pytest.raises(ValueError, match="Could not interpret quantizer identifier 'nope'"):
        Q.get("nope")
    with pytest.raises(ValueError, match="LSQQuantizer"):
        Q.get(3)
    assert Q.deserialize(None) is None
    with pytest.raises(ValueError, match="deserialize expects None or"):
        Q.deserialize("LSQQuantizer")  # a name is get's, not a serialized description
    with pytest.raises(ValueError, match="Could not interpret"):
        Q.deserialize({"class_name": "Nope", "config": {}})


def test_public_keras_is_tf_keras():
    # The README builds models with `from tfadaqat import keras`: it must be legacy tf-keras,
    # the Keras TFMOT wraps (a Keras 3 layer would be refused by quantize_model).
    import tf_keras
    assert tfadaqat.keras is tf_keras


@pytest.mark.parametrize("make, message", [
    (lambda: Q.LSQQuantizer(bits=0), "bits must be an integer in 2..16"),
    (lambda: Q.LSQQuantizer(bits=17, signed=False), "bits must be an integer in 1..16"),
    (lambda: Q.LSQQuantizer(bits=4, kind="bias"), "kind must be one of"),
    (lambda: Q.DoReFaWeightQuantizer(min_bits=5, max_bits=4, bits=4), "min_bits .5. must be <="),
    (lambda: Q.DoReFaWeightQuantizer(bits=9), r"bits must be an integer in 2..8"),
    (lambda: Q.DoReFaWeightQuantizer(grid="ternary"), "grid must be 'dorefa' or 'symmetric'"),
    (lambda: Q.DQQuantizer(parametrization="U4"), "parametrization must be one of"),
    (lambda: Q.DQQuantizer(min_step=1.0, max_step=0.5), "need 0 < min_step < max_step"),
    (lambda: Q.PACTActivationQuantizer(bits=2.5), "bits must be an integer"),
])
def test_bad_arguments_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_relaxed_bits_read_and_set():
    quantizer = Q.DoReFaWeightQuantizer(bits=8, min_bits=2, max_bits=8)
    variables = _build(quantizer)
    assert int(quantizer.bit_width(variables)) == 8
    quantizer.set_bit_width(variables, 3)
    assert float(variables["relaxed_bits"]) == 3.0
    assert int(quantizer.bit_width(variables)) == 3
    variables["relaxed_bits"].assign(4.2)  # b = ceil(N)
    assert int(quantizer.bit_width(variables)) == 5
    with pytest.raises(ValueError, match="bits must be an integer in 2..8"):
        quantizer.set_bit_width(variables, 9)


def test_fixed_bits_cannot_be_set():
    for quantizer in (Q.DoReFaWeightQuantizer(bits=4, learn_bits=False), Q.LSQQuantizer(4)):
        variables = _build(quantizer)
        assert int(quantizer.bit_width(variables)) == 4
        with pytest.raises(ValueError, match="fixed"):
            quantizer.set_bit_width(variables, 3)


@pytest.mark.parametrize("parametrization", ["U1", "U2", "U3"])
def test_dq_bits_set_and_derived(parametrization):
    quantizer = Q.DQQuantizer(bits=6, signed=True, parametrization=parametrization)
    variables = _build(quantizer)
    assert int(quantizer.bit_width(variables)) == 6
    quantizer.set_bit_width(variables, 3)
    assert int(quantizer.bit_width(variables)) == 3
    step, q_max = quantizer.step_and_range(variables)
    assert float(q_max) == pytest.approx(3 * float(step))


def test_dq_parametrizations_agree_on_the_same_step_and_range():
    x = tf.constant(np.linspace(-3, 3, 61), tf.float32)
    outputs = []
    for parametrization in ("U1", "U2", "U3"):
        quantizer = Q.DQQuantizer(bits=4, signed=True, parametrization=parametrization)
        variables = _build(quantizer)
        for name, value in (("step", 0.25), ("q_max", 0.25 * 7), ("relaxed_bits", 4.0)):
            if name in variables:
                variables[name].assign(value)
        outputs.append(quantizer(x, True, variables).numpy())
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])


def test_learned_and_fixed_bits_compute_the_same():
    x = tf.constant(np.random.default_rng(0).normal(size=(3, 50)), tf.float32)
    for bits in (2, 5, 8):
        fixed = Q.PACTActivationQuantizer(bits=bits, learn_bits=False, signed=True)
        learned = Q.PACTActivationQuantizer(bits=8, learn_bits=True, signed=True)
        fixed_vars, learned_vars = _build(fixed), _build(learned)
        learned.set_bit_width(learned_vars, bits)
        with Q.initialization_mode():
            a = fixed(x, True, fixed_vars)
            b = learned(x, True, learned_vars)
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_initialization_only_in_initialization_mode():
    x = tf.constant([[-4.0, 1.0, 2.0, 3.0]])
    pact = Q.PACTActivationQuantizer(bits=4, signed=True)
    variables = _build(pact)
    pact(x, True, variables)
    assert float(variables["alpha"]) == 6.0 and float(variables["initialized"]) == 0.0
    with Q.initialization_mode():
        pact(x, True, variables)
    assert float(variables["alpha"]) == 4.0 and float(variables["initialized"]) == 1.0

    lsq = Q.LSQQuantizer(bits=4, signed=True)
    variables = _build(lsq)
    with Q.initialization_mode():
        lsq(x, True, variables)
    assert float(variables["step"]) == pytest.approx(2 * 2.5 / math.sqrt(7))

    dq = Q.DQQuantizer(bits=4, signed=True)
    variables = _build(dq)
    with Q.initialization_mode():
        dq(x, True, variables)
    # d = 2^floor(log2(4 / 7)) = 0.5, q_max = 7 d.
    assert float(variables["step"]) == 0.5
    assert float(variables["q_max"]) == 3.5


def test_nan_in_first_batch_does_not_corrupt_variables():
    x = tf.constant([[np.nan, np.inf, 1.0, -2.0]])
    for quantizer in (Q.PACTActivationQuantizer(), Q.LSQQuantizer(4, signed=False),
                      Q.DQQuantizer(signed=False)):
        variables = _build(quantizer)
        with Q.initialization_mode():
            y = quantizer(x, True, variables)
        assert y.shape == x.shape
        for variable in variables.values():
            assert np.isfinite(variable.numpy()), (type(quantizer).__name__, variable.name)


@pytest.mark.parametrize("quantizer, signed, expected_range", [
    (Q.DoReFaWeightQuantizer(bits=3, learn_bits=False, grid="dorefa"), True, (-7, 7)),
    (Q.DoReFaWeightQuantizer(bits=3, learn_bits=False, grid="symmetric"), True, (-3, 3)),
    (Q.PACTActivationQuantizer(bits=3, learn_bits=False), False, (0, 7)),
    (Q.PACTActivationQuantizer(bits=3, learn_bits=False, signed=True), True, (-3, 3)),
    (Q.LSQQuantizer(bits=3, signed=True), True, (-3, 3)),
    (Q.FixedGridQuantizer(1.0 / 256, 0, 255), False, (0, 255)),
    (Q.FixedGridQuantizer(1.0 / 128, -128, 127), True, (-128, 127)),
    (Q.LSQQuantizer(bits=3, signed=False, kind="activation"), False, (0, 7)),
    (Q.DQQuantizer(bits=3, signed=True), True, (-3, 3)),
    (Q.DQQuantizer(bits=3, signed=False), False, (0, 7)),
])
def test_integer_grid_holds_every_output(quantizer, signed, expected_range):
    """Outputs are scale x integers in [low, high]; inputs 10x wider reach both ends."""
    x = tf.constant(np.random.default_rng(3).normal(0.0, 2.0, size=(64, 16)), tf.float32)
    layer = keras.layers.Layer()
    variables = quantizer.build(x.shape, "q", layer)
    with Q.initialization_mode():
        quantizer(x, training=False, weights=variables)
    outputs = quantizer(10.0 * x, training=False, weights=variables).numpy()
    scale, low, high = quantizer.integer_grid(10.0 * x, variables)
    assert (low, high) == expected_range
    integers = outputs / scale
    np.testing.assert_allclose(integers, np.round(integers), atol=1e-3)
    assert int(np.round(integers).min()) == low and int(np.round(integers).max()) == high


@pytest.mark.parametrize("step, low, high, inputs, expected", [
    # softmax / sigmoid grid: ties at .5 round half away from zero (FakeQuant), top saturates
    (1 / 256, 0, 255, [0.0, 0.5 / 256, 1.5 / 256, 0.25, 1.0, -0.1],
     [0.0, 1 / 256, 2 / 256, 64 / 256, 255 / 256, 0.0]),
    # tanh grid: -1 and 127/128 are the ends
    (1 / 128, -128, 127, [-1.5, -1.0, -0.3 / 128, 0.0, 0.994, 1.0],
     [-1.0, -1.0, 0.0, 0.0, 127 / 128, 127 / 128]),
])
def test_fixed_grid_golden(step, low, high, inputs, expected):
    quantizer = Q.FixedGridQuantizer(step, low, high)
    outputs = quantizer(tf.constant(inputs, tf.float32), False, {}).numpy()
    np.testing.assert_allclose(outputs, expected, rtol=0, atol=1e-7)


def test_fixed_grid_gradient_is_straight_through_inside_the_range():
    quantizer = Q.FixedGridQuantizer(1 / 256, 0, 255)
    x = tf.constant([-0.5, 0.1, 0.5, 2.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = quantizer(x, True, {})
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [0.0, 1.0, 1.0, 0.0])


@pytest.mark.parametrize("arguments, message", [
    ((0.0, 0, 255), "step must be positive"),
    ((1 / 256, 0, 256), "high - low must lie in 1..255"),
    ((1 / 256, 0.5, 255), "low must be an integer"),
])
def test_fixed_grid_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        Q.FixedGridQuantizer(*arguments)
