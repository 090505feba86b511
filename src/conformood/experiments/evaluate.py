"""``conformood evaluate``: any registered detector, conformal calibration, OOD metrics and guarantees.

Inputs are ``.npz`` files with ``features`` (n, d), optional ``labels`` (n,) and ``logits`` (n, C); the test
file also holds ``is_ood`` (n,) bool. The detector is fitted on the training file, calibrated on the
calibration file (in-distribution only), and evaluated on the test file. Results are written as JSON first;
Markdown, HTML and figures are rendered from them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._validation import check_alpha, check_binary_labels
from ..conformal import ConformalDetector, benjamini_hochberg, conformal_threshold
from ..io import write_json
from ..metrics import ood_metrics
from ..scores import detector_info, get_detector

ALPHA_GRID = np.round(np.arange(0.01, 0.51, 0.01), 2)


@dataclass
class FeatureFile:
    """The arrays of one features file (`features`, `labels`, `logits`, `is_ood`)."""

    features: np.ndarray | None
    labels: np.ndarray | None = None
    logits: np.ndarray | None = None
    is_ood: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def load_feature_file(path: str | os.PathLike, needs_ood: bool = False) -> FeatureFile:
    """Read a ``features`` / ``labels`` / ``logits`` / ``is_ood`` npz file (no pickle)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if "features" not in arrays and "logits" not in arrays:
        raise ValueError(f"{path} needs an array 'features' (n, d) or 'logits' (n, C); it has {sorted(arrays)}")
    n = len(arrays.get("features", arrays.get("logits")))
    split = FeatureFile(arrays.get("features"), arrays.get("labels"), arrays.get("logits"))
    for key in ("labels", "logits"):
        value = getattr(split, key)
        if value is not None and len(value) != n:
            raise ValueError(f"{path}: '{key}' has {len(value)} rows but there are {n} samples")
    if needs_ood:
        if "is_ood" not in arrays:
            raise ValueError(f"{path} needs a boolean array 'is_ood' (n,) marking the OOD samples")
        split.is_ood = check_binary_labels(arrays["is_ood"], "is_ood", n)
    return split


def _inputs(split: FeatureFile, kind: str, name: str, path_hint: str) -> np.ndarray:
    if kind == "logits":
        if split.logits is None:
            raise ValueError(f"detector takes logits but the {path_hint} file has no 'logits' array")
        return split.logits
    if kind == "images":
        raise ValueError(f"detector {name!r} needs an encoder and images; evaluate on feature files does not apply")
    if split.features is None:
        raise ValueError(f"the {path_hint} file has no 'features' array")
    return split.features


def evaluate_files(
    train: str | os.PathLike, calibration: str | os.PathLike, test: str | os.PathLike, detector: str,
    options: dict | None = None, alpha: float = 0.1, out_dir: str | os.PathLike = "evaluation",
    mondrian: bool = False,
) -> dict:
    """Run the evaluation and write ``evaluation.json``, ``evaluation.md``, ``report.html``, figures and
    the calibrated detector (``detector.safetensors``, reusable by ``conformood score``)."""
    alpha = check_alpha(alpha)
    info = detector_info(detector)
    tr, cal, te = load_feature_file(train), load_feature_file(calibration), load_feature_file(test, needs_ood=True)
    if info.needs_labels and tr.labels is None:
        raise ValueError(f"detector {detector!r} needs class labels: add 'labels' to the training file")
    if mondrian and (cal.labels is None or te.labels is None):
        raise ValueError("--mondrian needs 'labels' (true or predicted classes) in the calibration and test files")
    det = get_detector(detector, **(options or {}))
    cd = ConformalDetector(det, mondrian=mondrian)
    train_inputs = _inputs(tr, info.input, detector, "training")
    cd.fit(train_inputs, tr.labels)
    cal_scores = det.score_samples(_inputs(cal, info.input, detector, "calibration"))
    cd.calibrate_scores(cal_scores, cal.labels if mondrian else None)
    test_scores = det.score_samples(_inputs(te, info.input, detector, "test"))
    p = cd.p_values_from_scores(test_scores, te.labels if mondrian else None)
    is_inlier = ~te.is_ood
    metrics = ood_metrics(test_scores, is_inlier).to_dict()
    flagged = p <= alpha
    bh = benjamini_hochberg(p, alpha)
    n_disc = int(bh.sum())
    result = {
        "detector": detector,
        "reference": info.reference,
        "options": options or {},
        "alpha": alpha,
        "mondrian": mondrian,
        "n_train": int(len(train_inputs)),
        "n_calibration": int(cal_scores.size),
        "n_test_inliers": int(is_inlier.sum()),
        "n_test_ood": int((~is_inlier).sum()),
        **metrics,
        "realised_fpr_at_alpha": float(flagged[is_inlier].mean()),
        "ood_flagged_at_alpha": float(flagged[~is_inlier].mean()),
        "bh_discoveries": n_disc,
        "bh_fdp": float(bh[is_inlier].sum() / max(n_disc, 1)),
        "bh_power": float(bh[~is_inlier].mean()),
        "realised_fpr_curve": {
            "alpha": ALPHA_GRID.tolist(),
            "fpr": [float((p[is_inlier] <= a).mean()) for a in ALPHA_GRID],
        },
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "evaluation.json", result)
    np.savez(out / "test_scores.npz", scores=test_scores, p_values=p, is_ood=te.is_ood, calibration_scores=cal_scores)
    if all(isinstance(v, (int, float, str, bool)) for v in (options or {}).values()):
        cd.save(out / "detector.safetensors")
    render_evaluation(out)
    return result


def render_evaluation(out_dir: str | os.PathLike) -> None:
    """Render ``evaluation.md``, ``report.html`` and the figures from ``evaluation.json``."""
    import json

    from ..report.html import render_html
    from ..report.plots import plot_roc_grid, plot_score_histograms, pyplot

    out = Path(out_dir)
    r = json.loads((out / "evaluation.json").read_text())
    with np.load(out / "test_scores.npz", allow_pickle=False) as z:
        scores, p, is_ood, cal = z["scores"], z["p_values"], z["is_ood"], z["calibration_scores"]
    inl = ~is_ood
    plot_roc_grid({r["detector"]: {r["detector"]: (scores, inl)}}, out / "roc.png", "ROC (in-distribution positive)")
    threshold = conformal_threshold(cal, r["alpha"]) if not r["mondrian"] else float("nan")
    plot_score_histograms({r["detector"]: (scores, inl, threshold)}, out / "score_histogram.png",
                          f"test scores; marginal conformal threshold at α = {r['alpha']}")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].hist(p[inl], bins=20, range=(0, 1), color="tab:blue", alpha=0.8)
    axes[0].set_title("p-values of test inliers (≈ uniform)")
    axes[0].set_xlabel("conformal p-value")
    curve = r["realised_fpr_curve"]
    axes[1].plot(curve["alpha"], curve["fpr"], label="realised FPR on test inliers")
    axes[1].plot([0, 0.5], [0, 0.5], ls=":", color="grey", label="target α")
    axes[1].set_xlabel("α")
    axes[1].set_ylabel("fraction of inliers flagged")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out / "guarantee.png", dpi=110)
    plt.close(fig)

    keys = ["auroc", "aupr_in", "aupr_out", "fpr95", "detection_accuracy", "realised_fpr_at_alpha",
            "ood_flagged_at_alpha", "bh_discoveries", "bh_fdp", "bh_power"]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = [
        f"# conformood evaluation: {r['detector']}",
        "",
        f"Detector `{r['detector']}` ({r['reference']}), options {r['options']}; "
        f"{r['n_train']} training, {r['n_calibration']} calibration, {r['n_test_inliers']} test inliers and "
        f"{r['n_test_ood']} test OOD samples. α = {r['alpha']}{' (Mondrian, per class)' if r['mondrian'] else ''}.",
        "Metrics take in-distribution as the positive class. `realised_fpr_at_alpha` is the fraction of test",
        "inliers flagged (guaranteed ≤ α in expectation); `bh_*` describe Benjamini–Hochberg selection at level α",
        "(false discovery proportion and power among the OOD samples).",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {fmt(r[k])} |" for k in keys],
        "",
        "![ROC](roc.png)",
        "",
        "![scores](score_histogram.png)",
        "",
        "![guarantee](guarantee.png)",
        "",
    ]
    (out / "evaluation.md").write_text("\n".join(lines))
    render_html(
        f"conformood evaluation: {r['detector']}",
        [("Set-up", lines[2] + " " + lines[3] + " " + lines[4] + " " + lines[5])],
        [("Metrics", ["metric", "value"], [[k, fmt(r[k])] for k in keys])],
        [out / "roc.png", out / "score_histogram.png", out / "guarantee.png"],
        out / "report.html",
    )


def score_file(detector_file: str | os.PathLike, inputs: str | os.PathLike, alpha: float,
               out: str | os.PathLike, use_logits: bool = False) -> dict:
    """Apply a saved calibrated detector to new inputs; write per-input p-values and decisions (JSON + CSV)."""
    alpha = check_alpha(alpha)
    cd = ConformalDetector.load(detector_file)
    split = load_feature_file(inputs)
    x = split.logits if use_logits else split.features
    if x is None:
        raise ValueError(f"{inputs} has no '{'logits' if use_logits else 'features'}' array")
    classes = split.labels if cd.mondrian else None
    scores = cd.detector.score_samples(x)
    p = cd.p_values_from_scores(scores, classes)
    selected = benjamini_hochberg(p, alpha)
    result = {
        "alpha": alpha,
        "n": int(p.size),
        "n_flagged": int((p <= alpha).sum()),
        "n_bh_selected": int(selected.sum()),
        "score": scores.tolist(),
        "p_value": p.tolist(),
        "flagged": (p <= alpha).tolist(),
        "bh_selected": selected.tolist(),
    }
    out = Path(out)
    write_json(out, result)
    rows = ["index,score,p_value,flagged,bh_selected"] + [
        f"{i},{s:.10g},{q:.10g},{int(q <= alpha)},{int(b)}"
        for i, (s, q, b) in enumerate(zip(scores, p, selected))
    ]
    out.with_suffix(".csv").write_text("\n".join(rows) + "\n")
    return result


def feature_files_from_checkpoint(
    checkpoint: str | os.PathLike, data: str, protocol: str, out_dir: str | os.PathLike, split_name: str = "train",
) -> tuple[Path, Path, Path]:
    """Encode a protocol's train / calibration / test images with a model from ``conformood train``.

    The dataset is split with the seed recorded in the model (the split ``conformood train`` used), so the
    calibration and test images were never trained on. Writes ``features_{train,calibration,test}.npz``.
    """
    from ..data import (
        DATASETS,
        PROTOCOLS,
        load_image_folder,
        load_named,
        parse_protocol,
        protocol_task,
        resize_images,
        train_calibration_test_split,
    )
    from ..train.recipes import load_trained_model

    model, cfg = load_trained_model(checkpoint)
    seed = int(cfg.get("seed", 0))
    name, _ = parse_protocol(protocol)
    if not PROTOCOLS.info(name).needs_dataset:
        task = protocol_task(protocol, seed=seed)
    else:
        dataset = load_named(data) if data in DATASETS else load_image_folder(data, split=split_name)
        split = train_calibration_test_split(dataset.labels, seed=seed)
        task = protocol_task(protocol, dataset, split, seed=seed)
    size = int(cfg.get("image_size", task.train.image_shape[-1]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for part_name, part in (("train", task.train), ("calibration", task.calibration), ("test", task.test)):
        feats = model.features(resize_images(part.tensor(), (size, size))).numpy()
        arrays = {"features": feats, "labels": part.labels}
        if part_name == "test":
            arrays["is_ood"] = ~task.test_is_inlier
        path = out / f"features_{part_name}.npz"
        np.savez(path, **arrays)
        paths.append(path)
    return tuple(paths)  # type: ignore[return-value]
