"""Conformal risk control on anomaly maps (conformal/risk/anomaly_maps.py): exact thresholds against brute force,
the miss-rate guarantee over many random splits, LTT's joint guarantee, and refused inputs."""

from __future__ import annotations

import numpy as np
import pytest

from conformood.conformal.risk.anomaly_maps import (
    area_at,
    defect_values,
    fnr_at,
    hb_p_value,
    ltt_region_threshold,
    region_adaptive_correction,
    region_crc_threshold,
    unit_maps,
)


def _ragged(rng: np.random.Generator, n: int, shift: float = 0.0) -> list[np.ndarray]:
    """Unit-space defect values of n images of very different defect sizes (a few pixels to thousands)."""
    sizes = rng.integers(1, 1500, n)
    return [np.clip(rng.beta(4, 2, s) + shift * rng.normal(), 0, 0.999) for s in sizes]


def _brute_crc(values: list[np.ndarray], alpha: float) -> float:
    """sup{t : (Σ FNR_i(t) + 1) / (n + 1) ≤ α} over every candidate: each defect value and +inf, the risk at each
    candidate counted image by image."""
    n = len(values)
    cands = np.r_[np.unique(np.concatenate(values)), np.inf]
    risk = sum(np.searchsorted(np.sort(v), cands, side="left") / v.size for v in values)
    ok = cands[(risk + 1) / (n + 1) <= alpha + 1e-12]
    return float(ok.max()) if ok.size else 0.0


@pytest.mark.parametrize("seed", range(6))
def test_crc_threshold_of_images_of_any_size_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    values = _ragged(rng, int(rng.integers(5, 40)))
    for alpha in (0.05, 0.1, 0.2, 0.37):
        assert region_crc_threshold(values, alpha) == _brute_crc(values, alpha)


def test_adaptive_correction_equals_brute_force():
    rng = np.random.default_rng(3)
    values = _ragged(rng, 25)
    tau = rng.uniform(0.3, 0.9, 25)
    for alpha in (0.1, 0.2):
        t = region_adaptive_correction(values, tau, alpha)
        # inf{t : (1/n) Σ TPR_i(t) ≥ (n+1)(1−α)/n}, TPR_i(t) = fraction of v ≥ τ_i − t
        cands = np.unique(np.concatenate([tau[i] - v for i, v in enumerate(values)]))
        ok = [c for c in cands if sum(float((tau[i] - v <= c).mean()) for i, v in enumerate(values))
              >= (26) * (1 - alpha) - 1e-9]
        assert t == min(ok)


def _population(seed: int, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Defective images whose difficulty varies (a per-image shift), and a noisy per-image base threshold."""
    rng = np.random.default_rng(seed)
    shifts = rng.normal(0, 0.15, n)
    values = [np.clip(rng.beta(5, 2, int(rng.integers(3, 400))) + s, 0, 0.999) for s in shifts]
    base = np.clip(0.7 + shifts + rng.normal(0, 0.05, n), 0, 1)
    return values, base


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_crc_and_adaptive_miss_rate_holds_over_random_splits(alpha):
    """Mean test FNR over 300 random calibration/test splits ≤ α + 2 SE (and not far below: CRC is tight)."""
    values, base = _population(0, 400)
    rng = np.random.default_rng(1)
    crc, adaptive = [], []
    for _ in range(300):
        perm = rng.permutation(400)
        cal, test = perm[:60], perm[60:]
        t = region_crc_threshold([values[i] for i in cal], alpha)
        crc.append(np.mean([(values[i] < t).mean() for i in test]))
        c = region_adaptive_correction([values[i] for i in cal], base[cal], alpha)
        adaptive.append(np.mean([(base[i] - values[i] > c).mean() for i in test]))
    for rates in (np.array(crc), np.array(adaptive)):
        se = rates.std(ddof=1) / np.sqrt(rates.size)
        assert rates.mean() <= alpha + 2 * se
        assert rates.mean() >= alpha - 0.03  # a threshold that missed nothing would also "hold"


def test_ltt_holds_both_risks_with_probability_one_minus_delta():
    rng = np.random.default_rng(5)
    values, _ = _population(2, 3000)
    good = [np.clip(rng.beta(2, 12, (20, 20)) + rng.normal(0, 0.05), 0, 0.999) for _ in range(3000)]
    grid = np.linspace(0.01, 0.99, 99)
    true_fnr = fnr_at(values, grid).mean(axis=0)
    true_area = area_at(good, grid).mean(axis=0)
    alpha, beta, delta = 0.2, 0.1, 0.2
    ok, chosen = [], []
    for _ in range(200):
        d, g = rng.choice(3000, 80, replace=False), rng.choice(3000, 60, replace=False)
        r = ltt_region_threshold([values[i] for i in d], [good[i] for i in g], alpha, beta, delta, grid)
        k = int(np.searchsorted(grid, r.threshold))
        assert grid[k] == r.threshold and r.lowest <= r.threshold <= r.highest
        ok.append(true_fnr[k] <= alpha and true_area[k] <= beta)
        chosen.append(r.threshold)
    rate = float(np.mean(ok))
    assert rate >= (1 - delta) - 3 * np.sqrt(rate * (1 - rate) / len(ok))
    assert len(set(chosen)) > 1  # not a constant answer


def test_ltt_refuses_levels_no_threshold_can_meet():
    values, _ = _population(2, 50)
    good = [np.full((10, 10), 0.9)] * 40  # every good pixel as high as the defects
    with pytest.raises(ValueError, match="no threshold holds both"):
        ltt_region_threshold(values, good, 0.1, 0.01, 0.1)


def test_hb_p_value_matches_its_formula():
    # r = 0: Hoeffding gives (1 − α)^n, Bentkus e·(1 − α)^n
    assert hb_p_value(0.0, 100, 0.1) == pytest.approx(0.9 ** 100)
    assert hb_p_value(0.5, 100, 0.1) == 1.0  # the empirical risk above the level: no evidence
    ps = [hb_p_value(r, 200, 0.1) for r in (0.0, 0.02, 0.05, 0.08)]
    assert ps == sorted(ps)


@pytest.mark.parametrize("bad, match", [
    (np.array([[np.nan, 1.0]]), "NaN"), (np.array([[-1.0, 1.0]]), ">= 0"), (np.array([[np.inf]]), "NaN")])
def test_unit_maps_refuses(bad, match):
    with pytest.raises(ValueError, match=match):
        unit_maps(bad, 1.0)
    with pytest.raises(ValueError, match="scale"):
        unit_maps(np.ones((2, 2)), 0.0)


def test_unit_maps_is_strictly_increasing():
    s = np.array([0.0, 1e-6, 1.0, 2.0, 1e6])
    u = unit_maps(s, 2.0)
    assert np.all(np.diff(u) > 0) and u[0] == 0 and u[-1] < 1


def test_defect_values_refuses_empty_masks_and_mismatches():
    m = np.zeros((4, 4))
    with pytest.raises(ValueError, match="empty"):
        defect_values([m], [np.zeros((4, 4), bool)])
    with pytest.raises(ValueError, match="shape"):
        defect_values([m], [np.ones((4, 5), bool)])
    with pytest.raises(ValueError, match="boolean"):
        defect_values([m], [np.ones((4, 4))])
    with pytest.raises(ValueError, match="mask"):
        defect_values([m, m], [np.ones((4, 4), bool)])
    with pytest.raises(ValueError, match="no defect"):
        defect_values([], [])
    with pytest.raises(ValueError, match="NaN"):
        defect_values([np.full((2, 2), np.nan)], [np.ones((2, 2), bool)])
