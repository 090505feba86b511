"""Every bad input of the hardening issue, through the installed entry point's code path (``conformood.cli.main``):
exit code 2, one line naming the file or option, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conformood.cli import main


@pytest.fixture
def files(tmp_path):
    good = tmp_path / "good.npz"
    rng = np.random.default_rng(0)
    np.savez(good, features=rng.normal(size=(30, 4)), is_inlier=np.arange(30) < 20)
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04" + bytes(rng.integers(0, 256, 200, dtype=np.uint8)))
    (tmp_path / "text.safetensors").write_text("this is not a model\n" * 20)
    (tmp_path / "bad.yaml").write_text("objective: firm\nepochs: [1, 2\n")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "folder").mkdir()
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "pickled.npz").write_bytes((tmp_path / "pickled.npy").read_bytes())
    (tmp_path / "zero.pth").write_bytes(b"")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1" + bytes(rng.integers(0, 256, 100, dtype=np.uint8)) + b"PAR1")
    images = tmp_path / "images" / "parts"
    images.mkdir(parents=True)
    (images / "text.png").write_text("not a png")
    nan = rng.normal(size=(30, 4))
    nan[2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", features=nan)
    np.savez(tmp_path / "no_rows.npz", features=np.zeros((0, 4)))
    np.savez(tmp_path / "wide.npz", features=rng.normal(size=(30, 5)))
    np.savez(tmp_path / "garbage_source.npz", features=rng.normal(size=(30, 4)), feature_source=np.array("x"))
    from conformood.conformal import ConformalDetector
    from conformood.scores import get_detector

    ConformalDetector(get_detector("knn_cosine").fit(rng.normal(size=(50, 4)))).calibrate(
        rng.normal(size=(30, 4))).save(tmp_path / "d.safetensors")
    return tmp_path


def _evaluate(t, train="good.npz", out="ev"):
    return ["evaluate", "--train", str(t / train), "--calibration", str(t / "good.npz"), "--test",
            str(t / "good.npz"), "--out", str(t / out)]


CASES = {
    "missing file": (lambda t: _evaluate(t, "missing.npz"), "missing.npz"),
    "directory": (lambda t: _evaluate(t, "folder"), "folder"),
    "zero-byte npz": (lambda t: _evaluate(t, "empty.npz"), "empty.npz"),
    "corrupt npz": (lambda t: _evaluate(t, "corrupt.npz"), "corrupt.npz"),
    "pickled npy as npz": (lambda t: _evaluate(t, "pickled.npz"), "pickled.npz"),
    "text file as detector": (lambda t: ["score", "--detector-file", str(t / "text.safetensors"), "--inputs",
                                         str(t / "good.npz"), "--out", str(t / "s.json")], "text.safetensors"),
    "text file as model": (lambda t: ["evaluate", "--checkpoint", str(t / "text.safetensors"), "--out",
                                      str(t / "ev")], "text.safetensors"),
    "zero-byte detector": (lambda t: ["score", "--detector-file", str(t / "empty.npz"), "--inputs",
                                      str(t / "good.npz"), "--out", str(t / "s.json")], "empty.npz"),
    "unknown device": (lambda t: ["train", "--device", "tpu", "--out", str(t / "run")], "--device"),
    "malformed YAML": (lambda t: ["train", "--config", str(t / "bad.yaml"), "--out", str(t / "run")], "bad.yaml"),
    "unknown recipe": (lambda t: ["train", "--config", "no_such_recipe", "--out", str(t / "run")], "no_such_recipe"),
    "unknown --data": (lambda t: ["train", "--data", "no-such-data", "--out", str(t / "run"), "--device", "cpu",
                                  "--no-progress"], "no-such-data"),
    "--out is a file (train)": (lambda t: ["train", "--out", str(t / "a_file"), "--device", "cpu"], "--out"),
    "--out is a file (evaluate)": (lambda t: _evaluate(t, out="a_file"), "--out"),
    "--out is a file (demo)": (lambda t: ["demo", "--out", str(t / "a_file"), "--device", "cpu"], "--out"),
    "score --out names a CSV": (lambda t: ["score", "--detector-file", str(t / "x"), "--inputs", str(t / "x"),
                                           "--out", str(t / "s.csv")], "--csv"),
    "monitor: missing batch": (lambda t: ["monitor", "--detector-file", str(t / "text.safetensors"), "--inputs",
                                          str(t / "missing.npz"), "--out", str(t / "m")], "text.safetensors"),
    "monitor: delta outside (0, 1)": (lambda t: ["monitor", "--detector-file", str(t / "x"), "--inputs",
                                                 str(t / "good.npz"), "--delta", "1.5"], "--delta"),
    "monitor: unknown martingale": (lambda t: ["monitor", "--detector-file", str(t / "x"), "--inputs",
                                               str(t / "good.npz"), "--martingale", "jumper"], "--martingale"),
    "demo: digits options with textile": (lambda t: ["demo", "--epochs", "3", "--out", str(t / "d")], "--epochs"),
    "inspect fit: a text file named .png": (lambda t: ["inspect", "fit", "--normal", str(t / "images"), "--out",
                                                       str(t / "i.safetensors"), "--no-progress"], "text.png"),
    "inspect fit: empty folder": (lambda t: ["inspect", "fit", "--normal", str(t / "folder"), "--out",
                                             str(t / "i.safetensors"), "--no-progress"], "no images"),
    "inspect fit: --out exists": (lambda t: ["inspect", "fit", "--normal", str(t / "folder"), "--out",
                                             str(t / "a_file")], "--overwrite"),
    "inspect run: a detector as the model": (lambda t: ["inspect", "run", "--model", str(t / "d.safetensors"),
                                                        "--images", str(t / "images"), "--out", str(t / "r"),
                                                        "--no-progress"], "not an inspector"),
    "inspect run: a text file as the model": (lambda t: ["inspect", "run", "--model", str(t / "text.safetensors"),
                                                         "--images", str(t / "images"), "--out", str(t / "r"),
                                                         "--no-progress"], "text.safetensors"),
    "demo: unknown --data": (lambda t: ["demo", "--data", "mnist", "--out", str(t / "d")], "--data"),
    "a value of the wrong type": (lambda t: ["train", "--epochs", "abc"], "--epochs"),
    "an unknown option": (lambda t: ["train", "--epoch", "3"], "--epoch"),
    "alpha outside (0, 1)": (lambda t: _evaluate(t) + ["--alpha", "1.5"], "alpha"),
    "--data-root not a folder": (lambda t: ["train", "--data-root", str(t / "a_file")], "--data-root"),
    "zero-byte weights": (lambda t: ["extract", "--data", "digits", "--weights", str(t / "zero.pth"), "--out",
                                     str(t / "f.npz")], "zero.pth"),
    "text file as an image": (lambda t: ["score", "--detector-file", str(t / "d.safetensors"), "--images",
                                         str(t / "images"), "--backbone", "mobilenet_v2", "--weights", "none",
                                         "--out", str(t / "s.json")], "parts/text.png"),
    "monitor: NaN batch": (lambda t: ["monitor", "--detector-file", str(t / "d.safetensors"), "--inputs",
                                      str(t / "good.npz"), str(t / "nan.npz"), "--out", str(t / "m")], "nan.npz"),
    "monitor: batch without rows": (lambda t: ["monitor", "--detector-file", str(t / "d.safetensors"), "--inputs",
                                               str(t / "no_rows.npz"), "--out", str(t / "m")], "no_rows.npz"),
    "monitor: wrong width": (lambda t: ["monitor", "--detector-file", str(t / "d.safetensors"), "--inputs",
                                        str(t / "wide.npz"), "--out", str(t / "m")], "wide.npz"),
    "score: a tampered feature-source record": (lambda t: ["score", "--detector-file", str(t / "d.safetensors"),
                                                           "--inputs", str(t / "garbage_source.npz"), "--out",
                                                           str(t / "s.json")], "garbage_source.npz"),
    "export: a detector file that is not one": (lambda t: ["export", "--detector-file", str(t / "empty.npz"),
                                                           "--out", str(t / "s.pt2")], "empty.npz"),
    "former and new spelling disagree": (lambda t: ["extract", "--data", "digits", "--normal-class", "1",
                                                    "--inlier-class", "2", "--out", str(t / "f.npz")],
                                         "--normal-class"),
}


def _ray_score(t, *extra, detector="d.safetensors", inputs=("--inputs", "good.npz"), out="r"):
    return ["score", "--detector-file", str(t / detector), inputs[0], str(t / inputs[1]), "--out", str(t / out),
            "--engine", "ray", *extra]


CASES.update({  # the Ray engine: every one refused before a worker (or Ray itself) starts
    "score: an unknown engine": (lambda t: _ray_score(t)[:-1] + ["spark"], "--engine"),
    "score: --workers without the Ray engine": (lambda t: _ray_score(t)[:-2] + ["--workers", "3"], "--engine ray"),
    "score --engine ray: --csv": (lambda t: _ray_score(t, "--csv", str(t / "x.csv")), "--csv"),
    "score --engine ray: --out a file name": (lambda t: _ray_score(t, out="r.json"), "r.json"),
    "score --engine ray: no workers": (lambda t: _ray_score(t, "--workers", "0"), "workers"),
    "score --engine ray: monitor δ outside (0, 1)": (lambda t: _ray_score(t, "--monitor-delta", "1.5"), "delta"),
    "score --engine ray: text file as detector": (lambda t: _ray_score(t, detector="text.safetensors"),
                                                  "text.safetensors"),
    "score --engine ray: a tampered feature-source record": (
        lambda t: _ray_score(t, inputs=("--inputs", "garbage_source.npz")), "garbage_source.npz"),
    "score --engine ray: an image archive": (lambda t: _ray_score(t, inputs=("--images", "good.npz")), "folder"),
    "score --engine ray: a missing image folder": (lambda t: _ray_score(t, inputs=("--images", "nowhere")),
                                                   "nowhere"),
    "score --engine ray: NaN features": (lambda t: _ray_score(t, inputs=("--inputs", "nan.npz")), "nan.npz"),
    "score --engine ray: no rows": (lambda t: _ray_score(t, inputs=("--inputs", "no_rows.npz")), "no_rows.npz"),
    "score --engine ray: wrong width": (lambda t: _ray_score(t, inputs=("--inputs", "wide.npz")), "wide.npz"),
    "score --engine ray: a corrupt parquet file": (lambda t: _ray_score(t, inputs=("--inputs", "corrupt.parquet")),
                                                   "corrupt.parquet"),
})
if not torch.cuda.is_available():
    CASES["--device cuda without CUDA"] = (lambda t: ["demo", "--device", "cuda", "--out", str(t / "d")], "CUDA")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_code_2(case, files, capsys):
    args, expected = CASES[case]
    if "--engine ray" in case:
        pytest.importorskip("ray", reason="the Ray engine's checks run where ray is installed")
    with pytest.raises(SystemExit) as stop:
        main(args(files))
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert stop.value.code == 2, text
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("Warning: ")]
    assert len(lines) == 1, text
    assert lines[0].startswith("Error: ") and expected in lines[0], text


def test_the_ray_engine_without_ray_is_one_line(files, capsys, monkeypatch):
    from conformood.experiments import scale

    monkeypatch.setattr(scale, "ray_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        main(_ray_score(files))
    text = capsys.readouterr().err
    assert stop.value.code == 2 and text.strip() == f"Error: {scale.RAY_HINT}" and not (files / "r").exists()


def test_version_and_the_entry_point_in_a_real_process(files):
    from conformood import __version__

    proc = subprocess.run([sys.executable, "-m", "conformood", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"conformood {__version__}"
    proc = subprocess.run([sys.executable, "-m", "conformood", *_evaluate(files, "empty.npz")], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "empty.npz" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""


def test_help_into_a_closed_pipe_is_no_traceback():
    # `conformood ... --help | head -1`: the reader closes its end before the help is written
    proc = subprocess.Popen([sys.executable, "-m", "conformood", "reproduce", "coat", "--help"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) in (0, 1) and "Traceback" not in err, err


def test_every_option_has_help():
    from typer.main import get_command

    from conformood.cli import app

    def walk(command, path):
        subs = getattr(command, "commands", None)
        if subs:
            for name, sub in subs.items():
                yield from walk(sub, f"{path} {name}")
        else:
            for param in command.params:
                if getattr(param, "param_type_name", "") == "option":
                    yield f"{path} {param.opts[0]}", getattr(param, "help", None)

    options = list(walk(get_command(app), "conformood"))
    assert len(options) > 50  # every command's options were walked
    missing = [name for name, text in options if not text]
    assert not missing, missing


def test_ctrl_c_during_training_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import conformood.experiments.train as train_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "run_training", interrupted)
    with pytest.raises(SystemExit) as stop:
        main(["train", "--out", str(tmp_path / "run"), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert stop.value.code == 130 and "--resume" in err and "checkpoint.safetensors" in err


def test_the_demo_summary_fits_80_columns(monkeypatch, capsys, tmp_path):
    from conformood.report.summary import DEMO_COLUMNS, print_demo_summary

    monkeypatch.setenv("COLUMNS", "80")
    values = dict.fromkeys(DEMO_COLUMNS, 0.987654)
    result = {"per_class": {str(c): {} for c in range(10)}, "config": {"alpha": 0.1}, "wall_time_s": 1.0,
              "mean": {"firm": values, "raw_pixels": values}}
    print_demo_summary(result, tmp_path)
    out = capsys.readouterr().out
    assert "…" not in out and all(header in out for header in DEMO_COLUMNS.values())
    assert max(len(line) for line in out.splitlines()) <= 80
