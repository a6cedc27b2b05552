"""The weight tracer (msd.passes.analysis.dequant) on hand-written dequantization IR.

Every weight here is ``W[n, k]`` read by a contraction over ``(m, n, k)`` at ``(d1, d2)``: K is dim 2.
"""

from __future__ import annotations

import re

import pytest
from iree.compiler import ir
from mlir_text import GROUP, ID2, ID3, ROW, dequant_generic, elementwise, empty, function, nibble_halves

from msd.passes.analysis.dequant import Const, FloatAffine, IntAffine, Leaf, Node, WeightTrace
from msd.passes.report import NotHandled

K = 2
W = "tensor<16x64xf32>"


def trace(w: ir.Value) -> tuple[WeightTrace, FloatAffine | IntAffine]:
    t = WeightTrace(K)
    form = t.tensor(w, ir.AffineMap.get(3, 0, [ir.AffineDimExpr.get(1), ir.AffineDimExpr.get(2)]))
    return t, form


def leaf_of(e) -> Leaf:
    """The one tensor an expression like ``s · 1`` reads."""
    if isinstance(e, Leaf):
        return e
    (leaf,) = [leaf_of(a) for a in e.args if isinstance(a, (Leaf, Node))]
    return leaf


def test_per_channel(parse, ir_returned) -> None:
    m = parse(function(
        "%q: tensor<16x64xi8>, %s: tensor<16xf32>", "%w", W,
        empty("%e", W),
        dequant_generic("%w", ("%q", "tensor<16x64xi8>"), ("%s", "tensor<16xf32>"), ("%e", W), [ID2, ROW, ID2])))
    t, form = trace(ir_returned(m)[0])
    q, s = m.body.operations[0].arguments
    assert isinstance(form, FloatAffine) and form.offset is None
    assert [leaf.value for leaf in t.q_leaves] == [q] and t.found_integer and t.q_shift == 0
    assert leaf_of(form.scale).value == s and t.k_reach(leaf_of(form.scale).map) == "none"


def test_group_wise_through_reshapes(parse, ir_returned) -> None:
    """``q`` [N, K] expanded to [N, K/32, 32], one scale per (n, group), collapsed back."""
    m = parse(function(
        "%q: tensor<16x64xi8>, %s: tensor<16x2xf32>", "%wc", W,
        "  %qe = tensor.expand_shape %q [[0], [1, 2]] output_shape [16, 2, 32]"
        " : tensor<16x64xi8> into tensor<16x2x32xi8>",
        empty("%e", "tensor<16x2x32xf32>"),
        dequant_generic("%w", ("%qe", "tensor<16x2x32xi8>"), ("%s", "tensor<16x2xf32>"),
                        ("%e", "tensor<16x2x32xf32>"), [ID3, GROUP, ID3]),
        "  %wc = tensor.collapse_shape %w [[0], [1, 2]] : tensor<16x2x32xf32> into tensor<16x64xf32>"))
    t, form = trace(ir_returned(m)[0])
    scale = leaf_of(form.scale)
    assert t.k_reach(scale.map) == "group"
    assert str(scale.map) == "(d0, d1, d2) -> (d1, d2 floordiv 32)"
    (q,) = t.q_leaves  # followed back through the expand: the stored [N, K] tensor, read plainly
    assert q.value == m.body.operations[0].arguments[0] and str(q.map) == "(d0, d1, d2) -> (d1, d2)"


def test_zero_point_becomes_an_offset(parse, ir_returned) -> None:
    """``(sitofp(q) - z) · s``: scale ``s``, offset ``-z·s`` (a row-sum term in the rewrite)."""
    m = parse(function(
        "%q: tensor<16x64xi8>, %s: tensor<16xf32>, %z: tensor<16xf32>", "%w", W,
        empty("%e", W),
        dequant_generic("%w", ("%q", "tensor<16x64xi8>"), ("%s", "tensor<16xf32>"), ("%e", W), [ID2, ROW, ROW, ID2],
                        zero=("%z", "tensor<16xf32>"))))
    t, form = trace(ir_returned(m)[0])
    _, s, z = m.body.operations[0].arguments
    assert form.offset is not None and form.scale is not None
    assert {leaf.value for leaf in t.leaves} == {s, z}
    assert all(t.k_reach(leaf.map) == "none" for leaf in t.leaves)


def test_packed_int4_unpacked_and_centred(parse, ir_returned) -> None:
    """Two int4 codes per byte, unpacked with ``andi 15`` / ``shrui 4`` and read unsigned: the
    unpacked tensor is the weight, centred at 8 (``q - 8`` fits int8), ``+8`` joins the offset."""
    m = parse(function(
        "%p: tensor<16x32xi8>, %s: tensor<16xf32>", "%w", W,
        nibble_halves("%p", "tensor<16x32xi8>", "tensor<16x64xi8>", init="%e8"),
        empty("%e", W),
        dequant_generic("%w", ("%q", "tensor<16x64xi8>"), ("%s", "tensor<16xf32>"), ("%e", W), [ID2, ROW, ID2],
                        convert="uitofp")))
    t, form = trace(ir_returned(m)[0])
    (q,) = t.q_leaves
    assert q.value.owner.name == "tensor.concat"
    assert t.q_shift == 8
    assert form.offset is not None  # the +8 of q = (q - 8) + 8, times the scale


def test_an_unsigned_byte_weight_is_centred_at_128(parse, ir_returned) -> None:
    m = parse(function(
        "%q: tensor<16x64xi8>", "%w", W,
        empty("%e", W),
        elementwise("%w", "%q", "tensor<16x64xi8>", W, "%f = arith.uitofp %a : i8 to f32", args=("%a", "%o"),
                    yielded="%f")))
    t, form = trace(ir_returned(m)[0])
    assert t.q_shift == 128 and form.scale == Const(1.0)


@pytest.mark.parametrize(("body", "element", "reason"), [
    ("%f = arith.sitofp %a : i8 to f32\n %r = math.absf %f : f32", "i8",
     "unknown op math.absf in the dequantization chain"),
    ("%r = arith.sitofp %a : i32 to f32", "i32",
     "integer weight of type i32: only weights of 8 bits or fewer fit the int8 matmul"),
    ("%f = arith.sitofp %a : i8 to f32\n %r = arith.mulf %f, %f : f32", "i8",
     "weight appears non-linearly in the dequantization (q·q)"),
])
def test_refusals_say_why(parse, ir_returned, body: str, element: str, reason: str) -> None:
    m = parse(function(
        f"%q: tensor<16x64x{element}>", "%w", W,
        empty("%e", W),
        elementwise("%w", "%q", f"tensor<16x64x{element}>", W, body, args=("%a", "%o"))))
    t = WeightTrace(K)
    with pytest.raises(NotHandled, match=re.escape(reason)):
        t.tensor(ir_returned(m)[0], ir.AffineMap.get(3, 0, [ir.AffineDimExpr.get(1), ir.AffineDimExpr.get(2)]))
    assert t.found_integer  # the reason is about an integer weight, not a float operand


def test_a_float_weight_is_a_float_leaf(parse, ir_returned) -> None:
    m = parse("func.func @f(%w: tensor<16x64xf32>) -> tensor<16x64xf32> { return %w : tensor<16x64xf32> }")
    t, form = trace(ir_returned(m)[0])
    assert isinstance(form, FloatAffine) and form.scale is None and not t.found_integer and not t.q_leaves
