"""Segmentation data: npz, image/mask folders, CamVid, empty-mask accounting, synthetic generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conformood.data.segmentation import (
    SegmentationData,
    load_camvid,
    load_segmentation_folders,
    load_segmentation_npz,
    synthetic_segmentation,
)

CAMVID = Path(__file__).resolve().parents[3] / "shared" / "data" / "camvid_120x90.npz"


def _arrays(n=4, h=6, w=5):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    y = (rng.random((n, h, w)) < 0.3).astype(np.uint8)
    y[1] = 0
    return x, y


def test_npz_round_trip_and_empty_masks(tmp_path):
    x, y = _arrays()
    np.savez(tmp_path / "seg.npz", x=x, y=y)
    data = load_segmentation_npz(tmp_path / "seg.npz")
    assert data.images.shape == (4, 6, 5, 3) and data.masks.dtype == bool
    np.testing.assert_array_equal(data.masks, y.astype(bool))
    kept, dropped = data.nonempty()
    assert dropped == 1 and len(kept) == 3
    assert data.float_images().shape == (4, 3, 6, 5) and data.float_images().max() <= 1.0


@pytest.mark.parametrize(
    "x, y, message",
    [
        (np.zeros((2, 4, 4, 3), np.uint8), np.full((2, 4, 4), 2), "only 0 and 1"),
        (np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 4, 5)), "shape"),
        (np.zeros((2, 4, 4, 3), np.float32), np.zeros((2, 4, 4)), "uint8"),
        (np.zeros((2, 4, 4, 2), np.uint8), np.zeros((2, 4, 4)), r"\(n, h, w, 3\)"),
    ],
)
def test_invalid_arrays_raise(x, y, message):
    with pytest.raises(ValueError, match=message):
        SegmentationData.from_arrays(x, y)


def test_npz_missing_keys(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="lacks"):
        load_segmentation_npz(tmp_path / "bad.npz")


def test_image_mask_folders(tmp_path):
    from PIL import Image

    x, y = _arrays(3, 8, 7)
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    for i in range(3):
        Image.fromarray(x[i]).save(tmp_path / "img" / f"{i:02d}.png")
        Image.fromarray((y[i] * 255).astype(np.uint8)).save(tmp_path / "mask" / f"{i:02d}.png")
    data = load_segmentation_folders(tmp_path / "img", tmp_path / "mask")
    np.testing.assert_array_equal(data.images, x)
    np.testing.assert_array_equal(data.masks, y.astype(bool))
    Image.fromarray(x[0]).save(tmp_path / "img" / "extra.png")
    with pytest.raises(ValueError, match="without a partner"):
        load_segmentation_folders(tmp_path / "img", tmp_path / "mask")


@pytest.mark.skipif(not CAMVID.exists(), reason="needs ../shared/data/camvid_120x90.npz")
def test_camvid_car_masks():
    parts = load_camvid(CAMVID, "car")
    assert set(parts) == {"train", "val", "test"}
    assert parts["train"].images.shape[1:] == (90, 120, 3)
    assert 0 < parts["train"].masks.mean() < 0.2
    same = load_camvid(CAMVID, 8)
    np.testing.assert_array_equal(same["test"].masks, parts["test"].masks)
    with pytest.raises(ValueError, match="unknown CamVid class"):
        load_camvid(CAMVID, "spaceship")


def test_synthetic_segmentation_is_seeded_and_valid():
    a, pa = synthetic_segmentation(5, 12, 10, seed=3)
    b, pb = synthetic_segmentation(5, 12, 10, seed=3)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(pa, pb)
    assert pa.dtype == np.float32 and pa.min() >= 0 and pa.max() <= 1
    assert a.nonempty()[1] == 0
