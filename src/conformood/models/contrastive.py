"""Encoder + projection head, with a batched feature extractor for scoring."""

from __future__ import annotations

import torch
from torch import nn

from .encoders import SmallCNN
from .heads import ProjectionHead


class ContrastiveModel(nn.Module):
    """f_theta followed by g_psi. ``forward`` returns projections z; :meth:`features` returns f_theta(x)."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    @torch.no_grad()
    def features(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Representations f_theta(x) in evaluation mode, computed in batches; returned on the CPU."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            out = [self.encoder(x[i : i + batch_size].to(device)).cpu() for i in range(0, x.shape[0], batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out) if out else torch.empty(0, getattr(self.encoder, "feature_dim", 0))


def small_contrastive_model(
    in_channels: int, widths: tuple[int, int, int] = (32, 64, 128), projection_dim: int = 128
) -> ContrastiveModel:
    """:class:`SmallCNN` encoder with a 2-layer :class:`ProjectionHead`."""
    encoder = SmallCNN(in_channels, widths)
    return ContrastiveModel(encoder, ProjectionHead(encoder.feature_dim, out_dim=projection_dim))
