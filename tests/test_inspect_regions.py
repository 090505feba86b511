"""Defect regions of an inspector (experiments/inspect_regions.py): calibrated on defective parts with masks at
their own sizes, saved and loaded with the inspector, applied by ``inspect run`` (mask PNGs at the image's size,
overlays and report stating the guarantee); every bad input one line, exit code 2, nothing written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conformood.cli import main as _main
from conformood.data.image_files import ImageFiles
from conformood.experiments.inspect import InspectConfig, Inspector
from conformood.experiments.inspect_regions import RegionConfig, Regions, read_defects
from conformood.experiments.inspect_run import load_inspector

SMALL = InspectConfig(backbone="mobilenet_v2", weights=None, input_size=64, patch_dim=32, coreset_fraction=0.5,
                      alpha=0.25, calibration_fraction=0.5)


def main(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as stop:
        _main(argv)
    return stop.value.code


def _part(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return np.clip(120 + 25 * np.sin(np.arange(w)[None, :] / 2.5) + rng.normal(0, 4, (h, w)), 0, 255)


def _defective(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    x = _part(rng, h, w)
    mask = np.zeros((h, w), bool)
    dh, dw = int(rng.integers(2, h // 3)), int(rng.integers(2, w // 3))  # from a few pixels to a ninth of the part
    y0, x0 = int(rng.integers(0, h - dh)), int(rng.integers(0, w - dw))
    x[y0:y0 + dh, x0:x0 + dw] = 250
    mask[y0:y0 + dh, x0:x0 + dw] = True
    return x, mask


def _sizes(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(56, 90)), int(rng.integers(56, 110))


def _good_files(n: int, seed: int) -> ImageFiles:
    rng = np.random.default_rng(seed)
    images = [(_part(rng, *_sizes(rng)) / 255.0).astype(np.float32)[None] for _ in range(n)]
    return ImageFiles(images, [f"g{i:03d}.png" for i in range(n)], [x.shape[1:] for x in images])


def _defect_files(n: int, seed: int) -> tuple[ImageFiles, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    pairs = [_defective(rng, *_sizes(rng)) for _ in range(n)]
    images = [(x / 255.0).astype(np.float32)[None] for x, _ in pairs]
    return ImageFiles(images, [f"d{i:03d}.png" for i in range(n)], [x.shape[1:] for x in images]), [m for _, m in pairs]


@pytest.fixture(scope="module")
def inspector():
    return Inspector.fit(_good_files(24, 0), SMALL)


@pytest.mark.parametrize("method", ["crc", "coat"])
def test_regions_survive_save_and_load_and_have_each_image_size(inspector, method, tmp_path):
    defects, masks = _defect_files(24, 1)
    cfg = RegionConfig(method=method, pixel_alpha=0.2, epochs=2)
    inspector.regions = Regions.fit(inspector, defects, masks, cfg)
    try:
        inspector.save(tmp_path / "i.safetensors")
        back = Inspector.load(tmp_path / "i.safetensors")
        new, new_masks = _defect_files(6, 2)
        a, b = inspector.inspect(new), back.inspect(new)
        assert [r.shape for r in a.regions] == [tuple(s) for s in new.sizes]
        assert all(np.array_equal(x, y) for x, y in zip(a.regions, b.regions))
        assert back.regions.threshold == inspector.regions.threshold
        assert "0.2" in back.regions.guarantee()
        rec = inspector.regions.record
        assert rec["n_calibration"] == (24 if method == "crc" else 12)
        if method == "coat":  # the predictor trains on half, the other half calibrates: no image in both
            assert not set(rec["train"]) & set(rec["calibration"])
    finally:
        inspector.regions = None


def test_crc_region_miss_rate_holds_over_random_splits(inspector):
    """The regions' guarantee on real maps: over 200 random calibration/test splits of 60 defective parts the mean
    test miss rate is ≤ α + 2 SE."""
    from conformood.conformal.risk.anomaly_maps import defect_values, region_crc_threshold

    defects, masks = _defect_files(60, 3)
    found = inspector.inspect(defects)
    probe = Regions(RegionConfig(), inspector.record["map_scale"], 0.0)
    values = defect_values(probe.unit_on_images(found.maps, found.sizes, inspector.config), masks)
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(200):
        perm = rng.permutation(60)
        t = region_crc_threshold([values[i] for i in perm[:30]], 0.2)
        rates.append(np.mean([(values[i] < t).mean() for i in perm[30:]]))
    rates = np.array(rates)
    assert rates.mean() <= 0.2 + 2 * rates.std(ddof=1) / np.sqrt(rates.size)


def _write_folder(folder: Path, files: ImageFiles, masks: list[np.ndarray] | None = None,
                  mask_folder: Path | None = None, suffix: str = "_mask") -> None:
    for name, x in zip(files.names, files.images):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((x[0] * 255).astype(np.uint8)).save(folder / name)
    for name, m in zip(files.names, masks or []):
        target = mask_folder / f"{name.rsplit('.', 1)[0]}{suffix}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((m * 255).astype(np.uint8)).save(target)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("regions")
    _write_folder(root / "good", _good_files(24, 0))
    defects, masks = _defect_files(20, 1)
    _write_folder(root / "defects", defects, masks, root / "masks")
    new, _ = _defect_files(4, 5)
    _write_folder(root / "new", new)
    _write_folder(root / "new", ImageFiles(_good_files(3, 6).images, ["ok/a.png", "ok/b.png", "ok/c.png"],
                                           _good_files(3, 6).sizes))
    return root


FIT = ["--weights", "none", "--input-size", "64", "--alpha", "0.25", "--calibration-fraction",
       "0.5", "--backbone", "mobilenet_v2", "--no-progress"]


def test_cli_fits_regions_and_run_writes_masks_overlays_and_report(folders):
    root = folders
    model = root / "inspector.safetensors"
    assert main(["inspect", "fit", "--normal", str(root / "good"), "--out", str(model), "--defects",
                 str(root / "defects"), "--masks", str(root / "masks"), "--pixel-alpha", "0.2", *FIT]) == 0
    insp = load_inspector(model)
    assert insp.regions.config.method == "crc" and insp.regions.record["n_calibration"] == 20
    out = root / "out"
    assert main(["inspect", "run", "--model", str(model), "--images", str(root / "new"), "--out", str(out),
                 "--no-progress"]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {"region_area", "region"} <= set(rows[0])
    for r in rows:
        png = out / r["region"]
        with Image.open(png) as m, Image.open(root / "new" / r["image"]) as x:
            assert m.size == x.size and m.mode == "L"
            assert abs(np.asarray(m).mean() / 255 - float(r["region_area"])) < 1e-6
        assert png.name == f"{Path(r['image']).stem}_region.png"
    result = json.loads((out / "results.json").read_text())
    assert "0.2" in result["regions"]["guarantee"]
    page = (out / "report.html").read_text()
    assert "Defect regions" in page and "pixels outside its region is ≤ 0.2" in page
    with Image.open(out / "overlays" / f"{rows[0]['image']}.png") as o, Image.open(root / "new" / rows[0]["image"]) \
            as x:
        assert o.size[0] == x.size[0] and o.size[1] > x.size[1]  # the guarantee's strip below the part


def test_read_defects_matches_masks_by_name(folders, tmp_path):
    files, masks = read_defects(folders / "defects", folders / "masks")
    assert len(files) == len(masks) == 20
    assert all(m.shape == tuple(s) and m.dtype == bool and m.any() for m, s in zip(masks, files.sizes))
    # the same masks as label images (defect = 1), in a sub-folder layout without the _mask suffix
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "sub").mkdir(parents=True)
    for name, m in zip(files.names[:3], masks[:3]):
        Image.open(folders / "defects" / name).save(tmp_path / "d" / "sub" / name)
        Image.fromarray(m.astype(np.uint8)).save(tmp_path / "m" / "sub" / name.replace(".png", ".bmp"))
    again, label_masks = read_defects(tmp_path / "d", tmp_path / "m")
    assert again.names == [f"sub/{n}" for n in files.names[:3]]
    assert all(np.array_equal(a, b) for a, b in zip(label_masks, masks[:3]))


@pytest.fixture
def bad_masks(folders, tmp_path):
    """A copy of the defects and masks to break one way."""
    import shutil

    shutil.copytree(folders / "defects", tmp_path / "defects")
    shutil.copytree(folders / "masks", tmp_path / "masks")
    return tmp_path


def _break(kind: str, t: Path) -> None:
    masks = sorted((t / "masks").glob("*.png"))
    if kind == "missing":
        masks[0].unlink()
    elif kind == "size":
        Image.fromarray(np.full((5, 7), 255, np.uint8)).save(masks[0])
    elif kind == "empty":
        Image.fromarray(np.zeros(Image.open(masks[0]).size[::-1], np.uint8)).save(masks[0])
    elif kind == "orphan":
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(t / "masks" / "zzz_mask.png")
    elif kind == "twice":
        Image.open(masks[0]).save(t / "masks" / masks[0].name.replace("_mask", ""))
    elif kind == "corrupt":
        masks[0].write_bytes(b"\x89PNG broken")


@pytest.mark.parametrize("kind, match", [
    ("missing", "no mask for"), ("size", "is 5x7"), ("empty", "is empty"), ("orphan", "has no image"),
    ("twice", "masks of one image"), ("corrupt", "not a readable image")])
def test_bad_masks_are_one_line_and_nothing_is_written(bad_masks, folders, kind, match, capsys):
    _break(kind, bad_masks)
    model = bad_masks / "m.safetensors"
    code = main(["inspect", "fit", "--normal", str(folders / "good"), "--out", str(model), "--defects",
                 str(bad_masks / "defects"), "--masks", str(bad_masks / "masks"), *FIT])
    err = capsys.readouterr().err.strip()
    assert code == 2 and match in err and len(err.splitlines()) == 1 and not model.exists()


@pytest.mark.parametrize("extra, match", [
    (["--defects", "D"], "go together"),
    (["--masks", "M"], "go together"),
    (["--pixel-alpha", "0.1"], "needs --defects"),
    (["--method", "coat"], "needs --defects"),
    (["--defects", "D", "--masks", "M", "--pixel-alpha", "1.5"], "pixel_alpha"),
    (["--defects", "D", "--masks", "M", "--pixel-alpha", "nan"], "pixel_alpha"),
    (["--defects", "D", "--masks", "M", "--method", "best"], "region method"),
    (["--defects", "D", "--masks", "M", "--method", "ltt"], "area_alpha"),
    (["--defects", "D", "--masks", "M", "--area-alpha", "0.1", "--region-delta", "0.1"], "belong to ltt"),
    (["--defects", "D", "--masks", "M", "--region-epochs", "0"], "epochs"),
    (["--defects", "nowhere", "--masks", "M"], "does not exist"),
    (["--image-score", "mean"], "image_score"),
    (["--map-sigma", "0"], "map_sigma"),
    (["--map-sigma", "inf"], "map_sigma"),
])
def test_bad_region_options_are_one_line(folders, extra, match, capsys):
    model = folders / "never.safetensors"
    swap = {"D": str(folders / "defects"), "M": str(folders / "masks")}
    code = main(["inspect", "fit", "--normal", str(folders / "good"), "--out", str(model),
                 *[swap.get(a, a) for a in extra], *FIT])
    err = capsys.readouterr().err.strip()
    assert code == 2 and match in err and len(err.splitlines()) == 1 and not model.exists()


@pytest.mark.parametrize("method, n, match", [("crc", 7, "7 defective calibration image"),
                                              ("coat", 16, "after 8 train")])
def test_too_few_defective_images_are_refused(inspector, method, n, match):
    defects, masks = _defect_files(n, 1)
    with pytest.raises(ValueError, match=match):
        Regions.fit(inspector, defects, masks, RegionConfig(method=method, pixel_alpha=0.1))


def test_cli_ltt_regions_use_the_good_calibration_parts(folders, monkeypatch):
    import conformood.experiments.inspect as inspect_module
    import conformood.experiments.inspect_run as inspect_run

    reads = []
    real = inspect_run.read_image_files
    for module in (inspect_module, inspect_run):
        monkeypatch.setattr(module, "read_image_files", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    root = folders
    model = root / "ltt.safetensors"
    assert main(["inspect", "fit", "--normal", str(root / "good"), "--out", str(model), "--defects",
                 str(root / "defects"), "--masks", str(root / "masks"), "--method", "ltt", "--pixel-alpha", "0.5",
                 "--area-alpha", "0.9", "--region-delta", "0.5", *FIT]) == 0
    insp = load_inspector(model)
    rec = insp.regions.record
    assert rec["n_good"] == len(insp.record["split"]["calibration"]) == 12
    low, high = rec["certified"]
    assert low <= insp.regions.threshold <= high
    assert "probability ≥ 0.5" in insp.regions.guarantee()
    assert [Path(r) for r in reads] == [root / "good"]  # the good folder is read once (it was read twice)
    assert insp.record["provenance"]["inputs"]["normal"]["path"] == str(root / "good")
