"""Synthetic outliers: CutPerm, CutPaste, Poisson (NSA-style) blending, outlier-exposure pools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conformood.augment import (
    OutlierExposurePool,
    cut_perm,
    cut_perm_outliers,
    cutpaste,
    nsa_outliers,
    poisson_blend,
)

POOL = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyimagenet_oe_32.npz"


def _images(n=6, c=3, h=16, w=12, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_cut_perm_shifts_are_involutions_and_identity_at_zero():
    x = _images()
    torch.testing.assert_close(cut_perm(x, 0), x)
    for k in range(4):
        torch.testing.assert_close(cut_perm(cut_perm(x, k), k), x)
    # k = 1 swaps the top and bottom halves.
    torch.testing.assert_close(cut_perm(x, 1)[..., :8, :], x[..., 8:, :])
    out, ks = cut_perm_outliers(x, generator=torch.Generator().manual_seed(0))
    assert bool(((ks >= 1) & (ks <= 3)).all())
    with pytest.raises(ValueError, match="even"):
        cut_perm(torch.rand(1, 3, 5, 4), 1)
    with pytest.raises(ValueError, match="0..3"):
        cut_perm(x, 4)


@pytest.mark.parametrize("make", [cutpaste, nsa_outliers])
def test_generators_shapes_ranges_and_determinism(make):
    x = _images()
    a, ma = make(x, generator=torch.Generator().manual_seed(3))
    b, mb = make(x, generator=torch.Generator().manual_seed(3))
    c, _ = make(x, generator=torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == x.dtype and ma.shape == (6, 16, 12) and ma.dtype == torch.bool
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    torch.testing.assert_close(a, b)
    assert torch.equal(ma, mb)
    assert not torch.equal(a, c)
    # Only the marked region changes.
    outside = ~ma[:, None].expand_as(x)
    torch.testing.assert_close(a[outside], x[outside])
    assert bool(ma.flatten(1).any(dim=1).all())


def test_poisson_blend_solves_the_discrete_equation():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 20, 20, generator=g, dtype=torch.float64) * 0.5 + 0.25
    source = torch.rand(3, 8, 9, generator=g, dtype=torch.float64) * 0.5 + 0.25
    out = poisson_blend(target, source, 5, 6)
    f = out[:, 5:13, 6:15].numpy()
    s = source.numpy()

    def lap(a):
        return a[:, :-2, 1:-1] + a[:, 2:, 1:-1] + a[:, 1:-1, :-2] + a[:, 1:-1, 2:] - 4 * a[:, 1:-1, 1:-1]

    inside_range = (f[:, 1:-1, 1:-1] > 0) & (f[:, 1:-1, 1:-1] < 1)
    np.testing.assert_allclose(lap(f)[inside_range], lap(s)[inside_range], atol=1e-9)
    # The border keeps the target; outside the patch nothing changes.
    np.testing.assert_allclose(f[:, 0, :], target.numpy()[:, 5, 6:15])
    mask = torch.ones(20, 20, dtype=torch.bool)
    mask[5:13, 6:15] = False
    torch.testing.assert_close(out[:, mask], target[:, mask])


def test_poisson_blend_of_a_shifted_copy_returns_the_target():
    """Same gradients, same border: the blend of target + constant is the target itself."""
    target = torch.rand(1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.8
    patch = target[:, 2:9, 3:10] + 0.1
    torch.testing.assert_close(poisson_blend(target, patch, 2, 3), target)
    with pytest.raises(ValueError, match="inside"):
        poisson_blend(target, patch, 8, 8)


def test_outlier_pool_conforms_images():
    rng = np.random.default_rng(0)
    pool = OutlierExposurePool(rng.integers(0, 256, size=(30, 32, 32, 3), dtype=np.uint8), (1, 16, 16))
    x = pool.sample(8, generator=torch.Generator().manual_seed(0))
    assert x.shape == (8, 1, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    torch.testing.assert_close(x, pool.sample(8, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="non-empty"):
        OutlierExposurePool(np.zeros((0, 4, 4, 3), np.uint8), (3, 4, 4))


@pytest.mark.skipif(not POOL.exists(), reason="needs ../shared/data/tinyimagenet_oe_32.npz")
def test_tinyimagenet_pool_from_npz():
    pool = OutlierExposurePool.from_npz(POOL, (3, 32, 32))
    assert len(pool) == 10100
    assert pool.sample(4).shape == (4, 3, 32, 32)
