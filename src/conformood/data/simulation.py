"""Synthetic data generators of the papers.

:func:`ccs_mixed_clusters` — the 3-D "mixed distribution" of ``contrastive-conformal-sets.md`` app. B
(Fig. 2): 5 classes × 5,000 points whose centres lie on a circle of radius 2.5 with a sinusoidal elevation;
the first two classes are anisotropic Gaussians (a random covariance stretched along a random axis by a
factor U(3, 5)); the other three are "banana" arcs (base radius 1.5, random orthogonal rotation, isotropic
noise σ = 1.0).
"""

from __future__ import annotations

import numpy as np

from .._validation import check_positive_int


def _random_rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def ccs_mixed_clusters(
    n_per_class: int = 5000,
    n_classes: int = 5,
    n_gaussian: int = 2,
    radius: float = 2.5,
    elevation: float = 0.5,
    arc_radius: float = 1.5,
    noise: float = 1.0,
    seed: int = 0,
    eigenvalues: tuple[float, float] = (0.25, 0.75),
) -> tuple[np.ndarray, np.ndarray]:
    """Points (n_classes · n_per_class, 3) float64 and integer labels, shuffled.

    Centre of class c: (r cos θ_c, r sin θ_c, e sin 2θ_c) with θ_c = 2πc / n_classes. Gaussian classes:
    covariance Q diag(U(0.1, 0.3)) Qᵀ (Q a random rotation) with one randomly chosen coordinate axis scaled
    by s ~ U(3, 5), i.e. Σ = S Σ₀ S with S = I + (s − 1) e_a e_aᵀ. Banana classes: angle φ ~ U(−π/2, π/2)
    on an arc of radius ``arc_radius`` (centred on its mean), rotated by a random orthogonal matrix, plus
    N(0, noise² I).
    """
    n_per_class = check_positive_int(n_per_class, "n_per_class")
    n_classes = check_positive_int(n_classes, "n_classes")
    if not 0 <= n_gaussian <= n_classes:
        raise ValueError(f"n_gaussian must lie in [0, {n_classes}], got {n_gaussian}")
    rng = np.random.default_rng(seed)
    points, labels = [], []
    for c in range(n_classes):
        theta = 2.0 * np.pi * c / n_classes
        centre = np.array([radius * np.cos(theta), radius * np.sin(theta), elevation * np.sin(2.0 * theta)])
        if c < n_gaussian:
            q = _random_rotation(rng, 3)
            cov0 = q @ np.diag(rng.uniform(*eigenvalues, size=3)) @ q.T
            axis = int(rng.integers(3))
            s = np.eye(3)
            s[axis, axis] = rng.uniform(3.0, 5.0)
            cov = s @ cov0 @ s
            x = rng.multivariate_normal(centre, cov, size=n_per_class)
        else:
            phi = rng.uniform(-np.pi / 2, np.pi / 2, size=n_per_class)
            arc = np.stack([arc_radius * np.cos(phi), arc_radius * np.sin(phi), np.zeros_like(phi)], axis=1)
            arc -= arc.mean(axis=0)
            x = arc @ _random_rotation(rng, 3).T + rng.normal(0.0, noise, size=arc.shape) + centre
        points.append(x)
        labels.append(np.full(n_per_class, c))
    x = np.concatenate(points)
    y = np.concatenate(labels)
    order = rng.permutation(x.shape[0])
    return x[order], y[order]
