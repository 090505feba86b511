import pytest
import torch

from conformood.augment import SimCLRViews, ViewConfig, rotate, rotation_outliers


@pytest.mark.parametrize("channels", [1, 3])
def test_views_shape_range_and_per_sample_randomness(channels):
    x = torch.rand(1, channels, 16, 16).repeat(32, 1, 1, 1)  # 32 copies of one image
    views = SimCLRViews((16, 16))
    out = views(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    # every copy got its own parameters: almost no two outputs are equal
    distinct = {tuple(o.flatten()[:32].tolist()) for o in out}
    assert len(distinct) > 25


def test_views_reproducible_with_generator_and_global_rng_untouched():
    x = torch.rand(8, 3, 8, 8)
    views = SimCLRViews((8, 8))
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = views(x, torch.Generator().manual_seed(5))
    assert torch.equal(torch.random.get_rng_state(), before)
    b = views(x, torch.Generator().manual_seed(5))
    c = views(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_views_without_randomness_is_identity():
    cfg = ViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(SimCLRViews((8, 8), cfg)(x), x, atol=1e-5)


def test_views_validation():
    with pytest.raises(ValueError, match="spatial size"):
        SimCLRViews((8, 8))(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="channels"):
        SimCLRViews((8, 8))(torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError, match="crop_scale"):
        ViewConfig(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="flip_p"):
        ViewConfig(flip_p=1.5)


def test_rotate():
    x = torch.arange(4.0).reshape(1, 1, 2, 2)  # [[0, 1], [2, 3]]
    assert rotate(x, 90)[0, 0].tolist() == [[1.0, 3.0], [0.0, 2.0]]  # counter-clockwise
    assert torch.equal(rotate(rotate(x, 180), 180), x)
    with pytest.raises(ValueError):
        rotate(x, 45)


def test_rotation_outliers_all_and_per_sample():
    x = torch.rand(5, 1, 8, 8)
    out, idx = rotation_outliers(x, per_sample=False)
    assert out.shape == (15, 1, 8, 8)
    for j, a in enumerate((90, 180, 270)):
        assert torch.equal(out[idx == j], rotate(x, a))
    out, idx = rotation_outliers(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for i in range(5):
        assert torch.equal(out[i], rotate(x[i : i + 1], (90, 180, 270)[idx[i]])[0])
    with pytest.raises(ValueError, match="square"):
        rotation_outliers(torch.rand(2, 1, 8, 6))
    with pytest.raises(ValueError, match="non-zero multiples"):
        rotation_outliers(x, angles=(0, 90))
