"""Is a traced weight MXFP4?  The block-scaled lowerings (``scaling_extf``) are exact only then.

The proof, from what :mod:`msd.passes.analysis.dequant` traced (``W = scale · q``):

- every element of the integer weight ``q`` is twice an E2M1 value (:func:`.values.value_set`: the
  int8 decode of ``msd.quantize(weights="mxfp4")`` holds exactly {0, ±1, ±2, ±3, ±4, ±6, ±8, ±12});
- ``scale`` is one tensor, ``2**(u(s) − 128)`` of a uint8 tensor ``s`` (``exp2``/``powf(2, ·)`` of
  ``uitofp(s) − 128``), so ``s`` itself is the E8M0 byte of ``w = (q/2) · 2**(u(s) − 127)``.

Nothing here creates IR.
"""

from __future__ import annotations

from iree.compiler import ir

from msd.mx_format import E8M0_HALF_OFFSET, TWICE_E2M1

from .. import _ir
from ..analysis.dequant import Const, Expr, Leaf, Node
from ..analysis.values import value_set
from ..report import NotHandled

E8M0_SCALE_OFFSET = float(E8M0_HALF_OFFSET)  # scale = 2**(u(s) + offset): with −128, s is the E8M0 byte of q/2


def e8m0_scale(q: ir.Value, scale: Expr) -> Leaf:
    """The E8M0 byte tensor of an MXFP4 weight ``scale · q``, read like the scale (same map);
    :class:`NotHandled` when the weight is not provably MXFP4."""
    values = value_set(q)
    if values is None or not values <= TWICE_E2M1:
        shown = "unbounded" if values is None else sorted(values)
        raise NotHandled(f"the integer weight is not provably twice an E2M1 value ({shown})")
    leaf = scale_leaf(scale)
    if leaf is None:
        raise NotHandled("the weight scale is an expression, not one E8M0 tensor")
    return Leaf(e8m0_bytes(leaf), leaf.map)


def scale_leaf(e: Expr) -> Leaf | None:
    """The tensor the scale expression is, up to factors of exactly 1 (``sitofp(q)·1·s``)."""
    while isinstance(e, Node) and e.kind == "mul":
        ones = [a for a in e.args if isinstance(a, Const) and a.value == 1.0]
        rest = [a for a in e.args if not (isinstance(a, Const) and a.value == 1.0)]
        if not ones or len(rest) != 1:
            return None
        e = rest[0]
    return e if isinstance(e, Leaf) else None


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


__all__ = ["E8M0_SCALE_OFFSET", "TWICE_E2M1", "e8m0_bytes", "e8m0_scale", "scale_leaf"]
