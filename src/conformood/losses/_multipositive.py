"""The one computation behind NT-Xent, SupCon and FIRM: a multi-positive masked log-softmax.

Given L2-normalised views z (m, d) and an integer label per view, the positives of anchor i are
P(i) = {p != i : label_p = label_i} and the loss is

    L = 1/m sum_i [ lse_i - 1/|P(i)| sum_{p in P(i)} z_i . z_p / T ],   lse_i = log sum_{a != i} exp(z_i . z_a / T)

(FIRM paper eq. 2 with the labels chosen per loss; NT-Xent eq. 1 when every sample has its own label).

The fast path is a custom autograd function with the analytic gradient:

* the positive term needs no m x m mask: sum_{p in P(i)} z_p = (class sum of z) - z_i, so it costs O(m d);
* the m x m matrix E = exp((Z Z^T - 1) / T) (diagonal zeroed) is symmetric because the shift 1/T is a
  constant (|z_i . z_a| <= 1), so the backward pass dL/dZ = (Pr Z + Pr^T Z - W Z - W^T Z) / (m T), with
  Pr = softmax rows and W the positive weights, needs a single product E @ [Z, Z / D];
* E is the only m x m buffer kept: memory grows as m^2, never m^3.

When exp(-2/T) would underflow in the working precision (T < 0.025 in float32) or for half precision, the
plain autograd path (masked log-softmax with the row maximum) is used instead; both agree to rounding.
"""

from __future__ import annotations

import torch

# exp(-x) stays a normal number for x below these (float32: 1.2e-38 ~ exp(-87); float64: exp(-708))
_MAX_SHIFT = {torch.float32: 80.0, torch.float64: 700.0}


def _class_sums(z: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    return torch.zeros(n_classes, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, labels, z)


class _MultiPositiveNCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, labels: torch.Tensor, n_pos: torch.Tensor, inv_t: float) -> torch.Tensor:
        n_classes = int(labels.max()) + 1
        # E = exp(z.z/T - 1/T) with the shift folded into the product, then exponentiated in place
        e = torch.addmm(z.new_tensor(-inv_t), z, z.T, alpha=inv_t).exp_()
        e.fill_diagonal_(0.0)
        denom = e.sum(dim=1)
        class_sum = _class_sums(z, labels, n_classes)
        pos_mean = (class_sum[labels] - z) / n_pos[:, None]  # W Z
        positive = inv_t * (z * pos_mean).sum(dim=1)
        loss = (torch.log(denom) + inv_t - positive).mean()
        ctx.save_for_backward(z, labels, n_pos, e, denom, pos_mean)
        ctx.inv_t = inv_t
        ctx.n_classes = n_classes
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        z, labels, n_pos, e, denom, pos_mean = ctx.saved_tensors
        inv_t = ctx.inv_t
        m, d = z.shape
        # Pr Z + Pr^T Z with Pr = E / D (rows) and E symmetric: one product E @ [Z, Z / D]
        both = e @ torch.cat([z, z / denom[:, None]], dim=1)
        pr_z = both[:, :d] / denom[:, None] + both[:, d:]
        # W^T Z: column p of W holds 1/|P(i)| for the anchors i whose positive p is
        weighted = _class_sums(z / n_pos[:, None], labels, ctx.n_classes)
        wt_z = weighted[labels] - z / n_pos[:, None]
        grad = (pr_z - pos_mean - wt_z).mul_(grad_out * inv_t / m)
        return grad, None, None, None


def _plain(z: torch.Tensor, labels: torch.Tensor, inv_t: float) -> torch.Tensor:
    """Reference path with autograd: masked log-softmax with the row maximum."""
    m = z.shape[0]
    logits = (z @ z.T) * inv_t
    eye = torch.eye(m, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_probs = (logits - torch.logsumexp(logits, dim=1, keepdim=True)).masked_fill(eye, 0.0)
    mask = (labels[:, None] == labels[None, :]) & ~eye
    return -((log_probs * mask).sum(dim=1) / mask.sum(dim=1)).mean()


def multi_positive_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean multi-positive contrastive loss of normalised views ``z`` (m, d) with view ``labels`` (m,).

    ``labels`` must be in 0..K-1 and every view must share its label with at least one other view.
    """
    inv_t = 1.0 / temperature
    counts = torch.bincount(labels)
    n_pos = (counts[labels] - 1).to(z.dtype)
    if bool((n_pos == 0).any()):
        raise ValueError("every anchor needs at least one positive (another view with its label)")
    limit = _MAX_SHIFT.get(z.dtype)
    if limit is None or 2.0 * inv_t > limit:
        return _plain(z, labels, inv_t)
    return _MultiPositiveNCE.apply(z, labels, n_pos, inv_t)


def multi_positive_loss_reference(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """The plain autograd path of :func:`multi_positive_loss` (for tests and benchmarks)."""
    return _plain(z, labels, 1.0 / temperature)
