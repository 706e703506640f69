"""Shared test harness: quiet TensorFlow, seeded RNGs, small float models, mock IDX files.

A new layer type is tested by adding one entry to ``LAYER_CASES`` (a factory and an input
shape); tests/test_quantize.py runs float equivalence, save/load and training checks on each.
"""

import gzip
import itertools
import os
import random
import struct

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfadaqat  # noqa: E402,F401  (legacy Keras before any Keras object)
from tfadaqat._compat import keras, tf  # noqa: E402

layers = keras.layers


@pytest.fixture(autouse=True)
def _seeded():
    random.seed(0)
    np.random.seed(0)
    tf.random.set_seed(0)
    keras.backend.clear_session()
    yield


def single_layer_model(factory, input_shape, inputs=1):
    """A Functional model applying one layer (or a small fixed block) to `inputs` tensors."""
    model_inputs = [keras.Input(input_shape, name=f"x{i}") for i in range(inputs)]
    outputs = factory(model_inputs if inputs > 1 else model_inputs[0])
    return keras.Model(model_inputs if inputs > 1 else model_inputs[0], outputs)


def _conv_bn_relu(x):
    x = layers.Conv2D(4, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def _residual(x):
    y = layers.Conv2D(3, 3, padding="same")(x)
    y = layers.Add()([x, y])
    return layers.ReLU()(y)


LAYER_CASES = {
    "conv2d": (lambda x: layers.Conv2D(4, 3, padding="same")(x), (6, 6, 3), 1),
    "conv2d_relu": (lambda x: layers.Conv2D(4, 3, activation="relu")(x), (6, 6, 3), 1),
    "depthwise_conv2d": (lambda x: layers.DepthwiseConv2D(3, padding="same")(x), (6, 6, 3), 1),
    "dense": (lambda x: layers.Dense(5)(x), (7,), 1),
    "conv_bn_relu": (_conv_bn_relu, (6, 6, 3), 1),
    "add": (lambda xs: layers.Add()(xs), (4, 4, 2), 2),
    "concatenate": (lambda xs: layers.Concatenate()(xs), (4, 4, 2), 2),
    "average_pooling2d": (lambda x: layers.AveragePooling2D()(x), (4, 4, 2), 1),
    "global_average_pooling2d": (lambda x: layers.GlobalAveragePooling2D()(x), (4, 4, 2), 1),
    "max_pooling_flatten_dense": (
        lambda x: layers.Dense(3)(layers.Flatten()(layers.MaxPooling2D()(x))), (4, 4, 2), 1),
    "residual": (_residual, (6, 6, 3), 1),
}


def layer_case_model(name):
    factory, shape, inputs = LAYER_CASES[name]
    return single_layer_model(factory, shape, inputs)


def case_inputs(model, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    data = [rng.normal(size=(batch,) + tuple(t.shape[1:])).astype("float32")
            for t in model.inputs]
    return data if len(data) > 1 else data[0]


def small_resnet(num_classes=3, input_shape=(8, 8, 1)):
    """A two-block ResNet-style Functional model with Add, BN, DepthwiseConv2D and pooling."""
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    y = layers.Conv2D(8, 3, padding="same", use_bias=False, name="block_conv")(x)
    y = layers.BatchNormalization(name="block_bn")(y)
    x = layers.ReLU(name="block_out")(layers.Add(name="block_add")([x, y]))
    x = layers.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="small_resnet")


def mlp():
    return keras.Sequential([keras.Input((6,)), layers.Dense(8, activation="relu", name="hidden"),
                             layers.Dropout(0.1), layers.Dense(3, name="out")], name="mlp")


@pytest.fixture
def classification_data():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(32, 8, 8, 1)).astype("float32")
    labels = rng.integers(0, 3, size=32)
    return images, labels


def all_configs(space):
    """Every sub-network config of an OQAT search space, by brute force (an oracle for
    ``SearchSpace.size`` and the evolutionary search)."""
    from tfadaqat.oqat import SubnetConfig

    per_stage = []
    for depth in space.depths:
        for kernels in itertools.product(space.kernel_sizes, repeat=depth):
            for ratios in itertools.product(space.expand_ratios, repeat=depth):
                per_stage.append((depth, kernels, ratios))
    for stages in itertools.product(per_stage, repeat=space.stages):
        yield SubnetConfig(*(tuple(part) for part in zip(*stages)))


def write_idx(path, array, gzipped=False):
    """`array` as a uint8 IDX file at `path` (+ ".gz" when `gzipped`), written from the
    format's definition rather than with the reader under test; returns the path."""
    array = np.asarray(array, np.uint8)
    content = (bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
               + array.tobytes())
    path = os.fspath(path) + (".gz" if gzipped else "")
    with open(path, "wb") as handle:
        handle.write(gzip.compress(content) if gzipped else content)
    return path


def write_fashion_mnist(folder, train_examples, test_examples, gzipped=False, seed=0):
    """Random Fashion-MNIST-shaped IDX files in `folder` (made if needed).

    Returns:
      ``{"train": (images, labels), "test": (images, labels)}``, uint8 arrays as written; the
      first image of each part is black and the second white, so 0 and 255 both occur.
    """
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for part, count, prefix in (("train", train_examples, "train"),
                                ("test", test_examples, "t10k")):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        images[:1], images[1:2] = 0, 255
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), images, gzipped)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), labels, gzipped)
        written[part] = (images, labels)
    return written
