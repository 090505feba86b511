"""The registry of contrastive objectives: each name builds its objective from a :class:`TrainRunConfig`, the
SimCLR views, an outlier-exposure pool and the number of classes (``conformood train --objective NAME``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import distributed as dist_utils
from ..augment import SimCLRViews
from ..registry import Registry
from .objectives import (
    CIDERObjective,
    CLPTwoStageObjective,
    CSIObjective,
    FIRMOutlierExposureObjective,
    FIRMRotationObjective,
    NTXentObjective,
    OECLObjective,
    SelfOECLObjective,
    SupConRotationObjective,
)

if TYPE_CHECKING:
    from .run_config import TrainRunConfig

CSI_SHIFTS = (0, 90, 180, 270)
SELF_OECL_ID_SHIFTS = (0, 90)


OBJECTIVES: Registry = Registry("objective")


def _objective(name: str, reference: str, description: str, needs_labels: bool = False,
               needs_oe_pool: bool = False, aux_classes: int | str | None = None):
    return OBJECTIVES.register(name, reference=reference, description=description, needs_labels=needs_labels,
                               needs_oe_pool=needs_oe_pool, aux_classes=aux_classes)


@_objective("firm", "FIRM eq. 2, section 2.1", "FIRM with rotations as synthetic outliers")
def _firm(cfg, views, pool, n_classes, gather):
    return FIRMRotationObjective(views, cfg.temperature, gather_distributed=gather)


@_objective("ntxent", "FIRM eq. 1 (SimCLR)", "NT-Xent on two views")
def _ntxent(cfg, views, pool, n_classes, gather):
    return NTXentObjective(views, cfg.temperature, gather_distributed=gather)


@_objective("supcon", "FIRM Table 4", "SupCon, inliers vs rotated outliers (binary)")
def _supcon(cfg, views, pool, n_classes, gather):
    return SupConRotationObjective(views, cfg.temperature, binary=True, gather_distributed=gather)


@_objective("supcon_multiclass", "FIRM Table 4 (SupCon*)", "SupCon, every rotation its own class")
def _supcon_multiclass(cfg, views, pool, n_classes, gather):
    return SupConRotationObjective(views, cfg.temperature, binary=False, gather_distributed=gather)


@_objective("firm_oe", "FIRM section 2.1, OE variant", "FIRM with outlier-exposure images", needs_oe_pool=True)
def _firm_oe(cfg, views, pool, n_classes, gather):
    return FIRMOutlierExposureObjective(views, pool, cfg.temperature, gather_distributed=gather)


@_objective("oecl_oe", "OECL eq. 7", "NT-Xent + oe_weight * ||f(OE image)||", needs_oe_pool=True)
def _oecl_oe(cfg, views, pool, n_classes, gather):
    return OECLObjective(views, pool, cfg.temperature, norm_weight=cfg.oe_weight, warmup_epochs=cfg.oe_warmup_epochs,
                         gather_distributed=gather)


@_objective("csi", "Tack et al. 2020; OECL section IV", "rotations as shifted instances + shift classifier",
            aux_classes=len(CSI_SHIFTS))
def _csi(cfg, views, pool, n_classes, gather):
    return CSIObjective(views, cfg.temperature, CSI_SHIFTS, cfg.shift_weight, gather_distributed=gather)


@_objective("self_oecl", "OECL eq. 8", "CSI on {0, 90} + weight * ||f|| of {180, 270}-rotated outliers",
            aux_classes=len(SELF_OECL_ID_SHIFTS))
def _self_oecl(cfg, views, pool, n_classes, gather):
    return SelfOECLObjective(views, cfg.temperature, norm_weight=cfg.oe_weight, warmup_epochs=cfg.oe_warmup_epochs,
                             id_shifts=SELF_OECL_ID_SHIFTS, oe_shifts=(180, 270), shift_weight=cfg.shift_weight,
                             gather_distributed=gather)


@_objective("clp", "CLP paper section 3", "NT-Xent, then NT-Xent + CE with label smoothing (labels)",
            needs_labels=True, aux_classes="classes")
def _clp(cfg, views, pool, n_classes, gather):
    return CLPTwoStageObjective(views, cfg.temperature, weight=cfg.ce_weight, label_smoothing=cfg.label_smoothing,
                                stage1_epochs=cfg.stage1_epochs, gather_distributed=gather)


@_objective("cider", "Ming et al. 2023", "compactness + dispersion around class prototypes (labels)",
            needs_labels=True)
def _cider(cfg, views, pool, n_classes, gather):
    if n_classes is None:
        raise ValueError("CIDER needs the number of classes")
    return CIDERObjective(views, n_classes, cfg.projection_dim, cfg.temperature, momentum=cfg.cider_momentum,
                          gather_distributed=gather)


def aux_classes_for(cfg: TrainRunConfig, n_classes: int | None = None) -> int | None:
    """Outputs of the model's auxiliary head for ``cfg.objective``: shifts (CSI, self-OECL), classes (CLP)."""
    aux = OBJECTIVES.info(cfg.objective).aux_classes
    return n_classes if aux == "classes" else aux


def build_objective(cfg: TrainRunConfig, views: SimCLRViews, image_shape: tuple[int, int, int],
                    n_classes: int | None = None) -> Any:
    """The training objective registered as ``cfg.objective`` (outlier-exposure pools conformed to the images)."""
    pool = None
    if OBJECTIVES.info(cfg.objective).needs_oe_pool:
        from ..augment import OutlierExposurePool

        pool = OutlierExposurePool.from_npz(cfg.oe_pool, image_shape)
    return OBJECTIVES.get(cfg.objective)(cfg, views, pool, n_classes, dist_utils.is_distributed())
