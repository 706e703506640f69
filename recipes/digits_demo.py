"""Quickstart: quantize a small CNN with learned bit-widths and train it on real digits.

Uses scikit-learn's bundled digits (1,797 real 8x8 handwritten digits; nothing is downloaded),
with a fixed train/test split. Trains the float model, quantizes it with tfadaqat, trains the
quantized model with quantization-aware training, and prints test accuracy of both and
``tfadaqat.summary``.

  python -m recipes.digits_demo [--method adaqat|dq|lsq] [--bits 4] [--epochs 15]
"""

from __future__ import annotations

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

    qmodel = tfadaqat.quantize_model(float_model, FLAGS.method, weight_bits=FLAGS.bits,
                                     activation_bits=FLAGS.bits)
    _compile(qmodel, 1e-3)
    qmodel.fit(train_x, train_y, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, verbose=2)
    _, quantized_accuracy = qmodel.evaluate(test_x, test_y, verbose=0)

    print()
    tfadaqat.summary(qmodel)
    print()
    print(f"test accuracy: float {float_accuracy:.4f}, {FLAGS.method} "
          f"({FLAGS.bits}-bit start) {quantized_accuracy:.4f}   "
          f"[{time.time() - start:.0f} s]")


if __name__ == "__main__":
    app.run(main)
