"""The rewrite patterns: one per root op, each ``match → plan → decide → emit``.

A pattern records a :class:`~msd.passes.report.Decision` for every float contraction it sees: the
rewrite it made (:meth:`.plan.Plan.describe`), or the reason it made none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from iree.compiler import ir, rewrite

from msd.cost.model import Policy

from .. import _ir
from ..report import Decision, NotHandled, Report
from . import emit_int8, emit_kernel, emit_scaled, match
from .cleanup import erase_dead_producers
from .decide import decide
from .emit_common import widened_weight
from .match import Contraction
from .options import DecomposeOptions
from .plan import Plan, plan


class DecomposeContraction:
    """The pattern of one root op (a :data:`PATTERNS` entry): ``contraction`` turns the op into a
    :class:`Contraction` (None: not a candidate); the rest is the same for every root."""

    def __init__(self, root: str, contraction: Callable[[ir.Operation], Contraction | None],
                 options: DecomposeOptions, policy: Policy | None, report: Report,
                 kernels: dict[str, emit_kernel.Kernel]) -> None:
        self.root, self.contraction = root, contraction
        self.kernels = kernels  # the fused kernels emitted so far, by symbol (their executables are added last)
        self.options = options
        self.policy = policy  # None: always rewrite; else the cost model decides per contraction
        self.report = report
        self.seen: dict[int, int] = {}

    def __call__(self, op: ir.OpView, rewriter: rewrite.PatternRewriter) -> bool:
        op = op.operation
        c = self.contraction(op)
        if c is None:
            return True  # not a float contraction: not a candidate, nothing to report
        created: list[ir.Operation] = []  # reshapes made to merge two reduction dims
        if len(c.reductions) == 2:
            with rewriter.ip, op.location:
                merged = match.merge_reductions(c)
            if isinstance(merged, str):
                self._record(op, False, f"2 reduction dims that cannot be merged into one: {merged}")
                return True
            c, created = merged
        try:
            p = decide(plan(c, self.options), self.policy)
        except NotHandled as e:
            for o in reversed(created):  # leave the IR as it was
                o.erase()
            self._record(op, False, str(e), **e.fields)
            return True
        if created:
            p = replace(p, notes=(*p.notes, "its two reduction dims (groups, within a group) merged into one"))
        with rewriter.ip, op.location:
            if p.q_width < 8:  # i1 … i7 codes: the matmuls (and the kernel choice) read them as i8
                note = f"i{p.q_width} weight {'zero' if p.q_shift else 'sign'}-extended to i8"
                p = replace(p, q=widened_weight(p.q, p.q_shift > 0), notes=(*p.notes, note))
            p = self._with_kernel(p)
            if p.kernel is not None:
                y = emit_kernel.emit(p, p.kernel, self.kernels)
            else:
                y = emit_scaled.emit(p) if p.block_scaled else emit_int8.emit(p)
        self._record(op, True, p.describe(), **p.cost)
        operands = [*(o.result for o in created), *op.operands]  # (a merge's reshapes the emitters did not read)
        rewriter.replace_op(op, [y])
        erase_dead_producers(operands, rewriter)
        return False

    def _with_kernel(self, p: Plan) -> Plan:
        """``p`` with the fused kernel (a CPU ISA's, or NVIDIA's tensor-core one) when one is asked for and
        covers it (else the reason why not)."""
        isa, arch = self.options.cpu_kernel, self.options.gpu_kernel
        if (isa == "none" and arch == "none") or p.block_scaled or p.act_format != "int8":
            return p
        spec = (emit_kernel.kernel_for(p, isa) if isa != "none"
                else emit_kernel.mma_kernel_for(p, arch, self.options.gpu_kernel_shape))
        return replace(p, kernel=spec) if not isinstance(spec, str) else replace(p, kernel_note=spec)

    def _record(self, op: ir.Operation, rewritten: bool, reason: str, **cost: object) -> None:
        d = Decision(op.name, _ir.location_text(op), rewritten, reason, **cost)
        key = hash(op)
        if key in self.seen:
            self.report.decisions[self.seen[key]] = d
        else:
            self.seen[key] = len(self.report.decisions)
            self.report.decisions.append(d)


# One table entry per root op the pass rewrites: the op, and how it becomes a Contraction.
PATTERNS: tuple[tuple[str, Callable[[ir.Operation], Contraction | None]], ...] = (
    ("linalg.matmul", match.matmul),  # any operand layout (default or explicit indexing_maps)
    ("linalg.batch_matmul", match.batch_matmul),  # 3-D activations of nn.Linear on sequences
    ("linalg.contract", match.contract),  # explicit indexing maps, implicit multiply-add body
    ("linalg.generic", match.generic),  # a body `out + a*b` with one reduction dim
)

__all__ = ["PATTERNS", "DecomposeContraction"]
