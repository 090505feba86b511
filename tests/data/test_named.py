import numpy as np
import pytest

from conformood.data import (
    NAMED_OOD_PAIRS,
    ImageArrays,
    conform_images,
    load_named,
    named_ood_pair,
)
from conformood.data.idx import FASHION_MNIST_DIR


def test_conform_images_channels_and_size():
    rng = np.random.default_rng(0)
    gray = ImageArrays(rng.integers(0, 256, size=(3, 1, 8, 8), dtype=np.uint8), np.arange(3))
    rgb = conform_images(gray, (3, 16, 16))
    assert rgb.images.shape == (3, 3, 16, 16) and rgb.images.dtype == np.float32
    np.testing.assert_allclose(rgb.images[:, 0], rgb.images[:, 2])
    back = conform_images(rgb, (1, 8, 8))
    assert back.images.shape == (3, 1, 8, 8) and back.labels.tolist() == [0, 1, 2]


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown OOD pair"):
        named_ood_pair("digits-vs-moon")
    with pytest.raises(ValueError, match="unknown data set"):
        load_named("moon")
    assert {NAMED_OOD_PAIRS.info(name).kind for name in NAMED_OOD_PAIRS} == {"near", "far"}


@pytest.mark.integration
def test_digits_vs_fashion_mnist_pair():
    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    task = named_ood_pair("digits-vs-fashion-mnist", out_test_size=200, seed=1)
    assert task.test.images.shape[1:] == (1, 8, 8)
    assert int((~task.is_inlier).sum()) == 200
    assert len(task.train) + len(task.calibration) + int(task.is_inlier.sum()) == 1797
    again = named_ood_pair("digits-vs-fashion-mnist", out_test_size=200, seed=1)
    np.testing.assert_array_equal(again.test.images, task.test.images)
