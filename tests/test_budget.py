"""tfadaqat.budget: budget validation and resolution, DQ's penalty value and gradient."""

import numpy as np
import pytest

import tfadaqat
from tests.test_cost import _two_layer_model
from tfadaqat._compat import tf


def test_relative_budget_resolves_against_8bit_cost():
    qmodel = tfadaqat.quantize_model(_two_layer_model(), "adaqat")
    # 8-bit model: conv 72 x 8 x 8, dense 24 x 8 x 8 BitOPs.
    resolved = tfadaqat.Budget.relative(bitops=0.25).resolve(qmodel)
    assert resolved.bitops == pytest.approx(0.25 * 96 * 64)
    assert not resolved.relative_to_8bit
    assert resolved.weight_kb is None
    absolute = tfadaqat.Budget(weight_kb=0.03).resolve(qmodel)
    assert absolute.weight_kb == 0.03


def test_budget_below_smallest_reachable_cost_states_it():
    qmodel = tfadaqat.quantize_model(_two_layer_model(), "adaqat", min_bits=2)
    # Every tensor at 2 bits: BitOPs = 96 x 2 x 2 = 384 = 0.0625 of the 8-bit model.
    with pytest.raises(ValueError, match=r"below the smallest reachable cost 384 .*0\.0625"):
        tfadaqat.Budget.relative(bitops=0.05).resolve(qmodel)
    tfadaqat.Budget(bitops=384).resolve(qmodel)  # exactly reachable: accepted


def test_lsq_fixed_bits_are_their_own_floor():
    qmodel = tfadaqat.quantize_model(_two_layer_model(), "lsq", weight_bits=4, activation_bits=4)
    with pytest.raises(ValueError, match="smallest reachable cost 1,536"):
        tfadaqat.Budget(bitops=1000).resolve(qmodel)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "needs at least one of"),
    ({"bitops": 0}, "budget bitops must be a positive finite number, got 0"),
    ({"weight_kb": -1.0}, "budget weight_kb must be a positive finite number"),
    ({"activation_kb": float("inf")}, "budget activation_kb must be a positive finite number"),
    ({"bitops": 10, "activation_reduce": "mean"}, r"activation_reduce must be one of"),
])
def test_bad_budgets(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tfadaqat.Budget(**kwargs)


def test_budget_on_model_with_nothing_quantized():
    with pytest.raises(ValueError, match="nothing quantized by tfadaqat"):
        tfadaqat.Budget(bitops=1).resolve(_two_layer_model())


def test_penalty_value_and_gradient_on_known_sizes():
    sizes = {"bitops": tf.Variable(150.0), "weight_kb": tf.Variable(3.0),
             "activation_kb": tf.Variable(9.0)}
    budget = tfadaqat.Budget(bitops=100, weight_kb=5.0, activation_kb=4.0)
    weights = {"bitops": 0.01, "weight_kb": 0.1, "activation_kb": 0.5}
    with tf.GradientTape() as tape:
        penalty = tfadaqat.budget_penalty(sizes, budget, weights)
    # 0.01 * 50^2 + 0.1 * 0 + 0.5 * 5^2
    assert float(penalty) == pytest.approx(25.0 + 12.5)
    gradients = tape.gradient(penalty, [sizes["bitops"], sizes["weight_kb"],
                                        sizes["activation_kb"]])
    np.testing.assert_allclose([float(g) if g is not None else 0.0 for g in gradients],
                               [2 * 0.01 * 50, 0.0, 2 * 0.5 * 5])


def test_penalty_needs_weights_and_absolute_budget():
    sizes = {"bitops": tf.constant(1.0)}
    with pytest.raises(ValueError, match="no weight for the bounded quantity 'bitops'"):
        tfadaqat.budget_penalty(sizes, tfadaqat.Budget(bitops=1), {})
    with pytest.raises(ValueError, match="needs an absolute budget"):
        tfadaqat.budget_penalty(sizes, tfadaqat.Budget.relative(bitops=0.5), {"bitops": 1.0})
