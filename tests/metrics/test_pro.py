"""PRO (per-region overlap up to an FPR of 0.3) against a brute-force loop over thresholds and regions."""

import numpy as np
import pytest
from scipy import ndimage

from conformood.metrics import per_region_overlap


def _brute(maps, masks, max_fpr, n):
    good = maps[~masks]
    regions = []
    for i in range(masks.shape[0]):
        lab, k = ndimage.label(masks[i], structure=np.ones((3, 3)))
        regions += [maps[i][lab == r] for r in range(1, k + 1)]
    points = []
    for f in np.linspace(0, max_fpr, n):
        t = np.sort(good)[min(int(np.ceil((1 - f) * good.size)), good.size - 1)] if f > 0 else good.max() + 1e-9
        fpr = float((good >= t).mean())
        pro = float(np.mean([(r >= t).mean() for r in regions]))
        points.append((fpr, pro))
    points.sort()
    xs = [p[0] for p in points if p[0] <= max_fpr] + [max_fpr]
    ys = [p[1] for p in points if p[0] <= max_fpr]
    ys.append(ys[-1])
    return sum((xs[j + 1] - xs[j]) * (ys[j + 1] + ys[j]) / 2 for j in range(len(xs) - 1)) / max_fpr


@pytest.mark.parametrize("seed", range(4))
def test_pro_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 20, 24), bool)
    masks[0, 2:6, 3:9] = True
    masks[0, 12:14, 15:22] = True  # two regions in one image
    masks[1, 8:18, 1:4] = True
    maps = rng.random(masks.shape) + 0.8 * masks * rng.random(masks.shape)
    assert per_region_overlap(maps, masks, 0.3, 50) == pytest.approx(_brute(maps, masks, 0.3, 50), abs=1e-9)


def test_pro_extremes_and_bad_input():
    rng = np.random.default_rng(0)
    masks = np.zeros((2, 64, 64), bool)
    masks[0, 8:40, 8:40] = True
    maps = rng.random(masks.shape)
    assert per_region_overlap(maps + 2 * masks, masks) == pytest.approx(1.0)
    assert per_region_overlap(maps - 2 * masks, masks) == pytest.approx(0.0)
    assert abs(per_region_overlap(maps, masks) - 0.15) < 0.05  # chance: the overlap follows the FPR
    with pytest.raises(ValueError, match="boolean"):
        per_region_overlap(maps, masks.astype(int))
    with pytest.raises(ValueError, match="NaN"):
        per_region_overlap(np.where(masks, np.nan, maps), masks)
    with pytest.raises(ValueError, match="defect pixels"):
        per_region_overlap(maps, np.zeros_like(masks))
