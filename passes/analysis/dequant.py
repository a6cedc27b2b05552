"""Symbolic evaluation of a dequantization chain (the weight side of a contraction).

:class:`WeightTrace` walks the producers of a contraction operand — elementwise ``linalg.generic``
bodies, transposes, broadcasts and reshapes — and evaluates them into ``W = a·q + b``: ``q`` one
8-bit integer tensor read along the reduction dim, ``a`` and ``b`` expressions that do not vary
along it (or only per group).  Integer values carry the range of their mathematical value so that
wrap-around is refused, never assumed away (the bits an unsigned weight can hold come from
:func:`.values.unsigned_range`).  Used by ``--msd-decompose-activations``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from iree.compiler import ir

from .. import _ir
from ..report import NotHandled
from .values import unsigned_range


@dataclass(frozen=True)
class Leaf:
    """Element ``value[map(i)]`` of a tensor that the dequantization reads."""

    value: ir.Value
    map: ir.AffineMap  # contraction iteration space → tensor dims


@dataclass(frozen=True)
class Scalar:
    """A scalar SSA value (captured from above a region, or a constant)."""

    value: ir.Value


@dataclass(frozen=True)
class Const:
    value: float


@dataclass(frozen=True)
class Node:
    """An arithmetic node of a K-invariant expression: add, sub, mul, div, neg."""

    kind: str
    args: tuple


Expr = Leaf | Scalar | Const | Node


@dataclass(frozen=True)
class IntTerm:
    """``sign · value`` of a K-invariant integer leaf or constant, read signed or unsigned."""

    sign: int
    value: Leaf | Const
    unsigned: bool


@dataclass(frozen=True)
class IntAffine:
    """An integer value ``q_coef·q + Σ terms`` with the range of its mathematical value.

    Integer ops are modular; the rewrite uses the mathematical value, so every conversion checks
    that the range fits the interpretation (signed/unsigned) at the current bit width.  A value just
    read from a tensor (``raw``) has no interpretation yet: the first extension/conversion picks it.
    """

    q_coef: int
    terms: tuple[IntTerm, ...]
    width: int
    lo: int = 0
    hi: int = 0
    raw: bool = False
    q_shift: int = 0  # the weight is read unsigned: the matmul uses q - q_shift (fits int8)
    q_urange: tuple[int, int] = (0, 255)  # proven range of the weight's bits read unsigned

    @property
    def has_q(self) -> bool:
        return self.q_coef != 0


def _int_range(width: int, unsigned: bool) -> tuple[int, int]:
    return (0, 2**width - 1) if unsigned else (-(2 ** (width - 1)), 2 ** (width - 1) - 1)


def _interpret(v: IntAffine, unsigned: bool) -> IntAffine:
    """Read ``v``'s bits as signed/unsigned; refuse when that is not its mathematical value."""
    if v.raw:
        if v.has_q and unsigned:
            # Unsigned weight bits q_u in [lo, hi]: the matmul uses q_u - c (centred, fits int8,
            # materialized once) and the +c joins the offset terms (a row/group-sum term).
            lo, hi = v.q_urange
            shift = (lo + hi + 1) // 2
            terms = (*v.terms, IntTerm(1, Const(float(shift)), False))
            return IntAffine(v.q_coef, terms, v.width, lo, hi, q_shift=shift)
        if not v.has_q and len(v.terms) == 1 and isinstance(v.terms[0].value, Const):
            bits = int(v.terms[0].value.value) % 2**v.width  # a constant: its exact value
            value = bits if unsigned or bits < 2 ** (v.width - 1) else bits - 2**v.width
            return IntAffine(0, (IntTerm(1, Const(float(value)), unsigned),), v.width, value, value)
        lo, hi = _int_range(v.width, unsigned)
        terms = tuple(IntTerm(t.sign, t.value, unsigned) for t in v.terms)
        return IntAffine(v.q_coef, terms, v.width, lo, hi)
    lo, hi = _int_range(v.width, unsigned)
    if not (lo <= v.lo and v.hi <= hi):
        kind = "unsigned" if unsigned else "signed"
        raise NotHandled(
            f"integer value in [{v.lo}, {v.hi}] read as {kind} i{v.width} in the dequantization: may wrap"
        )
    return v


def _elementwise_on_tensors(op: ir.Operation) -> bool:
    """An ``arith`` op on ranked tensors, every operand of the result's shape (not a constant)."""
    if op.name == "arith.constant" or len(op.results) != 1:
        return False
    t = op.results[0].type
    if not isinstance(t, ir.RankedTensorType):
        return False
    return all(isinstance(o.type, ir.RankedTensorType) and ir.RankedTensorType(o.type).shape == t.shape
               for o in op.operands)


@dataclass(frozen=True)
class FloatAffine:
    """A float value ``scale·q + offset`` with ``scale``, ``offset`` K-invariant (None = 0)."""

    scale: Expr | None
    offset: Expr | None


def _add(a: Expr | None, b: Expr | None) -> Expr | None:
    if a is None:
        return b
    if b is None:
        return a
    return Node("add", (a, b))


def _neg(a: Expr | None) -> Expr | None:
    return None if a is None else Node("neg", (a,))


def _mul(a: Expr | None, b: Expr | None) -> Expr | None:
    if a is None or b is None:
        return None
    return Node("mul", (a, b))


def _div(a: Expr | None, b: Expr) -> Expr | None:
    return None if a is None else Node("div", (a, b))


TRACED_OPS = ("linalg.generic", "linalg.transpose", "linalg.broadcast", "tensor.collapse_shape", "tensor.expand_shape")


@dataclass
class WeightTrace:
    """Walks the producers of a contraction operand back to an integer weight tensor."""

    k_dim: int
    q_leaves: list[Leaf] = field(default_factory=list)
    leaves: list[Leaf] = field(default_factory=list)
    k_leaves: list[Leaf] = field(default_factory=list)  # float tensors varying along K (checked by the plan)
    found_integer: bool = False  # an integer tensor varying along K was reached
    q_shift: int = 0  # the weight is read unsigned; the matmul uses q - q_shift
    notes: list[str] = field(default_factory=list)
    depth: int = 0

    # --- tensors ------------------------------------------------------------------------
    def tensor(self, value: ir.Value, amap: ir.AffineMap) -> FloatAffine | IntAffine:
        """The element ``value[amap(i)]`` as an affine function of the weight."""
        self.depth += 1
        if self.depth > 64:
            raise NotHandled("dequantization chain deeper than 64 ops")
        owner = _ir.producer(value)
        name = owner.name if owner is not None else None
        if name == "linalg.generic":
            if not isinstance(_ir.elem_type(value), ir.IntegerType):
                if self.k_reach(amap) == "full":
                    # Varying along K: evaluated, unless no integer is involved — then it is a float
                    # tensor (a per-K scale computed by anything, e.g. a KV-cache update) and the
                    # plan decides whether it can be folded into the activation.
                    before = (len(self.q_leaves), self.found_integer)
                    saved = (len(self.leaves), len(self.k_leaves))
                    try:
                        traced = self._generic(owner, value, amap)
                    except NotHandled:
                        if (len(self.q_leaves), self.found_integer) != before:
                            raise
                        traced = None
                    if traced is not None and (len(self.q_leaves), self.found_integer) != before:
                        return traced
                    del self.leaves[saved[0]:], self.k_leaves[saved[1]:]
                    return self._leaf(value, amap)
                # A float tensor constant along K (a per-channel or per-group scale) may be computed
                # by anything (e.g. ``2**(e - 127)`` from E8M0 bytes): if its body is beyond the
                # evaluation, the tensor itself is the leaf, read by the epilogue as it is.
                traced = self._try_generic(owner, value, amap)
                return traced if traced is not None else self._leaf(value, amap)
            # Integer producers (e.g. an int4 unpack) the evaluation does not model are fine as
            # long as their result is an integer tensor: it becomes the leaf instead.
            traced = self._try_generic(owner, value, amap)
            if traced is not None:
                return traced
        if name is not None and name.startswith("arith.") and _elementwise_on_tensors(owner):
            # the dequantization written as arith ops on whole tensors (no linalg.generic): the same
            # scalar evaluation, each operand read at the same index
            return self._body_op(owner, [self.tensor(o, amap) for o in owner.operands])
        if name == "linalg.transpose":
            perm = list(ir.DenseI64ArrayAttr(owner.attributes["permutation"]))
            inv = [perm.index(j) for j in range(len(perm))]
            inner = ir.AffineMap.get(amap.n_dims, 0, [amap.results[i] for i in inv])
            return self.tensor(owner.operands[0], inner)
        if name == "linalg.broadcast":
            added = set(ir.DenseI64ArrayAttr(owner.attributes["dimensions"]))
            kept = [e for i, e in enumerate(amap.results) if i not in added]
            return self.tensor(owner.operands[0], ir.AffineMap.get(amap.n_dims, 0, kept))
        if name in ("tensor.collapse_shape", "tensor.expand_shape"):
            if name == "tensor.collapse_shape":
                inner = self._through_collapse(owner, amap)
            else:
                inner = self._through_expand(owner, value, amap)
            inner = self._clean(inner)
            source = _ir.producer(owner.operands[0])
            traceable = source is not None and source.name in TRACED_OPS
            plain = inner is not None and all(isinstance(e, (ir.AffineDimExpr, ir.AffineConstantExpr))
                                              for e in inner.results)
            if inner is not None and (traceable or plain):
                source_value = owner.operands[0]
                is_int = isinstance(_ir.elem_type(source_value), ir.IntegerType)
                if source is not None and source.name == "linalg.generic" and is_int:
                    traced = self._try_generic(source, source_value, inner)
                    return traced if traced is not None else self._leaf(value, amap)
                return self.tensor(source_value, inner)
        return self._leaf(value, amap)

    def _try_generic(self, op: ir.Operation, value: ir.Value, amap: ir.AffineMap):
        """Evaluate a generic (integer-producing, or a float one constant along K), or None (and
        no trace of the attempt) if its body is beyond the evaluation — the caller then takes the
        tensor as the leaf."""
        saved = (len(self.q_leaves), len(self.leaves), len(self.k_leaves), self.found_integer)
        try:
            return self._generic(op, value, amap)
        except NotHandled:
            del self.q_leaves[saved[0]:], self.leaves[saved[1]:], self.k_leaves[saved[2]:]
            self.found_integer = saved[3]
            return None

    def _clean(self, amap: ir.AffineMap) -> ir.AffineMap | None:
        """``amap`` with every index in a form the rewrite understands (plain dims, constants,
        ``k floordiv g``, ``k mod g``), or None: then the reshape is not traced through and its
        result is the leaf (e.g. an int4 unpack that ends in a concat)."""
        exprs = []
        for e in amap.results:
            u = _ir.k_usage(e, self.k_dim)
            if u is None:
                return None
            exprs.append(ir.AffineDimExpr.get(u[1]) if u[0] == "dim" else e)
        return ir.AffineMap.get(amap.n_dims, 0, exprs)

    @staticmethod
    def _groups(op: ir.Operation) -> list[list[int]]:
        groups = ir.ArrayAttr(op.attributes["reassociation"])
        return [[ir.IntegerAttr(i).value for i in ir.ArrayAttr(g)] for g in groups]

    def _through_collapse(self, op: ir.Operation, amap: ir.AffineMap) -> ir.AffineMap:
        """Index of the source of a collapse: result index r of group [a, b] → (r floordiv |b|, r mod |b|)."""
        src = _ir.tensor_type(op.operands[0])
        exprs = []
        for r, group in enumerate(self._groups(op)):
            e = amap.results[r]
            sizes = [src.get_dim_size(d) for d in group]
            if any(src.is_dynamic_dim(d) for d in group[1:]):
                raise NotHandled("weight collapsed from dynamic inner dims")
            for t, size in enumerate(sizes):
                inner = 1
                for sz in sizes[t + 1:]:
                    inner *= sz
                if size == 1 and len(group) > 1:
                    exprs.append(ir.AffineConstantExpr.get(0))
                    continue
                part = ir.AffineFloorDivExpr.get(e, ir.AffineConstantExpr.get(inner)) if inner > 1 else e
                outer = 1
                for sz in sizes[:t]:
                    outer *= sz
                if outer > 1:  # leading unit dims need no wrap-around
                    part = ir.AffineModExpr.get(part, ir.AffineConstantExpr.get(size))
                exprs.append(part)
        return ir.AffineMap.get(amap.n_dims, 0, exprs)

    def _through_expand(self, op: ir.Operation, value: ir.Value, amap: ir.AffineMap) -> ir.AffineMap:
        """Index of the source of an expand: group [a, b] → a·|b| + b."""
        res = _ir.tensor_type(value)
        exprs = []
        for group in self._groups(op):
            if any(res.is_dynamic_dim(d) for d in group[1:]):
                raise NotHandled("weight expanded into dynamic inner dims")
            e = ir.AffineConstantExpr.get(0)
            for d in group:
                e = e * res.get_dim_size(d) + amap.results[d]
            exprs.append(e)
        return ir.AffineMap.get(amap.n_dims, 0, exprs)

    def k_reach(self, amap: ir.AffineMap) -> str:
        """How a map reads K: "none", "group" (only ``k floordiv g``), or "full"."""
        kinds = set()
        for e in amap.results:
            u = _ir.k_usage(e, self.k_dim)
            if u is None:
                kinds.add("full" if self.k_dim in _ir.used_dims(ir.AffineMap.get(amap.n_dims, 0, [e])) else "none")
            elif u[0] == "kgroup":
                kinds.add("group")
            elif u in (("dim", self.k_dim),) or u[0] == "kin":
                kinds.add("full")
        return "full" if "full" in kinds else "group" if "group" in kinds else "none"

    def _leaf(self, value: ir.Value, amap: ir.AffineMap) -> FloatAffine | IntAffine:
        et = _ir.elem_type(value)
        leaf = Leaf(value, amap)
        uses_k = self.k_reach(amap) == "full"
        if isinstance(et, ir.IntegerType):
            if not uses_k:
                self.leaves.append(leaf)
                return IntAffine(0, (IntTerm(1, leaf, False),), et.width, raw=True)
            self.found_integer = True
            if et.width > 8:
                raise NotHandled(
                    f"integer weight of type i{et.width}: only weights of 8 bits or fewer fit the int8 matmul"
                )
            t = _ir.tensor_type(value)
            if any(u is None or (u == ("const", 0) and t.get_dim_size(i) != 1)
                   for i, u in enumerate(_ir.k_usage(e, self.k_dim) for e in amap.results)):
                raise NotHandled("integer weight read through a non-trivial indexing map")
            self.q_leaves.append(leaf)  # (i1 … i7: widened to i8 when emitted, see Plan.q_width)
            return IntAffine(1, (), et.width, raw=True, q_urange=unsigned_range(value))
        if not _ir.is_float(et):
            raise NotHandled(f"weight chain reads a tensor of unsupported element type {et}")
        if uses_k:  # a per-K scale can be folded into the activation; the plan checks it is one
            self.k_leaves.append(leaf)
            return FloatAffine(None, leaf)
        self.leaves.append(leaf)
        return FloatAffine(None, leaf)

    def _generic(self, op: ir.Operation, value: ir.Value, amap: ir.AffineMap):
        if not _ir.is_elementwise(op):
            raise NotHandled("weight produced by a reduction (not an elementwise dequantization)")
        n_in = len(op.operands) - len(op.results)
        res_idx = list(op.results).index(value)
        maps = _ir.maps_of(op)
        out_map = maps[n_in + res_idx]
        if not out_map.is_permutation:
            raise NotHandled("dequantization writes through a non-permutation map")
        perm = _ir.dim_positions(out_map)
        inv = ir.AffineMap.get(
            out_map.n_dims, 0, [ir.AffineDimExpr.get(perm.index(j)) for j in range(len(perm))]
        )
        to_generic = _ir.compose(inv, amap)  # contraction space → generic space
        block = op.regions[0].blocks[0]
        args = list(block.arguments)
        yielded = list(block.operations)[-1].operands[res_idx]
        memo: dict[int, FloatAffine | IntAffine] = {}

        def scalar(v: ir.Value) -> FloatAffine | IntAffine:
            for i, a in enumerate(args):
                if a == v:
                    if i >= n_in:
                        raise NotHandled("dequantization reads its output tensor")
                    return self.tensor(op.operands[i], _ir.compose(maps[i], to_generic))
            owner = _ir.producer(v)
            if owner is None or owner.parent != op:
                return self._captured(v)
            key = hash(owner)
            if key not in memo:
                memo[key] = self._body_op(owner, [scalar(o) for o in owner.operands])
            return memo[key]

        return scalar(yielded)

    def _captured(self, v: ir.Value) -> FloatAffine | IntAffine:
        owner = _ir.producer(v)
        if owner is not None and owner.name == "arith.constant":
            attr = owner.attributes["value"]
            if isinstance(attr, ir.FloatAttr):
                return FloatAffine(None, Const(attr.value))
            if isinstance(attr, ir.IntegerAttr):
                width = ir.IntegerType(attr.type).width
                return IntAffine(0, (IntTerm(1, Const(float(attr.value)), False),), width, raw=True)
        et = v.type
        if _ir.is_float(et):
            return FloatAffine(None, Scalar(v))
        raise NotHandled(f"dequantization uses a scalar of type {et} from outside its body")

    # --- scalar ops in a dequantization body ---------------------------------------------
    def _body_op(self, op: ir.Operation, a: list) -> FloatAffine | IntAffine:
        name = op.name
        if name == "arith.constant":
            return self._captured(op.result)
        if name in ("arith.sitofp", "arith.uitofp"):
            x = _interpret(a[0], name == "arith.uitofp")
            self.q_shift = self.q_shift or x.q_shift
            offset = None
            for t in x.terms:
                term = Node("int", (t.value, t.unsigned))
                offset = _add(offset, term if t.sign > 0 else _neg(term))
            return FloatAffine(Const(float(x.q_coef)) if x.has_q else None, offset)
        if name in ("arith.extsi", "arith.extui"):
            x = _interpret(a[0], name == "arith.extui")
            width = ir.IntegerType(op.result.type).width
            return IntAffine(x.q_coef, x.terms, width, x.lo, x.hi, q_shift=x.q_shift)
        if name in ("arith.subi", "arith.addi"):
            x, y = (v if not v.raw else _interpret(v, False) for v in a)
            sign = -1 if name == "arith.subi" else 1
            terms = x.terms + tuple(IntTerm(sign * t.sign, t.value, t.unsigned) for t in y.terms)
            lo, hi = (x.lo + y.lo, x.hi + y.hi) if sign > 0 else (x.lo - y.hi, x.hi - y.lo)
            q_coef = x.q_coef + sign * y.q_coef
            if q_coef not in (0, 1, -1) or (x.has_q and y.has_q):
                raise NotHandled("weight appears non-linearly in the dequantization")
            if q_coef == -1:
                raise NotHandled("negated integer weight in the dequantization")
            return IntAffine(q_coef, terms, ir.IntegerType(op.result.type).width, lo, hi,
                             q_shift=x.q_shift or y.q_shift)
        if name in ("arith.extf", "arith.truncf"):
            (x,) = a
            if name == "arith.truncf":
                self.notes.append("dequantized weight rounded by truncf in the source; exact product used")
            return x
        if any(isinstance(v, IntAffine) for v in a):
            raise NotHandled(f"unsupported op {name} on integers in the dequantization chain")
        if name in ("arith.addf", "arith.subf"):
            x, y = a
            if name == "arith.subf":
                y = FloatAffine(_neg(y.scale), _neg(y.offset))
            return FloatAffine(_add(x.scale, y.scale), _add(x.offset, y.offset))
        if name == "arith.mulf":
            x, y = a
            if x.scale is not None and y.scale is not None:
                raise NotHandled("weight appears non-linearly in the dequantization (q·q)")
            if x.scale is not None:
                x, y = y, x
            return FloatAffine(_mul(x.offset, y.scale), _mul(x.offset, y.offset))
        if name == "arith.divf":
            x, y = a
            if y.scale is not None:
                raise NotHandled("dequantization divides by the weight")
            return FloatAffine(_div(x.scale, y.offset), _div(x.offset, y.offset))
        if name == "arith.negf":
            (x,) = a
            return FloatAffine(_neg(x.scale), _neg(x.offset))
        raise NotHandled(f"unknown op {name} in the dequantization chain")


# --- reading the K-invariant expressions ----------------------------------------------------
def factors(e: Expr) -> list[Expr]:
    """The factors of a product ``a·b·…`` (``[e]`` for anything else)."""
    if isinstance(e, Node) and e.kind == "mul":
        return [f for a in e.args for f in factors(a)]
    return [e]


def mentions(e: Expr, leaves: list[Leaf]) -> bool:
    """Whether ``e`` reads one of ``leaves`` (by identity)."""
    if isinstance(e, Leaf):
        return any(e is leaf for leaf in leaves)
    if isinstance(e, Node):
        return any(mentions(a, leaves) for a in e.args if isinstance(a, (Leaf, Node)))
    return False


__all__ = ["Const", "Expr", "FloatAffine", "IntAffine", "IntTerm", "Leaf", "Node", "Scalar", "WeightTrace", "factors",
           "mentions"]
