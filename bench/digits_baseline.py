"""The fixed-bit baseline both bench/budget and bench/oqat compare against.

``models.small_cnn`` (a small ResNet-style CNN) on digits upsampled to 16x16, trained in float
with Adam and a cosine decay, then fine-tuned from those weights with uniform fixed bits (LSQ)
for every weight and activation.
"""

from __future__ import annotations

import tfadaqat
from tfadaqat._compat import keras
from models import small_cnn


def compile_cosine(model, learning_rate: float, epochs: int, steps_per_epoch: int):
    """Compiles `model` with Adam, a cosine decay of `learning_rate` to 0 over the run and
    sparse categorical cross-entropy on logits; returns it."""
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * steps_per_epoch)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def steps_per_epoch(images, batch_size: int) -> int:
    return -(-len(images) // batch_size)


def train_float(data, *, epochs: int, batch_size: int, seed: int):
    """The float ``small_cnn`` trained on ``data = (train_x, test_x, train_y, test_y)``."""
    train_x, _, train_y, _ = data
    keras.utils.set_random_seed(seed)
    model = compile_cosine(small_cnn(input_shape=train_x.shape[1:], num_classes=10), 3e-3,
                           epochs, steps_per_epoch(train_x, batch_size))
    model.fit(train_x, train_y, batch_size=batch_size, epochs=epochs, verbose=0)
    return model


def train_uniform(float_model, data, bits: int, *, epochs: int, batch_size: int, seed: int):
    """`float_model` fine-tuned with LSQ at `bits` for every weight and activation; returns
    the quantized model and its test accuracy."""
    train_x, test_x, train_y, test_y = data
    keras.utils.set_random_seed(seed)
    qmodel = tfadaqat.quantize_model(float_model, "lsq", weight_bits=bits, activation_bits=bits)
    compile_cosine(qmodel, 1e-3, epochs, steps_per_epoch(train_x, batch_size))
    qmodel.fit(train_x, train_y, batch_size=batch_size, epochs=epochs, verbose=0)
    _, accuracy = qmodel.evaluate(test_x, test_y, verbose=0)
    return qmodel, float(accuracy)
