"""``--msd-decompose-activations``: dequantize-then-matmul → decomposed-activation int8 matmuls.

A float contraction ``y = x · W`` whose weight operand ``W`` is computed elementwise from an
integer tensor ``q`` (``W = a·float(q) + b`` with ``a``, ``b`` constant along the reduction) is
rewritten so that the weight is never materialized in float:

1. ``amax[m] = max_k |x[m,k]|`` (and ``rowsum[m] = Σ_k x[m,k]`` when there is an offset ``b``);
2. ``x ≈ s·(q1 + q2/254 + q3/254²)``, ``s = amax/127``: the slices are stacked along M in one
   ``i8`` tensor (round half to even, clamped to ±127);
3. one ``i8 × i8 → i32`` matmul of the stacked slices with the untouched integer weight;
4. one epilogue: ``y = a·s·Σ_p C_p/254^p + b·rowsum + y_init``.

The algebra is exact except for the activation rounding, whose error is at most
``amax/(2·127·254^(p-1))`` per element (see docs/method.md).  Anything the pass cannot prove it
handles exactly is left untouched, with the reason in the :class:`~msd.passes.report.Report`.

Rows whose ``amax`` is not finite (a NaN or ±Inf in the row) produce NaN for the whole row: the
float reference is non-finite everywhere in such a row too, but the sign of an infinity is not
tracked.

How the package reads, in the order a contraction goes through it:

- :mod:`.options`   — :class:`DecomposeOptions`, the pass's options (validated, parsed from text);
- :mod:`.match`     — root op → :class:`~.match.Contraction` (named ops and generics);
- :mod:`.plan`      — Contraction → frozen :class:`~.plan.Plan` (weight trace, dims, K split, lowering);
  :mod:`.overflow` (the int32 bound, K chunks, the dynamic-K guard) and :mod:`.fp4_weight` (is the
  weight MXFP4) answer its questions;
- :mod:`.decide`    — the cost model's verdict (``target=``): slices, or IREE's lowering kept;
- :mod:`.emit_int8` / :mod:`.emit_scaled` — Plan → IR (int8 slices or MXFP4 emulation / block-scaled
  FP4, FP8), on :mod:`.emit_common`;
- :mod:`.patterns`  — one pattern per root op: match → plan → decide → emit, and the report;
- :mod:`.cleanup`   — dead dequantization chains erased, epilogue consumers folded.
"""

from __future__ import annotations

from iree.compiler import ir, rewrite

from ..report import Report
from .cleanup import fold_epilogues
from .decide import policy_for
from .emit_kernel import Kernel, executables
from .match import Contraction
from .options import NAME, SUPPORTED_SLICES, DecomposeOptions
from .overflow import MAX_K_PER_ACCUMULATOR
from .patterns import PATTERNS, DecomposeContraction
from .plan import Plan, plan

SUMMARY = "rewrite dequantize-then-matmul into decomposed-activation int8 matmuls"


def run(module: ir.Operation, options: DecomposeOptions | None = None, /, **kwargs: object) -> Report:
    """Apply the pass to ``module`` in place; return what it decided for each float contraction.

    ``options`` (or, without it, the same fields as keyword arguments: ``run(module, slices=2)``):
    see :class:`DecomposeOptions`.  A bad value raises :class:`msd.errors.OptionError` before the
    module is touched.
    """
    if options is None:
        options = DecomposeOptions(**kwargs)
    elif kwargs:
        raise TypeError("run() takes options or keyword arguments, not both")
    policy = policy_for(options)
    report = Report(NAME)
    patterns = rewrite.RewritePatternSet(module.context)
    kernels: dict[str, Kernel] = {}
    for root, contraction in PATTERNS:
        patterns.add(root, DecomposeContraction(root, contraction, options, policy, report, kernels))
    # One walk, no folding: only candidate contractions are touched (and each exactly once).
    rewrite.walk_and_apply_patterns(module, patterns.freeze())
    fold_epilogues(module)
    executables(module, kernels)
    return report


__all__ = ["MAX_K_PER_ACCUMULATOR", "NAME", "SUMMARY", "SUPPORTED_SLICES", "Contraction", "DecomposeOptions", "Plan",
           "plan", "run"]
