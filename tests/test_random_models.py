"""Property: any small Functional model of the supported kinds goes through the whole pipeline.

Hypothesis draws a model description (stacks of conv/depthwise/BatchNormalization/ReLU/pooling
blocks, two-branch blocks joined by Add or Concatenate, now and then a layer without an integer
kind) and a method; the model is quantized, trained one step, saved and loaded, and exported
with verification. Each draw must end either in a verified integer file, or in a ValueError
that names a layer of the model, never in any other exception.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import tfadaqat
from tfadaqat._compat import keras

pytestmark = pytest.mark.slow  # multi-minute: outside the fast subset (setup.cfg)

layers = keras.layers
SIZE = 8

_conv = st.fixed_dictionaries({"kind": st.just("conv"), "filters": st.sampled_from([2, 4]),
                               "kernel": st.sampled_from([1, 3]),
                               "activation": st.sampled_from([None, "relu"]),
                               "batch_norm": st.booleans()})
_block = st.one_of(
    _conv,
    st.fixed_dictionaries({"kind": st.just("depthwise"), "batch_norm": st.booleans()}),
    st.fixed_dictionaries({"kind": st.just("batch_norm_relu")}),
    st.fixed_dictionaries({"kind": st.just("pool"), "type": st.sampled_from(["max", "avg"])}),
    st.fixed_dictionaries({"kind": st.just("branch"), "join": st.sampled_from(["add", "concat"]),
                           "left": _conv, "right": _conv}),
    st.fixed_dictionaries({"kind": st.just("leaky_relu")}),  # no integer kind: refused by name
)
_description = st.fixed_dictionaries({
    "channels": st.sampled_from([1, 3]),
    "blocks": st.lists(_block, min_size=1, max_size=4),
    "head": st.sampled_from(["gap", "flatten"]),
    "softmax": st.booleans(),
    "method": st.sampled_from(["adaqat", "dq", "lsq"]),
})


def _conv_layers(x, spec, name):
    x = layers.Conv2D(spec["filters"], spec["kernel"], padding="same", name=name,
                      activation=spec["activation"])(x)
    if spec["batch_norm"]:
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return x


def build(description):
    """The Functional model of a drawn `description` (names are positional: b<i>_...)."""
    inputs = keras.Input((SIZE, SIZE, description["channels"]), name="image")
    x, size = inputs, SIZE
    for index, block in enumerate(description["blocks"]):
        name, kind = f"b{index}", block["kind"]
        if kind == "conv":
            x = _conv_layers(x, block, name)
        elif kind == "depthwise":
            x = layers.DepthwiseConv2D(3, padding="same", name=name)(x)
            if block["batch_norm"]:
                x = layers.BatchNormalization(name=f"{name}_bn")(x)
        elif kind == "batch_norm_relu":
            x = layers.ReLU(name=f"{name}_relu")(layers.BatchNormalization(name=f"{name}_bn")(x))
        elif kind == "pool" and size >= 4:
            pool = layers.MaxPooling2D if block["type"] == "max" else layers.AveragePooling2D
            x, size = pool(2, name=name)(x), size // 2
        elif kind == "branch":
            right = dict(block["right"], filters=block["left"]["filters"])  # Add: same shape
            left = _conv_layers(x, block["left"], f"{name}_left")
            right = _conv_layers(x, right, f"{name}_right")
            join = layers.Add if block["join"] == "add" else layers.Concatenate
            x = join(name=f"{name}_{block['join']}")([left, right])
        elif kind == "leaky_relu":
            x = layers.LeakyReLU(0.1, name=f"{name}_leaky")(x)
    if description["head"] == "gap":
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    else:
        x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(3, activation="softmax" if description["softmax"] else None,
                           name="head")(x)
    return keras.Model(inputs, outputs)


@settings(max_examples=8, deadline=None, derandomize=True, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(description=_description)
def test_any_small_model_exports_or_is_refused_by_layer_name(description, tmp_path):
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = build(description)
    names = [layer.name for layer in model.layers]
    rng = np.random.default_rng(0)
    x = rng.random((16, SIZE, SIZE, description["channels"]), np.float32)
    y = rng.integers(0, 3, 16)
    path = os.path.join(tmp_path, f"model_{abs(hash(repr(description)))}.tflite")
    try:
        qmodel = tfadaqat.quantize_model(model, description["method"])
        qmodel.compile(keras.optimizers.Adam(1e-3),
                       keras.losses.SparseCategoricalCrossentropy(
                           from_logits=not description["softmax"]))
        qmodel.fit(x, y, batch_size=16, verbose=0)
        saved = os.path.join(tmp_path, "model.keras")
        qmodel.save(saved)
        loaded = tfadaqat.load_model(saved)
        np.testing.assert_array_equal(loaded.predict(x, verbose=0), qmodel.predict(x, verbose=0))
        report = tfadaqat.export_tflite(loaded, path, verify_with=x)
    except ValueError as error:
        assert any(name in str(error) for name in names), (str(error), names)
        assert not os.path.exists(path)  # a refused export leaves no file
        assert any(block["kind"] == "leaky_relu" for block in description["blocks"]), (
            f"a model of supported kinds only was refused: {error}")
        return
    assert not any(block["kind"] == "leaky_relu" for block in description["blocks"])
    assert os.path.getsize(path) == report.file_bytes > 0
    assert report.float_ops == [] and report.examples == len(x)
    # Every verification: integer file vs Keras on the same inputs, in output steps.
    assert report.within_two_steps >= 0.95, report
