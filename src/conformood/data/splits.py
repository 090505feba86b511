"""Seeded train / calibration / test splits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


@dataclass(frozen=True)
class Split:
    """Disjoint index arrays into one dataset."""

    train: np.ndarray
    calibration: np.ndarray
    test: np.ndarray


def train_calibration_test_split(
    labels: ArrayLike,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    stratify: bool = True,
) -> Split:
    """Split indices 0..n-1 into disjoint train / calibration / test parts.

    With ``stratify`` each class is split in the given proportions separately (rounded per class, so
    every part keeps the class balance). The same ``seed`` always gives the same split.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {y.shape}")
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or np.any(f < 0) or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratify else [np.arange(y.shape[0])]
    parts: list[list[np.ndarray]] = [[], [], []]
    for idx in groups:
        idx = rng.permutation(idx)
        n_train = int(round(f[0] * idx.size))
        n_cal = int(round(f[1] * idx.size))
        n_cal = min(n_cal, idx.size - n_train)
        parts[0].append(idx[:n_train])
        parts[1].append(idx[n_train : n_train + n_cal])
        parts[2].append(idx[n_train + n_cal :])
    train, cal, test = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
    return Split(train, cal, test)
