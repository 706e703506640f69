"""Input pipelines of the recipes: digits (bundled), Fashion-MNIST (IDX files), CIFAR-10 and
ImageNet (TensorFlow Datasets).

Every pipeline yields batches of ``(images, labels)``: float32 images of shape
``(batch, height, width, channels)`` and int32 labels. :func:`dataset_spec` states what a data
set looks like (input shape, classes, split sizes, normalization) without reading it, so a
model can be built before any data is touched; :func:`build_dataset` builds the
``tf.data.Dataset``.

* ``digits``: scikit-learn's bundled digits (:func:`load_digits`), 8x8x1 images in [0, 1] (or
  upsampled by an integer factor), no augmentation: a one-pixel shift of an 8x8 digit is
  already a large distortion. Needs no download.
* ``fashion_mnist``: Zalando's 28x28x1 grey images of 10 kinds of clothing, in [0, 1] (not
  standardized), read from the four IDX files of Debian's ``dataset-fashion-mnist`` (see
  :mod:`recipes.idx` for the format and where they are looked for). Its splits:
  ``"train_full"``, the 60,000 images of the training file; ``"validation"``, the last
  ``validation_size`` of them (5,000 unless :func:`dataset_spec` is told otherwise);
  ``"train"``, the ones before (55,000), so that hyperparameters chosen on ``"validation"``
  were never trained on; ``"test"``, the 10,000 of the test file. The recipes train on
  ``"train"`` and evaluate on ``"test"``. Training shifts each image by -2..2 pixels along
  each axis with zero (black, the background) fill, i.e. zero-pads 2 pixels and takes a random
  28x28 crop, and flips it horizontally with probability 1/2. The shifts are smaller than
  CIFAR-10's 4 of 32 pixels because each garment was scaled to fill the frame along its
  longer side (Xiao et al., 2017).
* ``cifar10``: 32x32x3, per-channel standardized with the training set's mean and standard
  deviation; training adds the standard augmentation of He et al. (2016): zero-pad 4 pixels,
  take a random 32x32 crop, flip horizontally with probability 1/2.
* ``imagenet2012``: training takes an Inception-style random resized crop (area 8%-100%,
  aspect ratio 3/4-4/3) resized to ``image_size`` and a random horizontal flip; evaluation
  resizes the shorter side to ``image_size / 0.875`` and takes the central square; both
  standardize with the ImageNet mean and standard deviation.

Determinism: the order of the examples and every random augmentation are a function of
``seed`` only (tf.data's deterministic option, seeded shuffles and seeded random ops), so two
pipelines built with the same seed yield the same batches, and evaluation pipelines have no
randomness at all. CIFAR-10's augmentation runs keras-cv layers (``RandomTranslation``,
``RandomFlip``) on whole batches in a sequential map: each layer draws from its own seeded
``tf.random.Generator``, whose draws belong to the batches in order only when the batches are
augmented one after the other (cheap at 32x32). That generator is state outside the pipeline,
so this one pipeline cannot be serialized (tf.data service, snapshots); sharding and
``tf.distribute`` work. keras-cv is imported after :mod:`tfadaqat`, so it builds tf-keras
layers. ImageNet's crop must happen before batching, on images of different sizes, and
decoding only the crop window of the JPEG is what keeps the input pipeline fast; that map must
run in parallel, so it uses stateless random ops keyed by a per-example seed drawn from a
seeded ``tf.data.Dataset.random`` stream instead of a stateful generator. Fashion-MNIST does
the same per batch (one seed from that stream per batch, a shift and a flip per image drawn
from it), so its pipeline has no state outside tf.data and needs no keras-cv.

No download, ever. Fashion-MNIST is read from its IDX files (installed by ``apt-get install
dataset-fashion-mnist``); only where they are not found, from a TensorFlow Datasets folder in
which ``fashion_mnist`` is already prepared (tfds stores the images in another order, so its
``"validation"`` holds other images than the IDX files' one); if neither is there,
:class:`DatasetNotPreparedError` gives the command that installs them. CIFAR-10 and ImageNet
are read from a TensorFlow Datasets folder (``data_dir``, tfds' default when None) where they
must already be prepared; otherwise :class:`DatasetNotPreparedError` says where tfds looked
and how to prepare them. The check is made when tfds fails to open the data (and is then
confirmed with ``builder.is_prepared()``), not before, so ``tfds.testing.mock_data``, which
replaces the reading but not the folder, works unchanged in tests.

``tensorflow-datasets`` and ``keras-cv`` come with the ``recipes`` extra
(``pip install -e ".[recipes]"``) and are imported only when a tfds data set is built.

References:
  Xiao et al., "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
  Algorithms", arXiv:1708.07747.
  He et al., "Deep Residual Learning for Image Recognition", arXiv:1512.03385.
  Szegedy et al., "Going Deeper with Convolutions", arXiv:1409.4842.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np

from tfadaqat._compat import tf
from recipes import idx

DATASET_NAMES = ("digits", "cifar10", "imagenet2012", "fashion_mnist")

# Mean and standard deviation of each RGB channel, on the [0, 1] scale, over the training set.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULT_IMAGENET_SIZE = 224
# Evaluation resizes the shorter side to image_size / EVAL_CROP_FRACTION (224 -> 256).
EVAL_CROP_FRACTION = 0.875
CIFAR10_PADDING = 4

FASHION_MNIST_PADDING = 2
FASHION_MNIST_VALIDATION_SIZE = 5_000
_FASHION_MNIST_EXAMPLES = {"train": 60_000, "test": 10_000}


class DatasetNotPreparedError(RuntimeError):
    """A data set is not where the pipeline looks for it (and is never downloaded)."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a data set looks like to a model and a training loop.

    Attributes:
      name: One of :data:`DATASET_NAMES`.
      tfds_name: Its TensorFlow Datasets name, None for ``digits``.
      input_shape: ``(height, width, channels)`` of the images the pipeline yields.
      num_classes: Number of classes; labels are ``0 .. num_classes - 1``.
      train_examples: Number of examples of the ``"train"`` split.
      eval_split: The split that training evaluates on.
      eval_examples: Number of examples of `eval_split`.
      splits: Every split :func:`build_dataset` accepts.
      mean: Per-channel mean subtracted from images on the [0, 1] scale (zeros for digits
        and fashion_mnist).
      std: Per-channel standard deviation images are divided by (ones for digits and
        fashion_mnist).
      shuffle_buffer: Examples in the training shuffle buffer.
      validation_size: Examples held out from the end of the training file as the
        ``"validation"`` split (fashion_mnist); 0 where nothing is held out (imagenet2012's
        ``"validation"`` is a split of its own).
    """

    name: str
    tfds_name: Optional[str]
    input_shape: Tuple[int, int, int]
    num_classes: int
    train_examples: int
    eval_split: str
    eval_examples: int
    splits: Tuple[str, ...]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    shuffle_buffer: int
    validation_size: int = 0


def dataset_spec(name: str, image_size: Optional[int] = None,
                 validation_size: Optional[int] = None) -> DatasetSpec:
    """The :class:`DatasetSpec` of data set `name`, without reading any data.

    Args:
      name: One of :data:`DATASET_NAMES`.
      image_size: Height and width of the images; None for the data set's own (8 for digits,
        28 for fashion_mnist, 32 for cifar10, 224 for imagenet2012). Digits accept a multiple
        of 8 (integer upsampling), fashion_mnist only 28, cifar10 only 32, imagenet2012 any
        positive size.
      validation_size: fashion_mnist only: examples held out from the end of its training
        file as ``"validation"``; None for :data:`FASHION_MNIST_VALIDATION_SIZE`.

    Returns:
      The spec; ``spec.input_shape`` reflects `image_size`.

    Raises:
      ValueError: For an unknown `name`, or an `image_size` or `validation_size` the data set
        does not support.

    Example:
      >>> dataset_spec("imagenet2012", image_size=128).input_shape
      (128, 128, 3)
      >>> spec = dataset_spec("fashion_mnist")
      >>> spec.train_examples, spec.validation_size, spec.eval_examples
      (55000, 5000, 10000)
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"name must be one of {DATASET_NAMES}, got {name!r}")
    if image_size is not None and not (_is_integer(image_size) and image_size > 0):
        raise ValueError(f"image_size must be None or a positive integer, got {image_size!r}")
    if validation_size is not None and name != "fashion_mnist":
        raise ValueError(f"validation_size applies to fashion_mnist only; it must be None for "
                         f"{name}, got {validation_size!r}")
    if name == "fashion_mnist":
        return _fashion_mnist_spec(image_size, validation_size)
    if name == "digits":
        size = 8 if image_size is None else int(image_size)
        if size % 8:
            raise ValueError(f"image_size must be None or a multiple of 8 for digits, got "
                             f"{image_size!r}")
        # load_digits' default split: 25% of the 1,797 images, stratified, for testing.
        return DatasetSpec(name=name, tfds_name=None, input_shape=(size, size, 1),
                           num_classes=10, train_examples=1347, eval_split="test",
                           eval_examples=450, splits=("train", "test"), mean=(0.0,),
                           std=(1.0,), shuffle_buffer=1347)
    if name == "cifar10":
        if image_size not in (None, 32):
            raise ValueError(f"image_size must be None or 32 for cifar10, got {image_size!r}")
        return DatasetSpec(name=name, tfds_name="cifar10", input_shape=(32, 32, 3),
                           num_classes=10, train_examples=50_000, eval_split="test",
                           eval_examples=10_000, splits=("train", "test"), mean=CIFAR10_MEAN,
                           std=CIFAR10_STD, shuffle_buffer=50_000)
    size = DEFAULT_IMAGENET_SIZE if image_size is None else int(image_size)
    # Shuffled before decoding, so the buffer holds JPEG bytes (about 110 KB each).
    return DatasetSpec(name=name, tfds_name="imagenet2012", input_shape=(size, size, 3),
                       num_classes=1000, train_examples=1_281_167, eval_split="validation",
                       eval_examples=50_000, splits=("train", "validation"),
                       mean=IMAGENET_MEAN, std=IMAGENET_STD, shuffle_buffer=10_000)


def _fashion_mnist_spec(image_size: Optional[int],
                        validation_size: Optional[int]) -> DatasetSpec:
    if image_size not in (None, 28):
        raise ValueError(f"image_size must be None or 28 for fashion_mnist, got {image_size!r}")
    total = _FASHION_MNIST_EXAMPLES["train"]
    if validation_size is None:
        validation_size = FASHION_MNIST_VALIDATION_SIZE
    elif not (_is_integer(validation_size) and 0 < validation_size < total):
        raise ValueError(f"validation_size must be None or an integer in [1, {total - 1}] for "
                         f"fashion_mnist, got {validation_size!r}")
    # The whole split in the buffer: it holds uint8 images, 47 MB for the 60,000.
    return DatasetSpec(name="fashion_mnist", tfds_name="fashion_mnist", input_shape=(28, 28, 1),
                       num_classes=10, train_examples=total - int(validation_size),
                       eval_split="test", eval_examples=_FASHION_MNIST_EXAMPLES["test"],
                       splits=("train", "validation", "train_full", "test"), mean=(0.0,),
                       std=(1.0,), shuffle_buffer=total, validation_size=int(validation_size))


def build_dataset(name: str, split: str, *, batch_size: int, training: bool, seed: int = 0,
                  data_dir: Optional[str] = None, image_size: Optional[int] = None,
                  drop_remainder: Optional[bool] = None,
                  validation_size: Optional[int] = None) -> tf.data.Dataset:
    """The batches of `split` of data set `name`, as ``(float32 images, int32 labels)``.

    Training pipelines shuffle (reshuffling on every iteration) and augment; evaluation
    pipelines keep the stored order and have no randomness. See the module docstring for each
    data set's preprocessing.

    Args:
      name: One of :data:`DATASET_NAMES`.
      split: One of ``dataset_spec(name).splits``.
      batch_size: Examples per batch.
      training: Whether to shuffle and augment.
      seed: Non-negative integer; the example order and the augmentation depend on it only.
      data_dir: TensorFlow Datasets folder holding the prepared data set (tfds' default
        when None); unused for digits. For fashion_mnist, the folder of its IDX files (see
        :func:`recipes.idx.fashion_mnist_dir`), and the tfds folder tried when they are not there.
      image_size: Height and width of the images, as in :func:`dataset_spec`.
      drop_remainder: Whether to drop the last, smaller batch; None drops it when `training`.
      validation_size: fashion_mnist only, as in :func:`dataset_spec`.

    Returns:
      A ``tf.data.Dataset`` of batches, prefetched.

    Raises:
      ValueError: For an unknown `name` or `split`, or a bad `batch_size`, `seed`,
        `image_size`, `drop_remainder` or `validation_size`; for a corrupt IDX file (named).
      DatasetNotPreparedError: If a tfds data set is not prepared in `data_dir`, or
        fashion_mnist is neither in its IDX folder nor prepared for tfds.

    Example:
      >>> images, labels = next(iter(build_dataset("digits", "test", batch_size=4,
      ...                                          training=False)))
      >>> images.shape, labels.dtype
      (TensorShape([4, 8, 8, 1]), tf.int32)
    """
    spec = dataset_spec(name, image_size, validation_size)
    if split not in spec.splits:
        raise ValueError(f"split must be one of {spec.splits} for {name}, got {split!r}")
    if not (_is_integer(batch_size) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (_is_integer(seed) and seed >= 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if drop_remainder is None:
        drop_remainder = bool(training)
    elif not isinstance(drop_remainder, bool):
        raise ValueError(f"drop_remainder must be None, True or False, got {drop_remainder!r}")

    if name == "digits":
        dataset = _digits(spec, split, batch_size=batch_size, training=training, seed=seed,
                          drop_remainder=drop_remainder)
    elif name == "fashion_mnist":
        dataset = _fashion_mnist(spec, split, data_dir=data_dir, batch_size=batch_size,
                                 training=training, seed=seed, drop_remainder=drop_remainder)
    else:
        builder = _builder(spec, data_dir)
        if name == "cifar10":
            dataset = _cifar10(builder, spec, split, batch_size=batch_size, training=training,
                               seed=seed, drop_remainder=drop_remainder)
        else:
            dataset = _imagenet(builder, spec, split, batch_size=batch_size,
                                training=training, seed=seed, drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.deterministic = True
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


# ---------------------------------------------------------------------------------------------
# Seeds, reading and normalization shared by the pipelines


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _seeds(seed: int, count: int) -> Tuple[int, ...]:
    """`count` independent 31-bit seeds derived from `seed`, all non-zero.

    keras-cv layers fall back to TensorFlow's global (unseeded) generator for a seed of 0.
    """
    state = np.random.SeedSequence(int(seed)).generate_state(count, dtype=np.uint32)
    return tuple(int(value >> 1) or 1 for value in state)


def _builder(spec: DatasetSpec, data_dir: Optional[str]):
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(f"{spec.name} needs tensorflow-datasets: pip install -e "
                          "\".[recipes]\"") from error
    return tfds.builder(spec.tfds_name, data_dir=data_dir)


def _not_prepared_message(spec: DatasetSpec, builder) -> str:
    root = str(builder.data_dir_root)
    where = (f"{spec.name} is not prepared: TensorFlow Datasets looked for it in {root} "
             f"(expected {builder.data_dir}) and this pipeline never downloads. ")
    if spec.name == "imagenet2012":
        return where + (f"Place ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
                        f"{root}/downloads/manual/ and run `tfds build imagenet2012 "
                        f"--data_dir={root}`.")
    return where + (f"Run `tfds build {spec.tfds_name} --data_dir=<folder>` on a machine with "
                    f"internet access and copy <folder>/{spec.tfds_name} into {root}, or run "
                    f"`tfds build {spec.tfds_name} --data_dir={root}` here if this machine has "
                    f"internet access.")


def _read(builder, spec: DatasetSpec, split: str, *, training: bool, seed: int,
          decoders=None) -> tf.data.Dataset:
    """`split` as ``(image, label)`` examples, files in a seeded order when `training`.

    Raises:
      DatasetNotPreparedError: If tfds cannot open the data and the builder confirms that
        it is not prepared (any other failure is raised as it is).
    """
    import tensorflow_datasets as tfds

    read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)
    try:
        return builder.as_dataset(split=split, as_supervised=True, shuffle_files=training,
                                  decoders=decoders, read_config=read_config)
    except Exception as error:  # tfds raises AssertionError for a missing folder
        if builder.is_prepared():
            raise
        raise DatasetNotPreparedError(_not_prepared_message(spec, builder)) from error


def _normalize(images, spec: DatasetSpec):
    """Images on the [0, 1] scale, standardized per channel with the spec's mean and std."""
    mean = tf.constant(spec.mean, tf.float32)
    std = tf.constant(spec.std, tf.float32)
    return (images - mean) / std


def _to_unit_range(image, label):
    return tf.image.convert_image_dtype(image, tf.float32), tf.cast(label, tf.int32)


# ---------------------------------------------------------------------------------------------
# The pipelines


def _digits(spec: DatasetSpec, split: str, *, batch_size: int, training: bool, seed: int,
            drop_remainder: bool) -> tf.data.Dataset:
    train_images, test_images, train_labels, test_labels = load_digits(
        upsample=spec.input_shape[0] // 8)
    if split == "train":
        dataset = tf.data.Dataset.from_tensor_slices((train_images, train_labels))
    else:
        dataset = tf.data.Dataset.from_tensor_slices((test_images, test_labels))
    if training:
        dataset = dataset.shuffle(spec.shuffle_buffer, seed=_seeds(seed, 1)[0],
                                  reshuffle_each_iteration=True)
    return dataset.batch(batch_size, drop_remainder=drop_remainder)


def _fashion_mnist(spec: DatasetSpec, split: str, *, data_dir: Optional[str], batch_size: int,
                   training: bool, seed: int, drop_remainder: bool) -> tf.data.Dataset:
    shuffle_seed, augment_seed = _seeds(seed, 2)
    images, labels = _fashion_mnist_bytes(split, data_dir, spec.validation_size)
    dataset = tf.data.Dataset.from_tensor_slices((images[..., None], labels.astype(np.int32)))
    if training:  # shuffles the uint8 images
        dataset = dataset.shuffle(spec.shuffle_buffer, seed=shuffle_seed,
                                  reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    # Division, not convert_image_dtype's multiplication by 1/255: the float32 values are then
    # exactly NumPy's bytes / 255.
    dataset = dataset.map(lambda images, labels: (tf.cast(images, tf.float32) / 255.0, labels),
                          num_parallel_calls=tf.data.AUTOTUNE)
    if not training:
        return dataset
    batch_seeds = tf.data.Dataset.random(seed=augment_seed,
                                         rerandomize_each_iteration=True).batch(2)

    def augment(batch, batch_seed):
        images, labels = batch
        return _pad_crop_and_flip(images, batch_seed, FASHION_MNIST_PADDING), labels

    return tf.data.Dataset.zip((dataset, batch_seeds)).map(
        augment, num_parallel_calls=tf.data.AUTOTUNE)


def _pad_crop_and_flip(images, seed, padding: int):
    """Each image of the batch zero-padded by `padding`, cropped back to its size at a random
    offset, and mirrored left-right with probability 1/2, drawn from the stateless `seed`.

    Equivalently: shifted by a uniform integer in ``-padding..padding`` pixels along each axis
    (zero fill), each of the ``(2 padding + 1)^2`` shifts equally likely.
    """
    shift_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    count = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    offsets = tf.random.stateless_uniform([count, 2], seed=shift_seed, minval=0,
                                          maxval=2 * padding + 1, dtype=tf.int32)
    mirrored = tf.random.stateless_uniform([count], seed=flip_seed) < 0.5
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    rows = offsets[:, :1] + tf.range(height)[None, :]
    columns = offsets[:, 1:] + tf.range(width)[None, :]
    crops = tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), columns, axis=2,
                      batch_dims=1)
    return tf.where(mirrored[:, None, None, None], tf.reverse(crops, axis=[2]), crops)


def _cifar10(builder, spec: DatasetSpec, split: str, *, batch_size: int, training: bool,
             seed: int, drop_remainder: bool) -> tf.data.Dataset:
    file_seed, shuffle_seed, shift_seed, flip_seed = _seeds(seed, 4)
    dataset = _read(builder, spec, split, training=training, seed=file_seed)
    if training:  # shuffles the uint8 images: 150 MB for the whole training set
        dataset = dataset.shuffle(spec.shuffle_buffer, seed=shuffle_seed,
                                  reshuffle_each_iteration=True)
    dataset = dataset.map(_to_unit_range, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if not training:
        return dataset.map(lambda images, labels: (_normalize(images, spec), labels),
                           num_parallel_calls=tf.data.AUTOTUNE)
    keras_cv = _import_keras_cv()
    height, width = spec.input_shape[:2]
    # Zero-padding by 4 and cropping 32x32 is an integer shift by -4..4 pixels with zero
    # (black, before standardization) fill. A uniform shift in (-4.5, 4.5) pixels with
    # nearest-neighbour sampling is exactly that, each of the 9 shifts with probability 1/9.
    # keras-cv's RandomCrop is not: it resamples the window with tf.image.crop_and_resize at a
    # step of 1.0065 pixels, duplicating a row or column in about 40% of the crops.
    shift = keras_cv.layers.RandomTranslation(
        height_factor=(CIFAR10_PADDING + 0.5) / height,
        width_factor=(CIFAR10_PADDING + 0.5) / width, fill_mode="constant", fill_value=0.0,
        interpolation="nearest", seed=shift_seed)
    flip = keras_cv.layers.RandomFlip(mode="horizontal", seed=flip_seed)

    def augment(images, labels):
        return _normalize(flip(shift(images)), spec), labels

    # Sequential on purpose: the layers' generators are stateful (see the module docstring).
    return dataset.map(augment, num_parallel_calls=None)


def _import_keras_cv():
    try:
        import keras_cv
    except ImportError as error:
        raise ImportError("cifar10 training augmentation needs keras-cv: pip install -e "
                          "\".[recipes]\"") from error
    return keras_cv


def _imagenet(builder, spec: DatasetSpec, split: str, *, batch_size: int, training: bool,
              seed: int, drop_remainder: bool) -> tf.data.Dataset:
    import tensorflow_datasets as tfds

    file_seed, shuffle_seed, augment_seed = _seeds(seed, 3)
    size = spec.input_shape[0]
    dataset = _read(builder, spec, split, training=training, seed=file_seed,
                    decoders={"image": tfds.decode.SkipDecoding()})
    if training:
        dataset = dataset.shuffle(spec.shuffle_buffer, seed=shuffle_seed,
                                  reshuffle_each_iteration=True)
        example_seeds = tf.data.Dataset.random(seed=augment_seed,
                                               rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, example_seeds))

        def preprocess(example, example_seed):
            encoded, label = example
            image = _random_resized_crop_and_flip(encoded, example_seed, size)
            return _normalize(image, spec), tf.cast(label, tf.int32)
    else:
        def preprocess(encoded, label):
            return _normalize(_resize_and_central_crop(encoded, size), spec), \
                tf.cast(label, tf.int32)

    dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=drop_remainder)


def _random_resized_crop_and_flip(encoded, seed, size: int):
    """A random crop of 8%-100% of the area and aspect ratio 3/4-4/3, resized, maybe flipped.

    Only the crop window of the JPEG is decoded. If no window fits in 10 attempts, the whole
    image is used. Returns float32 in [0, 1] of shape ``(size, size, 3)``.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=(1, 1, 4))
    begin, window_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.image.extract_jpeg_shape(encoded), bounding_boxes=whole_image, seed=crop_seed,
        min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    top, left, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(window_size)
    image = tf.image.decode_and_crop_jpeg(encoded, tf.stack([top, left, height, width]),
                                          channels=3)
    image = tf.image.resize(tf.image.convert_image_dtype(image, tf.float32), (size, size),
                            antialias=True)
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return tf.clip_by_value(image, 0.0, 1.0)


def _resize_and_central_crop(encoded, size: int):
    """Shorter side resized to ``size / EVAL_CROP_FRACTION``, then the central square."""
    image = tf.image.convert_image_dtype(tf.io.decode_jpeg(encoded, channels=3), tf.float32)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size / EVAL_CROP_FRACTION) / tf.reduce_min(shape)
    resized_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
    image = tf.image.resize(image, resized_shape, antialias=True)
    top = (resized_shape[0] - size) // 2
    left = (resized_shape[1] - size) // 2
    image = image[top:top + size, left:left + size]
    image.set_shape((size, size, 3))
    return tf.clip_by_value(image, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# scikit-learn's digits as NumPy arrays


def load_digits(test_fraction: float = 0.25, seed: int = 0, upsample: int = 1):
    """scikit-learn's digits as float32 images in [0, 1], shape (n, 8 u, 8 u, 1), fixed split.

    Args:
      test_fraction: Fraction of the images in the test split (stratified by class).
      seed: Seed of the split.
      upsample: Integer factor ``u`` of bilinear upsampling (1 keeps 8x8).

    Returns:
      ``(train_images, test_images, train_labels, test_labels)``.

    Raises:
      ValueError: For `test_fraction` outside (0, 1) or `upsample` < 1.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    if not isinstance(upsample, int) or upsample < 1:
        raise ValueError(f"upsample must be a positive integer, got {upsample!r}")
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    if upsample > 1:
        size = 8 * upsample
        images = np.clip(tf.image.resize(images, (size, size)).numpy(), 0.0, 1.0)
    return train_test_split(images, digits.target.astype("int32"), test_size=test_fraction,
                            random_state=seed, stratify=digits.target)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST as NumPy arrays


def load_fashion_mnist(split: str, data_dir: Optional[str] = None,
                       validation_size: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """A split of Fashion-MNIST as float32 images in [0, 1], shape (n, 28, 28, 1), in file order.

    Args:
      split: ``"train"``, ``"validation"``, ``"train_full"`` or ``"test"`` (see the module
        docstring).
      data_dir: The folder of the IDX files, as in :func:`recipes.idx.fashion_mnist_dir`;
        also the TensorFlow Datasets folder tried when they are not there (tfds' default when
        None).
      validation_size: Examples of ``"validation"``, as in :func:`dataset_spec`.

    Returns:
      ``(images, labels)``, labels int32 in 0..9.

    Raises:
      ValueError: For an unknown `split` or a bad `validation_size`, or an IDX file that is
        corrupt or does not hold 28x28 uint8 images and their labels (the file is named).
      DatasetNotPreparedError: If neither the IDX files nor a prepared tfds copy are found.

    Example:
      >>> images, labels = load_fashion_mnist("validation")
      >>> images.shape, labels.dtype
      ((5000, 28, 28, 1), dtype('int32'))
    """
    spec = dataset_spec("fashion_mnist", validation_size=validation_size)
    if split not in spec.splits:
        raise ValueError(f"split must be one of {spec.splits} for fashion_mnist, got {split!r}")
    images, labels = _fashion_mnist_bytes(split, data_dir, spec.validation_size)
    return (images[..., None].astype(np.float32) / np.float32(255.0),
            labels.astype(np.int32))


def _fashion_mnist_bytes(split: str, data_dir: Optional[str],
                         validation_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """uint8 images (n, 28, 28) and uint8 labels of `split`; the validation split is the end
    of the training file, the training split what comes before it."""
    images, labels = _fashion_mnist_file("test" if split == "test" else "train", data_dir)
    if split in ("test", "train_full"):
        return images, labels
    if validation_size >= len(images):
        raise ValueError(f"validation_size={validation_size} must be smaller than the "
                         f"{len(images)} examples of fashion_mnist's training file")
    cut = len(images) - validation_size
    if split == "train":
        return images[:cut], labels[:cut]
    return images[cut:], labels[cut:]


def _fashion_mnist_file(part: str, data_dir: Optional[str]) -> Tuple[np.ndarray, np.ndarray]:
    """The images and labels of the ``"train"`` or ``"test"`` file: from the IDX files where
    they are, else from a prepared tfds ``fashion_mnist``, else DatasetNotPreparedError."""
    folder = idx.fashion_mnist_dir(data_dir)
    paths = idx.fashion_mnist_paths(part, folder)
    missing = [name for name, path in paths.items() if path is None]
    if not missing:
        return idx.read_fashion_mnist(*paths.values())
    where = (f"fashion_mnist is not prepared: {' and '.join(missing)} (or .gz) not found in "
             f"{folder}")
    names = ", ".join(name for pair in idx.FASHION_MNIST_FILES.values() for name in pair)
    fix = (f"; this pipeline never downloads. Run `{idx.FASHION_MNIST_INSTALL}` (as root; it "
           f"installs the IDX files in {idx.FASHION_MNIST_DEBIAN_DIR}), or set "
           f"{idx.FASHION_MNIST_ENV} to a folder holding {names} (plain or .gz).")
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DatasetNotPreparedError(f"{where}, and tensorflow-datasets is not installed"
                                      f"{fix}") from None
    builder = tfds.builder("fashion_mnist", data_dir=data_dir)
    try:
        dataset = builder.as_dataset(split=part, as_supervised=True, shuffle_files=False)
    except Exception as error:  # tfds raises AssertionError for a missing folder
        if builder.is_prepared():
            raise
        raise DatasetNotPreparedError(f"{where}, nor prepared for TensorFlow Datasets in "
                                      f"{builder.data_dir_root}{fix}") from error
    batches = list(dataset.batch(10_000).as_numpy_iterator())
    images = np.concatenate([images for images, _ in batches])[..., 0].astype(np.uint8)
    labels = np.concatenate([labels for _, labels in batches]).astype(np.uint8)
    return images, labels
