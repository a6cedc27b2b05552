"""Runs the lit + FileCheck tests under tests/lit once, and reports each file as a pytest test."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

LIT_DIR = Path(__file__).parent / "lit"
LIT_TESTS = sorted(p.relative_to(LIT_DIR).as_posix() for p in LIT_DIR.rglob("*.mlir") if "Output" not in p.parts)


@pytest.fixture(scope="session")
def lit_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bool, str]]:
    xml = tmp_path_factory.mktemp("lit") / "results.xml"
    proc = subprocess.run(
        [sys.executable, "-c", "import lit.main; lit.main.main()", "-q", "-j", "2",
         f"--xunit-xml-output={xml}", str(LIT_DIR)],
        capture_output=True, text=True,
    )
    if not xml.exists():
        pytest.fail(f"lit did not run:\n{proc.stdout}\n{proc.stderr}")
    results = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = case.get("name")
        failure = case.find("failure")
        results[name] = (failure is None and case.find("skipped") is None,
                         failure.text if failure is not None else "")
    return results


@pytest.mark.parametrize("test", LIT_TESTS)
def test_lit(test: str, lit_results: dict[str, tuple[bool, str]]) -> None:
    assert test in lit_results, f"lit did not report {test} (ran: {sorted(lit_results)})"
    ok, output = lit_results[test]
    assert ok, f"lit test {test} failed:\n{output}"


def test_lit_found_tests() -> None:
    assert len(LIT_TESTS) >= 10, "the lit suite has gone missing"
