"""The confusion log probability (CLP) and the OOD rank of the CLP paper (``contrastive-training-ood-clp.md``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from .._validation import check_features, check_scores


def ood_rank(ood_scores: ArrayLike, inlier_scores: ArrayLike) -> np.ndarray:
    """OOD rank (CLP paper section 5) of each OOD sample, in percent.

    The paper states it for an outlier score: the percentage of inlier test samples with a lower score than
    the OOD sample. With conformood's normality scores (higher = more normal) that is the percentage of
    inliers whose normality is strictly higher than the OOD sample's. Higher rank = more clearly OOD.
    """
    o = check_scores(ood_scores, "ood_scores")
    inl = np.sort(check_scores(inlier_scores, "inlier_scores"))
    higher = inl.size - np.searchsorted(inl, o, side="right")
    return 100.0 * higher / inl.size


def ensemble_probabilities(member_probabilities: Sequence) -> np.ndarray:
    """c_k(x) = 1/N_e sum_j p^j(y = k | x) (CLP paper eq. 3) from the members' (n, K) probabilities."""
    if len(member_probabilities) == 0:
        raise ValueError("need at least one ensemble member")
    probs = [
        check_features(p, f"member {j} probabilities").astype(np.float64) for j, p in enumerate(member_probabilities)
    ]
    if len({p.shape for p in probs}) != 1:
        raise ValueError(f"members disagree in shape: {sorted({p.shape for p in probs})}")
    for j, p in enumerate(probs):
        if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-6):
            raise ValueError(f"member {j} rows must be probability vectors (non-negative, summing to 1)")
    return np.mean(probs, axis=0)


def confusion_log_probability(c: ArrayLike, in_classes: Sequence[int]) -> float:
    """CLP = log( 1/|D_test| sum_x sum_{k in C_in} c_k(x) ) (CLP paper eq. 4).

    ``c`` (n, K): ensemble probabilities of the test samples (CLP eq. 3); ``in_classes``: the column indices of the
    in-distribution classes. Pass the samples of one class for the class-wise CLP, or a whole dataset.
    """
    c = check_features(c, "c").astype(np.float64)
    idx = np.asarray(in_classes, dtype=np.int64)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= c.shape[1]:
        raise ValueError(f"in_classes must index the {c.shape[1]} columns of c, got {list(idx)}")
    with np.errstate(divide="ignore"):
        return float(np.log(c[:, idx].sum(axis=1).mean()))


def classwise_clp(c: ArrayLike, labels: ArrayLike, in_classes: Sequence[int]) -> dict[int, float]:
    """Class-wise CLP: eq. 4 on the test samples of each class in ``labels``."""
    c = check_features(c, "c")
    y = np.asarray(labels)
    if y.shape != (c.shape[0],):
        raise ValueError(f"labels must have shape ({c.shape[0]},), got {y.shape}")
    return {int(k): confusion_log_probability(c[y == k], in_classes) for k in np.unique(y)}


def confusion_distances(c: ArrayLike, labels: ArrayLike, n_classes: int | None = None) -> np.ndarray:
    """d(i, j) = sqrt(-log(0.5 (u_{i->j} + u_{j->i}))), u_{i->j} = mean_{x in class j} c_i(x) (CLP app. D eq. 5-6).

    Classes without test samples get infinite distances; the diagonal is 0 when a class is never confused
    with others (u_{i->i} = 1) and larger otherwise — it is set to 0, as a distance should be.
    """
    c = check_features(c, "c").astype(np.float64)
    y = np.asarray(labels)
    if y.shape != (c.shape[0],):
        raise ValueError(f"labels must have shape ({c.shape[0]},), got {y.shape}")
    k = n_classes or c.shape[1]
    u = np.zeros((k, k))
    for j in range(k):
        sel = y == j
        if sel.any():
            u[:, j] = c[sel, :k].mean(axis=0)
    with np.errstate(divide="ignore"):
        d = np.sqrt(np.maximum(0.0, -np.log(0.5 * (u + u.T))))
    np.fill_diagonal(d, 0.0)
    return d


def confusion_dendrogram(distances: ArrayLike) -> np.ndarray:
    """Average-linkage clustering of the confusion distances (CLP app. D); returns the linkage matrix, which
    :func:`conformood.report.plot_confusion_dendrogram` draws. Infinite distances become twice the largest
    finite one."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    d = np.asarray(distances, dtype=np.float64)
    finite = np.where(np.isfinite(d), d, np.nanmax(d[np.isfinite(d)]) * 2 if np.isfinite(d).any() else 1.0)
    z = linkage(squareform(finite, checks=False), method="average")
    return z


def ensemble_predict(members: Sequence, features: ArrayLike, n_classes: int) -> np.ndarray:
    """CLP eq. 3 for fitted members (``classes_`` and ``predict_proba``: :func:`conformood.train.fit_clp_ensemble`'s,
    or scikit-learn classifiers), with columns aligned to class indices 0..n_classes-1."""
    x = check_features(features, "features")
    probs = []
    for m in members:
        p = np.zeros((x.shape[0], n_classes))
        p[:, np.asarray(m.classes_, dtype=np.int64)] = m.predict_proba(x)
        probs.append(p)
    return ensemble_probabilities(probs)
