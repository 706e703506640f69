"""IDX files, the format of MNIST and Fashion-MNIST, and where Fashion-MNIST's four files are.

An IDX file holds one array: a magic number of 4 bytes ``0x00 0x00 T D``, where ``T`` is the
type of the values (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64)
and ``D`` the number of dimensions; then the ``D`` sizes as big-endian uint32; then the values
in C order, big-endian. :func:`read_idx` reads one, plain or gzip-compressed, and refuses a
corrupt or truncated file with a ``ValueError`` that names it.

Fashion-MNIST comes as four such files: the training images (60,000 x 28 x 28 uint8) and
labels (60,000 uint8 in 0..9), and the test images and labels (10,000). Debian's package
``dataset-fashion-mnist`` installs them, gzipped, in :data:`FASHION_MNIST_DEBIAN_DIR`;
:func:`fashion_mnist_dir` says which folder is searched (a ``data_dir`` argument, else the
environment variable ``TFADAQAT_FASHION_MNIST_DIR``, else Debian's), and
:func:`read_fashion_mnist` reads and checks a pair of files once per process. The pipelines
that use them are in :mod:`recipes.data`.

References:
  LeCun et al., "The MNIST database of handwritten digits" (the IDX format).
  Xiao et al., "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
  Algorithms", arXiv:1708.07747.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import struct
import zlib
from typing import Dict, Optional, Tuple

import numpy as np

FASHION_MNIST_ENV = "TFADAQAT_FASHION_MNIST_DIR"
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = "apt-get install dataset-fashion-mnist"
# The (images, labels) files of each part; each may instead be gzipped, named with ".gz".
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

# Type byte of the magic number -> the big-endian NumPy type of the values.
_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
          0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str) -> np.ndarray:
    """The array stored in the IDX file at `path` (see the module docstring for the format).

    A file that starts with gzip's magic bytes is decompressed first, whatever its name.

    Args:
      path: The file.

    Returns:
      The array, of the stored type and shape, in native byte order.

    Raises:
      FileNotFoundError: If `path` does not exist.
      ValueError: Naming `path`, if its magic number is not an IDX one, its header or data
        are cut short, bytes follow its data, or its gzip stream is corrupt.

    Example:
      >>> labels = read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
      >>> labels.shape, labels.dtype
      ((10000,), dtype('uint8'))
    """
    with open(path, "rb") as handle:
        content = handle.read()
    if content[:2] == _GZIP_MAGIC:
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
            raise ValueError(f"IDX file {path} is not a valid gzip file: {error}") from error
    if len(content) < 4:
        raise ValueError(f"IDX file {path} is cut short: {len(content)} bytes, fewer than the "
                         "4 of the magic number")
    type_code, dimensions = content[2], content[3]
    if content[:2] != b"\0\0" or type_code not in _TYPES or dimensions == 0:
        codes = ", ".join(f"{code:02x}" for code in _TYPES)
        raise ValueError(f"{path} is not an IDX file: magic number 0x{content[:4].hex()}, "
                         f"expected 0x0000TTDD with type TT in {{{codes}}} and DD >= 1 "
                         "dimensions")
    header = 4 + 4 * dimensions
    if len(content) < header:
        raise ValueError(f"IDX file {path} is cut short: {len(content)} bytes, fewer than the "
                         f"{header} of a header with {dimensions} dimensions")
    shape = struct.unpack(f">{dimensions}I", content[4:header])
    dtype = _TYPES[type_code]
    count = math.prod(shape)
    expected = header + count * dtype.itemsize
    if len(content) != expected:
        state = "is cut short" if len(content) < expected else "has bytes after its data"
        raise ValueError(f"IDX file {path} {state}: {len(content)} bytes, expected {expected} "
                         f"for {dtype.name} values of shape {shape}")
    values = np.frombuffer(content, dtype, count=count, offset=header)
    return values.reshape(shape).astype(dtype.newbyteorder("="))


def fashion_mnist_dir(data_dir: Optional[str] = None) -> str:
    """The folder searched for Fashion-MNIST's IDX files.

    Args:
      data_dir: A folder, or None (or "").

    Returns:
      `data_dir` when given, else the environment variable ``TFADAQAT_FASHION_MNIST_DIR``
      (:data:`FASHION_MNIST_ENV`) when set and not empty, else
      :data:`FASHION_MNIST_DEBIAN_DIR`. The folder may not exist.
    """
    if data_dir:
        return os.fspath(data_dir)
    return os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEBIAN_DIR


def fashion_mnist_paths(part: str, folder: str) -> Dict[str, Optional[str]]:
    """Where the images and labels files of `part` are in `folder`.

    Args:
      part: ``"train"`` or ``"test"``.
      folder: The folder, as from :func:`fashion_mnist_dir`.

    Returns:
      ``{file name: its path, or None if missing}`` for the images and then the labels file
      (names as in :data:`FASHION_MNIST_FILES`); the plain file is taken where both it and the
      ``.gz`` one exist.

    Raises:
      ValueError: For a `part` other than "train" and "test".
    """
    if part not in FASHION_MNIST_FILES:
        raise ValueError(f"part must be one of {tuple(FASHION_MNIST_FILES)}, got {part!r}")
    paths = {}
    for name in FASHION_MNIST_FILES[part]:
        candidates = [os.path.join(folder, name + suffix) for suffix in ("", ".gz")]
        paths[name] = next((path for path in candidates if os.path.isfile(path)), None)
    return paths


def read_fashion_mnist(images_path: str, labels_path: str) -> Tuple[np.ndarray, np.ndarray]:
    """The images and labels of a pair of Fashion-MNIST IDX files, checked against each other.

    Read once per process and version of the files (size and modification time): a recipe
    builds a pipeline per epoch.

    Args:
      images_path: An IDX file of uint8 images, shape ``(n, 28, 28)``.
      labels_path: An IDX file of ``n`` uint8 labels in 0..9.

    Returns:
      ``(images, labels)``, both uint8 and read-only (they are shared with later calls).

    Raises:
      FileNotFoundError: If a file does not exist.
      ValueError: Naming the file, if it is not a valid IDX file (see :func:`read_idx`) or does
        not hold what it should, or the two hold different numbers of examples.
    """
    stamps = tuple((stat.st_size, stat.st_mtime_ns)
                   for stat in (os.stat(images_path), os.stat(labels_path)))
    return _read_fashion_mnist(os.fspath(images_path), os.fspath(labels_path), stamps)


@functools.lru_cache(maxsize=4)
def _read_fashion_mnist(images_path: str, labels_path: str, stamps) -> Tuple[np.ndarray,
                                                                              np.ndarray]:
    del stamps  # only in the cache key, so that a rewritten file is read again
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"IDX file {images_path} holds {images.dtype.name} values of shape "
                         f"{images.shape}, expected uint8 images of shape (n, 28, 28)")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"IDX file {labels_path} holds {labels.dtype.name} values of shape "
                         f"{labels.shape}, expected uint8 labels of shape (n,)")
    if len(labels) != len(images):
        raise ValueError(f"IDX files {images_path} and {labels_path} hold {len(images)} images "
                         f"but {len(labels)} labels")
    if len(labels) and labels.max() > 9:
        raise ValueError(f"IDX file {labels_path} holds label {labels.max()}, expected 0..9")
    images.flags.writeable = labels.flags.writeable = False
    return images, labels
