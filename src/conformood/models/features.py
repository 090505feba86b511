"""The one way to turn inputs into features: :func:`encode`."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def encode(module: nn.Module, inputs: torch.Tensor, batch_size: int = 512, device: str | torch.device | None = None
           ) -> torch.Tensor:
    """``module(inputs)`` in evaluation mode, without gradients, in batches of ``batch_size``; returned on the CPU.

    ``device`` defaults to the device of the module's parameters (CPU for a module without any). The module's
    training mode is restored afterwards. An empty input gives an empty (0, feature_dim) tensor when the module
    declares ``feature_dim``.
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(inputs, torch.Tensor) or inputs.ndim < 1:
        raise ValueError("inputs must be a tensor with one row per sample")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if device is None:
        first = next(module.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    if inputs.shape[0] == 0:
        return torch.empty(0, getattr(module, "feature_dim", 0))
    was_training = module.training
    module.eval()
    try:
        out = [module(inputs[i : i + batch_size].to(device)).cpu() for i in range(0, inputs.shape[0], batch_size)]
    finally:
        module.train(was_training)
    return torch.cat(out)
