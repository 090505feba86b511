"""The demo: one-vs-rest anomaly detection on scikit-learn's digits with FIRM and conformal calibration.

For each class c: train FIRM (eq. 2) on class-c training images with rotations as synthetic outliers,
score the test split with s_con (FIRM eq. 3) on the encoder's features, calibrate the split-conformal threshold
on held-out class-c images at level alpha, and measure AUROC, AUPR-In/Out, FPR@95TPR, detection accuracy
and the realised false-alarm rate on test inliers. The same is done with raw pixels as features, so the
report shows what training bought.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._validation import check_alpha, check_positive_int
from ..conformal import conformal_threshold
from ..data import (
    OODTask,
    load_digits_dataset,
    one_vs_rest,
    resize_images,
    train_calibration_test_split,
)
from ..io import write_json
from ..metrics import decision_metrics, ood_metrics
from ..results import environment, result_header
from ..scores import get_detector
from ..train.recipes import train_contrastive_encoder
from ..train.run_config import TrainRunConfig

METHODS = ("firm", "raw_pixels")


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo`; the defaults finish in a few minutes on 2 CPU cores.

    ``image_size``: the 8x8 digits are resized bilinearly to this size before the encoder (16 gives the
    random crops and the three conv stages room to work; measured 0.990 vs 0.982 mean AUROC at 8x8).
    """

    epochs: int = 40
    classes: list[str] = field(default_factory=lambda: [str(c) for c in range(10)])
    seed: int = 0
    alpha: float = 0.1
    n_neighbors: int = 1
    batch_size: int = 32
    lr: float = 0.1
    temperature: float = 0.2
    crop_scale_min: float = 0.6
    image_size: int = 16
    widths: tuple[int, int, int] = (32, 64, 128)
    projection_dim: int = 64
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.n_neighbors, "n_neighbors")
        check_positive_int(self.image_size, "image_size", minimum=4)
        self.alpha = check_alpha(self.alpha)
        if not self.classes:
            raise ValueError("classes must name at least one class")
        self.classes = [str(c) for c in self.classes]


def _method_result(scores_test: np.ndarray, scores_cal: np.ndarray, task: OODTask, alpha: float) -> dict:
    threshold = conformal_threshold(scores_cal, alpha)
    return {
        **ood_metrics(scores_test, task.is_inlier).to_dict(),
        **decision_metrics(scores_test < threshold, task.is_inlier),
        "threshold": threshold,
    }


def _encoder_input(part, cfg: DemoConfig) -> torch.Tensor:
    return resize_images(part.tensor(), (cfg.image_size, cfg.image_size))


def _train_firm(task: OODTask, cfg: DemoConfig, seed: int, checkpoint: Path, progress: bool, label: str):
    run_cfg = TrainRunConfig(
        objective="firm", epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, temperature=cfg.temperature,
        image_size=cfg.image_size, crop_scale_min=cfg.crop_scale_min, flip=False, widths=cfg.widths,
        projection_dim=cfg.projection_dim, seed=seed, device=cfg.device,
    )
    return train_contrastive_encoder(
        _encoder_input(task.train, cfg), run_cfg, checkpoint, progress=progress, description=label
    )


def run_demo(config: DemoConfig | None, out_dir: str | Path, progress: bool = True) -> dict:
    """Run the demo, write ``metrics.json``, ``scores.json``, ``report.md`` and plots to ``out_dir``."""
    from tqdm.auto import tqdm

    cfg = config or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = load_digits_dataset()
    class_ids = [data.class_index(c) for c in cfg.classes]
    split = train_calibration_test_split(data.labels, cfg.fractions, seed=cfg.seed)

    per_class: dict[str, dict] = {}
    scores_out: dict[str, dict] = {}
    losses: dict[str, list[float]] = {}
    for c in tqdm(class_ids, desc="one-vs-rest classes", unit="class", disable=not progress):
        name = data.class_names[c]
        task = one_vs_rest(data, split, c)
        model, history = _train_firm(
            task, cfg, seed=cfg.seed * 1000 + c, checkpoint=out / "models" / f"firm_class_{name}.safetensors",
            progress=progress, label=f"FIRM class {name}",
        )
        losses[name] = history.loss
        features = {
            "firm": [
                model.features(_encoder_input(part, cfg)).numpy() for part in (task.train, task.calibration, task.test)
            ],
            "raw_pixels": [part.tensor().flatten(1).numpy() for part in (task.train, task.calibration, task.test)],
        }
        per_class[name] = {
            "n_train": len(task.train),
            "n_calibration": len(task.calibration),
            "n_test_inliers": int(task.is_inlier.sum()),
            "n_test_ood": int((~task.is_inlier).sum()),
        }
        scores_out[name] = {"is_inlier": task.is_inlier.astype(int).tolist()}
        for method, (f_train, f_cal, f_test) in features.items():
            detector = get_detector("knn_cosine", n_neighbors=cfg.n_neighbors).fit(f_train)
            s_cal, s_test = detector.score_samples(f_cal), detector.score_samples(f_test)
            per_class[name][method] = _method_result(s_test, s_cal, task, cfg.alpha)
            scores_out[name][method] = {"test": s_test.tolist(), "threshold": per_class[name][method]["threshold"]}

    metric_keys = [k for k in per_class[next(iter(per_class))]["firm"] if k != "threshold"]
    mean = {m: {k: float(np.mean([per_class[c][m][k] for c in per_class])) for k in metric_keys} for m in METHODS}
    result = {
        **result_header("demo", asdict(cfg)),
        "task": "one-vs-rest anomaly detection on scikit-learn digits",
        "positive_class": "in-distribution (metrics); flagged = score below the conformal threshold",
        "methods": {
            "firm": "FIRM loss with rotations as synthetic outliers, s_con on encoder features",
            "raw_pixels": "s_con on raw pixel vectors (no training)",
        },
        "per_class": per_class,
        "mean": mean,
        "training_loss": losses,
        "wall_time_s": time.perf_counter() - start,
        "environment": environment(device=cfg.device),
    }
    write_json(out / "metrics.json", result)
    write_json(out / "scores.json", {**result_header("demo scores", asdict(cfg)), "scores": scores_out})

    from ..report.demo import render_demo_report

    render_demo_report(out)
    return result
