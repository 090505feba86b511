"""Conformal risk control on anomaly maps: defect regions with a stated miss rate.

Paper: ``coat-adaptive-threshold-segmentation.md`` (CRC eq. 4–6, AT eq. 8, COAT Algorithm 1), carried from a
segmentation model's probability maps to a detector's anomaly maps. Notation: a defective image has an anomaly
map s(X) ≥ 0 (e.g. PatchCore's patch distances, upsampled and smoothed) and a defect mask Y with |Y| > 0; its
region at threshold τ is {j : s_j ≥ τ} and its loss the false-negative rate FNR = 1 − |region ∩ Y| / |Y|, the
fraction of defect pixels the region misses (COAT eq. 2–3 conventions; images with empty masks carry no FNR).

* **Scores, not probabilities.** :func:`unit_maps` maps s ≥ 0 to u = s / (s + c) in [0, 1) with a fixed scale
  c > 0 (the inspector's map scale). The map is strictly increasing, so {u ≥ t} is a region {s ≥ τ} and every
  guarantee on u is one on s; the exact calibrations of :mod:`~conformood.conformal.risk.control` then run
  unchanged, and AT/COAT's threshold predictor and temperature see a bounded map.
* **Images of their own sizes.** The FNR of an image depends only on the values at its defect pixels. Calibration
  therefore takes, per image, the vector of u at its defect pixels (:func:`defect_values`), and packs them as
  rows of one array padded with non-defect entries (:func:`pack_defect_values`): the exact CRC threshold
  (COAT eq. 5) and AT/COAT correction (Algorithm 1 lines 15–17) of that array are those of the images.
* **CRC** (:func:`region_crc_threshold`): over defective images exchangeable with the calibration images,
  E[FNR] ≤ α. **AT / COAT** (:func:`region_adaptive_correction`): per-image thresholds τ̂_i − t', the same
  guarantee for any fixed threshold predictor.
* **Area on good parts and LTT** (:func:`ltt_region_threshold`): the same region drawn on a good part marks a
  false area. Learn-then-Test (Angelopoulos et al. 2021) with Hoeffding–Bentkus p-values (:func:`hb_p_value`)
  chooses one threshold that controls both the mean FNR on defective parts (≤ α) and the mean flagged area on good
  parts (≤ β) with probability ≥ 1 − δ over the calibration draw. FNR grows with τ and area shrinks, so each risk
  is tested by fixed-sequence testing along the grid from its safe end at level δ/2 (Bonferroni over the two
  families); every threshold certified by both holds both risks at once, and the lowest (the fewest misses) is
  taken.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..._validation import as_numpy, check_alpha, check_positive_float
from .control import adaptive_correction, crc_threshold

#: the default grid of LTT thresholds in unit space: u = s / (s + c) from 0.005 to 0.995
LTT_GRID = np.linspace(0.005, 0.995, 199)


def unit_maps(maps: ArrayLike, scale: float) -> np.ndarray:
    """u = s / (s + c) (float64) of anomaly maps s ≥ 0 with scale c > 0: strictly increasing, in [0, 1)."""
    c = check_positive_float(scale, "scale")
    s = np.asarray(as_numpy(maps), dtype=np.float64)
    if s.size and not np.isfinite(s).all():
        raise ValueError("anomaly maps contain NaN or infinite values")
    if s.size and s.min() < 0:
        raise ValueError(f"anomaly maps must be >= 0 (distances), got a minimum of {s.min():.4g}")
    return s / (s + c)


def defect_values(maps: Sequence[ArrayLike], masks: Sequence[ArrayLike], name: str = "defect") -> list[np.ndarray]:
    """Per image the map values (float64) at its defect pixels; each map and mask of one shape, each mask with at
    least one defect pixel and the values finite."""
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} {name} map(s) but {len(masks)} mask(s)")
    if not len(maps):
        raise ValueError(f"no {name} images: calibration needs at least one")
    out = []
    for i, (m, y) in enumerate(zip(maps, masks)):
        m, y = np.asarray(as_numpy(m), dtype=np.float64), as_numpy(y)
        if y.dtype != bool:
            raise ValueError(f"{name} mask {i} must be boolean, got dtype {y.dtype}")
        if m.shape != y.shape or m.ndim != 2:
            raise ValueError(f"{name} map {i} has shape {m.shape} and its mask {y.shape}; both must be one (h, w)")
        if not y.any():
            raise ValueError(f"{name} mask {i} is empty: a defective image needs at least one defect pixel")
        v = m[y]
        if not np.isfinite(v).all():
            raise ValueError(f"{name} map {i} contains NaN or infinite values")
        out.append(v)
    return out


def pack_defect_values(values: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Unit-space defect values of images of any sizes as (u, mask), both (n, 1, L): row i holds image i's values,
    padded with zeros outside its mask. The FNR of any region rule on a row equals the image's."""
    if not len(values):
        raise ValueError("no defective images to calibrate on")
    width = max(v.size for v in values)
    u = np.zeros((len(values), 1, width), dtype=np.float64)
    m = np.zeros((len(values), 1, width), dtype=bool)
    for i, v in enumerate(values):
        if v.size == 0:
            raise ValueError(f"defective image {i} has no defect pixel")
        u[i, 0, :v.size] = v
        m[i, 0, :v.size] = True
    return u, m


def region_crc_threshold(values: Sequence[np.ndarray], alpha: float) -> float:
    """The exact CRC threshold t (COAT eq. 5) in unit space for regions {u ≥ t}, from each calibration image's
    unit values at its defect pixels: E[FNR] ≤ α on an exchangeable defective image."""
    u, m = pack_defect_values(values)
    return crc_threshold(u, m, alpha)


def region_adaptive_correction(values: Sequence[np.ndarray], base_thresholds: ArrayLike, alpha: float) -> float:
    """The exact AT/COAT correction t' (Algorithm 1 lines 15–17) for per-image regions {u ≥ τ̂_i − t'}."""
    u, m = pack_defect_values(values)
    return adaptive_correction(u, m, base_thresholds, alpha)


def fnr_at(values: Sequence[np.ndarray], thresholds: ArrayLike) -> np.ndarray:
    """(n_images, n_thresholds): the fraction of each image's defect values below each threshold."""
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    return np.stack([np.searchsorted(np.sort(v), t, side="left") / v.size for v in values])


def area_at(unit: Sequence[np.ndarray], thresholds: ArrayLike) -> np.ndarray:
    """(n_images, n_thresholds): the fraction of each image's pixels with u ≥ each threshold."""
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    out = []
    for x in unit:
        flat = np.sort(np.asarray(x, dtype=np.float64).reshape(-1))
        out.append(1.0 - np.searchsorted(flat, t, side="left") / flat.size)
    return np.stack(out)


def hb_p_value(risk: float, n: int, level: float) -> float:
    """The Hoeffding–Bentkus p-value (LTT, Angelopoulos et al. 2021, Prop. 3 / eq. 13) of the null "mean loss >
    level" for losses in [0, 1] with empirical mean ``risk`` over ``n`` points: min(exp(−n·h₁(r ∧ α, α)),
    e·P(Bin(n, α) ≤ ⌈n·r⌉))."""
    from scipy.stats import binom

    level = check_alpha(level, "level")
    r = float(risk)
    if not 0.0 <= r <= 1.0 or n < 1:
        raise ValueError(f"risk must lie in [0, 1] and n >= 1, got {risk!r} and {n!r}")
    a = min(r, level)

    def xlogy(x: float, y: float) -> float:
        return 0.0 if x == 0.0 else x * math.log(x / y)

    h1 = xlogy(a, level) + xlogy(1.0 - a, 1.0 - level)
    hoeffding = math.exp(-n * h1)
    bentkus = math.e * float(binom.cdf(math.ceil(n * r - 1e-12), n, level))
    return min(1.0, hoeffding, bentkus)


@dataclass(frozen=True)
class LTTRegion:
    """What :func:`ltt_region_threshold` certified: the chosen unit-space ``threshold``, the certified interval of
    the grid [``lowest``, ``highest``] (every threshold in it holds both risks with probability ≥ 1 − δ) and the
    calibration risks at the chosen threshold."""

    threshold: float
    lowest: float
    highest: float
    fnr: float
    area: float


def ltt_region_threshold(values: Sequence[np.ndarray], good_unit: Sequence[np.ndarray], alpha: float,
                         area_alpha: float, delta: float, grid: ArrayLike | None = None) -> LTTRegion:
    """One threshold t in unit space with P(E[FNR] ≤ α and E[area on a good part] ≤ β) ≥ 1 − δ (see the module
    docs): ``values`` the defective calibration images' unit values at their defect pixels, ``good_unit`` the good
    calibration images' unit maps (any sizes), β = ``area_alpha``. Raises when no threshold of the grid is
    certified for both (the levels are too tight for this detector or these few images)."""
    alpha, beta, delta = check_alpha(alpha), check_alpha(area_alpha, "area_alpha"), check_alpha(delta, "delta")
    t = np.asarray(LTT_GRID if grid is None else grid, dtype=np.float64).reshape(-1)
    if t.size < 1 or not np.isfinite(t).all() or np.any(np.diff(t) <= 0):
        raise ValueError("the LTT grid must be finite and strictly increasing")
    if not len(values) or not len(good_unit):
        raise ValueError("LTT needs defective images (for the miss rate) and good images (for the area)")
    return ltt_from_risks(fnr_at(values, t), area_at(good_unit, t), alpha, beta, delta, t)


def ltt_from_risks(fnr: ArrayLike, area: ArrayLike, alpha: float, area_alpha: float, delta: float,
                   grid: ArrayLike) -> LTTRegion:
    """:func:`ltt_region_threshold` from the per-image risks on the grid: ``fnr`` (n_defective, K) and ``area``
    (n_good, K), each in [0, 1], for the K increasing thresholds of ``grid``."""
    alpha, beta, delta = check_alpha(alpha), check_alpha(area_alpha, "area_alpha"), check_alpha(delta, "delta")
    t = np.asarray(grid, dtype=np.float64).reshape(-1)
    f, a = np.asarray(fnr, dtype=np.float64), np.asarray(area, dtype=np.float64)
    if f.ndim != 2 or a.ndim != 2 or f.shape[1] != t.size or a.shape[1] != t.size or not f.shape[0] or not \
            a.shape[0]:
        raise ValueError(f"risks must be (n, {t.size}) for the grid's {t.size} thresholds, got {f.shape} and "
                         f"{a.shape}")
    if not (np.isfinite(f).all() and np.isfinite(a).all()) or f.min() < 0 or f.max() > 1 or a.min() < 0 or \
            a.max() > 1:
        raise ValueError("risks must lie in [0, 1]")
    n_def, n_good = f.shape[0], a.shape[0]
    fnr_mean, area_mean = f.mean(axis=0), a.mean(axis=0)
    miss_ok = 0  # fixed sequence from the lowest threshold (fewest misses) upward
    while miss_ok < t.size and hb_p_value(fnr_mean[miss_ok], n_def, alpha) <= delta / 2:
        miss_ok += 1
    area_ok = t.size  # fixed sequence from the highest threshold (least area) downward
    while area_ok > 0 and hb_p_value(area_mean[area_ok - 1], n_good, beta) <= delta / 2:
        area_ok -= 1
    if area_ok >= miss_ok:
        raise ValueError(
            f"no threshold holds both a miss rate <= {alpha} and a good-part area <= {beta} with probability >= "
            f"{1 - delta:g} on {n_def} defective and {n_good} good calibration images; raise a level, delta, or give "
            "more images")
    return LTTRegion(float(t[area_ok]), float(t[area_ok]), float(t[miss_ok - 1]), float(fnr_mean[area_ok]),
                     float(area_mean[area_ok]))
