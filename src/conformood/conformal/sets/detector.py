"""The OOD score of contrastive conformal sets (``contrastive-conformal-sets.md`` eq. 23 and §6).

For a test embedding z, build the calibrated covering set N(z) = {u : g(u, z) ≤ q̂} with a learned (or fixed)
set, take the class c of z's nearest in-distribution reference point (ℓ2 in the set's transformed space),
and sample ``n_samples`` reference points of class c (positives) and as many of the other classes (negatives).
The paper's OOD score is
1 − (negative exclusion rate) (CCS eq. 23); §6 reports that also subtracting the positive exclusion rate works
slightly better. In our convention (higher = more in-distribution) the scores are

* ``variant="neg"``: s(z) = negative exclusion rate;
* ``variant="neg-pos"``: s(z) = negative exclusion rate − positive exclusion rate.

In-distribution points sit in their class, so their sets exclude other classes and include their own;
OOD points fall between classes (sets include negatives) or far from all data (sets exclude positives).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from ..._validation import check_features, check_positive_int
from ...scores import BaseDetector
from ...scores.base import set_learned_state


class ConformalSetDetector(BaseDetector):
    """CCS eq. 23 as a detector. ``conformal_set`` must be calibrated; ``fit`` stores labelled ID references."""

    def __init__(self, conformal_set: Any = None, n_samples: int = 20, variant: str = "neg-pos", seed: int = 0,
                 chunk: int = 256) -> None:
        self.n_samples = n_samples
        self.conformal_set = conformal_set
        self.variant = variant
        self.seed = seed
        self.chunk = chunk

    _former_params = {"k": "n_samples"}

    def fit(self, features: ArrayLike, labels: ArrayLike | None = None) -> ConformalSetDetector:
        if self.conformal_set is None or getattr(self.conformal_set, "threshold_", None) is None:
            raise ValueError("conformal_set must be a calibrated ConformalSet (call calibrate first)")
        if self.variant not in ("neg", "neg-pos"):
            raise ValueError(f"variant must be 'neg' or 'neg-pos', got {self.variant!r}")
        self.n_samples_ = check_positive_int(self.n_samples, "n_samples")
        x = check_features(features, "features", n_features=self.conformal_set.dim)
        if labels is None:
            raise ValueError("ConformalSetDetector needs class labels of the reference features")
        y = np.asarray(labels)
        if y.shape != (x.shape[0],):
            raise ValueError(f"labels must have shape ({x.shape[0]},), got {y.shape}")
        classes, counts = np.unique(y, return_counts=True)
        if classes.size < 2:
            raise ValueError("need at least two classes: negatives are points of the other classes")
        if counts.min() < self.n_samples_ or (x.shape[0] - counts.max()) < self.n_samples_:
            raise ValueError(f"n_samples = {self.n_samples_} exceeds the smallest class or its complement")
        self.references_ = x.astype(np.float32)
        self.reference_labels_ = np.searchsorted(classes, y).astype(np.int64)
        self.classes_ = classes
        self.n_features_in_ = x.shape[1]
        return self

    @torch.no_grad()
    def _nearest_class(self, z: torch.Tensor) -> np.ndarray:
        """Class of the nearest reference in the set's transformed space (ℓ2 there; the set's own metric
        when p = 2). A matrix product per chunk instead of an elementwise p-norm over every pair."""
        dtype = self.conformal_set._compute_dtype()
        refs = self.conformal_set.transform(torch.from_numpy(self.references_).to(dtype))
        zt = self.conformal_set.transform(z.to(dtype))
        out = np.empty(z.shape[0], dtype=np.int64)
        step = max(1, int(self.chunk))
        for start in range(0, z.shape[0], step):
            d = torch.cdist(zt[start : start + step], refs)
            out[start : start + step] = self.reference_labels_[d.argmin(dim=1).numpy()]
        return out

    def exclusion_rates(self, features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """(negative exclusion rate, positive exclusion rate) per test point."""
        self._check_fitted()
        x = check_features(features, "features", n_features=self.n_features_in_)
        z = torch.from_numpy(x.astype(np.float32))
        predicted = self._nearest_class(z)
        rng = np.random.default_rng(self.seed)
        members = [np.flatnonzero(self.reference_labels_ == c) for c in range(self.classes_.size)]
        others = [np.flatnonzero(self.reference_labels_ != c) for c in range(self.classes_.size)]
        pos = np.empty((x.shape[0], self.n_samples_), dtype=np.int64)
        neg = np.empty((x.shape[0], self.n_samples_), dtype=np.int64)
        steps = np.arange(self.n_samples_)
        for c in range(self.classes_.size):
            rows = np.flatnonzero(predicted == c)
            if rows.size == 0:
                continue
            # k distinct samples per row: a window of a random permutation of the pool at a random offset.
            for out, pool in ((pos, members[c]), (neg, others[c])):
                perm = rng.permutation(pool)
                offsets = rng.integers(0, perm.size, size=(rows.size, 1))
                out[rows] = perm[(offsets + steps) % perm.size]
        refs = torch.from_numpy(self.references_)
        q = self.conformal_set.threshold_
        neg_rate, pos_rate = np.empty(x.shape[0]), np.empty(x.shape[0])
        step = max(1, int(self.chunk))
        with torch.no_grad():  # in chunks: (chunk, n_samples, d) at a time instead of (n, n_samples, d)
            for s in range(0, x.shape[0], step):
                zc = z[s : s + step, None, :]
                g_pos = self.conformal_set.distance(refs[pos[s : s + step]], zc).numpy()
                g_neg = self.conformal_set.distance(refs[neg[s : s + step]], zc).numpy()
                neg_rate[s : s + step], pos_rate[s : s + step] = (g_neg > q).mean(axis=1), (g_pos > q).mean(axis=1)
        return neg_rate, pos_rate

    _learned = {"n_samples_": "int", "references_": ("n", "d"), "reference_labels_": ("n",), "classes_": ("c",),
                "n_features_in_": "int"}

    def _check_params(self) -> None:
        if self.variant not in ("neg", "neg-pos"):
            raise ValueError(f"variant must be 'neg' or 'neg-pos', got {self.variant!r}")
        check_positive_int(self.n_samples, "n_samples")
        check_positive_int(self.chunk, "chunk")

    def _check_loaded(self) -> None:
        if self.n_features_in_ != self.conformal_set.dim:
            raise ValueError(f"the references have {self.n_features_in_} features, the set {self.conformal_set.dim}")
        labels = self.reference_labels_
        if labels.size and (labels.min() < 0 or labels.max() >= self.classes_.size):
            raise ValueError("reference labels must index the stored classes")
        check_positive_int(self.n_samples_, "n_samples_")

    def state(self) -> tuple[dict, dict]:
        """The references and the calibrated set together (safetensors + JSON), read by ``load_detector``."""
        self._check_fitted()
        params = {k: v for k, v in self.get_params(deep=False).items() if k != "conformal_set"}
        arrays, scalars = self._learned_state()
        cset = self.conformal_set
        tensors = dict(arrays) | {f"set.{k}": v.detach() for k, v in cset.state_dict().items()}
        config = {"params": params, "learned": scalars, "conformal_set": cset.state() | {"init": cset._init_args()}}
        return tensors, config

    @classmethod
    def _from_state(cls, tensors: dict, config: dict, source: str = "the file") -> ConformalSetDetector:
        from .families import conformal_set_from_state

        if not isinstance(config.get("conformal_set"), dict):
            raise ValueError(f"{source}: a saved ConformalSetDetector needs its 'conformal_set'")
        set_tensors = {k[len("set."):]: v for k, v in tensors.items() if k.startswith("set.")}
        cset = conformal_set_from_state(set_tensors, config["conformal_set"], source)
        params, learned = config.get("params"), config.get("learned")
        if not isinstance(params, dict) or not isinstance(learned, dict):
            raise ValueError(f"{source}: a saved ConformalSetDetector needs 'params' and 'learned' objects")
        if "conformal_set" in params:
            raise ValueError(f"{source}: the conformal set is stored apart from the parameters")
        det = cls._with_params(params | {"conformal_set": cset}, {}, source)
        arrays = {k: v for k, v in tensors.items() if not k.startswith("set.")}
        set_learned_state(det, arrays, learned, source)
        try:
            det._check_loaded()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: stored ConformalSetDetector is inconsistent: {exc}") from None
        return det

    def score_samples(self, features: ArrayLike) -> np.ndarray:
        neg_excl, pos_excl = self.exclusion_rates(features)
        return neg_excl - pos_excl if self.variant == "neg-pos" else neg_excl
