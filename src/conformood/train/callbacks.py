"""Per-epoch training diagnostics, called as ``callback(trainer)`` after every epoch.

* :class:`FeatureNormCallback` — mean ‖f(x)‖₂ of inlier vs outlier representations (OECL paper Fig. 1: OECL
  drives outlier norms down while inlier norms stay up).
* :class:`AUROCCallback` — AUROC of the s_con score (mean cosine similarity to the k nearest training inliers,
  FIRM eq. 3) on an evaluation split after each epoch, and the area under that learning curve (AULC, FIRM §3.2).
* :class:`BestEpoch` — keeps the model state of the epoch with the best value of a metric and restores it
  when training ends (the best-epoch rule of the conformal sets paper, app. B).

Their plots are drawn by :func:`conformood.report.plot_training_diagnostics`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from numpy.typing import ArrayLike

from .._validation import check_binary_labels, check_positive_int
from ..metrics.ood import aulc, auroc


def _features(trainer, x: torch.Tensor) -> torch.Tensor:
    from ..models import encode

    return encode(getattr(trainer.model, "module", trainer.model), x)


class FeatureNormCallback:
    """Records (epoch, mean ‖f(inlier)‖₂, mean ‖f(outlier)‖₂) every ``every`` epochs."""

    def __init__(self, inliers: torch.Tensor, outliers: torch.Tensor, every: int = 1) -> None:
        self.inliers, self.outliers = inliers, outliers
        self.every = check_positive_int(every, "every")
        self.epochs: list[int] = []
        self.inlier_norm: list[float] = []
        self.outlier_norm: list[float] = []

    def __call__(self, trainer) -> None:
        if trainer.epoch % self.every:
            return
        self.epochs.append(int(trainer.epoch))
        self.inlier_norm.append(float(_features(trainer, self.inliers).norm(dim=1).mean()))
        self.outlier_norm.append(float(_features(trainer, self.outliers).norm(dim=1).mean()))


class AUROCCallback:
    """AUROC of s_con (k-NN cosine, in-distribution positive) on an evaluation split after each epoch."""

    def __init__(
        self,
        train_inliers: torch.Tensor,
        eval_images: torch.Tensor,
        eval_is_inlier: ArrayLike,
        n_neighbors: int = 1,
        every: int = 1,
    ) -> None:
        self.train_inliers, self.eval_images = train_inliers, eval_images
        self.is_inlier = check_binary_labels(eval_is_inlier, "eval_is_inlier", eval_images.shape[0])
        if self.is_inlier.all() or not self.is_inlier.any():
            raise ValueError("the evaluation split needs both inliers and outliers")
        self.n_neighbors = check_positive_int(n_neighbors, "n_neighbors")
        self.every = check_positive_int(every, "every")
        self.epochs: list[int] = []
        self.aurocs: list[float] = []

    def __call__(self, trainer) -> None:
        if trainer.epoch % self.every:
            return
        from ..scores import KNNCosineDetector

        bank = _features(trainer, self.train_inliers).numpy()
        scores = KNNCosineDetector(n_neighbors=self.n_neighbors, backend="torch").fit(bank).score_samples(
            _features(trainer, self.eval_images).numpy()
        )
        self.epochs.append(int(trainer.epoch))
        self.aurocs.append(auroc(scores, self.is_inlier))

    @property
    def aulc(self) -> float:
        """Area under the AUROC-vs-epoch curve on a [0, 1] epoch axis (the mean AUROC over training)."""
        return aulc(self.aurocs, self.epochs)


class BestEpoch:
    """After every epoch, ``metric(trainer)``; keeps a copy of the model state of the best epoch (``mode`` "max"
    or "min", strict improvement) and loads it back into the model when training ends. ``values`` holds the
    metric of every epoch, ``best_epoch`` the 0-based index of the kept one. Checkpointed with the trainer."""

    def __init__(self, metric: Callable[[Any], float], mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.metric, self.mode = metric, mode
        self.values: list[float] = []
        self.best_value: float | None = None
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None

    def __call__(self, trainer) -> None:
        value = float(self.metric(trainer))
        self.values.append(value)
        better = (self.best_value is None and not math.isnan(value)) or (
            self.best_value is not None and (value > self.best_value if self.mode == "max" else value < self.best_value)
        )
        if better:
            self.best_value, self.best_epoch = value, trainer.epoch - 1
            self.best_state = copy.deepcopy(trainer.model.state_dict())

    def on_train_end(self, trainer: Any) -> None:
        if self.best_state is not None:
            trainer.model.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"values": list(self.values), "best_value": self.best_value,
                                 "best_epoch": self.best_epoch}
        for key, value in (self.best_state or {}).items():
            state[f"best.{key}"] = value
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values = [float(v) for v in state.get("values", [])]
        self.best_value = state.get("best_value")
        self.best_epoch = int(state.get("best_epoch", -1))
        best = {k[len("best."):]: v for k, v in state.items() if k.startswith("best.")}
        self.best_state = best or None
