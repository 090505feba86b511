"""Optimisers of the recipes: SGD with momentum (FIRM, OECL), LARS (SimCLR / CSI at large batch), AdamW.

LARS (You et al. 2017): for each weight tensor the step is scaled by the trust ratio
η·‖w‖ / (‖∇w‖ + λ‖w‖), then SGD with momentum; biases and normalisation parameters (1-D tensors) are
neither adapted nor decayed, as in SimCLR's implementation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling on top of SGD with momentum."""

    def __init__(self, params: Any, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8) -> None:
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(f"invalid LARS settings: lr {lr}, momentum {momentum}, weight_decay {weight_decay}")
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient, eps=eps
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if p.ndim > 1:  # weights: decay and trust ratio; biases and norms: plain SGD
                    if group["weight_decay"]:
                        d_p = d_p.add(p, alpha=group["weight_decay"])
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(d_p)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * w_norm / (g_norm + group["eps"]),
                        torch.ones_like(w_norm),
                    )
                    d_p = d_p.mul(trust)
                state = self.state[p]
                if group["momentum"]:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d_p.clone()
                    else:
                        buf.mul_(group["momentum"]).add_(d_p)
                    d_p = buf
                p.add_(d_p, alpha=-group["lr"])
        return loss


@OPTIMIZERS.register("sgd", reference="FIRM appendix A", description="SGD with momentum and L2 decay")
def _sgd(params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("lars", reference="You et al. 2017; SimCLR", description="SGD with layer-wise trust ratios")
def _lars(params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw", reference="Loshchilov & Hutter 2019", description="Adam with decoupled decay")
def _adamw(params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adam", reference="Kingma & Ba 2015", description="Adam with L2 decay (the U-Net recipe)")
def _adam(params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def build_optimizer(name: str, params: nn.Module | Iterable, lr: float, momentum: float = 0.9,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The optimiser registered as ``name`` over a module's parameters (or an iterable of parameters or
    parameter groups, each of which may carry its own ``lr``)."""
    if isinstance(params, nn.Module):
        params = params.parameters()
    return OPTIMIZERS.get(name)(params, lr, momentum, weight_decay)
