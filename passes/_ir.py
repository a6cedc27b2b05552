"""Small helpers over the MLIR Python bindings shared by the msd passes.

Everything here works on the bindings shipped in ``iree-base-compiler``; nothing is msd-specific
except that the helpers assume tensors (linalg on tensors, before bufferization).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence

from iree.compiler import ir
from iree.compiler.dialects import arith, linalg, tensor

Size = int | ir.Value  # a static extent or an ``index`` value

PARALLEL, REDUCTION = "parallel", "reduction"  # linalg iterator types, as the builders below take them
_ITERATOR = re.compile(r"#linalg\.iterator_type<(\w+)>")


# ----------------------------------------------------------------------------- affine maps
def maps_of(op: ir.Operation) -> list[ir.AffineMap]:
    """The ``indexing_maps`` of a linalg op, as plain ``AffineMap``s."""
    return [ir.AffineMapAttr(a).value for a in ir.ArrayAttr(op.attributes["indexing_maps"])]


def dim_positions(amap: ir.AffineMap) -> list[int] | None:
    """Positions of the dims ``amap`` returns, or None when a result is not a plain dim."""
    out = []
    for e in amap.results:
        if not isinstance(e, ir.AffineDimExpr):
            return None
        out.append(e.position)
    return out


def compose(amap: ir.AffineMap, inner: ir.AffineMap) -> ir.AffineMap:
    """``amap ∘ inner``: index ``amap``'s domain with ``inner``'s results."""
    return ir.AffineMap.get(inner.n_dims, 0, [e.compose(inner) for e in amap.results])


def dims_map(n_dims: int, positions: Sequence[int | tuple[str, int]]) -> ir.AffineMap:
    """A map ``(d0..dn) -> (...)``; an int is a dim, ``("c", v)`` is the constant v."""
    exprs = []
    for p in positions:
        if isinstance(p, tuple):
            exprs.append(ir.AffineConstantExpr.get(p[1]))
        else:
            exprs.append(ir.AffineDimExpr.get(p))
    return ir.AffineMap.get(n_dims, 0, exprs)


def reindex(amap: ir.AffineMap, old_to_new: dict[int, int], n_new: int) -> ir.AffineMap:
    """Rename the dims of ``amap`` (every used dim must be in ``old_to_new``)."""
    repl = [
        ir.AffineDimExpr.get(old_to_new[i]) if i in old_to_new else ir.AffineConstantExpr.get(0)
        for i in range(amap.n_dims)
    ]
    return compose(amap, ir.AffineMap.get(n_new, 0, repl))


def used_dims(amap: ir.AffineMap) -> set[int]:
    """The dims an affine map reads (through any expression)."""
    used: set[int] = set()

    def walk(e: ir.AffineExpr) -> None:
        if isinstance(e, ir.AffineDimExpr):
            used.add(e.position)
        elif isinstance(e, ir.AffineBinaryExpr):
            walk(e.lhs)
            walk(e.rhs)

    for e in amap.results:
        walk(e)
    return used


def iterator_types(op: ir.Operation) -> list[str]:
    """The ``iterator_types`` of a linalg op: ``PARALLEL`` or ``REDUCTION`` per loop dim."""
    return [_ITERATOR.fullmatch(str(a)).group(1) for a in ir.ArrayAttr(op.attributes["iterator_types"])]


def is_elementwise(op: ir.Operation) -> bool:
    """A linalg op all of whose loops are parallel (no reduction)."""
    return all(t == PARALLEL for t in iterator_types(op))


# ----------------------------------------------------------------------------- types, values
def tensor_type(v: ir.Value) -> ir.RankedTensorType:
    return ir.RankedTensorType(v.type)


def elem_type(v: ir.Value) -> ir.Type:
    t = v.type
    return ir.RankedTensorType(t).element_type if isinstance(t, ir.RankedTensorType) else t


def is_float(t: ir.Type) -> bool:
    return isinstance(t, (ir.F32Type, ir.F16Type, ir.BF16Type, ir.F64Type))


def float_width(t: ir.Type) -> int:
    return {ir.F16Type: 16, ir.BF16Type: 16, ir.F32Type: 32, ir.F64Type: 64}[type(t)]


def f32() -> ir.Type:
    return ir.F32Type.get()


def index_const(v: int) -> ir.Value:
    return arith.ConstantOp(ir.IndexType.get(), v).result


def f32_const(v: float) -> ir.Value:
    return arith.ConstantOp(f32(), v).result


def int_const(t: ir.Type, v: int) -> ir.Value:
    return arith.ConstantOp(t, v).result


def size_of(v: ir.Value, dim: int) -> Size:
    """The extent of tensor ``v`` along ``dim``: an int when static, else a ``tensor.dim``."""
    t = tensor_type(v)
    if not t.is_dynamic_dim(dim):
        return t.get_dim_size(dim)
    return tensor.DimOp(v, index_const(dim)).result


def product(sizes: Sequence[Size]) -> Size:
    """Product of static and dynamic extents (folded where static)."""
    static = 1
    dynamic: ir.Value | None = None
    for s in sizes:
        if isinstance(s, int):
            static *= s
        else:
            dynamic = s if dynamic is None else arith.MulIOp(dynamic, s).result
    if dynamic is None:
        return static
    if static != 1:
        dynamic = arith.MulIOp(dynamic, index_const(static)).result
    return dynamic


def shape_of(sizes: Sequence[Size]) -> list[int]:
    return [s if isinstance(s, int) else ir.ShapedType.get_dynamic_size() for s in sizes]


def empty(sizes: Sequence[Size], element_type: ir.Type) -> ir.Value:
    return tensor.EmptyOp(list(sizes), element_type).result


def filled(sizes: Sequence[Size], value: ir.Value) -> ir.Value:
    return linalg.fill(value, outs=[empty(sizes, value.type)])


def to_f32(v: ir.Value) -> ir.Value:
    """Widen a float scalar to f32 (no-op for f32)."""
    t = v.type
    if isinstance(t, ir.F32Type):
        return v
    if is_float(t) and float_width(t) < 32:
        return arith.ExtFOp(f32(), v).result
    if is_float(t):
        return arith.TruncFOp(f32(), v).result
    raise TypeError(f"not a float: {t}")


def from_f32(v: ir.Value, t: ir.Type) -> ir.Value:
    """Convert an f32 scalar to the float type ``t``."""
    if isinstance(t, ir.F32Type):
        return v
    if float_width(t) < 32:
        return arith.TruncFOp(t, v).result
    return arith.ExtFOp(t, v).result


# ----------------------------------------------------------------------------- builders
def generic(
    inputs: Sequence[ir.Value],
    outputs: Sequence[ir.Value],
    maps: Sequence[ir.AffineMap],
    iterators: Sequence[str],
    body: Callable[..., Sequence[ir.Value]],
) -> list[ir.Value]:
    """Build a ``linalg.generic``; ``body`` gets the block arguments and returns the yields."""
    op = linalg.GenericOp(
        [o.type for o in outputs],
        list(inputs),
        list(outputs),
        ir.ArrayAttr.get([ir.AffineMapAttr.get(m) for m in maps]),
        ir.ArrayAttr.get([ir.Attribute.parse(f"#linalg.iterator_type<{t}>") for t in iterators]),
    )
    block = op.regions[0].blocks.append(*[elem_type(v) for v in [*inputs, *outputs]])
    with ir.InsertionPoint(block):
        linalg.YieldOp(list(body(*block.arguments)))
    return list(op.results)


def collapse(v: ir.Value, groups: Sequence[Sequence[int]]) -> ir.Value:
    """``tensor.collapse_shape`` (nothing when every group is a single dim)."""
    if all(len(g) == 1 for g in groups):
        return v
    return tensor.CollapseShapeOp(collapsed_type(tensor_type(v), groups), v, _reassoc(groups)).result


def collapsed_type(t: ir.RankedTensorType, groups: Sequence[Sequence[int]]) -> ir.RankedTensorType:
    """The type of ``t`` with each group of dims collapsed into one."""
    shape = []
    for g in groups:
        sizes = [t.get_dim_size(i) for i in g]
        dyn = any(t.is_dynamic_dim(i) for i in g)
        n = 1
        for s in sizes:
            n *= s
        shape.append(ir.ShapedType.get_dynamic_size() if dyn else n)
    return ir.RankedTensorType.get(shape, t.element_type)


def unit_dim_groups(rank: int, unit: Sequence[int]) -> list[list[int]]:
    """Reassociation groups that fold each dim in ``unit`` (size-1 dims) into the next other dim, or
    the last one."""
    groups: list[list[int]] = [[i] for i in range(rank) if i not in unit]
    for u in unit:
        nxt = next((g for g in groups if g[0] > u), groups[-1])
        nxt.append(u)
        nxt.sort()
    groups.sort()
    return groups


def expand(v: ir.Value, groups: Sequence[Sequence[int]], sizes: Sequence[Size]) -> ir.Value:
    """``tensor.expand_shape`` to ``sizes`` (nothing when every group is a single dim)."""
    if all(len(g) == 1 for g in groups):
        return v
    t = tensor_type(v)
    rtype = ir.RankedTensorType.get(shape_of(sizes), t.element_type)
    dynamic = [s for s in sizes if not isinstance(s, int)]
    return tensor.ExpandShapeOp(rtype, v, _reassoc(groups), dynamic, shape_of(sizes)).result


def _reassoc(groups: Sequence[Sequence[int]]) -> ir.ArrayAttr:
    i64 = ir.IntegerType.get_signless(64)
    return ir.ArrayAttr.get(
        [ir.ArrayAttr.get([ir.IntegerAttr.get(i64, i) for i in g]) for g in groups]
    )


def location_text(op: ir.Operation) -> str:
    """Where an op came from, short: ``file:line`` frames innermost first (``a.py:3 <- b.py:9``)."""
    text = str(op.location)
    frames = re.findall(r'"([^"]+)":(\d+):\d+', text)
    if not frames:
        return text[4:-1] if text.startswith("loc(") else text
    return " <- ".join(f"{os.path.basename(path)}:{line}" for path, line in frames)


def producer(v: ir.Value) -> ir.Operation | None:
    """The op defining ``v`` (None for block arguments)."""
    owner = v.owner
    if isinstance(owner, ir.OpView):
        return owner.operation
    return owner if isinstance(owner, ir.Operation) else None


def k_usage(e: ir.AffineExpr, k: int) -> tuple[str, int] | None:
    """How an index expression reads the reduction dim ``k``:

    ``("dim", d)`` a plain dim (``d == k`` reads all of K), ``("const", v)``, ``("kgroup", g)`` for
    ``k floordiv g`` (a group index), ``("kin", g)`` for ``k mod g`` (index within a group);
    ``(k floordiv g) * g + k mod g`` (a collapse of an expand) is ``("dim", k)``.  None otherwise.
    """
    if isinstance(e, ir.AffineDimExpr):
        return ("dim", e.position)
    if isinstance(e, ir.AffineConstantExpr):
        return ("const", e.value)
    if isinstance(e, (ir.AffineFloorDivExpr, ir.AffineModExpr)):
        lhs, rhs = e.lhs, e.rhs
        if isinstance(lhs, ir.AffineDimExpr) and lhs.position == k and isinstance(rhs, ir.AffineConstantExpr):
            return ("kgroup" if isinstance(e, ir.AffineFloorDivExpr) else "kin", rhs.value)
        return None
    if isinstance(e, ir.AffineAddExpr):
        parts = [e.lhs, e.rhs]
        for a, b in (parts, parts[::-1]):
            if isinstance(a, ir.AffineMulExpr) and isinstance(a.rhs, ir.AffineConstantExpr):
                outer, inner = k_usage(a.lhs, k), k_usage(b, k)
                if outer == ("kgroup", a.rhs.value) and inner == ("kin", a.rhs.value):
                    return ("dim", k)
    return None


def flow_dispatch(symbol: str, results: Sequence[ir.Type], workload: Sequence[ir.Value], arguments: Sequence[ir.Value],
                  argument_dims: Sequence[ir.Value] = (), result_dims: Sequence[ir.Value] = (),
                  attributes: dict[str, ir.Attribute] | None = None) -> ir.Operation:
    """``flow.dispatch @symbol::@symbol[workload](arguments)`` with the dynamic dims of its tensor arguments
    and results (none of the results tied), at the current insertion point."""
    return ir.Operation.create(
        "flow.dispatch", results=list(results),
        operands=[*workload, *arguments, *argument_dims, *result_dims],
        attributes={
            "entry_points": ir.ArrayAttr.get([ir.SymbolRefAttr.get([symbol, symbol])]),
            "operandSegmentSizes": ir.DenseI32ArrayAttr.get([len(workload), len(arguments), len(argument_dims),
                                                             len(result_dims)]),
            "tied_operands": ir.ArrayAttr.get([ir.IntegerAttr.get(ir.IndexType.get(), -1)] * len(results)),
            **(attributes or {}),
        })
