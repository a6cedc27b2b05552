"""msd: a compiler for quantized LLM inference by Multi-Scale Dequant (MSD).

    qmodel = msd.quantize(model, weights="int8")
    cm = msd.compile(qmodel, (x,), target="llvm-cpu", slices=2)
    y = cm(x)
"""

from msd.compiler.driver import STAGES, TARGETS, CompiledModule, compile
from msd.compiler.importer import ExportError
from msd.compiler.iree_session import CompileError
from msd.compiler.quantize import QuantizedLinear, quantize
from msd.passes import Report
from msd.runtime import ArtifactError

__version__ = "0.1.0"

__all__ = [
    "STAGES",
    "TARGETS",
    "ArtifactError",
    "CompileError",
    "CompiledModule",
    "ExportError",
    "QuantizedLinear",
    "Report",
    "compile",
    "quantize",
]
