"""Training objectives: from a batch of in-distribution images to a scalar loss.

An objective takes the model, a float batch (n, c, h, w) in [0, 1] of in-distribution images and a
torch.Generator, builds its synthetic outliers and views, and returns the loss. The trainer is the same
for every objective.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from ..augment import ROTATION_ANGLES, SimCLRViews, random_hflip, rotate, rotation_outliers
from ..losses import (
    CIDERLoss,
    CSILoss,
    FIRMLoss,
    JointContrastiveCELoss,
    NTXentLoss,
    OECLLoss,
    SupConLoss,
)


class Objective(Protocol):
    """``needs_labels = True`` on an objective makes the trainer pass ``labels=`` (the batch's class indices);
    ``set_epoch(epoch)`` is called before every epoch when defined, and ``state_dict`` / ``load_state_dict``
    (when defined) are saved in and restored from checkpoints."""

    def __call__(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...


def _shifted_views(plain: SimCLRViews, flip_p: float, x: torch.Tensor, angles: tuple[int, ...],
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two views of every image under every shift, flipped *before* the shift as both reference codes do (CSI,
    self-OECL): view = t(R_k(mirror?(x))), the mirror drawn with probability ``flip_p`` and t the SimCLR
    augmentation without its flip (``plain``). Flipping after the
    shift would mislabel shifts, since hflip ∘ R90 = R270 ∘ hflip. Returns (view 1, view 2, shift labels)."""
    out = []
    for _ in range(2):
        shifted, labels = _shifted(random_hflip(x, flip_p, generator), angles)
        out.append(plain(shifted, generator))
    return out[0], out[1], labels


def _shifted(x: torch.Tensor, angles: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image under every rotation in ``angles`` (angle-major) and the index of each one's rotation."""
    shifted = torch.cat([rotate(x, a) for a in angles])
    labels = torch.arange(len(angles), device=x.device).repeat_interleave(x.shape[0])
    return shifted, labels


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

    def __init__(
        self, views: SimCLRViews, pool: Any, temperature: float = 0.2, gather_distributed: bool = False
    ) -> None:
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
    """OECL (OECL paper eq. 7): NT-Xent on two views of the inliers + λ·mean ‖f(view of OE image)‖₂ (the paper's
    α, here ``norm_weight``), with λ = 0 for the first ``warmup_epochs`` epochs (the trainer reports epochs
    through :meth:`set_epoch`)."""

    def __init__(self, views: SimCLRViews, pool: Any, temperature: float = 0.5, norm_weight: float = 1.0,
                 warmup_epochs: int = 0, gather_distributed: bool = False) -> None:
        self.views = views
        self.pool = pool
        self.loss = OECLLoss(temperature, norm_weight=norm_weight, warmup_epochs=warmup_epochs,
                             gather_distributed=gather_distributed)

    def set_epoch(self, epoch: int) -> None:
        self.loss.set_epoch(epoch)

    def __call__(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        oe = self.pool.sample(x.shape[0], generator).to(x.device)
        z = model(torch.cat([self.views(x, generator), self.views(x, generator), self.views(oe, generator)]))
        z1, z2, z_oe = z.split(x.shape[0])
        return self.loss(z1, z2, z_oe)


class CSIObjective:
    """CSI (Tack et al. 2020; the base loss of OECL section IV): each image under each shift of ``shifts``
    (rotations by 0, 90, 180 and 270 degrees) is its own instance. NT-Xent over the two SimCLR views of all
    shifted instances, plus ``shift_weight`` times the cross-entropy of the model's shift head (an auxiliary
    head with ``len(shifts)`` outputs) on both views."""

    def __init__(self, views: SimCLRViews, temperature: float = 0.5, shifts: tuple[int, ...] = (0, 90, 180, 270),
                 shift_weight: float = 1.0, gather_distributed: bool = False) -> None:
        self.views = views
        self.plain_views = views.without_flip()  # views flip before the shift (see _shifted_views)
        self.shifts = tuple(shifts)
        self.loss = CSILoss(temperature, shift_weight=shift_weight, gather_distributed=gather_distributed)

    def __call__(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        v1, v2, labels = _shifted_views(self.plain_views, self.views.config.flip_p, x, self.shifts, generator)
        z, logits = model(torch.cat([v1, v2]), with_aux=True)
        z1, z2 = z.chunk(2)
        return self.loss(z1, z2, logits, labels)


class SelfOECLObjective:
    """Self-OECL (OECL eq. 8, section IV): CSI over the in-distribution shifts S = {I, R90} plus
    λ * mean ||f(t(S_oe(x)))||_2 over outliers made with S_oe = {R180, R270} (one angle drawn per image),
    where f is the unnormalised projection and λ (the paper's α) is ``norm_weight``, 0 for the first
    ``warmup_epochs`` epochs (appendix G).
    The model's shift head has ``len(id_shifts)`` outputs."""

    def __init__(self, views: SimCLRViews, temperature: float = 0.5, norm_weight: float = 1.0, warmup_epochs: int = 0,
                 id_shifts: tuple[int, ...] = (0, 90), oe_shifts: tuple[int, ...] = (180, 270),
                 shift_weight: float = 1.0, gather_distributed: bool = False) -> None:
        if set(id_shifts) & set(oe_shifts):
            raise ValueError(f"the outlier shifts {oe_shifts} must not overlap the in-distribution shifts {id_shifts}")
        self.views = views
        self.plain_views = views.without_flip()  # views flip before the shift (see _shifted_views)
        self.id_shifts, self.oe_shifts = tuple(id_shifts), tuple(oe_shifts)
        self.csi = CSILoss(temperature, shift_weight=shift_weight, gather_distributed=gather_distributed)
        self.oecl = OECLLoss(temperature, norm_weight=norm_weight, warmup_epochs=warmup_epochs)

    def set_epoch(self, epoch: int) -> None:
        self.oecl.set_epoch(epoch)

    def __call__(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        v1, v2, labels = _shifted_views(self.plain_views, self.views.config.flip_p, x, self.id_shifts, generator)
        mirrored = random_hflip(x, self.views.config.flip_p, generator)
        oe, _ = rotation_outliers(mirrored, self.oe_shifts, per_sample=True, generator=generator)
        m = v1.shape[0]
        batch = torch.cat([v1, v2, self.plain_views(oe, generator)])
        z, logits = model(batch, with_aux=True)
        z1, z2, z_oe = z.split([m, m, oe.shape[0]])
        loss = self.csi(z1, z2, logits[: 2 * m], labels)
        return loss + self.oecl.current_norm_weight * self.oecl.norm_penalty(z_oe)


class CLPTwoStageObjective:
    """The CLP paper's recipe (section 3): NT-Xent alone for the first ``stage1_epochs`` epochs, then
    L_con + weight * CE_ls on the class head's logits of both views (label smoothing ``label_smoothing``).
    Needs class labels; the model's auxiliary head is the classifier."""

    needs_labels = True

    def __init__(self, views: SimCLRViews, temperature: float = 0.5, weight: float = 100.0,
                 label_smoothing: float = 0.1, stage1_epochs: int = 0, gather_distributed: bool = False) -> None:
        if stage1_epochs < 0:
            raise ValueError(f"stage1_epochs must be >= 0, got {stage1_epochs}")
        self.views = views
        self.loss = JointContrastiveCELoss(temperature, weight=weight, label_smoothing=label_smoothing,
                                           gather_distributed=gather_distributed)
        self.stage1_epochs = int(stage1_epochs)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def stage(self) -> int:
        return 1 if self.epoch < self.stage1_epochs else 2

    def __call__(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            raise ValueError("the CLP recipe needs class labels")
        z, logits = model(torch.cat([self.views(x, generator), self.views(x, generator)]), with_aux=True)
        z1, z2 = z.chunk(2)
        if self.stage == 1:
            return self.loss.contrastive(z1, z2)
        return self.loss(z1, z2, logits, labels)


class CIDERObjective:
    """CIDER (Ming et al. 2023; a baseline of the CCS paper): compactness + dispersion around EMA class
    prototypes on the projections of two views of each labelled image. The prototypes are part of the
    objective's state and are checkpointed with it."""

    needs_labels = True

    def __init__(self, views: SimCLRViews, n_classes: int, dim: int, temperature: float = 0.1,
                 momentum: float = 0.5, gather_distributed: bool = False) -> None:
        self.views = views
        self.loss = CIDERLoss(n_classes, dim, temperature=temperature, momentum=momentum,
                              gather_distributed=gather_distributed)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.loss.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.loss.load_state_dict(state)

    def __call__(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            raise ValueError("CIDER needs class labels")
        self.loss.to(x.device)
        z = model(torch.cat([self.views(x, generator), self.views(x, generator)]))
        return self.loss(z, torch.cat([labels, labels]))
