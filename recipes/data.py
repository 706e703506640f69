"""Data sets for recipes and benchmarks that run here without a download.

``load_digits``: scikit-learn's bundled digits (1,797 real 8x8 handwritten digits), as float32
images in [0, 1] with a fixed, stratified train/test split, optionally upsampled.
"""

from __future__ import annotations

import numpy as np


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
        from tfadaqat._compat import tf
        size = 8 * upsample
        images = np.clip(tf.image.resize(images, (size, size)).numpy(), 0.0, 1.0)
    return train_test_split(images, digits.target.astype("int32"), test_size=test_fraction,
                            random_state=seed, stratify=digits.target)
