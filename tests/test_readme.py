"""The README's deployment snippets run as written (in a temporary folder)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_blocks(heading: str) -> list[str]:
    text = README.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def test_the_deployment_snippets_run(tmp_path, monkeypatch, capsys):
    blocks = _section_blocks("## After deployment")
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the snippets must not trigger a warning (e.g. too few calibration scores)
        for block in blocks:
            exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert namespace["state"].alarm and namespace["state"].alarm_time >= 0
    from conformood.conformal import ConformalDetector

    marginal = ConformalDetector(namespace["cd"].detector).calibrate(namespace["cal"]).predict(namespace["test"], 0.1)
    assert 0 < namespace["flags"].sum() < marginal.sum()  # the PAC rule flags, and fewer than the marginal one
    assert namespace["flag"].shape == (1000,) and (tmp_path / "scorer.pt2").is_file()
