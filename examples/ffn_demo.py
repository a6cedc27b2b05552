"""Compile a small quantized MLP with and without MSD; print error and speed side by side.

    .venv/bin/python examples/ffn_demo.py [--hidden 2048 --ffn 5632]

The model is a Llama-style feed-forward block (hidden → ffn → hidden with SiLU gating) with int8
per-channel weights from ``msd.quantize``.  Errors are against a float64 evaluation of the same
int8 weights; times are medians of interleaved calls in this one run.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import msd


class FeedForward(nn.Module):
    """``down(silu(gate(x)) * up(x))``, as in Llama."""

    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.gate = nn.Linear(hidden, ffn, bias=False)
        self.up = nn.Linear(hidden, ffn, bias=False)
        self.down = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def median_ms(fns: dict[str, Callable[[], object]], rounds: int = 7, calls: int = 5) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(rounds):
        for name, f in fns.items():
            for _ in range(calls):
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=5632)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args()

    torch.manual_seed(0)
    model = msd.quantize(FeedForward(args.hidden, args.ffn), weights="int8")
    print(f"Llama-style FFN {args.hidden}→{args.ffn}→{args.hidden}, int8 per-channel weights, llvm-cpu\n")
    print(f"{'tokens':>6} {'variant':<22} {'max |err| / max |y|':>20} {'ms / call':>10} {'speed-up':>9}")
    for m in args.tokens:
        x = torch.randn(m, args.hidden)
        ref = _reference(model, x)
        variants = {"IREE baseline": 0, "MSD 1 slice (W8A8)": 1, "MSD 2 slices": 2, "MSD 3 slices": 3}
        compiled = {name: msd.compile(model, (x,), slices=s) for name, s in variants.items()}
        errors = {name: ((cm(x).double() - ref).abs().max() / ref.abs().max()).item()
                  for name, cm in compiled.items()}
        speed = median_ms({name: (lambda cm=cm, x=x: cm(x)) for name, cm in compiled.items()})
        for name in variants:
            ratio = speed["IREE baseline"] / speed[name]
            print(f"{m:>6} {name:<22} {errors[name]:>20.2e} {speed[name]:>10.2f} {ratio:>8.1f}x")
        print()
    print("speed-up = IREE baseline time / variant time, same machine, same run (interleaved calls).")


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The same int8 weights and scales, evaluated in float64."""
    with torch.no_grad():
        return copy.deepcopy(model).double()(x.double())


if __name__ == "__main__":
    main()
