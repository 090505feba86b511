"""IDX files (the MNIST / Fashion-MNIST format), plain or gzipped, and the Fashion-MNIST loader."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from .arrays import ImageArrays

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # `apt-get install dataset-fashion-mnist`
FASHION_MNIST_CLASSES = [
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
]
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX array: magic (0, 0, dtype code, ndim), ndim big-endian uint32 sizes, then the data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        raise ValueError(f"{path}: header says {shape} ({expected} bytes) but {len(body)} bytes follow")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> ImageArrays:
    """Fashion-MNIST ``train`` (60,000) or ``test`` (10,000) as uint8 images (n, 1, 28, 28).

    ``root`` defaults to ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``); any
    folder with the four standard ``*-idx?-ubyte[.gz]`` files works.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    base = Path(root) if root is not None else FASHION_MNIST_DIR
    prefix = "train" if split == "train" else "t10k"

    def find(kind: str) -> Path:
        for name in (f"{prefix}-{kind}-ubyte.gz", f"{prefix}-{kind}-ubyte"):
            if (base / name).is_file():
                return base / name
        raise FileNotFoundError(
            f"no {prefix}-{kind}-ubyte[.gz] in {base}; install it with `apt-get install dataset-fashion-mnist` "
            "or pass root= to a folder holding the IDX files"
        )

    images = read_idx(find("images-idx3"))
    labels = read_idx(find("labels-idx1"))
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ValueError(f"unexpected Fashion-MNIST shapes {images.shape} and {labels.shape}")
    return ImageArrays(images[:, None], labels.astype(np.int64), list(FASHION_MNIST_CLASSES))
