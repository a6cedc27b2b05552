"""msd.passes sits below msd.compiler: no module under passes/ imports it (nor torch), and none
imports inside a function (the way an import cycle hides)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PASSES = Path(__file__).resolve().parents[2] / "passes"
MODULES = sorted(PASSES.rglob("*.py"))


def _package(path: Path) -> list[str]:
    """The package of a module under passes/, as msd imports it: ``["msd", "passes", ...]``."""
    return ["msd", "passes", *path.relative_to(PASSES).parent.parts]


def imported(path: Path) -> list[tuple[str, bool]]:
    """(absolute module name, at module level) for every import in ``path``; ``from . import x``
    names ``package.x``."""
    tree = ast.parse(path.read_text(), str(path))
    in_function = set()
    for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        in_function |= {id(n) for n in ast.walk(fn)} - {id(fn)}
    found = []
    for node in ast.walk(tree):
        top = id(node) not in in_function
        if isinstance(node, ast.Import):
            found += [(alias.name, top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _package(path)[: len(_package(path)) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found += [(module if node.module else f"{module}.{alias.name}", top) for alias in node.names]
    return found


def test_the_walk_finds_the_passes() -> None:
    names = {p.relative_to(PASSES).as_posix() for p in MODULES}
    assert {"__init__.py", "decompose_activations/plan.py", "analysis/dequant.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PASSES).as_posix())
def test_passes_never_import_the_compiler(path: Path) -> None:
    for name, _ in imported(path):
        assert not name.startswith(("msd.compiler", "compiler")), f"{path.name} imports {name}"
        assert name.split(".")[0] != "torch", f"{path.name} imports {name} (the compile worker has no torch)"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PASSES).as_posix())
def test_no_function_local_imports(path: Path) -> None:
    local = [name for name, top in imported(path) if not top]
    assert not local, f"{path.name} imports {local} inside a function"


def test_relative_imports_resolve() -> None:
    """The resolution above is right (else the checks would pass vacuously)."""
    names = [n for n, _ in imported(PASSES / "decompose_activations" / "plan.py")]
    assert "msd.passes.analysis.dequant" in names and "msd.passes.decompose_activations.options" in names
    assert "msd.passes._ir" in names  # `from .. import _ir`
