"""What the pass does after its rewrites: erase the dead dequantization chain, fold the epilogues'
elementwise consumers (bias add, ``truncf``, activations) into them."""

from __future__ import annotations

from iree.compiler import ir, rewrite

from .. import _ir
from .._fusion import fold_elementwise_consumers
from .emit_common import EPILOGUE_MARK

PURE_DIALECTS = ("linalg.", "tensor.", "arith.", "math.")


def erase_dead_producers(values: list[ir.Value], rewriter: rewrite.PatternRewriter) -> None:
    """Erase the now-unused dequantization chain (pure tensor ops only) behind ``values``."""
    work = [p for p in map(_ir.producer, values) if p is not None]
    erased: set[int] = set()
    while work:
        op = work.pop()
        if hash(op) in erased or not op.name.startswith(PURE_DIALECTS):
            continue
        if any(len(list(r.uses)) for r in op.results):
            continue
        work.extend(p for p in map(_ir.producer, op.operands) if p is not None)
        erased.add(hash(op))
        rewriter.erase_op(op)


def fold_epilogues(module: ir.Operation) -> None:
    """Unmark every epilogue the rewrites marked and merge its elementwise consumers into it."""
    epilogues: list[ir.Operation] = []

    def collect(op: ir.Operation) -> ir.WalkResult:
        if EPILOGUE_MARK in op.attributes:
            epilogues.append(op.operation)
        return ir.WalkResult.ADVANCE

    module.walk(collect)
    for op in epilogues:
        del op.attributes[EPILOGUE_MARK]
        fold_elementwise_consumers(op)


__all__ = ["erase_dead_producers", "fold_epilogues"]
