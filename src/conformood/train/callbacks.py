"""Per-epoch training diagnostics, called as ``callback(trainer)`` after every epoch.

* :class:`FeatureNormCallback` — mean ‖f(x)‖₂ of inlier vs outlier representations (OECL paper Fig. 1: OECL
  drives outlier norms down while inlier norms stay up).
* :class:`AUROCCallback` — AUROC of the s_con score (mean cosine similarity to the k nearest training inliers,
  FIRM eq. 3) on an evaluation split after each epoch, and the area under that learning curve (AULC, FIRM §3.2).
* :func:`plot_training_diagnostics` — both curves in one figure.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .._validation import check_binary_labels, check_positive_int
from ..metrics.ood import aulc, auroc


def _features(trainer, x: torch.Tensor) -> torch.Tensor:
    model = getattr(trainer.model, "module", trainer.model)
    return model.features(x)


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

    def __init__(self, train_inliers: torch.Tensor, eval_images: torch.Tensor, eval_is_inlier, k: int = 1,
                 every: int = 1) -> None:
        self.train_inliers, self.eval_images = train_inliers, eval_images
        self.is_inlier = check_binary_labels(eval_is_inlier, "eval_is_inlier", eval_images.shape[0])
        if self.is_inlier.all() or not self.is_inlier.any():
            raise ValueError("the evaluation split needs both inliers and outliers")
        self.k = check_positive_int(k, "k")
        self.every = check_positive_int(every, "every")
        self.epochs: list[int] = []
        self.aurocs: list[float] = []

    def __call__(self, trainer) -> None:
        if trainer.epoch % self.every:
            return
        from ..scores import KNNCosineDetector

        bank = _features(trainer, self.train_inliers).numpy()
        scores = KNNCosineDetector(k=self.k, backend="torch").fit(bank).score_samples(
            _features(trainer, self.eval_images).numpy()
        )
        self.epochs.append(int(trainer.epoch))
        self.aurocs.append(auroc(scores, self.is_inlier))

    @property
    def aulc(self) -> float:
        """Area under the AUROC-vs-epoch curve on a [0, 1] epoch axis (the mean AUROC over training)."""
        return aulc(self.aurocs, self.epochs)


def plot_training_diagnostics(path: str | Path, norms: FeatureNormCallback | None = None,
                              aurocs: AUROCCallback | None = None) -> None:
    """Feature norms (inlier vs outlier) and AUROC per epoch, side by side."""
    from ..report.plots import _pyplot

    panels = [p for p in (norms, aurocs) if p is not None]
    if not panels:
        raise ValueError("nothing to plot: pass a FeatureNormCallback and/or an AUROCCallback")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, p in zip(axes[0], panels):
        if isinstance(p, FeatureNormCallback):
            ax.plot(p.epochs, p.inlier_norm, label="inliers")
            ax.plot(p.epochs, p.outlier_norm, label="outliers")
            ax.set_ylabel("mean ‖f(x)‖₂")
            ax.legend()
        else:
            ax.plot(p.epochs, p.aurocs)
            ax.set_ylabel("AUROC (s_con)")
            ax.set_title(f"AULC = {p.aulc:.3f}")
        ax.set_xlabel("epoch")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)  # atomic: a reader never sees half a figure
