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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from iree.compiler import ir, rewrite
from iree.compiler.dialects import arith, cf, linalg
from iree.compiler.dialects import math as math_d

from msd.cost.hardware import profile_for
from msd.cost.model import DYNAMIC_M, Choice, Matmul, Policy, slices_for_bits
from msd.errors import OptionError

from . import _ir, _mx, _scaled
from ._dequant import Const, Expr, FloatAffine, IntAffine, Leaf, Node, NotHandled, Scalar, WeightTrace
from ._fusion import fold_elementwise_consumers
from .report import Decision, Report

NAME = "msd-decompose-activations"
SLICE_RADIX = 254.0  # each further slice resolves the previous slice's rounding residual ×254
QMAX = 127.0  # symmetric int8 range used by the slices
FLT_MIN = 1.17549435e-38  # amax floor: an all-zero row gets a finite scale and zero slices
SUPPORTED_SLICES = (1, 2, 3)
EPILOGUE_MARK = "msd.epilogue"  # set on epilogues while the pass runs, removed at its end


# ============================================================================= contractions
@dataclass
class Contraction:
    """A float contraction in iteration-space form, whatever op spelled it."""

    op: ir.Operation
    lhs: ir.Value
    rhs: ir.Value
    init: ir.Value
    maps: list[ir.AffineMap]  # lhs, rhs, init
    iterators: list[str]

    @property
    def n_dims(self) -> int:
        return self.maps[0].n_dims


def _named_maps(op: ir.Operation, default: list[list[int]], n: int) -> list[ir.AffineMap]:
    if "indexing_maps" in op.attributes:
        return _ir.maps_of(op)
    return [_ir.dims_map(n, d) for d in default]


def _contraction_from_named(op: ir.Operation, maps: list[ir.AffineMap]) -> Contraction:
    lhs, rhs, init = op.operands
    n = maps[0].n_dims
    out_dims = _ir.used_dims(maps[2])
    iterators = ["parallel" if d in out_dims else "reduction" for d in range(n)]
    return Contraction(op, lhs, rhs, init, maps, iterators)


def _contraction_from_generic(op: ir.Operation) -> Contraction | None:
    """A ``linalg.generic`` computing ``out += a*b`` (with optional ``extf`` of a, b)."""
    if len(op.operands) != 3 or len(op.results) != 1:
        return None
    block = op.regions[0].blocks[0]
    args = list(block.arguments)
    body = list(block.operations)
    yielded = body[-1].operands[0]
    add = _ir.producer(yielded)
    if add is None or add.name != "arith.addf":
        return None
    x, y = add.operands
    if x == args[2]:
        prod = y
    elif y == args[2]:
        prod = x
    else:
        return None
    mul = _ir.producer(prod)
    if mul is None or mul.name != "arith.mulf":
        return None

    def root_arg(v: ir.Value) -> ir.Value:
        o = _ir.producer(v)
        if o is not None and o.name == "arith.extf":
            return o.operands[0]
        return v

    if {root_arg(v) for v in mul.operands} != {args[0], args[1]} or len(body) > 5:
        return None
    iterators = [str(a).split("<")[-1].rstrip(">") for a in ir.ArrayAttr(op.attributes["iterator_types"])]
    lhs, rhs, init = op.operands
    return Contraction(op, lhs, rhs, init, _ir.maps_of(op), iterators)


# ============================================================================= the rewrite
@dataclass
class Plan:
    """Everything the rewrite needs, established by matching."""

    c: Contraction
    x: ir.Value
    x_map: ir.AffineMap
    q: ir.Value
    q_map: ir.AffineMap
    scale: Expr
    offset: Expr | None
    leaves: list[Leaf]
    k: int
    m_dims: list[int]
    n_dim: int
    b_dims: list[int]
    notes: list[str]
    group: int | None = None  # K is split into groups of this size (group-wise scales, or overflow)
    k_size: int | None = None
    q_shift: int = 0  # q is read unsigned: the matmul uses q - q_shift (exact, fits int8)
    k_scale: list[Leaf] | None = None  # per-K scale factors folded into the activation first


def plan(c: Contraction) -> Plan:
    """Match a contraction; raise :class:`NotHandled` with the reason when it cannot be."""
    out_t = _ir.elem_type(c.op.results[0])
    if not _ir.is_float(out_t) or isinstance(out_t, ir.F64Type):
        raise NotHandled(f"result element type {out_t} (f32, f16 or bf16 expected)")
    reductions = [d for d, t in enumerate(c.iterators) if t == "reduction"]
    if len(reductions) != 1:
        raise NotHandled(f"{len(reductions)} reduction dims (exactly one expected)")
    (k,) = reductions
    errors = []
    for w_idx in (1, 0):
        try:
            return _plan_with_weight(c, k, w_idx)
        except NotHandled as e:
            errors.append(e)
    # A reason about an integer weight beats "this operand is just a float tensor".
    for e in errors:
        if e.found_integer:
            raise e
    raise NotHandled("no operand is dequantized from an integer tensor (float weights)")


def _plan_with_weight(c: Contraction, k: int, w_idx: int) -> Plan:
    operands = [c.lhs, c.rhs]
    w, x = operands[w_idx], operands[1 - w_idx]
    w_map, x_map = c.maps[w_idx], c.maps[1 - w_idx]
    trace = WeightTrace(k)
    try:
        return _plan_traced(c, k, x, x_map, trace, trace.tensor(w, w_map))
    except NotHandled as e:
        e.found_integer = trace.found_integer
        raise


def _plan_traced(c: Contraction, k: int, x: ir.Value, x_map: ir.AffineMap, trace: WeightTrace,
                 form: FloatAffine | IntAffine) -> Plan:
    x_t = _ir.elem_type(x)
    if isinstance(form, IntAffine):
        raise NotHandled("the contraction reads an integer tensor directly (no int-to-float dequantization)")
    if form.scale is None:
        raise NotHandled("float tensor varying along the reduction dim: not a dequantized weight")
    if len({(hash(q.value), str(q.map)) for q in trace.q_leaves}) != 1:
        raise NotHandled("more than one integer tensor varies along the reduction dim")
    q_leaf = trace.q_leaves[0]
    if not _ir.is_float(x_t) or isinstance(x_t, ir.F64Type):
        raise NotHandled(f"activation element type {x_t} (f32, f16 or bf16 expected)")
    x_dims = _ir.dim_positions(x_map)
    c_dims = _ir.dim_positions(c.maps[2])
    if x_dims is None or len(set(x_dims)) != len(x_dims):
        raise NotHandled("activation read through a non-permutation map")
    q_use = [_ir.k_usage(e, k) for e in q_leaf.map.results]
    groups = {u[1] for u in q_use if u[0] in ("kgroup", "kin")}
    q_dims = [u[1] for u in q_use if u[0] == "dim"] + ([k] if groups else [])
    split_kinds = sorted(u[0] for u in q_use if u[0] != "dim")
    if len(set(q_dims)) != len(q_dims) or (groups and split_kinds != ["kgroup", "kin"]):
        raise NotHandled("integer weight read through a non-permutation map")
    if c_dims is None or k in c_dims:
        raise NotHandled("result indexed by the reduction dim")
    if k not in x_dims:
        raise NotHandled("activation does not vary along the reduction dim")
    m_dims, n_dims, b_dims = [], [], []
    for d in range(c.n_dims):
        if d == k:
            continue
        where = (d in x_dims, d in q_dims, d in c_dims)
        if where == (True, False, True):
            m_dims.append(d)
        elif where == (False, True, True):
            n_dims.append(d)
        elif where == (True, True, True):
            b_dims.append(d)
        else:
            raise NotHandled(f"iteration dim d{d} is neither batch, M nor N")
    m_dims.sort(key=x_dims.index)
    if len(n_dims) != 1:
        raise NotHandled(f"{len(n_dims)} output-channel dims in the weight (exactly one expected)")
    if len(b_dims) > 1:
        raise NotHandled(f"{len(b_dims)} batch dims shared by weight and activation (at most one)")
    allowed = {*b_dims, *n_dims}
    scale, k_scale = _split_k_scale(form, trace, k, {*b_dims, k}, n_dims[0])
    for leaf in trace.leaves:
        reach = trace.k_reach(leaf.map)
        if reach == "full":
            raise NotHandled(f"scale or zero point varies along the reduction dim within a group ({leaf.value.type})")
        if reach == "group":
            groups |= {u[1] for u in map(lambda e: _ir.k_usage(e, k), leaf.map.results) if u and u[0] == "kgroup"}
        extra = _ir.used_dims(leaf.map) - allowed - {k}
        if extra:
            raise NotHandled(f"scale or zero point varies along an activation dim ({leaf.value.type})")
    if len(groups) > 1:
        raise NotHandled(f"inconsistent group sizes along the reduction dim: {sorted(groups)}")
    group = groups.pop() if groups else None
    x_t = _ir.tensor_type(x)
    k_pos = x_dims.index(k)
    k_size = None if x_t.is_dynamic_dim(k_pos) else x_t.get_dim_size(k_pos)
    group = _accumulation_chunk(k_size, group)
    if group is not None and b_dims:
        raise NotHandled("group-wise or K-split weights together with a batch dim are not supported")
    return Plan(
        c, x, x_map, q_leaf.value, q_leaf.map, scale, form.offset, trace.leaves, k,
        m_dims, n_dims[0], b_dims, trace.notes + (["per-K scale folded into the activation"] if k_scale else [])
        + (["dynamic K, checked against the int32 bound at run time"] if k_size is None else []),
        group, k_size, trace.q_shift, k_scale,
    )


def _factors(e: Expr) -> list[Expr]:
    if isinstance(e, Node) and e.kind == "mul":
        return [f for a in e.args for f in _factors(a)]
    return [e]


def _mentions(e: Expr, leaves: list[Leaf]) -> bool:
    if isinstance(e, Leaf):
        return any(e is leaf for leaf in leaves)
    if isinstance(e, Node):
        return any(_mentions(a, leaves) for a in e.args if isinstance(a, (Leaf, Node)))
    return False


def _split_k_scale(form: FloatAffine, trace: WeightTrace, k: int, x_side: set[int],
                   n_dim: int) -> tuple[Expr, list[Leaf] | None]:
    """``scale = s_k · rest`` where ``s_k`` varies along K only (e.g. a per-token V scale in
    ``P·V``): since ``Σ_k x[k]·s_k[k]·q[k, n] = Σ_k (x[k]·s_k[k])·q[k, n]``, ``s_k`` is folded into
    the activation and ``rest`` stays in the epilogue.  Anything else varying along K is refused."""
    if not trace.k_leaves:
        return form.scale, None
    for leaf in trace.k_leaves:
        if _ir.used_dims(leaf.map) - x_side or n_dim in _ir.used_dims(leaf.map):
            origin = _ir.producer(leaf.value).name if _ir.producer(leaf.value) is not None else "argument"
            raise NotHandled(f"float tensor varying along the reduction dim and the output channels ({origin}"
                             f" {leaf.value.type}) in the weight chain: a float weight")
    if form.offset is not None and _mentions(form.offset, trace.k_leaves):
        raise NotHandled("a zero point or offset varies along the reduction dim")
    factors = _factors(form.scale)
    k_part = [f for f in factors if isinstance(f, Leaf) and any(f is leaf for leaf in trace.k_leaves)]
    rest = [f for f in factors if not any(f is g for g in k_part)]
    if any(_mentions(f, trace.k_leaves) for f in rest) or len(k_part) != len(trace.k_leaves):
        raise NotHandled("a scale varying along the reduction dim enters the weight other than as a factor")
    out: Expr = rest[0] if rest else Const(1.0)
    for f in rest[1:]:
        out = Node("mul", (out, f))
    return out, k_part


def _drop_unit_dims(value: ir.Value, amap: ir.AffineMap) -> tuple[ir.Value, ir.AffineMap]:
    """Collapse the size-1 dims of ``value`` that ``amap`` reads at constant 0 (a weight sliced
    out of a bigger tensor, e.g. one layer and batch of a KV cache) into a neighbour."""
    t = _ir.tensor_type(value)
    unit = [i for i, e in enumerate(amap.results)
            if isinstance(e, ir.AffineConstantExpr) and e.value == 0 and t.get_dim_size(i) == 1]
    if not unit or len(unit) == t.rank:
        return value, amap
    kept = [i for i in range(t.rank) if i not in unit]
    groups: list[list[int]] = [[i] for i in kept]
    for u in unit:  # join the next kept dim, or the last one
        nxt = next((g for g in groups if g[0] > u), groups[-1])
        nxt.append(u)
        nxt.sort()
    groups.sort()
    return _ir.collapse(value, groups), ir.AffineMap.get(amap.n_dims, 0, [amap.results[i] for i in kept])


def _fold_k_scale(p: Plan) -> None:
    """Replace ``p.x`` by ``x · s_k`` (elementwise, in x's own layout)."""
    if not p.k_scale:
        return
    x_dims = _ir.dim_positions(p.x_map)
    rank = len(x_dims)
    pos = {d: i for i, d in enumerate(x_dims)}
    maps = [ir.AffineMap.get_identity(rank), *[_ir.reindex(leaf.map, pos, rank) for leaf in p.k_scale]]
    xt = _ir.tensor_type(p.x)

    def body(xv, *args):
        v = _ir.to_f32(xv)
        for s in args[:-1]:
            v = arith.MulFOp(v, _ir.to_f32(s)).result
        return [_ir.from_f32(v, xt.element_type)]

    sizes = [_ir.size_of(p.x, i) for i in range(rank)]
    p.x = _ir.generic([p.x, *[leaf.value for leaf in p.k_scale]], [_ir.empty(sizes, xt.element_type)],
                      [*maps, ir.AffineMap.get_identity(rank)], ["parallel"] * rank, body)[0]
    p.k_scale = None


# |q_x| ≤ 127 and |q_w| ≤ 128: this many products always fit an int32 accumulator.
MAX_K_PER_ACCUMULATOR = (2**31 - 1) // (127 * 128)
MIN_K_CHUNK = 1024


def _accumulation_chunk(k_size: int | None, group: int | None) -> int | None:
    """The K chunk each int32 accumulator covers (None: all of K) — proven not to overflow."""
    if group is not None:
        if k_size is None:
            raise NotHandled("group-wise scales with a dynamic reduction size")
        if k_size % group:
            raise NotHandled(f"reduction size {k_size} is not a multiple of the group size {group}")
        if group > MAX_K_PER_ACCUMULATOR:
            raise NotHandled(f"group size {group} could overflow the int32 accumulator")
        return group if group < k_size else None
    if k_size is None:  # one accumulator; _guard_reduction_size checks K at run time
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


def _split_operand(value: ir.Value, amap: ir.AffineMap, k: int, ki: int, group: int, n_all: int):
    """Re-index ``value`` in the K-split space (K → kg·g + ki, kg keeping K's position).

    A tensor dim read as all of K is expanded into [K/g, g]; ``k floordiv g`` reads kg and
    ``k mod g`` reads ki.  Returns the (possibly expanded) value and its map.
    """
    exprs, groups, sizes, t = [], [], [], _ir.tensor_type(value)
    for i, e in enumerate(amap.results):
        u = _ir.k_usage(e, k)
        base = len(exprs)
        if u == ("dim", k):
            exprs += [ir.AffineDimExpr.get(k), ir.AffineDimExpr.get(ki)]
            groups.append([base, base + 1])
            sizes += [t.get_dim_size(i) // group, group]
            continue
        if u is not None and u[0] == "kgroup":
            exprs.append(ir.AffineDimExpr.get(k))
        elif u is not None and u[0] == "kin":
            exprs.append(ir.AffineDimExpr.get(ki))
        else:
            exprs.append(e.compose(ir.AffineMap.get_identity(n_all)))
        groups.append([base])
        sizes.append(_ir.size_of(value, i))
    return _ir.expand(value, groups, sizes), ir.AffineMap.get(n_all, 0, exprs)


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


def _guard_reduction_size(p: Plan) -> None:
    """A dynamic K is only known at run time: emit ``cf.assert K <= MAX_K_PER_ACCUMULATOR`` before the
    rewrite, so a call whose int32 accumulation could overflow fails with this message instead of
    returning a wrong answer (e.g. attention ``P·V`` over a cache of dynamic length)."""
    k_size = _ir.size_of(p.x, _ir.dim_positions(p.x_map).index(p.k))
    bound = _ir.index_const(MAX_K_PER_ACCUMULATOR)
    ok = arith.CmpIOp(arith.CmpIPredicate.ule, k_size, bound).result
    cf.AssertOp(ok, f"msd: reduction size above {MAX_K_PER_ACCUMULATOR} could overflow the int32 accumulator"
                    " of an int8 matmul")


def rewrite_contraction(p: Plan, slices: int, act_scale: str = "group", act_format: str = "int8",
                        mx_rule: str = "ocp") -> ir.Value:
    """Emit the MSD form of ``p.c`` at the current insertion point; return the new result.

    ``act_format="mxfp4"``: the slices are MXFP4 (per row and 32-block of K, an E8M0 scale of its
    own per slice, doubled E2M1 codes as int8) instead of int8 with scale ``s1/254**i``; ``p.group``
    must be 32 (the MX block), ``mx_rule`` picks the block-exponent rule (``_mx.block_exponent``).
    """
    c, k = p.c, p.k
    mx = act_format == "mxfp4"
    if p.k_size is None:
        _guard_reduction_size(p)
    _fold_k_scale(p)
    p.q, p.q_map = _drop_unit_dims(p.q, p.q_map)
    if mx:
        act_scale = "group"
    f32, i8, i32 = _ir.f32(), ir.IntegerType.get_signless(8), ir.IntegerType.get_signless(32)
    leaves = list(p.leaves)
    p_q = p.q
    if p.q_shift:  # unsigned codes → signed i8 (q - shift); weight-only, so IREE hoists it to load time
        rank = _ir.tensor_type(p.q).rank
        ident = ir.AffineMap.get_identity(rank)
        p_q = _ir.generic(
            [p.q], [_ir.empty([_ir.size_of(p.q, i) for i in range(rank)], i8)], [ident, ident],
            ["parallel"] * rank, lambda v, _o: [arith.SubIOp(v, _ir.int_const(i8, p.q_shift)).result],
        )[0]
    if p.group is None:
        n_all, red, kg = c.n_dims, k, None
        x, x_map, q, q_map = p.x, p.x_map, p_q, p.q_map
        leaf_maps = [leaf.map for leaf in leaves]
    else:
        n_all, red, kg = c.n_dims + 1, c.n_dims, k
        x, x_map = _split_operand(p.x, p.x_map, k, red, p.group, n_all)
        q, q_map = _split_operand(p_q, p.q_map, k, red, p.group, n_all)
        leaf_maps = [_split_operand(leaf.value, leaf.map, k, red, p.group, n_all)[1] for leaf in leaves]
    bt = [*p.b_dims, *([kg] if kg is not None else [])]  # batch dims of the int matmul
    if bt:
        q, q_map = _batch_first(q, q_map, bt[0])
    x_dims, q_dims = _ir.dim_positions(x_map), _ir.dim_positions(q_map)

    def size(d: int) -> _ir.Size:
        if d in x_dims:
            return _ir.size_of(x, x_dims.index(d))
        return _ir.size_of(q, q_dims.index(d))

    nb, nm = len(bt), len(p.m_dims)
    bt_sz, m_sz = [size(d) for d in bt], [size(d) for d in p.m_dims]
    red_sz, n_sz = size(red), size(p.n_dim)
    rows = [*bt, *p.m_dims]  # the slices' rows: one activation scale per (batch, group, M)
    amax_rows = rows if (kg is None or act_scale == "group") else [*p.b_dims, *p.m_dims]

    def row_reduction(row_dims: list[int], body, n_out: int) -> list[ir.Value]:
        reduced = [d for d in range(n_all) if d in x_dims and d not in row_dims]
        pos = {d: i for i, d in enumerate([*row_dims, *reduced])}
        outs = [_ir.filled([size(d) for d in row_dims], _ir.f32_const(0.0)) for _ in range(n_out)]
        return _ir.generic(
            [x], outs,
            [_ir.reindex(x_map, pos, len(pos)), *[_ir.dims_map(len(pos), list(range(len(row_dims))))] * n_out],
            ["parallel"] * len(row_dims) + ["reduction"] * len(reduced), body,
        )

    # 1. amax per row (or per row and group), and the row/group sums when the weight has an offset.
    def amax_body(v, o, *sum_out):
        r = [arith.MaximumFOp(math_d.AbsFOp(_ir.to_f32(v)).result, o).result]
        return r + [arith.AddFOp(_ir.to_f32(v), sum_out[0]).result] if sum_out else r

    sums = None
    if p.offset is not None and amax_rows == rows:  # one pass over x for both
        amax, sums = row_reduction(rows, amax_body, 2)
    else:
        amax = row_reduction(amax_rows, amax_body, 1)[0]
        if p.offset is not None:
            sums = row_reduction(rows, lambda v, o: [arith.AddFOp(_ir.to_f32(v), o).result], 1)[0]
    amaxes = [amax]  # MX: one block maximum per slice, each of the residual the slices before leave
    if mx:
        reduced = [d for d in range(n_all) if d in x_dims and d not in rows]
        r_pos = {d: i for i, d in enumerate([*rows, *reduced])}
        row_map = _ir.dims_map(len(r_pos), list(range(len(rows))))
        for _ in range(1, slices):
            def residual_amax(v, *args):
                exps = [_mx.block_exponent(a, mx_rule) for a in args[:-1]]
                r = _mx.residual(_ir.to_f32(v), exps)
                return [arith.MaximumFOp(math_d.AbsFOp(r).result, args[-1]).result]

            amaxes.append(_ir.generic(
                [x, *amaxes], [_ir.filled([size(d) for d in rows], _ir.f32_const(0.0))],
                [_ir.reindex(x_map, r_pos, len(r_pos)), *[row_map] * len(amaxes), row_map],
                ["parallel"] * len(rows) + ["reduction"] * len(reduced), residual_amax,
            )[0])

    # 2. the slices, stacked: [batch, p, M..., K] int8.
    s_pos = {d: i for i, d in enumerate(bt)}
    s_pos.update({d: nb + 1 + j for j, d in enumerate(p.m_dims)})
    s_pos[red] = nb + nm + 1
    n_s = nb + nm + 2
    amax_in_s = _ir.dims_map(n_s, [s_pos[d] for d in amax_rows])

    def slice_body(xv, *args):
        pi = linalg.IndexOp(ir.IntegerAttr.get(ir.IntegerType.get_signless(64), nb)).result if slices > 1 else None
        am = args[0]
        t = arith.DivFOp(_ir.to_f32(xv), _row_scale(am)).result
        finite = arith.CmpFOp(
            arith.CmpFPredicate.OLT, math_d.AbsFOp(t).result, _ir.f32_const(float("inf"))
        ).result
        digits = []
        if mx:
            digits = _mx.slice_chain(_ir.to_f32(xv), [_mx.block_exponent(a, mx_rule) for a in args[:-1]])
        for i in range(0 if mx else slices):
            d = math_d.RoundEvenOp(t).result
            d = arith.MinimumFOp(arith.MaximumFOp(d, _ir.f32_const(-QMAX)).result, _ir.f32_const(QMAX)).result
            digits.append(d)
            if i + 1 < slices:
                t = arith.MulFOp(arith.SubFOp(t, d).result, _ir.f32_const(SLICE_RADIX)).result
        v = digits[-1]
        for i in range(slices - 2, -1, -1):
            is_i = arith.CmpIOp(arith.CmpIPredicate.eq, pi, _ir.index_const(i)).result
            v = arith.SelectOp(is_i, digits[i], v).result
        v = arith.SelectOp(finite, v, _ir.f32_const(0.0)).result
        return [arith.FPToSIOp(i8, v).result]

    stacked = _ir.generic(
        [x, *amaxes], [_ir.empty([*bt_sz, slices, *m_sz, red_sz], i8)],
        [_ir.reindex(x_map, s_pos, n_s), *[amax_in_s] * len(amaxes), _ir.dims_map(n_s, list(range(n_s)))],
        ["parallel"] * n_s, slice_body,
    )[0]

    # 3. one int8 x int8 -> int32 matmul of all slices against the integer weight.
    groups = [*[[i] for i in range(nb)], list(range(nb, nb + nm + 1)), [nb + nm + 1]]
    lhs = _ir.collapse(stacked, groups)
    acc0 = _ir.filled([*bt_sz, _ir.product([slices, *m_sz]), n_sz], _ir.int_const(i32, 0))
    mm_pos = {p.n_dim: nb + 1, red: nb + 2}
    mm_pos.update({d: 0 for d in bt})
    n_mm = nb + 3
    mm_maps = [
        _ir.dims_map(n_mm, [*range(nb), nb, nb + 2]),
        _ir.reindex(q_map, mm_pos, n_mm),
        _ir.dims_map(n_mm, [*range(nb), nb, nb + 1]),
    ]
    builder = linalg.batch_matmul if nb else linalg.matmul
    acc = builder(lhs, q, outs=[acc0], indexing_maps=mm_maps)
    acc = _ir.expand(acc, groups[:-1] + [[nb + nm + 1]], [*bt_sz, slices, *m_sz, n_sz])

    # 4. the epilogue, in the original op's parallel space (plus a reduction over K groups).
    e_dims = [d for d in range(n_all) if d != red]
    e_pos = {d: i for i, d in enumerate(e_dims)}
    n_e = len(e_dims)
    acc_maps = [
        _ir.dims_map(n_e, [*[e_pos[d] for d in bt], ("c", s), *[e_pos[d] for d in p.m_dims], e_pos[p.n_dim]])
        for s in range(slices)
    ]
    leaf_vals, leaf_e_maps = [], []
    for leaf, lmap in zip(leaves, leaf_maps):
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
            exps = [_mx.block_exponent(a, mx_rule) for a in ams]
            terms = [arith.MulFOp(_mx.pow2(arith.SubIOp(e, _ir.int_const(i32, 1)).result),
                                  arith.SIToFPOp(f32, a).result).result for e, a in zip(exps, accs)]
            dot = terms[-1]
            for t in reversed(terms[:-1]):
                dot = arith.AddFOp(t, dot).result
        else:
            total = arith.SIToFPOp(f32, accs[-1]).result
            for a in reversed(accs[:-1]):
                total = arith.DivFOp(total, _ir.f32_const(SLICE_RADIX)).result
                total = arith.AddFOp(arith.SIToFPOp(f32, a).result, total).result
            dot = arith.MulFOp(_row_scale(am), total).result

        def leaf_arg(leaf: Leaf) -> ir.Value:
            lmap = leaf_maps[leaves.index(leaf)]
            return env[(hash(leaf.value), str(_ir.reindex(lmap, e_pos, n_e)))]

        y = arith.MulFOp(_emit(p.scale, leaf_arg), dot).result
        if rs is not None:
            y = arith.AddFOp(y, arith.MulFOp(_emit(p.offset, leaf_arg), rs).result).result
        finite = arith.CmpFOp(arith.CmpFPredicate.OLT, am, _ir.f32_const(float("inf"))).result
        return arith.SelectOp(finite, y, _ir.f32_const(float("nan"))).result

    fill = _ir.producer(c.init)
    init_scalar = fill.operands[0] if fill is not None and fill.name == "linalg.fill" else None
    if kg is None:
        # A constant-filled init is read as its scalar, not as a tensor.
        init = fill.operands[1] if init_scalar is not None else c.init

        def epilogue(*args):
            out = init_scalar if init_scalar is not None else args[-1]
            return [_ir.from_f32(arith.AddFOp(_ir.to_f32(out), contribution(args[:-1])).result, out_t)]

        y = _ir.generic(ins, [init], [*maps, out_map], ["parallel"] * n_e, epilogue)[0]
    else:
        # Sum the groups' contributions in f32, then add the init and convert once.
        c_sz = [_ir.size_of(c.init, i) for i in range(_ir.tensor_type(c.init).rank)]
        partial = _ir.generic(
            ins, [_ir.filled(c_sz, _ir.f32_const(0.0))], [*maps, out_map],
            ["reduction" if d == kg else "parallel" for d in e_dims],
            lambda *args: [arith.AddFOp(args[-1], contribution(args[:-1])).result],
        )[0]
        ident = ir.AffineMap.get_identity(len(c_sz))
        if init_scalar is not None:
            y = _ir.generic([partial], [fill.operands[1]], [ident, ident], ["parallel"] * len(c_sz),
                            lambda v, _o: [_ir.from_f32(arith.AddFOp(_ir.to_f32(init_scalar), v).result, out_t)])[0]
        else:
            y = _ir.generic([partial], [c.init], [ident, ident], ["parallel"] * len(c_sz),
                            lambda v, o: [_ir.from_f32(arith.AddFOp(_ir.to_f32(o), v).result, out_t)])[0]
    _ir.producer(y).attributes[EPILOGUE_MARK] = ir.UnitAttr.get()
    return y


def _row_scale(amax: ir.Value) -> ir.Value:
    """``s = max(amax, FLT_MIN) / 127``: the first slice's scale (shared by slices and epilogue)."""
    floor = arith.MaximumFOp(amax, _ir.f32_const(FLT_MIN)).result
    return arith.DivFOp(floor, _ir.f32_const(QMAX)).result


def _emit(e: Expr, leaf_arg: Callable[[Leaf], ir.Value]) -> ir.Value:
    """Emit a K-invariant expression as f32 scalar ops."""
    if isinstance(e, Const):
        return _ir.f32_const(e.value)
    if isinstance(e, Scalar):
        return _ir.to_f32(e.value)
    if isinstance(e, Leaf):
        v = leaf_arg(e)
        if isinstance(v.type, ir.IntegerType):
            return arith.SIToFPOp(_ir.f32(), v).result
        return _ir.to_f32(v)
    if e.kind == "int":
        value, unsigned = e.args
        if isinstance(value, Const):
            return _ir.f32_const(value.value)
        cvt = arith.UIToFPOp if unsigned else arith.SIToFPOp
        return cvt(_ir.f32(), leaf_arg(value)).result
    a = [_emit(x, leaf_arg) for x in e.args]
    if e.kind == "neg":
        return arith.NegFOp(a[0]).result
    op = {"add": arith.AddFOp, "mul": arith.MulFOp, "div": arith.DivFOp}[e.kind]
    return op(a[0], a[1]).result


# ============================================================================= patterns
class DecomposeContraction:
    """Base of the patterns: turns one root op into a :class:`Contraction`, then rewrites it."""

    root: str = ""
    policy: Policy | None = None  # set by run() for target=...: a cost model decides per contraction

    def __init__(self, slices: int, act_scale: str, report: Report, act_format: str = "int8",
                 mx_rule: str = "ocp", mx_lowering: str = "int8") -> None:
        self.slices = slices
        self.act_scale = act_scale
        self.act_format = act_format
        self.mx_rule = mx_rule
        self.mx_lowering = mx_lowering
        self.report = report
        self.seen: dict[int, int] = {}

    def contraction(self, op: ir.Operation) -> Contraction | None:
        raise NotImplementedError

    def __call__(self, op: ir.OpView, rewriter: rewrite.PatternRewriter) -> bool:
        op = op.operation
        c = self.contraction(op)
        if c is None or not _ir.is_float(_ir.elem_type(op.results[0])):
            return True  # not a float contraction: not a candidate, nothing to report
        mx8_weight = None
        try:
            p = plan(c)
            if self.act_format != "int8":
                _mx_blocks(p, self.act_format)
            if self.act_format == "mxfp8":
                try:
                    mx8_weight = _scaled.check_weight(p)
                except NotHandled as e:
                    raise NotHandled(f"act-format=mxfp8 is lowered as a block-scaled E4M3 matmul against an"
                                     f" MXFP4 weight: {e}") from None
        except NotHandled as e:
            self._record(op, False, str(e))
            return True
        slices, cost, note = self.slices, {}, ""
        if self.policy is not None:
            choice, cost = _consult(self.policy, p)
            if choice is None:
                note = "; not costed (N or K not static): rewritten with the requested slices"
            elif not choice.rewrite:
                self._record(op, False, choice.reason, **cost)
                return True
            else:
                slices, note = choice.slices, "; " + choice.reason
        scaled, why_not = (mx8_weight, "") if self.act_format == "mxfp8" else (None, "")
        if self.act_format == "mxfp4" and self.mx_lowering == "scaled":
            try:
                scaled = _scaled.check_weight(p)
            except NotHandled as e:
                why_not = f"; block-scaled FP4 form not used ({e}): int8 emulation"
        with rewriter.ip, op.location:
            if scaled is not None:
                y = _scaled.rewrite_scaled(p, slices, self.mx_rule, scaled, self.act_format)
            else:
                y = rewrite_contraction(p, slices, self.act_scale, self.act_format, self.mx_rule)
        if scaled is not None and self.act_format == "mxfp8":
            what = (f"{slices} MXFP8 (E4M3) slice(s) ({self.mx_rule} scale rule) x MXFP4 weight {p.q.type} as E4M3,"
                    " block-scaled FP8 matmul (scaling_extf)")
        elif scaled is not None:
            what = (f"{slices} MXFP4 slice(s) ({self.mx_rule} scale rule) x MXFP4 weight {p.q.type},"
                    " block-scaled FP4 matmul (scaling_extf)")
        elif self.act_format == "mxfp4":
            what = (f"{slices} MXFP4 slice(s) ({self.mx_rule} scale rule, doubled E2M1 codes) x"
                    f" {p.q.type}{why_not}")
        else:
            what = f"{slices} int8 slice(s) x {p.q.type}"
        if p.q_shift:
            what += f" (unsigned weight as q-{p.q_shift})"
        if p.group is not None:
            what += f", K in groups of {p.group} (activation scale per {self.act_scale})"
        if p.offset is not None:
            what += " with zero-point/offset term"
        if p.notes:
            what += "; " + "; ".join(sorted(set(p.notes)))
        self._record(op, True, what + note, **cost)
        operands = list(op.operands)
        rewriter.replace_op(op, [y])
        _erase_dead_producers(operands, rewriter)
        return False

    def _record(self, op: ir.Operation, rewritten: bool, reason: str, **cost: object) -> None:
        d = Decision(op.name, _ir.location_text(op), rewritten, reason, **cost)
        key = hash(op)
        if key in self.seen:
            self.report.decisions[self.seen[key]] = d
        else:
            self.seen[key] = len(self.report.decisions)
            self.report.decisions.append(d)


def _mx_blocks(p: Plan, fmt: str) -> None:
    """MX activation slices have one scale per 32-block of K: K must split into the blocks, and
    any group-wise weight scale must use the same blocks."""
    if p.group is None:
        if p.k_size is None or p.k_size % _mx.MX_BLOCK:
            raise NotHandled(f"act-format={fmt} needs a static K that is a multiple of {_mx.MX_BLOCK}"
                             f" (K = {p.k_size if p.k_size is not None else 'dynamic'})")
        p.group = _mx.MX_BLOCK
    elif p.group != _mx.MX_BLOCK:
        raise NotHandled(f"act-format={fmt} needs weight groups of {_mx.MX_BLOCK} along K (the MX block);"
                         f" the weight has groups of {p.group}")


def _matmul_of(p: Plan, dynamic_m: int) -> Matmul | None:
    """The cost model's view of ``p`` from the IR types; None when N or K is not static.

    A dynamic M (batch x sequence) is taken as ``dynamic_m`` rows times its static part."""
    x_t, q_t = _ir.tensor_type(p.x), _ir.tensor_type(p.q)
    x_dims = _ir.dim_positions(p.x_map)

    def x_size(d: int) -> int | None:
        i = x_dims.index(d)
        return None if x_t.is_dynamic_dim(i) else x_t.get_dim_size(i)

    def q_size(d: int) -> int | None:
        for i, e in enumerate(p.q_map.results):
            if isinstance(e, ir.AffineDimExpr) and e.position == d:
                return None if q_t.is_dynamic_dim(i) else q_t.get_dim_size(i)
        return None

    m, dynamic, batch = 1, False, 1
    for d in p.m_dims:
        size = x_size(d)
        dynamic |= size is None
        m *= size or 1
    for d in p.b_dims:
        size = x_size(d) or q_size(d)
        if size is None:
            return None
        batch *= size
    n, k, act = q_size(p.n_dim), p.k_size, str(_ir.elem_type(p.x))
    if n is None or k is None or not q_t.has_static_shape or act not in ("f32", "bf16", "f16"):
        return None
    width = ir.IntegerType(_ir.elem_type(p.q)).width
    bits = min(width, max(1, round(width * math.prod(q_t.shape) / (batch * n * k))))
    return Matmul(m * dynamic_m if dynamic else m, n, k, batch, act, bits, p.group, p.offset is not None,
                  m_assumed=dynamic)


def _consult(policy: Policy, p: Plan) -> tuple[Choice | None, dict[str, object]]:
    """Ask the cost model about ``p``; also return the decision fields for the report."""
    mm = _matmul_of(p, policy.dynamic_m)
    if mm is None:
        return None, {}
    choice = policy.decide(mm)
    est = choice.estimate
    return choice, {"shape": mm.shape, "format": mm.format, "slices": choice.slices if choice.rewrite else 0,
                    "hardware": policy.hardware.name, "baseline_s": est.baseline.total_s, "msd_s": est.msd.total_s}


PURE_DIALECTS = ("linalg.", "tensor.", "arith.", "math.")


def _erase_dead_producers(values: list[ir.Value], rewriter: rewrite.PatternRewriter) -> None:
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


class DecomposeMatmul(DecomposeContraction):
    """``linalg.matmul`` in any operand layout (default or explicit ``indexing_maps``)."""

    root = "linalg.matmul"

    def contraction(self, op: ir.Operation) -> Contraction | None:
        maps = _named_maps(op, [[0, 2], [2, 1], [0, 1]], 3)
        return _contraction_from_named(op, maps)


class DecomposeBatchMatmul(DecomposeContraction):
    """``linalg.batch_matmul`` (3-D activations from ``nn.Linear`` on sequences land here)."""

    root = "linalg.batch_matmul"

    def contraction(self, op: ir.Operation) -> Contraction | None:
        maps = _named_maps(op, [[0, 1, 3], [0, 3, 2], [0, 1, 2]], 4)
        return _contraction_from_named(op, maps)


class DecomposeContract(DecomposeContraction):
    """``linalg.contract`` (explicit indexing maps, implicit multiply-add body)."""

    root = "linalg.contract"

    def contraction(self, op: ir.Operation) -> Contraction | None:
        return _contraction_from_named(op, _ir.maps_of(op))


class DecomposeGenericContraction(DecomposeContraction):
    """``linalg.generic`` whose body is ``out + a*b`` with one reduction dim."""

    root = "linalg.generic"

    def contraction(self, op: ir.Operation) -> Contraction | None:
        return _contraction_from_generic(op)


PATTERNS = (DecomposeMatmul, DecomposeBatchMatmul, DecomposeContract, DecomposeGenericContraction)


ACT_SCALES = ("row", "group")


def run(module: ir.Operation, *, slices: int = 2, act_scale: str = "group", act_format: str = "int8",
        mx_scale: str = "ocp", target: str = "", min_bits: int = 0, dynamic_m: int = 0,
        mx_lowering: str = "int8") -> Report:
    """Apply the pass to ``module`` in place; return what it decided for each float contraction.

    ``target``: a hardware profile or target spec (``msd.cost``, e.g. "npu", "cuda:sm_80",
    "cpu-host"): the cost model then decides per contraction whether to rewrite (default "": always
    rewrite).  ``min_bits``: accuracy request in effective bits; the fewest slices reaching it
    (8 -> 1, 16 -> 2, 24 -> 3) replace ``slices``.  ``dynamic_m``: rows assumed for a dynamic M
    when costing (0: ``msd.cost.model.DYNAMIC_M``).

    ``act_scale``: where K is split into groups, one activation scale per row ("row") or per
    (row, group) ("group", default: smaller error for rows with outliers, same cost).
    ``act_format``: "int8" slices (default), or "mxfp4" slices per 32-block (exact emulation with
    int8 products; ``mx_scale`` = "ocp" or "noclip" block-exponent rule). ``mx_lowering``: "int8"
    (exact emulation, any target) or "scaled" (block-scaled FP4 matmul for FP4 matrix units, used
    where the weight is provably MXFP4, else the emulation with the reason in the report).
    """
    if slices not in SUPPORTED_SLICES:
        raise OptionError(f"{NAME}: slices={slices} is not supported (choose 1, 2 or 3)")
    if act_scale not in ACT_SCALES:
        raise OptionError(f"{NAME}: act-scale={act_scale} is not supported (choose row or group)")
    if act_format not in _mx.ACT_FORMATS:
        raise OptionError(f"{NAME}: act-format={act_format} is not supported (choose {', '.join(_mx.ACT_FORMATS)})")
    if mx_lowering not in _mx.LOWERINGS:
        raise OptionError(f"{NAME}: mx-lowering={mx_lowering} is not supported (choose {' or '.join(_mx.LOWERINGS)})")
    if mx_scale not in _mx.SCALE_RULES:
        raise OptionError(f"{NAME}: mx-scale={mx_scale} is not supported (choose {' or '.join(_mx.SCALE_RULES)})")
    if min_bits < 0 or dynamic_m < 0:
        raise OptionError(f"{NAME}: min-bits and dynamic-m must not be negative")
    if min_bits and act_format != "int8":
        raise OptionError(f"{NAME}: min-bits counts int8 slices; with act-format={act_format} give slices=")
    if min_bits:
        slices = slices_for_bits(min_bits)
    policy = Policy(profile_for(target), slices, min_bits, dynamic_m or DYNAMIC_M) if target else None
    report = Report(NAME)
    patterns = rewrite.RewritePatternSet(module.context)
    for cls in PATTERNS:
        pattern = cls(slices, act_scale, report, act_format, mx_scale, mx_lowering)
        pattern.policy = policy
        patterns.add(cls.root, pattern)
    # One walk, no folding: only candidate contractions are touched (and each exactly once).
    rewrite.walk_and_apply_patterns(module, patterns.freeze())
    epilogues: list[ir.Operation] = []

    def collect(op: ir.Operation) -> ir.WalkResult:
        if EPILOGUE_MARK in op.attributes:
            epilogues.append(op.operation)
        return ir.WalkResult.ADVANCE

    module.walk(collect)
    for op in epilogues:
        del op.attributes[EPILOGUE_MARK]
        fold_elementwise_consumers(op)
    return report
