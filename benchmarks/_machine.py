"""What machine a benchmark ran on (shared by the scripts in benchmarks/)."""

from __future__ import annotations

import platform
from pathlib import Path

# The /proc/cpuinfo flags that decide which kernels can run (msd's fused kernels, IREE's ukernels,
# llama.cpp's paths): recorded with every benchmark.
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
              "avx512_fp16", "amx_int8", "amx_bf16", "asimddp", "i8mm", "sve")


def cpu_flags() -> list[str]:
    """The SIMD flags of :data:`SIMD_FLAGS` this CPU reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in SIMD_FLAGS if f in have]
    except OSError:
        pass
    return []


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what platform knows) and its SIMD flags."""
    name = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    return f"{name} (flags: {' '.join(flags)})" if flags else name
