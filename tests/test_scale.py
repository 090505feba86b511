"""The Ray engine (``conformood score --engine ray``): the same scores, p-values, flags and BH selection as the
single process, row for row and bit for bit; every row exactly once when a worker is killed mid-job; bad inputs
refused before any worker starts, or named in one line."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the Ray engine's tests need ray: pip install 'conformood[ray]'")
pq = pytest.importorskip("pyarrow.parquet")

from conformood.conformal import ConformalDetector  # noqa: E402
from conformood.experiments import scale  # noqa: E402
from conformood.experiments.deploy import SCORE_BLOCK, score_file  # noqa: E402
from conformood.scores import get_detector  # noqa: E402

RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance with two CPUs for the module (start-up is seconds; each job reuses it)."""
    started = not ray.is_initialized()
    if started:
        try:  # a machine that cannot run Ray at all (no shared memory, no sockets) is not a failure of this code
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                     object_store_memory=300 * 1024**2)
        except Exception as exc:  # noqa: BLE001 - Ray raises several kinds when it cannot start
            pytest.skip(f"a local Ray instance cannot start here: {type(exc).__name__}: {exc}")
    yield ray
    if started:
        ray.shutdown()


def _detector(path: Path, name: str, d: int = 8, mondrian: bool = False, delta: float | None = None) -> Path:
    train, cal = RNG.normal(size=(1500, d)), RNG.normal(size=(400, d))
    labels = RNG.integers(0, 3, 400) if mondrian else None
    cd = ConformalDetector(get_detector(name).fit(train), mondrian=mondrian, alpha=0.1)
    cd.calibrate(cal, labels, delta=delta) if delta is not None else cd.calibrate(cal, labels)
    cd.save(path)
    return path


def _table(out: Path) -> dict:
    parts = sorted(out.glob("part-*.parquet"))
    tables = [pq.read_table(p).to_pydict() for p in parts]
    return {k: sum((t[k] for t in tables), []) for k in tables[0]}


def _assert_equal(table: dict, ref: dict) -> None:
    assert table["row"] == list(range(ref["n"]))
    assert table["name"] == ref["input"]
    np.testing.assert_array_equal(table["score"], ref["score"])  # bit for bit, not close
    np.testing.assert_array_equal(table["p_value"], ref["p_value"])
    assert table["flag"] == ref["flagged"]
    assert table["bh_selected"] == ref["bh_selected"]


@pytest.mark.parametrize("name, mondrian, delta", [("knn_cosine", False, None), ("center", True, 0.1)])
def test_feature_rows_equal_the_single_process(local_ray, tmp_path, name, mondrian, delta):
    """20,000 rows, several blocks; ``center`` sums a matrix product, whose bits depend on the rows beside each
    row: equal only because both engines score the same blocks. Mondrian and PAC decisions included."""
    det = _detector(tmp_path / "d.safetensors", name, mondrian=mondrian, delta=delta)
    x = RNG.normal(size=(20_000, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", features=x, labels=RNG.integers(0, 3, len(x)))
    ref = score_file(det, tmp_path / "x.npz", out=tmp_path / "ref.json")
    monitor = None if mondrian else {"delta": 0.01, "seed": 3}  # a Mondrian detector is not monitored
    summary = scale.score_ray(det, tmp_path / "x.npz", out=tmp_path / "ray", workers=2, monitor=monitor)
    table = _table(tmp_path / "ray")
    _assert_equal(table, ref)
    if monitor is not None:  # the martingale over the rows in file order: the single process's monitor
        from conformood.monitor import ConformalMonitor

        single = ConformalMonitor(ConformalDetector.load(det), **monitor).update(x)
        np.testing.assert_array_equal(table["monitor_p_value"], single.p_values)
        np.testing.assert_array_equal(table["log_martingale"], single.log_martingale)
        assert summary["monitor"]["alarm_row"] == single.alarm_time
    assert (summary["n"], summary["n_flagged"], summary["n_bh_selected"]) == (ref["n"], ref["n_flagged"],
                                                                               ref["n_bh_selected"])
    assert summary["engine"]["block_rows"] == SCORE_BLOCK and summary["rule"] == ref["rule"]
    assert summary["provenance"]["inputs"]["detector_file"]["sha256"] == "sha256:" + summary["engine"][
        "detector_sha256"]


def _proc_pids(marker: bytes) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker in (p / "cmdline").read_bytes():
                    pids.append(int(p.name))
            except OSError:
                continue
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers' processes in /proc")
def test_a_worker_killed_mid_job_loses_and_repeats_no_row(local_ray, tmp_path, monkeypatch):
    """Every worker is killed (SIGKILL) as soon as the first scored block reaches the driver: Ray restarts them
    and scores the remaining blocks again; the output has every row once, with the uninterrupted values."""
    import tqdm.auto

    det = _detector(tmp_path / "d.safetensors", "knn_cosine")
    np.savez(tmp_path / "x.npz", features=RNG.normal(size=(20_000, 8)).astype(np.float32))
    ref = score_file(det, tmp_path / "x.npz", out=tmp_path / "ref.json")
    killed: list[int] = []

    class KillingBar(tqdm.auto.tqdm):
        def update(self, n=1):
            if not killed:
                for pid in _proc_pids(b"MapWorker(MapBatches(BlockScorer))"):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            return super().update(n)

    monkeypatch.setattr(tqdm.auto, "tqdm", KillingBar)
    scale.score_ray(det, tmp_path / "x.npz", out=tmp_path / "ray", workers=2)
    assert killed, "no worker was killed: the test did not test anything"
    _assert_equal(_table(tmp_path / "ray"), ref)


def _image_folder(root: Path, n: int) -> Path:
    from PIL import Image

    for i in range(n):
        cls = root / ("a" if i % 3 else "b")
        cls.mkdir(parents=True, exist_ok=True)
        size = (24, 24) if i % 5 else (40, 30)  # mixed sizes: each resized as the single process does
        arr = RNG.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
        img = Image.fromarray(arr) if i % 7 else Image.fromarray(arr[..., 0])  # some gray
        img.save(cls / f"{i:05d}.png")
    return root


@pytest.fixture(scope="module")
def image_detector(tmp_path_factory):
    from conformood.experiments.sources import get_encoder, image_features
    from conformood.models import weights_installed

    if not weights_installed("mobilenet_v2"):
        pytest.skip("MobileNetV2 weights are not installed (make weights)")
    root = tmp_path_factory.mktemp("images")
    enc = get_encoder(backbone="mobilenet_v2", input_size=32)
    fit = image_features(_image_folder(root / "fit", 300), enc)
    cd = ConformalDetector(get_detector("knn_cosine").fit(fit.features[:200]), alpha=0.1)
    cd.feature_source = fit.source
    cd.calibrate(fit.features[200:])
    cd.save(root / "d.safetensors")
    return root / "d.safetensors", _image_folder(root / "test", SCORE_BLOCK + 100)


def test_images_equal_the_single_process(local_ray, tmp_path, image_detector):
    """Image files read by the workers, in blocks and image batches aligned with the single process's."""
    det, folder = image_detector
    ref = score_file(det, images=folder, out=tmp_path / "ref.json")
    summary = scale.score_ray(det, images=folder, out=tmp_path / "ray", workers=2)
    _assert_equal(_table(tmp_path / "ray"), ref)
    assert summary["feature_source"] == ref["feature_source"]


def test_an_unreadable_image_is_one_line_or_a_counted_row(local_ray, tmp_path, image_detector):
    det, _ = image_detector
    folder = _image_folder(tmp_path / "imgs", 12)
    (folder / "a" / "00004.png").write_bytes(b"")
    (folder / "a" / "00005.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"^a/00004.png is an empty file"):
        scale.score_ray(det, images=folder, out=tmp_path / "ray", workers=1)
    summary = scale.score_ray(det, images=folder, out=tmp_path / "ray2", workers=1, skip_bad=True)
    table = _table(tmp_path / "ray2")
    assert summary["n"] == 12 and summary["n_scored"] == 10 and summary["n_bad"] == 2
    bad = {name: why for name, why in zip(table["name"], table["bad"]) if why}
    assert set(bad) == {"a/00004.png", "a/00005.png"} and bad["a/00004.png"] == "an empty file"
    rows = [i for i, why in enumerate(table["bad"]) if why]
    assert all(np.isnan(table["score"][i]) and not table["flag"][i] and not table["bh_selected"][i] for i in rows)
    ref = score_file(det, images=folder, out=tmp_path / "ref.json", skip_bad=True)
    good = [i for i, why in enumerate(table["bad"]) if not why]
    assert [table["name"][i] for i in good] == ref["input"]
    np.testing.assert_array_equal([table["p_value"][i] for i in good], ref["p_value"])


def test_a_bad_model_is_refused_before_any_worker_starts(tmp_path, monkeypatch):
    def no_workers(*args, **kwargs):
        raise AssertionError("workers were started for a model that should have been refused")

    monkeypatch.setattr(scale, "_connect", no_workers)
    det = _detector(tmp_path / "d.safetensors", "knn_cosine")
    np.savez(tmp_path / "x.npz", features=RNG.normal(size=(50, 8)))
    blob = bytearray(det.read_bytes())
    blob[-20] ^= 0x01
    (tmp_path / "flipped.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="digest|corrupt|changed"):
        scale.score_ray(tmp_path / "flipped.safetensors", tmp_path / "x.npz", out=tmp_path / "o1")
    get_detector("knn_cosine").fit(RNG.normal(size=(30, 8))).save(tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="expected a 'ConformalDetector'"):
        scale.score_ray(tmp_path / "plain.safetensors", tmp_path / "x.npz", out=tmp_path / "o2")
    with pytest.raises(ValueError, match="no 'features'|not a valid|npz"):
        scale.score_ray(det, det, out=tmp_path / "o3")  # a detector given as the inputs
    with pytest.raises(ValueError, match="folder"):
        scale.score_ray(det, images=tmp_path / "x.npz", out=tmp_path / "o4")
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3", "o4"))


def test_score_dataset_scores_any_ray_dataset(local_ray, tmp_path):
    """A Ray Dataset of rows (Ray picks the batches): exact for the kNN detector, global BH from the p-values."""
    det = _detector(tmp_path / "d.safetensors", "knn_cosine")
    x = RNG.normal(size=(3000, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", features=x)
    ref = score_file(det, tmp_path / "x.npz", out=tmp_path / "ref.json")
    ds = local_ray.data.from_items([{"row": i, "features": v} for i, v in enumerate(x)])
    rows = scale.score_dataset(ds, det, workers=2).to_pandas().sort_values("row")
    assert list(rows["row"]) == list(range(3000)) and "features" not in rows
    np.testing.assert_array_equal(rows["score"], ref["score"])
    np.testing.assert_array_equal(rows["p_value"], ref["p_value"])
    assert list(rows["flag"]) == ref["flagged"]
    selected = ConformalDetector.load(det).select_from_scores(rows["score"].to_numpy(), 0.1)
    assert selected.tolist() == ref["bh_selected"]


def test_the_command_writes_parts_and_a_summary_and_a_failed_run_keeps_the_last(local_ray, tmp_path, capsys,
                                                                                image_detector):
    """``conformood score --engine ray`` on a parquet features file; run again over it: refused without
    ``--overwrite``; with it, a run that fails (an unreadable image) leaves the finished results as they were."""
    import json

    import pyarrow as pa

    from conformood.cli import main

    det = _detector(tmp_path / "d.safetensors", "knn_cosine")
    x = RNG.normal(size=(2500, 8)).astype(np.float32)
    names = [f"part-{i}" for i in range(len(x))]
    pq.write_table(pa.table({"features": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 8),
                             "names": names}), tmp_path / "x.parquet")
    np.savez(tmp_path / "x.npz", features=x, names=np.array(names))
    ref = score_file(det, tmp_path / "x.npz", out=tmp_path / "ref.json")
    args = ["score", "--detector-file", str(det), "--inputs", str(tmp_path / "x.parquet"), "--out",
            str(tmp_path / "out"), "--engine", "ray", "--workers", "1"]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code in (0, None), capsys.readouterr()
    assert "2500 inputs on 1 Ray worker(s)" in capsys.readouterr().out
    _assert_equal(_table(tmp_path / "out"), ref)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["kind"] == "score" and summary["engine"]["workers"] == 1 and summary["n"] == 2500
    assert [p["file"] for p in summary["parts"]] == ["part-00000.parquet"]
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2 and "--overwrite" in capsys.readouterr().err
    bad = _image_folder(tmp_path / "imgs", 4)
    (bad / "a" / "00001.png").write_bytes(b"\x89PNG broken")
    image_args = ["score", "--detector-file", str(image_detector[0]), "--images", str(bad), "--out",
                  str(tmp_path / "out"), "--engine", "ray", "--workers", "1", "--overwrite"]
    with pytest.raises(SystemExit) as stop:
        main(image_args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and errors[0].startswith("Error: a/00001.png is not a readable image"), err
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
