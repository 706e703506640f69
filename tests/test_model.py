"""tfadaqat.model: first-batch initialisation without a per-step branch."""

import numpy as np

import tfadaqat
from tests.conftest import small_resnet
from tfadaqat._compat import keras


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


def test_initialize_quantizers_explicitly():
    qmodel = tfadaqat.quantize_model(small_resnet(), "dq", weight_bits=4, activation_bits=4)
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    qmodel.initialize_quantizers(x)
    assert qmodel.quantizers_initialized()
    weights = [w.numpy().copy() for w in qmodel.weights]
    qmodel.initialize_quantizers(x * 3)  # already initialised: nothing changes
    for before, after in zip(weights, qmodel.weights):
        np.testing.assert_array_equal(before, after.numpy())
