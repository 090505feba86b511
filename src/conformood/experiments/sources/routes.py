"""The routes: new inputs for a deployed detector, and the three parts of an evaluation, from any source."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .encoders import Encoder, get_encoder, image_features
from .features import Features, check_feature_source, read_features, same_source, write_features


def load_features(inputs: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
                  model: str | os.PathLike | None = None, backbone: str | None = None,
                  weights: str | None = "imagenet", input_size: int | None = None,
                  fitted_source: dict | None = None, use_logits: bool = False, progress: bool = False,
                  skip_bad: bool = False) -> Features:
    """New inputs for a fitted or calibrated detector: a feature file (``inputs``), or ``images`` through a
    ``model`` or ``backbone``. With images and no encoder given, the encoder is rebuilt from the detector's
    record (``fitted_source``: a registered backbone with ImageNet weights is rebuilt; a model file or a weights
    file must be given again, and is checked by its digest). The features' record is then compared with
    ``fitted_source`` (:func:`check_feature_source`)."""
    if (inputs is None) == (images is None):
        raise ValueError("give exactly one of a features file (--inputs) or images (--images)")
    if images is None and (model is not None or backbone is not None):
        raise ValueError("--model and --backbone encode --images; a features file is scored as it is")
    if images is not None:
        if model is None and backbone is None:
            backbone, weights, input_size = encoder_from_record(fitted_source)
        encoder = get_encoder(model, backbone, weights, input_size)
        feats = image_features(images, encoder, progress=progress, with_logits=use_logits, skip_bad=skip_bad)
    else:
        feats = read_features(inputs)
    if use_logits and feats.logits is None:
        raise ValueError(f"{feats.origin} has no 'logits' array")
    check_feature_source(fitted_source, feats.source, feats.origin)
    return feats


def encoder_from_record(record: dict | None) -> tuple[str, str | None, int | None]:
    """(backbone, weights, input size) to rebuild the encoder a detector's feature-source record names; an
    error saying what to give when it cannot be rebuilt from the record alone."""
    if record is None:
        raise ValueError("--images needs --model or --backbone: the detector records no feature source")
    if record.get("kind") == "model":
        raise ValueError(f"the detector was calibrated on features of the model {record.get('model')}; give it "
                         "with --model (stored paths are never followed)")
    if record.get("kind") != "backbone":
        raise ValueError("--images needs --model or --backbone: the detector was calibrated on features made "
                         "outside conformood")
    weights = record.get("weights")
    if weights not in ("imagenet", None):
        raise ValueError(f"the detector's backbone {record['backbone']} used the weights file {weights}; give it "
                         "with --backbone and --weights (stored paths are never followed)")
    if record.get("output") != "pooled":
        raise ValueError("the detector was calibrated on patch features; give --backbone with its options")
    return record["backbone"], weights, int(record["input_size"][0])


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


def protocol_task(data: str, protocol: str, seed: int, split_name: str = "train") -> Any:
    """The OOD task of ``protocol`` on ``data`` (a named data set or an image folder), split with ``seed``."""
    from ...data import (
        DATASETS,
        PROTOCOLS,
        load_image_folder,
        load_named,
        parse_protocol,
        train_calibration_test_split,
    )
    from ...data import protocol_task as make_task

    name, _ = parse_protocol(protocol)
    if not PROTOCOLS.info(name).needs_dataset:
        return make_task(protocol, seed=seed)
    dataset = load_named(data) if data in DATASETS else load_image_folder(data, split=split_name)
    split = train_calibration_test_split(dataset.labels, seed=seed)
    return make_task(protocol, dataset, split, seed=seed)


def protocol_features(encoder: Encoder, data: str | None, protocol: str | None, seed: int | None = None,
                      split_name: str = "train", progress: bool = False) -> tuple[Features, Features, Features, dict]:
    """A protocol's train / calibration / test features through ``encoder``. With a trained model, ``data`` and
    ``protocol`` default to what it records (:func:`checkpoint_protocol`) and the split uses the model's seed (the
    split ``conformood train`` used, so calibration and test images were never trained on); a backbone needs both
    and uses ``seed`` (default 0). Returns the three feature sets and the record of the data and protocol."""
    if encoder.kind == "model":
        cfg = encoder.model_config
        data, protocol = checkpoint_protocol(cfg, data, protocol, encoder.record["model"])
        seed = int(cfg.get("seed", 0))
    elif data is None or protocol is None:
        raise ValueError("a backbone needs --data (a named data set or an image folder) and --protocol "
                         "(e.g. one-vs-rest:0)")
    seed = 0 if seed is None else int(seed)
    task = protocol_task(data, protocol, seed, split_name)
    parts = []
    for part_name, part in (("train", task.train), ("calibration", task.calibration), ("test", task.test)):
        images = part.images if encoder.kind == "backbone" else part.tensor()
        x = encoder.encode(images, progress=progress)
        parts.append(Features(x, part.labels, names=list(part.names) or None, source=dict(encoder.record),
                              is_inlier=task.is_inlier if part_name == "test" else None,
                              origin=f"the {part_name} part of {protocol} on {data}"))
    record = {"data": data, "protocol": protocol, "seed": seed}
    if encoder.kind == "model":
        record["trained_on"] = {k: encoder.model_config.get(k)
                                for k in ("data", "normal_class", "objective", "seed", "encoder")}
    return parts[0], parts[1], parts[2], record


def check_evaluation_sources(train: object = None, calibration: object = None, test: object = None,
                             checkpoint: object = None, backbone: object = None, data: object = None,
                             protocol: object = None) -> None:
    """Which sources of an evaluation go together: three feature files (the test file optional), or a trained
    model, or a backbone on a data set and protocol; checked before anything is read or written."""
    files = {"--train": train, "--calibration": calibration, "--test": test}
    if checkpoint is not None and backbone is not None:
        raise ValueError("give one of --checkpoint (a trained model) or --backbone (a registered backbone)")
    if checkpoint is not None or backbone is not None:
        option = "--checkpoint" if checkpoint is not None else "--backbone"
        given = [name for name, value in files.items() if value is not None]
        if given:
            raise ValueError(f"{option} encodes its own train, calibration and test images; drop {', '.join(given)}"
                             f" (or drop {option} to evaluate those feature files)")
        if backbone is not None and (data is None or protocol is None):
            raise ValueError("--backbone needs --data (a named data set or an image folder) and --protocol (e.g. "
                             "one-vs-rest:0) or --normal-class")
        return
    if data is not None or protocol is not None:
        raise ValueError("--data and --protocol choose the images of --checkpoint or --backbone; with feature files "
                         "they do not apply")
    missing = [name for name, value in files.items() if value is None and name != "--test"]
    if missing:
        raise ValueError(f"give {', '.join(missing)} (feature files), or --checkpoint with a trained model, or "
                         "--backbone with --data and --protocol")


def evaluation_features(train: str | os.PathLike | None = None, calibration: str | os.PathLike | None = None,
                        test: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
                        backbone: str | None = None, weights: str | None = "imagenet", input_size: int | None = None,
                        data: str | None = None, protocol: str | None = None, out_dir: str | os.PathLike | None = None,
                        progress: bool = False) -> tuple[Features, Features, Features | None, dict | None]:
    """The training, calibration and (optional) test features of an evaluation, from one of three sources:
    three feature files (the test file may be left out: fit and calibrate only); a trained model
    (``checkpoint``) on a protocol; or a registered ``backbone`` on ``data`` and ``protocol``. Encoded parts are
    written to ``out_dir`` as ``features_{train,calibration,test}.npz``. The three sets must have been made the
    same way (:func:`same_source`). Returns them with the record of the data and protocol (None for files)."""
    check_evaluation_sources(train, calibration, test, checkpoint, backbone, data, protocol)  # for direct callers
    if checkpoint is not None or backbone is not None:
        encoder = get_encoder(checkpoint, backbone, weights, input_size)
        tr, cal, te, record = protocol_features(encoder, data, protocol, progress=progress)
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            for name, part in (("train", tr), ("calibration", cal), ("test", te)):
                write_features(out / f"features_{name}.npz", part)
        return tr, cal, te, {**encoder.record, **record}
    tr, cal = read_features(train), read_features(calibration)
    te = read_features(test, needs_ood=True) if test is not None else None
    same_source([(str(train), tr.source), (str(calibration), cal.source)]
                + ([(str(test), te.source)] if te is not None else []))
    return tr, cal, te, None
