"""Distributed helpers shared by the losses and the trainer (torch.distributed, any backend).

:func:`gather_with_grad` is the autograd-aware all_gather: every rank receives all ranks' tensors, and in
the backward pass the gradient of the gathered tensor is summed over ranks (all_reduce) before each rank
keeps its own slice. With a loss averaged over local anchors and parameter gradients averaged over ranks
(as DistributedDataParallel does), training then equals single-process training on the global batch; a
plain all_gather would drop every gradient that flows through other ranks' copies.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def _check_equal_rows(x: torch.Tensor) -> None:
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
    if len({int(s) for s in sizes}) != 1:
        raise ValueError(f"every rank must contribute the same batch size, got {[int(s) for s in sizes]}")


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) over ranks along dim 0, carrying gradients back."""
    if not is_distributed():
        return x
    _check_equal_rows(x)
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` over ranks along dim 0 (no gradient), e.g. labels."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def shard_bounds(n: int) -> tuple[int, int]:
    """This rank's contiguous block [start, stop) of n items (ranks in order; the last blocks may be shorter)."""
    per = -(-n // world_size())
    start = min(n, rank() * per)
    return start, min(n, start + per)


def gather_shards(x: torch.Tensor, n: int) -> torch.Tensor:
    """Reassemble the per-rank blocks of :func:`shard_bounds` (each rank's ``x``) into all n rows, in order, on
    every rank (blocks of unequal length are padded for the exchange and trimmed after)."""
    if not is_distributed():
        return x
    per = -(-n // world_size())
    padded = torch.zeros((per, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat(parts, dim=0)[:n]


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    if is_distributed():
        dist.barrier()
