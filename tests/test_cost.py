"""tfadaqat.cost: exact values on a hand-computed two-layer model."""

import numpy as np
import pytest

import tfadaqat
from tfadaqat._compat import keras, tf


def _two_layer_model():
    inputs = keras.Input((4, 4, 1), name="x")
    x = keras.layers.Conv2D(2, 3, name="conv")(inputs)          # 2x2x2 output, 18 + 2 params
    x = keras.layers.Flatten(name="flatten")(x)                  # 8 values, same grid
    outputs = keras.layers.Dense(3, name="dense")(x)             # 24 + 3 params
    return keras.Model(inputs, outputs)


def test_exact_cost_by_hand():
    qmodel = tfadaqat.quantize_model(_two_layer_model(), "lsq", weight_bits=4, activation_bits=8)
    result = tfadaqat.cost(qmodel)
    rows = {row.name: row for row in result.layers}
    # conv: 2x2 positions x (3x3x1x2) kernel = 72 MACs; input is the 8-bit input point.
    assert (rows["conv"].macs, rows["conv"].bitops) == (72, 72 * 4 * 8)
    assert rows["conv"].params == 20
    assert rows["conv"].weight_memory_bits == 18 * 4 + 2 * 32
    assert rows["conv"].activation_memory_bits == 8 * 8
    # dense: 8 x 3 MACs; its input is the conv output seen through Flatten (8 bits).
    assert (rows["dense"].macs, rows["dense"].input_bits, rows["dense"].bitops) == (24, 8, 768)
    assert rows["dense"].weight_memory_bits == 24 * 4 + 3 * 32
    assert rows["dense"].activation_memory_bits == 3 * 8
    assert rows["x_quantize_point"].activation_memory_bits == 16 * 8
    assert result.bitops == 2304 + 768
    assert result.weight_memory_bits == 136 + 192
    assert result.weight_kb == pytest.approx(328 / 8192)
    assert result.activation_memory_bits == 128                       # max
    assert tfadaqat.cost(qmodel, activation_reduce="sum").activation_memory_bits == 128 + 64 + 24


def test_mixed_bits_and_float_layers():
    qmodel = tfadaqat.quantize_model(_two_layer_model(), "adaqat", skip=["dense"])
    tfadaqat.set_bit_widths(qmodel, {"conv": {"kernel": 3, "output": 5},
                                     "x_quantize_point": {"output": 6}})
    rows = {row.name: row for row in tfadaqat.cost(qmodel).layers}
    assert rows["conv"].bitops == 72 * 3 * 6
    assert rows["dense"].bitops == 24 * 32 * 5                   # float kernel, 5-bit input
    assert rows["dense"].weight_memory_bits == 27 * 32


def test_bits_override_prices_another_assignment():
    qmodel = tfadaqat.quantize_model(_two_layer_model(), "lsq", weight_bits=4, activation_bits=4)
    eight = tfadaqat.cost(qmodel, bits=tfadaqat.uniform_bits(qmodel, 8))
    assert eight.bitops == (72 + 24) * 64


def test_bad_reduction():
    qmodel = tfadaqat.quantize_model(_two_layer_model(), "lsq")
    with pytest.raises(ValueError, match=r"activation_reduce must be one of \('max', 'sum'\)"):
        tfadaqat.cost(qmodel, activation_reduce="mean")


@pytest.mark.parametrize("method", ["adaqat", "dq", "lsq"])
def test_differentiable_cost_forward_equals_exact_cost(method):
    qmodel = tfadaqat.quantize_model(_two_layer_model(), method, weight_bits=5, activation_bits=6)
    exact = tfadaqat.cost(qmodel, activation_reduce="sum")
    tensors = tfadaqat.differentiable_cost(qmodel, activation_reduce="sum")
    assert float(tensors["bitops"]) == exact.bitops
    assert float(tensors["weight_kb"]) == pytest.approx(exact.weight_kb)
    assert float(tensors["activation_kb"]) == pytest.approx(exact.activation_kb)


def test_adaqat_bitops_gradient_is_macs_times_input_bits():
    """tfadaqat.cost.differentiable_cost: d(b_w b_a)/d(b_w) = b_a, so dBitOPs/dN_w = MACs x b_a
    for each layer."""
    qmodel = tfadaqat.quantize_model(_two_layer_model(), "adaqat", weight_bits=5,
                                     activation_bits=6)
    tensors = {(name, role): variables["relaxed_bits"]
               for name, role, _, variables, _ in tfadaqat.quantized_tensors(qmodel)}
    with tf.GradientTape() as tape:
        tape.watch(list(tensors.values()))  # relaxed bits are not trainable: watch them
        bitops = tfadaqat.differentiable_cost(qmodel)["bitops"]
    gradients = tape.gradient(bitops, [tensors[("conv", "kernel")], tensors[("dense", "kernel")],
                                       tensors[("conv", "output")]])
    assert [float(g) for g in gradients] == [72 * 6, 24 * 6, 24 * 5]


def test_dq_weight_memory_gradient_reaches_step_and_range():
    qmodel = tfadaqat.quantize_model(_two_layer_model(), "dq", weight_bits=4)
    variables = next(v for name, role, _, v, _ in tfadaqat.quantized_tensors(qmodel)
                     if (name, role) == ("conv", "kernel"))
    with tf.GradientTape() as tape:
        weight_kb = tfadaqat.differentiable_cost(qmodel)["weight_kb"]
    d_step, d_q_max = tape.gradient(weight_kb, [variables["step"], variables["q_max"]])
    # Memory grows with q_max / d: positive in q_max, negative in d.
    assert float(d_q_max) > 0 > float(d_step)
    step, q_max = float(variables["step"]), float(variables["q_max"])
    expected = 18 / 8192 / np.log(2) / (q_max + step)
    assert float(d_q_max) == pytest.approx(expected, rel=1e-5)
