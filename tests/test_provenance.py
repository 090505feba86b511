"""Every JSON result the command writes carries the provenance block: version, git commit (in a checkout),
command line, full config, seed, the digests of the input files, python / torch / numpy versions."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from conformood import __version__
from conformood.cli import app
from conformood.io import file_digest

runner = CliRunner()


def _check(path: Path, inputs: tuple[str, ...] = ()) -> dict:
    block = json.loads(path.read_text())["provenance"]
    assert block["conformood_version"] == __version__
    assert {"git", "command", "config", "seed", "inputs", "python", "torch", "numpy", "created_utc"} <= set(block)
    assert block["config"] and block["python"] and block["numpy"]
    for name in inputs:
        record = block["inputs"][name]
        assert record["sha256"] == file_digest(record["path"]), name
    return block


def test_train_evaluate_and_score_results_record_their_provenance(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--out", str(run), "--epochs", "1", "--normal-class", "2", "--image-size",
                                 "8", "--no-progress", "--device", "cpu", "--seed", "7"])
    assert result.exit_code == 0, result.output
    block = _check(run / "train.json")
    assert block["seed"] == 7 and block["config"]["normal_class"] == "2"
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():
        assert len(block["git"]["commit"]) == 40
    ev = tmp_path / "ev"
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(run / "model.safetensors"), "--out", str(ev)])
    assert result.exit_code == 0, result.output
    block = _check(ev / "evaluation.json", ("checkpoint",))  # the encoded feature files are outputs here
    assert json.loads((ev / "evaluation.json").read_text())["feature_source"]["protocol"] == "one-vs-rest:2"
    out = tmp_path / "s.json"
    result = runner.invoke(app, ["score", "--detector-file", str(ev / "detector.safetensors"), "--inputs",
                                 str(ev / "features_test.npz"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    _check(out, ("detector_file", "inputs"))
    # the reports show it
    for page in (ev / "evaluation.md", ev / "report.html"):
        text = page.read_text()
        assert __version__ in text and "sha256:" in text and "Provenance" in text
