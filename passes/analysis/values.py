"""Value-range analysis of integer tensors: the set of values the ops that produce one bound it to.

``value_set(v)`` follows elementwise ``linalg.generic`` bodies and reshapes back to their sources and
returns a superset of the mathematical values (signed reading at the element width) of every element
of ``v``, or ``None`` when it cannot bound them to at most :data:`MAX_VALUES` values (a weight read
from a parameter, an op it does not model).  Operands are treated as independent, so the result is
a superset: sound for proving "every element is one of these".

Two questions are asked of it: is every element twice an E2M1 value (an int8 decode of MXFP4 codes,
so it converts to FP4 exactly), and :func:`unsigned_range` — which bits an unsigned weight can hold
(int4 codes unpacked with ``andi 15`` / ``shrui 4`` are in [0, 15], so they are centred at 8).
"""

from __future__ import annotations

from itertools import product

from iree.compiler import ir

from .. import _ir

MAX_VALUES = 256
MAX_DEPTH = 48
RESHAPES = ("tensor.expand_shape", "tensor.collapse_shape", "tensor.cast", "linalg.transpose", "linalg.broadcast")
Values = frozenset[int]


def _wrap(v: int, width: int) -> int:
    """Two's-complement reading of ``v`` at ``width`` bits (i1 true is −1)."""
    v &= (1 << width) - 1
    return v - (1 << width) if v >> (width - 1) else v


def _width(t: ir.Type) -> int | None:
    return ir.IntegerType(t).width if isinstance(t, ir.IntegerType) else None


def _bounded(values: set[int] | frozenset[int]) -> Values | None:
    return frozenset(values) if len(values) <= MAX_VALUES else None


def value_set(v: ir.Value, depth: int = 0) -> Values | None:
    """Possible element values of the integer tensor ``v`` (see the module docstring).  An element
    type narrower than 8 bits bounds them by itself: ``iN`` holds one of its ``2**N`` values."""
    width = _width(_ir.elem_type(v))
    found = _value_set(v, depth)
    if found is None and width is not None and width < 8:
        return frozenset(_wrap(x, width) for x in range(1 << width))
    return found


def _value_set(v: ir.Value, depth: int) -> Values | None:
    if depth > MAX_DEPTH or _width(_ir.elem_type(v)) is None:
        return None
    op = _ir.producer(v)
    if op is None:
        return None
    if op.name in RESHAPES:
        return value_set(op.operands[0], depth + 1)
    if op.name == "tensor.concat":
        parts = [value_set(o, depth + 1) for o in op.operands]
        return None if any(p is None for p in parts) else _bounded(set().union(*parts))
    if op.name == "arith.constant":
        attr = op.attributes["value"]
        if isinstance(attr, ir.DenseIntElementsAttr) and attr.is_splat:
            return frozenset({_wrap(int(attr.get_splat_value().value), _width(_ir.elem_type(v)))})
        return None
    if op.name != "linalg.generic" or len(op.results) != 1:
        return None
    if not _ir.is_elementwise(op):
        return None
    n_in = len(op.operands) - len(op.results)
    block = op.regions[0].blocks[0]
    args = list(block.arguments)
    memo: dict[int, Values | None] = {}

    def scalar(s: ir.Value) -> Values | None:
        for i, a in enumerate(args):
            if a == s:
                return value_set(op.operands[i], depth + 1) if i < n_in else None
        owner = _ir.producer(s)
        if owner is None or owner.parent != op:
            return _constant(s)
        key = hash(owner)
        if key not in memo:
            memo[key] = _scalar_op(owner, scalar)
        return memo[key]

    yielded = list(block.operations)[-1].operands[0]
    return scalar(yielded)


def unsigned_range(v: ir.Value) -> tuple[int, int]:
    """``(lo, hi)`` bounding the elements of the integer tensor ``v`` read as unsigned: the range of
    :func:`value_set`, or the full ``[0, 2**width - 1]`` when it has no bound."""
    width = _width(_ir.elem_type(v))
    values = value_set(v)
    if values is None:
        return 0, (1 << width) - 1
    bits = [x & ((1 << width) - 1) for x in values]
    return min(bits), max(bits)


def _constant(s: ir.Value) -> Values | None:
    owner = _ir.producer(s)
    if owner is not None and owner.name == "arith.constant":
        attr = owner.attributes["value"]
        if isinstance(attr, ir.IntegerAttr):
            return frozenset({_wrap(int(attr.value), _width(s.type))})
    return None


BINARY = {
    "arith.addi": lambda a, b: a + b,
    "arith.subi": lambda a, b: a - b,
    "arith.muli": lambda a, b: a * b,
    "arith.andi": lambda a, b: a & b,
    "arith.ori": lambda a, b: a | b,
    "arith.xori": lambda a, b: a ^ b,
}


def _scalar_op(op: ir.Operation, scalar) -> Values | None:
    name = op.name
    width = _width(op.results[0].type)
    if name == "arith.constant":
        return _constant(op.results[0])
    if name == "arith.cmpi":
        return frozenset({0, -1})
    if name == "arith.select":
        a, b = scalar(op.operands[1]), scalar(op.operands[2])
        return None if a is None or b is None else _bounded(a | b)
    # Integer values through float arithmetic (torch-mlir negates an int tensor as sitofp → negf →
    # fptosi): exact while the values are small integers, which every set here is.
    if name in ("arith.sitofp", "arith.uitofp"):
        a = scalar(op.operands[0])
        if a is None or any(abs(x) > 1 << 24 for x in a):
            return None
        return a if name == "arith.sitofp" else _bounded({x & ((1 << _width(op.operands[0].type)) - 1) for x in a})
    if name == "arith.negf":
        a = scalar(op.operands[0])
        return None if a is None else frozenset(-x for x in a)
    if name in ("arith.fptosi", "arith.fptoui"):
        a = scalar(op.operands[0])
        return None if a is None or width is None else _bounded({_wrap(x, width) for x in a})
    if width is None:
        return None
    if name in ("arith.extsi", "arith.extui", "arith.trunci"):
        a = scalar(op.operands[0])
        if a is None:
            return None
        w_in = _width(op.operands[0].type)
        if name == "arith.extui":
            return _bounded({x & ((1 << w_in) - 1) for x in a})
        return _bounded({_wrap(x, width) for x in a})
    if name in ("arith.shrui", "arith.shrsi", "arith.shli"):
        a, s = scalar(op.operands[0]), scalar(op.operands[1])
        if s is None or any(not 0 <= c < width for c in s):
            return None
        if a is None and name == "arith.shrui" and len(s) == 1:  # any input: the top bits are left
            (c,) = s
            return _bounded(set(range(1 << (width - c)))) if c else None
        if a is None:
            return None
        if name == "arith.shrui":
            return _bounded({(x & ((1 << width) - 1)) >> c for x, c in product(a, s)})
        if name == "arith.shrsi":
            return _bounded({x >> c for x, c in product(a, s)})
        return _bounded({_wrap(x << c, width) for x, c in product(a, s)})
    if name == "arith.andi":  # a constant mask bounds the result whatever the other side holds
        a, b = scalar(op.operands[0]), scalar(op.operands[1])
        for known, other in ((a, b), (b, a)):
            if other is None and known is not None and len(known) == 1:
                mask = min(known) & ((1 << width) - 1)
                if 1 << mask.bit_count() > MAX_VALUES:
                    return None
                return _bounded({_wrap(x, width) for x in _submasks(mask)})
    if name in BINARY:
        a, b = scalar(op.operands[0]), scalar(op.operands[1])
        if a is None or b is None or len(a) * len(b) > MAX_VALUES * MAX_VALUES:
            return None
        return _bounded({_wrap(BINARY[name](x, y), width) for x, y in product(a, b)})
    if name in ("arith.maxsi", "arith.minsi"):
        a, b = scalar(op.operands[0]), scalar(op.operands[1])
        if a is None or b is None:
            return None
        f = max if name == "arith.maxsi" else min
        return _bounded({f(x, y) for x, y in product(a, b)})
    return None


def _submasks(mask: int) -> list[int]:
    """Every value whose set bits are a subset of ``mask``'s."""
    out, sub = [], mask
    while True:
        out.append(sub)
        if sub == 0:
            return out
        sub = (sub - 1) & mask


__all__ = ["MAX_VALUES", "unsigned_range", "value_set"]
