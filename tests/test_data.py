"""recipes.data: specs, batches of every data set, augmentation, determinism, missing data.

CIFAR-10 and ImageNet are read through ``tfds.testing.mock_data``, which yields the same
random examples for every split and ignores ``data_dir``; nothing is downloaded.
"""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfadaqat._compat import tf
from recipes import data

MOCK_EXAMPLES = 16


def _first_batch(*args, **kwargs):
    images, labels = next(iter(data.build_dataset(*args, **kwargs)))
    return images.numpy(), labels.numpy()


def _all_batches(*args, **kwargs):
    batches = list(data.build_dataset(*args, **kwargs).as_numpy_iterator())
    return (np.concatenate([images for images, _ in batches]),
            np.concatenate([labels for _, labels in batches]))


def _normalized_bounds(spec):
    """The values that [0, 1] images take after the spec's standardization, per channel."""
    mean, std = np.array(spec.mean), np.array(spec.std)
    return (0.0 - mean) / std, (1.0 - mean) / std


def _assert_batch(images, labels, spec, batch_size):
    assert images.shape == (batch_size,) + spec.input_shape
    assert images.dtype == np.float32 and labels.dtype == np.int32
    assert labels.shape == (batch_size,)
    assert 0 <= labels.min() and labels.max() < spec.num_classes
    low, high = _normalized_bounds(spec)
    per_channel = images.reshape(-1, spec.input_shape[-1])
    np.testing.assert_array_less(low - 1e-5, per_channel.min(axis=0))
    np.testing.assert_array_less(per_channel.max(axis=0), high + 1e-5)


# ---------------------------------------------------------------------------------------------
# Specs and argument checks


def test_specs_state_shapes_classes_and_split_sizes():
    digits = data.dataset_spec("digits")
    assert (digits.input_shape, digits.num_classes, digits.train_examples,
            digits.eval_split, digits.eval_examples) == ((8, 8, 1), 10, 1347, "test", 450)
    assert data.dataset_spec("digits", image_size=16).input_shape == (16, 16, 1)
    cifar = data.dataset_spec("cifar10")
    assert (cifar.tfds_name, cifar.input_shape, cifar.num_classes, cifar.train_examples,
            cifar.eval_split, cifar.eval_examples) == ("cifar10", (32, 32, 3), 10, 50_000,
                                                       "test", 10_000)
    imagenet = data.dataset_spec("imagenet2012")
    assert (imagenet.input_shape, imagenet.num_classes, imagenet.train_examples,
            imagenet.eval_split, imagenet.eval_examples) == ((224, 224, 3), 1000, 1_281_167,
                                                             "validation", 50_000)
    assert data.dataset_spec("imagenet2012", image_size=64).input_shape == (64, 64, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cifar.num_classes = 100


@pytest.mark.parametrize("kwargs, argument", [
    (dict(name="mnist"), "name must be one of \\('digits', 'cifar10', 'imagenet2012'\\)"),
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=-8), "batch_size"),
    (dict(batch_size=2.5), "batch_size"),
    (dict(batch_size=True), "batch_size"),
    (dict(split="validation"), "split must be one of \\('train', 'test'\\)"),
    (dict(seed=-1), "seed"),
    (dict(image_size=64), "image_size must be None or 32"),
    (dict(name="digits", image_size=12), "image_size must be None or a multiple of 8"),
    (dict(name="imagenet2012", split="train", image_size=0), "image_size"),
    (dict(drop_remainder="yes"), "drop_remainder"),
])
def test_bad_arguments_raise_value_errors_naming_them(kwargs, argument):
    arguments = dict(name="cifar10", split="train", batch_size=8, training=True)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=argument):
        data.build_dataset(arguments.pop("name"), arguments.pop("split"), **arguments)


def test_dataset_spec_rejects_an_unknown_name():
    with pytest.raises(ValueError, match="name must be one of"):
        data.dataset_spec("imagenet")


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_splits_have_the_documented_sizes_and_ranges():
    train_images, test_images, train_labels, test_labels = data.load_digits()
    images, labels = _all_batches("digits", "train", batch_size=100, training=True, seed=3,
                                  drop_remainder=False)
    assert images.shape == (1347, 8, 8, 1) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    # Shuffled: a permutation of the split, not its stored order.
    assert sorted(labels.tolist()) == sorted(train_labels.tolist())
    assert not np.array_equal(labels, train_labels)
    np.testing.assert_allclose(np.sort(images.sum(axis=(1, 2, 3))),
                               np.sort(train_images.sum(axis=(1, 2, 3))), rtol=1e-6)

    images, labels = _all_batches("digits", "test", batch_size=100, training=False)
    assert images.shape == (450, 8, 8, 1) and labels.dtype == np.int32
    np.testing.assert_array_equal(images, test_images)  # evaluation keeps the stored order
    np.testing.assert_array_equal(labels, test_labels)


def test_digits_training_drops_the_last_partial_batch_and_can_upsample():
    dataset = data.build_dataset("digits", "train", batch_size=64, training=True)
    assert sum(1 for _ in dataset) == 1347 // 64
    images, _ = _first_batch("digits", "test", batch_size=4, training=False, image_size=16)
    assert images.shape == (4, 16, 16, 1)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 and ImageNet under mock data


@pytest.mark.parametrize("training", [True, False])
def test_cifar10_batch_shapes_types_and_ranges(training):
    spec = data.dataset_spec("cifar10")
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        images, labels = _first_batch("cifar10", "train" if training else "test",
                                      batch_size=8, training=training, seed=1)
    _assert_batch(images, labels, spec, 8)


def test_cifar10_training_images_are_padded_crops_maybe_mirrored_of_the_sources():
    spec = data.dataset_spec("cifar10")
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        sources, source_labels = _all_batches("cifar10", "train", batch_size=MOCK_EXAMPLES,
                                              training=False)
        images, labels = _first_batch("cifar10", "train", batch_size=8, training=True, seed=5)
    black = (0.0 - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    padded = np.broadcast_to(black, (MOCK_EXAMPLES, 40, 40, 3)).copy()
    padded[:, 4:36, 4:36] = sources
    transforms = set()
    for image, label in zip(images, labels):
        matches = [(index, top, left, mirrored)
                   for top in range(9) for left in range(9)
                   for mirrored, candidate in ((False, image), (True, image[:, ::-1]))
                   for index in np.flatnonzero(np.all(np.abs(
                       padded[:, top:top + 32, left:left + 32] - candidate) < 1e-5,
                       axis=(1, 2, 3)))]
        assert matches, "a training image is not a crop of a padded source image"
        assert source_labels[matches[0][0]] == label
        transforms.add(matches[0][1:])
    assert len(transforms) > 1  # not the identity crop every time


def test_cifar10_eval_images_are_the_standardized_sources():
    spec = data.dataset_spec("cifar10")
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        raw = list(tfds.builder("cifar10").as_dataset(split="test", as_supervised=True)
                   .as_numpy_iterator())
        images, labels = _all_batches("cifar10", "test", batch_size=5, training=False)
    assert images.shape == (MOCK_EXAMPLES, 32, 32, 3)  # the last, partial batch is kept
    expected = (np.stack([image for image, _ in raw]) / 255.0 - spec.mean) / spec.std
    np.testing.assert_allclose(images, expected, atol=1e-5)
    np.testing.assert_array_equal(labels, [label for _, label in raw])


@pytest.mark.parametrize("training", [True, False])
def test_imagenet2012_batch_shapes_types_and_ranges(training):
    spec = data.dataset_spec("imagenet2012", image_size=64)
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        images, labels = _first_batch("imagenet2012", "train" if training else "validation",
                                      batch_size=4, training=training, seed=1, image_size=64)
    _assert_batch(images, labels, spec, 4)


def _one_jpeg_as_dataset(image):
    """An ``as_dataset_fn`` for mock_data whose split holds one JPEG of `image`."""
    encoded = tf.io.encode_jpeg(image, quality=100)

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        example = {"image": encoded, "label": tf.constant(7, tf.int64),
                   "file_name": tf.constant("one.JPEG")}
        return tf.data.Dataset.from_tensors(example)

    return encoded, as_dataset


@pytest.mark.parametrize("height, width", [(64, 64), (64, 96), (96, 64)])
def test_imagenet2012_eval_takes_the_central_crop_after_resizing_the_shorter_side(
        height, width):
    # image_size 56: the shorter side is resized to 56 / 0.875 = 64, i.e. kept, so the result
    # is exactly the central 56x56 window of the decoded image.
    spec = data.dataset_spec("imagenet2012", image_size=56)
    source = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    encoded, as_dataset = _one_jpeg_as_dataset(source)
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        images, labels = _first_batch("imagenet2012", "validation", batch_size=1,
                                      training=False, image_size=56)
    decoded = tf.io.decode_jpeg(encoded, channels=3).numpy() / 255.0
    top, left = (height - 56) // 2, (width - 56) // 2
    expected = (decoded[top:top + 56, left:left + 56] - spec.mean) / spec.std
    np.testing.assert_allclose(images[0], expected, atol=1e-4)
    assert labels.tolist() == [7]


def test_imagenet2012_training_crops_resize_a_uniform_image_to_its_color():
    spec = data.dataset_spec("imagenet2012", image_size=32)
    source = np.zeros((80, 120, 3), np.uint8) + np.array([200, 40, 120], np.uint8)
    _, as_dataset = _one_jpeg_as_dataset(source)
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        images, _ = _first_batch("imagenet2012", "train", batch_size=1, training=True,
                                 image_size=32)
    expected = (np.array([200, 40, 120]) / 255.0 - spec.mean) / spec.std
    assert images.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(images[0], np.broadcast_to(expected, (32, 32, 3)), atol=0.03)


# ---------------------------------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize("name, kwargs", [
    ("digits", {}), ("cifar10", {}), ("imagenet2012", {"image_size": 64})])
def test_training_batches_are_a_function_of_the_seed(name, kwargs):
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        first = _first_batch(name, "train", batch_size=8, training=True, seed=11, **kwargs)
        again = _first_batch(name, "train", batch_size=8, training=True, seed=11, **kwargs)
        other = _first_batch(name, "train", batch_size=8, training=True, seed=12, **kwargs)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert np.abs(first[0] - other[0]).max() > 0.1


@pytest.mark.parametrize("name, split, kwargs", [
    ("digits", "test", {}), ("cifar10", "test", {}),
    ("imagenet2012", "validation", {"image_size": 64})])
def test_evaluation_batches_do_not_depend_on_the_seed(name, split, kwargs):
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        first = _all_batches(name, split, batch_size=8, training=False, seed=1, **kwargs)
        other = _all_batches(name, split, batch_size=8, training=False, seed=2, **kwargs)
    np.testing.assert_array_equal(first[0], other[0])
    np.testing.assert_array_equal(first[1], other[1])


# ---------------------------------------------------------------------------------------------
# Data sets that are not prepared


@pytest.mark.parametrize("training", [True, False])
def test_an_unprepared_cifar10_names_the_folder_and_the_build_command(tmp_path, training):
    with pytest.raises(data.DatasetNotPreparedError) as raised:
        data.build_dataset("cifar10", "train" if training else "test", batch_size=8,
                           training=training, data_dir=str(tmp_path))
    message = str(raised.value)
    assert str(tmp_path) in message
    assert f"tfds build cifar10 --data_dir={tmp_path}" in message
    assert isinstance(raised.value, RuntimeError)
    assert os.listdir(tmp_path) == []  # nothing downloaded, nothing created


def test_an_unprepared_imagenet2012_names_the_manual_folder_and_the_archives(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError) as raised:
        data.build_dataset("imagenet2012", "train", batch_size=8, training=True,
                           data_dir=str(tmp_path))
    message = str(raised.value)
    assert os.path.join(str(tmp_path), "downloads", "manual") in message
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
    assert f"tfds build imagenet2012 --data_dir={tmp_path}" in message
    assert os.listdir(tmp_path) == []
