import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from conformood.data import (
    ImageArrays,
    load_digits_dataset,
    load_image_folder,
    one_vs_rest,
    to_float_images,
    train_calibration_test_split,
)


def test_digits_dataset():
    d = load_digits_dataset()
    assert d.images.shape == (1797, 1, 8, 8) and d.images.dtype == np.float32
    assert 0.0 <= d.images.min() and d.images.max() == 1.0
    assert d.class_names == [str(c) for c in range(10)]
    assert np.bincount(d.labels).min() >= 170


def test_split_is_disjoint_complete_stratified_and_seeded():
    labels = np.repeat(np.arange(4), [50, 60, 70, 80])
    s = train_calibration_test_split(labels, (0.6, 0.2, 0.2), seed=3)
    allidx = np.concatenate([s.train, s.calibration, s.test])
    assert np.array_equal(np.sort(allidx), np.arange(labels.size))
    for c, n in zip(range(4), [50, 60, 70, 80]):
        assert np.sum(labels[s.train] == c) == round(0.6 * n)
        assert np.sum(labels[s.calibration] == c) == round(0.2 * n)
    s2 = train_calibration_test_split(labels, (0.6, 0.2, 0.2), seed=3)
    s3 = train_calibration_test_split(labels, (0.6, 0.2, 0.2), seed=4)
    assert np.array_equal(s.train, s2.train)
    assert not np.array_equal(s.train, s3.train)


@pytest.mark.parametrize("fractions", [(0.5, 0.5, 0.5), (1.2, -0.1, -0.1), (0.5, 0.5)])
def test_split_fractions_validated(fractions):
    with pytest.raises(ValueError, match="fractions"):
        train_calibration_test_split(np.zeros(10), fractions)


def test_one_vs_rest():
    d = load_digits_dataset()
    s = train_calibration_test_split(d.labels, seed=0)
    task = one_vs_rest(d, s, "3")
    assert np.all(task.train.labels == 3) and np.all(task.calibration.labels == 3)
    assert np.array_equal(task.is_inlier, task.test.labels == 3)
    assert task.is_inlier.any() and (~task.is_inlier).any()
    assert set(task.test.labels.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="unknown class"):
        one_vs_rest(d, s, "eleven")


@pytest.mark.parametrize(
    ("shape", "layout"), [((5, 8, 8), "gray"), ((5, 8, 8, 3), "hwc"), ((5, 3, 8, 8), "chw"), ((5, 1, 8, 8), "chw")]
)
def test_to_float_images_layouts(shape, layout):
    x = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    out = to_float_images(x)
    c = 1 if layout == "gray" else shape[1] if layout == "chw" else shape[-1]
    assert out.shape == (5, c, 8, 8) and out.dtype == torch.float32
    assert float(out.max()) <= 1.0
    if layout == "hwc":
        assert torch.allclose(out[:, 0], torch.from_numpy(x[..., 0]).float() / 255)


def test_to_float_images_validation():
    with pytest.raises(ValueError, match="scaled to \\[0, 1\\]"):
        to_float_images(np.full((2, 1, 4, 4), 3.0, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        to_float_images(np.full((2, 1, 4, 4), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        to_float_images(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="labels must have shape"):
        ImageArrays(np.zeros((3, 1, 4, 4)), np.zeros(2, dtype=int))


def _write_folder(root, split="train", classes=("cat", "dog"), per_class=3, size=(6, 5)):
    rng = np.random.default_rng(0)
    expected = {}
    for c in classes:
        (root / split / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / split / c / f"{i:03d}.png")
            expected[(c, i)] = arr
    return expected


def test_image_folder_directory(tmp_path):
    expected = _write_folder(tmp_path)
    d = load_image_folder(tmp_path, split="train")
    assert d.images.shape == (6, 3, 6, 5) and d.images.dtype == np.uint8
    assert d.class_names == ["cat", "dog"]
    assert d.labels.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(d.images[4].transpose(1, 2, 0), expected[("dog", 1)])  # PNG is lossless
    gray = load_image_folder(tmp_path, split="train", mode="L")
    assert gray.images.shape == (6, 1, 6, 5)
    resized = load_image_folder(tmp_path / "train", image_size=(4, 4))
    assert resized.images.shape == (6, 3, 4, 4)


def test_image_folder_tar_with_wrapper_folder_and_cache(tmp_path):
    src = tmp_path / "src"
    _write_folder(src / "wrapped", split="train")
    _write_folder(src / "wrapped", split="test", per_class=2)
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "wrapped", arcname="wrapped")
    cache = tmp_path / "cache"
    a = load_image_folder(archive, split="test", cache_dir=cache)
    assert a.images.shape == (4, 3, 6, 5)
    assert len(list(cache.glob("*.npz"))) == 1
    b = load_image_folder(archive, split="test", cache_dir=cache)  # from the cache
    np.testing.assert_array_equal(a.images, b.images)
    assert b.class_names == a.class_names
    direct = load_image_folder(src / "wrapped", split="test")
    np.testing.assert_array_equal(a.images, direct.images)
    assert len(load_image_folder(archive, split="train", use_cache=False)) == 6


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path / "empty", split="train")
    _write_folder(tmp_path / "mixed", classes=("a",), size=(4, 4))
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "mixed" / "train" / "a" / "big.png")
    with pytest.raises(ValueError, match="different sizes"):
        load_image_folder(tmp_path / "mixed", split="train")
    with pytest.raises(ValueError, match="mode"):
        load_image_folder(tmp_path / "mixed", mode="CMYK")


@pytest.mark.integration
def test_cifar10_archive(shared_data, tmp_path):
    archive = shared_data / "cifar10-jpg.tar.gz"
    if not archive.is_file():
        pytest.skip("cifar10-jpg.tar.gz is absent")
    test = load_image_folder(archive, split="test", cache_dir=tmp_path)
    assert test.images.shape == (10000, 3, 32, 32)
    assert test.class_names[0] == "airplane" and test.class_names[-1] == "truck"
    assert np.bincount(test.labels).tolist() == [1000] * 10
    again = load_image_folder(archive, split="test", cache_dir=tmp_path)
    np.testing.assert_array_equal(test.images[:50], again.images[:50])


def test_image_arrays_from_numpy_and_torch():
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(4, 5, 5, 3), dtype=np.uint8)
    a = ImageArrays.from_arrays(hwc, [0, 1, 0, 1], ["x", "y"])
    assert a.images.shape == (4, 3, 5, 5) and a.images.dtype == np.uint8
    b = ImageArrays.from_arrays(torch.from_numpy(hwc).permute(0, 3, 1, 2).float() / 255, torch.tensor([0, 1, 0, 1]))
    assert torch.allclose(a.tensor(), b.tensor())
    assert b.class_names == ["0", "1"]
    assert a.subset([1, 3]).labels.tolist() == [1, 1]
