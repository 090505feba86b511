"""Shared pieces of the contrastive losses: input checks and the label-structured view loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import distributed as dist_utils
from ._multipositive import multi_positive_loss


def check_embeddings(z: torch.Tensor, name: str, min_rows: int = 1) -> None:
    """Raise ``ValueError`` unless ``z`` is a finite floating-point tensor (n, d) with n >= min_rows."""
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got {tuple(z.shape)}")
    if not torch.is_floating_point(z):
        raise ValueError(f"{name} must be a floating-point tensor, got {z.dtype}")
    if z.shape[0] < min_rows:
        raise ValueError(f"{name} needs n >= {min_rows} rows, got n = {z.shape[0]}")
    if z.shape[1] < 1:
        raise ValueError(f"{name} has zero dimensions")
    if not torch.isfinite(z).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def unit_rows(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """L2-normalise along ``dim``, in float32 for half and bfloat16 inputs: a norm above 65,504 overflows
    float16 to inf and the normalised rows to zero, which silently degenerates every contrastive loss. The
    losses therefore compute in float32 (or float64 for float64 inputs) and return that precision."""
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()
    return F.normalize(z, dim=dim)


def check_views(z1: torch.Tensor, z2: torch.Tensor) -> None:
    """Raise ``ValueError`` unless z1, z2 are finite float tensors of one shape (n, d) with n >= 2."""
    for name, z in (("z1", z1), ("z2", z2)):
        if not isinstance(z, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
        if z.ndim != 2:
            raise ValueError(f"{name} must have shape (n, d), got {tuple(z.shape)}")
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    check_embeddings(z1, "z1", min_rows=2)
    check_embeddings(z2, "z2", min_rows=2)


def check_sample_vector(x: torch.Tensor, name: str, n: int, dtype: torch.dtype | None = None) -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor of shape (n,) (and of ``dtype`` if given)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape ({n},), got {type(x).__name__}")
    if dtype is torch.bool and x.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor of shape ({n},), got dtype {x.dtype}")
    if dtype is torch.long and (torch.is_floating_point(x) or x.dtype == torch.bool or torch.is_complex(x)):
        raise ValueError(f"{name} must be an integer tensor of shape ({n},), got dtype {x.dtype}")
    if tuple(x.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(x.shape)}")


def pair_index(n: int, device: torch.device) -> torch.Tensor:
    """Index of each anchor's paired view in the stacked (2n) batch: (i + n) mod 2n."""
    return torch.cat([torch.arange(n, 2 * n, device=device), torch.arange(0, n, device=device)])


def global_sample_offset(n: int) -> int:
    """Index of this rank's first sample in the global batch (0 outside distributed runs)."""
    return dist_utils.rank() * n


def _rectangular_loss(
    z_local: torch.Tensor, z_all: torch.Tensor, labels_local: torch.Tensor, labels_all: torch.Tensor,
    self_index: torch.Tensor, inv_t: float,
) -> torch.Tensor:
    """Local anchors x global candidates: the masked log-softmax of :func:`multi_positive_loss`."""
    rows = torch.arange(z_local.shape[0], device=z_local.device)
    logits = (z_local @ z_all.T) * inv_t
    logits[rows, self_index] = float("-inf")
    log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    log_probs = log_probs.index_put((rows, self_index), torch.zeros((), dtype=log_probs.dtype, device=log_probs.device))
    mask = labels_local[:, None] == labels_all[None, :]
    mask[rows, self_index] = False
    n_pos = mask.sum(dim=1)
    if bool((n_pos == 0).any()):
        raise ValueError("every anchor needs at least one positive (another view with its label)")
    return -((log_probs * mask).sum(dim=1) / n_pos).mean()


def view_label_loss(
    z1: torch.Tensor, z2: torch.Tensor, sample_labels: torch.Tensor, temperature: float, gather_distributed: bool
) -> torch.Tensor:
    """Contrastive loss over the 2n views where two views are positives iff their samples share a label.

    ``sample_labels`` (n,) are integers, global across ranks in distributed runs. With
    ``gather_distributed`` inside a process group, local anchors are contrasted with all ranks' views.
    """
    z = unit_rows(torch.cat([z1, z2], dim=0), dim=1)
    labels = torch.cat([sample_labels, sample_labels]).to(z.device)
    if gather_distributed and dist_utils.is_distributed():
        z_all = dist_utils.gather_with_grad(z)
        labels_all = dist_utils.gather_no_grad(labels)
        self_index = torch.arange(z.shape[0], device=z.device) + dist_utils.rank() * z.shape[0]
        return _rectangular_loss(z, z_all, labels, labels_all, self_index, 1.0 / temperature)
    _, compact = torch.unique(labels, return_inverse=True)
    return multi_positive_loss(z, compact, temperature)
