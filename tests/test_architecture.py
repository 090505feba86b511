"""The house rules of docs/architecture.md that import-linter does not check: no private name or private module
of one layer imported by another, no source file over 400 lines, and one training loop (one file that calls
``.backward(``)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "conformood"
SHARED = {"_validation", "_version", "_digest"}  # top-level helpers every layer may use
FOUNDATION = {"_validation", "_version", "_digest", "io", "registry", "distributed", "results"}  # one layer


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        yield path, parts


def _layer(parts: tuple[str, ...]) -> str:
    return "foundation" if parts[0] in FOUNDATION else parts[0]


def _resolve(parts: tuple[str, ...], node: ast.ImportFrom) -> tuple[str, ...]:
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    if node.level:
        base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
    else:
        absolute = (node.module or "").split(".")
        return tuple(absolute[1:]) if absolute[0] == "conformood" else ()
    return base + tuple((node.module or "").split(".")) if node.module else base


def private_cross_layer_imports(path: Path, parts: tuple[str, ...]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        target = _resolve(parts, node)
        if not target or _layer(target) == _layer(parts) or target[0] in SHARED:
            continue
        private_modules = [p for p in target if p.startswith("_") and p != "__init__"]
        private_names = [a.name for a in node.names if a.name.startswith("_") and not a.name.endswith("__")]
        if private_modules or private_names:
            found.append(f"{'/'.join(parts)}.py:{node.lineno} imports {'.'.join(target)}: "
                         f"{private_modules + private_names}")
    return found


def test_the_checker_sees_a_private_cross_layer_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from ..metrics.ood import _roc\nfrom ..augment._rng import seeded\nfrom .._validation import a\n"
                   "from .base import _private\n")
    found = private_cross_layer_imports(bad, ("scores", "x"))
    assert len(found) == 2 and "_roc" in found[0] and "_rng" in found[1]


def test_no_private_cross_layer_imports():
    found = [f for path, parts in _modules() for f in private_cross_layer_imports(path, parts)]
    assert found == []


@pytest.mark.parametrize("limit", [400])
def test_no_source_file_over_400_lines(limit):
    long = {"/".join(parts): n for path, parts in _modules() if (n := len(path.read_text().splitlines())) > limit}
    assert long == {}


def test_one_training_loop():
    callers = sorted("/".join(parts) for path, parts in _modules() if ".backward(" in path.read_text())
    assert callers == ["train/trainer"]


def missing_type_hints(path: Path, parts: tuple[str, ...]) -> list[str]:
    """Public functions and methods (of public modules and classes) without a hint on every parameter and on the
    return value (``__init__`` needs none for its return)."""
    found = []

    def visit(body, owner=""):
        for node in body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                visit(node.body, node.name + ".")
            elif isinstance(node, ast.FunctionDef) and (not node.name.startswith("_") or node.name == "__init__"):
                a = node.args
                args = [x for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                args += [x for x in (a.vararg, a.kwarg) if x is not None]
                missing = [x.arg for x in args if x.annotation is None]
                if node.returns is None and node.name != "__init__":
                    missing.append("return")
                if missing:
                    found.append(f"{'/'.join(parts)}.py:{node.lineno} {owner}{node.name}: {missing}")

    if not any(p.startswith("_") and p not in ("__init__", "__main__") for p in parts):
        visit(ast.parse(path.read_text()).body)
    return found


def test_the_hint_checker_sees_a_missing_hint(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f(x: int, y) -> int: ...\nclass A:\n    def g(self, z: int): ...\ndef _h(q): ...\n")
    assert [s.split(" ", 1)[1] for s in missing_type_hints(f, ("m",))] == ["f: ['y']", "A.g: ['return']"]


def test_public_functions_have_type_hints():
    assert [m for path, parts in _modules() for m in missing_type_hints(path, parts)] == []
