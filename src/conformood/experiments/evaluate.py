"""``conformood evaluate``: any registered detector, conformal calibration, OOD metrics and guarantees.

Inputs are ``.npz`` files with ``features`` (n, d), optional ``labels`` (n,) and ``logits`` (n, C); the test
file also holds ``is_inlier`` (n,) bool, True for in-distribution samples (the legacy ``is_ood``, its
negation, is also read). The detector is fitted on the training file, calibrated on the
calibration file (in-distribution only), and evaluated on the test file. Results are written as JSON first;
Markdown, HTML and figures are rendered from them.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .._validation import check_alpha, check_binary_labels
from ..conformal import ConformalDetector, conformal_threshold, pac_failure_probability, pac_min_calibration
from ..io import file_digest, read_npz, write_json, write_npz, write_text
from ..metrics import decision_metrics, ood_metrics
from ..report.evaluation import render_evaluation
from ..results import environment, result_header
from ..scores import detector_info, get_detector

ALPHA_GRID = np.round(np.arange(0.01, 0.51, 0.01), 2)


@dataclass
class FeatureFile:
    """The arrays of one features file (`features`, `labels`, `logits`, `is_inlier`)."""

    features: np.ndarray | None
    labels: np.ndarray | None = None
    logits: np.ndarray | None = None
    is_inlier: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def load_feature_file(path: str | os.PathLike, needs_ood: bool = False) -> FeatureFile:
    """Read a ``features`` / ``labels`` / ``logits`` / ``is_inlier`` npz file (no pickle; ``is_ood``, the
    former key, is read as its negation)."""
    path = Path(path)
    arrays = read_npz(path, what="features file")
    if "features" not in arrays and "logits" not in arrays:
        raise ValueError(f"{path} needs an array 'features' (n, d) or 'logits' (n, C); it has {sorted(arrays)}")
    n = len(arrays.get("features", arrays.get("logits")))
    split = FeatureFile(arrays.get("features"), arrays.get("labels"), arrays.get("logits"))
    for key in ("labels", "logits"):
        value = getattr(split, key)
        if value is not None and len(value) != n:
            raise ValueError(f"{path}: '{key}' has {len(value)} rows but there are {n} samples")
    if needs_ood:
        if "is_inlier" in arrays and "is_ood" in arrays:
            raise ValueError(
                f"{path} holds both 'is_inlier' and 'is_ood'; keep one ('is_inlier', True = in-distribution)"
            )
        if "is_inlier" in arrays:
            split.is_inlier = check_binary_labels(arrays["is_inlier"], "is_inlier", n)
        elif "is_ood" in arrays:
            split.is_inlier = ~check_binary_labels(arrays["is_ood"], "is_ood", n)
        else:
            raise ValueError(f"{path} needs a boolean array 'is_inlier' (n,), True for the in-distribution samples")
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


@dataclass
class EvaluateConfig:
    """What ``conformood evaluate`` evaluates: three feature files, a registered detector and its options,
    the level α of the guarantees, and whether to calibrate per class (Mondrian)."""

    train: str
    calibration: str
    test: str
    detector: str = "knn_cosine"
    options: dict = field(default_factory=dict)
    alpha: float = 0.1
    mondrian: bool = False
    delta: float | None = None  # calibration-conditional (PAC) decisions: P_calibration(FPR > alpha) <= delta
    model: dict | None = None  # with --checkpoint: the model file, its digest, and the data and protocol used
    backbone: dict | None = None  # with --backbone: the backbone, its weights digest, preprocessing, data, protocol

    def __post_init__(self) -> None:
        self.alpha = check_alpha(self.alpha)
        self.delta = None if self.delta is None else check_alpha(self.delta, "delta")
        detector_info(self.detector)  # a clear error for an unknown name
        self.train, self.calibration, self.test = str(self.train), str(self.calibration), str(self.test)
        self.options = dict(self.options or {})


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
        groups = {}
        for group, cal in rule.calibration_.items():
            k = rule.flag_rank(alpha, cal.size)
            groups[str(group)] = {"n": int(cal.size), "rank": int(k),
                                  "threshold": _finite_or_none(float(cal[k - 1]) if k else float("-inf")),
                                  "p_fpr_above_alpha": pac_failure_probability(k, cal.size, alpha)}
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
    tr, cal, te = (load_feature_file(cfg.train), load_feature_file(cfg.calibration),
                   load_feature_file(cfg.test, needs_ood=True))
    if info.needs_labels and tr.labels is None:
        raise ValueError(f"detector {detector!r} needs class labels: add 'labels' to the training file")
    if mondrian and (cal.labels is None or te.labels is None):
        raise ValueError("--mondrian needs 'labels' (true or predicted classes) in the calibration and test files")
    det = get_detector(detector, **(options or {}))
    cd = ConformalDetector(det, mondrian=mondrian)
    train_inputs = _inputs(tr, info.input, detector, "training")
    cd.fit(train_inputs, tr.labels)
    cal_scores = det.score_samples(_inputs(cal, info.input, detector, "calibration"))
    cd.calibrate_scores(cal_scores, cal.labels if mondrian else None, delta=cfg.delta)
    test_scores = det.score_samples(_inputs(te, info.input, detector, "test"))
    p = cd.p_values_from_scores(test_scores, te.labels if mondrian else None)
    is_inlier = te.is_inlier
    metrics = ood_metrics(test_scores, is_inlier).to_dict()
    test_labels = te.labels if mondrian else None
    flagged = cd.flags_from_scores(test_scores, alpha, test_labels)
    bh = cd.select_from_scores(test_scores, alpha, test_labels)
    result = {
        **result_header("evaluate", asdict(cfg), inputs={
            "train": cfg.train, "calibration": cfg.calibration, "test": cfg.test,
            "checkpoint": (cfg.model or {}).get("checkpoint")}),
        "detector": detector,
        "reference": info.reference,
        "options": options or {},
        "detector_params": _plain_params(det),
        "alpha": alpha,
        "mondrian": mondrian,
        "n_train": int(len(train_inputs)),
        "n_calibration": int(cal_scores.size),
        "n_test_inliers": int(is_inlier.sum()),
        "n_test_ood": int((~is_inlier).sum()),
        **metrics,
        **decision_metrics(flagged, is_inlier, bh),
        "threshold": _finite_or_none(conformal_threshold(cal_scores, alpha)) if not mondrian else None,
        "realised_fpr_curve": {
            "alpha": ALPHA_GRID.tolist(),
            "fpr": [float((p[is_inlier] <= a).mean()) for a in ALPHA_GRID],
        },
    }
    if cfg.delta is not None:
        result["pac"] = pac_comparison(cd, test_scores, test_labels, is_inlier, alpha, cfg.delta)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result["wall_time_s"] = time.perf_counter() - start
    result["environment"] = environment()
    write_json(out / "evaluation.json", result)
    write_npz(out / "test_scores.npz", scores=test_scores, p_values=p, is_inlier=te.is_inlier,
              calibration_scores=cal_scores)
    if all(isinstance(v, (int, float, str, bool)) for v in (options or {}).values()):
        cd.save(out / "detector.safetensors")
    render_evaluation(out)
    return result


def image_features(images: str | os.PathLike, model: str | os.PathLike | None = None, backbone: str | None = None,
                   weights: str | None = "imagenet", input_size: int = 224) -> tuple[np.ndarray, np.ndarray | None]:
    """Features of new images (an ``.npz`` with ``images`` and optional ``labels``, or an image folder / archive)
    through a model from ``conformood train`` or a registered backbone: (features, labels or None)."""
    from ..data import load_image_folder

    path = Path(images)
    if path.suffix == ".npz":
        arrays = read_npz(path, ("images",), "images file")
        x, labels = arrays["images"], arrays.get("labels")
    else:
        data = load_image_folder(path)
        x, labels = data.images, data.labels
    if (model is None) == (backbone is None):
        raise ValueError("images need exactly one of a trained model (--model) or a backbone (--backbone)")
    if backbone is not None:
        from ..models import extract_features, get_backbone

        return extract_features(get_backbone(backbone, weights=weights, input_size=input_size), x,
                                progress=False), labels
    from ..models.extract import as_images
    from ..train.recipes import load_trained_model

    net, cfg = load_trained_model(model)
    tensor = as_images(x)
    if tensor.shape[1] != int(cfg["in_channels"]):
        raise ValueError(f"{images} has {tensor.shape[1]}-channel images; {model} takes {cfg['in_channels']}")
    return _model_features(net, cfg, tensor, 32), labels


def _model_features(net, cfg: dict, images, default_size: int) -> np.ndarray:
    """Features of float images by a model from ``conformood train``, at the image size it was trained on."""
    from ..data import resize_images

    size = int(cfg.get("image_size", default_size))
    return net.features(resize_images(images, (size, size))).numpy()


def score_file(detector_file: str | os.PathLike, inputs: str | os.PathLike | None, alpha: float,
               out: str | os.PathLike, use_logits: bool = False, csv: str | os.PathLike | None = None,
               images: str | os.PathLike | None = None, model: str | os.PathLike | None = None,
               backbone: str | None = None, weights: str | None = "imagenet", input_size: int = 224) -> dict:
    """Apply a saved calibrated detector to new inputs (a features file, or ``images`` through ``model`` or
    ``backbone``); write per-input p-values and decisions as JSON (``out``) and CSV (``csv``, default ``out``
    with the suffix ``.csv``)."""
    alpha = check_alpha(alpha)
    out = Path(out)
    csv_path = Path(csv) if csv is not None else out.with_suffix(".csv")
    if csv_path.resolve() == out.resolve():
        raise ValueError(f"the CSV {csv_path} would overwrite the JSON result {out}; give another name")
    if (inputs is None) == (images is None):
        raise ValueError("give exactly one of a features file (--inputs) or images (--images)")
    cd = ConformalDetector.load(detector_file)
    if images is not None:
        x, labels = image_features(images, model, backbone, weights, input_size)
        split = FeatureFile(x, labels)
    else:
        split = load_feature_file(inputs)
        x = split.logits if use_logits else split.features
        if x is None:
            raise ValueError(f"{inputs} has no '{'logits' if use_logits else 'features'}' array")
    classes = split.labels if cd.mondrian else None
    scores = cd.detector.score_samples(x)
    p = cd.p_values_from_scores(scores, classes)
    flagged = cd.flags_from_scores(scores, alpha, classes)
    selected = cd.select_from_scores(scores, alpha, classes)
    result = {
        **result_header("score", {"detector_file": str(detector_file),
                                  "inputs": None if inputs is None else str(inputs),
                                  "images": None if images is None else str(images), "alpha": alpha,
                                  "csv": str(csv_path), "use_logits": use_logits,
                                  "model": None if model is None else str(model), "backbone": backbone,
                                  "weights": weights if backbone else None},
                       inputs={"detector_file": detector_file, "inputs": inputs,
                               "images": images if images is not None and Path(images).is_file() else None,
                               "model": model}),
        "alpha": alpha,
        "n": int(p.size),
        "n_flagged": int(flagged.sum()),
        "n_bh_selected": int(selected.sum()),
        "score": scores.tolist(),
        "p_value": p.tolist(),
        "flagged": flagged.tolist(),
        "bh_selected": selected.tolist(),
    }
    write_json(out, result)
    rows = ["index,score,p_value,flagged,bh_selected"] + [
        f"{i},{s:.10g},{q:.10g},{int(f)},{int(b)}"
        for i, (s, q, f, b) in enumerate(zip(scores, p, flagged, selected))
    ]
    write_text(csv_path, "\n".join(rows) + "\n")
    return result


def checkpoint_protocol(model_config: dict, data: str | None, protocol: str | None,
                        source: str = "the model") -> tuple[str, str]:
    """The data set and protocol to evaluate a trained model on: by default what the model records (its data
    set, one-vs-rest on its normal class); a one-vs-rest protocol on another class than the model's is refused."""
    trained_data, normal = model_config.get("data"), model_config.get("normal_class")
    data = data if data is not None else trained_data
    if protocol is None:
        if normal is None:
            raise ValueError(f"{source} was trained on every class of {trained_data!r}; give --protocol (e.g. "
                             "'one-vs-rest:K' or a named pair)")
        protocol = f"one-vs-rest:{normal}"
    name, argument = protocol.partition(":")[::2]
    if name == "one-vs-rest" and normal is not None and argument != str(normal) and data == trained_data:
        raise ValueError(f"{source} was trained on class {normal} only; --protocol {protocol} would evaluate it "
                         f"on class {argument}'s data as if it were in-distribution")
    if data is None:
        raise ValueError(f"{source} records no data set; give --data")
    return str(data), protocol


def _protocol_task(data: str, protocol: str, seed: int, split_name: str = "train"):
    """The OOD task of ``protocol`` on ``data`` (a named data set or an image folder), split with ``seed``."""
    from ..data import (
        DATASETS,
        PROTOCOLS,
        load_image_folder,
        load_named,
        parse_protocol,
        protocol_task,
        train_calibration_test_split,
    )

    name, _ = parse_protocol(protocol)
    if not PROTOCOLS.info(name).needs_dataset:
        return protocol_task(protocol, seed=seed)
    dataset = load_named(data) if data in DATASETS else load_image_folder(data, split=split_name)
    split = train_calibration_test_split(dataset.labels, seed=seed)
    return protocol_task(protocol, dataset, split, seed=seed)


def _write_feature_files(task, encode_part, out_dir: str | os.PathLike) -> tuple[Path, Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for part_name, part in (("train", task.train), ("calibration", task.calibration), ("test", task.test)):
        arrays = {"features": encode_part(part), "labels": part.labels}
        if part_name == "test":
            arrays["is_inlier"] = task.is_inlier
        path = out / f"features_{part_name}.npz"
        write_npz(path, **arrays)
        paths.append(path)
    return tuple(paths)  # type: ignore[return-value]


def feature_files_from_checkpoint(
    checkpoint: str | os.PathLike, data: str | None, protocol: str | None, out_dir: str | os.PathLike,
    split_name: str = "train",
) -> tuple[tuple[Path, Path, Path], dict]:
    """Encode a protocol's train / calibration / test images with a model from ``conformood train``.

    ``data`` and ``protocol`` default to what the model records (:func:`checkpoint_protocol`). The dataset is
    split with the seed recorded in the model (the split ``conformood train`` used), so the calibration and
    test images were never trained on. Writes ``features_{train,calibration,test}.npz``; returns their paths
    and a record of the model (file, digest, what it was trained on) and of the data and protocol used.
    """
    from ..train.recipes import load_trained_model

    model, cfg = load_trained_model(checkpoint)
    data, protocol = checkpoint_protocol(cfg, data, protocol, str(checkpoint))
    task = _protocol_task(data, protocol, int(cfg.get("seed", 0)), split_name)
    paths = _write_feature_files(
        task, lambda part: _model_features(model, cfg, part.tensor(), task.train.image_shape[-1]), out_dir)
    record = {"checkpoint": str(checkpoint), "sha256": file_digest(checkpoint), "data": data, "protocol": protocol,
              "trained_on": {k: cfg.get(k) for k in ("data", "normal_class", "objective", "seed", "encoder")}}
    return paths, record


def feature_files_from_backbone(
    backbone: str, data: str, protocol: str, out_dir: str | os.PathLike, weights: str | None = "imagenet",
    input_size: int = 224, seed: int = 0, split_name: str = "train", progress: bool = True,
) -> tuple[tuple[Path, Path, Path], dict]:
    """Extract a protocol's train / calibration / test features with a registered backbone (frozen), through
    :func:`conformood.models.extract_features`; returns the file paths and a record of the backbone and data."""
    from ..models import extract_features, get_backbone
    from ..models.backbones import cache_dir

    net = get_backbone(backbone, weights=weights, input_size=input_size)
    task = _protocol_task(data, protocol, seed, split_name)
    cache = cache_dir() / "features" if net.weights_digest else None
    paths = _write_feature_files(
        task, lambda part: extract_features(net, part.images, progress=progress, cache=cache), out_dir)
    record = {"backbone": backbone, "weights": weights, "weights_digest": net.weights_digest,
              "preprocessing": net.preprocessing(), "data": data, "protocol": protocol, "seed": seed}
    return paths, record
