"""The tamper suite: every artefact kind (detector, calibrated detector, checkpoint, model, conformal set) is
refused with a clear error when its tensor bytes are flipped, it is truncated, its parts are swapped, its
metadata is hostile (paths, huge sizes, wrong types) or it is a renamed pickle; no pickle ever runs."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conformood.conformal import ConformalDetector, load_conformal_set
from conformood.conformal.sets.families import SingleNormSet
from conformood.io import load_state, save_state
from conformood.models import build_contrastive_model
from conformood.scores import KNNCosineDetector, MahalanobisDetector, load_detector
from conformood.train import FIRMRotationObjective, TrainConfig, Trainer
from conformood.train.recipes import MODEL_KIND, load_trained_model

RNG = np.random.default_rng(0)
X = RNG.normal(size=(60, 6)).astype(np.float32)
Y = np.repeat(np.arange(3), 20)
MODEL_CONFIG = {"in_channels": 1, "widths": [4, 8, 8], "projection_dim": 8, "encoder": "small_cnn", "head": "mlp",
                "aux_classes": None}


def _trainer(path: Path, epochs: int = 2) -> Trainer:
    from conformood.augment import SimCLRViews, ViewConfig

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_contrastive_model(1, "small_cnn", "mlp", (4, 8, 8), 8)
    views = SimCLRViews((8, 8), ViewConfig(crop_scale=(0.6, 1.0), flip_p=0.0))
    return Trainer(model, FIRMRotationObjective(views), TrainConfig(epochs=epochs, batch_size=8, lr=0.05,
                                                                   warmup_epochs=1), checkpoint=path, progress=False)


def _resume(path: Path) -> None:
    _trainer(path).fit(torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)), resume=True)


def _make(kind: str, path: Path) -> None:
    if kind == "detector":
        MahalanobisDetector().fit(X, Y).save(path)
    elif kind == "calibrated":
        ConformalDetector(KNNCosineDetector(n_neighbors=2)).fit(X[:40]).calibrate(X[40:]).save(path)
    elif kind == "checkpoint":
        _trainer(path).fit(torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)))
    elif kind == "model":
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = build_contrastive_model(1, "small_cnn", "mlp", (4, 8, 8), 8)
        save_state(path, model.state_dict(), MODEL_CONFIG, kind=MODEL_KIND)
    elif kind == "set":
        cset = SingleNormSet(dim=6, alpha=0.1)
        cset.calibrate(X[:30], X[30:60])
        cset.save(path)
    elif kind == "inspector":
        path.write_bytes(_inspector_bytes())
    elif kind == "inspector_regions":
        path.write_bytes(_inspector_bytes(regions=True))


_INSPECTOR: dict[bool, bytes] = {}


def _inspector_bytes(regions: bool = False) -> bytes:
    """An inspector fitted once (random MobileNetV2 at 64², 24 small gray parts), its file's bytes; with
    ``regions``, with COAT defect regions (a threshold predictor trained one epoch on 12 defective parts)."""
    if regions not in _INSPECTOR:
        import tempfile

        from conformood.data.image_files import ImageFiles
        from conformood.experiments.inspect import InspectConfig, Inspector
        from conformood.experiments.inspect_regions import RegionConfig, Regions

        rng = np.random.default_rng(0)
        images = [rng.random((1, 40, 48)).astype(np.float32) for _ in range(24)]
        files = ImageFiles(images, [f"p{i}.png" for i in range(24)], [(40, 48)] * 24)
        cfg = InspectConfig(backbone="mobilenet_v2", weights=None, input_size=64, coreset_fraction=0.5, alpha=0.25,
                            calibration_fraction=0.5, pooled=True)
        inspector = Inspector.fit(files, cfg)
        if regions:
            masks = [np.zeros((40, 48), bool) for _ in range(12)]
            for i, m in enumerate(masks):
                m[i:i + 9, 2 * i:2 * i + 7] = True
            defects = ImageFiles([np.where(m, 1.0, x).astype(np.float32) for m, x in zip(masks, images)],
                                 [f"d{i}.png" for i in range(12)], [(40, 48)] * 12)
            inspector.regions = Regions.fit(inspector, defects, masks, RegionConfig(method="coat", epochs=1,
                                                                                      pixel_alpha=0.2))
        with tempfile.TemporaryDirectory() as tmp:
            inspector.save(Path(tmp) / "i.safetensors")
            _INSPECTOR[regions] = (Path(tmp) / "i.safetensors").read_bytes()
    return _INSPECTOR[regions]


def _load_inspector(path: Path) -> None:
    from conformood.experiments.inspect import Inspector

    Inspector.load(path)


LOADERS = {
    "detector": load_detector,
    "calibrated": ConformalDetector.load,
    "checkpoint": _resume,
    "model": load_trained_model,
    "set": load_conformal_set,
    "inspector": _load_inspector,
    "inspector_regions": _load_inspector,
}
KINDS = list(LOADERS)


def _parts(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(params=KINDS)
def artefact(request, tmp_path):
    path = tmp_path / f"{request.param}.safetensors"
    _make(request.param, path)
    LOADERS[request.param](path)  # the untouched file loads
    return request.param, path


def _refused(kind: str, path: Path, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LOADERS[kind](path)


def test_flipped_tensor_byte_is_refused(artefact):
    kind, path = artefact
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # the last tensor's data
    path.write_bytes(bytes(data))
    _refused(kind, path, "integrity check")


def test_truncated_file_is_refused(artefact):
    kind, path = artefact
    data = path.read_bytes()
    for size in (len(data) - 7, 20, 0):
        path.write_bytes(data[:size])
        _refused(kind, path, "not a readable safetensors file")


def test_swapped_parts_are_refused(artefact, tmp_path):
    """The metadata of one file over the tensors of another of the same kind (e.g. another detector's state
    inside a calibrated detector) fails the digest."""
    kind, path = artefact
    other = tmp_path / "other.safetensors"
    _make(kind, other)
    meta, _ = _parts(path)
    _, tensors = _parts(other)
    tensors = {k: (v + 1 if v.is_floating_point() else v) for k, v in tensors.items()}
    save_file(tensors, str(path), metadata=meta)
    _refused(kind, path, "integrity check")


def test_edited_metadata_without_a_new_digest_is_refused(artefact):
    kind, path = artefact
    meta, tensors = _parts(path)
    meta["config"] = meta["config"].replace("1", "2", 1)
    save_file(tensors, str(path), metadata=meta)
    _refused(kind, path, "integrity check")


def _rewrite(path: Path, edit) -> None:
    """Rewrite with a *valid* digest, as an adversary who knows the format would: only validation stops it."""
    meta, tensors = _parts(path)
    config = json.loads(meta["config"])
    tensors = edit(config, tensors) or tensors
    save_state(path, tensors, config, kind=meta["kind"])


HOSTILE = {
    "detector": [
        (lambda c, t: c["learned"].update(score_samples=0), "no learned attribute 'score_samples'"),
        (lambda c, t: c["learned"].update(n_features_in_="x"), "n_features_in_ must be int"),
        (lambda c, t: c["params"].update(ridge=-1), "ridge"),
        (lambda c, t: c["params"].update(solver=["pinv"]), "solver"),
        (lambda c, t: c["params"].update(__class__="x"), "no parameter '__class__'"),
        (lambda c, t: {**t, "precision_": torch.zeros(5, 5, dtype=torch.float64)}, "inconsistent"),
        (lambda c, t: {**t, "means_": torch.full_like(t["means_"], float("nan"))}, "non-finite"),
    ],
    "calibrated": [
        (lambda c, t: c.update(detector_file="../x"), "two-file layout"),
        (lambda c, t: c.update(detector_file="/etc/passwd"), "two-file layout"),
        (lambda c, t: c.update(mondrian="yes"), "mondrian"),
        (lambda c, t: c.update(min_calibration=-1), "min_calibration"),
        (lambda c, t: c.update(min_calibration=10**9), "at least"),
        (lambda c, t: {**t, "calibration.-1": t["calibration.-1"].flip(0)}, "sorted"),
        (lambda c, t: {k: v for k, v in t.items() if not k.startswith("detector.")}, "lacks|inconsistent|bank_"),
        (lambda c, t: c["detector"].update(kind="MahalanobisDetector"), "no learned attribute|lacks|no parameter"),
        (lambda c, t: c["detector"]["config"]["params"].update(n_neighbors=10**6), "n_neighbors"),
    ],
    "checkpoint": [
        (lambda c, t: c.update(epoch=-5), "epoch must be an integer"),
        (lambda c, t: c.update(epoch=10**30), "epoch must be an integer"),
        (lambda c, t: c["optimizers"][0][0].update(lr="x"), "field 'lr'"),
        (lambda c, t: c["history"].update(loss=["x"]), "history"),
        (lambda c, t: {**t, "model.encoder.net.0.weight": torch.zeros(100, 1, 3, 3)}, "shape|unexpected|lacks"),
    ],
    "model": [
        (lambda c, t: c.update(widths=[100_000, 100_000, 100_000]), "shape"),
        (lambda c, t: c.update(widths="x"), "widths"),
        (lambda c, t: c.update(projection_dim=-3), "projection_dim"),
        (lambda c, t: c.update(encoder="../../evil"), "encoder|unknown"),
    ],
    "set": [
        (lambda c, t: c["init"].update(dim=10**9), "shape"),
        (lambda c, t: c["init"].update(dim="x"), "dim"),
        (lambda c, t: c.update(threshold=float("inf")), "finite"),
        (lambda c, t: c.update(kind="os.system"), "unknown conformal set family"),
        (lambda c, t: c["init"].update(path="/tmp/x"), "no argument 'path'"),
    ],
    "inspector": [
        (lambda c, t: c.update(format=99), "format"),
        (lambda c, t: c.update(evil="x"), "unknown field"),
        (lambda c, t: c["settings"].update(alpha=2.0), "alpha"),
        (lambda c, t: c["settings"].update(backbone="../../evil"), "unknown backbone"),
        (lambda c, t: c["settings"].update(resize="crop"), "resize"),
        (lambda c, t: c["settings"].update(pooled=False), "feature records|pooled"),
        (lambda c, t: c["settings"].update(patch_stages=[14, 7]), "patch_stages|feature"),
        (lambda c, t: c["settings"].pop("seed"), "settings"),
        (lambda c, t: c.update(sources={}), "feature records"),
        (lambda c, t: c["record"].update(map_scale=-1.0), "fitting record"),
        (lambda c, t: {**t, "calibration": t["calibration"].flip(0)}, "calibration statistics"),
        (lambda c, t: {**t, "calibration": torch.full_like(t["calibration"], float("nan"))}, "calibration"),
        (lambda c, t: {k: v for k, v in t.items() if k != "reference.0"}, "reference"),
        (lambda c, t: {**t, "extra.tensor": torch.zeros(2)}, "unexpected tensor"),
        (lambda c, t: {k: v for k, v in t.items() if not k.startswith("patchcore.")}, "lacks|memory_bank"),
        (lambda c, t: c["patchcore"]["params"].update(coreset_fraction=7), "coreset_fraction"),
    ],
    "inspector_regions": [
        (lambda c, t: c["regions"]["settings"].update(method="best"), "region method"),
        (lambda c, t: c["regions"]["settings"].update(pixel_alpha=2.0), "pixel_alpha"),
        (lambda c, t: c["regions"]["settings"].update(method="crc"), "predictor stored with crc"),
        (lambda c, t: c["regions"]["settings"].update(evil="x"), "not those of regions"),
        (lambda c, t: c["regions"]["settings"].update(predictor="../evil"), "predictor"),
        (lambda c, t: c["regions"].update(threshold="x"), "threshold is damaged"),
        (lambda c, t: c["regions"].update(threshold=True), "threshold is damaged"),
        (lambda c, t: c["regions"].update(scale=123.0), "another map scale"),
        (lambda c, t: c["regions"].pop("record") and None, "stored regions are damaged"),
        (lambda c, t: c["regions"]["record"].update(n_calibration="x"), "region record"),
        (lambda c, t: c.pop("regions") and None, "unexpected tensor"),
        (lambda c, t: {k: v for k, v in t.items() if k != "regions.predictor.head.2.bias"}, "predictor's tensors"),
        (lambda c, t: {**t, "regions.predictor.head.2.bias": torch.full_like(t["regions.predictor.head.2.bias"],
                                                                             float("nan"))}, "damaged"),
        (lambda c, t: {**t, "regions.predictor.head.2.bias": torch.zeros(3)}, "damaged"),
        (lambda c, t: {**t, "regions.predictor.evil": torch.zeros(3)}, "predictor's tensors"),
    ],
}


@pytest.mark.parametrize("kind,case", [(k, i) for k in KINDS for i in range(len(HOSTILE[k]))])
def test_hostile_metadata_is_refused(kind, case, tmp_path):
    path = tmp_path / f"{kind}.safetensors"
    _make(kind, path)
    edit, match = HOSTILE[kind][case]
    _rewrite(path, edit)
    _refused(kind, path, match)


def test_a_renamed_pickle_never_runs(tmp_path):
    marker = tmp_path / "pickle-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    blobs = {"pickle": pickle.dumps(Payload()), "torch": None}
    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pt")
    blobs["torch"] = (tmp_path / "plain.pt").read_bytes()
    pickle.loads(blobs["pickle"])  # the payload works when unpickled ...
    assert marker.exists()
    marker.unlink()
    for kind, loader in LOADERS.items():
        for name, blob in blobs.items():
            path = tmp_path / f"{kind}-{name}.safetensors"
            path.write_bytes(blob)
            with pytest.raises(ValueError, match="not a readable safetensors file"):
                loader(path)
    assert not marker.exists()  # ... and no loader unpickled it


def test_directory_and_missing_file(tmp_path):
    for kind, loader in LOADERS.items():
        with pytest.raises(ValueError, match="is a directory"):
            loader(tmp_path)
        if kind != "checkpoint":  # resume starts afresh when there is no checkpoint yet
            with pytest.raises(FileNotFoundError, match="no file at"):
                loader(tmp_path / "missing.safetensors")


def test_files_of_the_unverified_format_are_refused(tmp_path):
    path = tmp_path / "old.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={"conformood_format": "1", "kind": "x", "config": "{}"})
    with pytest.raises(ValueError, match="no integrity digest"):
        load_state(path)
