"""The families of contrastive conformal sets (``contrastive-conformal-sets.md`` §4.1).

* :class:`ConformalBall` — ℓ2 distance, eq. 9; a d-ball.
* :class:`MahalanobisEllipsoid` — eq. 10; Σ estimated on one half of the calibration pairs, q̂ on the
  other half (§5), so the quantile is computed on data independent of Σ.
* :class:`SingleNormSet` — eq. 11, ‖M(Z − z)‖_p with M = AAᵀ and p = |p̃| learnable; volume eq. 12.
* :class:`GeneralizedMultiNormSet` — eq. 13, Σ_j |m_j|^{p_j}|Z_j − z_j|^{p_j} with per-dimension |m_j|,
  |p_j|; volume eq. 14.

Learned families are trained by :func:`conformood.conformal.set_training.train_conformal_set`, which their
``fit`` calls. ``SET_FAMILIES`` is the registry of the four, by short name.
"""

from __future__ import annotations

import inspect
import math
import os

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

from .._validation import check_positive_int
from ..registry import Registry
from .set_training import train_conformal_set
from .sets import _EPS, ConformalSet, _as_tensor, _log_unit_ball_l2


class _LearnedSet(ConformalSet):
    """A family with parameters, learned by :func:`~conformood.conformal.set_training.train_conformal_set`."""

    learnable = True

    def fit(self, embeddings, labels=None, views=None, **train_kwargs) -> ConformalSet:
        """Learn the metric on training triplets sampled from ``embeddings`` (n, d).

        Supervised with ``labels`` (positives share the class), unsupervised with ``views`` (n, v, d);
        keyword arguments go to :func:`~conformood.conformal.set_training.train_conformal_set`, whose result
        is kept in ``training_``.
        """
        _as_tensor(embeddings, "embeddings", self.dim)
        self.training_ = train_conformal_set(self, embeddings, labels, views=views, **train_kwargs)
        return self


class ConformalBall(ConformalSet):
    """ℓ2 ball, eq. 9: g(z, Z) = ‖Z − z‖₂; Vol = V_d t^d with V_d = π^{d/2} / Γ(d/2 + 1)."""

    def transformed_distance(self, points: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(anchors - points, dim=-1)

    def log_volume_at(self, threshold: float | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(threshold, dtype=torch.float64)
        return self.dim * torch.log(t.clamp_min(_EPS)) + _log_unit_ball_l2(self.dim)


class MahalanobisEllipsoid(ConformalSet):
    """Ellipsoid, eq. 10: g = sqrt((Z − z)ᵀ Σ⁻¹ (Z − z)); Vol = V_d t^d sqrt(det Σ).

    Σ is the covariance of the anchor − positive differences on the first half of the calibration pairs
    (shuffled with ``seed``), with a ridge ``shrinkage · tr(Σ)/d · I`` for stability; q̂ comes from the other
    half, so Lemma 1 holds with n = the second half's size (§5 of the paper).
    """

    def __init__(self, dim: int, alpha: float = 0.05, shrinkage: float = 1e-6, seed: int = 0) -> None:
        super().__init__(dim, alpha)
        self.shrinkage = float(shrinkage)
        self.seed = int(seed)
        self.register_buffer("precision_cholesky", torch.eye(dim, dtype=torch.float64))
        self.register_buffer("log_det_cov", torch.zeros((), dtype=torch.float64))

    def _init_args(self) -> dict:
        return super()._init_args() | {"shrinkage": self.shrinkage, "seed": self.seed}

    def calibrate(self, anchors: ArrayLike, positives: ArrayLike) -> MahalanobisEllipsoid:
        a = _as_tensor(anchors, "anchors", self.dim)
        p = _as_tensor(positives, "positives", self.dim)
        if a.shape != p.shape:
            raise ValueError(f"anchors {tuple(a.shape)} and positives {tuple(p.shape)} must pair up row by row")
        n = a.shape[0]
        if n < 2 * (self.dim + 1):
            raise ValueError(
                f"need at least {2 * (self.dim + 1)} calibration pairs for a {self.dim}-d covariance, got {n}"
            )
        order = torch.from_numpy(np.random.default_rng(self.seed).permutation(n))
        first, second = order[: n // 2], order[n // 2 :]
        self.set_covariance(torch.cov((a[first] - p[first]).T).reshape(self.dim, self.dim))
        return super().calibrate(a[second], p[second])

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
    """Single-norm set, eq. 11: ‖M(Z − z)‖_p ≤ t with M = AAᵀ (positive semi-definite) and p = |p̃|.

    Volume (eq. 12): λ(B_p(t)) · det(M)⁻¹ with λ(B_p(t)) = (2t)^d Γ(1 + 1/p)^d / Γ(1 + d/p), log det M by
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
        # {power mean ≤ t} = {‖Mx‖_p ≤ t d^{1/p}}: eq. 12 at radius t d^{1/p}.
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
    """Generalized multi-norm set, eq. 13: Σ_j |m_j|^{p_j} |Z_j − z_j|^{p_j} ≤ t (per-dimension |m_j|, |p_j|).

    Volume (eq. 14): t^{Σ 1/p_j} / Π m_j · 2^d Π Γ(1 + 1/p_j) / Γ(1 + Σ 1/p_j). Initialised at m = 1, p = 2.
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


def load_conformal_set(path: str | os.PathLike) -> ConformalSet:
    """Rebuild a set written by :meth:`ConformalSet.save`."""
    from ..io import load_state

    tensors, config = load_state(path, kind="ConformalSet")
    return conformal_set_from_state(tensors, config, str(path))


def conformal_set_from_state(tensors: dict[str, torch.Tensor], config: dict, source: str = "the file") -> ConformalSet:
    """Rebuild a set from the tensors and configuration that :meth:`ConformalSet.save` stores, checking every
    field: the family, its constructor arguments (by the constructor's own rules), every parameter's name and
    shape (before anything is allocated), the threshold and the calibration size."""
    from ..io import load_module_state

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
    description="Mahalanobis ellipsoid, covariance on half the calibration pairs (fixed)",
    seeded=True,
)
SET_FAMILIES.register("single", SingleNormSet, reference="CCS eq. 11-12", description="learned single norm",
                      seeded=False)
SET_FAMILIES.register("generalized", GeneralizedMultiNormSet, reference="CCS eq. 13-14",
                      description="learned generalized multi-norm", seeded=False)
