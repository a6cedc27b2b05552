"""msd: a compiler for quantized LLM inference by Multi-Scale Dequant (MSD).

    qmodel = msd.quantize(model, weights="int8")
    cm = msd.compile(qmodel, (x,), target="llvm-cpu", slices=2)
    y = cm(x)

The compiler half needs torch; ``msd.runtime`` (load and call a saved artifact) does not, so the
names below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "compile": "msd.compiler.pipeline.driver",
    "compile_functions": "msd.compiler.pipeline.driver",
    "CompiledModule": "msd.compiler.pipeline.driver",
    "STAGES": "msd.compiler.pipeline.driver",
    "TARGETS": "msd.compiler.pipeline.driver",
    "MsdError": "msd.errors",
    "OptionError": "msd.errors",
    "TargetError": "msd.errors",
    "CompileError": "msd.errors",
    "ExportError": "msd.errors",
    "GGUFError": "msd.errors",
    "InputError": "msd.errors",
    "UnsupportedGGUFError": "msd.errors",
    "quantize": "msd.compiler.quant.quantize",
    "QuantizedLinear": "msd.compiler.quant.quantize",
    "Report": "msd.passes.report",
    "ArtifactError": "msd.errors",
    "generate": "msd.compiler.llm.generate",
}

if TYPE_CHECKING:
    from msd.compiler.llm.generate import generate  # noqa: F401
    from msd.compiler.pipeline.driver import STAGES, TARGETS, CompiledModule, compile, compile_functions  # noqa: F401
    from msd.compiler.quant.quantize import QuantizedLinear, quantize  # noqa: F401
    from msd.errors import (  # noqa: F401
        ArtifactError,
        CompileError,
        ExportError,
        GGUFError,
        InputError,
        MsdError,
        OptionError,
        TargetError,
        UnsupportedGGUFError,
    )
    from msd.passes.report import Report  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name == "cost":  # hardware profiles and the cost model: a submodule, loaded on first use
        return importlib.import_module("msd.cost")
    raise AttributeError(f"module 'msd' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
