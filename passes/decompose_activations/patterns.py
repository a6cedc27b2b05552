"""The rewrite patterns: one per root op, each ``match → plan → decide → emit``.

A pattern records a :class:`~msd.passes.report.Decision` for every float contraction it sees: the
rewrite it made (:meth:`.plan.Plan.describe`), or the reason it made none.
"""

from __future__ import annotations

from collections.abc import Callable

from iree.compiler import ir, rewrite

from msd.cost.model import Policy

from .. import _ir
from ..report import Decision, NotHandled, Report
from . import emit_int8, emit_scaled, match
from .cleanup import erase_dead_producers
from .decide import decide
from .match import Contraction
from .options import DecomposeOptions
from .plan import plan


class DecomposeContraction:
    """Base of the patterns: ``contraction`` turns the root op into a :class:`Contraction` (None: not
    a candidate); the rest is the same for every root."""

    root: str = ""
    contraction: Callable[[ir.Operation], Contraction | None]

    def __init__(self, options: DecomposeOptions, policy: Policy | None, report: Report) -> None:
        self.options = options
        self.policy = policy  # None: always rewrite; else the cost model decides per contraction
        self.report = report
        self.seen: dict[int, int] = {}

    def __call__(self, op: ir.OpView, rewriter: rewrite.PatternRewriter) -> bool:
        op = op.operation
        c = self.contraction(op)
        if c is None:
            return True  # not a float contraction: not a candidate, nothing to report
        try:
            p = decide(plan(c, self.options), self.policy)
        except NotHandled as e:
            self._record(op, False, str(e), **e.fields)
            return True
        with rewriter.ip, op.location:
            y = emit_scaled.emit(p) if p.block_scaled else emit_int8.emit(p)
        self._record(op, True, p.describe(), **p.cost)
        operands = list(op.operands)
        rewriter.replace_op(op, [y])
        erase_dead_producers(operands, rewriter)
        return False

    def _record(self, op: ir.Operation, rewritten: bool, reason: str, **cost: object) -> None:
        d = Decision(op.name, _ir.location_text(op), rewritten, reason, **cost)
        key = hash(op)
        if key in self.seen:
            self.report.decisions[self.seen[key]] = d
        else:
            self.seen[key] = len(self.report.decisions)
            self.report.decisions.append(d)


class DecomposeMatmul(DecomposeContraction):
    """``linalg.matmul`` in any operand layout (default or explicit ``indexing_maps``)."""

    root = "linalg.matmul"
    contraction = staticmethod(match.matmul)


class DecomposeBatchMatmul(DecomposeContraction):
    """``linalg.batch_matmul`` (3-D activations from ``nn.Linear`` on sequences land here)."""

    root = "linalg.batch_matmul"
    contraction = staticmethod(match.batch_matmul)


class DecomposeContract(DecomposeContraction):
    """``linalg.contract`` (explicit indexing maps, implicit multiply-add body)."""

    root = "linalg.contract"
    contraction = staticmethod(match.contract)


class DecomposeGenericContraction(DecomposeContraction):
    """``linalg.generic`` whose body is ``out + a*b`` with one reduction dim."""

    root = "linalg.generic"
    contraction = staticmethod(match.generic)


PATTERNS = (DecomposeMatmul, DecomposeBatchMatmul, DecomposeContract, DecomposeGenericContraction)

__all__ = ["PATTERNS", "DecomposeBatchMatmul", "DecomposeContract", "DecomposeContraction",
           "DecomposeGenericContraction", "DecomposeMatmul"]
