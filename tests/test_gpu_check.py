"""benchmarks/gpu_check.py, the script a lent GPU machine runs, kept working without one: its prepare
and run paths on small llvm-cpu artifacts (``run(driver="local-task")``: torch on the CPU, no CUPTI)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_gpu_check_prepares_runs_and_checks_every_artifact(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_check as g

    import msd.compiler.tools.ptx as ptx

    monkeypatch.setattr(g, "K", 256)
    monkeypatch.setattr(g, "N", 256)
    monkeypatch.setattr(g, "MS", (1, 17))
    monkeypatch.setattr(g, "SWEEP_MS", (17,))
    monkeypatch.setattr(g, "SWEEP_SHAPES", ("8x4x4", "4x2x4"))
    monkeypatch.setattr(g, "TARGET", "llvm-cpu")
    monkeypatch.setattr(ptx, "kernels_in", lambda vmfb: {"(a CPU artifact)": ""})  # no PTX on llvm-cpu
    g.prepare(tmp_path, sweep=True)
    g.run(tmp_path, tmp_path / "table.md", reps=2, rounds=1, driver="local-task")
    text = (tmp_path / "table.md").read_text()
    assert "error" not in text and "wrong" not in text, text
    rows = [line for line in text.splitlines() if re.match(r"\| int(8|4-g128) \| \d+ \|", line)]
    assert len(rows) == 2 * 2 + 2, text  # each format at each M, then the sweep's M
    for row in rows[:4]:  # p=2 within 1e-4 of float64 (its measured error is ~3e-5)
        err = float(re.findall(r"\(([0-9.e+-]+)\)", row)[1])
        assert err < 1e-4, row
    sys.modules.pop("gpu_check", None)
