"""Which weight formats, from which front ends, msd rewrites — and the error of slices 1/2/3.

    python benchmarks/formats.py            # writes docs/formats.md

Each row is a small real model (two linear layers 256 → 128 → 64, M = 4) quantized by the named
tool, compiled for llvm-cpu with slices 0 (IREE's own lowering) and 1, 2, 3.  "rewritten" counts
the matmuls the pass rewrote, from the compile report.  Errors are max |y − ref| / max |ref| against
a float64 evaluation of the same integer weights (msd.quantize formats) or, for torchao and PT2E
models (whose tensor subclasses / custom ops do not run in float64), against the eager float32
model — there the slices=0 and slices=3 figures are f32 rounding of the eager reference itself.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

import msd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the torchao / PT2E model builders the tests use

from test_frontends import _torchao_model, pt2e_mlp  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from _report import write_block  # noqa: E402

OUTPUT = REPO / "docs" / "formats.md"
BEGIN, END = "<!-- formats.py: begin -->", "<!-- formats.py: end -->"  # the rest of the file is hand-written
TARGETS = ("llvm-cpu",)  # the only target msd compiles for today


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 128), nn.GELU(), nn.Linear(128, 64))


def _f64(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    m = copy.deepcopy(model).double()
    return lambda x: m(x.double())


def _eager(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: model(x).double()


def cases() -> list[tuple[str, str, Callable[[], nn.Module], bool, int]]:
    """(front end, format, model builder, float64 reference?, input width)."""
    q = msd.quantize
    rows = [
        ("msd.quantize", "int8 per channel", lambda: q(_mlp()), True, 256),
        *[("msd.quantize", f"int8 group {g}", (lambda g=g: q(_mlp(), weights="int8", group_size=g)), True, 256)
          for g in (32, 64, 128)],
        ("msd.quantize", "int4 group 32, asym., pairs", lambda: q(_mlp(), weights="int4", group_size=32), True, 256),
        ("msd.quantize", "int4 group 128, asym., pairs", lambda: q(_mlp(), weights="int4"), True, 256),
        ("msd.quantize", "int4 group 64, asym., halves (GGUF order)",
         lambda: q(_mlp(), weights="int4", group_size=64, packing="halves"), True, 256),
        ("msd.quantize", "MXFP4 (E2M1 pairs + E8M0 per 32, OCP layout)", lambda: q(_mlp(), weights="mxfp4"),
         True, 256),
    ]
    for name, fmt in (("int8_weight_only", "int8 per channel"), ("int8_weight_only_group32", "int8 group 32"),
                      ("int4_weight_only_group32", "int4 (Intx) group 32")):
        rows.append(("torchao 0.18", fmt, lambda name=name: _torchao_model(name), False, 64))
    for kind, fmt in (("per_channel", "int8 per channel, int64 zero point"),
                      ("per_channel_group", "int4-in-int8 group 32, int32 zero point"),
                      ("per_tensor", "int8 per tensor")):
        rows.append(("PT2E quantized_decomposed", fmt, lambda kind=kind: pt2e_mlp(kind), False, 64))
    return rows


def measure(build: Callable[[], nn.Module], f64: bool, width: int) -> dict:
    model = build()
    x = torch.randn(4, width, generator=torch.Generator().manual_seed(1))
    ref = (_f64 if f64 else _eager)(model)(x)
    out: dict = {}
    for slices in (0, 1, 2, 3):
        cm = msd.compile(model, (x,), slices=slices)
        err = ((cm(x).double() - ref).abs().max() / ref.abs().max()).item()
        out[slices] = err
        if slices == 2:
            out["rewritten"] = f"{len(cm.report.rewritten)}/{len(cm.report.decisions)}"
            out["reasons"] = sorted({d.reason for d in cm.report.decisions})
    return out


def main() -> None:
    start = time.time()
    lines = [
        BEGIN,
        "# Weight formats × front ends × targets",
        "",
        "Produced by `python benchmarks/formats.py` (its block is rewritten on every run) on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC with torch {torch.__version__}, "
        f"iree-base-compiler {version('iree-base-compiler')}, torchao {version('torchao')}.",
        "",
        __doc__.split("\n\n", 2)[2].strip(),
        "",
        "| front end | format | target | rewritten | slices=0 (IREE) | slices=1 | slices=2 | slices=3 | reference |",
        "| --- | --- | --- | :---: | ---: | ---: | ---: | ---: | --- |",
    ]
    details = []
    for front, fmt, build, f64, width in cases():
        for target in TARGETS:
            r = measure(build, f64, width)
            ref = "float64" if f64 else "eager f32"
            lines.append(f"| {front} | {fmt} | {target} | {r['rewritten']} | {r[0]:.1e} | {r[1]:.1e} | "
                         f"{r[2]:.1e} | {r[3]:.1e} | {ref} |")
            details.append(f"- {front}, {fmt}: " + "; ".join(r["reasons"]))
            print(lines[-1], flush=True)
    lines += ["", "What the pass said (slices=2):", "", *details, "",
              "Targets other than llvm-cpu are not supported by `msd.compile` yet.",
              "", f"Run time: {time.time() - start:.0f} s.", END]
    write_block(OUTPUT, "\n".join(lines), BEGIN, END)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
