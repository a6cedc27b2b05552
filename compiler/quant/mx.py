"""OCP Microscaling (MX) formats for MSD: MXFP4 / MXFP8 quantization and MXFP4 activation slices.

Numpy only.  Conventions used throughout:

* Blocks are 32 consecutive elements along the **last** axis (the K axis of a matmul); the last
  dimension must be a multiple of :data:`~msd.mx_format.MX_BLOCK`.
* ``codes`` are ``uint8`` arrays with one element code per entry and the same shape as the input:
  4-bit E2M1 codes ``s·ee·m`` (0..15) for MXFP4, 8-bit E4M3 codes ``s·eeee·mmm`` for MXFP8.
* ``exps`` are ``int16`` arrays of shape ``x.shape[:-1] + (K // 32,)`` holding the *unbiased* E8M0
  exponent ``e`` of each block (the block scale is ``2**e``, ``-127 <= e <= 127``).  The value
  :data:`E8M0_NAN` (= 128) marks a NaN block; it is chosen so that ``e + 127`` is exactly the OCP
  E8M0 NaN byte ``0xFF`` (see :func:`exps_to_e8m0`).

Scale rules (``rule=``), for an element format whose largest normal is ``max_elem = 1.m·2**emax``
(E2M1: 6 = 1.5·2**2, E4M3: 448 = 1.75·2**8):

* ``"ocp"`` — the OCP MX v1.0 rule ``e = floor(log2(amax)) - emax``.  It maps ``amax`` into
  ``[2**emax, 2**(emax+1))``, so elements above ``max_elem`` (E2M1: scaled values in (6, 8); E4M3:
  (448, 512)) **clip** (saturate) to ``±max_elem``.
* ``"noclip"`` — ``e = ceil(log2(amax / max_elem))``, the smallest power of two for which no element
  exceeds ``max_elem``: nothing clips, at the price of up to one binade less resolution.

Edge cases (chosen here, stated once):

* A zero block (``amax == 0``) gets ``e = -127`` (E8M0 byte 0x00, the limit of both rules as
  ``amax -> 0``) and all-zero codes; it decodes to exact zeros.
* Exponents are clamped to ``[-127, 127]``.  Tiny blocks (e.g. 1e-40 magnitudes, float32 subnormals)
  therefore use ``e = -127`` and round towards zero on the E2M1 grid — the per-element rounding
  bound in units of ``2**e`` still holds.  Blocks too large for ``e = 127`` saturate.
* A block containing any NaN or ±Inf becomes a NaN block: ``exps = E8M0_NAN``, codes 0, and every
  element decodes to NaN (MX element formats FP4/E4M3FN have no Inf, and the OCP spec decodes a NaN
  scale as an all-NaN block).  NaN propagates through :func:`decompose_mxfp4` (every slice of that
  block is a NaN block) and :func:`block_dot_exact`.
* Element rounding is round-to-nearest, ties-to-even (even = mantissa LSB 0) on the element grid,
  saturating at ``±max_elem``; a negative value that rounds to zero keeps its sign (code 8 / -0.0).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from msd.errors import OptionError
from msd.mx_format import (
    E2M1_EMAX,
    E2M1_MAGNITUDES,
    E2M1_MAX,
    E4M3_EMAX,
    E4M3_MAX,
    E4M3_NAN_CODE,
    E8M0_BIAS,
    E8M0_MAX,
    E8M0_MIN,
    E8M0_NAN,
    MX_BLOCK,
    SCALE_RULES,
)

Rule = Literal["ocp", "noclip"]  # one of SCALE_RULES

#: E2M1 values as float64, indexed by code (0..7: :data:`~msd.mx_format.E2M1_MAGNITUDES`, 8..15: their negatives).
E2M1_VALUES = np.concatenate([np.array(E2M1_MAGNITUDES), -np.array(E2M1_MAGNITUDES)])
#: Twice each E2M1 value, as int8 in [-12, 12] (indexed by code): the exact-emulation integers.
E2M1_TWICE_INT8 = (2 * E2M1_VALUES).astype(np.int8)
_E2M1_GRID = np.array(E2M1_MAGNITUDES)
_E2M1_MIDPOINTS = (_E2M1_GRID[:-1] + _E2M1_GRID[1:]) / 2  # 0.25 .75 1.25 1.75 2.5 3.5 5

_E4M3_MIN_NORMAL_EXP = -6


# --------------------------------------------------------------------------------------------
# Element formats
# --------------------------------------------------------------------------------------------


def encode_e2m1(v: np.ndarray | float) -> np.ndarray:
    """Encode values (already divided by the block scale) to 4-bit E2M1 codes (``uint8`` 0..15).

    Round to nearest on the grid {0, 0.5, 1, 1.5, 2, 3, 4, 6}; a value exactly halfway between two
    grid points goes to the one with the even code (mantissa bit 0), e.g. 0.25 -> 0, 0.75 -> 1,
    1.25 -> 1, 2.5 -> 2, 5 -> 4.  Magnitudes above 6 (including Inf) saturate to ±6.  The sign bit
    (bit 3) is copied from the input, so small negatives encode as -0 (code 8).  NaN has no E2M1
    encoding and raises ``ValueError`` (block quantizers handle NaN at the block level).
    """
    v = np.asarray(v, dtype=np.float64)
    if np.isnan(v).any():
        raise OptionError("E2M1 has no NaN encoding")
    mag = np.abs(v)
    code = np.zeros(v.shape, dtype=np.uint8)
    for i, t in enumerate(_E2M1_MIDPOINTS):
        # midpoint i lies between codes i and i+1; at a tie choose i+1 only if it is even.
        code += (mag > t) | ((mag == t) & (i % 2 == 1))
    code |= np.signbit(v).astype(np.uint8) << 3
    return code


def decode_e2m1(codes: np.ndarray) -> np.ndarray:
    """Decode 4-bit E2M1 codes (0..15) to float64 values (exact)."""
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() > 15):
        raise OptionError("E2M1 codes must lie in 0..15")
    return E2M1_VALUES[codes.astype(np.intp)]


def encode_e4m3(v: np.ndarray | float) -> np.ndarray:
    """Encode values to OCP FP8 E4M3 (E4M3FN: bias 7, max ±448, no Inf) codes (``uint8``).

    Round to nearest, ties to even mantissa, subnormals down to 2**-9, saturating to ±448 (also
    ±Inf -> ±448, the MX "saturating conversion").  NaN encodes as 0x7F.  The sign of zero is kept.
    """
    v = np.asarray(v, dtype=np.float64)
    nan = np.isnan(v)
    mag = np.where(nan, 0.0, np.abs(v))
    _, e_fr = np.frexp(mag)  # mag = f * 2**e_fr, f in [0.5, 1)  =>  floor(log2 mag) = e_fr - 1
    exp = np.maximum(e_fr.astype(np.int64) - 1, _E4M3_MIN_NORMAL_EXP)
    exp = np.where(np.isinf(mag), 0, exp)
    quantum = np.ldexp(1.0, exp - 3)  # 3 mantissa bits
    with np.errstate(invalid="ignore"):
        r = np.rint(mag / quantum) * quantum  # np.rint rounds half to even; parity of q == mantissa LSB
    r = np.minimum(r, E4M3_MAX)
    _, e_r = np.frexp(r)
    normal = r >= 2.0**_E4M3_MIN_NORMAL_EXP
    field = np.where(normal, e_r.astype(np.int64) - 1 + 7, 0)
    mant = np.where(normal, np.ldexp(r, -(field - 7) + 3) - 8, np.ldexp(r, 9))
    code = (field << 3) | mant.astype(np.int64)
    code |= np.signbit(v).astype(np.int64) << 7
    code = np.where(nan, E4M3_NAN_CODE, code)
    return code.astype(np.uint8)


def decode_e4m3(codes: np.ndarray) -> np.ndarray:
    """Decode E4M3 (E4M3FN) codes to float64 (exact); 0x7F / 0xFF decode to NaN."""
    c = np.asarray(codes).astype(np.int64)
    sign = np.where(c & 0x80, -1.0, 1.0)
    field = (c >> 3) & 0xF
    mant = c & 0x7
    mag = np.where(field == 0, np.ldexp(mant.astype(np.float64), -9), np.ldexp(8.0 + mant, field - 7 - 3))
    out = sign * mag
    return np.where((c & 0x7F) == E4M3_NAN_CODE, np.nan, out)


# --------------------------------------------------------------------------------------------
# E8M0 block scales
# --------------------------------------------------------------------------------------------


def block_exponents(amax: np.ndarray, rule: Rule = "ocp", fmt: Literal["fp4", "fp8"] = "fp4") -> np.ndarray:
    """Unbiased E8M0 exponents for finite, non-negative block maxima ``amax`` (``int16``).

    ``rule="ocp"``: ``e = floor(log2(amax)) - emax`` (emax = 2 for E2M1, 8 for E4M3) — the OCP MX
    spec's rule; scaled block maxima land in [4, 8) (E2M1) / [256, 512) (E4M3), so elements above 6
    (448) clip.  ``rule="noclip"``: ``e = ceil(log2(amax / max_elem))`` with max_elem = 6 (448) — the
    smallest scale at which nothing clips.  Both are computed exactly (``frexp``/``ldexp``, no float
    ``log2``).  ``amax == 0`` gives ``-127``; results are clamped to ``[-127, 127]``.
    """
    if rule not in SCALE_RULES:
        raise OptionError(f"unknown scale rule {rule!r}; expected one of {SCALE_RULES}")
    emax, max_elem = (E2M1_EMAX, E2M1_MAX) if fmt == "fp4" else (E4M3_EMAX, E4M3_MAX)
    amax = np.asarray(amax, dtype=np.float64)
    if not np.isfinite(amax).all() or (amax < 0).any():
        raise OptionError("block maxima must be finite and non-negative")
    pos = amax > 0
    a = np.where(pos, amax, 1.0)
    if rule == "ocp":
        _, e_fr = np.frexp(a)
        e = e_fr.astype(np.int64) - 1 - emax
    else:
        _, e_fr = np.frexp(a / max_elem)  # a / max_elem < 2**e_fr (up to rounding of the division)
        e = e_fr.astype(np.int64)
        # exact correction to the smallest e with a <= max_elem * 2**e
        e = np.where(a <= np.ldexp(max_elem, e - 1), e - 1, e)
        e = np.where(a > np.ldexp(max_elem, e), e + 1, e)
    e = np.where(pos, e, E8M0_MIN)
    return np.clip(e, E8M0_MIN, E8M0_MAX).astype(np.int16)


def exps_to_e8m0(exps: np.ndarray) -> np.ndarray:
    """Unbiased exponents (with the :data:`E8M0_NAN` sentinel) -> OCP E8M0 bytes (bias 127, 0xFF = NaN)."""
    exps = np.asarray(exps).astype(np.int64)
    ok = ((exps >= E8M0_MIN) & (exps <= E8M0_MAX)) | (exps == E8M0_NAN)
    if not ok.all():
        raise OptionError("E8M0 exponents must lie in [-127, 127] or be E8M0_NAN")
    return (exps + E8M0_BIAS).astype(np.uint8)


def e8m0_to_exps(e8m0: np.ndarray) -> np.ndarray:
    """OCP E8M0 bytes -> unbiased ``int16`` exponents; byte 0xFF becomes :data:`E8M0_NAN`."""
    return np.asarray(e8m0, dtype=np.uint8).astype(np.int16) - E8M0_BIAS


def e8m0_scale(exps: np.ndarray) -> np.ndarray:
    """Block scale ``2**e`` as float64; NaN where ``exps == E8M0_NAN``."""
    exps = np.asarray(exps).astype(np.int64)
    return np.where(exps == E8M0_NAN, np.nan, np.ldexp(1.0, np.where(exps == E8M0_NAN, 0, exps)))


# --------------------------------------------------------------------------------------------
# Block quantizers
# --------------------------------------------------------------------------------------------


def _blocks(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0 or x.shape[-1] % MX_BLOCK:
        raise OptionError(f"last dimension must be a multiple of {MX_BLOCK}, got shape {x.shape}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // MX_BLOCK, MX_BLOCK)


def _quantize_blocks(x: np.ndarray, rule: Rule, fmt: Literal["fp4", "fp8"]) -> tuple[np.ndarray, np.ndarray]:
    b = _blocks(x)
    finite_el = np.isfinite(b)
    finite = finite_el.all(axis=-1)
    clean = np.where(finite_el, b, 0.0)
    amax = np.abs(clean).max(axis=-1)
    e = block_exponents(amax, rule, fmt)
    clean = np.where(finite[..., None], clean, 0.0)
    scaled = np.ldexp(clean, -e.astype(np.int64)[..., None])  # exact division by 2**e
    codes = encode_e2m1(scaled) if fmt == "fp4" else encode_e4m3(scaled)
    codes = np.where(finite[..., None], codes, 0).astype(np.uint8)
    exps = np.where(finite, e, E8M0_NAN).astype(np.int16)
    return codes.reshape(np.shape(x)), exps


def _dequantize_blocks(codes: np.ndarray, exps: np.ndarray, fmt: Literal["fp4", "fp8"]) -> np.ndarray:
    codes = np.asarray(codes)
    exps = np.asarray(exps).astype(np.int64)
    vals = decode_e2m1(codes) if fmt == "fp4" else decode_e4m3(codes)
    vb = _blocks(vals)
    if vb.shape[:-1] != exps.shape:
        raise OptionError(f"exps shape {exps.shape} does not match codes shape {codes.shape}")
    nan = exps == E8M0_NAN
    out = np.ldexp(vb, np.where(nan, 0, exps)[..., None])
    out = np.where(nan[..., None], np.nan, out)
    return out.reshape(codes.shape)


def quantize_mxfp4(x: np.ndarray, rule: Rule = "ocp") -> tuple[np.ndarray, np.ndarray]:
    """Quantize ``x`` (last axis a multiple of 32) to MXFP4: ``(codes uint8, exps int16)``.

    Each 32-block gets an E8M0 exponent by ``rule`` (see :func:`block_exponents`) and each element
    the nearest E2M1 code of ``x / 2**e`` (ties to even, saturating at ±6).  Zero blocks: ``e=-127``
    and zero codes; blocks with NaN/Inf: ``e = E8M0_NAN`` and zero codes (decode to all-NaN).
    """
    return _quantize_blocks(x, rule, "fp4")


def dequantize_mxfp4(codes: np.ndarray, exps: np.ndarray) -> np.ndarray:
    """MXFP4 ``(codes, exps)`` -> float64 values ``E2M1(code) * 2**e`` (exact); NaN blocks -> NaN."""
    return _dequantize_blocks(codes, exps, "fp4")


def quantize_mxfp8(x: np.ndarray, rule: Rule = "ocp") -> tuple[np.ndarray, np.ndarray]:
    """Quantize ``x`` to MXFP8 (E4M3 elements, E8M0 scale per 32-block): ``(codes uint8, exps int16)``.

    ``rule="ocp"``: ``e = floor(log2(amax)) - 8`` (elements above 448·2**e clip to ±448);
    ``rule="noclip"``: ``e = ceil(log2(amax / 448))``.  Edge cases as for :func:`quantize_mxfp4`.
    """
    return _quantize_blocks(x, rule, "fp8")


def dequantize_mxfp8(codes: np.ndarray, exps: np.ndarray) -> np.ndarray:
    """MXFP8 ``(codes, exps)`` -> float64 values (exact); NaN blocks and NaN codes -> NaN."""
    return _dequantize_blocks(codes, exps, "fp8")


def decompose_mxfp4(x: np.ndarray, slices: int = 2, rule: Rule = "ocp") -> list[tuple[np.ndarray, np.ndarray]]:
    """MSD decomposition of ``x`` into ``slices`` MXFP4 slices.

    Slice 1 quantizes ``x``; slice ``i`` quantizes the residual ``x - sum_{j<i} dequant(slice_j)``
    (computed in float64) with its own block scales by the same ``rule``.  ``x ≈ reconstruct(result)``.
    """
    if slices < 1:
        raise OptionError("slices must be >= 1")
    residual = _blocks(x).reshape(np.shape(x))
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(slices):
        codes, exps = quantize_mxfp4(residual, rule)
        out.append((codes, exps))
        with np.errstate(invalid="ignore"):
            residual = residual - dequantize_mxfp4(codes, exps)
    return out


def reconstruct(parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Sum of the dequantized MXFP4 slices returned by :func:`decompose_mxfp4` (float64)."""
    if not parts:
        raise OptionError("no slices")
    total = dequantize_mxfp4(*parts[0])
    for codes, exps in parts[1:]:
        total = total + dequantize_mxfp4(codes, exps)
    return total


# --------------------------------------------------------------------------------------------
# Exact-emulation block dot product
# --------------------------------------------------------------------------------------------


def block_dot_exact(
    codes_x: np.ndarray, exps_x: np.ndarray, codes_w: np.ndarray, exps_w: np.ndarray
) -> np.ndarray | float:
    """Block-scaled MXFP4 x MXFP4 dot products through integer arithmetic.

    ``codes_x``: ``[M, K]`` (or ``[K]``), ``codes_w``: ``[N, K]`` (or ``[K]``), with their ``exps``.
    Returns ``y[m, n] = sum_b 2**(ex[m,b] + ew[n,b] - 2) * sum_{k in b} X[m,k] * W[n,k]`` where
    ``X = 2·E2M1(codes_x)`` and ``W = 2·E2M1(codes_w)`` are int8 in [-12, 12].  The inner sum is an
    int8 x int8 -> int32 dot product (|sum| <= 32·144 = 4608, so no overflow and no rounding); each
    block partial ``int32 · 2**(ex+ew-2)`` is exact in float64; the partials are then summed with
    ``math.fsum`` (correctly rounded), so the result is the exact dot product of the two dequantized
    operands rounded once to float64.  A NaN block in either operand makes the output NaN.
    Output shape ``[M, N]`` (``M``/``N`` dropped for 1-D operands; a float for two 1-D operands).
    """
    cx, cw = np.asarray(codes_x), np.asarray(codes_w)
    ex, ew = np.asarray(exps_x).astype(np.int64), np.asarray(exps_w).astype(np.int64)
    x1, w1 = cx.ndim == 1, cw.ndim == 1
    cx, cw = np.atleast_2d(cx), np.atleast_2d(cw)
    ex, ew = np.atleast_2d(ex), np.atleast_2d(ew)
    if cx.ndim != 2 or cw.ndim != 2 or cx.shape[1] != cw.shape[1] or cx.shape[1] % MX_BLOCK:
        raise OptionError(f"codes must be [M, K] and [N, K] with K a multiple of {MX_BLOCK}: {cx.shape}, {cw.shape}")
    m, k = cx.shape
    n = cw.shape[0]
    nb = k // MX_BLOCK
    if ex.shape != (m, nb) or ew.shape != (n, nb):
        raise OptionError("exps shapes do not match the codes")
    qx = E2M1_TWICE_INT8[cx.astype(np.intp)].reshape(m, nb, MX_BLOCK)  # int8
    qw = E2M1_TWICE_INT8[cw.astype(np.intp)].reshape(n, nb, MX_BLOCK)  # int8
    # int8 x int8 products widened to int32 and accumulated in int32, one accumulator per block.
    acc = np.matmul(qx.transpose(1, 0, 2).astype(np.int32), qw.transpose(1, 2, 0).astype(np.int32))  # [nb, m, n]
    acc = acc.transpose(1, 2, 0)  # [m, n, nb] int32
    nan = (ex == E8M0_NAN)[:, None, :] | (ew == E8M0_NAN)[None, :, :]
    shift = ex[:, None, :] + ew[None, :, :] - 2
    partial = np.ldexp(acc.astype(np.float64), np.where(nan, 0, shift))  # exact
    partial = np.where(nan, np.nan, partial)
    flat = partial.reshape(m * n, nb)
    y = np.array([math.fsum(row) for row in flat.tolist()], dtype=np.float64).reshape(m, n)
    if x1 and w1:
        return float(y[0, 0])
    if x1:
        return y[0]
    if w1:
        return y[:, 0]
    return y


# --------------------------------------------------------------------------------------------
# Checkpoint packing
# --------------------------------------------------------------------------------------------


def pack_fp4(codes: np.ndarray) -> np.ndarray:
    """Pack E2M1 codes two per byte along the last axis, OCP/checkpoint order: element ``2i`` in the
    low nibble, element ``2i+1`` in the high nibble.  Shape ``[..., K] -> [..., K // 2]`` (``uint8``)."""
    c = np.asarray(codes, dtype=np.uint8)
    if c.shape[-1] % 2:
        raise OptionError("last dimension must be even to pack two FP4 codes per byte")
    if c.size and c.max() > 15:
        raise OptionError("E2M1 codes must lie in 0..15")
    return (c[..., 0::2] | (c[..., 1::2] << 4)).astype(np.uint8)


def unpack_fp4(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_fp4`: ``[..., K // 2] uint8 -> [..., K]`` codes (low nibble first)."""
    p = np.asarray(packed, dtype=np.uint8)
    out = np.empty((*p.shape[:-1], p.shape[-1] * 2), dtype=np.uint8)
    out[..., 0::2] = p & 0x0F
    out[..., 1::2] = p >> 4
    return out
