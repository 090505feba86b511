"""Boundary checks shared by every public entry point.

Each helper raises ``ValueError`` saying what was wrong and what was expected; internal code trusts its
callers and does not re-check.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """Return ``alpha`` as a float after checking it lies strictly inside (0, 1)."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise ValueError(f"{name} must be a real number in (0, 1), got {alpha!r}")
    value = float(alpha)
    if not np.isfinite(value) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {alpha!r}")
    return value


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int after checking ``value >= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_positive_float(value: Any, name: str) -> float:
    """Return ``value`` as a float after checking it is finite and > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def check_scores(scores: Any, name: str, min_size: int = 1) -> np.ndarray:
    """Return a 1-D float64 array of finite scores with at least ``min_size`` entries."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().numpy()
    arr = np.asarray(scores)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real, got complex dtype {arr.dtype} (it is never truncated to its real part)")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (n,), got shape {arr.shape}")
    if arr.shape[0] < min_size:
        if min_size == 1:
            raise ValueError(f"{name} is empty: at least one score is needed")
        raise ValueError(f"{name} needs at least {min_size} entries, got {arr.shape[0]}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); scores must be finite")
    return arr


def check_features(
    features: Any, name: str = "features", n_features: int | None = None, min_samples: int = 1
) -> np.ndarray:
    """Return a 2-D float array (n, d) of finite values; float32 and float64 are kept, others become float32."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    arr = np.asarray(features)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real, got complex dtype {arr.dtype} (it is never truncated to its real part)")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {arr.shape}")
    if arr.shape[0] < min_samples:
        raise ValueError(f"{name} needs at least {min_samples} sample(s), got {arr.shape[0]}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has zero features (shape {arr.shape})")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(
            f"{name} has {arr.shape[1]} features but the detector was fitted on {n_features}"
        )
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.all(np.isfinite(arr), axis=1)))
        raise ValueError(f"{name} contains NaN or infinite values in {bad} row(s)")
    return arr


def check_binary_labels(labels: Any, name: str, n: int) -> np.ndarray:
    """Return a 1-D bool array of length ``n`` (accepts bool or {0, 1} integers)."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isin(arr, (0, 1))):
            raise ValueError(f"{name} must be boolean or contain only 0 and 1")
        arr = arr.astype(bool)
    return arr


def check_images(images: Any, name: str = "images") -> torch.Tensor:
    """Return a float tensor (n, c, h, w) of finite values, c in {1, 3}."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{name} must have shape (n, channels, height, width), got {tuple(images.shape)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels (dim 1), got {images.shape[1]}")
    if not torch.is_floating_point(images):
        raise ValueError(f"{name} must be a floating-point tensor scaled to [0, 1], got {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return images


# -- segmentation maps and masks (shared by conformal risk control, its training and its metrics) ----------
def as_numpy(value: Any) -> np.ndarray:
    """A numpy view of an array or a (detached, CPU) tensor."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def probability_array(probs: Any, name: str) -> np.ndarray:
    """Shape and dtype checks of :func:`check_probability_maps` (the value range is checked by the caller)."""
    arr = as_numpy(probs)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"{name} must be floating-point probabilities in [0, 1], got dtype {arr.dtype}; "
            "pass probabilities, not logits or integer images"
        )
    if arr.ndim != 3:
        raise ValueError(f"{name} must have shape (n_images, height, width), got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: at least one image is needed")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32)
    return arr


def check_probability_maps(probs: Any, name: str = "probs") -> np.ndarray:
    """Return probability maps (n, h, w) as float32/float64 after checking they are finite and in [0, 1]."""
    arr = probability_array(probs, name)
    lo, hi = float(arr.min()), float(arr.max())
    # NaN propagates through min/max and fails both comparisons.
    if not (lo >= 0.0 and hi <= 1.0):
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(f"{name} contains NaN or infinite values")
        raise ValueError(
            f"{name} must lie in [0, 1] (probabilities), got values in [{lo:.4g}, {hi:.4g}]; "
            "apply a sigmoid/softmax first if these are logits"
        )
    return arr


def check_masks(masks: Any, shape: tuple[int, ...], name: str = "masks") -> np.ndarray:
    """Return boolean masks of the given shape (accepts bool or {0, 1} integers)."""
    arr = as_numpy(masks)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have the same shape as the probability maps {tuple(shape)}, got {arr.shape}")
    if arr.dtype != bool:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise ValueError(f"{name} must be boolean or 0/1, got dtype {arr.dtype}")
        if arr.size and not (arr.min() >= 0 and arr.max() <= 1 and np.array_equal(arr, arr.astype(bool))):
            raise ValueError(f"{name} must contain only 0 and 1")
        arr = arr.astype(bool)
    return arr


def nonempty_masks(masks: Any) -> np.ndarray:
    """Boolean vector (n,): True where the mask has at least one positive pixel (|Y| > 0)."""
    arr = as_numpy(masks)
    if arr.ndim != 3:
        raise ValueError(f"masks must have shape (n_images, height, width), got {arr.shape}")
    return np.count_nonzero(arr.reshape(arr.shape[0], -1), axis=1) > 0


def check_positive_counts(masks: np.ndarray, name: str) -> np.ndarray:
    """Positive pixels per mask; a clear error when any mask is empty (the FNR needs |Y| > 0)."""
    counts = np.count_nonzero(masks.reshape(masks.shape[0], -1), axis=1)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(
            f"{empty.size} image(s) in {name} have an empty mask (first: index {int(empty[0])}); the FNR is "
            "undefined for |Y| = 0 — drop them first (see nonempty_masks)"
        )
    return counts


# -- renamed parameters ----------------------------------------------------------------------------------------
def renamed(new_value: Any, old_value: Any, new: str, old: str, default: Any = None) -> Any:
    """The value of a renamed parameter: ``old`` still works, with a FutureWarning, unless both are given."""
    if old_value is None:
        return new_value
    import warnings

    if new_value is not None and new_value != default:
        raise ValueError(f"give {new}= only ({old}= is its former name)")
    warnings.warn(f"{old}= is deprecated; use {new}=", FutureWarning, stacklevel=3)
    return old_value


def check_finite_scores(scores: np.ndarray, where: str) -> np.ndarray:
    """``scores`` unchanged when every entry is finite; otherwise a ValueError naming the first rows and why a
    score cannot be trusted (a detector never returns a non-finite score)."""
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        rows = ", ".join(map(str, bad[:5].tolist())) + (", ..." if bad.size > 5 else "")
        raise ValueError(f"{where} gave non-finite scores for {bad.size} input(s) (rows {rows}): the features are "
                         "outside the range the fitted model can represent (degenerate covariance, overflow)")
    return scores
