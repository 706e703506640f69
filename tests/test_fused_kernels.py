"""tfadaqat.fused_kernels: the one-pass quantizer kernels against the TensorFlow ops they replace.

The kernels must give the TensorFlow-op path's forward values and input gradients bit for bit,
and its sums to float rounding (checked against float64 sums). The machine must have built them
(a compiler is part of the test environment); a missing compiler must fall back with a warning.
"""

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tfadaqat
from tfadaqat import fused_kernels, ops
from tfadaqat._compat import keras, tf
from tests.conftest import small_resnet


def _values(seed: int, shape=(32, 9, 9, 7), scale: float = 2.0) -> np.ndarray:
    values = np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale
    # Exact rounding ties and range ends of a 0.25 step, which the formulas must treat alike.
    flat = values.reshape(-1)
    flat[:64] = (np.arange(64, dtype=np.float32) - 32.0) * 0.125
    return values


@pytest.fixture
def kernels():
    """Skips a comparison of the kernels with the TensorFlow ops where there are no kernels
    (it would compare the TensorFlow ops with themselves)."""
    if fused_kernels.kernel_module() is None:
        pytest.skip(f"fused kernels unavailable: {fused_kernels.unavailable_reason()}")


def test_the_kernels_are_built_here():
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no C++ compiler here: LSQ and DQ use the TensorFlow ops")
    if os.environ.get("TFADAQAT_FUSED_KERNELS") == "0":
        pytest.skip("switched off by TFADAQAT_FUSED_KERNELS=0")
    assert fused_kernels.kernel_module() is not None, fused_kernels.unavailable_reason()
    assert fused_kernels.library_path().exists()


@pytest.mark.parametrize("bounds", [
    dict(integer_low=-7.0, integer_high=7.0),                      # LSQ, signed 4-bit
    dict(integer_low=0.0, integer_high=3.0),                       # LSQ, unsigned 2-bit
    dict(clip_low=-1.3, clip_high=1.3),                            # DQ, signed
    dict(clip_low=0.0, clip_high=2.05),                            # DQ, unsigned
])
@pytest.mark.parametrize("step", [0.25, 0.0371])
def test_grid_quantize_equals_the_tensorflow_ops_and_a_numpy_oracle_bit_for_bit(bounds, step,
                                                                              kernels):
    x = _values(0)
    fused = fused_kernels.grid_quantize(tf.constant(x), tf.constant(step), **bounds).numpy()
    with fused_kernels.fused_kernels_disabled():
        reference = fused_kernels.grid_quantize(tf.constant(x), tf.constant(step),
                                                **bounds).numpy()
    np.testing.assert_array_equal(fused, reference)
    # The same float32 operations in NumPy.
    s = np.float32(step)
    clipped = np.clip(x, np.float32(bounds.get("clip_low", -np.inf)),
                      np.float32(bounds.get("clip_high", np.inf)))
    rounded = np.floor(clipped / s + np.float32(0.5))
    oracle = s * np.clip(rounded, np.float32(bounds.get("integer_low", -np.inf)),
                         np.float32(bounds.get("integer_high", np.inf)))
    np.testing.assert_array_equal(fused, oracle)
    assert len(np.unique(fused)) > 3


@pytest.mark.parametrize("nudge", [True, False])
def test_quantizer_gradient_masks_bit_for_bit_and_sums_to_float64_accuracy(nudge, kernels):
    x, g = _values(1), _values(2, scale=1.0)
    low, high = np.float32(-1.5), np.float32(2.25)
    q = tf.quantization.fake_quant_with_min_max_vars(tf.constant(x), low, high, num_bits=4)
    arguments = (tf.constant(g), tf.constant(x), q, tf.constant(low), tf.constant(high))
    fused = [t.numpy() for t in fused_kernels.quantizer_gradient(*arguments, nudge=nudge)]
    with fused_kernels.fused_kernels_disabled():
        reference = [t.numpy()
                     for t in fused_kernels.quantizer_gradient(*arguments, nudge=nudge)]
    np.testing.assert_array_equal(fused[0], reference[0])
    if nudge:  # the mask of TensorFlow's FakeQuant gradient
        expected_mask = tf.quantization.fake_quant_with_min_max_vars_gradient(
            tf.ones_like(x), x, low, high, num_bits=8)[0].numpy() > 0
    else:
        expected_mask = (x >= low) & (x <= high)
    np.testing.assert_array_equal(fused[0], np.where(expected_mask, g, 0.0))
    assert 0 < expected_mask.mean() < 1
    g64, x64, q64 = (np.asarray(t, np.float64) for t in (g, x, q))
    mask_low = x < (low if not nudge else x[expected_mask].min())
    mask_high = x > (high if not nudge else x[expected_mask].max())
    oracles = [np.sum(np.where(expected_mask, g64 * (q64 - x64), 0.0)),
               np.sum(np.where(mask_low, g64, 0.0)), np.sum(np.where(mask_high, g64, 0.0))]
    for kernel_sum, tensorflow_sum, oracle in zip(fused[1:], reference[1:], oracles):
        scale = np.sum(np.abs(g64))  # the sums cancel; compare with the size of their terms
        assert abs(kernel_sum - oracle) <= 1e-7 * scale
        assert abs(tensorflow_sum - oracle) <= 1e-5 * scale


def _gradients(function, x, *parameters):
    with tf.GradientTape() as tape:
        tape.watch([x, *parameters])
        y = function(x, *parameters)
        loss = tf.reduce_sum(y * tf.constant(_values(3, x.shape, 1.0)))
    return [y] + tape.gradient(loss, [x, *parameters])


@pytest.mark.parametrize("name, function, parameters", [
    ("lsq signed", lambda x, s: ops.lsq_quantize(x, s, 4, signed=True, fused=False), (0.3,)),
    ("lsq unsigned", lambda x, s: ops.lsq_quantize(x, s, 3, signed=False), (0.3,)),
    ("dq signed", lambda x, d, q: ops.dq_quantize(x, d, q, signed=True), (0.3, 2.1)),
    ("dq unsigned", lambda x, d, q: ops.dq_quantize(x, d, q, signed=False), (0.3, 2.1)),
])
def test_lsq_and_dq_give_the_same_values_and_gradients_with_and_without_kernels(
        name, function, parameters, kernels):
    x = tf.constant(_values(4))
    parameters = [tf.constant(value) for value in parameters]
    traced = tf.function(function)
    fused = _gradients(traced, x, *parameters)
    with fused_kernels.fused_kernels_disabled():
        reference = _gradients(tf.function(function), x, *parameters)
    np.testing.assert_array_equal(fused[0].numpy(), reference[0].numpy(), err_msg=name)
    np.testing.assert_array_equal(fused[1].numpy(), reference[1].numpy(), err_msg=name)
    for fused_gradient, reference_gradient in zip(fused[2:], reference[2:]):
        np.testing.assert_allclose(fused_gradient.numpy(), reference_gradient.numpy(),
                                   rtol=1e-4, err_msg=name)
        assert float(reference_gradient) != 0.0


@pytest.mark.parametrize("narrow_range, low, high", [(False, 0.0, 2.05), (True, -1.3, 1.3),
                                                     (False, -0.7, 1.9)])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8, 16])
def test_fake_quantize_with_a_tensor_bit_width_is_tensorflows_kernel_bit_for_bit(
        bits, narrow_range, low, high, kernels):
    """The op that reads its bit-width from a tensor gives what TensorFlow's FakeQuant kernels
    give with the bit-width as an attribute: values and input gradients bit for bit."""
    x = tf.constant(_values(5))
    upstream = tf.constant(_values(6))
    low, high = tf.constant(low), tf.constant(high)

    def forward_and_gradients(quantize):
        with tf.GradientTape() as tape:
            tape.watch([x, low, high])
            y = quantize()
        return [y] + tape.gradient(y, [x, low, high], output_gradients=upstream)

    fused = forward_and_gradients(lambda: fused_kernels.fake_quantize(
        x, low, high, tf.constant(bits), narrow_range=narrow_range))
    reference = forward_and_gradients(lambda: tf.quantization.fake_quant_with_min_max_vars(
        x, low, high, num_bits=bits, narrow_range=narrow_range))
    for name, value, expected in zip(("y", "dx"), fused[:2], reference[:2]):
        np.testing.assert_array_equal(value.numpy(), expected.numpy(), err_msg=name)
    # The range gradients are sums: Eigen adds them in an order that depends on the vector
    # width it was compiled for (here -march=native, TensorFlow's wheel AVX), so they agree
    # to float rounding, checked against float64 sums over TensorFlow's own mask.
    inside = reference[1].numpy() != 0.0
    outside = upstream.numpy().astype(np.float64) * ~inside
    below = x.numpy() < (float(low) + float(high)) / 2  # outside and below: under the range
    for value, expected, terms in zip(fused[2:], reference[2:],
                                      (outside[below], outside[~below])):
        rounding = 1e-5 * np.abs(terms).sum()  # float32 sums of terms of both signs
        assert abs(float(value) - float(expected)) <= rounding
        assert abs(float(value) - terms.sum()) <= rounding
    # The grid has the bit-width's number of values (at 16 bits more than 8 bits' 256; the
    # 18,144 inputs do not reach all 65,536).
    values = len(np.unique(fused[0].numpy()))
    levels = 2**bits - (1 if narrow_range else 0)
    assert values == levels if bits <= 8 else 2**8 < values < levels
    assert float(fused[2]) != 0.0 or float(fused[3]) != 0.0


def test_fake_quantize_refuses_a_bit_width_outside_2_to_16(kernels):
    for bits in (1, 17):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"num_bits must be in \[2, 16\]"):
            fused_kernels.fake_quantize(tf.zeros((3,)), tf.constant(0.0), tf.constant(1.0),
                                        tf.constant(bits), narrow_range=False)


def test_pact_with_a_learned_bit_width_equals_the_switch_over_kernels(kernels):
    """AdaQAT's activation quantizer: a tensor bit-width takes the one op; without the kernels
    it takes the tf.switch_case over TensorFlow's kernels; both give the same values and
    gradients, for each bit-width the variable can hold."""
    x = tf.constant(_values(7))
    alpha = tf.constant(2.3)

    @tf.function
    def run(bits):
        with tf.GradientTape() as tape:
            tape.watch([x, alpha])
            y = ops.pact_quantize(x, alpha, bits, bit_range=(2, 8))
            loss = tf.reduce_sum(y * y)
        return [y] + tape.gradient(loss, [x, alpha])

    fused_ops = {op.type for op in run.get_concrete_function(
        tf.TensorSpec((), tf.int32)).graph.get_operations()}
    assert "TfadaqatFakeQuantize" in fused_ops and "Case" not in fused_ops
    for bits in range(2, 9):
        fused = run(tf.constant(bits))
        with fused_kernels.fused_kernels_disabled():
            reference = tf.function(run.python_function)(tf.constant(bits))
        for value, expected in zip(fused, reference):
            np.testing.assert_array_equal(value.numpy(), expected.numpy(), err_msg=str(bits))
        assert len(np.unique(fused[0].numpy())) == 2**bits


# Two LSQ quantizers in a row and the step's gradient: run in a process without a compiler and,
# for the expected values, in this one.
_TWO_LSQ_STEPS = textwrap.dedent("""
    import numpy as np
    from tfadaqat import ops
    from tfadaqat._compat import tf
    x = tf.constant(np.linspace(-2, 1, 101, dtype=np.float32))
    step = tf.constant(0.25)
    with tf.GradientTape() as tape:
        tape.watch(step)
        y = ops.lsq_quantize(x, step, 3, signed=True, fused=False)
        y = ops.lsq_quantize(y, step, 3, signed=True, fused=False)
        loss = tf.reduce_sum(y * x)
    gradient = float(tape.gradient(loss, step))
""")


def test_without_a_compiler_it_warns_once_and_uses_tensorflow_ops(tmp_path):
    script = ("import warnings\nwarnings.simplefilter('always')\n" + _TWO_LSQ_STEPS
              + "from tfadaqat import fused_kernels\n"
              + "print('REASON', fused_kernels.unavailable_reason())\n"
              + "print('VALUES', np.unique(y.numpy()).tolist())\n"
              + "print('GRADIENT', gradient)\n")
    environment = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"),
                       TFADAQAT_KERNEL_CACHE=str(tmp_path / "cache"))
    environment.pop("TFADAQAT_FUSED_KERNELS", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=environment, check=True, timeout=300)
    assert result.stderr.count("fused quantizer kernels are unavailable") == 1, result.stderr
    assert "no C++ compiler" in result.stdout
    values = [line for line in result.stdout.splitlines() if line.startswith("VALUES")][0]
    assert values == "VALUES [-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75]"
    here = {}
    exec(_TWO_LSQ_STEPS, here)  # the same gradient as this process (with its kernels) gives
    gradient = float(result.stdout.split("GRADIENT")[1])
    assert gradient == pytest.approx(here["gradient"], rel=1e-6) and abs(gradient) > 1.0
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.so"))


def test_a_failed_build_names_the_compilers_first_error(tmp_path, monkeypatch):
    compiler = tmp_path / "failing-compiler"
    compiler.write_text("#!/bin/sh\necho 'In file included from x.h:1,' >&2\n"
                        "echo 'quantizer.cc:7:3: error: no such thing' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    monkeypatch.setenv("TFADAQAT_KERNEL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError) as raised:
        fused_kernels.build()
    first_line = str(raised.value).splitlines()[0]
    assert first_line == "building quantizer.cc failed: quantizer.cc:7:3: error: no such thing"
    assert not list((tmp_path / "cache").glob("*.so"))


def test_a_build_writes_the_library_once_under_its_key(tmp_path, monkeypatch, kernels):
    monkeypatch.setenv("TFADAQAT_KERNEL_CACHE", str(tmp_path))
    path = fused_kernels.library_path()
    assert path.parent == tmp_path and not path.exists()
    built = fused_kernels.build()
    assert built == path and path.stat().st_size > 10_000
    modified = path.stat().st_mtime_ns
    assert fused_kernels.build() == path and path.stat().st_mtime_ns == modified
    assert [p.name for p in tmp_path.glob("*.so")] == [path.name]


@pytest.mark.parametrize("method", ["lsq", "dq", "adaqat"])
def test_training_with_and_without_kernels_ends_at_the_same_weights(method, classification_data,
                                                                    kernels):
    x, y = classification_data
    float_model = small_resnet()
    ends = []
    for disabled in (False, True):
        keras.utils.set_random_seed(0)
        model = tfadaqat.quantize_model(float_model, method, weight_bits=4, activation_bits=4)
        model.compile(optimizer=keras.optimizers.SGD(0.05),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        with (fused_kernels.fused_kernels_disabled() if disabled
              else contextlib.nullcontext()):
            model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        ends.append([(v.name, v.numpy()) for v in model.variables])
    kernels, reference = ends
    assert [name for name, _ in kernels] == [name for name, _ in reference]
    assert any(name.endswith(("_step:0", "_alpha:0")) for name, _ in kernels)  # quantizers'
    for (name, value), (_, reference_value) in zip(kernels, reference):
        np.testing.assert_allclose(value, reference_value, rtol=1e-3, atol=1e-5, err_msg=name)
    # Training moved the weights (the comparison is not of initial values).
    trained = [value for name, value in kernels if name == "kernel:0"]
    initial = [w.numpy() for w in float_model.weights if w.name.endswith("/kernel:0")]
    assert [t.shape for t in trained] == [i.shape for i in initial]
    # (10x the comparison's atol; the least-moved kernel moves 5e-4 to 1e-3 in two epochs)
    assert min(np.max(np.abs(t - i)) for t, i in zip(trained, initial)) > 1e-4
