"""Emitting the int8 form of a :class:`~.plan.Plan`: slices × untouched integer weight, one epilogue.

1. ``amax[m] = max_k |x[m,k]|`` (and ``rowsum[m] = Σ_k x[m,k]`` when the weight has an offset);
2. ``x ≈ s·(q1 + q2/254 + q3/254²)``, ``s = amax/127``: the slices stacked along M in one ``i8``
   tensor (round half to even, clamped to ±127);
3. one ``i8 × i8 → i32`` matmul of the stacked slices with the integer weight;
4. one epilogue: ``y = scale·s·Σ_p C_p/254^p + offset·rowsum + y_init``.

With ``act_format="mxfp4"`` the slices are instead MXFP4 per row and 32-block of K (an E8M0 exponent
of their own per slice, doubled E2M1 codes stored as int8): the exact emulation of the MX variant
with int8 products.  Where K is split (weight groups, int32 chunks, MX blocks) the matmul is batched
over the groups and the epilogue also reduces over them, in f32.
"""

from __future__ import annotations

from dataclasses import dataclass

from iree.compiler import ir
from iree.compiler.dialects import arith, linalg
from iree.compiler.dialects import math as math_d

from .. import _ir, _mx
from ..analysis.dequant import Leaf
from .emit_common import (
    FLT_MIN,
    QMAX,
    SLICE_RADIX,
    centred,
    drop_unit_dims,
    fold_k_scale,
    mark_epilogue,
    residual_maxima,
    row_scale,
    scalar_expr,
    select_slice,
    slice_digits,
    slice_index,
    split_map,
    split_operand,
)
from .overflow import guard_dynamic_k
from .plan import Plan

PARALLEL, REDUCTION = _ir.PARALLEL, _ir.REDUCTION


def emit(p: Plan) -> ir.Value:
    """Emit the int8 (or MXFP4-emulation) form of ``p.c`` at the current insertion point; return the
    value that replaces its result."""
    if p.k_size is None:
        guard_dynamic_k(p.x, p.x_map, p.k)
    x = fold_k_scale(p.x, p.x_map, p.k_scale)
    q, q_map = drop_unit_dims(p.q, p.q_map, p.q_unit_dims)
    s = _Space.of(p, x, centred(q, p.q_shift), q_map)
    mx = p.act_format == "mxfp4"
    per_group = p.act_scale == "group" or mx
    bt_sz, m_sz = [s.size(d) for d in s.bt], [s.size(d) for d in p.m_dims]
    red_sz, n_sz = s.size(s.red), s.size(p.n_dim)
    rows = [*s.bt, *p.m_dims]  # the slices' rows: one activation scale per (batch, group, M)
    amax_rows = rows if (s.kg is None or per_group) else [*p.b_dims, *p.m_dims]

    # 1. amax per row (or per row and group), and the row/group sums when the weight has an offset.
    amax, sums = _row_amax_and_sums(p, s, rows, amax_rows)
    amaxes = [amax]  # MX: one block maximum per slice, each of the residual the slices before leave
    if mx:
        reduced = [d for d in range(s.n_all) if d in s.x_dims and d not in rows]
        r_pos = {d: i for i, d in enumerate([*rows, *reduced])}
        amaxes = residual_maxima(s.x, _ir.reindex(s.x_map, r_pos, len(r_pos)), rows, len(reduced), s.size,
                                 p.mx_rule, "mxfp4", amaxes, p.slices - 1)

    # 2. the slices, stacked: [batch, p, M..., K] int8.
    stacked = _stacked_slices(p, s, amaxes, amax_rows, [*bt_sz, p.slices, *m_sz, red_sz], mx)

    # 3. one int8 x int8 -> int32 matmul of all slices against the integer weight.
    acc = _slice_matmul(p, s, stacked, bt_sz, m_sz, n_sz)

    # 4. the epilogue, in the original op's parallel space (plus a reduction over K groups).
    return mark_epilogue(_epilogue(p, s, acc, amaxes, sums, rows, amax_rows, mx))


# ============================================================================= the operands
def _batch_first(q: ir.Value, q_map: ir.AffineMap, batch: int) -> tuple[ir.Value, ir.AffineMap]:
    """Transpose ``q`` so that the tensor dim read by iteration dim ``batch`` comes first."""
    dims = _ir.dim_positions(q_map)
    first = dims.index(batch)
    if first == 0:
        return q, q_map
    perm = [first] + [i for i in range(len(dims)) if i != first]
    sizes = [_ir.size_of(q, i) for i in perm]
    out = _ir.empty(sizes, _ir.elem_type(q))
    qt = linalg.transpose(q, outs=[out], permutation=perm)
    qt = qt.operation.results[0] if isinstance(qt, ir.OpView) else qt
    return qt, ir.AffineMap.get(q_map.n_dims, 0, [q_map.results[i] for i in perm])


@dataclass(frozen=True)
class _Space:
    """The iteration space of the rewrite: the contraction's, or where K is split into groups, that
    plus a within-group dim (``red``, the last), K's own dim ``kg`` then counting the groups."""

    n_all: int
    red: int  # the reduction dim of the int matmul
    kg: int | None  # the group dim (None: K is not split)
    x: ir.Value
    x_map: ir.AffineMap
    q: ir.Value
    q_map: ir.AffineMap
    leaf_maps: tuple[ir.AffineMap, ...]  # p.leaves' maps in this space
    bt: tuple[int, ...]  # batch dims of the int matmul: the true batch dim, or the group dim

    @classmethod
    def of(cls, p: Plan, x: ir.Value, q: ir.Value, q_map: ir.AffineMap) -> _Space:
        c, k = p.c, p.k
        if p.group is None:
            n_all, red, kg = c.n_dims, k, None
            x_map = p.x_map
            leaf_maps = [leaf.map for leaf in p.leaves]
        else:
            n_all, red, kg = c.n_dims + 1, c.n_dims, k
            x, x_map = split_operand(x, p.x_map, k, red, p.group, n_all)
            q, q_map = split_operand(q, q_map, k, red, p.group, n_all)
            leaf_maps = [split_map(leaf.map, k, red, n_all) for leaf in p.leaves]
        bt = (*p.b_dims, *([kg] if kg is not None else []))
        if bt:
            q, q_map = _batch_first(q, q_map, bt[0])
        return cls(n_all, red, kg, x, x_map, q, q_map, tuple(leaf_maps), bt)

    @property
    def x_dims(self) -> list[int]:
        return _ir.dim_positions(self.x_map)

    def size(self, d: int) -> _ir.Size:
        """The extent of iteration dim ``d`` (a ``tensor.dim`` when dynamic)."""
        x_dims = self.x_dims
        if d in x_dims:
            return _ir.size_of(self.x, x_dims.index(d))
        return _ir.size_of(self.q, _ir.dim_positions(self.q_map).index(d))


# ============================================================================= slices
def _row_amax_and_sums(p: Plan, s: _Space, rows: list[int],
                       amax_rows: list[int]) -> tuple[ir.Value, ir.Value | None]:
    """``max |x|`` over ``amax_rows`` and, with an offset, ``Σ x`` over ``rows`` (one pass when they
    agree)."""
    x_dims = s.x_dims

    def row_reduction(row_dims: list[int], body, n_out: int) -> list[ir.Value]:
        reduced = [d for d in range(s.n_all) if d in x_dims and d not in row_dims]
        pos = {d: i for i, d in enumerate([*row_dims, *reduced])}
        outs = [_ir.filled([s.size(d) for d in row_dims], _ir.f32_const(0.0)) for _ in range(n_out)]
        return _ir.generic(
            [s.x], outs,
            [_ir.reindex(s.x_map, pos, len(pos)), *[_ir.dims_map(len(pos), list(range(len(row_dims))))] * n_out],
            [PARALLEL] * len(row_dims) + [REDUCTION] * len(reduced), body,
        )

    def amax_body(v, o, *sum_out):
        r = [arith.MaximumFOp(math_d.AbsFOp(_ir.to_f32(v)).result, o).result]
        return r + [arith.AddFOp(_ir.to_f32(v), sum_out[0]).result] if sum_out else r

    if p.offset is not None and amax_rows == rows:  # one pass over x for both
        amax, sums = row_reduction(rows, amax_body, 2)
        return amax, sums
    amax = row_reduction(amax_rows, amax_body, 1)[0]
    sums = None
    if p.offset is not None:
        sums = row_reduction(rows, lambda v, o: [arith.AddFOp(_ir.to_f32(v), o).result], 1)[0]
    return amax, sums


def _stacked_slices(p: Plan, s: _Space, amaxes: list[ir.Value], amax_rows: list[int], sizes: list[_ir.Size],
                    mx: bool) -> ir.Value:
    """The slices of ``x`` as one ``[batch, P, M..., K]`` i8 tensor."""
    nb, nm, slices = len(s.bt), len(p.m_dims), p.slices
    s_pos = {d: i for i, d in enumerate(s.bt)}
    s_pos.update({d: nb + 1 + j for j, d in enumerate(p.m_dims)})
    s_pos[s.red] = nb + nm + 1
    n_s = nb + nm + 2
    amax_in_s = _ir.dims_map(n_s, [s_pos[d] for d in amax_rows])

    def slice_body(xv, *args):
        pi = slice_index(nb) if slices > 1 else None
        am = args[0]
        t = arith.DivFOp(_ir.to_f32(xv), row_scale(am)).result
        finite = arith.CmpFOp(
            arith.CmpFPredicate.OLT, math_d.AbsFOp(t).result, _ir.f32_const(float("inf"))
        ).result
        if mx:
            digits = _mx.slice_chain(_ir.to_f32(xv), [_mx.block_exponent(a, p.mx_rule) for a in args[:-1]])
        else:
            digits = slice_digits(t, slices)
        v = select_slice(pi, digits)
        v = arith.SelectOp(finite, v, _ir.f32_const(0.0)).result
        return [arith.FPToSIOp(_i8(), v).result]

    return _ir.generic(
        [s.x, *amaxes], [_ir.empty(sizes, _i8())],
        [_ir.reindex(s.x_map, s_pos, n_s), *[amax_in_s] * len(amaxes), _ir.dims_map(n_s, list(range(n_s)))],
        [PARALLEL] * n_s, slice_body,
    )[0]


def _slice_matmul(p: Plan, s: _Space, stacked: ir.Value, bt_sz: list[_ir.Size], m_sz: list[_ir.Size],
                  n_sz: _ir.Size) -> ir.Value:
    """``[batch, P, M..., N]`` i32: the stacked slices (collapsed to ``[batch, P·M, K]``) times the
    integer weight, one ``linalg.matmul`` (``batch_matmul`` over a batch or K groups)."""
    nb, nm = len(s.bt), len(p.m_dims)
    groups = [*[[i] for i in range(nb)], list(range(nb, nb + nm + 1)), [nb + nm + 1]]
    lhs = _ir.collapse(stacked, groups)
    acc0 = _ir.filled([*bt_sz, _ir.product([p.slices, *m_sz]), n_sz], _ir.int_const(_i32(), 0))
    mm_pos = {p.n_dim: nb + 1, s.red: nb + 2}
    mm_pos.update({d: 0 for d in s.bt})
    n_mm = nb + 3
    mm_maps = [
        _ir.dims_map(n_mm, [*range(nb), nb, nb + 2]),
        _ir.reindex(s.q_map, mm_pos, n_mm),
        _ir.dims_map(n_mm, [*range(nb), nb, nb + 1]),
    ]
    builder = linalg.batch_matmul if nb else linalg.matmul
    acc = builder(lhs, s.q, outs=[acc0], indexing_maps=mm_maps)
    return _ir.expand(acc, groups[:-1] + [[nb + nm + 1]], [*bt_sz, p.slices, *m_sz, n_sz])


# ============================================================================= epilogue
def _epilogue(p: Plan, s: _Space, acc: ir.Value, amaxes: list[ir.Value], sums: ir.Value | None,
              rows: list[int], amax_rows: list[int], mx: bool) -> ir.Value:
    """``y = y_init + scale · Σ_p slice_p(acc) + offset · rowsum``, back in the result's type."""
    c, slices = p.c, p.slices
    e_dims = [d for d in range(s.n_all) if d != s.red]
    e_pos = {d: i for i, d in enumerate(e_dims)}
    n_e = len(e_dims)
    acc_maps = [
        _ir.dims_map(n_e, [*[e_pos[d] for d in s.bt], ("c", i), *[e_pos[d] for d in p.m_dims], e_pos[p.n_dim]])
        for i in range(slices)
    ]
    leaves = list(p.leaves)
    leaf_vals, leaf_e_maps = [], []
    for leaf, lmap in zip(leaves, s.leaf_maps):
        emap = _ir.reindex(lmap, e_pos, n_e)
        if not any(leaf.value == v and str(emap) == str(m) for v, m in zip(leaf_vals, leaf_e_maps)):
            leaf_vals.append(leaf.value)
            leaf_e_maps.append(emap)
    env_keys = [(hash(v), str(m)) for v, m in zip(leaf_vals, leaf_e_maps)]
    ins = [*[acc] * slices, *amaxes, *([sums] if sums is not None else []), *leaf_vals]
    maps = [*acc_maps, *[_ir.dims_map(n_e, [e_pos[d] for d in amax_rows])] * len(amaxes),
            *([_ir.dims_map(n_e, [e_pos[d] for d in rows])] if sums is not None else []), *leaf_e_maps]
    out_map = _ir.reindex(c.maps[2], e_pos, n_e)
    out_t = _ir.elem_type(c.init)

    def contribution(args) -> ir.Value:
        accs, ams = args[:slices], args[slices:slices + len(amaxes)]
        am = ams[0]
        rest = list(args[slices + len(amaxes):])
        rs = rest.pop(0) if sums is not None else None
        env = dict(zip(env_keys, rest))
        if mx:  # sum over slices of 2**(e_i - 1) · acc_i (the codes are doubled E2M1 values)
            exps = [_mx.block_exponent(a, p.mx_rule) for a in ams]
            terms = [arith.MulFOp(_mx.pow2(arith.SubIOp(e, _ir.int_const(_i32(), 1)).result),
                                  arith.SIToFPOp(_ir.f32(), a).result).result for e, a in zip(exps, accs)]
            dot = terms[-1]
            for t in reversed(terms[:-1]):
                dot = arith.AddFOp(t, dot).result
        else:
            total = arith.SIToFPOp(_ir.f32(), accs[-1]).result
            for a in reversed(accs[:-1]):
                total = arith.DivFOp(total, _ir.f32_const(SLICE_RADIX)).result
                total = arith.AddFOp(arith.SIToFPOp(_ir.f32(), a).result, total).result
            dot = arith.MulFOp(row_scale(am), total).result

        def leaf_arg(leaf: Leaf) -> ir.Value:
            lmap = s.leaf_maps[leaves.index(leaf)]
            return env[(hash(leaf.value), str(_ir.reindex(lmap, e_pos, n_e)))]

        y = arith.MulFOp(scalar_expr(p.scale, leaf_arg), dot).result
        if rs is not None:
            y = arith.AddFOp(y, arith.MulFOp(scalar_expr(p.offset, leaf_arg), rs).result).result
        finite = arith.CmpFOp(arith.CmpFPredicate.OLT, am, _ir.f32_const(float("inf"))).result
        return arith.SelectOp(finite, y, _ir.f32_const(float("nan"))).result

    fill = _ir.producer(c.init)
    init_scalar = fill.operands[0] if fill is not None and fill.name == "linalg.fill" else None
    if s.kg is None:
        # A constant-filled init is read as its scalar, not as a tensor.
        init = fill.operands[1] if init_scalar is not None else c.init

        def epilogue(*args):
            out = init_scalar if init_scalar is not None else args[-1]
            return [_ir.from_f32(arith.AddFOp(_ir.to_f32(out), contribution(args[:-1])).result, out_t)]

        return _ir.generic(ins, [init], [*maps, out_map], [PARALLEL] * n_e, epilogue)[0]
    # Sum the groups' contributions in f32, then add the init and convert once.
    c_sz = [_ir.size_of(c.init, i) for i in range(_ir.tensor_type(c.init).rank)]
    partial = _ir.generic(
        ins, [_ir.filled(c_sz, _ir.f32_const(0.0))], [*maps, out_map],
        [REDUCTION if d == s.kg else PARALLEL for d in e_dims],
        lambda *args: [arith.AddFOp(args[-1], contribution(args[:-1])).result],
    )[0]
    ident = ir.AffineMap.get_identity(len(c_sz))
    if init_scalar is not None:
        return _ir.generic([partial], [fill.operands[1]], [ident, ident], [PARALLEL] * len(c_sz),
                           lambda v, _o: [_ir.from_f32(arith.AddFOp(_ir.to_f32(init_scalar), v).result, out_t)])[0]
    return _ir.generic([partial], [c.init], [ident, ident], [PARALLEL] * len(c_sz),
                       lambda v, o: [_ir.from_f32(arith.AddFOp(_ir.to_f32(o), v).result, out_t)])[0]


def _i8() -> ir.Type:
    return ir.IntegerType.get_signless(8)


def _i32() -> ir.Type:
    return ir.IntegerType.get_signless(32)


__all__ = ["FLT_MIN", "QMAX", "SLICE_RADIX", "emit"]
