"""``msd.compiler.tools.ptx``: the tensor-core kernels msd wrote into a compiled CUDA module, and
``ptxas`` on them.

A CUDA ``.vmfb`` holds each of msd's kernels as the PTX text the pass generated (the tensor-core
linears of :mod:`msd.passes.decompose_activations.cuda_kernel`, the activation quantizers of
:mod:`msd.passes.decompose_activations.cuda_quantize`), NUL-terminated; IREE does not check it when it
compiles, so :func:`assemble` runs NVIDIA's assembler (no GPU needed: the ``nvidia-cuda-nvcc`` wheel
ships it) to check its syntax, registers and spills for an arch.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from msd.compiler.pipeline.targets import ptxas_path
from msd.passes.decompose_activations.cuda_kernel import MMA

_LINEAR = b"// msd: fused MSD linear"
_QUANTIZE = b"// msd: MSD activation quantizer"


def kernels_in(vmfb: bytes) -> dict[str, str]:
    """``{entry name: PTX text}`` of every msd tensor-core kernel in ``vmfb``."""
    return _ptx_in(vmfb, _LINEAR)


def quantizers_in(vmfb: bytes) -> dict[str, str]:
    """``{entry name: PTX text}`` of every msd activation quantizer (:mod:`..cuda_quantize`) in ``vmfb``."""
    return _ptx_in(vmfb, _QUANTIZE)


def _ptx_in(vmfb: bytes, header: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    start = vmfb.find(header)
    while start >= 0:
        end = vmfb.index(b"\0", start)
        text = vmfb[start:end].decode()
        m = re.search(r"\.entry\s+(\w+)\(", text)
        if m is None:
            raise ValueError("an msd PTX kernel without an .entry in the module")
        out[m.group(1)] = text
        start = vmfb.find(header, end)
    return out


def assemble(ptx: str, arch: str) -> subprocess.CompletedProcess:
    """``ptxas -arch=ARCH -v`` on ``ptx`` (its stderr holds the register and spill counts)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        return subprocess.run([ptxas_path(), f"-arch={arch}", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
                              capture_output=True, text=True)


def mma_count(ptx: str) -> int:
    """The int8 ``mma.sync`` instructions in ``ptx``."""
    return ptx.count(MMA)


__all__ = ["assemble", "kernels_in", "mma_count", "quantizers_in"]
