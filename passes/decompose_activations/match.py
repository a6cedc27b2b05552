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


__all__ = ["Contraction", "batch_matmul", "contract", "generic", "matmul"]
