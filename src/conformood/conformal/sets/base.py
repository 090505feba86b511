"""Contrastive conformal covering sets in embedding space (``contrastive-conformal-sets.md``).

A covering set around an anchor embedding Z is N(Z) = {z : g(z, Z) ≤ q̂}. Calibrated on n pairs
(Z^j, Z^j_pos) of anchors and positives, with q̂ the ⌈(1 − α)(n + 1)⌉-th smallest positive distance, it
contains a new anchor's positive with probability ≥ 1 − α (Lemma 1, CCS eq. 8), whatever g is — so g can be
learned to exclude negatives (CCS eq. 16) or to shrink the set's volume (CCS eq. 19, Proposition 1).

This module holds the interface every family shares (``fit`` on training triplets, ``calibrate`` on
calibration pairs, ``distance``, ``contains``, ``log_volume``, ``nonconformity``) and the conformal quantile; the
families themselves are in :mod:`conformood.conformal.sets.families`, their training in
:mod:`conformood.conformal.sets.training`.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

from ..._validation import check_alpha, check_features, check_positive_int
from ..detection.split import ConformalWarning

_EPS = 1e-12


def conformal_quantile(scores: ArrayLike, alpha: float) -> float:
    """q̂: the ⌈(1 − α)(n + 1)⌉-th smallest score (Lemma 1), with k computed in integer arithmetic.

    When k > n (α < 1/(n + 1)) no finite threshold is valid: returns +inf with a :class:`ConformalWarning`.

    **Convention (differs from the authors' code).** The official contrastive-conformal-sets code takes the
    rank ⌈(1 − α) n⌉ + 1, capped at n. That rank is at least ours (so its sets are never smaller) and, capped
    at n, it returns a finite threshold where Lemma 1 admits none; this function keeps Lemma 1's rank.

    Examples
    --------
    >>> conformal_quantile(np.arange(1.0, 20.0), 0.05)   # n = 19: k = ceil(0.95 * 20) = 19
    19.0
    """
    from ..detection.split import conformal_rank

    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("need at least one calibration score")
    if not np.all(np.isfinite(s)):
        raise ValueError("calibration scores contain NaN or infinite values")
    alpha = check_alpha(alpha)
    n = s.size
    # ceil((1 - alpha)(n + 1)) = n + 1 - floor(alpha (n + 1)), exactly.
    k = n + 1 - conformal_rank(alpha, n)
    if k > n:
        warnings.warn(
            f"alpha = {alpha} needs k = {k} > n = {n} calibration pairs; the set is the whole space (q = inf)",
            ConformalWarning,
            stacklevel=2,
        )
        return math.inf
    return float(np.partition(s, k - 1)[k - 1])


def _quantile_torch(distances: torch.Tensor, alpha: float, detach: bool = True) -> torch.Tensor:
    """The same order statistic on a tensor, clamped to n (used inside training).

    Detached by default (§4.2); with ``detach=False`` the gradient flows to the pair at the quantile.
    """
    from ..detection.split import conformal_rank

    n = distances.numel()
    k = min(n, n + 1 - conformal_rank(alpha, n))
    flat = distances.reshape(-1)
    return (flat.detach() if detach else flat).kthvalue(k).values


def _log_unit_ball_l2(d: int) -> float:
    return 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1.0)


def _as_tensor(x: Any, name: str, dim: int | None = None, dtype=torch.float64) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D (n, d), got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        if dim is not None and x.shape[1] != dim:
            raise ValueError(f"{name} has {x.shape[1]} dimensions, the set has {dim}")
        return x.to(dtype)
    arr = check_features(x, name, n_features=dim)
    return torch.from_numpy(np.ascontiguousarray(arr)).to(dtype)


class ConformalSet(nn.Module):
    """Base class: a distance g(z, Z) ≥ 0, a calibrated threshold ``threshold_`` and a closed-form volume."""

    learnable = False

    def __init__(self, dim: int, alpha: float = 0.05) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.alpha = check_alpha(alpha)
        self.threshold_: float | None = None
        self.n_calibration_: int | None = None

    # -- the geometry ---------------------------------------------------------------------------
    def log_volume_at(self, threshold: torch.Tensor | float) -> torch.Tensor:
        """log Vol{z : g(z, Z) ≤ t} in closed form (independent of Z); differentiable in the parameters."""
        raise NotImplementedError

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The linear part of g (g(z, Z) depends on z and Z only through transform(Z) − transform(z))."""
        return x

    def transformed_distance(self, points: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """g from already transformed points and anchors (training transforms a table once per step)."""
        raise NotImplementedError

    def distance(self, points: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """g(points, anchors) for broadcastable (..., d) tensors; differentiable in the set parameters."""
        dtype = self._compute_dtype()
        return self.transformed_distance(self.transform(points.to(dtype)), self.transform(anchors.to(dtype)))

    # -- the conformal part ---------------------------------------------------------------------
    def fit(
        self,
        embeddings: ArrayLike,
        labels: ArrayLike | None = None,
        views: ArrayLike | None = None,
        **train_kwargs: Any,
    ) -> ConformalSet:
        """Learn the metric on training triplets sampled from ``embeddings`` (n, d).

        Fixed families (ball, ellipsoid) have nothing to learn: their ``fit`` only checks the input. The
        learned families (:mod:`conformood.conformal.sets.families`) train with
        :func:`conformood.conformal.sets.training.train_conformal_set`.
        """
        _as_tensor(embeddings, "embeddings", self.dim)
        if self.learnable:
            raise NotImplementedError(f"{type(self).__name__} must implement fit")
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Parameters and buffers as safetensors, family, α and the calibrated threshold as JSON."""
        from ...io import save_state

        config = self.state() | {"init": self._init_args()}
        save_state(path, {k: v.detach() for k, v in self.state_dict().items()}, config, kind="ConformalSet")

    def _init_args(self) -> dict:
        return {"dim": self.dim, "alpha": self.alpha}

    def calibrate(self, anchors: ArrayLike, positives: ArrayLike) -> ConformalSet:
        """q̂ from calibration pairs (anchor, positive): the ⌈(1 − α)(n + 1)⌉-th smallest g (Lemma 1)."""
        a = _as_tensor(anchors, "anchors", self.dim)
        p = _as_tensor(positives, "positives", self.dim)
        if a.shape != p.shape:
            raise ValueError(f"anchors {tuple(a.shape)} and positives {tuple(p.shape)} must pair up row by row")
        with torch.no_grad():
            scores = self._distance64(p, a)
        self.threshold_ = conformal_quantile(scores.numpy(), self.alpha)
        self.n_calibration_ = int(a.shape[0])
        return self

    def _check_calibrated(self) -> float:
        if self.threshold_ is None:
            raise RuntimeError(f"{type(self).__name__} is not calibrated: call calibrate(anchors, positives) first")
        return self.threshold_

    def _compute_dtype(self) -> torch.dtype:
        params = list(self.parameters())
        return params[0].dtype if params else torch.float64

    def _distance64(self, points: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Distances in the set's own precision (calibration and tests use the same arithmetic)."""
        dtype = self._compute_dtype()
        return self.distance(points.to(dtype), anchors.to(dtype)).to(torch.float64)

    def forward(self, points: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return self.distance(points, anchors)

    def nonconformity(self, points: ArrayLike, anchors: ArrayLike) -> np.ndarray:
        """g(point_i, anchor_i) row by row, as float64: a distance, *lower = inside the set* (the opposite of
        the detectors' scores, which are higher for inliers)."""
        p = _as_tensor(points, "points", self.dim)
        a = _as_tensor(anchors, "anchors", self.dim)
        if p.shape[0] != a.shape[0]:
            raise ValueError(f"points ({p.shape[0]}) and anchors ({a.shape[0]}) must pair up row by row")
        with torch.no_grad():
            return self._distance64(p, a).numpy()

    def score(self, points: ArrayLike, anchors: ArrayLike) -> np.ndarray:
        """Former name of :meth:`nonconformity` (a distance, lower = inside)."""
        import warnings

        warnings.warn("ConformalSet.score is deprecated: it is a distance; use nonconformity", FutureWarning,
                      stacklevel=2)
        return self.nonconformity(points, anchors)

    def contains(self, points: ArrayLike, anchors: ArrayLike) -> np.ndarray:
        """Boolean (n,): point_i ∈ N(anchor_i), i.e. g(point_i, anchor_i) ≤ q̂."""
        return self.nonconformity(points, anchors) <= self._check_calibrated()

    def log_volume(self) -> float:
        """log Vol(N_q̂) of the calibrated set (same for every anchor)."""
        t = self._check_calibrated()
        if math.isinf(t):
            return math.inf
        with torch.no_grad():
            return float(self._log_volume64(t))

    def _log_volume64(self, t: float) -> torch.Tensor:
        return self.log_volume_at(torch.tensor(float(t), dtype=torch.float64))

    def state(self) -> dict:
        """Parameters and calibration as plain data (for saving)."""
        return {
            "kind": type(self).__name__,
            "dim": self.dim,
            "alpha": self.alpha,
            "threshold": self.threshold_,
            "n_calibration": self.n_calibration_,
        }
