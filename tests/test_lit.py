"""Runs the lit + FileCheck tests under tests/lit once, and reports each file as a pytest test.

The tests mirror the code: ``tests/lit/decompose_activations/`` for ``--msd-decompose-activations``
(its fixtures beside them), ``tests/lit/msd_opt/`` for the driver's command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

LIT_DIR = Path(__file__).parent / "lit"
LIT_TESTS = sorted(p.relative_to(LIT_DIR).as_posix() for p in LIT_DIR.rglob("*.mlir") if "Output" not in p.parts)


@pytest.fixture(scope="session")
def lit_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bool, str]]:
    out = tmp_path_factory.mktemp("lit") / "results.json"
    proc = subprocess.run(
        [sys.executable, "-c", "import lit.main; lit.main.main()", "-q", "-j", "2", f"--output={out}", str(LIT_DIR)],
        capture_output=True, text=True,
    )
    if not out.exists():
        pytest.fail(f"lit did not run:\n{proc.stdout}\n{proc.stderr}")
    results = {}
    for test in json.loads(out.read_text())["tests"]:
        name = test["name"].split(" :: ", 1)[1]  # "msd :: decompose_activations/slices.mlir"
        results[name] = (test["code"] in ("PASS", "XFAIL"), test["output"])
    return results


@pytest.mark.parametrize("test", LIT_TESTS)
def test_lit(test: str, lit_results: dict[str, tuple[bool, str]]) -> None:
    assert test in lit_results, f"lit did not report {test} (ran: {sorted(lit_results)})"
    ok, output = lit_results[test]
    assert ok, f"lit test {test} failed:\n{output}"


def test_lit_found_tests() -> None:
    assert len(LIT_TESTS) >= 10, "the lit suite has gone missing"
    assert any(t.startswith("decompose_activations/") for t in LIT_TESTS)
