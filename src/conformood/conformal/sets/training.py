"""Training and evaluation of learnable contrastive conformal sets (``contrastive-conformal-sets.md`` §4.2–4.3).

Objectives (maximised quantities written as losses to minimise):

* J_neg (CCS eq. 16): mean σ_T(g(Z_neg, Z) − q̂) — the soft negative-exclusion rate;
* J_vol (CCS eq. 19): log Vol(N_q̂) — minimised;
* J_neg+vol (CCS eq. 20): (1 − λ)·J_neg − λ·log Vol;
* CCS eq. 22: J − λ_InfoNCE·L_InfoNCE when an encoder (e.g. the penultimate layer) is trained jointly, the
  set parameters and the encoder being updated in alternate epochs (app. B).

q̂ is the ⌈(1 − α)(n + 1)⌉-th smallest positive distance of the current batch, recomputed every step.

**Detaching q̂.** §4.2 (item 1) detaches q̂ from the graph. With q̂ a constant, every objective above has a
direction that improves it without changing any set: raising *all* distances (inflate M, send p → 0, raise
p_j where |Δ_j| > 1) pushes negatives past the stale q̂ and shrinks the log-volume at the stale q̂, and
q̂ catches up one step later. On the 3-D benchmark the detached runs diverge within two epochs (p → 0.01
then overflow; with scale-normalised parameters, an unbounded anisotropy with q̂ ≈ 10⁴ and exclusion
falling below the ℓ2 ball's). We therefore differentiate through the order statistic by default
(``detach_quantile=False``): its gradient reaches only the pair that attains the quantile, which we find
without a graph and recompute with one, so it costs one distance. This makes J_vol exactly scale
invariant (d log q̂ − log det M) and reproduces the paper's Table 1 pattern; ``detach_quantile=True``
gives the literal recipe.

**The sigmoid.** The paper writes σ_T(c − t) = 1 / (1 + e^{−(c − t)/T}) yet calls T a *steepness* ("increasing T
improves the sharpness") and uses T = 7. Those two readings disagree; we implement the steepness reading
σ(T·(c − t)) — with T = 7 and distances of order one this is a sharp but trainable step — and expose it as
``steepness``.

Sampling: k positives and k negatives per anchor, drawn without replacement — supervised: same / different
class; unsupervised: k of the anchor's augmented views vs k other samples. Optimiser: SGD with momentum,
cosine schedule, gradient-norm clipping; the returned state is the epoch with the highest negative-exclusion
rate on the training split (app. B).

Training runs in the one :class:`~conformood.train.Trainer` (objective :class:`ConformalSetObjective`, best
epoch kept by :class:`~conformood.train.BestEpoch`), so it has checkpoints and exact resume. **It runs in one
process, not data-parallel:** q̂ is an order statistic of all positive distances of the batch and the sampler
draws positives and negatives from the whole training table, so splitting the anchors over processes would
give each process its own q̂ (a different objective) unless every distance were gathered to every process;
and the problem is small (a few to a few hundred dimensions, seconds to minutes on one CPU core), so data
parallelism would buy nothing. Under ``torchrun`` every process trains the same set alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

from ..._validation import check_alpha, check_positive_float, check_positive_int
from ...losses import InfoNCELoss
from ...train import BestEpoch, TrainConfig, Trainer, build_optimizer
from ..detection.split import conformal_rank
from .base import ConformalSet, _quantile_torch
from .sampling import TripletSampler, gather_triplets

OBJECTIVES = ("neg", "vol", "neg+vol")


def set_objective(
    cset: ConformalSet,
    z: torch.Tensor,
    zp: torch.Tensor,
    zn: torch.Tensor,
    objective: str,
    alpha: float,
    steepness: float,
    lam: float,
    transformed: bool = False,
    detach_quantile: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Loss to minimise for one batch: −J_neg, J_vol or −J_neg+vol (CCS eq. 16, 19, 20), and diagnostics."""
    dist = cset.transformed_distance if transformed else cset.distance
    if detach_quantile:
        # q̂ is detached (§4.2), so the positive distances need no graph: they only pick the quantile.
        with torch.no_grad():
            q = _quantile_torch(dist(zp, z[:, None, :]), alpha)
    else:
        # The gradient of an order statistic reaches only the pair that attains it: find that pair without
        # a graph, then recompute its distance with one.
        with torch.no_grad():
            flat = dist(zp, z[:, None, :]).reshape(-1)
            k = min(flat.numel(), flat.numel() + 1 - conformal_rank(alpha, flat.numel()))
            at = int(flat.kthvalue(k).indices)
        row, col = divmod(at, zp.shape[1])
        q = dist(zp[row, col], z[row])
    if objective == "vol":
        j_neg = torch.full((), float("nan"))  # not needed: the volume objective ignores negatives
    else:
        j_neg = torch.sigmoid(steepness * (dist(zn, z[:, None, :]) - q)).mean()
    log_vol = cset.log_volume_at(q) if objective != "neg" else torch.zeros((), dtype=torch.float64)
    if objective == "neg":
        loss = -j_neg
    elif objective == "vol":
        loss = log_vol.to(j_neg.dtype)
    else:
        loss = -((1.0 - lam) * j_neg - lam * log_vol.to(j_neg.dtype))
    stats = {"j_neg": j_neg.item(), "log_volume": log_vol.item()}
    return loss, stats


class SetModel(nn.Module):
    """The set being learned and, for CCS eq. 22, the encoder trained with it (one module for the trainer)."""

    def __init__(self, cset: ConformalSet, encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.cset = cset
        self.encoder = encoder

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.encoder(inputs) if self.encoder is not None else inputs


class ConformalSetObjective:
    """One step of set training on a batch of anchor indices into the training table ``x``: sample k positives
    and k negatives per anchor, then −J_neg, J_vol or −J_neg+vol (CCS eq. 16, 19, 20), plus
    ``infonce_weight``·InfoNCE (CCS eq. 21–22) in the epochs that train the encoder (every second one)."""

    expects_images = False

    def __init__(self, x: torch.Tensor, sampler: TripletSampler, views: torch.Tensor | None, k: int, objective: str,
                 alpha: float, steepness: float, lam: float, detach_quantile: bool, joint: bool,
                 infonce_weight: float = 1.0, infonce_temperature: float = 0.1) -> None:
        self.x, self.sampler, self.views, self.k = x, sampler, views, k
        self.objective, self.alpha, self.steepness, self.lam = objective, alpha, steepness, lam
        self.detach_quantile, self.joint = detach_quantile, joint
        self.infonce_weight = infonce_weight
        self.infonce = InfoNCELoss(infonce_temperature)
        self.epoch, self._refreshed = 0, -1
        self.active_optimizer = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.active_optimizer = 1 if self.joint and epoch % 2 == 1 else 0

    def __call__(self, model: SetModel, anchors: torch.Tensor, generator: torch.Generator):
        if self._refreshed != self.epoch:  # new pools once per epoch, drawn after the trainer's shuffle
            self.sampler.refresh(generator)
            self._refreshed = self.epoch
        pos_idx, neg_idx = self.sampler.sample(anchors, self.k, generator)
        x, v = self.x, self.views
        train_encoder = self.active_optimizer == 1
        # (Transforming the table once and gathering its rows is fewer flops, but the backward of a gather is
        # a serial scatter-add on CPU, ~4x slower than the per-pair transform's matmul.)
        if model.encoder is None:
            z, zp, zn = gather_triplets(x, anchors, pos_idx, neg_idx, v)
        else:
            with torch.set_grad_enabled(train_encoder):
                z = model.embed(x[anchors])
                zp = model.embed(v[anchors[:, None], pos_idx] if v is not None else x[pos_idx])
                zn = model.embed(x[neg_idx])
            if not train_encoder:
                z, zp, zn = z.detach(), zp.detach(), zn.detach()
        loss, stats = set_objective(model.cset, z, zp, zn, self.objective, self.alpha, self.steepness, self.lam,
                                    False, self.detach_quantile)
        if train_encoder:
            b, k, d = zp.shape
            anchors_k = z.repeat_interleave(k, dim=0)
            negatives_k = zn[:, None].expand(b, k, zn.shape[1], d).reshape(b * k, zn.shape[1], d)
            loss = loss + self.infonce_weight * self.infonce(anchors_k, zp.reshape(b * k, d), negatives_k)
        return loss, stats


@dataclass
class SetTrainingResult:
    """Per-epoch history and the epoch whose state was kept (highest training exclusion)."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_exclusion: float = -float("inf")


@torch.no_grad()
def training_exclusion(
    cset: ConformalSet, embeddings: torch.Tensor, sampler: TripletSampler, anchors: torch.Tensor, k: int,
    alpha: float, seed: int, views: torch.Tensor | None = None,
) -> float:
    """Hard negative-exclusion rate on training anchors at the quantile of their own positive distances."""
    g = torch.Generator().manual_seed(seed)
    pos_idx, neg_idx = sampler.sample(anchors, k, g)
    z, zp, zn = gather_triplets(embeddings, anchors, pos_idx, neg_idx, views)
    q = _quantile_torch(cset.distance(zp, z[:, None]), alpha)
    return float((cset.distance(zn, z[:, None]) > q).double().mean())


def train_conformal_set(
    cset: ConformalSet,
    embeddings: ArrayLike,
    labels: ArrayLike | None = None,
    *,
    views: ArrayLike | None = None,
    objective: str = "neg+vol",
    pairs_per_anchor: int = 200,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    clip: float = 1.0,
    lam: float = 0.05,
    steepness: float = 7.0,
    detach_quantile: bool = False,
    encoder: nn.Module | None = None,
    infonce_weight: float = 1.0,
    infonce_temperature: float = 0.1,
    encoder_lr: float | None = None,
    selection_anchors: int = 2000,
    seed: int = 0,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    callbacks: Sequence[Callable] = (),
) -> SetTrainingResult:
    """Learn the set's metric on training data; leaves the best epoch's parameters in ``cset`` (and ``encoder``).

    ``embeddings`` (n, d) are the training points; with ``encoder`` they are the encoder's *inputs* (e.g.
    backbone features) and the set lives in the encoder's output space, trained jointly by CCS eq. 22 with the
    set and encoder updated in alternate epochs. ``labels`` (n,) give supervised positives/negatives;
    otherwise ``views`` (n, v, d) give each sample's augmented-view embeddings (unsupervised).
    ``pairs_per_anchor`` positives and as many negatives are sampled per anchor. With
    ``checkpoint``, training is resumable (``resume=True`` continues it exactly); ``callbacks`` go to the
    trainer, after the best-epoch one.
    """
    if not cset.learnable:
        raise ValueError(f"{type(cset).__name__} has no parameters to learn")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    k = check_positive_int(pairs_per_anchor, "pairs_per_anchor")
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = check_positive_float(lr, "lr")
    steepness = check_positive_float(steepness, "steepness")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    alpha = check_alpha(cset.alpha)
    x = torch.as_tensor(np.asarray(embeddings) if not isinstance(embeddings, torch.Tensor) else embeddings).float()
    if x.ndim != 2 or not torch.isfinite(x).all():
        raise ValueError(f"embeddings must be a finite 2-D array (n, d), got shape {tuple(x.shape)}")
    if encoder is None and x.shape[1] != cset.dim:
        raise ValueError(f"embeddings have {x.shape[1]} dimensions, the set has {cset.dim}")
    v = None
    if labels is not None:
        y = np.asarray(labels)
        if y.shape != (x.shape[0],):
            raise ValueError(f"labels must have shape ({x.shape[0]},), got {y.shape}")
        sampler = TripletSampler(labels=y)
    elif views is not None:
        v = torch.as_tensor(np.asarray(views) if not isinstance(views, torch.Tensor) else views).float()
        if v.ndim != 3 or v.shape[0] != x.shape[0]:
            raise ValueError(f"views must have shape (n, v, d) with n = {x.shape[0]}, got {tuple(v.shape)}")
        if v.shape[1] < k:
            raise ValueError(f"pairs_per_anchor = {k} positives need as many views per sample, got {v.shape[1]}")
        sampler = TripletSampler(n=x.shape[0], views=v.shape[1])
    else:
        raise ValueError("give labels (supervised) or views (unsupervised) to define positives")
    if sampler.min_pool() < k:
        raise ValueError(f"pairs_per_anchor = {k} is larger than the smallest positive/negative pool "
                         f"({sampler.min_pool()})")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 training points, got {x.shape[0]}")

    n = x.shape[0]
    model = SetModel(cset, encoder)
    set_params = [p for p in cset.parameters() if p.requires_grad]

    def optimizers(_: nn.Module) -> list[torch.optim.Optimizer]:
        opts = [build_optimizer("sgd", set_params, lr, momentum, weight_decay)]
        if encoder is not None:
            opts.append(build_optimizer("sgd", encoder.parameters(), encoder_lr or lr, momentum, weight_decay))
        return opts

    sel = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7))[: min(selection_anchors, n)]

    @torch.no_grad()
    def exclusion(trainer: Trainer) -> float:
        emb = model.embed(x) if encoder is not None else x
        emb_views = (model.embed(v.reshape(-1, v.shape[-1])).reshape(v.shape[0], v.shape[1], -1)
                     if (encoder is not None and v is not None) else v)
        return training_exclusion(cset, emb, sampler, sel, min(k, 20), alpha, seed + 11, emb_views)

    best = BestEpoch(exclusion, mode="max")
    set_objective_ = ConformalSetObjective(x, sampler, v, k, objective, alpha, steepness, lam, detach_quantile,
                                           joint=encoder is not None, infonce_weight=infonce_weight,
                                           infonce_temperature=infonce_temperature)
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
        schedule="cosine", warmup_epochs=0, drop_last=False, min_batch_size=1, clip_grad_norm=clip,
        shared_generator=True, seed=seed, distributed=False,
    )
    trainer = Trainer(
        model,
        set_objective_,
        config,
        checkpoint=checkpoint,
        progress=progress,
        description=f"{type(cset).__name__} ({objective})",
        callbacks=[best, *callbacks],
        optimizers=optimizers,
    )
    history = trainer.fit(torch.arange(n), resume=resume)
    result = SetTrainingResult(best_epoch=best.best_epoch,
                               best_exclusion=best.best_value if best.best_value is not None else -float("inf"))
    for epoch, (loss, stats, excl) in enumerate(zip(history.loss, history.metrics, best.values)):
        trained = "encoder" if encoder is not None and epoch % 2 == 1 else "set"
        result.history.append({"loss": loss, **stats, "epoch": epoch, "exclusion": excl, "trained": trained})
    return result
