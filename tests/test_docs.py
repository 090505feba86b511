"""The architecture and equations pages are true: every module is on the package map, every name the equations
page gives exists, every test it points to is there, and no docstring cites an equation without its paper."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "conformood"
PAPERS = r"(FIRM|OECL|CLP|CCS|COAT|PatchCore|et al\.|\.md``?|\b20\d\d\b|Gibbs|Algorithmic)"


def _package_map() -> dict[str, set[str]]:
    """The package map of docs/architecture.md: folder (relative to src/conformood, '' for the top) -> names."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("## Package map", 1)[1].split("```", 2)[1]
    listed: dict[str, set[str]] = {"": set()}
    current = None
    for line in block.splitlines()[2:]:
        if not line.startswith("  "):
            break
        words = re.findall(r"[\w.]+/?", re.sub(r"\([^)]*\)", "", line))  # notes in parentheses are not names
        if line.startswith("  ") and not line.startswith("   ") and words and words[0].endswith("/"):
            current = words[0].rstrip("/")
            listed.setdefault(current, set()).update(w.rstrip("/") for w in words[1:])
        elif line.startswith("  ") and not line.startswith("   "):
            current = ""
            listed[""].update(w[:-3] for w in words if w.endswith(".py"))
        elif current is not None:
            listed[current].update(w.rstrip("/") for w in words)
    return listed


def test_every_module_is_on_the_package_map():
    listed = _package_map()
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if path.name == "__init__.py" and len(rel.parts) > 1:
            continue
        top = rel.parts[0] if len(rel.parts) > 1 else ""
        name = path.stem if len(rel.parts) <= 2 else rel.parts[1]
        if name.startswith("__") and top:
            continue
        if name not in listed.get(top, set()):
            missing.append(str(rel))
    assert not missing, f"modules missing from the package map of docs/architecture.md: {missing}"


def test_the_package_map_names_no_module_that_is_gone():
    gone = [f"{top}/{name}" for top, names in _package_map().items() if top for name in names
            if not (SRC / top / f"{name}.py").exists() and not (SRC / top / name).is_dir()]
    assert not gone, gone


def _resolve(dotted: str) -> object:
    module, attrs = dotted, []
    while True:
        try:
            obj = importlib.import_module(module)
            break
        except ImportError:
            module, _, last = module.rpartition(".")
            attrs.insert(0, last)
            if not module:
                raise
    for attr in attrs:
        obj = getattr(obj, attr)
    return obj


EQUATIONS = (ROOT / "docs" / "equations.md").read_text()


@pytest.mark.parametrize("dotted", sorted(set(re.findall(r"`(conformood(?:\.\w+)+)`", EQUATIONS))))
def test_every_name_on_the_equations_page_exists(dotted):
    _resolve(dotted)


def test_every_test_on_the_equations_page_exists_and_every_paper_has_a_section():
    tests = set(re.findall(r"`(tests/[\w/]+\.py)`", EQUATIONS))
    assert tests and all((ROOT / t).is_file() for t in tests), [t for t in tests if not (ROOT / t).is_file()]
    for paper in ("FIRM", "OECL", "CLP", "CCS", "COAT"):
        assert f"## {paper}\n" in EQUATIONS


def test_no_docstring_cites_a_bare_equation_number():
    bare = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"\b[Ee]q\.|\bAlgorithm \d", text):
            before = text[max(0, m.start() - 70):m.start()].replace("\n", " ").split(".  ")[-1]
            if not re.search(PAPERS, before):
                bare.append(f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}")
    assert not bare, f"equations cited without their paper (write 'FIRM eq. 2'): {bare}"
