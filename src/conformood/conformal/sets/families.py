"""The families of contrastive conformal sets (``contrastive-conformal-sets.md`` §4.1).

* :class:`ConformalBall` — ℓ2 distance, CCS eq. 9; a d-ball.
* :class:`MahalanobisEllipsoid` — CCS eq. 10; Σ from held-out data (``fit``), or from one half of the
  calibration embeddings and q̂ from pairs in the other half (§5), so the quantile is independent of Σ.
* :class:`SingleNormSet` — CCS eq. 11, ‖M(Z − z)‖_p with M = AAᵀ and p = |p̃| learnable; volume CCS eq. 12.
* :class:`GeneralizedMultiNormSet` — CCS eq. 13, Σ_j |m_j|^{p_j}|Z_j − z_j|^{p_j} with per-dimension |m_j|,
  |p_j|; volume CCS eq. 14.

Learned families are trained by :func:`conformood.conformal.sets.training.train_conformal_set`, which their
``fit`` calls. ``SET_FAMILIES`` is the registry of the four, by short name.
"""

from __future__ import annotations

import inspect
import math
import os
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

from ..._validation import check_positive_int
from ...registry import Registry
from .base import _EPS, ConformalSet, _as_tensor, _log_unit_ball_l2
from .sampling import pair_samples
from .training import train_conformal_set


class _LearnedSet(ConformalSet):
    """A family with parameters, learned by :func:`~conformood.conformal.sets.training.train_conformal_set`."""

    learnable = True

    def fit(self, embeddings, labels=None, views=None, **train_kwargs) -> ConformalSet:
        """Learn the metric on training triplets sampled from ``embeddings`` (n, d).

        Supervised with ``labels`` (positives share the class), unsupervised with ``views`` (n, v, d);
        keyword arguments go to :func:`~conformood.conformal.sets.training.train_conformal_set`, whose result
        is kept in ``training_``.
        """
        _as_tensor(embeddings, "embeddings", self.dim)
        self.training_ = train_conformal_set(self, embeddings, labels, views=views, **train_kwargs)
        return self


class ConformalBall(ConformalSet):
    """ℓ2 ball, CCS eq. 9: g(z, Z) = ‖Z − z‖₂; Vol = V_d t^d with V_d = π^{d/2} / Γ(d/2 + 1)."""

    def transformed_distance(self, points: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(anchors - points, dim=-1)

    def log_volume_at(self, threshold: float | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(threshold, dtype=torch.float64)
        return self.dim * torch.log(t.clamp_min(_EPS)) + _log_unit_ball_l2(self.dim)


class MahalanobisEllipsoid(ConformalSet):
    """Ellipsoid, CCS eq. 10: g = sqrt((Z − z)ᵀ Σ⁻¹ (Z − z)); Vol = V_d t^d sqrt(det Σ).

    Σ must come from data disjoint from the calibration set (§4.1, after CCS eq. 10), with a ridge
    ``shrinkage · tr(Σ)/d · I`` for stability. Two ways:

    * ``fit(embeddings, labels)`` (or ``views=``) on held-out data: Σ is the covariance of the difference
      between an anchor and a positive (same class, or one of its views); ``calibrate`` then uses every pair.
    * ``calibrate`` alone (§5's protocol): the calibration *embeddings* are split at random (``seed``) into
      two halves; Σ from the pairs inside the first, q̂ from those inside the second; straddling pairs are
      left out (counts in ``n_covariance_``, ``n_calibration_``, ``n_unused_``). Splitting the *pairs* fails
      when they share embeddings: in high dimension Σ fits the embeddings that set q̂ (coverage 0.79 at
      target 0.95, 1,280-d). Pairs that share no embedding are split as pairs.
    """

    def __init__(self, dim: int, alpha: float = 0.05, shrinkage: float = 1e-6, seed: int = 0) -> None:
        super().__init__(dim, alpha)
        self.shrinkage = float(shrinkage)
        self.seed = int(seed)
        self.register_buffer("precision_cholesky", torch.eye(dim, dtype=torch.float64))
        self.register_buffer("log_det_cov", torch.zeros((), dtype=torch.float64))
        # 1 when Σ came from fit() on held-out data (calibrate keeps it and uses every pair).
        self.register_buffer("covariance_fitted", torch.zeros((), dtype=torch.float64))
        self.n_covariance_: int | None = None
        self.n_unused_: int | None = None

    def _init_args(self) -> dict:
        return super()._init_args() | {"shrinkage": self.shrinkage, "seed": self.seed}

    def fit(self, embeddings: ArrayLike, labels: ArrayLike | None = None, views: ArrayLike | None = None,
            **train_kwargs: Any) -> MahalanobisEllipsoid:
        """Σ from held-out data (not the calibration set): E[(Z − Z⁺)(Z − Z⁺)ᵀ] for an anchor Z drawn uniformly
        and a positive Z⁺ drawn uniformly from the other members of its class (``labels``), which is
        Σ_c (2 n_c / n) Cov_c; or over the anchors' views (``views``, (n, v, d))."""
        if train_kwargs:
            raise TypeError(f"MahalanobisEllipsoid.fit takes no training options, got {sorted(train_kwargs)}")
        z = _as_tensor(embeddings, "embeddings", self.dim)
        if labels is not None:
            cov = self._labelled_covariance(z, labels)
        elif views is not None:
            v = torch.as_tensor(np.asarray(views, dtype=np.float64))
            if v.ndim != 3 or v.shape[0] != z.shape[0] or v.shape[2] != self.dim:
                raise ValueError(f"views must have shape ({z.shape[0]}, v, {self.dim}), got {tuple(v.shape)}")
            if not torch.isfinite(v).all():
                raise ValueError("views contain NaN or inf")
            diffs = (v - z[:, None, :]).reshape(-1, self.dim)
            cov = diffs.T @ diffs / diffs.shape[0]
        else:
            raise ValueError("MahalanobisEllipsoid.fit needs labels or views to form positive pairs")
        if z.shape[0] < self.dim + 1:
            raise ValueError(f"need at least {self.dim + 1} embeddings for a {self.dim}-d covariance, got {z.shape[0]}")
        self.set_covariance(cov)
        self.covariance_fitted.fill_(1.0)
        return self

    def _labelled_covariance(self, z: torch.Tensor, labels: ArrayLike) -> torch.Tensor:
        """Σ_c (2 n_c / n) Cov_c: the covariance of anchor − positive for same-class pairs."""
        y = np.asarray(labels)
        if y.ndim != 1 or y.shape[0] != z.shape[0]:
            raise ValueError(f"labels must be 1-d with one per embedding ({z.shape[0]}), got shape {y.shape}")
        cov = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        for c in np.unique(y):
            members = z[torch.from_numpy(np.flatnonzero(y == c))]
            if members.shape[0] < 2:
                raise ValueError(f"class {c!r} has fewer than two members: it has no positive pair")
            centred = members - members.mean(0)
            cov += 2.0 * centred.T @ centred / (members.shape[0] - 1) * (members.shape[0] / z.shape[0])
        return cov

    @staticmethod
    def _disjoint_halves(a: torch.Tensor | np.ndarray, p: torch.Tensor | np.ndarray,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Indices of two sets of pairs that share no embedding: each distinct embedding goes to one half at
        random (independently of the values, so each half's pairs stay exchangeable with new pairs); a pair
        belongs to a half when both its embeddings do. When no embedding is in two pairs, the pairs
        themselves are split in two."""
        a, p = np.asarray(a), np.asarray(p)
        n = a.shape[0]
        _, ids = np.unique(np.concatenate([a, p]), axis=0, return_inverse=True)
        ids = ids.reshape(-1)
        ia, ip = ids[:n], ids[n:]
        if np.bincount(ids).max() == 1:
            order = rng.permutation(n)
            return np.sort(order[: n // 2]), np.sort(order[n // 2 :])
        side = rng.integers(0, 2, ids.max() + 1)
        first = np.flatnonzero((side[ia] == 0) & (side[ip] == 0))
        second = np.flatnonzero((side[ia] == 1) & (side[ip] == 1))
        return first, second

    def calibrate(self, anchors: ArrayLike, positives: ArrayLike) -> MahalanobisEllipsoid:
        a = _as_tensor(anchors, "anchors", self.dim)
        p = _as_tensor(positives, "positives", self.dim)
        if a.shape != p.shape:
            raise ValueError(f"anchors {tuple(a.shape)} and positives {tuple(p.shape)} must pair up row by row")
        if bool(self.covariance_fitted):
            super().calibrate(a, p)
            self.n_covariance_, self.n_unused_ = 0, 0
            return self
        n = a.shape[0]
        if n < 2 * (self.dim + 1):
            raise ValueError(
                f"need at least {2 * (self.dim + 1)} calibration pairs for a {self.dim}-d covariance, got {n} "
                "(or fit the covariance on held-out data first: fit(embeddings, labels))"
            )
        first, second = self._disjoint_halves(a.numpy(), p.numpy(), np.random.default_rng(self.seed))
        if first.size < self.dim + 1 or second.size == 0:
            raise ValueError(
                f"the calibration pairs split into {first.size} pairs for the covariance and {second.size} for "
                f"the quantile with no embedding in both; a {self.dim}-d covariance needs at least "
                f"{self.dim + 1}: give more pairs, or fit the covariance on held-out data first"
            )
        f, s_ = torch.from_numpy(first), torch.from_numpy(second)
        cov = torch.cov((a[f] - p[f]).T).reshape(self.dim, self.dim)
        return self._calibrate_with(cov, a[s_], p[s_], int(first.size), int(n - first.size - second.size))

    def _calibrate_with(self, cov: torch.Tensor, anchors: torch.Tensor, positives: torch.Tensor,
                        n_covariance: int, n_unused: int) -> MahalanobisEllipsoid:
        """Σ from calibration data (so not kept as held out) and q̂ from pairs disjoint from it."""
        self.set_covariance(cov)
        self.covariance_fitted.fill_(0.0)
        super().calibrate(anchors, positives)
        self.n_covariance_, self.n_unused_ = n_covariance, n_unused
        return self

    def covariance(self) -> torch.Tensor:
        """Σ as used (ridge included), rebuilt from the stored Cholesky factor of Σ⁻¹."""
        inv_chol = self.precision_cholesky
        chol = torch.linalg.solve_triangular(inv_chol, torch.eye(self.dim, dtype=inv_chol.dtype), upper=False)
        return chol @ chol.T

    def set_covariance(self, cov: torch.Tensor) -> None:
        cov = cov.to(torch.float64)
        cov = cov + self.shrinkage * (torch.trace(cov) / self.dim + _EPS) * torch.eye(self.dim, dtype=torch.float64)
        chol = torch.linalg.cholesky(cov)
        # Σ⁻¹ = L⁻ᵀ L⁻¹ : g = ‖L⁻¹ (Z − z)‖₂.
        eye = torch.eye(self.dim, dtype=torch.float64)
        self.precision_cholesky = torch.linalg.solve_triangular(chol, eye, upper=False)
        self.log_det_cov = 2.0 * torch.log(torch.diagonal(chol)).sum()

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        # g = ‖L⁻¹(Z − z)‖₂ = ‖L⁻¹Z − L⁻¹z‖₂
        flat = x.reshape(-1, self.dim) @ self.precision_cholesky.to(x.dtype).T
        return flat.reshape(x.shape)

    def transformed_distance(self, points: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(anchors - points, dim=-1)

    def log_volume_at(self, threshold: float | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(threshold, dtype=torch.float64)
        return self.dim * torch.log(t.clamp_min(_EPS)) + _log_unit_ball_l2(self.dim) + 0.5 * self.log_det_cov


P_RANGE = (0.25, 8.0)


def _bounded_exponent(raw: torch.Tensor) -> torch.Tensor:
    """p = |p̃| kept inside ``P_RANGE`` (clamped with a straight-through gradient inside the range)."""
    return raw.abs().clamp(*P_RANGE)


class SingleNormSet(_LearnedSet):
    """Single-norm set, CCS eq. 11: ‖M(Z − z)‖_p ≤ t with M = AAᵀ (positive semi-definite) and p = |p̃|.

    Volume (CCS eq. 12): λ(B_p(t)) · det(M)⁻¹ with λ(B_p(t)) = (2t)^d Γ(1 + 1/p)^d / Γ(1 + d/p), log det M by
    ``slogdet``. Initialised at A = I, p = 2 (the ℓ2 ball).

    Two choices keep training well posed while describing exactly the same family of sets (the threshold
    absorbs both): M is normalised to unit determinant, M = AAᵀ / det(AAᵀ)^{1/d}, and the distance is the
    power mean (Σ_j |(M(Z − z))_j|^p / d)^{1/p} = d^{−1/p}‖M(Z − z)‖_p. With q̂ detached (§4.2), the raw
    parametrisation lets the optimiser raise every negative distance by inflating M or by sending p → 0 —
    all distances grow, q̂ catches up one step later, and the run diverges (observed: p → 0.01 and
    overflow within two epochs on the 3-D benchmark). p is kept in ``P_RANGE``.
    """

    learnable = True

    def __init__(self, dim: int, alpha: float = 0.05, p: float = 2.0) -> None:
        super().__init__(dim, alpha)
        self.A = nn.Parameter(torch.eye(dim))
        self.p_raw = nn.Parameter(torch.tensor(float(p)))

    @property
    def p(self) -> torch.Tensor:
        return _bounded_exponent(self.p_raw)

    def matrix(self) -> torch.Tensor:
        m = self.A @ self.A.T
        _, logdet = torch.linalg.slogdet(m)
        return m * torch.exp(-logdet / self.dim)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        # M(Z − z) = MZ − Mz; a 2-D matmul is far faster than a batched one with a tiny inner dimension.
        return (x.reshape(-1, self.dim) @ self.matrix().T).reshape(x.shape)

    def transformed_distance(self, points: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        # exp/log form: autograd of x**p with a tensor exponent is several times slower on CPU.
        log_x = (anchors - points).abs().clamp_min(1e-12).log()
        p = self.p
        return torch.exp((torch.logsumexp(p * log_x, dim=-1) - math.log(self.dim)) / p)

    def log_volume_at(self, threshold: float | torch.Tensor) -> torch.Tensor:
        # {power mean ≤ t} = {‖Mx‖_p ≤ t d^{1/p}}: CCS eq. 12 at radius t d^{1/p}.
        d = self.dim
        p = self.p.to(torch.float64)
        t = torch.as_tensor(threshold, dtype=torch.float64)
        _, logabsdet = torch.linalg.slogdet(self.matrix().to(torch.float64))
        return (
            d * (torch.log(2.0 * t.clamp_min(_EPS)) + math.log(d) / p)
            + d * torch.lgamma(1.0 + 1.0 / p)
            - torch.lgamma(1.0 + d / p)
            - logabsdet
        )

    def state(self) -> dict:
        return super().state() | {"p": float(self.p.detach())}


class GeneralizedMultiNormSet(_LearnedSet):
    """Generalized multi-norm set, CCS eq. 13: Σ_j |m_j|^{p_j} |Z_j − z_j|^{p_j} ≤ t (per-dimension |m_j|, |p_j|).

    Volume (CCS eq. 14): t^{Σ 1/p_j} / Π m_j · 2^d Π Γ(1 + 1/p_j) / Γ(1 + Σ 1/p_j). Initialised at m = 1, p = 2.
    As for :class:`SingleNormSet`, m is normalised to unit geometric mean (the overall scale only moves t)
    and every p_j is kept in ``P_RANGE``.
    """

    learnable = True

    def __init__(self, dim: int, alpha: float = 0.05, p: float = 2.0) -> None:
        super().__init__(dim, alpha)
        self.m_raw = nn.Parameter(torch.ones(dim))
        self.p_raw = nn.Parameter(torch.full((dim,), float(p)))

    @property
    def m(self) -> torch.Tensor:
        log_m = self.m_raw.abs().clamp_min(1e-6).log()
        return torch.exp(log_m - log_m.mean())

    @property
    def p(self) -> torch.Tensor:
        return _bounded_exponent(self.p_raw)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.m

    def transformed_distance(self, points: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        log_x = (anchors - points).abs().clamp_min(1e-12).log()
        return torch.exp(self.p * log_x).sum(dim=-1)

    def log_volume_at(self, threshold: float | torch.Tensor) -> torch.Tensor:
        d = self.dim
        p = self.p.to(torch.float64)
        m = self.m.to(torch.float64)
        t = torch.as_tensor(threshold, dtype=torch.float64)
        inv = (1.0 / p).sum()
        return (
            inv * torch.log(t.clamp_min(_EPS))
            - torch.log(m).sum()
            + d * math.log(2.0)
            + torch.lgamma(1.0 + 1.0 / p).sum()
            - torch.lgamma(1.0 + inv)
        )

    def state(self) -> dict:
        return super().state() | {"p": self.p.detach().tolist(), "m": self.m.detach().tolist()}


def calibrate_labelled(cset: ConformalSet, embeddings: ArrayLike, labels: ArrayLike, seed: int = 0) -> ConformalSet:
    """Calibrate ``cset`` on labelled calibration embeddings with one positive per anchor (the CCS protocol).

    An ellipsoid whose Σ was not fitted on held-out data follows §5: the calibration *embeddings* are halved
    at random, Σ is fitted on the first half and q̂ computed on pairs drawn within the second, so the two
    share no embedding. Σ counts as calibration-derived, so a later recalibration on other data estimates
    it anew.
    """
    z = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != z.shape[0]:
        raise ValueError(f"labels must be 1-d with one per embedding ({z.shape[0]}), got shape {y.shape}")
    if isinstance(cset, MahalanobisEllipsoid) and not bool(cset.covariance_fitted):
        order = np.random.default_rng(seed).permutation(z.shape[0])
        first, second = order[: z.shape[0] // 2], order[z.shape[0] // 2 :]
        cov = cset._labelled_covariance(_as_tensor(z[first], "embeddings", cset.dim), y[first])
        a, p, _ = pair_samples(y[second], 1, seed=seed)
        zs = _as_tensor(z[second], "embeddings", cset.dim)
        return cset._calibrate_with(cov, zs[a], zs[p], int(first.size), 0)
    a, p, _ = pair_samples(y, 1, seed=seed)
    return cset.calibrate(z[a], z[p])


def load_conformal_set(path: str | os.PathLike) -> ConformalSet:
    """Rebuild a set written by :meth:`ConformalSet.save`."""
    from ...io import load_state

    tensors, config = load_state(path, kind="ConformalSet")
    return conformal_set_from_state(tensors, config, str(path))


def conformal_set_from_state(tensors: dict[str, torch.Tensor], config: dict, source: str = "the file") -> ConformalSet:
    """Rebuild a set from the tensors and configuration that :meth:`ConformalSet.save` stores, checking every
    field: the family, its constructor arguments (by the constructor's own rules), every parameter's name and
    shape (before anything is allocated), the threshold and the calibration size."""
    from ...io import load_module_state

    family = {SET_FAMILIES.get(n).__name__: SET_FAMILIES.get(n) for n in SET_FAMILIES}.get(config.get("kind"))
    if family is None:
        raise ValueError(f"unknown conformal set family {config.get('kind')!r} in {source}")
    init = config.get("init")
    if not isinstance(init, dict):
        raise ValueError(f"{source}: a saved conformal set needs its constructor arguments ('init')")
    allowed = set(inspect.signature(family.__init__).parameters) - {"self"}
    unknown = sorted(set(init) - allowed)
    if unknown:
        raise ValueError(f"{source}: {family.__name__} has no argument {unknown[0]!r}")
    cset = load_module_state(lambda: family(**init), tensors, f"{source} ({family.__name__})")
    threshold, n_calibration = config.get("threshold"), config.get("n_calibration")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not math.isfinite(threshold)):
        raise ValueError(f"{source}: the set's threshold must be a finite number, got {threshold!r}")
    if (threshold is None) != (n_calibration is None):
        raise ValueError(f"{source}: a calibrated set stores both its threshold and its calibration size")
    if n_calibration is not None:
        check_positive_int(n_calibration, f"{source}: n_calibration")
    cset.threshold_ = None if threshold is None else float(threshold)
    cset.n_calibration_ = n_calibration
    return cset


SET_FAMILIES: Registry = Registry("set family")
SET_FAMILIES.register("ball", ConformalBall, reference="CCS eq. 9", description="l2 ball (fixed)", seeded=False)
SET_FAMILIES.register(
    "ellipsoid",
    MahalanobisEllipsoid,
    reference="CCS eq. 10, section 5",
    description="Mahalanobis ellipsoid, covariance from held-out data or half the calibration (fixed)",
    seeded=True,
)
SET_FAMILIES.register("single", SingleNormSet, reference="CCS eq. 11-12", description="learned single norm",
                      seeded=False)
SET_FAMILIES.register("generalized", GeneralizedMultiNormSet, reference="CCS eq. 13-14",
                      description="learned generalized multi-norm", seeded=False)
