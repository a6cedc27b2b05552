"""The int32 accumulator bound: how much of K one int8 × int8 → int32 accumulation may cover.

``|q_x| ≤ 127`` (activation slices) and ``|q_w| ≤ 128`` (int8 weight), so :data:`MAX_K_PER_ACCUMULATOR`
products always fit an int32.  A longer static K is split into chunks with accumulators of their own
(the largest divisor of K in ``[MIN_K_CHUNK, MAX_K_PER_ACCUMULATOR]``); a dynamic K is checked at run
time by :func:`guard_dynamic_k`.
"""

from __future__ import annotations

from iree.compiler import ir
from iree.compiler.dialects import arith, cf

from .. import _ir
from ..report import NotHandled

MAX_K_PER_ACCUMULATOR = (2**31 - 1) // (127 * 128)
MIN_K_CHUNK = 1024


def accumulation_chunk(k_size: int | None, group: int | None) -> int | None:
    """The K chunk each int32 accumulator covers (None: all of K) — proven not to overflow.

    ``group``: the weight's group size along K (its scales change every ``group`` elements)."""
    if group is not None:
        if k_size is None:
            raise NotHandled("group-wise scales with a dynamic reduction size")
        if k_size % group:
            raise NotHandled(f"reduction size {k_size} is not a multiple of the group size {group}")
        if group > MAX_K_PER_ACCUMULATOR:
            raise NotHandled(f"group size {group} could overflow the int32 accumulator")
        return group if group < k_size else None
    if k_size is None:  # one accumulator; guard_dynamic_k checks K at run time
        return None
    if k_size <= MAX_K_PER_ACCUMULATOR:
        return None
    for chunk in range(MAX_K_PER_ACCUMULATOR, MIN_K_CHUNK - 1, -1):
        if k_size % chunk == 0:
            return chunk
    raise NotHandled(
        f"K={k_size} products could overflow the int32 accumulator and K has no divisor in"
        f" [{MIN_K_CHUNK}, {MAX_K_PER_ACCUMULATOR}] to split it by"
    )


def guard_dynamic_k(x: ir.Value, x_map: ir.AffineMap, k: int) -> None:
    """A dynamic K is only known at run time: emit ``cf.assert K <= MAX_K_PER_ACCUMULATOR`` before the
    rewrite, so a call whose int32 accumulation could overflow fails with this message instead of
    returning a wrong answer (e.g. attention ``P·V`` over a cache of dynamic length)."""
    k_size = _ir.size_of(x, _ir.dim_positions(x_map).index(k))
    bound = _ir.index_const(MAX_K_PER_ACCUMULATOR)
    ok = arith.CmpIOp(arith.CmpIPredicate.ule, k_size, bound).result
    cf.AssertOp(ok, f"msd: reduction size above {MAX_K_PER_ACCUMULATOR} could overflow the int32 accumulator"
                    " of an int8 matmul")


__all__ = ["MAX_K_PER_ACCUMULATOR", "MIN_K_CHUNK", "accumulation_chunk", "guard_dynamic_k"]
