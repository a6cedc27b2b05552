"""The weight tracer (msd.passes.analysis.dequant) on hand-written dequantization IR.

Every weight here is ``W[n, k]`` read by a contraction over ``(m, n, k)`` at ``(d1, d2)``: K is dim 2.
"""

from __future__ import annotations

import re

import pytest
from iree.compiler import ir

from msd.passes.analysis.dequant import Const, FloatAffine, IntAffine, Leaf, Node, WeightTrace
from msd.passes.report import NotHandled

K = 2
ID2 = "affine_map<(d0, d1) -> (d0, d1)>"
ROW = "affine_map<(d0, d1) -> (d0)>"
ID3 = "affine_map<(d0, d1, d2) -> (d0, d1, d2)>"
GROUP = "affine_map<(d0, d1, d2) -> (d0, d1)>"


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
    m = parse(f"""
func.func @f(%q: tensor<16x64xi8>, %s: tensor<16xf32>) -> tensor<16x64xf32> {{
  %e = tensor.empty() : tensor<16x64xf32>
  %w = linalg.generic {{indexing_maps = [{ID2}, {ROW}, {ID2}], iterator_types = ["parallel", "parallel"]}}
      ins(%q, %s : tensor<16x64xi8>, tensor<16xf32>) outs(%e : tensor<16x64xf32>) {{
  ^bb0(%a: i8, %b: f32, %o: f32):
    %f = arith.sitofp %a : i8 to f32
    %r = arith.mulf %f, %b : f32
    linalg.yield %r : f32
  }} -> tensor<16x64xf32>
  return %w : tensor<16x64xf32>
}}""")
    t, form = trace(ir_returned(m)[0])
    q, s = m.body.operations[0].arguments
    assert isinstance(form, FloatAffine) and form.offset is None
    assert [leaf.value for leaf in t.q_leaves] == [q] and t.found_integer and t.q_shift == 0
    assert leaf_of(form.scale).value == s and t.k_reach(leaf_of(form.scale).map) == "none"


def test_group_wise_through_reshapes(parse, ir_returned) -> None:
    """``q`` [N, K] expanded to [N, K/32, 32], one scale per (n, group), collapsed back."""
    m = parse(f"""
func.func @f(%q: tensor<16x64xi8>, %s: tensor<16x2xf32>) -> tensor<16x64xf32> {{
  %qe = tensor.expand_shape %q [[0], [1, 2]] output_shape [16, 2, 32] : tensor<16x64xi8> into tensor<16x2x32xi8>
  %e = tensor.empty() : tensor<16x2x32xf32>
  %w = linalg.generic {{indexing_maps = [{ID3}, {GROUP}, {ID3}], iterator_types = ["parallel", "parallel", "parallel"]}}
      ins(%qe, %s : tensor<16x2x32xi8>, tensor<16x2xf32>) outs(%e : tensor<16x2x32xf32>) {{
  ^bb0(%a: i8, %b: f32, %o: f32):
    %f = arith.sitofp %a : i8 to f32
    %r = arith.mulf %f, %b : f32
    linalg.yield %r : f32
  }} -> tensor<16x2x32xf32>
  %wc = tensor.collapse_shape %w [[0], [1, 2]] : tensor<16x2x32xf32> into tensor<16x64xf32>
  return %wc : tensor<16x64xf32>
}}""")
    t, form = trace(ir_returned(m)[0])
    scale = leaf_of(form.scale)
    assert t.k_reach(scale.map) == "group"
    assert str(scale.map) == "(d0, d1, d2) -> (d1, d2 floordiv 32)"
    (q,) = t.q_leaves  # followed back through the expand: the stored [N, K] tensor, read plainly
    assert q.value == m.body.operations[0].arguments[0] and str(q.map) == "(d0, d1, d2) -> (d1, d2)"


def test_zero_point_becomes_an_offset(parse, ir_returned) -> None:
    """``(sitofp(q) - z) · s``: scale ``s``, offset ``-z·s`` (a row-sum term in the rewrite)."""
    m = parse(f"""
func.func @f(%q: tensor<16x64xi8>, %s: tensor<16xf32>, %z: tensor<16xf32>) -> tensor<16x64xf32> {{
  %e = tensor.empty() : tensor<16x64xf32>
  %w = linalg.generic {{indexing_maps = [{ID2}, {ROW}, {ROW}, {ID2}], iterator_types = ["parallel", "parallel"]}}
      ins(%q, %s, %z : tensor<16x64xi8>, tensor<16xf32>, tensor<16xf32>) outs(%e : tensor<16x64xf32>) {{
  ^bb0(%a: i8, %b: f32, %c: f32, %o: f32):
    %f = arith.sitofp %a : i8 to f32
    %d = arith.subf %f, %c : f32
    %r = arith.mulf %d, %b : f32
    linalg.yield %r : f32
  }} -> tensor<16x64xf32>
  return %w : tensor<16x64xf32>
}}""")
    t, form = trace(ir_returned(m)[0])
    _, s, z = m.body.operations[0].arguments
    assert form.offset is not None and form.scale is not None
    assert {leaf.value for leaf in t.leaves} == {s, z}
    assert all(t.k_reach(leaf.map) == "none" for leaf in t.leaves)


def test_packed_int4_unpacked_and_centred(parse, ir_returned) -> None:
    """Two int4 codes per byte, unpacked with ``andi 15`` / ``shrui 4`` and read unsigned: the
    unpacked tensor is the weight, centred at 8 (``q - 8`` fits int8), ``+8`` joins the offset."""
    m = parse(f"""
func.func @f(%p: tensor<16x32xi8>, %s: tensor<16xf32>) -> tensor<16x64xf32> {{
  %c15 = arith.constant 15 : i8
  %c4 = arith.constant 4 : i8
  %e8 = tensor.empty() : tensor<16x32xi8>
  %lo = linalg.generic {{indexing_maps = [{ID2}, {ID2}], iterator_types = ["parallel", "parallel"]}}
      ins(%p : tensor<16x32xi8>) outs(%e8 : tensor<16x32xi8>) {{
  ^bb0(%v: i8, %o: i8):
    %r = arith.andi %v, %c15 : i8
    linalg.yield %r : i8
  }} -> tensor<16x32xi8>
  %hi = linalg.generic {{indexing_maps = [{ID2}, {ID2}], iterator_types = ["parallel", "parallel"]}}
      ins(%p : tensor<16x32xi8>) outs(%e8 : tensor<16x32xi8>) {{
  ^bb0(%v: i8, %o: i8):
    %r = arith.shrui %v, %c4 : i8
    linalg.yield %r : i8
  }} -> tensor<16x32xi8>
  %q = tensor.concat dim(1) %lo, %hi : (tensor<16x32xi8>, tensor<16x32xi8>) -> tensor<16x64xi8>
  %e = tensor.empty() : tensor<16x64xf32>
  %w = linalg.generic {{indexing_maps = [{ID2}, {ROW}, {ID2}], iterator_types = ["parallel", "parallel"]}}
      ins(%q, %s : tensor<16x64xi8>, tensor<16xf32>) outs(%e : tensor<16x64xf32>) {{
  ^bb0(%a: i8, %b: f32, %o: f32):
    %f = arith.uitofp %a : i8 to f32
    %r = arith.mulf %f, %b : f32
    linalg.yield %r : f32
  }} -> tensor<16x64xf32>
  return %w : tensor<16x64xf32>
}}""")
    t, form = trace(ir_returned(m)[0])
    (q,) = t.q_leaves
    assert q.value.owner.name == "tensor.concat"
    assert t.q_shift == 8
    assert form.offset is not None  # the +8 of q = (q - 8) + 8, times the scale


def test_an_unsigned_byte_weight_is_centred_at_128(parse, ir_returned) -> None:
    m = parse(f"""
func.func @f(%q: tensor<16x64xi8>) -> tensor<16x64xf32> {{
  %e = tensor.empty() : tensor<16x64xf32>
  %w = linalg.generic {{indexing_maps = [{ID2}, {ID2}], iterator_types = ["parallel", "parallel"]}}
      ins(%q : tensor<16x64xi8>) outs(%e : tensor<16x64xf32>) {{
  ^bb0(%a: i8, %o: f32):
    %f = arith.uitofp %a : i8 to f32
    linalg.yield %f : f32
  }} -> tensor<16x64xf32>
  return %w : tensor<16x64xf32>
}}""")
    t, form = trace(ir_returned(m)[0])
    assert t.q_shift == 128 and form.scale == Const(1.0)


@pytest.mark.parametrize(("body", "element", "reason"), [
    ("%f = arith.sitofp %a : i8 to f32\n %r = math.absf %f : f32", "i8",
     "unknown op math.absf in the dequantization chain"),
    ("%r = arith.sitofp %a : i32 to f32", "i32", "integer weight of type i32: only 8-bit weights fit the int8 matmul"),
    ("%f = arith.sitofp %a : i8 to f32\n %r = arith.mulf %f, %f : f32", "i8",
     "weight appears non-linearly in the dequantization (q·q)"),
])
def test_refusals_say_why(parse, ir_returned, body: str, element: str, reason: str) -> None:
    m = parse(f"""
func.func @f(%q: tensor<16x64x{element}>) -> tensor<16x64xf32> {{
  %e = tensor.empty() : tensor<16x64xf32>
  %w = linalg.generic {{indexing_maps = [{ID2}, {ID2}], iterator_types = ["parallel", "parallel"]}}
      ins(%q : tensor<16x64x{element}>) outs(%e : tensor<16x64xf32>) {{
  ^bb0(%a: {element}, %o: f32):
    {body}
    linalg.yield %r : f32
  }} -> tensor<16x64xf32>
  return %w : tensor<16x64xf32>
}}""")
    t = WeightTrace(K)
    with pytest.raises(NotHandled, match=re.escape(reason)):
        t.tensor(ir_returned(m)[0], ir.AffineMap.get(3, 0, [ir.AffineDimExpr.get(1), ir.AffineDimExpr.get(2)]))
    assert t.found_integer  # the reason is about an integer weight, not a float operand


def test_a_float_weight_is_a_float_leaf(parse, ir_returned) -> None:
    m = parse("func.func @f(%w: tensor<16x64xf32>) -> tensor<16x64xf32> { return %w : tensor<16x64xf32> }")
    t, form = trace(ir_returned(m)[0])
    assert isinstance(form, FloatAffine) and form.scale is None and not t.found_integer and not t.q_leaves
