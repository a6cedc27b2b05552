"""IR-building pieces both lowerings use (:mod:`.emit_int8`, :mod:`.emit_scaled`).

- :func:`split_operand` / :func:`split_map`: an operand re-indexed in the K-split space
  (K → groups × within-group);
- :func:`residual_maxima`: the block maxima MX slices take their exponents from;
- :func:`slice_index` / :func:`select_slice`: one value per slice inside a generic body;
- :func:`mark_epilogue`: the op :mod:`.cleanup` later merges the elementwise consumers into.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from iree.compiler import ir
from iree.compiler.dialects import arith, linalg
from iree.compiler.dialects import math as math_d

from .. import _ir, _mx
from ..analysis.dequant import Const, Expr, Leaf, Scalar

SLICE_RADIX = 254.0  # each further slice resolves the previous slice's rounding residual ×254
QMAX = 127.0  # symmetric int8 range used by the slices
FLT_MIN = 1.17549435e-38  # amax floor: an all-zero row gets a finite scale and zero slices
EPILOGUE_MARK = "msd.epilogue"  # set on epilogues while the pass runs, removed by cleanup.fold_epilogues


def split_operand(value: ir.Value, amap: ir.AffineMap, k: int, ki: int, group: int,
                  n_all: int) -> tuple[ir.Value, ir.AffineMap]:
    """Re-index ``value`` in the K-split space (:func:`split_map`): a tensor dim read as all of K is
    expanded into [K/g, g].  Returns the (possibly expanded) value and its map."""
    groups, sizes, t = [], [], _ir.tensor_type(value)
    for i, e in enumerate(amap.results):
        base = sum(len(g) for g in groups)
        if _ir.k_usage(e, k) == ("dim", k):
            groups.append([base, base + 1])
            sizes += [t.get_dim_size(i) // group, group]
        else:
            groups.append([base])
            sizes.append(_ir.size_of(value, i))
    return _ir.expand(value, groups, sizes), split_map(amap, k, ki, n_all)


def split_map(amap: ir.AffineMap, k: int, ki: int, n_all: int) -> ir.AffineMap:
    """``amap`` in the K-split space (K → kg·g + ki, kg keeping K's position, ki the new dim): all of K
    reads (kg, ki), ``k floordiv g`` reads kg and ``k mod g`` reads ki."""
    exprs = []
    for e in amap.results:
        u = _ir.k_usage(e, k)
        if u == ("dim", k):
            exprs += [ir.AffineDimExpr.get(k), ir.AffineDimExpr.get(ki)]
        elif u is not None and u[0] == "kgroup":
            exprs.append(ir.AffineDimExpr.get(k))
        elif u is not None and u[0] == "kin":
            exprs.append(ir.AffineDimExpr.get(ki))
        else:
            exprs.append(e.compose(ir.AffineMap.get_identity(n_all)))
    return ir.AffineMap.get(n_all, 0, exprs)


def residual_maxima(x: ir.Value, x_in_rows: ir.AffineMap, rows: Sequence[int], n_reduced: int,
                    size: Callable[[int], _ir.Size], rule: str, fmt: str, maxima: Sequence[ir.Value],
                    count: int) -> list[ir.Value]:
    """``maxima`` plus ``count`` more block maxima, one reduction each over ``x`` read as
    ``[rows..., reduced...]`` (``x_in_rows``): of ``|x|`` itself while ``maxima`` is empty, then of
    what the MX slices with the exponents of the maxima so far leave of ``x``."""
    maxima = list(maxima)
    row_map = _ir.dims_map(len(rows) + n_reduced, list(range(len(rows))))
    for _ in range(count):
        def body(v, *args):
            exps = [_mx.block_exponent(a, rule, fmt) for a in args[:-1]]
            r = _mx.residual(_ir.to_f32(v), exps, fmt) if exps else _ir.to_f32(v)
            return [arith.MaximumFOp(math_d.AbsFOp(r).result, args[-1]).result]

        maxima.append(_ir.generic(
            [x, *maxima], [_ir.filled([size(d) for d in rows], _ir.f32_const(0.0))],
            [x_in_rows, *[row_map] * len(maxima), row_map],
            [_ir.PARALLEL] * len(rows) + [_ir.REDUCTION] * n_reduced, body,
        )[0])
    return maxima


def slice_index(dim: int) -> ir.Value:
    """Inside a generic body: the index along ``dim``, the slice dim of the tensor being built."""
    return linalg.IndexOp(ir.IntegerAttr.get(ir.IntegerType.get_signless(64), dim)).result


def select_slice(index: ir.Value, values: Sequence[ir.Value]) -> ir.Value:
    """``values[index]`` (an index from :func:`slice_index`) as a chain of selects."""
    v = values[-1]
    for i in range(len(values) - 2, -1, -1):
        is_i = arith.CmpIOp(arith.CmpIPredicate.eq, index, _ir.index_const(i)).result
        v = arith.SelectOp(is_i, values[i], v).result
    return v


def mark_epilogue(y: ir.Value) -> ir.Value:
    """Mark the op producing the rewrite's result ``y`` as its epilogue; return ``y``."""
    _ir.producer(y).attributes[EPILOGUE_MARK] = ir.UnitAttr.get()
    return y



# ============================================================================= operands and scalars
def fold_k_scale(x: ir.Value, x_map: ir.AffineMap, k_scale: tuple[Leaf, ...]) -> ir.Value:
    """``x · s_k`` (elementwise, in x's own layout) for the per-K scale factors ``k_scale``."""
    if not k_scale:
        return x
    x_dims = _ir.dim_positions(x_map)
    rank = len(x_dims)
    pos = {d: i for i, d in enumerate(x_dims)}
    maps = [ir.AffineMap.get_identity(rank), *[_ir.reindex(leaf.map, pos, rank) for leaf in k_scale]]
    xt = _ir.tensor_type(x)

    def body(xv, *args):
        v = _ir.to_f32(xv)
        for s in args[:-1]:
            v = arith.MulFOp(v, _ir.to_f32(s)).result
        return [_ir.from_f32(v, xt.element_type)]

    sizes = [_ir.size_of(x, i) for i in range(rank)]
    return _ir.generic([x, *[leaf.value for leaf in k_scale]], [_ir.empty(sizes, xt.element_type)],
                       [*maps, ir.AffineMap.get_identity(rank)], [_ir.PARALLEL] * rank, body)[0]


def drop_unit_dims(q: ir.Value, q_map: ir.AffineMap, unit: tuple[int, ...]) -> tuple[ir.Value, ir.AffineMap]:
    """Collapse the size-1 dims ``unit`` of ``q`` (read at constant 0) into a neighbour."""
    if not unit:
        return q, q_map
    kept = [i for i in range(len(q_map.results)) if i not in unit]
    groups = _ir.unit_dim_groups(len(q_map.results), unit)
    return _ir.collapse(q, groups), ir.AffineMap.get(q_map.n_dims, 0, [q_map.results[i] for i in kept])


def centred(q: ir.Value, shift: int) -> ir.Value:
    """Unsigned codes → signed i8 ``q - shift``; weight-only, so IREE hoists it to load time."""
    if not shift:
        return q
    i8 = ir.IntegerType.get_signless(8)
    rank = _ir.tensor_type(q).rank
    ident = ir.AffineMap.get_identity(rank)
    return _ir.generic(
        [q], [_ir.empty([_ir.size_of(q, i) for i in range(rank)], i8)], [ident, ident],
        [_ir.PARALLEL] * rank, lambda v, _o: [arith.SubIOp(v, _ir.int_const(i8, shift)).result],
    )[0]


def row_scale(amax: ir.Value) -> ir.Value:
    """``s = max(amax, FLT_MIN) / 127``: the first slice's scale (shared by slices and epilogue)."""
    floor = arith.MaximumFOp(amax, _ir.f32_const(FLT_MIN)).result
    return arith.DivFOp(floor, _ir.f32_const(QMAX)).result


def slice_digits(t: ir.Value, slices: int) -> list[ir.Value]:
    """The int8 slices' digits of ``t = x / s`` (f32 values in ±127): ``d_1 = round(t)``,
    ``d_{i+1} = round(254·(t_i − d_i))``, each rounded half to even and clamped to ±127."""
    digits = []
    for i in range(slices):
        d = math_d.RoundEvenOp(t).result
        d = arith.MinimumFOp(arith.MaximumFOp(d, _ir.f32_const(-QMAX)).result, _ir.f32_const(QMAX)).result
        digits.append(d)
        if i + 1 < slices:
            t = arith.MulFOp(arith.SubFOp(t, d).result, _ir.f32_const(SLICE_RADIX)).result
    return digits


def scalar_expr(e: Expr, leaf_arg: Callable[[Leaf], ir.Value]) -> ir.Value:
    """Emit a K-invariant expression (the weight's scale or offset) as f32 scalar ops."""
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
    a = [scalar_expr(x, leaf_arg) for x in e.args]
    if e.kind == "neg":
        return arith.NegFOp(a[0]).result
    op = {"add": arith.AddFOp, "mul": arith.MulFOp, "div": arith.DivFOp}[e.kind]
    return op(a[0], a[1]).result

__all__ = ["EPILOGUE_MARK", "FLT_MIN", "QMAX", "SLICE_RADIX", "centred", "drop_unit_dims", "fold_k_scale",
           "mark_epilogue", "residual_maxima", "row_scale", "scalar_expr", "select_slice", "slice_digits",
           "slice_index", "split_map", "split_operand"]


# ============================================================================= narrow weights
def widened_weight(q: ir.Value, unsigned: bool) -> ir.Value:
    """The integer weight ``q`` as i8 for the int8 matmul: a narrower element type (``i1`` … ``i7``)
    zero-extended when the dequantization reads it unsigned, else sign-extended; i8 as it is."""
    t = _ir.tensor_type(q)
    if ir.IntegerType(t.element_type).width == 8:
        return q
    i8 = ir.IntegerType.get_signless(8)
    ext = arith.ExtUIOp if unsigned else arith.ExtSIOp
    ident = ir.AffineMap.get_identity(t.rank)
    sizes = [_ir.size_of(q, i) for i in range(t.rank)]
    return _ir.generic([q], [_ir.empty(sizes, i8)], [ident, ident], [_ir.PARALLEL] * t.rank,
                       lambda v, _o: [ext(i8, v).result])[0]
