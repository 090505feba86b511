import gzip
import struct

import numpy as np
import pytest

from conformood.data import load_fashion_mnist, read_idx
from conformood.data.idx import FASHION_MNIST_DIR


def _write_idx(path, arr, code=0x08):
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    data = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(data)


def test_read_idx_roundtrip(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "a.gz", imgs)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), imgs)
    ints = np.arange(6, dtype=np.int32).reshape(2, 3)
    _write_idx(tmp_path / "b", ints, code=0x0C)
    np.testing.assert_array_equal(read_idx(tmp_path / "b"), ints)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_from_a_folder(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((4, 28, 28), np.uint8))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 9, 3, 3], np.uint8))
    d = load_fashion_mnist("test", root=tmp_path)
    assert d.images.shape == (4, 1, 28, 28) and d.labels.tolist() == [0, 9, 3, 3]
    assert d.class_names[9] == "ankle boot"
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)


@pytest.mark.integration
def test_real_fashion_mnist():
    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    d = load_fashion_mnist("test")
    assert d.images.shape == (10000, 1, 28, 28)
    assert np.bincount(d.labels).tolist() == [1000] * 10
