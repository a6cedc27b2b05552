"""MXFP4 / MXFP8 element formats, E8M0 scale rules, MSD MXFP4 slices and the exact int8 block dot.

Error bounds used below, in units of the first slice's block scale ``2**e1`` (derivation):

E2M1 grid {0, .5, 1, 1.5, 2, 3, 4, 6}: half a grid step is 0.25 for |t| <= 2, 0.5 for |t| <= 4 and
1 for |t| <= 6 (t = x / 2**e).

* 1 slice, ``noclip`` (amax / 2**e in (3, 6]): every element is in range, error <= halfstep(t) <= 1.
* 1 slice, ``ocp`` (amax / 2**e in [4, 8)): elements with t <= 6 as above (<= 1); clipped elements
  (6 < t < 8) have error exactly t - 6 < 2.  So the block error is < 2 (not <= 1).
* Later slices, ``noclip``: if the residual is bounded by 2**c, its scale is e <= c - 2 and its
  elements satisfy t <= 4 when e = c - 2 (error <= 0.5·2**(c-2)), or error <= 2**e <= 2**(c-3)
  otherwise; so each extra slice divides the bound by 8: 1, 1/8, 1/64 for p = 1, 2, 3.
* Later slices, ``ocp``: a residual < 2**(c+1) gets e <= c - 2 and error < 2·2**e <= 2**(c-1), so
  each slice only divides by 4 (clipping eats a bit): < 2, < 1/2, < 1/8 for p = 1, 2, 3.

These hold while no block exponent is clamped at E8M0's -127; below that (|x| ~ 1e-38 and smaller)
every slice uses e = -127 and the error is <= 0.25·2**-127 (elements round towards zero).
"""

from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msd.compiler.quant import mx
from msd.mx_format import E2M1_MAGNITUDES

GRID = np.array(E2M1_MAGNITUDES)
# Worst-case block error after p slices, in units of 2**e1 (see module docstring); ocp bounds are strict.
BOUND = {"noclip": {1: 1.0, 2: 1 / 8, 3: 1 / 64}, "ocp": {1: 2.0, 2: 1 / 2, 3: 1 / 8}}


def _halfstep(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    return np.where(t <= 2, 0.25, np.where(t <= 4, 0.5, 1.0))


# ---------------------------------------------------------------------------------------------
# E2M1 / E4M3 element formats
# ---------------------------------------------------------------------------------------------


def test_e2m1_grid_round_trip() -> None:
    codes = np.arange(16, dtype=np.uint8)
    vals = mx.decode_e2m1(codes)
    np.testing.assert_array_equal(vals[:8], GRID)
    np.testing.assert_array_equal(vals[8:], -GRID)
    np.testing.assert_array_equal(mx.encode_e2m1(vals), codes)  # -0.0 -> code 8 (sign kept)
    for v in np.concatenate([GRID, -GRID]):
        assert mx.decode_e2m1(mx.encode_e2m1(v)) == v  # every representable value is exact
    assert (mx.E2M1_TWICE_INT8.astype(np.float64) == 2 * vals).all()
    assert mx.E2M1_TWICE_INT8.min() == -12 and mx.E2M1_TWICE_INT8.max() == 12


def _brute_force_e2m1(v: float) -> float:
    """Nearest grid value; among equidistant ones the even code; |v| > 6 saturates."""
    mag = min(abs(v), 6.0)
    d = np.abs(GRID - mag)
    cands = np.flatnonzero(d == d.min())
    code = next((int(c) for c in cands if c % 2 == 0), int(cands[0]))
    return math.copysign(GRID[code], v)


def test_e2m1_encode_is_nearest_brute_force() -> None:
    rng = np.random.default_rng(0)
    mids = (GRID[:-1] + GRID[1:]) / 2
    v = np.concatenate([rng.uniform(-8, 8, 3000), GRID, -GRID, mids, -mids, np.nextafter(mids, 0),
                        np.nextafter(mids, 10), [7.0, -100.0, 1e300]])
    got = mx.decode_e2m1(mx.encode_e2m1(v))
    want = np.array([_brute_force_e2m1(float(a)) for a in v])
    np.testing.assert_array_equal(got, want)
    # ties to even: 0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4
    np.testing.assert_array_equal(mx.decode_e2m1(mx.encode_e2m1(mids)), [0, 1, 1, 2, 2, 4, 4])
    # and agrees with ml_dtypes' float4_e2m1fn inside the range, for float32 inputs (ml_dtypes converts
    # float64 via float32, a double rounding: nextafter(0.75, 0) becomes 1.0 there, 0.5 here)
    v32 = v[np.abs(v) <= 6].astype(np.float32)
    np.testing.assert_array_equal(mx.decode_e2m1(mx.encode_e2m1(v32)),
                                  v32.astype(ml_dtypes.float4_e2m1fn).astype(np.float64))
    with pytest.raises(ValueError):
        mx.encode_e2m1(np.nan)


def test_e4m3_matches_ml_dtypes() -> None:
    codes = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(mx.decode_e4m3(codes), codes.view(ml_dtypes.float8_e4m3fn).astype(np.float64))
    rng = np.random.default_rng(1)
    v = rng.uniform(-1, 1, 20000) * np.exp2(rng.uniform(-12, 8.8, 20000))
    v = np.concatenate([v, np.arange(-460, 460, 0.5), np.arange(-2, 2, 2.0**-11)])
    v = v[np.abs(v) <= 464].astype(np.float32)  # ml_dtypes: NaN above (we saturate); float32 avoids its double rounding
    np.testing.assert_array_equal(mx.encode_e4m3(v), v.astype(ml_dtypes.float8_e4m3fn).view(np.uint8))
    # float64 inputs against brute force over all finite E4M3 values (nearest, ties to even code)
    table = mx.decode_e4m3(codes)
    fin = np.flatnonzero(np.isfinite(table) & (codes < 128))
    w = np.concatenate([rng.uniform(-1, 1, 2000) * np.exp2(rng.uniform(-12, 8.8, 2000)),
                        np.nextafter((table[fin][1:] + table[fin][:-1]) / 2, 0)])
    d = np.abs(np.minimum(np.abs(w), 448.0)[:, None] - table[fin][None, :])
    near = d == d.min(axis=1, keepdims=True)
    pick = np.where(near.sum(1) == 1, near.argmax(1), np.argmax(near & (fin % 2 == 0)[None, :], axis=1))
    np.testing.assert_array_equal(np.abs(mx.decode_e4m3(mx.encode_e4m3(w))), table[fin][pick])
    assert mx.decode_e4m3(mx.encode_e4m3(np.array([1000.0, -np.inf]))).tolist() == [448.0, -448.0]
    assert mx.encode_e4m3(np.nan) == mx.E4M3_NAN_CODE


# ---------------------------------------------------------------------------------------------
# Block scales, zero / NaN / tiny blocks
# ---------------------------------------------------------------------------------------------


def test_block_scale_rules_examples() -> None:
    amax = np.array([1.0, 3.0, 4.0, 6.0, 6.5, 7.99, 8.0, 0.75])
    assert mx.block_exponents(amax, "ocp").tolist() == [-2, -1, 0, 0, 0, 0, 1, -3]
    assert mx.block_exponents(amax, "noclip").tolist() == [-2, -1, 0, 0, 1, 1, 1, -3]
    assert mx.block_exponents(np.array([448.0, 511.0, 512.0]), "ocp", "fp8").tolist() == [0, 0, 1]
    assert mx.block_exponents(np.array([448.0, 449.0]), "noclip", "fp8").tolist() == [0, 1]
    # OCP clips: a block with amax 7.9 has scale 1 and its max element saturates to 6
    x = np.zeros(32)
    x[0] = 7.9
    codes, exps = mx.quantize_mxfp4(x, "ocp")
    assert exps.tolist() == [0] and mx.dequantize_mxfp4(codes, exps)[0] == 6.0
    codes, exps = mx.quantize_mxfp4(x, "noclip")
    assert exps.tolist() == [1] and mx.dequantize_mxfp4(codes, exps)[0] == 8.0
    with pytest.raises(ValueError):
        mx.block_exponents(np.array([1.0]), "bogus")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-30, max_value=1e30))
def test_block_scale_rule_ranges(amax: float) -> None:
    e_ocp = int(mx.block_exponents(np.array([amax]), "ocp")[0])
    e_nc = int(mx.block_exponents(np.array([amax]), "noclip")[0])
    assert 4 <= Fraction(amax) / Fraction(2) ** e_ocp < 8  # floor(log2 amax) - 2
    assert 3 < Fraction(amax) / Fraction(2) ** e_nc <= 6  # ceil(log2(amax / 6))
    assert e_nc - e_ocp in (0, 1)


def test_zero_blocks() -> None:
    x = np.zeros((2, 64))
    x[1, 40] = 1.0
    codes, exps = mx.quantize_mxfp4(x)
    assert exps.tolist()[0] == [-127, -127] and exps[1, 0] == -127
    assert (codes[0] == 0).all() and (codes[1, :32] == 0).all()
    assert (mx.dequantize_mxfp4(codes, exps)[0] == 0).all()
    for p in (1, 2, 3):
        parts = mx.decompose_mxfp4(x, p)
        np.testing.assert_array_equal(mx.reconstruct(parts), x)  # 1.0 is representable: exact
    assert mx.exps_to_e8m0(exps)[0].tolist() == [0, 0]
    c8, e8 = mx.quantize_mxfp8(np.zeros(32))
    assert e8.tolist() == [-127] and (mx.dequantize_mxfp8(c8, e8) == 0).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_blocks_decode_to_nan(bad: float) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 96))
    x[1, 33] = bad
    for p in (1, 2, 3):
        parts = mx.decompose_mxfp4(x, p)
        for codes, exps in parts:
            assert exps[1, 1] == mx.E8M0_NAN and (codes[1, 32:64] == 0).all()
        y = mx.reconstruct(parts)
        assert np.isnan(y[1, 32:64]).all()
        assert np.isfinite(np.delete(y, np.s_[32:64], axis=1)).all() and np.isfinite(y[0]).all()
    c8, e8 = mx.quantize_mxfp8(x)
    assert np.isnan(mx.dequantize_mxfp8(c8, e8)[1, 32:64]).all() and e8[1, 1] == mx.E8M0_NAN
    assert mx.exps_to_e8m0(e8)[1, 1] == 0xFF
    w_codes, w_exps = mx.quantize_mxfp4(rng.standard_normal((3, 96)))
    y = mx.block_dot_exact(*parts[0], w_codes, w_exps)
    assert np.isnan(y[1]).all() and np.isfinite(y[0]).all()


@pytest.mark.parametrize("rule", mx.SCALE_RULES)
def test_subnormal_range_inputs(rule: str) -> None:
    rng = np.random.default_rng(3)
    x = (rng.uniform(-1, 1, (4, 64)) * 1e-40).astype(np.float32)  # float32 subnormals
    x[2] *= 1e5  # ~1e-35: normal range, unclamped exponents
    x64 = x.astype(np.float64)
    for p in (1, 2, 3):
        parts = mx.decompose_mxfp4(x, p, rule)
        err = np.abs(mx.reconstruct(parts) - x64)
        assert np.isfinite(err).all()
        e1 = parts[0][1].astype(np.int64)
        assert e1.min() >= -127
        bound = np.maximum(BOUND[rule][p] * np.ldexp(1.0, e1), 0.25 * 2.0**-127)  # see module docstring
        assert (err.reshape(4, 2, 32) <= bound[..., None]).all()
    codes, exps = mx.quantize_mxfp4(x[0], rule)
    assert (exps == -127).all()


# ---------------------------------------------------------------------------------------------
# Property tests: slice error bounds
# ---------------------------------------------------------------------------------------------

_blocks = st.tuples(
    st.lists(st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False), min_size=64, max_size=64),
    st.integers(min_value=-60, max_value=60),
)


def _data(vals: list[float], shift: int) -> np.ndarray:
    x = np.ldexp(np.array(vals, dtype=np.float64), shift).reshape(2, 32)
    x[np.abs(x) < 2.0**-90] = 0.0  # stay clear of E8M0's clamp at -127 (covered separately)
    return x


@settings(max_examples=200, deadline=None)
@given(_blocks, st.sampled_from(mx.SCALE_RULES))
def test_one_slice_error_per_element(data: tuple[list[float], int], rule: str) -> None:
    """Per element: |x - q(x)| <= halfstep(t)·2**e for t = |x|/2**e <= 6 (0.25 / 0.5 / 1 by binade);
    with the OCP rule elements with t > 6 clip, and their error is exactly (t - 6)·2**e < 2·2**e."""
    x = _data(*data)
    codes, exps = mx.quantize_mxfp4(x, rule)
    scale = np.ldexp(1.0, exps.astype(np.int64))[..., None]
    t = np.abs(x.reshape(2, 1, 32)) / scale
    err = np.abs(mx.dequantize_mxfp4(codes, exps) - x).reshape(2, 1, 32) / scale
    inside = t <= 6
    assert (err[inside] <= _halfstep(t[inside])).all()
    if rule == "noclip":
        assert inside.all() and (err <= 1).all()
    else:
        np.testing.assert_array_equal(err[~inside], t[~inside] - 6)
        assert (t < 8).all() and (err < 2).all()


@settings(max_examples=200, deadline=None)
@given(_blocks, st.sampled_from(mx.SCALE_RULES), st.sampled_from([2, 3]))
def test_multi_slice_error_bound(data: tuple[list[float], int], rule: str, slices: int) -> None:
    """Block error after p slices, in units of 2**e1: noclip <= 1/8 (p=2), <= 1/64 (p=3);
    ocp < 1/2 (p=2), < 1/8 (p=3) — derivation in the module docstring.

    The paper's "two MXFP4 slices: error <= 1/64 of the block scale" therefore does NOT hold for
    either rule with 2 slices (see test_two_slice_bounds_are_attained); 1/64 is the 3-slice bound of
    the no-clip rule.  Relative to the block max: 2 slices give < amax/24 (noclip), < amax/8 (ocp).
    """
    x = _data(*data)
    parts = mx.decompose_mxfp4(x, slices, rule)
    e1 = parts[0][1].astype(np.int64)
    err = np.abs(mx.reconstruct(parts) - x).reshape(2, 1, 32) / np.ldexp(1.0, e1)[..., None]
    if rule == "noclip":
        assert (err <= BOUND[rule][slices]).all()
    else:
        assert (err < BOUND[rule][slices]).all()
    # each extra slice never makes things worse
    prev = np.abs(mx.reconstruct(parts[:-1]) - x).reshape(2, 1, 32).max(-1)
    assert (err.max(-1) * np.ldexp(1.0, e1) <= prev).all()


def test_two_slice_bounds_are_attained() -> None:
    """Worst cases: noclip reaches exactly 1/8 of 2**e1, ocp 0.4 (-> 1/2) — far above the paper's 1/64."""
    x = np.zeros(32)
    x[:2] = [6.0, 4.875]  # noclip: e1 = 0; residual 0.875 -> e2 = -2, t = 3.5 ties to 4: error 0.125
    parts = mx.decompose_mxfp4(x, 2, "noclip")
    assert parts[0][1][0] == 0 and np.abs(mx.reconstruct(parts) - x).max() == 1 / 8
    x[:2] = [7.9, 0.0]  # ocp: e1 = 0, 7.9 clips to 6; residual 1.9 -> e2 = -2, t = 7.6 clips: error 0.4
    parts = mx.decompose_mxfp4(x, 2, "ocp")
    assert parts[0][1][0] == 0 and np.isclose(np.abs(mx.reconstruct(parts) - x).max(), 0.4)


@pytest.mark.parametrize("rule", mx.SCALE_RULES)
def test_mxfp8_error_bound(rule: str) -> None:
    """E4M3 top binade [256, 448] has step 32: error <= 16·2**e in range; ocp clips (448, 512) -> < 64·2**e."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 32)) * np.exp2(rng.integers(-20, 20, (64, 1)))
    codes, exps = mx.quantize_mxfp8(x, rule)
    err = np.abs(mx.dequantize_mxfp8(codes, exps) - x) / np.ldexp(1.0, exps.astype(np.int64))
    assert err.max() <= (16 if rule == "noclip" else 64)


# ---------------------------------------------------------------------------------------------
# Exact int8 block dot product
# ---------------------------------------------------------------------------------------------


def _exact_dot(cx: np.ndarray, ex: np.ndarray, cw: np.ndarray, ew: np.ndarray) -> float:
    total = Fraction(0)
    for b in range(ex.shape[-1]):
        s = sum(Fraction(float(a)) * Fraction(float(w)) for a, w in
                zip(mx.decode_e2m1(cx[b * 32:(b + 1) * 32]), mx.decode_e2m1(cw[b * 32:(b + 1) * 32]), strict=True))
        total += s * Fraction(2) ** (int(ex[b]) + int(ew[b]))
    return float(total)  # correctly rounded


@pytest.mark.parametrize("span", [10, 127])
def test_block_dot_exact_equals_float64(span: int) -> None:
    rng = np.random.default_rng(5 + span)
    m, n, k = 3, 4, 256
    cx = rng.integers(0, 16, (m, k), dtype=np.uint8)
    cw = rng.integers(0, 16, (n, k), dtype=np.uint8)
    ex = rng.integers(-span, span + 1, (m, k // 32)).astype(np.int16)
    ew = rng.integers(-span, span + 1, (n, k // 32)).astype(np.int16)
    y = mx.block_dot_exact(cx, ex, cw, ew)
    want = np.array([[_exact_dot(cx[i], ex[i], cw[j], ew[j]) for j in range(n)] for i in range(m)])
    np.testing.assert_array_equal(y, want)  # bit-exact: exact dot rounded once
    if span == 10:  # every partial sum fits 53 bits, so a plain float64 matmul is exact too
        np.testing.assert_array_equal(y, mx.dequantize_mxfp4(cx, ex) @ mx.dequantize_mxfp4(cw, ew).T)
    assert mx.block_dot_exact(cx[0], ex[0], cw[1], ew[1]) == y[0, 1]
    assert mx.block_dot_exact(cx, ex, cw[1], ew[1]).shape == (m,)


def test_block_dot_exact_msd_gemm() -> None:
    """Two activation slices x one MXFP4 weight = float64 GEMM on the dequantized operands."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 128))
    w_codes, w_exps = mx.quantize_mxfp4(rng.standard_normal((8, 128)) * 0.02)
    parts = mx.decompose_mxfp4(x, 2, "ocp")
    y = sum(mx.block_dot_exact(c, e, w_codes, w_exps) for c, e in parts)
    ref = mx.reconstruct(parts) @ mx.dequantize_mxfp4(w_codes, w_exps).T
    np.testing.assert_allclose(y, ref, rtol=1e-14, atol=1e-16)


# ---------------------------------------------------------------------------------------------
# Checkpoint packing
# ---------------------------------------------------------------------------------------------


def test_fp4_packing_and_e8m0_bytes() -> None:
    codes, _ = mx.quantize_mxfp4(np.array([1.0, -0.5, 6.0] + [0.0] * 29))  # amax 6: e = 0
    assert codes[:2].tolist() == [2, 9]
    packed = mx.pack_fp4(codes)
    assert packed.dtype == np.uint8 and packed.shape == (16,) and packed[0] == 0x92  # low nibble first
    rng = np.random.default_rng(7)
    c = rng.integers(0, 16, (3, 64), dtype=np.uint8)
    np.testing.assert_array_equal(mx.unpack_fp4(mx.pack_fp4(c)), c)
    exps = np.array([-127, -1, 0, 127, mx.E8M0_NAN], dtype=np.int16)
    b = mx.exps_to_e8m0(exps)
    assert b.tolist() == [0, 126, 127, 254, 255]
    np.testing.assert_array_equal(mx.e8m0_to_exps(b), exps)
    s = mx.e8m0_scale(exps)
    assert s[2] == 1.0 and s[1] == 0.5 and np.isnan(s[4])
    with pytest.raises(ValueError):
        mx.exps_to_e8m0(np.array([200]))
