"""Shared pieces of the contrastive losses: input checks and the masked log-softmax over a view batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_views(z1: torch.Tensor, z2: torch.Tensor) -> None:
    """Raise ``ValueError`` unless z1, z2 are finite float tensors of one shape (n, d) with n >= 2."""
    for name, z in (("z1", z1), ("z2", z2)):
        if not isinstance(z, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
        if z.ndim != 2:
            raise ValueError(f"{name} must have shape (n, d), got {tuple(z.shape)}")
        if not torch.is_floating_point(z):
            raise ValueError(f"{name} must be a floating-point tensor, got {z.dtype}")
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError(f"a contrastive batch needs n >= 2 samples per view, got n = {z1.shape[0]}")
    if z1.shape[1] < 1:
        raise ValueError("projections have zero dimensions")
    if not (torch.isfinite(z1).all() and torch.isfinite(z2).all()):
        raise ValueError("z1 or z2 contains NaN or infinite values")


def view_log_probs(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-softmax of cosine similarities / temperature over all other views.

    Returns L of shape (2n, 2n) with L[i, a] = log( exp(z_i.z_a/T) / sum_{b != i} exp(z_i.z_b/T) ) for
    a != i and L[i, i] = 0 (the anchor is never its own candidate). Rows 0..n-1 are the first view,
    n..2n-1 the second, so the positive of anchor i is (i + n) mod 2n. O(n^2 d) time, O(n^2) memory.
    """
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    logits = (z @ z.T) / temperature
    eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return log_probs.masked_fill(eye, 0.0)


def pair_index(n: int, device: torch.device) -> torch.Tensor:
    """Index of each anchor's paired view in the stacked (2n) batch: (i + n) mod 2n."""
    return torch.cat([torch.arange(n, 2 * n, device=device), torch.arange(0, n, device=device)])
