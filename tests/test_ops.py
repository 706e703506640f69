"""Golden values, gradients against the NumPy oracle, and invariants of tfadaqat.ops."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests import reference
from tfadaqat import ops
from tfadaqat._compat import tf


def _forward_and_gradients(function, x, *parameters, upstream=None):
    x = tf.constant(x, tf.float32)
    parameters = [tf.constant(p, tf.float32) for p in parameters]
    upstream = tf.ones_like(x) if upstream is None else tf.constant(upstream, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([x] + parameters)
        y = function(x, *parameters)
    gradients = tape.gradient(y, [x] + parameters, output_gradients=upstream)
    return y.numpy(), [g.numpy() for g in gradients]


# ---- golden forward tables: ties at .5 round up, saturation, zero ---------------------------

@pytest.mark.parametrize("x, alpha, bits, signed, expected", [
    ([-1, 0, 0.49, 0.5, 1.5, 2.5, 2.9, 3, 7], 3.0, 2, False, [0, 0, 0, 1, 2, 3, 3, 3, 3]),
    ([3.5, 6.5, 8, -0.1], 7.0, 3, False, [4, 7, 7, 0]),
    ([-4, -2.5, -0.5, 0, 0.5, 2.5, 4], 3.0, 3, True, [-3, -2, 0, 0, 1, 3, 3]),
    ([0.4, 0.6, 2], 1.0, 1, False, [0, 1, 1]),
])
def test_pact_golden(x, alpha, bits, signed, expected):
    y = ops.pact_quantize(tf.constant(x, tf.float32), tf.constant(alpha), bits, signed=signed)
    np.testing.assert_array_equal(y.numpy(), np.array(expected, np.float32))


def test_pact_tensor_bits_selects_the_same_kernel_as_static_bits():
    x = tf.constant(np.linspace(-1, 8, 97), tf.float32)
    for bits in range(2, 9):
        static = ops.pact_quantize(x, tf.constant(7.0), bits)
        dynamic = ops.pact_quantize(x, tf.constant(7.0), tf.constant(bits), bit_range=(2, 8))
        np.testing.assert_array_equal(static.numpy(), dynamic.numpy())


@pytest.mark.parametrize("x, step, bits, signed, fused, expected", [
    ([-2, -0.25, 0.25, 0.75, 1.6, 0], 0.5, 3, True, False, [-1.5, 0, 0.5, 1.0, 1.5, 0]),
    ([-1, 0.5, 1.5, 2.5, 3.4, 5], 1.0, 2, False, True, [0, 1, 2, 3, 3, 3]),
    ([-1, 0.5, 1.5, 2.5, 3.4, 5], 1.0, 2, False, False, [0, 1, 2, 3, 3, 3]),
])
def test_lsq_golden(x, step, bits, signed, fused, expected):
    y = ops.lsq_quantize(tf.constant(x, tf.float32), tf.constant(step), bits, signed=signed,
                         fused=fused)
    np.testing.assert_array_equal(y.numpy(), np.array(expected, np.float32))


@pytest.mark.parametrize("x, step, q_max, signed, expected", [
    ([-2, -1.1, 0.25, 1.2, 3, 0], 0.5, 1.2, True, [-1.0, -1.0, 0.5, 1.0, 1.0, 0]),
    ([-1, 0.5, 1.5, 2.5, 2.7, 9], 1.0, 2.6, False, [0, 1, 2, 3, 3, 3]),
])
def test_dq_golden(x, step, q_max, signed, expected):
    y = ops.dq_quantize(tf.constant(x, tf.float32), tf.constant(step), tf.constant(q_max),
                        signed=signed)
    np.testing.assert_array_equal(y.numpy(), np.array(expected, np.float32))


@pytest.mark.parametrize("step, q_max, signed, expected", [
    (0.5, 63.5, True, 8), (1.0, 2.6, False, 2), (1.0, 4.0, False, 3), (0.25, 0.25, True, 2),
    (2.0**-3, 2.0**-3 * 127, True, 8), (2.0**-3, 2.0**-3 * 255, False, 8),
    (0.1, 0.1 * 7, True, 4), (0.1, 0.1 * 15, False, 4), (1.0, 0.2, False, 1),
])
def test_dq_bits_golden(step, q_max, signed, expected):
    assert int(ops.dq_bits(tf.constant(step), tf.constant(q_max), signed=signed)) == expected
    assert reference.dq_bits(step, q_max, signed) == expected


@pytest.mark.parametrize("grid, bits, expected", [
    ("dorefa", 2, [-1, -1 / 3, 1 / 3, 1 / 3, 1]),
    ("symmetric", 3, [-1, -1 / 3, 0, 1 / 3, 1]),
])
def test_dorefa_golden(grid, bits, expected):
    weights = np.array([-1, -0.2, 0, 0.3, 1], np.float32)
    y = ops.dorefa_weight_quantize(tf.constant(weights), bits, grid=grid, rescale=False)
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(reference.dorefa(weights, bits, grid, rescale=False), expected,
                               atol=1e-6)


def test_dorefa_rescale_multiplies_by_largest_magnitude():
    weights = tf.constant([-0.5, 0.1, 0.25], tf.float32)
    plain = ops.dorefa_weight_quantize(weights, 4, rescale=False)
    scaled = ops.dorefa_weight_quantize(weights, 4, rescale=True)
    np.testing.assert_allclose(scaled.numpy(), plain.numpy() * 0.5, rtol=1e-6)


def test_dorefa_integer_scale_maps_outputs_to_integers():
    weights = tf.constant(np.random.default_rng(3).normal(size=50) * 0.2, tf.float32)
    for grid in ("dorefa", "symmetric"):
        for bits in (2, 3, 5, 7):
            y = ops.dorefa_weight_quantize(weights, bits, grid=grid)
            integers = y / ops.dorefa_integer_scale(weights, bits, grid=grid)
            np.testing.assert_allclose(integers, np.round(integers), atol=1e-4)
            limit = 2**bits - 1 if grid == "dorefa" else 2 ** (bits - 1) - 1
            assert np.max(np.abs(np.round(integers))) <= limit


def test_integer_range_and_bit_length():
    assert ops.integer_range(4, signed=True) == (-7, 7)
    assert ops.integer_range(4, signed=False) == (0, 15)
    np.testing.assert_array_equal(ops.bit_length(tf.constant([0.0, 1, 2, 3, 4, 127, 128, 255])),
                                  [0, 1, 2, 2, 3, 7, 8, 8])
    np.testing.assert_array_equal(
        ops.relaxed_to_integer_bits(tf.constant([1.2, 2.0, 2.01, 7.5, 9.0]), 2, 8),
        [2, 2, 3, 8, 8])


# ---- gradients against the NumPy oracle ------------------------------------------------------

def _random_problem(seed, size=200, scale=4.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=size) * scale).astype(np.float32), rng.normal(size=size).astype(
        np.float32)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 8])
def test_pact_gradients_match_reference(signed, bits):
    x, upstream = _random_problem(bits)
    y, (d_x, d_alpha) = _forward_and_gradients(
        lambda x, a: ops.pact_quantize(x, a, bits, signed=signed), x, 3.0, upstream=upstream)
    y_ref, d_x_ref, d_alpha_ref = reference.pact(x, 3.0, bits, signed, upstream)
    np.testing.assert_allclose(y, y_ref, atol=1e-6)
    np.testing.assert_allclose(d_x, d_x_ref, atol=1e-6)
    np.testing.assert_allclose(d_alpha, d_alpha_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("signed, fused", [(True, False), (False, True), (False, False)])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_lsq_gradients_match_reference(signed, fused, bits):
    x, upstream = _random_problem(10 + bits)
    step = 0.37
    y, (d_x, d_step) = _forward_and_gradients(
        lambda x, s: ops.lsq_quantize(x, s, bits, signed=signed, gradient_scale=0.5,
                                      fused=fused), x, step, upstream=upstream)
    y_ref, d_x_ref, d_step_ref = reference.lsq(x, step, bits, signed, upstream, 0.5)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    np.testing.assert_allclose(d_x, d_x_ref, atol=1e-6)
    np.testing.assert_allclose(d_step, d_step_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("signed", [True, False])
def test_dq_gradients_match_reference(signed):
    x, upstream = _random_problem(21)
    step, q_max = 0.3, 3.1
    y, (d_x, d_step, d_q_max) = _forward_and_gradients(
        lambda x, d, q: ops.dq_quantize(x, d, q, signed=signed), x, step, q_max,
        upstream=upstream)
    y_ref, d_x_ref, d_step_ref, d_q_max_ref = reference.dq(x, step, q_max, signed, upstream)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    np.testing.assert_allclose(d_x, d_x_ref, atol=1e-6)
    np.testing.assert_allclose(d_step, d_step_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(d_q_max, d_q_max_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grid", ["dorefa", "symmetric"])
def test_dorefa_gradient_is_the_surrogate_gradient(grid):
    """STE: the gradient is that of DoReFa without rounding (checked by finite differences)."""
    rng = np.random.default_rng(5)
    weights = (rng.normal(size=12) * 0.3).astype(np.float64)
    upstream = rng.normal(size=12)
    _, (gradient,) = _forward_and_gradients(
        lambda w: ops.dorefa_weight_quantize(w, 4, grid=grid, rescale=False), weights,
        upstream=upstream)
    epsilon = 1e-5
    numeric = np.zeros_like(weights)
    for i in range(len(weights)):
        shifted_up, shifted_down = weights.copy(), weights.copy()
        shifted_up[i] += epsilon
        shifted_down[i] -= epsilon
        numeric[i] = np.sum(upstream * (reference.dorefa_surrogate(shifted_up, grid, False)
                                        - reference.dorefa_surrogate(shifted_down, grid, False))
                            ) / (2 * epsilon)
    np.testing.assert_allclose(gradient, numeric, rtol=1e-3, atol=1e-4)


def test_dq_u1_bits_gradient_flows_through_range():
    """U1 derives q_max = (2^(b-1) - 1) d; d(q_max)/db = ln2 2^(b-1) d through the STE."""
    bits = tf.Variable(4.0)
    step = tf.constant(0.5)
    with tf.GradientTape() as tape:
        q_max = ops.dq_range_from_bits(step, ops.round_bits_straight_through(bits), signed=True)
    assert float(q_max) == 3.5
    np.testing.assert_allclose(float(tape.gradient(q_max, bits)), np.log(2) * 8 * 0.5, rtol=1e-5)


def test_power_of_two_step():
    # Rounding is in the log domain: log2(0.74) = -0.43 -> 2^0, log2(0.7) = -0.51 -> 2^-1.
    steps = tf.constant([0.3, 0.5, 0.74, 0.7, 1.5])
    np.testing.assert_array_equal(ops.power_of_two_straight_through(steps).numpy(),
                                  [0.25, 0.5, 1.0, 0.5, 2.0])


# ---- invariants ------------------------------------------------------------------------------

finite_arrays = hnp.arrays(np.float32, st.integers(1, 64),
                           elements=st.floats(-50, 50, width=32, allow_nan=False))


def _invariants(quantize, x, limit, low, high):
    y = quantize(tf.constant(x)).numpy()
    assert len(np.unique(y)) <= limit
    assert np.all(y >= low - 1e-4) and np.all(y <= high + 1e-4)
    np.testing.assert_array_equal(quantize(tf.constant(y)).numpy(), y)
    zeros = quantize(tf.zeros([5])).numpy()
    assert np.all(np.isfinite(zeros))


@settings(max_examples=25, deadline=None)
@given(x=finite_arrays, bits=st.integers(2, 8), signed=st.booleans())
def test_pact_invariants(x, bits, signed):
    alpha = tf.constant(5.0)
    limit = 2**bits - 1 if signed else 2**bits
    _invariants(lambda t: ops.pact_quantize(t, alpha, bits, signed=signed), x, limit,
                -5.0 if signed else 0.0, 5.0)


@settings(max_examples=25, deadline=None)
@given(x=finite_arrays, bits=st.integers(2, 8), signed=st.booleans())
def test_lsq_invariants(x, bits, signed):
    step = tf.constant(0.3)
    low, high = ops.integer_range(bits, signed)
    _invariants(lambda t: ops.lsq_quantize(t, step, bits, signed=signed, fused=not signed), x,
                high - low + 1, low * 0.3, high * 0.3)


@settings(max_examples=25, deadline=None)
@given(x=finite_arrays, q_max=st.floats(0.3, 20), signed=st.booleans())
def test_dq_invariants(x, q_max, signed):
    step, q_max = tf.constant(0.25), tf.constant(q_max, tf.float32)
    bits = int(ops.dq_bits(step, q_max, signed=signed))
    limit = 2**bits - 1 if signed else 2**bits
    top = 0.25 * float(ops.round_half_up(q_max / step))
    _invariants(lambda t: ops.dq_quantize(t, step, q_max, signed=signed), x,
                limit, -top if signed else 0.0, top)


@settings(max_examples=25, deadline=None)
@given(x=finite_arrays, bits=st.integers(2, 8), grid=st.sampled_from(["dorefa", "symmetric"]))
def test_dorefa_invariants(x, bits, grid):
    y = ops.dorefa_weight_quantize(tf.constant(x), bits, grid=grid).numpy()
    assert len(np.unique(y)) <= (2**bits if grid == "dorefa" else 2**bits - 1)
    assert np.all(np.abs(y) <= np.max(np.abs(x)) + 1e-5)
    assert np.all(np.isfinite(ops.dorefa_weight_quantize(tf.zeros([4]), bits, grid=grid)))


def test_nan_and_inf_propagate_without_error():
    """Non-finite elements do not disturb the finite ones, nor raise."""
    x = tf.constant([np.nan, np.inf, -np.inf, 1.3], tf.float32)
    for quantize in (lambda t: ops.pact_quantize(t, tf.constant(2.0), 4),
                     lambda t: ops.lsq_quantize(t, tf.constant(0.5), 4, signed=True, fused=False),
                     lambda t: ops.lsq_quantize(t, tf.constant(0.5), 4, signed=False),
                     lambda t: ops.dq_quantize(t, tf.constant(0.5), tf.constant(2.0), signed=False)):
        y = quantize(x)
        assert y.shape == x.shape
        assert float(y[3]) == float(quantize(x[3:])[0])
