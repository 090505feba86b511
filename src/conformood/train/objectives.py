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
from ..losses import FIRMLoss, NTXentLoss, OECLLoss, SupConLoss


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


class SupConRotationObjective:
    """SupCon (FIRM Table 4 baselines) on inliers plus rotated copies: ``binary`` labels (inlier vs outlier)
    or, with ``binary=False``, SupCon* where every rotation angle is its own class."""

    def __init__(self, views: SimCLRViews, temperature: float = 0.2, binary: bool = True,
                 angles: tuple[int, ...] = ROTATION_ANGLES, gather_distributed: bool = False) -> None:
        self.views = views
        self.loss = SupConLoss(temperature, gather_distributed=gather_distributed)
        self.binary = binary
        self.angles = tuple(angles)

    def __call__(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        outliers, angle_idx = rotation_outliers(x, self.angles, per_sample=True, generator=generator)
        batch = torch.cat([x, outliers])
        out_labels = torch.ones_like(angle_idx) if self.binary else angle_idx + 1
        labels = torch.cat([torch.zeros(x.shape[0], dtype=torch.long), out_labels]).to(x.device)
        z1, z2 = model(torch.cat([self.views(batch, generator), self.views(batch, generator)])).chunk(2)
        return self.loss(z1, z2, labels)


class FIRMOutlierExposureObjective:
    """FIRM (eq. 2) with outlier-exposure images as the single-positive outliers (FIRM §2.1, OE variant):
    each batch draws as many pool images as it has inliers."""

    def __init__(self, views: SimCLRViews, pool, temperature: float = 0.2, gather_distributed: bool = False) -> None:
        self.views = views
        self.pool = pool
        self.loss = FIRMLoss(temperature, gather_distributed=gather_distributed)

    def __call__(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        outliers = self.pool.sample(x.shape[0], generator).to(x.device)
        batch = torch.cat([x, outliers])
        is_inlier = torch.zeros(batch.shape[0], dtype=torch.bool, device=x.device)
        is_inlier[: x.shape[0]] = True
        z1, z2 = model(torch.cat([self.views(batch, generator), self.views(batch, generator)])).chunk(2)
        return self.loss(z1, z2, is_inlier)


class OECLObjective:
    """OECL (OECL paper eq. 7): NT-Xent on two views of the inliers + α·mean ‖f(view of OE image)‖₂, with α = 0
    for the first ``warmup_epochs`` epochs (the trainer reports epochs through :meth:`set_epoch`)."""

    def __init__(self, views: SimCLRViews, pool, temperature: float = 0.5, alpha: float = 1.0,
                 warmup_epochs: int = 0) -> None:
        self.views = views
        self.pool = pool
        self.loss = OECLLoss(temperature, alpha=alpha, warmup_epochs=warmup_epochs)

    def set_epoch(self, epoch: int) -> None:
        self.loss.set_epoch(epoch)

    def __call__(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        oe = self.pool.sample(x.shape[0], generator).to(x.device)
        z = model(torch.cat([self.views(x, generator), self.views(x, generator), self.views(oe, generator)]))
        z1, z2, z_oe = z.split(x.shape[0])
        return self.loss(z1, z2, z_oe)
