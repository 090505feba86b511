"""Metrics of conformal decisions: how many inliers a level-α rule flags, how many OOD inputs it catches, and
what Benjamini–Hochberg selection achieves — computed in one place for every experiment."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .._validation import check_binary_labels


def decision_metrics(flags: ArrayLike, is_inlier: ArrayLike, bh_flags: ArrayLike | None = None) -> dict[str, float]:
    """``realised_fpr_at_alpha`` (fraction of inliers flagged) and ``ood_flagged_at_alpha`` (fraction of OOD
    inputs flagged) of boolean ``flags`` (True = declared OOD); with ``bh_flags`` (a Benjamini–Hochberg
    selection) also ``bh_discoveries``, ``bh_fdp`` (false discovery proportion) and ``bh_power``. A part with
    no inputs gives NaN."""
    n = np.shape(is_inlier)[0] if np.ndim(is_inlier) == 1 else -1
    inl = check_binary_labels(is_inlier, "is_inlier", n)
    f = check_binary_labels(flags, "flags", inl.size)

    def rate(x: np.ndarray) -> float:
        return float(x.mean()) if x.size else float("nan")

    out = {"realised_fpr_at_alpha": rate(f[inl]), "ood_flagged_at_alpha": rate(f[~inl])}
    if bh_flags is not None:
        bh = check_binary_labels(bh_flags, "bh_flags", inl.size)
        n_disc = int(bh.sum())
        out |= {"bh_discoveries": n_disc, "bh_fdp": float(bh[inl].sum() / max(n_disc, 1)), "bh_power": rate(bh[~inl])}
    return out
