"""Quickstart: quantize a small CNN with learned bit-widths and train it on real digits.

Uses scikit-learn's bundled digits (1,797 real 8x8 handwritten digits; nothing is downloaded),
with a fixed train/test split. Trains the float model, quantizes it with tfadaqat, trains the
quantized model with quantization-aware training, and prints test accuracy of both and
``tfadaqat.summary``, then exports the integer TFLite file and verifies it against Keras.

  python -m recipes.digits_demo [--method adaqat|dq|lsq] [--bits 4] [--epochs 15]
"""

from __future__ import annotations

import os
import time

from absl import app, flags

import tfadaqat
from tfadaqat._compat import keras
from models import small_cnn
from recipes.data import load_digits

FLAGS = flags.FLAGS
flags.DEFINE_enum("method", "adaqat", list(tfadaqat.METHODS), "Quantization method.")
flags.DEFINE_integer("bits", 4, "Initial weight and activation bit-width.", lower_bound=2,
                     upper_bound=8)
flags.DEFINE_integer("float_epochs", 15, "Epochs of float training.", lower_bound=1)
flags.DEFINE_integer("epochs", 15, "Epochs of quantization-aware training.", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "Batch size.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("out", "runs/digits_demo", "Folder for the exported .tflite file.")


def _compile(model, learning_rate):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def main(argv):
    del argv
    keras.utils.set_random_seed(FLAGS.seed)
    train_x, test_x, train_y, test_y = load_digits(seed=FLAGS.seed)
    print(f"digits: {len(train_x)} training and {len(test_x)} test images")

    start = time.time()
    float_model = _compile(small_cnn(num_classes=10), 3e-3)
    float_model.fit(train_x, train_y, batch_size=FLAGS.batch_size, epochs=FLAGS.float_epochs,
                    verbose=2)
    _, float_accuracy = float_model.evaluate(test_x, test_y, verbose=0)

    # At most 7 bits: AdaQAT's DoReFa paper grid needs integers up to +-255 at 8 bits, which
    # int8 storage cannot hold (export_tflite says so).
    qmodel = tfadaqat.quantize_model(float_model, FLAGS.method, weight_bits=FLAGS.bits,
                                     activation_bits=FLAGS.bits, max_bits=7)
    _compile(qmodel, 1e-3)
    qmodel.fit(train_x, train_y, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, verbose=2)
    _, quantized_accuracy = qmodel.evaluate(test_x, test_y, verbose=0)

    print()
    tfadaqat.summary(qmodel)
    print()
    print(f"test accuracy: float {float_accuracy:.4f}, {FLAGS.method} "
          f"({FLAGS.bits}-bit start) {quantized_accuracy:.4f}")

    os.makedirs(FLAGS.out, exist_ok=True)
    path = os.path.join(FLAGS.out, f"digits_{FLAGS.method}.tflite")
    report = tfadaqat.export_tflite(qmodel, path, verify_with=test_x)
    print(f"exported {path}: {report.file_bytes:,} bytes, integer kernels; on the "
          f"{report.examples} test images it agrees with Keras on top-1 for "
          f"{report.top1_agreement:.2%}, outputs within {report.max_output_difference:.0f} "
          f"quantization steps   [{time.time() - start:.0f} s]")


if __name__ == "__main__":
    app.run(main)
