"""recipes.data and recipes.idx: specs, batches of every data set, augmentation, determinism,
IDX files, missing data.

CIFAR-10 and ImageNet are read through ``tfds.testing.mock_data``, which yields the same
random examples for every split and ignores ``data_dir``; nothing is downloaded. Fashion-MNIST
is read from IDX files each test writes in ``tmp_path``; one test reads Debian's real files
when ``dataset-fashion-mnist`` is installed.
"""

import dataclasses
import gzip
import os
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfadaqat._compat import tf
from recipes import data, idx
from tests.conftest import write_fashion_mnist, write_idx

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
    (dict(name="mnist"),
     "name must be one of \\('digits', 'cifar10', 'imagenet2012', 'fashion_mnist'\\)"),
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
    (dict(validation_size=10), "validation_size applies to fashion_mnist only"),
    (dict(name="fashion_mnist", image_size=32), "image_size must be None or 28"),
    (dict(name="fashion_mnist", validation_size=0), "validation_size must be None or an"),
    (dict(name="fashion_mnist", validation_size=60_000), "validation_size"),
    (dict(name="fashion_mnist", split="validate"),
     "split must be one of \\('train', 'validation', 'train_full', 'test'\\)"),
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


# ---------------------------------------------------------------------------------------------
# IDX files


# A 2x3 uint8 array and a big-endian int16 vector, byte by byte.
UINT8_IDX = bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 0, 1, 127, 128, 254, 255])
INT16_IDX = bytes([0, 0, 0x0B, 1, 0, 0, 0, 3, 0x01, 0x02, 0xFF, 0xFE, 0x80, 0x00])


@pytest.mark.parametrize("gzipped", [False, True])
def test_read_idx_golden_values_plain_and_gzipped(tmp_path, gzipped):
    for name, content, expected in (
            ("bytes", UINT8_IDX, np.array([[0, 1, 127], [128, 254, 255]], np.uint8)),
            ("shorts", INT16_IDX, np.array([258, -2, -32768], np.int16))):
        path = tmp_path / name
        path.write_bytes(gzip.compress(content) if gzipped else content)
        array = idx.read_idx(str(path))
        assert array.dtype == expected.dtype and array.dtype.isnative
        np.testing.assert_array_equal(array, expected)


def test_write_idx_and_read_idx_round_trip_images(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    for gzipped in (False, True):
        path = write_idx(tmp_path / "images", images, gzipped=gzipped)
        np.testing.assert_array_equal(idx.read_idx(path), images)


@pytest.mark.parametrize("content, message", [
    (b"", "cut short: 0 bytes"),
    (b"\x00\x00", "cut short: 2 bytes"),
    (b"\x1f\x8b\x08\x00", "not a valid gzip file"),  # a gzip header and nothing else
    # stream cut short (mtime=0: the same bytes, and test id, in every process)
    (gzip.compress(UINT8_IDX, mtime=0)[:-6], "not a valid gzip file"),
    (b"\x01" + UINT8_IDX[1:], "not an IDX file: magic number 0x01000802"),
    (UINT8_IDX[:2] + b"\x07" + UINT8_IDX[3:], "not an IDX file"),  # unknown type
    (UINT8_IDX[:3] + b"\x00" + UINT8_IDX[4:], "not an IDX file"),  # no dimension
    (UINT8_IDX[:9], "cut short: 9 bytes, fewer than the 12 of a header"),
    (UINT8_IDX[:-1], "cut short: 17 bytes, expected 18"),
    (UINT8_IDX + b"\x00", "has bytes after its data: 19 bytes, expected 18"),
])
def test_read_idx_refuses_a_corrupt_file_naming_it(tmp_path, content, message):
    path = tmp_path / "corrupt-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(path))) as raised:
        idx.read_idx(str(path))
    assert message in str(raised.value)


def test_fashion_mnist_dir_prefers_data_dir_then_the_environment_then_debian(monkeypatch):
    monkeypatch.delenv(idx.FASHION_MNIST_ENV, raising=False)
    assert idx.fashion_mnist_dir() == idx.FASHION_MNIST_DEBIAN_DIR
    monkeypatch.setenv(idx.FASHION_MNIST_ENV, "")
    assert idx.fashion_mnist_dir() == idx.FASHION_MNIST_DEBIAN_DIR
    monkeypatch.setenv(idx.FASHION_MNIST_ENV, "/from/env")
    assert idx.fashion_mnist_dir() == "/from/env"
    assert idx.fashion_mnist_dir("/from/argument") == "/from/argument"


def test_read_fashion_mnist_checks_the_pair_and_rereads_a_rewritten_file(tmp_path):
    written = write_fashion_mnist(tmp_path, 6, 3)
    paths = list(idx.fashion_mnist_paths("train", str(tmp_path)).values())
    images, labels = idx.read_fashion_mnist(*paths)
    np.testing.assert_array_equal(images, written["train"][0])
    assert not images.flags.writeable  # shared with later calls
    write_idx(paths[1], np.full(6, 10, np.uint8))
    os.utime(paths[1], ns=(1, 1))  # a new version even within the file system's time step
    with pytest.raises(ValueError, match=f"{re.escape(paths[1])} holds label 10"):
        idx.read_fashion_mnist(*paths)
    write_idx(paths[1], np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="hold 6 images but 5 labels"):
        idx.read_fashion_mnist(*paths)
    write_idx(paths[0], np.zeros((6, 28, 27), np.uint8))
    with pytest.raises(ValueError, match=f"{re.escape(paths[0])} holds uint8 values of shape"):
        idx.read_fashion_mnist(*paths)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST


TRAIN, TEST, VALIDATION = 12, 5, 4


@pytest.fixture
def fashion_dir(tmp_path):
    """Mock Fashion-MNIST files: 12 training and 5 test images."""
    folder = str(tmp_path / "fashion")
    return folder, write_fashion_mnist(folder, TRAIN, TEST)


def _fashion(split, folder, **kwargs):
    kwargs = {"batch_size": 5, "training": False, "validation_size": VALIDATION, **kwargs}
    return _all_batches("fashion_mnist", split, data_dir=folder, **kwargs)


def test_fashion_mnist_spec_states_the_real_split_sizes():
    spec = data.dataset_spec("fashion_mnist")
    assert (spec.tfds_name, spec.input_shape, spec.num_classes, spec.train_examples,
            spec.validation_size, spec.eval_split, spec.eval_examples) == (
        "fashion_mnist", (28, 28, 1), 10, 55_000, 5_000, "test", 10_000)
    assert spec.splits == ("train", "validation", "train_full", "test")
    assert (spec.mean, spec.std) == ((0.0,), (1.0,))
    assert data.dataset_spec("fashion_mnist", validation_size=10_000).train_examples == 50_000
    assert data.dataset_spec("cifar10").validation_size == 0


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("through", ["data_dir", "environment"])
def test_fashion_mnist_pixels_and_labels_round_trip_exactly(tmp_path, monkeypatch, gzipped,
                                                           through):
    folder = str(tmp_path / "files")
    written = write_fashion_mnist(folder, TRAIN, TEST, gzipped=gzipped)
    if through == "environment":
        monkeypatch.setenv(idx.FASHION_MNIST_ENV, folder)
        folder = None
    else:
        monkeypatch.setenv(idx.FASHION_MNIST_ENV, str(tmp_path / "elsewhere"))
    for split, part in (("test", "test"), ("train_full", "train")):
        images, labels = _fashion(split, folder)
        source_images, source_labels = written[part]
        assert images.shape == (len(source_images), 28, 28, 1) and images.dtype == np.float32
        assert labels.dtype == np.int32
        # Bit-exact: the pipeline's float32 division is NumPy's.
        np.testing.assert_array_equal(images[..., 0],
                                      source_images.astype(np.float32) / np.float32(255))
        np.testing.assert_array_equal(labels, source_labels)
        assert images.min() == 0.0 and images.max() == 1.0
        loaded = data.load_fashion_mnist(split, data_dir=folder, validation_size=VALIDATION)
        np.testing.assert_array_equal(loaded[0], images)
        np.testing.assert_array_equal(loaded[1], labels)


def test_fashion_mnist_validation_is_the_end_of_the_training_file(fashion_dir):
    folder, written = fashion_dir
    source_images, source_labels = written["train"]
    train, train_labels = _fashion("train", folder)
    validation, validation_labels = _fashion("validation", folder)
    assert (len(train), len(validation)) == (TRAIN - VALIDATION, VALIDATION)
    expected = source_images.astype(np.float32)[..., None] / np.float32(255)
    np.testing.assert_array_equal(train, expected[:TRAIN - VALIDATION])
    np.testing.assert_array_equal(validation, expected[TRAIN - VALIDATION:])
    np.testing.assert_array_equal(np.concatenate([train_labels, validation_labels]),
                                  source_labels)
    # Disjoint (the random images are all different) and the same on every call.
    train_rows = {image.tobytes() for image in train}
    assert len(train_rows) == len(train)
    assert not train_rows & {image.tobytes() for image in validation}
    np.testing.assert_array_equal(_fashion("validation", folder)[0], validation)
    # The training pipeline shuffles the same examples.
    shuffled, shuffled_labels = _fashion("train", folder, training=True, seed=2,
                                         drop_remainder=False)
    assert sorted(shuffled_labels.tolist()) == sorted(train_labels.tolist())
    with pytest.raises(ValueError, match="validation_size=12 must be smaller than the 12"):
        _fashion("train", folder, validation_size=TRAIN)


def _shifts(image, sources, padding):
    """``(source index, row shift, column shift, mirrored)`` of every way `image` is a source
    shifted by up to `padding` pixels with zero fill, maybe mirrored."""
    size = image.shape[0]
    padded = np.zeros((len(sources), size + 2 * padding, size + 2 * padding), np.float32)
    padded[:, padding:padding + size, padding:padding + size] = sources
    return [(index, top - padding, left - padding, mirrored)
            for top in range(2 * padding + 1) for left in range(2 * padding + 1)
            for mirrored, candidate in ((False, image), (True, image[:, ::-1]))
            for index in np.flatnonzero(np.all(
                padded[:, top:top + size, left:left + size] == candidate, axis=(1, 2)))]


def test_fashion_mnist_training_images_are_shifted_and_mirrored_sources(fashion_dir):
    folder, _ = fashion_dir
    sources, source_labels = _fashion("train_full", folder)
    transforms = set()
    for seed in range(3):
        images, labels = _fashion("train_full", folder, training=True, seed=seed,
                                  batch_size=TRAIN)
        assert images.shape == (TRAIN, 28, 28, 1) and images.dtype == np.float32
        assert 0.0 <= images.min() and images.max() <= 1.0
        for image, label in zip(images[..., 0], labels):
            matches = _shifts(image, sources[..., 0], data.FASHION_MNIST_PADDING)
            assert matches, "a training image is not a shifted source image"
            assert source_labels[matches[0][0]] == label
            transforms.add(matches[0][1:])
    assert len(transforms) > 5  # shifts along both axes, with and without mirroring
    assert {mirrored for _, _, mirrored in transforms} == {False, True}
    assert max(abs(shift) for transform in transforms for shift in transform[:2]) == 2


def test_fashion_mnist_training_batches_are_a_function_of_the_seed(fashion_dir):
    folder, _ = fashion_dir
    arguments = dict(batch_size=4, training=True, data_dir=folder,
                     validation_size=VALIDATION)
    first = _all_batches("fashion_mnist", "train_full", seed=11, **arguments)
    again = _all_batches("fashion_mnist", "train_full", seed=11, **arguments)
    other = _all_batches("fashion_mnist", "train_full", seed=12, **arguments)
    assert first[0].shape == (TRAIN, 28, 28, 1)  # 3 whole batches of 4
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert np.abs(first[0] - other[0]).max() > 0.1
    # Iterating one pipeline again reshuffles and redraws (a new epoch of the same run).
    dataset = data.build_dataset("fashion_mnist", "train_full", seed=11, **arguments)
    epochs = [np.concatenate([x for x, _ in dataset.as_numpy_iterator()]) for _ in range(2)]
    np.testing.assert_array_equal(epochs[0], first[0])
    assert np.abs(epochs[1] - epochs[0]).max() > 0.1


def test_fashion_mnist_evaluation_batches_do_not_depend_on_the_seed(fashion_dir):
    folder, _ = fashion_dir
    first = _fashion("test", folder, seed=1)
    other = _fashion("test", folder, seed=2)
    np.testing.assert_array_equal(first[0], other[0])
    np.testing.assert_array_equal(first[1], other[1])


def test_a_corrupt_fashion_mnist_file_gives_a_value_error_naming_it(fashion_dir):
    folder, _ = fashion_dir
    path = os.path.join(folder, "t10k-labels-idx1-ubyte")
    with open(path, "r+b") as handle:
        handle.truncate(10)
    with pytest.raises(ValueError, match=f"IDX file {re.escape(path)} is cut short"):
        data.build_dataset("fashion_mnist", "test", batch_size=4, training=False,
                           data_dir=folder)


def test_a_missing_fashion_mnist_names_the_folder_and_the_apt_get_command(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv(idx.FASHION_MNIST_ENV, str(tmp_path / "empty"))
    with pytest.raises(data.DatasetNotPreparedError) as raised:
        data.build_dataset("fashion_mnist", "train", batch_size=8, training=True,
                           data_dir=str(tmp_path))
    message = str(raised.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert idx.FASHION_MNIST_ENV in message
    assert f"not found in {tmp_path}" in message
    assert "train-images-idx3-ubyte and train-labels-idx1-ubyte" in message
    assert f"TensorFlow Datasets in {tmp_path}" in message
    assert os.listdir(tmp_path) == []  # nothing downloaded, nothing created
    # One file of the pair is not enough; the message names the other.
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(data.DatasetNotPreparedError, match="t10k-labels-idx1-ubyte \\(or"):
        data.load_fashion_mnist("test", data_dir=str(tmp_path))


def test_fashion_mnist_falls_back_on_a_prepared_tfds_copy(tmp_path):
    with tfds.testing.mock_data(num_examples=16):
        images, labels = _fashion("validation", str(tmp_path))
        test_images, _ = _fashion("test", str(tmp_path), training=True, batch_size=8)
    assert images.shape == (VALIDATION, 28, 28, 1) and images.dtype == np.float32
    assert test_images.shape == (16, 28, 28, 1)
    assert 0.0 <= min(images.min(), test_images.min())
    assert max(images.max(), test_images.max()) <= 1.0
    assert labels.dtype == np.int32 and 0 <= labels.min() and labels.max() <= 9


@pytest.mark.skipif(not os.path.isdir(idx.FASHION_MNIST_DEBIAN_DIR),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debians_fashion_mnist_files_hold_60000_and_10000_images_of_10_classes():
    for part, count in (("train", 60_000), ("test", 10_000)):
        paths = idx.fashion_mnist_paths(part, idx.FASHION_MNIST_DEBIAN_DIR)
        images, labels = idx.read_fashion_mnist(*paths.values())
        assert images.shape == (count, 28, 28) and images.dtype == np.uint8
        np.testing.assert_array_equal(np.bincount(labels), [count // 10] * 10)
    spec = data.dataset_spec("fashion_mnist")
    for split, count in (("train", spec.train_examples), ("validation", spec.validation_size),
                         ("test", spec.eval_examples)):
        images, labels = data.load_fashion_mnist(split, data_dir=idx.FASHION_MNIST_DEBIAN_DIR)
        assert images.shape == (count, 28, 28, 1) and len(labels) == count
        assert images.min() == 0.0 and images.max() == 1.0
    images, labels = _first_batch("fashion_mnist", "train", batch_size=64, training=True,
                                  data_dir=idx.FASHION_MNIST_DEBIAN_DIR)
    assert images.shape == (64, 28, 28, 1) and set(labels.tolist()) <= set(range(10))
