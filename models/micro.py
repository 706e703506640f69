"""Microcontroller-scale models of the kinds people deploy with TFLite Micro.

Four small Functional models, each exercising layer kinds the CIFAR/ImageNet models here do
not: a softmax classification head, depthwise-separable blocks on a spectrogram, Dense ->
BatchNormalization chains with a regression output, and transposed convolutions with
concatenated skips for segmentation. They are tfadaqat's own designs, shaped after the
usual tinyML benchmark tasks (image classification, keyword spotting, anomaly detection,
segmentation); widths are small on purpose.
"""

from __future__ import annotations

import tfadaqat  # noqa: F401  (legacy Keras before any Keras object is built)
from tfadaqat._compat import keras

layers = keras.layers


def micro_image_classifier(input_shape=(32, 32, 3), num_classes: int = 10,
                           name: str = "micro_image_classifier"):
    """Two conv blocks, max pooling, a hidden dense layer and a softmax head."""
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.MaxPooling2D(name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(32, activation="relu", name="hidden")(x)
    x = layers.Dropout(0.1, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def keyword_spotter(input_shape=(49, 10, 1), num_classes: int = 12, width: int = 32,
                    blocks: int = 3, name: str = "keyword_spotter"):
    """A depthwise-separable CNN on a (time, frequency) spectrogram with a softmax head."""
    inputs = keras.Input(input_shape, name="spectrogram")
    x = layers.Conv2D(width, (10, 4), strides=(2, 2), padding="same", use_bias=False,
                      name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for index in range(1, blocks + 1):
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False,
                                   name=f"block{index}_depthwise")(x)
        x = layers.BatchNormalization(name=f"block{index}_depthwise_bn")(x)
        x = layers.ReLU(name=f"block{index}_depthwise_relu")(x)
        x = layers.Conv2D(width, 1, use_bias=False, name=f"block{index}_pointwise")(x)
        x = layers.BatchNormalization(name=f"block{index}_pointwise_bn")(x)
        x = layers.ReLU(name=f"block{index}_pointwise_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def anomaly_autoencoder(input_dim: int = 128, hidden: int = 32, bottleneck: int = 8,
                        name: str = "anomaly_autoencoder"):
    """Dense -> BatchNormalization -> ReLU encoder and decoder; a linear reconstruction."""
    inputs = keras.Input((input_dim,), name="features")
    x = inputs
    for index, units in enumerate((hidden, hidden, bottleneck, hidden, hidden), start=1):
        x = layers.Dense(units, name=f"dense{index}")(x)
        x = layers.BatchNormalization(name=f"bn{index}")(x)
        x = layers.ReLU(name=f"relu{index}")(x)
    outputs = layers.Dense(input_dim, name="reconstruction")(x)
    return keras.Model(inputs, outputs, name=name)


def segmentation_net(input_shape=(32, 32, 3), num_classes: int = 3, width: int = 8,
                     name: str = "segmentation_net"):
    """A two-level encoder-decoder: Conv2DTranspose upsampling, concatenated skips and a
    per-pixel softmax."""
    inputs = keras.Input(input_shape, name="image")
    skip1 = layers.Conv2D(width, 3, padding="same", activation="relu", name="down1")(inputs)
    x = layers.MaxPooling2D(name="pool1")(skip1)
    skip2 = layers.Conv2D(2 * width, 3, padding="same", activation="relu", name="down2")(x)
    x = layers.MaxPooling2D(name="pool2")(skip2)
    x = layers.Conv2D(4 * width, 3, padding="same", activation="relu", name="bottom")(x)
    x = layers.Conv2DTranspose(2 * width, 2, strides=2, name="up2")(x)
    x = layers.Concatenate(name="skip2")([x, skip2])
    x = layers.Conv2D(2 * width, 3, padding="same", activation="relu", name="fuse2")(x)
    x = layers.Conv2DTranspose(width, 2, strides=2, name="up1")(x)
    x = layers.Concatenate(name="skip1")([x, skip1])
    x = layers.Conv2D(width, 3, padding="same", activation="relu", name="fuse1")(x)
    outputs = layers.Conv2D(num_classes, 1, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name=name)


MICRO_MODELS = {"micro_image_classifier": micro_image_classifier,
                "keyword_spotter": keyword_spotter,
                "anomaly_autoencoder": anomaly_autoencoder,
                "segmentation_net": segmentation_net}
