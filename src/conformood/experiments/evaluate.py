"""``conformood evaluate``: any registered detector, conformal calibration, OOD metrics and guarantees.

The inputs come from one source (:func:`conformood.experiments.sources.evaluation_features`): three ``.npz``
feature files (``features`` (n, d), optional ``labels`` (n,) and ``logits`` (n, C); the test file also holds
``is_inlier`` (n,) bool, True for in-distribution samples), a trained model on a protocol, or a registered
backbone on a data set and protocol. The detector is fitted on the training part, calibrated on the calibration
part (in-distribution only), and evaluated on the test part; without a test file it is only fitted and
calibrated. The calibrated detector records how its features were made and the level α, so that ``score``
refuses differently made features and decides at the same α. Results are written as JSON first; Markdown, HTML
and figures are rendered from them.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .._validation import check_alpha
from ..conformal import ConformalDetector, conformal_threshold, pac_failure_probability, pac_min_calibration
from ..io import write_json, write_npz
from ..metrics import decision_metrics, ood_metrics
from ..report.evaluation import render_evaluation
from ..results import environment, result_header
from ..scores import detector_info, get_detector
from .sources import check_evaluation_sources, evaluation_features

ALPHA_GRID = np.round(np.arange(0.01, 0.51, 0.01), 2)


@dataclass
class EvaluateConfig:
    """What ``conformood evaluate`` evaluates: the source of the features (three feature files, the test file
    optional; or a trained model ``checkpoint``, or a ``backbone`` with its ``weights`` and ``input_size``, on
    ``data`` and ``protocol``), a registered detector and its options, the level α of the guarantees, and
    whether to calibrate per class (Mondrian)."""

    train: str | None = None
    calibration: str | None = None
    test: str | None = None
    detector: str = "knn_cosine"
    options: dict = field(default_factory=dict)
    alpha: float = 0.1
    mondrian: bool = False
    delta: float | None = None  # calibration-conditional (PAC) decisions: P_calibration(FPR > alpha) <= delta
    checkpoint: str | None = None  # a model from `conformood train`, instead of the feature files
    backbone: str | None = None  # a registered backbone (frozen), instead of the feature files
    weights: str | None = "imagenet"
    input_size: int | None = None
    data: str | None = None
    protocol: str | None = None

    def __post_init__(self) -> None:
        self.alpha = check_alpha(self.alpha)
        self.delta = None if self.delta is None else check_alpha(self.delta, "delta")
        detector_info(self.detector)  # a clear error for an unknown name
        for key in ("train", "calibration", "test", "checkpoint"):
            value = getattr(self, key)
            setattr(self, key, None if value is None else str(value))
        self.options = dict(self.options or {})
        if self.protocol is not None:
            from ..data import parse_protocol

            parse_protocol(self.protocol)
        check_evaluation_sources(self.train, self.calibration, self.test, self.checkpoint, self.backbone, self.data,
                                 self.protocol)


def _plain_params(detector: object) -> dict:
    """Every constructor parameter the detector ran with (defaults included), as JSON values; arrays and
    objects are described by their type and shape."""
    out = {}
    for key, value in detector.get_params(deep=False).items():  # type: ignore[attr-defined]
        if value is None or isinstance(value, (bool, int, float, str)):
            out[key] = value
        else:
            shape = getattr(value, "shape", None)
            out[key] = f"{type(value).__name__}{tuple(shape) if shape is not None else ''}"
    return out


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def pac_comparison(cd: ConformalDetector, test_scores: np.ndarray, labels: np.ndarray | None,
                   is_inlier: np.ndarray, alpha: float, delta: float) -> dict:
    """The marginal and the calibration-conditional (PAC) rule side by side on the same test set: per
    calibration group, the rank, the threshold and the probability over calibration sets that the rule's FPR
    exceeds α; on the test set, the realised FPR and the fraction of OOD inputs flagged."""
    marginal = ConformalDetector(cd.detector, mondrian=cd.mondrian).calibrate_scores(
        np.concatenate(list(cd.calibration_.values())),
        np.concatenate([np.full(v.size, k) for k, v in cd.calibration_.items()]) if cd.mondrian else None)
    rules = {}
    for name, rule in (("marginal", marginal), ("pac", cd)):
        flags = rule.flags_from_scores(test_scores, alpha, labels)
        groups = {group: {"n": g["n"], "rank": g["rank"], "threshold": g["threshold"],
                          "p_fpr_above_alpha": pac_failure_probability(g["rank"], g["n"], alpha)}
                  for group, g in rule.decision_rule(alpha).items()}
        rules[name] = {"realised_fpr": float(flags[is_inlier].mean()) if is_inlier.any() else None,
                       "ood_flagged": float(flags[~is_inlier].mean()) if (~is_inlier).any() else None,
                       "groups": groups}
    n_min = pac_min_calibration(alpha, delta)
    return {"delta": delta, "min_calibration": n_min, **rules}


def run_evaluation(config: EvaluateConfig, out_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Run the evaluation and write ``evaluation.json``, ``evaluation.md``, ``report.html``, figures and
    the calibrated detector (``detector.safetensors``, reusable by ``conformood score``)."""
    start = time.perf_counter()
    cfg = config
    alpha, detector, options, mondrian = cfg.alpha, cfg.detector, cfg.options, cfg.mondrian
    info = detector_info(detector)
    tr, cal, te, covers = evaluation_features(
        cfg.train, cfg.calibration, cfg.test, checkpoint=cfg.checkpoint, backbone=cfg.backbone, weights=cfg.weights,
        input_size=cfg.input_size, data=cfg.data, protocol=cfg.protocol, out_dir=out_dir, progress=progress)
    if info.needs_labels and tr.labels is None:
        raise ValueError(f"detector {detector!r} needs class labels: add 'labels' to the training file")
    if mondrian and (cal.labels is None or (te is not None and te.labels is None)):
        raise ValueError("--mondrian needs 'labels' (true or predicted classes) in the calibration and test files")
    det = get_detector(detector, **(options or {}))
    cd = ConformalDetector(det, mondrian=mondrian, alpha=alpha, feature_source=tr.source)
    train_inputs = tr.inputs(info.input, repr(detector))
    cd.fit(train_inputs, tr.labels)
    cal_scores = det.score_samples(cal.inputs(info.input, repr(detector)))
    cd.calibrate_scores(cal_scores, cal.labels if mondrian else None, delta=cfg.delta)
    result = {
        **result_header("evaluate", asdict(cfg), inputs={
            "train": cfg.train, "calibration": cfg.calibration, "test": cfg.test, "checkpoint": cfg.checkpoint}),
        "detector": detector,
        "reference": info.reference,
        "options": options or {},
        "detector_params": _plain_params(det),
        "alpha": alpha,
        "mondrian": mondrian,
        "feature_source": {**(tr.source or {}), **(covers or {})} or None,
        "n_train": int(len(train_inputs)),
        "n_calibration": int(cal_scores.size),
        "threshold": _finite_or_none(conformal_threshold(cal_scores, alpha)) if not mondrian else None,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if te is not None:
        test_scores = det.score_samples(te.inputs(info.input, repr(detector)))
        test_labels = te.labels if mondrian else None
        p = cd.p_values_from_scores(test_scores, test_labels)
        is_inlier = te.is_inlier
        flagged = cd.flags_from_scores(test_scores, alpha, test_labels)
        bh = cd.select_from_scores(test_scores, alpha, test_labels)
        result |= {
            "n_test_inliers": int(is_inlier.sum()),
            "n_test_ood": int((~is_inlier).sum()),
            **ood_metrics(test_scores, is_inlier).to_dict(),
            **decision_metrics(flagged, is_inlier, bh),
            "realised_fpr_curve": {
                "alpha": ALPHA_GRID.tolist(),
                "fpr": [float((p[is_inlier] <= a).mean()) for a in ALPHA_GRID],
            },
        }
        if cfg.delta is not None:
            result["pac"] = pac_comparison(cd, test_scores, test_labels, is_inlier, alpha, cfg.delta)
        write_npz(out / "test_scores.npz", scores=test_scores, p_values=p, is_inlier=is_inlier,
                  calibration_scores=cal_scores)
    result["wall_time_s"] = time.perf_counter() - start
    result["environment"] = environment()
    write_json(out / "evaluation.json", result)
    if all(isinstance(v, (int, float, str, bool)) for v in (options or {}).values()):
        cd.save(out / "detector.safetensors")
    if te is not None:
        render_evaluation(out)
    return result
