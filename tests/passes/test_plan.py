"""Planning (msd.passes.decompose_activations.plan): a frozen Plan, built before any IR is created."""

from __future__ import annotations

import dataclasses

import pytest
from mlir_text import ID2, ROW, dequant_generic, empty, function

from msd.cost.hardware import profile_for
from msd.cost.model import Policy
from msd.passes.decompose_activations import DecomposeOptions, Plan, match, plan
from msd.passes.decompose_activations.decide import decide, matmul_of, policy_for
from msd.passes.report import NotHandled

MM = "[affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>, affine_map<(m, n, k) -> (m, n)>]"


def linear(k: int = 64, m: str = "4", n: int = 32) -> str:
    """``y = x · (sitofp(q) · s)ᵀ``: an int8 per-channel weight [N, K], activation [M, K] (M "?": dynamic)."""
    init = (f"%c0 = arith.constant 0 : index\n  %rows = tensor.dim %x, %c0 : tensor<?x{k}xf32>\n"
            "  %z = tensor.empty(%rows)") if m == "?" else "%z = tensor.empty()"
    w = f"tensor<{n}x{k}xf32>"
    return function(
        f"%x: tensor<{m}x{k}xf32>, %q: tensor<{n}x{k}xi8>, %s: tensor<{n}xf32>", "%y", f"tensor<{m}x{n}xf32>",
        empty("%e", w),
        dequant_generic("%w", ("%q", f"tensor<{n}x{k}xi8>"), ("%s", f"tensor<{n}xf32>"), ("%e", w), [ID2, ROW, ID2]),
        f"  {init} : tensor<{m}x{n}xf32>",
        f"  %y = linalg.matmul indexing_maps = {MM} ins(%x, %w : tensor<{m}x{k}xf32>, {w})\n"
        f"      outs(%z : tensor<{m}x{n}xf32>) -> tensor<{m}x{n}xf32>")


def contraction(module, ir_ops) -> match.Contraction:
    (op,) = ir_ops(module, "linalg.matmul")
    c = match.matmul(op)
    assert c is not None
    return c


def test_plan_creates_no_ir_and_is_frozen(parse, ir_ops) -> None:
    module = parse(linear())
    before = str(module)
    p = plan(contraction(module, ir_ops), DecomposeOptions())
    assert str(module) == before
    assert isinstance(p, Plan) and (p.m_dims, p.n_dim, p.b_dims, p.k, p.k_size) == ((0,), 1, (), 2, 64)
    assert p.group is None and p.slices == 2 and p.offset is None and not p.block_scaled
    assert p.describe() == "2 int8 slice(s) x tensor<32x64xi8>"
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.slices = 3  # type: ignore[misc]


def test_mx_slices_split_k_into_blocks(parse, ir_ops) -> None:
    module = parse(linear())
    c = contraction(module, ir_ops)
    p = plan(c, DecomposeOptions(act_format="mxfp4"))
    assert p.group == 32 and p.describe().startswith("2 MXFP4 slice(s) (ocp scale rule, doubled E2M1 codes)")
    with pytest.raises(NotHandled, match="needs a static K that is a multiple of 32"):
        plan(contraction(parse(linear(k=48)), ir_ops), DecomposeOptions(act_format="mxfp4"))


def test_mxfp8_needs_a_provable_mxfp4_weight(parse, ir_ops) -> None:
    with pytest.raises(NotHandled, match="act-format=mxfp8 is lowered as a block-scaled E4M3 matmul against an"
                                         " MXFP4 weight: the integer weight is not provably twice an E2M1"):
        plan(contraction(parse(linear()), ir_ops), DecomposeOptions(act_format="mxfp8"))


def test_the_scaled_lowering_falls_back_with_the_reason(parse, ir_ops) -> None:
    p = plan(contraction(parse(linear()), ir_ops), DecomposeOptions(act_format="mxfp4", mx_lowering="scaled"))
    assert not p.block_scaled and "block-scaled FP4 form not used (the integer weight is not provably" in p.fallback


def test_decide_keeps_the_plan_without_a_policy(parse, ir_ops) -> None:
    p = plan(contraction(parse(linear()), ir_ops), DecomposeOptions())
    assert decide(p, None) is p


def test_decide_returns_a_new_plan_with_the_models_slices(parse, ir_ops) -> None:
    """Decode-shaped (M=1, 4096x4096) on the NPU profile: MSD pays; min-bits=24 asks for 3 slices."""
    options = DecomposeOptions(target="npu", min_bits=24)
    p = plan(contraction(parse(linear(k=4096, m="1", n=4096)), ir_ops), options)
    policy = policy_for(options)
    assert policy == Policy(profile_for("npu"), 3, 24, 512) and p.slices == 3
    q = decide(p, policy)
    assert q is not p and q.slices == 3 and q.cost["hardware"] == "npu-910b" and q.cost["shape"] == "M=1 N=4096 K=4096"
    assert "predicted MSD p=3" in q.describe() and p.cost == {} and p.cost_note == ""


def test_decide_declines_with_the_numbers(parse, ir_ops) -> None:
    """A tiny matmul with a dynamic M (costed as 512 rows) is launch-bound: IREE's lowering is kept."""
    p = plan(contraction(parse(linear(m="?")), ir_ops), DecomposeOptions())
    policy = policy_for(DecomposeOptions(target="npu"))
    mm = matmul_of(p, policy.dynamic_m)
    assert (mm.m, mm.n, mm.k, mm.m_assumed) == (512, 32, 64, True)
    with pytest.raises(NotHandled, match="baseline kept") as e:
        decide(p, policy)
    assert e.value.fields["hardware"] == "npu-910b" and e.value.fields["slices"] == 0


def test_float_weights_are_refused(parse, ir_ops) -> None:
    text = f"""
func.func @f(%x: tensor<4x64xf32>, %w: tensor<32x64xf32>) -> tensor<4x32xf32> {{
  %z = tensor.empty() : tensor<4x32xf32>
  %y = linalg.matmul indexing_maps = {MM} ins(%x, %w : tensor<4x64xf32>, tensor<32x64xf32>)
      outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}}"""
    with pytest.raises(NotHandled, match="no operand is dequantized from an integer tensor"):
        plan(contraction(parse(text), ir_ops), DecomposeOptions())
