"""The settings every recipe config starts from, and the papers' settings built on them.

A config is an ``ml_collections.ConfigDict``; every field can be overridden on the command line
(``--config.epochs=2``, ``--config.budget.bitops=0.125``). The fields, in groups:

* What to train: ``model`` (see ``models.MODEL_NAMES``), ``tiny`` (the small variant, for tests),
  ``bn_momentum``, ``dataset`` (see ``recipes.data.DATASET_NAMES``), ``data_dir`` (tfds folder;
  "" = tfds' default; for fashion_mnist the folder of its IDX files, "" =
  ``$TFADAQAT_FASHION_MNIST_DIR`` or Debian's, see ``recipes.idx.fashion_mnist_dir``),
  ``image_size`` (0 = the data set's own).
* How to quantize: ``method`` (adaqat, dq, lsq), ``weight_bits`` and ``activation_bits`` (the
  start, fixed for lsq), ``min_bits``, ``max_bits``, ``grid`` (adaqat weights: "dorefa" or
  "symmetric"), ``cost_weight`` (dq), ``adaqat`` (the rule's settings, see
  ``tfadaqat.AdaQATRule``) and ``budget``: ``units`` "relative" (fractions of the model at
  uniform 8 bits, in (0, 1]) or "absolute" (BitOPs, KB) and the bounds ``bitops``,
  ``weight_kb``, ``activation_kb`` (0 = unbounded).
* Where the float weights come from: ``init_from`` (a float ``.keras`` model of the same
  architecture), else ``float_epochs`` of float training first (0 = quantize the fresh
  initialisation, i.e. from scratch).
* Optimisation: ``batch_size`` (global, over all replicas), ``learning_rate`` (for
  ``base_batch_size``; the recipe uses ``learning_rate x batch_size / base_batch_size``, the
  linear scaling rule), ``optimizer`` ("sgd" with ``momentum``, or "adam"), ``weight_decay``
  (decoupled, on conv and dense kernels only), ``schedule`` ("step": multiplied by
  ``decay_factor`` at each epoch in ``decay_epochs``; "cosine"; "constant"), ``warmup_epochs``,
  ``epochs``, and the same for the float stage (``float_learning_rate``, ``float_epochs``).
* Run: ``seed``, ``steps_per_epoch`` and ``eval_steps`` (0 = whole split), ``keep_checkpoints``,
  ``export`` (write and verify the ``.tflite``), ``verify_examples``,
  ``reestimate_batch_norm_batches`` (after quantization-aware training, BatchNormalization
  statistics re-estimated on that many training batches; 0 = off).
"""

from __future__ import annotations

import dataclasses

import ml_collections

import tfadaqat


def base_config() -> ml_collections.ConfigDict:
    """Every field with its default; the papers' configs change some of them."""
    config = ml_collections.ConfigDict()
    config.model = "resnet20"
    config.tiny = False
    config.bn_momentum = 0.99
    config.dataset = "cifar10"
    config.data_dir = ""
    config.image_size = 0

    config.method = "adaqat"
    config.weight_bits = 8
    config.activation_bits = 8
    config.min_bits = 2
    config.max_bits = 8
    config.grid = "symmetric"  # int8 storage holds AdaQAT's symmetric grid at every width
    config.cost_weight = 10.0
    config.adaqat = ml_collections.ConfigDict(dataclasses.asdict(tfadaqat.AdaQATRule()))
    config.budget = ml_collections.ConfigDict(dict(
        units="relative", bitops=0.0, weight_kb=0.0, activation_kb=0.0))

    config.init_from = ""
    config.float_epochs = 0
    config.float_learning_rate = 0.1

    config.optimizer = "sgd"
    config.momentum = 0.9
    config.batch_size = 128
    config.base_batch_size = 128
    config.learning_rate = 0.01
    config.weight_decay = 2e-4
    config.schedule = "step"
    config.decay_epochs = (80, 120)
    config.decay_factor = 0.1
    config.warmup_epochs = 0
    config.epochs = 160

    config.seed = 0
    config.steps_per_epoch = 0
    config.eval_steps = 0
    config.keep_checkpoints = 3
    config.export = True
    # Where the exported file runs (tfadaqat.export.TARGETS): "litert" (LiteRT/XNNPACK: int8
    # kernels, which XNNPACK runs fastest) or "tflm" (TensorFlow Lite Micro: kernels of <= 4
    # bits packed as int4, a smaller file at the same speed there).
    config.export_target = "litert"
    config.verify_examples = 1000
    # After quantization-aware training: BatchNormalization statistics re-estimated with the
    # trained grids on this many training batches (tfadaqat.reestimate_batch_norm; 0 = off).
    config.reestimate_batch_norm_batches = 0
    return config


def resnet20_cifar10(method: str) -> ml_collections.ConfigDict:
    """ResNet20 on CIFAR-10 as the AdaQAT/DQ papers train it.

    SGD momentum 0.9, batch 128, weight decay 2e-4, 160 epochs, learning rate divided by 10 at
    epochs 80 and 120; pad-and-crop and flip augmentation. From scratch by default (learning
    rate 0.1); with ``init_from`` a float checkpoint, fine-tune at ``--config.learning_rate``.
    """
    config = base_config()
    config.method = method
    config.learning_rate = 0.1
    if method == "lsq":
        config.weight_bits = config.activation_bits = 4
    return config


def resnet18_imagenet(method: str) -> ml_collections.ConfigDict:
    """ResNet18 on ImageNet: SGD momentum 0.9, batch 256, weight decay 1e-4, 90 epochs, learning
    rate 0.1 divided by 10 at epochs 30, 60 and 80; random-resized-crop and flip at 224."""
    config = base_config()
    config.model = "resnet18"
    config.dataset = "imagenet2012"
    config.method = method
    config.batch_size = config.base_batch_size = 256
    config.learning_rate = 0.1
    config.weight_decay = 1e-4
    config.epochs = 90
    config.decay_epochs = (30, 60, 80)
    config.verify_examples = 500
    if method == "lsq":
        config.weight_bits = config.activation_bits = 4
    return config


def resnet20_fashion_mnist(method: str) -> ml_collections.ConfigDict:
    """ResNet20 on Fashion-MNIST, sized for a 2-core CPU: a float stage, then quantization.

    15 float epochs (SGD momentum 0.9, batch 128, learning rate 0.1, cosine), then 15 epochs
    of quantization-aware fine-tuning from those weights at learning rate 0.01 (cosine);
    weight decay 2e-4, pad-and-crop by 2 pixels and flip. AdaQAT and DQ start from 8 bits
    under 1/8 of the 8-bit model's BitOPs; LSQ trains uniform 4 bits. BatchNormalization
    statistics are re-estimated on 50 training batches after quantization-aware training.
    Trains on the 55,000 images of the ``"train"`` split and evaluates on the 10,000 of
    ``"test"``.
    """
    config = base_config()
    config.dataset = "fashion_mnist"
    config.method = method
    # Epochs for 2 CPU cores: an epoch is 429 steps of 128, estimated from bench.step_time
    # (132 ms per float step at 32x32x3, quantized steps 1.1-1.9x) at about 1 minute float and
    # 1.5-2 minutes quantized, so 15 + 15 epochs take about 40 minutes (not timed here).
    config.float_epochs = 15
    config.float_learning_rate = 0.1
    config.learning_rate = 0.01  # fine-tuning the float weights, not training from scratch
    config.schedule = "cosine"
    config.epochs = 15
    config.reestimate_batch_norm_batches = 50  # as bench/budget's Fashion-MNIST rows
    if method == "lsq":
        config.weight_bits = config.activation_bits = 4
    else:
        config.budget.bitops = 0.125
    return config
