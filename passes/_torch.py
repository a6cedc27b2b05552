"""Helpers of the passes that run on the torch dialect (``--msd-attention-kernels``, ``--msd-row-kernels``):
the shape of a ``!torch.vtensor``, the msd custom ops in a module, the kernels' executables added once."""

from __future__ import annotations

import struct
from collections.abc import Iterable

from iree.compiler import ir

_TENSOR = "!torch.vtensor<["


def vtensor_shape(t: ir.Type) -> tuple[list[int | None], str] | None:
    """``(dims, element type)`` of a ``!torch.vtensor`` type (None for a dynamic dim); None for others."""
    text = str(t)
    if not text.startswith(_TENSOR):
        return None
    dims_text, _, elem = text[len(_TENSOR):].rstrip(">").partition("],")
    return [None if d == "?" else int(d) for d in dims_text.split(",") if d], elem


def f32_bits(v: float) -> int:
    """The bits of ``v`` rounded to f32 (kernel constants and symbol names written exactly)."""
    return struct.unpack("<I", struct.pack("<f", v))[0]


def torch_operators(module: ir.Operation, names: Iterable[str]) -> list[ir.Operation]:
    """The ``torch.operator`` ops of ``module`` named one of ``names`` (custom ops as the FX importer
    writes them), in order."""
    wanted, found = set(names), []

    def visit(o: ir.Operation) -> ir.WalkResult:
        if o.name == "torch.operator" and ir.StringAttr(o.attributes["name"]).value in wanted:
            found.append(o)
        return ir.WalkResult.ADVANCE

    module.walk(visit, ir.WalkOrder.PRE_ORDER)
    return found


def add_executables(module: ir.Operation, texts: dict[str, list[str]]) -> None:
    """Parse each symbol's ``stream.executable`` texts into the top of ``module`` unless it has them."""
    body = module.regions[0].blocks[0]
    present = {ir.StringAttr(o.attributes["sym_name"]).value for o in body.operations if "sym_name" in o.attributes}
    for symbol, symbol_texts in texts.items():
        if symbol not in present:
            for text in symbol_texts:
                parsed = ir.Module.parse(text, module.context)  # kept alive while the op moves
                parsed.body.operations[0].move_before(body.operations[0])


__all__ = ["add_executables", "f32_bits", "torch_operators", "vtensor_shape"]
