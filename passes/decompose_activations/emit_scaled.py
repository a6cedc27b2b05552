"""Emitting the block-scaled form of a :class:`~.plan.Plan` (``mx-lowering=scaled``, ``act-format=mxfp8``).

Where the target has FP4 matrix units (gfx950: ``v_mfma_scale_f32_*_f8f6f4``), the MXFP4 slices are
multiplied as FP4 with their E8M0 block scales inside the instruction: one ``linalg.generic`` over
``(rows, n, kb, ki)`` whose body is ``scaling_extf(a, sa) · scaling_extf(w, sw)`` accumulated in f32
— the form IREE recognizes as a scaled matmul.  Rows are the P slices of every activation row.
``act-format=mxfp8``: E4M3 slices against the weight converted to E4M3 (exact: every E2M1 value is
an E4M3 value).

The plan has proven the form exact (:mod:`.fp4_weight`: the weight is MXFP4, ``p.e8m0`` its E8M0
bytes); otherwise the pass uses :mod:`.emit_int8`'s emulation (or refuses, for MXFP8).
"""

from __future__ import annotations

from iree.compiler import ir
from iree.compiler.dialects import arith
from iree.compiler.dialects import math as math_d

from msd.mx_format import MX_BLOCK

from .. import _ir, _mx
from .emit_common import mark_epilogue, residual_maxima, select_slice, slice_index, split_map, split_operand
from .plan import Plan

PARALLEL, REDUCTION = _ir.PARALLEL, _ir.REDUCTION


def emit(p: Plan) -> ir.Value:
    """Emit the block-scaled form of ``p.c`` (``p.e8m0`` set: an MXFP4 weight) at the current insertion
    point; return the value that replaces its result.  FP4 x FP4, or for ``act_format="mxfp8"`` E4M3
    activation slices against the weight converted to E4M3."""
    c, k, block, fmt = p.c, p.k, MX_BLOCK, p.act_format
    n_all, ki = c.n_dims + 1, c.n_dims
    x, x_map = split_operand(p.x, p.x_map, k, ki, block, n_all)
    q, q_map = split_operand(p.q, p.q_map, k, ki, block, n_all)
    s_map = split_map(p.e8m0.map, k, ki, n_all)
    x_dims, q_dims = _ir.dim_positions(x_map), _ir.dim_positions(q_map)

    def size(d: int) -> _ir.Size:
        if d in x_dims:
            return _ir.size_of(x, x_dims.index(d))
        return _ir.size_of(q, q_dims.index(d))

    # 1. block maxima: of x, then of what each slice leaves.
    rows = [k, *p.m_dims]  # one E8M0 scale per (block, row) and slice
    r_pos = {d: i for i, d in enumerate([*rows, ki])}
    amaxes = residual_maxima(x, _ir.reindex(x_map, r_pos, len(r_pos)), rows, 1, size, p.mx_rule, fmt, [], p.slices)

    # 2. the slices' codes [kb, P·M, 32] and E8M0 bytes [kb, P·M].
    lhs, lhs_scale = _activation_slices(p, x, x_map, amaxes, size)

    # 3. the weight as codes [kb, N, 32] and its E8M0 bytes [kb, N] (weight-only: hoisted).
    w_pos = {k: 0, p.n_dim: 1, ki: 2}

    def weight_body(v, _o):
        twice = arith.SIToFPOp(_ir.f32(), v).result
        if fmt == "mxfp8":  # every E2M1 value is an E4M3 value
            return [arith.TruncFOp(_f8(), arith.MulFOp(twice, _ir.f32_const(0.5)).result).result]
        return [_code_from_twice(twice)]

    rhs = _ir.generic(
        [q], [_ir.empty([size(k), size(p.n_dim), block], _code_type(fmt))],
        [_ir.reindex(q_map, w_pos, 3), _ir.dims_map(3, [0, 1, 2])], [PARALLEL] * 3, weight_body,
    )[0]
    rhs_scale = _ir.generic(
        [p.e8m0.value], [_ir.empty([size(k), size(p.n_dim)], _i8())],
        [_ir.reindex(s_map, {k: 0, p.n_dim: 1}, 2), _ir.dims_map(2, [0, 1])], [PARALLEL] * 2, lambda v, _o: [v],
    )[0]

    # 4. the block-scaled matmul: (r, n, kb, ki), f32 accumulation over all of K.
    acc0 = _ir.filled([_ir.size_of(lhs, 1), size(p.n_dim)], _ir.f32_const(0.0))

    def mma(a, b, sa, sb, acc):
        av = arith.ScalingExtFOp(_ir.f32(), a, sa).result
        bv = arith.ScalingExtFOp(_ir.f32(), b, sb).result
        return [arith.AddFOp(acc, arith.MulFOp(av, bv).result).result]

    acc = _ir.generic(
        [*([lhs, rhs] if fmt == "mxfp8" else [_as(lhs, "f4"), _as(rhs, "f4")]),
         _as(lhs_scale, "e8m0"), _as(rhs_scale, "e8m0")], [acc0],
        [_ir.dims_map(4, [2, 0, 3]), _ir.dims_map(4, [2, 1, 3]), _ir.dims_map(4, [2, 0]), _ir.dims_map(4, [2, 1]),
         _ir.dims_map(4, [0, 1])],
        [PARALLEL, PARALLEL, REDUCTION, REDUCTION], mma,
    )[0]
    nm = len(p.m_dims)
    acc = _ir.expand(acc, [list(range(1 + nm)), [1 + nm]], [p.slices, *[size(d) for d in p.m_dims], size(p.n_dim)])

    # 5. sum the slices into the result (in the original op's parallel space).
    return mark_epilogue(_sum_slices(p, acc))


def _activation_slices(p: Plan, x: ir.Value, x_map: ir.AffineMap, amaxes: list[ir.Value],
                       size) -> tuple[ir.Value, ir.Value]:
    """The slices' element codes ``[kb, P·M, 32]`` and E8M0 bytes ``[kb, P·M]``."""
    k, ki, fmt, slices, rule = p.k, p.c.n_dims, p.act_format, p.slices, p.mx_rule
    nm = len(p.m_dims)
    s_pos = {k: 0, **{d: 2 + j for j, d in enumerate(p.m_dims)}, ki: 2 + nm}
    n_s = 3 + nm

    def codes_body(xv, *args):
        exps = [_mx.block_exponent(a, rule, fmt) for a in args[:-1]]
        vals = _mx.slice_chain(_ir.to_f32(xv), exps, fmt)
        v = select_slice(slice_index(1), vals)
        return [arith.TruncFOp(_f8(), v).result if fmt == "mxfp8" else _code_from_twice(v)]

    amax_in_s = _ir.dims_map(n_s, [0, *range(2, 2 + nm)])
    codes = _ir.generic(
        [x, *amaxes], [_ir.empty([size(k), slices, *[size(d) for d in p.m_dims], MX_BLOCK], _code_type(fmt))],
        [_ir.reindex(x_map, s_pos, n_s), *[amax_in_s] * slices, _ir.dims_map(n_s, list(range(n_s)))],
        [PARALLEL] * n_s, codes_body,
    )[0]

    def bytes_body(*args):
        pi = slice_index(1)
        v = select_slice(pi, [_mx.block_exponent(a, rule, fmt) for a in args[:-1]])
        return [arith.TruncIOp(_i8(), arith.AddIOp(v, _ir.int_const(ir.IntegerType.get_signless(32), 127)).result)
                .result]

    n_b = 2 + nm
    a_bytes = _ir.generic(
        amaxes, [_ir.empty([size(k), slices, *[size(d) for d in p.m_dims]], _i8())],
        [*[_ir.dims_map(n_b, [0, *range(2, 2 + nm)])] * slices, _ir.dims_map(n_b, list(range(n_b)))],
        [PARALLEL] * n_b, bytes_body,
    )[0]
    lhs = _ir.collapse(codes, [[0], list(range(1, 2 + nm)), [2 + nm]])
    lhs_scale = _ir.collapse(a_bytes, [[0], list(range(1, 2 + nm))])
    return lhs, lhs_scale


def _sum_slices(p: Plan, acc: ir.Value) -> ir.Value:
    """``y = y_init + Σ_p acc[p]`` in the result's iteration space and type."""
    c, k, slices = p.c, p.k, p.slices
    e_dims = [d for d in range(c.n_dims) if d != k]
    e_pos = {d: i for i, d in enumerate(e_dims)}
    n_e = len(e_dims)
    acc_maps = [_ir.dims_map(n_e, [("c", s), *[e_pos[d] for d in p.m_dims], e_pos[p.n_dim]]) for s in range(slices)]
    out_t = _ir.elem_type(c.init)

    def epilogue(*args):
        total = args[slices - 1]
        for a in reversed(args[:slices - 1]):
            total = arith.AddFOp(a, total).result
        return [_ir.from_f32(arith.AddFOp(_ir.to_f32(args[-1]), total).result, out_t)]

    return _ir.generic([acc] * slices, [c.init], [*acc_maps, _ir.reindex(c.maps[2], e_pos, n_e)],
                       [PARALLEL] * n_e, epilogue)[0]


def _code_from_twice(d: ir.Value) -> ir.Value:
    """E2M1 code (i8, 0..15) of an f32 holding twice an E2M1 value."""
    mag = math_d.AbsFOp(d).result

    def f(v: float) -> ir.Value:
        return _ir.f32_const(v)

    def eq(a: ir.Value, v: float) -> ir.Value:
        return arith.CmpFOp(arith.CmpFPredicate.OEQ, a, f(v)).result

    small = arith.CmpFOp(arith.CmpFPredicate.OLE, mag, f(4.0)).result
    idx = arith.SelectOp(small, mag, arith.SelectOp(eq(mag, 6.0), f(5.0), arith.SelectOp(
        eq(mag, 8.0), f(6.0), f(7.0)).result).result).result
    neg = arith.CmpFOp(arith.CmpFPredicate.OLT, d, f(0.0)).result
    idx = arith.SelectOp(neg, arith.AddFOp(idx, f(8.0)).result, idx).result
    return arith.FPToSIOp(ir.IntegerType.get_signless(8), idx).result


def _as(v: ir.Value, element: str) -> ir.Value:
    """Tensor-level ``i8 → i4 → f4E2M1FN`` or ``i8 → f8E8M0FNU``."""
    t = _ir.tensor_type(v)
    shape = [t.get_dim_size(i) if not t.is_dynamic_dim(i) else ir.ShapedType.get_dynamic_size()
             for i in range(t.rank)]
    if element == "f4":
        i4 = arith.TruncIOp(ir.RankedTensorType.get(shape, ir.IntegerType.get_signless(4)), v).result
        return arith.BitcastOp(ir.RankedTensorType.get(shape, ir.Type.parse("f4E2M1FN")), i4).result
    return arith.BitcastOp(ir.RankedTensorType.get(shape, ir.Type.parse("f8E8M0FNU")), v).result


def _code_type(fmt: str) -> ir.Type:
    """The element type slice and weight codes are built in: E4M3 for MXFP8, else i8 (E2M1 codes)."""
    return _f8() if fmt == "mxfp8" else _i8()


def _f8() -> ir.Type:
    return ir.Type.parse("f8E4M3FN")


def _i8() -> ir.Type:
    return ir.IntegerType.get_signless(8)


__all__ = ["emit"]
