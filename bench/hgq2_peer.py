"""HGQ2 (PyPI ``hgq2``, Keras 3) on bench/budget's Fashion-MNIST model: the learned-bits peer.

HGQ2 needs Keras 3, which cannot share a process with tf-keras, so bench/budget.py runs this
file with the Python of a separate virtual environment (``make .venv-hgq2``) and passes
everything through files: an ``.npz`` with the training and test images and the float model's
weights with its BatchNormalizations folded into the convolutions (so HGQ2 starts from the
same function as every tfadaqat row), and a JSON of settings. It writes one JSON object per
run (an EBOPs penalty and the bit-width HGQ2 starts from): test accuracy, seconds per epoch,
and the per-layer means of HGQ2's per-element bit-widths (weights and layer inputs), from
which bench/budget prices BitOPs with ``tfadaqat.cost`` like every other row.

The architecture is ``models.small_cnn`` with each Conv+BN folded into one convolution with a
bias: stem conv, a residual block of two convs, a strided conv, global average pooling and the
classifier; every conv, the add and the classifier quantize their inputs (HGQ2's input
quantizers) and kernels. This file imports nothing from tfadaqat (tf-keras cannot load here).

    .venv-hgq2/bin/python bench/hgq2_peer.py --data DATA.npz --settings SETTINGS.json \
        --out ROWS.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

# The names of models.small_cnn's quantized layers, in order, and their input layers.
CONVOLUTIONS = ("stem_conv", "block_conv1", "block_conv2", "down_conv")


def build(keras, hgq, image_shape, width: int, beta: float, initial_bits: int):
    """small_cnn with folded BatchNormalization, as HGQ2 layers (names as in small_cnn).

    Kernels start at `initial_bits` (HGQ2's ``kbi`` weights: ``b0``), layer inputs at
    `initial_bits` with 2 integer bits (its ``kif`` data lanes: ``i0 = 2``, ``f0 =
    initial_bits - 2``, at least 0); HGQ2 learns every element's bits from there.
    """
    layers = keras.layers
    with hgq.config.QuantizerConfigScope(place="weight", b0=initial_bits), \
            hgq.config.QuantizerConfigScope(place="datalane", i0=2,
                                            f0=max(initial_bits - 2, 0)), \
            hgq.config.LayerConfigScope(beta0=beta, enable_ebops=True):
        inputs = keras.Input(image_shape, name="image")
        x = hgq.layers.QConv2D(width, 3, padding="same", name="stem_conv")(inputs)
        x = layers.ReLU(name="stem_relu")(x)
        y = hgq.layers.QConv2D(width, 3, padding="same", name="block_conv1")(x)
        y = layers.ReLU(name="block_relu1")(y)
        y = hgq.layers.QConv2D(width, 3, padding="same", name="block_conv2")(y)
        x = layers.ReLU(name="block_out")(hgq.layers.QAdd(name="block_add")([x, y]))
        x = hgq.layers.QConv2D(2 * width, 3, strides=2, padding="same", name="down_conv")(x)
        x = layers.ReLU(name="down_relu")(x)
        x = layers.GlobalAveragePooling2D(name="pool")(x)
        outputs = hgq.layers.QDense(10, name="logits")(x)
    return keras.Model(inputs, outputs)


def mean_bits(quantizer, shape) -> float:
    """The mean bit-width of a quantizer's per-element bits over a tensor of `shape`."""
    return float(np.mean(np.asarray(quantizer.bits_(shape))))


def layer_bits(model) -> dict:
    """``{layer: {"kernel": mean weight bits, "input": mean input bits}}``."""
    result = {}
    for name in CONVOLUTIONS + ("logits",):
        layer = model.get_layer(name)
        input_shape = (1,) + tuple(int(d) for d in layer.input.shape[1:])
        result[name] = {"kernel": mean_bits(layer.kq, tuple(layer.kernel.shape)),
                        "input": mean_bits(layer.iq, input_shape)}
    return result


def run(arguments) -> list:
    import keras
    import hgq

    data = np.load(arguments.data)
    with open(arguments.settings) as handle:
        settings = json.load(handle)
    train_x, train_y = data["train_x"], data["train_y"]
    test_x, test_y = data["test_x"], data["test_y"]
    rows = []
    for run_settings in settings["runs"]:
        beta, initial_bits = run_settings["beta"], run_settings["initial_bits"]
        keras.utils.set_random_seed(settings["seed"])
        model = build(keras, hgq, train_x.shape[1:], settings["width"], beta, initial_bits)
        for name in CONVOLUTIONS + ("logits",):
            # set_weights would also take every quantizer variable: assign the two directly.
            layer = model.get_layer(name)
            layer._kernel.assign(data[f"{name}/kernel"])
            layer.bias.assign(data[f"{name}/bias"])
        steps = -(-len(train_x) // settings["batch_size"])
        schedule = keras.optimizers.schedules.CosineDecay(settings["learning_rate"],
                                                          settings["epochs"] * steps)
        model.compile(optimizer=keras.optimizers.Adam(schedule),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        wall_start, cpu_start = time.perf_counter(), _cpu_seconds()
        model.fit(train_x, train_y, batch_size=settings["batch_size"],
                  epochs=settings["epochs"], verbose=0)
        wall, cpu = time.perf_counter() - wall_start, _cpu_seconds() - cpu_start
        # HGQ2's bit-widths of the input quantizers are fixed by calibration on data seen in
        # training; evaluate in inference mode, as every other row.
        accuracy = float(model.evaluate(test_x, test_y, batch_size=500, verbose=0)[1])
        rows.append({"beta": beta, "initial_bits": initial_bits, "accuracy": accuracy, "bits": layer_bits(model),
                     "wall_s_per_epoch": wall / settings["epochs"],
                     "cpu_s_per_epoch": cpu / settings["epochs"]})
        print(f"hgq2 beta {beta:g} from {initial_bits} bits: accuracy {accuracy:.4f}",
              file=sys.stderr, flush=True)
    return rows


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="npz written by bench/budget.py")
    parser.add_argument("--settings", required=True, help="JSON written by bench/budget.py")
    parser.add_argument("--out", required=True, help="JSON file for the rows")
    arguments = parser.parse_args()
    rows = run(arguments)
    temporary = arguments.out + ".partial"
    with open(temporary, "w") as handle:
        json.dump(rows, handle)
    os.replace(temporary, arguments.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
