"""The public surface: a fast top-level import, exports that resolve, and the README's imports."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import conformood

LAYERS = ["data", "augment", "models", "losses", "train", "scores", "conformal", "metrics", "report", "experiments"]
README = Path(__file__).resolve().parents[1] / "README.md"


def test_import_conformood_loads_no_heavy_dependency():
    code = ("import sys, conformood; heavy = [m for m in ('torch', 'faiss', 'matplotlib', 'sklearn') "
            "if m in sys.modules]; print(conformood.__version__); assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == conformood.__version__ != ""


def test_top_level_exports_resolve():
    for name in conformood.__all__:
        assert getattr(conformood, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute"):
        conformood.not_a_name  # noqa: B018


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_exports_what_it_lists(layer):
    module = importlib.import_module(f"conformood.{layer}")
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert module.__all__ and missing == []


def test_the_imports_the_readme_documents_exist():
    text = README.read_text()
    found = re.findall(r"^from (conformood[\w.]*) import ([\w, ]+)$", text, flags=re.M)
    assert len(found) >= 5
    for module_name, names in found:
        module = importlib.import_module(module_name)
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(module, name), f"{module_name}.{name}"


def test_the_command_starts_without_torch_and_its_help_lists_the_registries():
    proc = subprocess.run([sys.executable, "-c", "import sys, conformood.cli; assert 'torch' not in sys.modules"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from typer.testing import CliRunner

    from conformood.cli import app
    from conformood.data import PROTOCOLS
    from conformood.train.objective_registry import OBJECTIVES

    text = " ".join(CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output.split())
    assert all(name in text for name in OBJECTIVES.names()) and "{objectives}" not in text
    text = " ".join(CliRunner().invoke(app, ["evaluate", "--help"], terminal_width=200).output.split())
    assert all(f"{name}:" in text for name in PROTOCOLS.names())


def test_conventions_that_differ_from_the_authors_code_are_documented():
    """Issue 15 item 10: each departure from a reference implementation is written in the docstring."""
    from conformood.conformal.sets.base import conformal_quantile
    from conformood.losses import CIDERLoss, SupConLoss
    from conformood.scores import KNNSunDetector, MahalanobisDetector, SMuDetector

    expected = {
        CIDERLoss: ["0.07", "CompLoss", "DisLoss"],
        SMuDetector: ["not its square", "un-augmented view"],
        SupConLoss: ["T / base_T"],
        KNNSunDetector: ["squared"],
        MahalanobisDetector: ["½"],
        conformal_quantile: ["⌈(1 − α) n⌉ + 1", "capped at n"],
    }
    for obj, phrases in expected.items():
        doc = " ".join((obj.__doc__ or "").split())
        for phrase in phrases:
            assert phrase in doc, (obj.__name__, phrase)
