"""scikit-learn's bundled handwritten digits (1,797 grayscale 8x8 images, 10 classes): the embedded default."""

from __future__ import annotations

import numpy as np

from .arrays import ImageArrays


def load_digits_dataset() -> ImageArrays:
    """The digits as float32 images (n, 1, 8, 8) in [0, 1] (pixel values 0..16 divided by 16)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return ImageArrays(images, bunch.target.astype(np.int64), [str(c) for c in bunch.target_names])
