"""MXFP4 weights end to end: ``msd.quantize(weights="mxfp4")`` and the pass's MXFP4 activation slices
(``act_format="mxfp4"``, exact emulation with int8 products) compiled for llvm-cpu, against the numpy
MX reference (``msd.compiler.quant.mx``) and float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_mx import BOUND
from torch import nn

import msd
from msd.compiler.quant import mx
from msd.compiler.quant.quantize import MXFP4Linear

K, N, M = 128, 48, 4


def _model(rule: str = "ocp", seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return msd.quantize(nn.Sequential(nn.Linear(K, N, bias=False)), weights="mxfp4", scale_rule=rule)


def _weight64(layer: MXFP4Linear) -> np.ndarray:
    codes = mx.unpack_fp4(layer.blocks.numpy())
    return mx.dequantize_mxfp4(codes, mx.e8m0_to_exps(layer.scales.numpy()))


def _emulation(x: np.ndarray, w64: np.ndarray, slices: int, rule: str) -> np.ndarray:
    """What the MXFP4-slice MSD GEMM computes, in float64: decomposed activation times the weight."""
    return mx.reconstruct(mx.decompose_mxfp4(x.astype(np.float64), slices, rule)) @ w64.T


@pytest.mark.parametrize("rule", mx.SCALE_RULES)
def test_quantize_mxfp4_stores_the_ocp_layout(rule: str) -> None:
    lin = nn.Linear(K, N)
    q = msd.quantize(nn.Sequential(lin), weights="mxfp4", scale_rule=rule)[0]
    assert isinstance(q, MXFP4Linear) and q.scale_rule == rule
    assert q.blocks.dtype == torch.uint8 and q.blocks.shape == (N, K // 2)
    assert q.scales.dtype == torch.uint8 and q.scales.shape == (N, K // 32)
    codes, exps = mx.quantize_mxfp4(lin.weight.detach().double().numpy(), rule)
    np.testing.assert_array_equal(q.blocks.numpy(), mx.pack_fp4(codes))
    np.testing.assert_array_equal(q.scales.numpy(), mx.exps_to_e8m0(exps))
    w64 = _weight64(q)
    np.testing.assert_array_equal(q.dequantized_weight().double().numpy(), w64)  # the torch decode is exact
    x = torch.randn(3, K)
    torch.testing.assert_close(q(x), F.linear(x, torch.from_numpy(w64).float(), q.bias))


def test_quantize_mxfp4_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(ValueError, match="not a multiple of the MX block"):
        msd.quantize(nn.Linear(48, 8), weights="mxfp4")
    with pytest.raises(ValueError, match="group_size=64 is not possible"):
        msd.quantize(nn.Linear(64, 8), weights="mxfp4", group_size=64)
    with pytest.raises(ValueError, match="scale_rule='even' is not supported"):
        msd.quantize(nn.Linear(64, 8), weights="mxfp4", scale_rule="even")


@pytest.mark.parametrize("rule", mx.SCALE_RULES)
@pytest.mark.parametrize("slices", [1, 2, 3])
def test_mxfp4_slices_compute_exactly_the_mx_emulation(rule: str, slices: int) -> None:
    """The compiled MXFP4-slice GEMM equals the float64 GEMM of the decomposed activation (integer
    block products are exact; only the f32 epilogue rounds), and its error against the float64
    model stays inside the bound the block scales give (test_mx.BOUND, in units of 2**e1)."""
    model = _model(rule)
    x = torch.randn(M, K) * torch.logspace(-2, 2, K)  # blocks of very different magnitude
    cm = msd.compile(model, (x,), slices=slices, act_format="mxfp4", mx_scale=rule)
    (d,) = cm.report.rewritten
    assert f"{slices} MXFP4 slice(s) ({rule} scale rule" in d.reason and "groups of 32" in d.reason
    y = cm(x).double().numpy()
    w64 = _weight64(model[0])
    emu = _emulation(x.numpy(), w64, slices, rule)
    np.testing.assert_allclose(y, emu, rtol=2e-6, atol=2e-6 * np.abs(emu).max())
    x64 = x.double().numpy()
    e1 = mx.decompose_mxfp4(x64, 1, rule)[0][1].astype(np.int64)
    elem_bound = np.repeat(BOUND[rule][slices] * np.ldexp(1.0, e1), 32, axis=-1)  # |x - x̂| per element
    bound = elem_bound @ np.abs(w64).T + 2e-6 * np.abs(emu).max()
    assert (np.abs(y - x64 @ w64.T) <= bound).all()


@pytest.mark.parametrize("slices", [1, 2, 3])
def test_block_scaled_fp4_lowering_equals_the_emulation(slices: int) -> None:
    """``mx_lowering="scaled"`` (the form gfx950 runs on its scaled FP4 MFMA) compiled for llvm-cpu:
    FP4 x FP4 with E8M0 scales inside the product, f32 accumulation over all of K — the same numbers
    as the int8 emulation up to f32 summation order."""
    model = _model("ocp", seed=3)
    x = torch.randn(M, K) * torch.logspace(-2, 2, K)
    cm = msd.compile(model, (x,), slices=slices, act_format="mxfp4", mx_lowering="scaled")
    (d,) = cm.report.rewritten
    assert "block-scaled FP4 matmul (scaling_extf)" in d.reason
    emu = _emulation(x.numpy(), _weight64(model[0]), slices, "ocp")
    np.testing.assert_allclose(cm(x).double().numpy(), emu, rtol=1e-5, atol=1e-6 * np.abs(emu).max())


def test_block_scaled_form_only_for_provable_fp4_weights() -> None:
    """An int8 group-32 weight is not FP4: the scaled form would round it, so the pass keeps the
    exact int8 emulation and says why."""
    torch.manual_seed(0)
    model = msd.quantize(nn.Sequential(nn.Linear(K, N)), weights="int8", group_size=32)
    x = torch.randn(M, K)
    cm = msd.compile(model, (x,), slices=2, act_format="mxfp4", mx_lowering="scaled")
    (d,) = cm.report.rewritten
    assert "block-scaled FP4 form not used (the integer weight is not provably twice an E2M1 value" in d.reason
    assert "int8 emulation" in d.reason


@pytest.mark.parametrize("rule", mx.SCALE_RULES)
def test_one_mxfp8_slice_is_the_mxfp8_quantizer(rule: str) -> None:
    """The comparison point: ``act_format="mxfp8"`` quantizes each 32-block to E4M3 with an E8M0
    scale (``mx.quantize_mxfp8``) and multiplies it with the MXFP4 weight as E4M3 in the block-scaled
    form; one slice lands between one and two MXFP4 slices in accuracy."""
    model = _model(rule, seed=4)
    x = torch.randn(16, K) * torch.logspace(-2, 2, K)
    cm = msd.compile(model, (x,), slices=1, act_format="mxfp8", mx_scale=rule)
    (d,) = cm.report.rewritten
    assert "1 MXFP8 (E4M3) slice(s)" in d.reason and "block-scaled FP8 matmul" in d.reason
    w64 = _weight64(model[0])
    codes, exps = mx.quantize_mxfp8(x.double().numpy(), rule)
    emu = mx.dequantize_mxfp8(codes, exps) @ w64.T
    y = cm(x).double().numpy()
    np.testing.assert_allclose(y, emu, rtol=1e-5, atol=1e-6 * np.abs(emu).max())
    ref = x.double().numpy() @ w64.T
    err = {p: np.linalg.norm(msd.compile(model, (x,), slices=p, act_format="mxfp4", mx_scale=rule)(x).double().numpy()
                             - ref) for p in (1, 2)}
    assert err[2] < np.linalg.norm(y - ref) < err[1]


def test_mxfp8_slices_need_an_mxfp4_weight() -> None:
    torch.manual_seed(0)
    model = msd.quantize(nn.Sequential(nn.Linear(K, N)), weights="int8", group_size=32)
    cm = msd.compile(model, (torch.randn(M, K),), slices=1, act_format="mxfp8")
    (d,) = cm.report.skipped
    assert d.reason.startswith("act-format=mxfp8 is lowered as a block-scaled E4M3 matmul against an MXFP4 weight")


def test_more_mxfp4_slices_are_more_accurate() -> None:
    model = _model("ocp", seed=1)
    x = torch.randn(16, K)
    ref = x.double().numpy() @ _weight64(model[0]).T
    errs = [np.linalg.norm(msd.compile(model, (x,), slices=p, act_format="mxfp4")(x).double().numpy() - ref)
            for p in (1, 2, 3)]
    assert errs[0] > 4 * errs[1] > 16 * errs[2] > 0


def test_int8_slices_on_mxfp4_weights() -> None:
    """The default int8 slices also run on MXFP4 weights (group-wise power-of-two scales): about
    four orders of magnitude closer to float64 than two MXFP4 slices."""
    model = _model()
    x = torch.randn(M, K)
    cm = msd.compile(model, (x,), slices=2)
    (d,) = cm.report.rewritten
    assert "2 int8 slice(s)" in d.reason and "groups of 32" in d.reason
    ref = x.double().numpy() @ _weight64(model[0]).T
    err = np.abs(cm(x).double().numpy() - ref).max() / np.abs(ref).max()
    mx2 = msd.compile(model, (x,), slices=2, act_format="mxfp4")(x).double().numpy()
    assert err < 1e-4 and err * 100 < np.abs(mx2 - ref).max() / np.abs(ref).max()


def test_mxfp4_slices_are_refused_where_the_blocks_do_not_fit() -> None:
    """Weights with groups other than 32 along K: left to IREE, with the reason."""
    torch.manual_seed(0)
    model = msd.quantize(nn.Sequential(nn.Linear(K, N)), weights="int4", group_size=64)
    cm = msd.compile(model, (torch.randn(2, K),), slices=2, act_format="mxfp4")
    (d,) = cm.report.skipped
    assert "needs weight groups of 32 along K" in d.reason and "groups of 64" in d.reason
    with pytest.raises(ValueError, match="act_format=.fp6. is not supported"):
        msd.compile(model, (torch.randn(2, K),), act_format="fp6")


@pytest.fixture(scope="module")
def compiled_ocp2():
    model = _model("ocp", seed=2)
    return msd.compile(model, (torch.zeros(2, K),), slices=2, act_format="mxfp4"), _weight64(model[0])


_special = st.sampled_from([0.0, 1e-40, -3e-39, 2e-38, 1e-30, 5.0, -1e20, float("nan")])
_value = st.one_of(st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32), _special)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_value, min_size=2 * K, max_size=2 * K), st.integers(min_value=-40, max_value=40))
def test_random_blocks_match_the_emulation(compiled_ocp2, values: list[float], shift: int) -> None:
    """Blocks of zeros, subnormal-range values, huge values and NaN: the compiled module agrees with
    the numpy MX reference — NaN rows give NaN, the rest match to f32 rounding."""
    cm, w64 = compiled_ocp2
    x = np.ldexp(np.array(values, dtype=np.float64), shift).astype(np.float32).reshape(2, K)
    if np.isinf(x).any():
        x[np.isinf(x)] = 0.0  # ldexp overflow: not the case under test
    y = cm(torch.from_numpy(x)).double().numpy()
    emu = _emulation(x, w64, 2, "ocp")
    nan_rows = np.isnan(x).any(axis=1)
    assert np.isnan(y[nan_rows]).all()
    ok = ~nan_rows
    scale = np.abs(emu[ok]).max(initial=0.0)
    np.testing.assert_allclose(y[ok], emu[ok], rtol=2e-6, atol=max(2e-6 * scale, 1e-37))
