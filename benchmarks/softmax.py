"""Why ``compiler/models/llama.py`` writes softmax as ``exp(s - max) · (1 / Σ)``: IREE 3.13 on CPU.

    python benchmarks/softmax.py        # prints median ms per call of three spellings, one process

Each spelling is compiled with ``msd.compile(..., slices=0)`` (IREE's own lowering) for a
``[1, 3, 3, S, S]`` f32 score tensor with dynamic S (SmolLM2's 3 KV heads × 3 query heads per group)
and called at S = 512; the calls include the host↔device copies of the 9 MiB input and output.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import msd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402


class TorchSoftmax(torch.nn.Module):
    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.softmax(s, dim=-1)


class DivideBySum(torch.nn.Module):
    def forward(self, s: torch.Tensor) -> torch.Tensor:
        e = torch.exp(s - s.amax(-1, keepdim=True))
        return e / e.sum(-1, keepdim=True)


class TimesReciprocal(torch.nn.Module):  # llama.softmax_last
    def forward(self, s: torch.Tensor) -> torch.Tensor:
        e = torch.exp(s - s.amax(-1, keepdim=True))
        return e * (1.0 / e.sum(-1, keepdim=True))


def main() -> int:
    size = torch.export.Dim("S", min=2, max=1024)
    x = torch.randn(1, 3, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    ref = torch.softmax(x.double(), -1)
    print(f"{cpu_model()}; torch threads {torch.get_num_threads()}; [1, 3, 3, 512, 512] f32")
    for cls in (TorchSoftmax, DivideBySum, TimesReciprocal):
        cm = msd.compile(cls(), (x,), dynamic_shapes=({3: size, 4: size},), slices=0)
        cm(x)
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            y = cm(x)
            times.append(time.perf_counter() - t0)
        err = float((torch.as_tensor(np.asarray(y)).double() - ref).abs().max())
        print(f"  {cls.__name__:16s} {statistics.median(times) * 1e3:7.1f} ms  max |err| {err:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
