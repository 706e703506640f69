"""tfadaqat.model: first-batch initialisation without a per-step branch."""

import numpy as np
import pytest

import tfadaqat
from tests.conftest import small_resnet
from tfadaqat._compat import keras, tf
from tfadaqat.budget import budget_met
from tfadaqat.methods import dq as dq_method


def _initialized_flags(model):
    return [float(w.numpy()) for w in model.weights if w.name.split(":")[0].endswith("_initialized")]


def test_first_fit_step_initialises_then_switches_to_the_plain_step(classification_data):
    images, labels = classification_data
    qmodel = tfadaqat.quantize_model(small_resnet(), "lsq", weight_bits=4, activation_bits=4)
    qmodel.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert set(_initialized_flags(qmodel)) == {0.0}
    first = qmodel.make_train_function()
    assert getattr(first, "initializes_quantizers", False)
    qmodel.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    assert set(_initialized_flags(qmodel)) == {1.0}
    assert not getattr(qmodel.train_function, "initializes_quantizers", False)
    assert not getattr(qmodel.make_predict_function(), "initializes_quantizers", False)


def test_first_evaluate_initialises_like_an_explicit_call_on_its_first_batch():
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype("float32")
    y = np.zeros(8, np.int64)
    explicit = tfadaqat.quantize_model(small_resnet(), "dq", weight_bits=4, activation_bits=4)
    evaluated = tfadaqat.quantize_model(small_resnet(), "dq", weight_bits=4, activation_bits=4)
    evaluated.set_weights(explicit.get_weights())
    explicit.initialize_quantizers(x[:4])
    evaluated.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert not evaluated.quantizers_initialized()
    evaluated.evaluate(x, y, batch_size=4, verbose=0)  # initialised from x[:4], then plain
    assert evaluated.quantizers_initialized()
    assert not getattr(evaluated.test_function, "initializes_quantizers", False)
    for a, b in zip(explicit.weights, evaluated.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, err_msg=a.name)


def test_initialize_quantizers_explicitly():
    qmodel = tfadaqat.quantize_model(small_resnet(), "dq", weight_bits=4, activation_bits=4)
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    qmodel.initialize_quantizers(x)
    assert qmodel.quantizers_initialized()
    weights = [w.numpy().copy() for w in qmodel.weights]
    qmodel.initialize_quantizers(x * 3)  # already initialised: nothing changes
    for before, after in zip(weights, qmodel.weights):
        np.testing.assert_array_equal(before, after.numpy())


@pytest.mark.parametrize("steps_per_execution, python_calls", [(1, 2), (2, 6)])
def test_a_first_fit_traces_the_training_step_once(steps_per_execution, python_calls):
    # The first step initialises the quantizers. Run eagerly it calls train_step once in
    # Python, and the plain step is traced once: 2 calls for 4 steps (3 before). Traced, as
    # it still is with several steps per execution, the first execution costs two traces
    # before the plain one, and each trace of the steps_per_execution loop calls the body
    # twice: 2 x 2 + 2.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(hidden))
    qmodel = tfadaqat.quantize_model(keras.Model(inputs, outputs), "adaqat")
    qmodel.compile(keras.optimizers.SGD(0.01),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"], steps_per_execution=steps_per_execution)
    calls = []
    step = qmodel.train_step
    qmodel.train_step = lambda data: calls.append(1) or step(data)
    x = np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype("float32")
    history = qmodel.fit(x, np.arange(32) % 3, batch_size=8, epochs=1, verbose=0)
    assert qmodel.quantizers_initialized()
    assert np.isfinite(history.history["loss"][0])
    assert int(qmodel.optimizer.iterations.numpy()) == 4
    assert len(calls) == python_calls
    assert qmodel.train_function.experimental_get_tracing_count() == 1


def _budget_problem():
    rng = np.random.default_rng(1)
    return (rng.normal(size=(256, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 256))


def _dq_with_budget(budget):
    qmodel = tfadaqat.quantize_model(small_resnet(), "dq", weight_bits=8, activation_bits=8,
                                     budget=budget)
    qmodel.compile(keras.optimizers.Adam(1e-2),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return qmodel


def test_dq_meets_a_budget_within_a_few_epochs():
    keras.utils.set_random_seed(0)
    images, labels = _budget_problem()
    budget = tfadaqat.Budget.relative(weight_kb=0.5, activation_kb=0.5)
    qmodel = _dq_with_budget(budget)
    start = tfadaqat.cost(qmodel)
    history = qmodel.fit(images, labels, epochs=8, batch_size=32, verbose=0)
    final = tfadaqat.cost(qmodel)
    assert start.weight_kb > qmodel.budget.weight_kb  # the 8-bit start is over budget
    assert final.weight_kb <= 1.02 * qmodel.budget.weight_kb
    assert final.activation_kb <= 1.02 * qmodel.budget.activation_kb
    assert history.history["budget_penalty"][-1] == 0.0
    kernel_bits = {bits["kernel"] for bits in tfadaqat.bit_widths(qmodel).values()
                   if "kernel" in bits}
    assert max(kernel_bits) < 8


def test_budget_survives_save_and_load(tmp_path):
    images, labels = _budget_problem()
    qmodel = _dq_with_budget(tfadaqat.Budget(weight_kb=0.3))
    qmodel.fit(images[:64], labels[:64], epochs=1, batch_size=32, verbose=0)
    path = str(tmp_path / "budget.keras")
    qmodel.save(path)
    loaded = tfadaqat.load_model(path)
    assert loaded.budget == qmodel.budget
    assert loaded._tfadaqat_cost_weights == qmodel._tfadaqat_cost_weights
    history = loaded.fit(images[:64], labels[:64], epochs=1, batch_size=32, verbose=0)
    assert "budget_penalty" in history.history


def test_range_gradients_are_clipped_to_the_step_while_the_penalty_is_active():
    qmodel = _dq_with_budget(tfadaqat.Budget(weight_kb=0.3))
    qmodel.initialize_quantizers(_budget_problem()[0][:8])
    variables = qmodel.trainable_variables
    large = [tf.fill(tf.shape(v), 100.0) for v in variables]
    active = dq_method.clip_range_gradients(qmodel, variables, large, tf.constant(True))
    inactive = dq_method.clip_range_gradients(qmodel, variables, large, tf.constant(False))
    clipped_names = set()
    for variable, gradient, untouched in zip(variables, active, inactive):
        short = variable.name.split(":")[0].split("/")[-1]
        np.testing.assert_array_equal(untouched.numpy(), 100.0)
        if short.endswith("_step") or short.endswith("_q_max"):
            assert float(gradient) < 100.0
            clipped_names.add(short)
        else:
            np.testing.assert_array_equal(gradient.numpy(), 100.0)
    assert {"kernel_step", "kernel_q_max", "output_step", "output_q_max"} <= clipped_names


def _wider_range_loss(labels, outputs):
    """A loss that always asks for larger outputs, so DQ's ranges (and bit-widths) rise."""
    del labels
    return -tf.reduce_mean(tf.abs(outputs))


@pytest.mark.parametrize("project", [True, False])
def test_a_model_within_its_budget_stays_within_it(project, monkeypatch):
    # Issue 13: at the budget's edge the penalty switched off, the task loss raised a range,
    # a bit-width rose over the budget, the penalty lowered it again, and so on until the end
    # of training. With the projection, no step leaves the budget once it is met; without it
    # (the old train_step) this loss takes the model over within a few steps.
    if not project:
        monkeypatch.setattr(dq_method, "stay_within_budget", lambda *args: None)
    keras.utils.set_random_seed(0)
    images, labels = _budget_problem()
    qmodel = tfadaqat.quantize_model(small_resnet(), "dq", weight_bits=4, activation_bits=4)
    qmodel.initialize_quantizers(images[:32])
    start = tfadaqat.cost(qmodel)
    qmodel.set_budget(tfadaqat.Budget(weight_kb=start.weight_kb), {"weight_kb": 10.0})
    qmodel.compile(keras.optimizers.Adam(0.05), _wider_range_loss)
    weight_kb, kernels = [], []
    for step in range(6):
        qmodel.train_on_batch(images[32 * step:32 * (step + 1)], labels[:32])
        weight_kb.append(tfadaqat.cost(qmodel).weight_kb)
        kernels.append(next(w.numpy().copy() for w in qmodel.get_layer("quant_stem_conv").weights
                               if w.name.split(":")[0].split("/")[-1] == "kernel"))
    if project:
        assert max(weight_kb) <= start.weight_kb
        assert not np.array_equal(kernels[0], kernels[-1])  # the weights still train
    else:
        assert max(weight_kb) > start.weight_kb


def test_dq_pressure_grows_only_while_over_budget_and_is_saved(tmp_path):
    # The squared hinge's gradient vanishes at the budget's edge: the pressure multiplies it by
    # 1.01 after every step that ends over the budget, and leaves it alone within it.
    keras.utils.set_random_seed(0)
    images, labels = _budget_problem()
    qmodel = tfadaqat.quantize_model(small_resnet(), "dq", weight_bits=4, activation_bits=4)
    qmodel.initialize_quantizers(images[:32])
    start = tfadaqat.cost(qmodel)
    # Unreachable in a few steps of a tiny learning rate: over budget after every step.
    qmodel.set_budget(tfadaqat.Budget(weight_kb=0.5 * start.weight_kb), {"weight_kb": 10.0})
    qmodel.compile(keras.optimizers.Adam(1e-6), "sparse_categorical_crossentropy")
    assert float(qmodel.dq_pressure.numpy()) == 1.0
    for step in range(3):
        qmodel.train_on_batch(images[32 * step:32 * (step + 1)], labels[32 * step:32 * (step + 1)])
    assert float(qmodel.dq_pressure.numpy()) == pytest.approx(1.01 ** 3, rel=1e-6)
    # Within the budget, the pressure stays where it is.
    qmodel.set_budget(tfadaqat.Budget(weight_kb=2.0 * start.weight_kb), {"weight_kb": 10.0})
    qmodel.compile(keras.optimizers.Adam(1e-6), "sparse_categorical_crossentropy")
    qmodel.train_on_batch(images[:32], labels[:32])
    assert float(qmodel.dq_pressure.numpy()) == pytest.approx(1.01 ** 3, rel=1e-6)
    path = str(tmp_path / "model.keras")
    qmodel.save(path)
    assert float(tfadaqat.load_model(path).dq_pressure.numpy()) == pytest.approx(1.01 ** 3,
                                                                                 rel=1e-6)
    # Capped at 10^6: from just below the cap, two steps over the budget end exactly on it.
    qmodel.set_budget(tfadaqat.Budget(weight_kb=0.5 * start.weight_kb), {"weight_kb": 10.0})
    qmodel.compile(keras.optimizers.Adam(1e-6), "sparse_categorical_crossentropy")
    qmodel.dq_pressure.assign(0.995e6)
    for step in range(2):
        qmodel.train_on_batch(images[32 * step:32 * (step + 1)], labels[32 * step:32 * (step + 1)])
    assert float(qmodel.dq_pressure.numpy()) == 1e6
    # Methods without DQ quantizers have no pressure.
    assert tfadaqat.quantize_model(small_resnet(), "lsq").dq_pressure is None


def test_cost_weight_becomes_lambda_over_the_budget_squared():
    # quantize_model(budget=..., cost_weight=c): lambda_j = c / budget_j^2 for each bounded
    # quantity, so the penalty is c * (cost / budget - 1)^2 over the budget, whatever the unit.
    budget = tfadaqat.Budget(bitops=2.0e6, weight_kb=3.0)
    qmodel = tfadaqat.quantize_model(small_resnet(), "dq", budget=budget, cost_weight=10.0)
    assert qmodel._tfadaqat_cost_weights == {"bitops": pytest.approx(10.0 / 4.0e12),
                                             "weight_kb": pytest.approx(10.0 / 9.0)}
    sizes = {"bitops": tf.constant(3.0e6), "weight_kb": tf.constant(1.5)}
    penalty = float(tfadaqat.budget_penalty(sizes, qmodel.budget,
                                            qmodel._tfadaqat_cost_weights))
    assert penalty == pytest.approx(10.0 * (3.0 / 2.0 - 1.0) ** 2)
    # A dict is taken as the lambdas themselves.
    qmodel = tfadaqat.quantize_model(small_resnet(), "dq", budget=budget,
                                     cost_weight={"bitops": 1e-9, "weight_kb": 0.5})
    assert qmodel._tfadaqat_cost_weights == {"bitops": 1e-9, "weight_kb": 0.5}


def test_budget_met_compares_every_bounded_quantity():
    budget = tfadaqat.Budget(bitops=100.0, weight_kb=2.0)
    sizes = {"bitops": tf.constant(100.0), "weight_kb": tf.constant(2.0),
             "activation_kb": tf.constant(1e9)}  # unbounded: ignored
    assert bool(budget_met(sizes, budget))
    assert not bool(budget_met({**sizes, "weight_kb": tf.constant(2.001)}, budget))
    assert not bool(budget_met({**sizes, "bitops": tf.constant(101.0)}, budget))
    with pytest.raises(ValueError, match="absolute budget"):
        budget_met(sizes, tfadaqat.Budget.relative(bitops=0.5))


@pytest.mark.parametrize("method, budget, cost_weight, error, message", [
    ("lsq", tfadaqat.Budget(bitops=1e9), 1.0, ValueError, "fixed bit-widths"),
    ("adaqat", tfadaqat.Budget.relative(bitops=0.01), 1.0, ValueError,
     "smallest reachable cost"),
    ("dq", {"bitops": 1e9}, 1.0, TypeError, "budget must be a tfadaqat.Budget"),
    ("dq", tfadaqat.Budget(bitops=1e9), -1.0, ValueError, "cost_weight must be a non-negative"),
    ("dq", tfadaqat.Budget(bitops=1e9), {"flops": 1.0}, ValueError, "cost_weight keys"),
    ("dq", tfadaqat.Budget.relative(bitops=0.01), 1.0, ValueError, "smallest reachable cost"),
])
def test_bad_budget_arguments(method, budget, cost_weight, error, message):
    with pytest.raises(error, match=message):
        tfadaqat.quantize_model(small_resnet(), method, budget=budget, cost_weight=cost_weight)


@pytest.mark.parametrize("kwargs", [{"learn_bits": False}, {"adaqat_rule": None}])
def test_adaqat_budget_needs_learned_bits(kwargs):
    with pytest.raises(ValueError, match="needs learned bit-widths"):
        tfadaqat.quantize_model(small_resnet(), "adaqat", budget=tfadaqat.Budget(bitops=1e9),
                                **kwargs)
