"""Sampling of positives and negatives for contrastive conformal sets (``contrastive-conformal-sets.md`` §4.2–4.3).

k positives and k negatives per anchor, drawn without replacement — supervised: same / different class;
unsupervised: k of the anchor's augmented views vs k other samples.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike

from .base import ConformalSet


class TripletSampler:
    """k positives and k negatives per anchor, without replacement within an anchor.

    Supervised (``labels``): positives share the anchor's class (never the anchor itself), negatives do not.
    Unsupervised (``views`` of shape (n, v, d)): positives are k of the anchor's v augmented views,
    negatives are view 0 of k other samples (never the anchor). Each anchor reads a window of k (+1)
    consecutive entries of a random permutation of its pool, starting at a random offset: distinct samples
    per anchor at O(k) cost, vectorised over all classes. ``refresh`` draws new permutations (once per epoch).
    """

    def __init__(self, labels: np.ndarray | None = None, n: int | None = None, views: int | None = None) -> None:
        if labels is None and n is None:
            raise ValueError("give labels (supervised) or n and views (unsupervised)")
        self.views = views
        if labels is not None:
            y = torch.as_tensor(np.asarray(labels)).long()
            classes, y = torch.unique(y, return_inverse=True)
            self.labels = y
            self.n = y.shape[0]
            self.members = [torch.nonzero(y == c).squeeze(1) for c in range(len(classes))]
            self.others = [torch.nonzero(y != c).squeeze(1) for c in range(len(classes))]
        else:
            self.labels = None
            self.n = int(n)
            self.members = [torch.arange(self.n)]
            self.others = [torch.arange(self.n)]
        self._pos = self._neg = None

    def min_pool(self) -> int:
        if self.labels is None:
            return self.n - 1
        return min(min(len(m) - 1 for m in self.members), min(len(o) for o in self.others))

    @staticmethod
    def _concat(pools, g):
        perms = [pool[torch.randperm(pool.numel(), generator=g)] for pool in pools]
        sizes = torch.tensor([p.numel() for p in perms])
        starts = torch.cumsum(sizes, 0) - sizes
        return torch.cat(perms), starts, sizes

    def refresh(self, g: torch.Generator) -> None:
        self._pos = self._concat(self.members, g)
        self._neg = self._concat(self.others, g)

    @staticmethod
    def _windows(table, groups: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
        flat, starts, sizes = table
        size = sizes[groups][:, None]
        offsets = (torch.rand(groups.numel(), 1, generator=g) * size).long()
        return flat[starts[groups][:, None] + (offsets + torch.arange(k)) % size]

    @staticmethod
    def _drop(win: torch.Tensor, anchors: torch.Tensor, k: int) -> torch.Tensor:
        # Drop the anchor itself when the window holds it (at most once), otherwise the window's last entry.
        is_self = win == anchors[:, None]
        at = torch.where(is_self.any(dim=1), is_self.to(torch.uint8).argmax(dim=1), k)
        cols = torch.arange(k)[None, :]
        return torch.gather(win, 1, cols + (cols >= at[:, None]).long())

    def sample(self, anchors: torch.Tensor, pairs_per_anchor: int, g: torch.Generator
               ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Index tensors (B, pairs_per_anchor) of positives and negatives (positives index views when
        unsupervised)."""
        k = pairs_per_anchor
        if self._pos is None:
            self.refresh(g)
        if self.labels is None:
            groups = torch.zeros(anchors.numel(), dtype=torch.long)
            neg = self._drop(self._windows(self._neg, groups, k + 1, g), anchors, k)
            pos = (
                torch.argsort(torch.rand(anchors.numel(), self.views, generator=g), dim=1)[:, :k]
                if self.views
                else None
            )
            return pos, neg
        groups = self.labels[anchors]
        pos = self._drop(self._windows(self._pos, groups, k + 1, g), anchors, k)
        neg = self._windows(self._neg, groups, k, g)
        return pos, neg


def _rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    # index_select on a flat index is several times faster than advanced indexing with a 2-D index.
    return torch.index_select(table, 0, idx.reshape(-1)).reshape(*idx.shape, table.shape[-1])


def gather_triplets(
    embeddings: torch.Tensor, anchors: torch.Tensor, pos_idx: torch.Tensor, neg_idx: torch.Tensor, views: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    z = _rows(embeddings, anchors)
    if views is not None:
        zp = views[anchors[:, None], pos_idx]
    else:
        zp = _rows(embeddings, pos_idx)
    return z, zp, _rows(embeddings, neg_idx)


def pair_samples(labels: ArrayLike, pairs_per_anchor: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For evaluation: (anchor, positive index, negative index) arrays with ``pairs_per_anchor`` pairs per
    anchor (supervised)."""
    k = pairs_per_anchor
    y = np.asarray(labels)
    sampler = TripletSampler(labels=y)
    if sampler.min_pool() < k:
        raise ValueError(f"pairs_per_anchor = {k} exceeds the smallest class pool ({sampler.min_pool()})")
    g = torch.Generator().manual_seed(seed)
    anchors = torch.arange(y.shape[0])
    pos, neg = sampler.sample(anchors, k, g)
    return anchors.repeat_interleave(k).numpy(), pos.reshape(-1).numpy(), neg.reshape(-1).numpy()


def evaluate_set(
    cset: ConformalSet, embeddings: ArrayLike, labels: ArrayLike, pairs_per_anchor: int = 20, seed: int = 0
) -> dict:
    """Coverage of positives, exclusion of negatives and log-volume on labelled test embeddings."""
    z = np.asarray(embeddings, dtype=np.float64)
    a, p, n = pair_samples(labels, pairs_per_anchor, seed)
    coverage = float(cset.contains(z[p], z[a]).mean())
    exclusion = float((~cset.contains(z[n], z[a])).mean())
    return {"coverage": coverage, "exclusion": exclusion, "log_volume": cset.log_volume()}
