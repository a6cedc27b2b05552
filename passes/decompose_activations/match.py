"""Finding the candidates: a float contraction, whatever op spells it, as one :class:`Contraction`.

``linalg.matmul`` and ``linalg.batch_matmul`` (default or explicit ``indexing_maps``),
``linalg.contract``, and a ``linalg.generic`` whose body is ``out + a*b`` (optionally ``extf`` of
``a``, ``b``).  Anything else, or a contraction with a non-float result, is not a candidate (and is
not reported).
"""

from __future__ import annotations

from dataclasses import dataclass

from iree.compiler import ir

from .. import _ir

# The default indexing maps of the named ops (iteration dims: m, n, k / b, m, n, k).
MATMUL_DIMS = ([0, 2], [2, 1], [0, 1])
BATCH_MATMUL_DIMS = ([0, 1, 3], [0, 3, 2], [0, 1, 2])


@dataclass(frozen=True)
class Contraction:
    """``init[o(i)] += lhs[l(i)] · rhs[r(i)]`` over the iteration space ``i``, as the op spells it."""

    op: ir.Operation
    lhs: ir.Value
    rhs: ir.Value
    init: ir.Value
    maps: tuple[ir.AffineMap, ...]  # lhs, rhs, init
    iterators: tuple[str, ...]  # _ir.PARALLEL / _ir.REDUCTION per iteration dim

    @property
    def n_dims(self) -> int:
        return self.maps[0].n_dims

    @property
    def reductions(self) -> list[int]:
        return [d for d, t in enumerate(self.iterators) if t == _ir.REDUCTION]


def matmul(op: ir.Operation) -> Contraction | None:
    """``linalg.matmul`` in any operand layout."""
    return _named(op, _named_maps(op, MATMUL_DIMS, 3))


def batch_matmul(op: ir.Operation) -> Contraction | None:
    """``linalg.batch_matmul`` (3-D activations from ``nn.Linear`` on sequences land here)."""
    return _named(op, _named_maps(op, BATCH_MATMUL_DIMS, 4))


def contract(op: ir.Operation) -> Contraction | None:
    """``linalg.contract`` (explicit indexing maps, implicit multiply-add body)."""
    return _named(op, _ir.maps_of(op))


def generic(op: ir.Operation) -> Contraction | None:
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
    lhs, rhs, init = op.operands
    return _float(Contraction(op, lhs, rhs, init, tuple(_ir.maps_of(op)), tuple(_ir.iterator_types(op))))


def merge_reductions(c: Contraction) -> tuple[Contraction, list[ir.Operation]] | str:
    """``c`` with its two reduction dims merged into one, as IREE-style group quantization writes a
    matmul (``x [M, G, g]`` · ``w [N, G, g]``, reducing over the groups and within them): each operand
    collapsed (``tensor.collapse_shape`` of the two dims, created at the current insertion point) and
    the maps rewritten over one dim fewer.  Returns the new contraction and the ops created (to erase
    if it is not rewritten after all), or why the dims cannot be merged: they must be plain dims read
    outer-then-inner next to each other by both operands, the inner one of static size."""
    r1, r2 = c.reductions
    if _ir.dim_positions(c.maps[2]) is None:
        return "the result is not indexed by plain dims"
    positions = []
    for which, m in (("activation", c.maps[0]), ("weight", c.maps[1])):
        dims = _ir.dim_positions(m)
        if dims is None or r1 not in dims or r2 not in dims:
            return f"the {which} does not read both reduction dims as plain dims"
        at = dims.index(r1)
        if dims.index(r2) != at + 1:
            return f"the {which} does not read the two reduction dims next to each other (outer, inner)"
        positions.append(at)
    created, operands = [], []
    for v, at in zip((c.lhs, c.rhs), positions):
        t = _ir.tensor_type(v)
        if t.is_dynamic_dim(at + 1):
            for o in reversed(created):
                o.erase()
            return "the inner reduction dim has a dynamic size"
        groups = [[i] for i in range(at)] + [[at, at + 1]] + [[i] for i in range(at + 2, t.rank)]
        merged = _ir.collapse(v, groups)
        created.append(_ir.producer(merged))
        operands.append(merged)

    def renumber(m: ir.AffineMap) -> ir.AffineMap:
        out = []
        for d in _ir.dim_positions(m):
            if d != r2:
                out.append(ir.AffineDimExpr.get(d - (d > r2)))
        return ir.AffineMap.get(m.n_dims - 1, 0, out)

    maps = tuple(renumber(m) for m in c.maps)
    iterators = tuple(it for d, it in enumerate(c.iterators) if d != r2)
    return Contraction(c.op, operands[0], operands[1], c.init, maps, iterators), created


def _named_maps(op: ir.Operation, default: tuple[list[int], ...], n: int) -> list[ir.AffineMap]:
    if "indexing_maps" in op.attributes:
        return _ir.maps_of(op)
    return [_ir.dims_map(n, d) for d in default]


def _named(op: ir.Operation, maps: list[ir.AffineMap]) -> Contraction | None:
    """A named contraction op: the dims its result does not read are its reductions."""
    lhs, rhs, init = op.operands
    out_dims = _ir.used_dims(maps[2])
    iterators = tuple(_ir.PARALLEL if d in out_dims else _ir.REDUCTION for d in range(maps[0].n_dims))
    return _float(Contraction(op, lhs, rhs, init, tuple(maps), iterators))


def _float(c: Contraction) -> Contraction | None:
    return c if _ir.is_float(_ir.elem_type(c.op.results[0])) else None


__all__ = ["Contraction", "batch_matmul", "contract", "generic", "matmul", "merge_reductions"]
