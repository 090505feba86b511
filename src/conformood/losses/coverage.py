"""Differentiable coverage objectives for image-adaptive thresholds (``coat-adaptive-threshold-segmentation.md``).

* :func:`soft_tpr` — the differentiable TPR of §3.2.2: |M_soft · Y| / (|Y| + ε) with the soft mask
  M_soft = σ((p̂ − τ̂) / T) (COAT Algorithm 1 lines 9–10).
* :class:`COATLoss` — L_COAT = mean over images of (TPR' − (1 − α))² (Algorithm 1 line 11).
* :class:`ATLoss` — L_AT of COAT eq. 8, the mean squared error to the oracle thresholds τ*(X, Y).
"""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_alpha, check_positive_float


def _tensor(value: object, name: str, where: str) -> torch.Tensor:
    """``value`` if it is a torch tensor; a loss is differentiated, so arrays of other libraries are refused."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where} takes torch tensors (it is differentiated); {name} is a {type(value).__name__}: "
                        "convert it with torch.as_tensor")
    return value


def soft_tpr(
    probs: torch.Tensor, masks: torch.Tensor, thresholds: torch.Tensor, temperature: float, eps: float = 1e-6
) -> torch.Tensor:
    """Per-image soft TPR (n,) for maps (n, h, w), masks (n, h, w) and thresholds (n,)."""
    for name, value in (("probs", probs), ("masks", masks), ("thresholds", thresholds)):
        _tensor(value, name, "soft_tpr / COATLoss")
    if not (probs.is_floating_point() and thresholds.is_floating_point()):
        raise TypeError(f"probs and thresholds must be floating point, got {probs.dtype} and {thresholds.dtype}")
    if probs.shape != masks.shape or probs.ndim != 3:
        raise ValueError(f"probs and masks must both be (n, h, w), got {tuple(probs.shape)} and {tuple(masks.shape)}")
    if thresholds.shape != probs.shape[:1]:
        raise ValueError(f"thresholds must be (n,) = {tuple(probs.shape[:1])}, got {tuple(thresholds.shape)}")
    y = masks.to(probs.dtype)
    soft = torch.sigmoid((probs - thresholds[:, None, None]) / temperature)
    return (soft * y).sum(dim=(1, 2)) / (y.sum(dim=(1, 2)) + eps)


class COATLoss(nn.Module):
    """L_COAT = E[(TPR'(X, Y, τ̂(X)) − (1 − α))²] with T the sigmoid temperature (paper: T = 0.05)."""

    def __init__(self, alpha: float, temperature: float = 0.05, eps: float = 1e-6) -> None:
        super().__init__()
        self.alpha = check_alpha(alpha)
        self.temperature = check_positive_float(temperature, "temperature")
        self.eps = check_positive_float(eps, "eps")

    def forward(self, probs: torch.Tensor, masks: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
        tpr = soft_tpr(probs, masks, thresholds, self.temperature, self.eps)
        return ((tpr - (1.0 - self.alpha)) ** 2).mean()


class ATLoss(nn.Module):
    """L_AT of COAT eq. 8: mean (τ̂(X) − τ*(X, Y))²."""

    def forward(self, thresholds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _tensor(thresholds, "thresholds", "ATLoss")
        _tensor(targets, "targets", "ATLoss")
        if thresholds.shape != targets.shape:
            raise ValueError(f"thresholds {tuple(thresholds.shape)} and targets {tuple(targets.shape)} differ in shape")
        return ((thresholds - targets) ** 2).mean()
