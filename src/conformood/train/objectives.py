"""Training objectives: from a batch of in-distribution images to a scalar loss.

An objective takes the model, a float batch (n, c, h, w) in [0, 1] of in-distribution images and a
torch.Generator, builds its synthetic outliers and views, and returns the loss. The trainer is the same
for every objective.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from ..augment import ROTATION_ANGLES, SimCLRViews, rotation_outliers
from ..losses import FIRMLoss, NTXentLoss


class Objective(Protocol):
    def __call__(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...


class FIRMRotationObjective:
    """FIRM (eq. 2) on in-distribution images plus rotated copies as synthetic outliers (FIRM section 2.1).

    Every in-distribution image in the batch contributes one synthetic outlier rotated by an angle drawn
    from ``angles``, or all of its rotations with ``all_rotations=True``. Both groups get two SimCLR views.
    """

    def __init__(
        self,
        views: SimCLRViews,
        temperature: float = 0.2,
        angles: tuple[int, ...] = ROTATION_ANGLES,
        all_rotations: bool = False,
        gather_distributed: bool = False,
    ) -> None:
        self.views = views
        self.loss = FIRMLoss(temperature, gather_distributed=gather_distributed)
        self.angles = tuple(angles)
        self.all_rotations = all_rotations

    def __call__(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        outliers, _ = rotation_outliers(x, self.angles, per_sample=not self.all_rotations, generator=generator)
        batch = torch.cat([x, outliers])
        is_inlier = torch.zeros(batch.shape[0], dtype=torch.bool, device=x.device)
        is_inlier[: x.shape[0]] = True
        v1 = self.views(batch, generator)
        v2 = self.views(batch, generator)
        z = model(torch.cat([v1, v2]))
        z1, z2 = z.chunk(2)
        return self.loss(z1, z2, is_inlier)


class NTXentObjective:
    """SimCLR's NT-Xent (FIRM eq. 1) on two views of the in-distribution batch, optionally with rotations."""

    def __init__(
        self, views: SimCLRViews, temperature: float = 0.2, angles: tuple[int, ...] = (),
        gather_distributed: bool = False,
    ) -> None:
        self.views = views
        self.loss = NTXentLoss(temperature, gather_distributed=gather_distributed)
        self.angles = tuple(angles)

    def __call__(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch = x
        if self.angles:
            outliers, _ = rotation_outliers(x, self.angles, per_sample=True, generator=generator)
            batch = torch.cat([x, outliers])
        v1 = self.views(batch, generator)
        v2 = self.views(batch, generator)
        z1, z2 = model(torch.cat([v1, v2])).chunk(2)
        return self.loss(z1, z2)
