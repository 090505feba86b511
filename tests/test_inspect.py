"""``conformood inspect``: plain folders of part images (any format, size, sub-folder) to a fitted inspector and
to decisions, maps, overlays and a report; the split never calibrates on fitted images; a rebuilt backbone of
other weights is refused; the false-alarm rate holds over re-splits; every bad input is one line, exit code 2,
nothing written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conformood.cli import main as _main
from conformood.data.image_files import read_image_files
from conformood.experiments.inspect import InspectConfig, Inspector, fit_input
from conformood.experiments.inspect_run import load_inspector


def main(argv: list[str]) -> int:
    """The command's exit code (the entry point ends by sys.exit)."""
    with pytest.raises(SystemExit) as stop:
        _main(argv)
    return stop.value.code


SMALL = {"weights": None, "input_size": 64, "border": 1, "patch_dim": 32, "coreset_fraction": 0.5}


def _part(rng: np.random.Generator, h: int, w: int, defect: bool) -> np.ndarray:
    x = 120 + 25 * np.sin(np.arange(w)[None, :] / 2.5) + rng.normal(0, 4, (h, w))
    if defect:
        y0, x0 = int(rng.integers(h // 4, h // 2)), int(rng.integers(w // 4, w // 2))
        x[y0:y0 + h // 6, x0:x0 + w // 6] = 250
    return np.clip(x, 0, 255).astype(np.uint8)


def _write(folder: Path, n: int, seed: int, defect: bool = False) -> None:
    """Parts in sub-folders, in PNG, JPEG, BMP and TIFF, gray and colour, 16-bit among them, of varying sizes."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = int(rng.integers(56, 90)), int(rng.integers(56, 110))
        x = _part(rng, h, w, defect)
        sub = folder / ("line_a" if i % 2 else "line_b") / ("deep" if i % 5 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        kind = i % 5
        if kind == 0:
            Image.fromarray(x).save(sub / f"p{i:03d}.png")
        elif kind == 1:
            Image.fromarray(x).save(sub / f"p{i:03d}.jpg", quality=95)
        elif kind == 2:
            Image.fromarray(np.stack([x] * 3, axis=-1)).save(sub / f"p{i:03d}.bmp")  # colour
        elif kind == 3:
            Image.fromarray(x).save(sub / f"p{i:03d}.tiff")
        else:
            Image.fromarray(x.astype(np.uint16) * 257).save(sub / f"p{i:03d}.png")  # 16-bit


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    _write(root / "good", 40, 0)
    _write(root / "new" / "ok", 8, 1)
    _write(root / "new" / "bad", 8, 2, defect=True)
    model = root / "inspector.safetensors"
    assert main(["inspect", "fit", "--normal", str(root / "good"), "--out", str(model), "--weights", "none",
                 "--input-size", "64", "--border", "1", "--alpha", "0.25", "--pooled", "--calibration-fraction", "0.5",
                 "--backbone", "mobilenet_v2", "--no-progress"]) == 0
    return root, model


def test_fit_splits_without_overlap_and_records_how_features_were_made(parts):
    root, model = parts
    insp = load_inspector(model)
    split = insp.record["split"]
    fit, ref, cal = set(split["fit"]), set(split["reference"]), set(split["calibration"])
    assert not (fit & ref) and not (fit & cal) and not (ref & cal)
    assert len(fit | ref | cal) == 40 == insp.record["n_good"]
    assert any(n.startswith("line_a/deep/") for n in fit | ref | cal)  # sub-folders read
    src = insp.sources["patches"]
    assert src["backbone"] == "mobilenet_v2" and src["input_size"] == [64, 64] and "pad" in src["resize"]
    assert insp.conformal.calibration_[-1].size == len(cal)


def test_run_writes_rows_maps_overlays_and_report(parts, tmp_path):
    root, model = parts
    out = tmp_path / "results"
    assert main(["inspect", "run", "--model", str(model), "--images", str(root / "new"), "--out", str(out),
                 "--no-progress"]) == 0
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["image", "score", "p_value", "flag"] and len(rows) == 16
    names = {r["image"] for r in rows}
    assert names == {n for n in read_image_files(root / "new").names}
    result = json.loads((out / "results.json").read_text())
    assert result["provenance"]["conformood_version"] and result["model"]["sha256"].startswith("sha256:")
    assert result["images_digest"].startswith("sha256:") and result["counts"]["images"] == 16
    for name in names:
        assert (out / "maps" / f"{name}.png").is_file() and (out / "overlays" / f"{name}.png").is_file()
        with Image.open(out / "overlays" / f"{name}.png") as im:  # at the image's own size
            own = Image.open(root / "new" / name).size
            assert im.size == own
    page = (out / "report.html").read_text()
    assert "data:image/jpeg;base64," in page and "Inspection results" in page and "http" not in page
    flags = {r["image"]: r["flag"] == "1" for r in rows}
    bad = [flags[n] for n in names if n.startswith("bad/")]
    assert np.mean(bad) >= 0.75  # the bright defects are found even by random features


def test_scores_decide_alike_from_the_library_and_the_saved_file(parts):
    root, model = parts
    insp = load_inspector(model)
    files = read_image_files(root / "new")
    a = insp.inspect(files)
    b = Inspector.load(model).inspect(files)
    assert np.allclose(a.scores, b.scores) and np.array_equal(a.flags, b.flags)
    assert np.all((a.p_values > 0) & (a.p_values <= 1)) and np.array_equal(a.flags, a.p_values <= 0.25)


def test_pad_keeps_the_aspect_ratio():
    x = np.zeros((1, 20, 40), np.float32)
    x[:, :, :20] = 1.0
    out = fit_input([x], 32, "pad")
    assert out.shape == (1, 1, 32, 32)
    assert np.allclose(out[0, 0, :8], out[0, 0, 8])  # top padding repeats the first row
    assert out[0, 0, 16, 2] > 0.9 and out[0, 0, 16, 29] < 0.1  # left half bright, right half dark, not stretched


def test_realised_false_alarm_rate_over_resplits():
    """The guarantee as it is stated: over random splits of good parts into fitting, calibration and test, the
    mean rate of flagging a good test part is ≤ α (within 2 standard errors of the mean)."""
    rng = np.random.default_rng(0)
    from conformood.data.image_files import ImageFiles

    alpha, rates = 0.2, []
    images = [(_part(rng, 40, 40, False)[None] / 255.0).astype(np.float32) for _ in range(80)]
    files = ImageFiles(images, [f"{i}.png" for i in range(80)], [(40, 40)] * 80)
    cfg = InspectConfig(**{**SMALL, "alpha": alpha, "pooled": False, "calibration_fraction": 0.3})
    insp = Inspector.fit(ImageFiles(images[:40], files.names[:40], files.sizes[:40]), cfg)
    held = insp.inspect(ImageFiles(images[40:], files.names[40:], files.sizes[40:]))
    stat = -held.scores  # the calibrated statistic of 40 good parts not fitted
    for seed in range(300):  # re-split the held-out good parts into calibration and test parts
        order = np.random.default_rng(seed).permutation(40)
        cal, test = np.sort(stat[order[:20]]), stat[order[20:]]
        p = (1 + (cal[None, :] <= test[:, None]).sum(1)) / (cal.size + 1)
        rates.append(float((p <= alpha).mean()))
    se = np.std(rates) / np.sqrt(len(rates))
    assert np.mean(rates) <= alpha + 2 * se


def test_other_weights_at_run_are_refused(parts, tmp_path):
    """A rebuilt backbone whose weights differ from those the inspector was fitted with is refused by name."""
    root, model = parts
    insp = load_inspector(model)
    insp.sources["patches"] = {**insp.sources["patches"], "weights_digest": "sha256:" + "0" * 64}
    insp._encoders = {}
    with pytest.raises(ValueError, match="weights_digest"):
        insp.inspect(read_image_files(root / "new"))


def _fit(t, normal):
    return ["inspect", "fit", "--normal", str(normal), "--out", str(t / "m.safetensors"), "--weights", "none",
            "--input-size", "64", "--border", "1", "--backbone", "mobilenet_v2", "--no-progress"]


def _run(t, model, images):
    return ["inspect", "run", "--model", str(model), "--images", str(images), "--out", str(t / "res"),
            "--no-progress"]


@pytest.fixture
def bad(tmp_path, parts):
    root, model = parts
    for name, content in {"zero": b"", "text": b"this is not an image", "truncated": None}.items():
        folder = tmp_path / name
        _write(folder, 30, 3)
        if content is None:
            data = (folder / "line_b" / "deep" / "p000.png").read_bytes()
            (folder / "line_a" / "x.png").write_bytes(data[: len(data) // 3])
        else:
            (folder / "line_a" / f"{name}.png").write_bytes(content)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    _write(tmp_path / "few", 3, 4)
    from conformood.conformal import ConformalDetector
    from conformood.scores import get_detector

    rng = np.random.default_rng(0)
    ConformalDetector(get_detector("knn_cosine").fit(rng.normal(size=(30, 4)))).calibrate(
        rng.normal(size=(20, 4))).save(tmp_path / "detector.safetensors")
    (tmp_path / "flipped.safetensors").write_bytes(bytes(b ^ 0x01 if i == 200 else b for i, b in
                                                         enumerate(model.read_bytes())))
    (tmp_path / "zero.safetensors").write_bytes(b"")
    return tmp_path, root, model


CASES = {
    "fit: zero-byte image": (lambda t, r, m: _fit(t, t / "zero"), "zero.png"),
    "fit: text file named .png": (lambda t, r, m: _fit(t, t / "text"), "text.png"),
    "fit: truncated image": (lambda t, r, m: _fit(t, t / "truncated"), "x.png"),
    "fit: empty folder": (lambda t, r, m: _fit(t, t / "empty"), "no images"),
    "fit: a folder of non-image files": (lambda t, r, m: _fit(t, t / "notes"), "no images"),
    "fit: missing folder": (lambda t, r, m: _fit(t, t / "nowhere"), "nowhere"),
    "fit: too few good images": (lambda t, r, m: _fit(t, t / "few"), "too few"),
    "fit: alpha outside (0, 1)": (lambda t, r, m: _fit(t, r / "good") + ["--alpha", "1.5"], "alpha"),
    "fit: unknown backbone": (lambda t, r, m: _fit(t, r / "good") + ["--backbone", "resnet9000"], "resnet9000"),
    "fit: unknown resize": (lambda t, r, m: _fit(t, r / "good") + ["--resize", "crop"], "resize"),
    "fit: unknown local detector": (lambda t, r, m: _fit(t, r / "good") + ["--local", "knn"], "local"),
    "fit: two stages for the gaussian": (lambda t, r, m: _fit(t, r / "good") + ["--local", "gaussian",
                                         "--patch-stages", "3", "--patch-stages", "5"], "patch_stages"),
    "fit: unknown augmentation": (lambda t, r, m: _fit(t, r / "good") + ["--augment", "rotate"], "augment"),
    "fit: unknown rule": (lambda t, r, m: _fit(t, r / "good") + ["--pooled", "--rule", "max"], "rule"),
    "run: zero-byte image": (lambda t, r, m: _run(t, m, t / "zero"), "zero.png"),
    "run: empty folder": (lambda t, r, m: _run(t, m, t / "empty"), "no images"),
    "run: a detector file as the model": (lambda t, r, m: _run(t, t / "detector.safetensors", r / "new"),
                                          "not an inspector"),
    "run: flipped byte in the model": (lambda t, r, m: _run(t, t / "flipped.safetensors", r / "new"),
                                       "flipped.safetensors"),
    "run: zero-byte model": (lambda t, r, m: _run(t, t / "zero.safetensors", r / "new"), "zero.safetensors"),
    "run: missing model": (lambda t, r, m: _run(t, t / "missing.safetensors", r / "new"), "missing.safetensors"),
    "run: alpha outside (0, 1)": (lambda t, r, m: _run(t, m, r / "new") + ["--alpha", "0"], "alpha"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, bad, capsys):
    t, root, model = bad
    before = {p for p in t.rglob("*")}
    args, expected = CASES[case]
    assert main(args(t, root, model)) == 2
    captured = capsys.readouterr()
    lines = [ln for ln in (captured.out + captured.err).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], lines
    assert {p for p in t.rglob("*")} == before  # no model file, no results folder, no staging left behind


def test_skip_bad_lists_the_unreadable_files(bad, capsys):
    t, root, model = bad
    assert main(_run(t, model, t / "zero") + ["--skip-bad"]) == 0
    result = json.loads((t / "res" / "results.json").read_text())
    assert result["counts"] == {"images": 30, "flagged": result["counts"]["flagged"], "skipped": 1}
    assert result["skipped"][0].startswith("line_a/zero.png: an empty file")


def test_a_finished_run_survives_a_failed_one(bad):
    t, root, model = bad
    assert main(_run(t, model, root / "new")) == 0
    before = (t / "res" / "results.csv").read_bytes()
    assert main(_run(t, model, t / "zero") + ["--overwrite"]) == 2
    assert (t / "res" / "results.csv").read_bytes() == before


def test_stretch_and_pac_through_fit_and_run(parts, tmp_path):
    """--resize stretch (pad is the default): overlays at each image's own size; --delta: the PAC rule flags no
    more than p ≤ α."""
    root, _ = parts
    model = tmp_path / "pad.safetensors"
    assert main(["inspect", "fit", "--normal", str(root / "good"), "--out", str(model), "--weights", "none",
                 "--input-size", "64", "--backbone", "mobilenet_v2", "--resize", "stretch", "--alpha", "0.25",
                 "--delta", "0.2", "--calibration-fraction", "0.5", "--no-progress"]) == 0
    insp = load_inspector(model)
    assert insp.config.resize == "stretch" and "stretch" in insp.sources["patches"]["resize"]
    found = insp.inspect(read_image_files(root / "new"))
    assert np.all(found.flags <= (found.p_values <= 0.25))  # calibration-conditional: never more flags
    assert insp.describe()["decision"]  # the rank table of the PAC rule is recorded
    out = tmp_path / "res"
    assert main(["inspect", "run", "--model", str(model), "--images", str(root / "new"), "--out", str(out),
                 "--no-progress"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert "PAC" in result["guarantee"]
    name = result["images"][0]["image"]
    with Image.open(out / "overlays" / f"{name}.png") as im, Image.open(root / "new" / name) as src:
        assert im.size == src.size


def test_flips_join_the_memory_bank_and_never_the_calibration(parts):
    """``augment``: the patches of the flipped fitting images join the bank (a mirrored fitted part is then as close
    to the bank as the part itself), the calibration part is untouched; a bad name is refused."""
    root, _ = parts
    files = read_image_files(root / "good")
    settings = {**SMALL, "backbone": "mobilenet_v2", "coreset_fraction": 1.0, "calibration_fraction": 0.5,
                "alpha": 0.25}
    plain = Inspector.fit(files, InspectConfig(**settings))
    flipped = Inspector.fit(files, InspectConfig(**settings, augment=("hflip",)))
    assert flipped.patchcore.memory_bank_.shape[0] == 2 * plain.patchcore.memory_bank_.shape[0]
    assert flipped.record["split"] == plain.record["split"]
    name = plain.record["split"]["fit"][0]
    i = files.names.index(name)
    from conformood.data.image_files import ImageFiles

    mirrored = ImageFiles([np.ascontiguousarray(files.images[i][:, :, ::-1])], ["m.png"], [files.sizes[i]])
    near, far = flipped.inspect(mirrored).scores[0], plain.inspect(mirrored).scores[0]  # the worst patch distance
    assert near < far / 100 and np.isclose(near, 0.0, atol=1e-6)
    for bad in (("rotate",), "hflip", ("hflip", "hflip")):
        with pytest.raises(ValueError, match="augment"):
            InspectConfig(**settings, augment=bad)


def test_an_inspector_of_format_1_is_read_and_scores_as_it_was_calibrated(parts, tmp_path):
    """Format 2 joins the two scores with a continuous tail below the references; a format-1 file (the floor)
    still loads, scores with the floor, and is saved again as format 1, never silently converted."""
    import json

    from safetensors import safe_open

    from conformood.experiments.inspect import Inspector
    from conformood.io import load_state, save_state

    root, model = parts
    tensors, config = load_state(model, kind="Inspector")
    assert config["format"] == 2
    config["format"] = 1
    old = tmp_path / "old.safetensors"
    save_state(old, {k: v.numpy() for k, v in tensors.items()}, config, kind="Inspector")
    insp, new = Inspector.load(old), Inspector.load(model)
    assert insp.format == 1 and new.format == 2
    files = read_image_files(root / "new")
    bad = [i for i, n in enumerate(files.names) if n.startswith("bad/")]
    a, b = insp.inspect(files), new.inspect(files)
    assert not np.allclose(a.scores[bad], b.scores[bad])  # the defects lie beyond the references: the tail counts
    insp.save(tmp_path / "again.safetensors")
    with safe_open(str(tmp_path / "again.safetensors"), "np") as fh:
        assert json.loads(fh.metadata()["config"])["format"] == 1


@pytest.mark.parametrize("local", ["patchcore", "gaussian"])
def test_map_peak_image_score_is_calibrated_on_what_it_scores(local):
    """With ``image_score="map_peak"`` the calibration statistics are the peaks of the calibration parts' maps, as
    ``inspect`` computes them (the worst patch would be another statistic, and the false-alarm rate would not hold)."""
    from conformood.data.image_files import ImageFiles

    rng = np.random.default_rng(0)
    images = [(_part(rng, 60, 70, False) / 255.0).astype(np.float32)[None] for _ in range(20)]
    files = ImageFiles(images, [f"g{i}.png" for i in range(20)], [(60, 70)] * 20)
    cfg = InspectConfig(backbone="mobilenet_v2", weights=None, input_size=64, alpha=0.25, calibration_fraction=0.5,
                        local=local, image_score="map_peak", map_sigma=3.0,
                        **({"patch_stages": (3,)} if local == "gaussian" else {"coreset_fraction": 0.5}))
    insp = Inspector.fit(files, cfg)
    cal = [files.names.index(n) for n in insp.record["split"]["calibration"]]
    found = insp.inspect(ImageFiles([images[i] for i in cal], [files.names[i] for i in cal], [(60, 70)] * len(cal)))
    assert np.allclose(np.sort(-found.scores), insp.conformal.calibration_[-1], rtol=1e-5, atol=1e-7)
    assert np.allclose(found.scores, found.maps.reshape(len(cal), -1).max(axis=1), rtol=1e-6)
