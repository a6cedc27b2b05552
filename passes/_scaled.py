"""The block-scaled FP4 lowering of MXFP4 activation slices (``mx-lowering=scaled``).

Where the target has FP4 matrix units (gfx950: ``v_mfma_scale_f32_*_f8f6f4``), the MXFP4 slices are
multiplied as FP4 with their E8M0 block scales inside the instruction: one ``linalg.generic`` over
``(rows, n, kb, ki)`` whose body is ``scaling_extf(a, sa) · scaling_extf(w, sw)`` accumulated in f32
— the form IREE recognizes as a scaled matmul.  Rows are the P slices of every activation row.

That form is exact only when the weight really is MXFP4, so the pass proves it first:

- every element of the integer weight it traced is twice an E2M1 value (``_values.value_set``:
  the int8 decode of ``msd.quantize(weights="mxfp4")`` holds exactly {0, ±1, ±2, ±3, ±4, ±6, ±8, ±12});
- the weight's scale is ``2**(u(s) − 128)`` of a uint8 tensor ``s`` (``exp2``/``powf(2, ·)`` of
  ``uitofp(s) − 128``), so ``s`` itself is the E8M0 byte of ``w = (q/2) · 2**(u(s) − 127)``;
- no zero point or offset, no true batch dim.

Otherwise the pattern says why and the caller falls back to the exact int8 emulation.
"""

from __future__ import annotations

from iree.compiler import ir
from iree.compiler.dialects import arith, linalg
from iree.compiler.dialects import math as math_d

from . import _ir, _mx
from ._dequant import Const, Expr, Leaf, Node, NotHandled
from ._values import value_set

TWICE_E2M1 = frozenset({0, 1, 2, 3, 4, 6, 8, 12, -1, -2, -3, -4, -6, -8, -12})
E8M0_SCALE_OFFSET = -128.0  # scale = 2**(u(s) + offset): with −128, s is the E8M0 byte of q/2


def _identity_generic(v: ir.Value) -> ir.Operation | None:
    """The elementwise producer of ``v`` (identity maps, one result), or None."""
    op = _ir.producer(v)
    if op is None or op.name != "linalg.generic" or len(op.results) != 1:
        return None
    maps = _ir.maps_of(op)
    if any(m != ir.AffineMap.get_identity(m.n_dims) for m in maps):
        return None
    return op


def _scalar_source(v: ir.Value) -> tuple[ir.Operation | None, ir.Value]:
    """For a scalar inside a generic body: (the generic, the value), following block arguments out
    to the producing generic's yielded value."""
    if isinstance(v.owner, ir.Block):
        gen = v.owner.owner.operation
        tensor = gen.operands[ir.BlockArgument(v).arg_number]
        inner = _identity_generic(tensor)
        if inner is None:
            return None, tensor
        return inner, list(inner.regions[0].blocks[0].operations)[-1].operands[0]
    return None, v


def e8m0_bytes(leaf: Leaf) -> ir.Value:
    """The uint8 tensor ``s`` with ``leaf = 2**(u(s) − 128)`` elementwise; NotHandled otherwise."""
    gen = _identity_generic(leaf.value)
    if gen is None:
        raise NotHandled("the weight scale is not an elementwise function of an E8M0 byte tensor")
    v = list(gen.regions[0].blocks[0].operations)[-1].operands[0]
    op = _ir.producer(v)
    exponent = None
    if op is not None and op.name == "math.exp2":
        exponent = op.operands[0]
    elif op is not None and op.name == "math.powf":
        base = _ir.producer(op.operands[0])
        if base is not None and base.name == "arith.constant" and ir.FloatAttr(base.attributes["value"]).value == 2.0:
            exponent = op.operands[1]
    if exponent is None:
        raise NotHandled("the weight scale is not a power of two (exp2/powf(2, ·)) of its E8M0 bytes")
    offset = 0.0
    for _ in range(8):  # subf/addf of constants, across elementwise generics, down to uitofp(s)
        src_gen, exponent = _scalar_source(exponent)
        op = _ir.producer(exponent)
        if op is None:
            break
        if op.name in ("arith.subf", "arith.addf"):
            c = _ir.producer(op.operands[1])
            if c is None or c.name != "arith.constant":
                break
            value = ir.FloatAttr(c.attributes["value"]).value
            offset += -value if op.name == "arith.subf" else value
            exponent = op.operands[0]
            continue
        if op.name == "arith.uitofp":
            arg = op.operands[0]
            if isinstance(arg.owner, ir.Block) and arg.type == ir.IntegerType.get_signless(8):
                block_op = src_gen if src_gen is not None else gen
                s = block_op.operands[ir.BlockArgument(arg).arg_number]
                if offset != E8M0_SCALE_OFFSET:
                    raise NotHandled(f"the weight scale is 2**(s {offset:+g}): not the E8M0 byte of the"
                                     " FP4 weight (2**(s - 128) with codes doubled is)")
                return s
        break
    raise NotHandled("the weight scale is not 2**(uint8 - 128) of a byte tensor")


def check_weight(p) -> ir.Value:
    """Prove the scaled form exact for plan ``p``; return the E8M0 byte tensor of the weight."""
    if p.b_dims:
        raise NotHandled("a true batch dim (the block-scaled form handles plain matmuls)")
    if p.k_scale:
        raise NotHandled("a per-K scale folded into the activation (not an MX weight)")
    if p.offset is not None or p.q_shift:
        raise NotHandled("a zero point or offset term (FP4 weights have none)")
    values = value_set(p.q)
    if values is None or not values <= TWICE_E2M1:
        shown = "unbounded" if values is None else sorted(values)
        raise NotHandled(f"the integer weight is not provably twice an E2M1 value ({shown})")
    leaf = scale_leaf(p.scale)
    if leaf is None:
        raise NotHandled("the weight scale is an expression, not one E8M0 tensor")
    return e8m0_bytes(leaf)


def scale_leaf(e: Expr) -> Leaf | None:
    """The tensor the scale expression is, up to factors of exactly 1 (``sitofp(q)·1·s``)."""
    while isinstance(e, Node) and e.kind == "mul":
        ones = [a for a in e.args if isinstance(a, Const) and a.value == 1.0]
        rest = [a for a in e.args if not (isinstance(a, Const) and a.value == 1.0)]
        if not ones or len(rest) != 1:
            return None
        e = rest[0]
    return e if isinstance(e, Leaf) else None


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


def rewrite_scaled(p, slices: int, mx_rule: str, s_bytes: ir.Value, fmt: str = "mxfp4") -> ir.Value:
    """Emit the block-scaled form of plan ``p`` (checked by :func:`check_weight`): FP4 x FP4, or
    for ``fmt="mxfp8"`` E4M3 activation slices against the weight converted to E4M3 (exact)."""
    from .decompose_activations import EPILOGUE_MARK, _split_operand  # the shared K-split helper

    c, k, block = p.c, p.k, _mx.MX_BLOCK
    i8, i32, f32 = ir.IntegerType.get_signless(8), ir.IntegerType.get_signless(32), _ir.f32()
    f8 = ir.Type.parse("f8E4M3FN")
    elem, elem_name = (f8, "f8E4M3FN") if fmt == "mxfp8" else (ir.Type.parse("f4E2M1FN"), "f4E2M1FN")
    n_all, ki = c.n_dims + 1, c.n_dims
    x, x_map = _split_operand(p.x, p.x_map, k, ki, block, n_all)
    q, q_map = _split_operand(p.q, p.q_map, k, ki, block, n_all)
    leaf = scale_leaf(p.scale)
    s_map = _split_operand(leaf.value, leaf.map, k, ki, block, n_all)[1]
    x_dims, q_dims = _ir.dim_positions(x_map), _ir.dim_positions(q_map)

    def size(d: int) -> _ir.Size:
        if d in x_dims:
            return _ir.size_of(x, x_dims.index(d))
        return _ir.size_of(q, q_dims.index(d))

    m_dims, n_dim = p.m_dims, p.n_dim
    rows = [k, *m_dims]  # one E8M0 scale per (block, row) and slice
    nm = len(m_dims)
    r_pos = {d: i for i, d in enumerate([*rows, ki])}
    row_map = _ir.dims_map(len(r_pos), list(range(len(rows))))
    x_in_r = _ir.reindex(x_map, r_pos, len(r_pos))

    # 1. block maxima: of x, then of what each slice leaves.
    amaxes: list[ir.Value] = []
    for _ in range(slices):
        def body(v, *args):
            exps = [_mx.block_exponent(a, mx_rule, fmt) for a in args[:-1]]
            r = _mx.residual(_ir.to_f32(v), exps, fmt) if exps else _ir.to_f32(v)
            return [arith.MaximumFOp(math_d.AbsFOp(r).result, args[-1]).result]

        amaxes.append(_ir.generic(
            [x, *amaxes], [_ir.filled([size(d) for d in rows], _ir.f32_const(0.0))],
            [x_in_r, *[row_map] * len(amaxes), row_map], ["parallel"] * len(rows) + ["reduction"], body,
        )[0])

    # 2. the slices' E2M1 codes [kb, P, M..., 32] and E8M0 bytes [kb, P, M...].
    s_pos = {k: 0, **{d: 2 + j for j, d in enumerate(m_dims)}, ki: 2 + nm}
    n_s = 3 + nm

    def codes_body(xv, *args):
        exps = [_mx.block_exponent(a, mx_rule, fmt) for a in args[:-1]]
        vals = _mx.slice_chain(_ir.to_f32(xv), exps, fmt)
        pi = _ir_index(1)
        v = vals[-1]
        for i in range(slices - 2, -1, -1):
            v = arith.SelectOp(arith.CmpIOp(arith.CmpIPredicate.eq, pi, _ir.index_const(i)).result, vals[i], v).result
        return [arith.TruncFOp(f8, v).result if fmt == "mxfp8" else _code_from_twice(v)]

    amax_in_s = _ir.dims_map(n_s, [0, *range(2, 2 + nm)])
    codes = _ir.generic(
        [x, *amaxes], [_ir.empty([size(k), slices, *[size(d) for d in m_dims], block], f8 if fmt == "mxfp8" else i8)],
        [_ir.reindex(x_map, s_pos, n_s), *[amax_in_s] * slices, _ir.dims_map(n_s, list(range(n_s)))],
        ["parallel"] * n_s, codes_body,
    )[0]

    def bytes_body(*args):
        pi = _ir_index(1)
        exps = [_mx.block_exponent(a, mx_rule, fmt) for a in args[:-1]]
        v = exps[-1]
        for i in range(slices - 2, -1, -1):
            v = arith.SelectOp(arith.CmpIOp(arith.CmpIPredicate.eq, pi, _ir.index_const(i)).result, exps[i], v).result
        return [arith.TruncIOp(i8, arith.AddIOp(v, _ir.int_const(i32, 127)).result).result]

    n_b = 2 + nm
    a_bytes = _ir.generic(
        amaxes, [_ir.empty([size(k), slices, *[size(d) for d in m_dims]], i8)],
        [*[_ir.dims_map(n_b, [0, *range(2, 2 + nm)])] * slices, _ir.dims_map(n_b, list(range(n_b)))],
        ["parallel"] * n_b, bytes_body,
    )[0]
    lhs = _ir.collapse(codes, [[0], list(range(1, 2 + nm)), [2 + nm]])  # [kb, P·M, 32]
    lhs_scale = _ir.collapse(a_bytes, [[0], list(range(1, 2 + nm))])  # [kb, P·M]

    # 3. the weight as E2M1 codes [kb, N, 32] and its E8M0 bytes [kb, N] (weight-only: hoisted).
    w_pos = {k: 0, n_dim: 1, ki: 2}
    def weight_body(v, _o):
        twice = arith.SIToFPOp(f32, v).result
        if fmt == "mxfp8":  # every E2M1 value is an E4M3 value
            return [arith.TruncFOp(f8, arith.MulFOp(twice, _ir.f32_const(0.5)).result).result]
        return [_code_from_twice(twice)]

    rhs = _ir.generic(
        [q], [_ir.empty([size(k), size(n_dim), block], f8 if fmt == "mxfp8" else i8)],
        [_ir.reindex(q_map, w_pos, 3), _ir.dims_map(3, [0, 1, 2])], ["parallel"] * 3, weight_body,
    )[0]
    rhs_scale = _ir.generic(
        [s_bytes], [_ir.empty([size(k), size(n_dim)], i8)],
        [_ir.reindex(s_map, {k: 0, n_dim: 1}, 2), _ir.dims_map(2, [0, 1])], ["parallel"] * 2, lambda v, _o: [v],
    )[0]

    # 4. the block-scaled matmul: (r, n, kb, ki), f32 accumulation over all of K.
    rows_sz = _ir.size_of(lhs, 1)
    acc0 = _ir.filled([rows_sz, size(n_dim)], _ir.f32_const(0.0))

    def mma(a, b, sa, sb, acc):
        av = arith.ScalingExtFOp(f32, a, sa).result
        bv = arith.ScalingExtFOp(f32, b, sb).result
        return [arith.AddFOp(acc, arith.MulFOp(av, bv).result).result]

    acc = _ir.generic(
        [*([lhs, rhs] if fmt == "mxfp8" else [_as(lhs, "f4"), _as(rhs, "f4")]),
         _as(lhs_scale, "e8m0"), _as(rhs_scale, "e8m0")], [acc0],
        [_ir.dims_map(4, [2, 0, 3]), _ir.dims_map(4, [2, 1, 3]), _ir.dims_map(4, [2, 0]), _ir.dims_map(4, [2, 1]),
         _ir.dims_map(4, [0, 1])],
        ["parallel", "parallel", "reduction", "reduction"], mma,
    )[0]
    acc = _ir.expand(acc, [list(range(1 + nm)), [1 + nm]], [slices, *[size(d) for d in m_dims], size(n_dim)])

    # 5. sum the slices into the result (in the original op's parallel space).
    e_dims = [d for d in range(c.n_dims) if d != k]
    e_pos = {d: i for i, d in enumerate(e_dims)}
    n_e = len(e_dims)
    acc_maps = [_ir.dims_map(n_e, [("c", s), *[e_pos[d] for d in m_dims], e_pos[n_dim]]) for s in range(slices)]
    out_t = _ir.elem_type(c.init)

    def epilogue(*args):
        total = args[slices - 1]
        for a in reversed(args[:slices - 1]):
            total = arith.AddFOp(a, total).result
        return [_ir.from_f32(arith.AddFOp(_ir.to_f32(args[-1]), total).result, out_t)]

    y = _ir.generic([acc] * slices, [c.init], [*acc_maps, _ir.reindex(c.maps[2], e_pos, n_e)],
                    ["parallel"] * n_e, epilogue)[0]
    _ir.producer(y).attributes[EPILOGUE_MARK] = ir.UnitAttr.get()
    return y


def _ir_index(dim: int) -> ir.Value:
    return linalg.IndexOp(ir.IntegerAttr.get(ir.IntegerType.get_signless(64), dim)).result


__all__ = ["TWICE_E2M1", "check_weight", "e8m0_bytes", "rewrite_scaled", "scale_leaf"]
