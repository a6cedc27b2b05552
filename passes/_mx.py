"""Scalar MLIR arithmetic for MX (OCP Microscaling) activation slices, emitted inside generic bodies.

An MXFP4 slice of a 32-element activation block is a shared power-of-two scale ``2**e`` (E8M0) and
one E2M1 value per element ({0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6}).  msd's exact emulation on integer
units stores ``2·value`` (an integer in [−12, 12]) as int8, so the block product with the weight's
doubled codes is an exact int8 dot product and the epilogue scales it by ``2**(e − 1)``.

Everything here is exact: the exponent comes from the float's bits (no ``log2``), powers of two are
built from bits, rounding is ties-to-even on the E2M1 grid (``compiler/quant/mx.py`` is the numpy
reference these formulas reproduce).  The formats' constants and msd's MX options (block size, E8M0
range, element maxima, scale rules, activation formats, lowerings) are :mod:`msd.mx_format`'s.
"""

from __future__ import annotations

from iree.compiler import ir
from iree.compiler.dialects import arith
from iree.compiler.dialects import math as math_d

from msd.mx_format import ACT_FORMATS, E2M1_MAX, E4M3_MAX, E8M0_MAX, E8M0_MIN, ELEMENT, LOWERINGS, MX_BLOCK, SCALE_RULES

from . import _ir


def _i32() -> ir.Type:
    return ir.IntegerType.get_signless(32)


def _ci(v: int) -> ir.Value:
    return _ir.int_const(_i32(), v)


def floor_log2(v: ir.Value) -> ir.Value:
    """``floor(log2(v))`` of a non-negative f32 as i32, from its exponent bits (subnormals and 0
    give −127, below every E8M0 exponent the rules can ask for)."""
    bits = arith.BitcastOp(_i32(), v).result
    biased = arith.AndIOp(arith.ShRUIOp(bits, _ci(23)).result, _ci(255)).result
    return arith.SubIOp(biased, _ci(127)).result


def block_exponent(amax: ir.Value, rule: str, fmt: str = "mxfp4") -> ir.Value:
    """The E8M0 exponent (i32 in [−127, 127]) of an MXFP4 block with maximum magnitude ``amax``
    (``fmt="mxfp8"``: of an MXFP8 block, with E4M3's emax 8 and maximum 448 in place of 2 and 6).

    ``ocp``: ``floor(log2(amax)) − 2`` (scaled maxima land in [4, 8); above 6 they clip).
    ``noclip``: the smallest ``e`` with ``amax ≤ 6·2**e``: ``floor(log2(amax / 6))`` plus one unless
    ``amax`` is exactly ``6·2**that`` (the division by 6 is rounded; the check is exact).
    """
    emax, max_elem = ELEMENT[fmt]
    if rule == "ocp":
        e = arith.SubIOp(floor_log2(amax), _ci(emax)).result
    else:
        e0 = floor_log2(arith.DivFOp(amax, _ir.f32_const(max_elem)).result)
        fits = arith.CmpFOp(arith.CmpFPredicate.OLE, amax,
                            arith.MulFOp(_ir.f32_const(max_elem), pow2(e0)).result).result
        e = arith.SelectOp(fits, e0, arith.AddIOp(e0, _ci(1)).result).result
    e = arith.MaxSIOp(e, _ci(E8M0_MIN)).result
    return arith.MinSIOp(e, _ci(E8M0_MAX)).result


def pow2(e: ir.Value) -> ir.Value:
    """``2**e`` as f32, exactly, for an i32 ``e`` in [−149, 127] (subnormal below −126)."""
    normal = arith.BitcastOp(_ir.f32(), arith.ShLIOp(arith.AddIOp(e, _ci(127)).result, _ci(23)).result).result
    shift = arith.MaxSIOp(arith.AddIOp(e, _ci(149)).result, _ci(0)).result
    sub = arith.BitcastOp(_ir.f32(), arith.ShLIOp(_ci(1), shift).result).result
    is_normal = arith.CmpIOp(arith.CmpIPredicate.sge, e, _ci(-126)).result
    return arith.SelectOp(is_normal, normal, sub).result


def e2m1_twice(t: ir.Value) -> ir.Value:
    """``2·round_E2M1(t)`` as f32 (an integer in [−12, 12]): nearest E2M1 value of ``t`` (already
    divided by the block scale), ties to the even code, saturating at ±6."""
    mag = math_d.AbsFOp(t).result
    lt2 = arith.CmpFOp(arith.CmpFPredicate.OLT, mag, _ir.f32_const(2.0)).result
    lt4 = arith.CmpFOp(arith.CmpFPredicate.OLT, mag, _ir.f32_const(4.0)).result
    # Grid step 0.5 below 2, 1 below 4, 2 above: round(mag / step) · step, in units of 0.5.
    step = arith.SelectOp(lt2, _ir.f32_const(0.5), arith.SelectOp(lt4, _ir.f32_const(1.0),
                                                                   _ir.f32_const(2.0)).result).result
    units = arith.MulFOp(math_d.RoundEvenOp(arith.DivFOp(mag, step).result).result,
                         arith.MulFOp(step, _ir.f32_const(2.0)).result).result
    units = arith.MinimumFOp(units, _ir.f32_const(2 * E2M1_MAX)).result
    return math_d.CopySignOp(units, t).result


def e4m3_round(t: ir.Value) -> ir.Value:
    """``t`` (already divided by the block scale) rounded to the nearest E4M3 value, ties to even,
    saturating at ±448 (the MX conversion), as f32."""
    clamped = arith.MinimumFOp(arith.MaximumFOp(t, _ir.f32_const(-E4M3_MAX)).result, _ir.f32_const(E4M3_MAX)).result
    return arith.ExtFOp(_ir.f32(), arith.TruncFOp(ir.Type.parse("f8E4M3FN"), clamped).result).result


def slice_chain(x: ir.Value, exps: list[ir.Value], fmt: str = "mxfp4") -> list[ir.Value]:
    """Per slice of ``x``, its element values in units of its block scale ``2**exps[i]`` (f32):
    doubled E2M1 values (integers in [−12, 12]) for MXFP4, E4M3 values for MXFP8.  Slice ``i``
    rounds the residual left by the slices before it."""
    codes, r = [], x
    for i, e in enumerate(exps):
        t = arith.MulFOp(r, pow2(arith.SubIOp(_ci(0), e).result)).result
        c = e2m1_twice(t) if fmt == "mxfp4" else e4m3_round(t)
        codes.append(c)
        if i + 1 < len(exps):
            r = arith.SubFOp(r, arith.MulFOp(c, unit(e, fmt)).result).result
    return codes


def unit(e: ir.Value, fmt: str = "mxfp4") -> ir.Value:
    """What one unit of :func:`slice_chain`'s values is worth: ``2**(e − 1)`` (MXFP4, doubled
    codes) or ``2**e`` (MXFP8)."""
    return pow2(arith.SubIOp(e, _ci(1)).result) if fmt == "mxfp4" else pow2(e)


def residual(x: ir.Value, exps: list[ir.Value], fmt: str = "mxfp4") -> ir.Value:
    """What the slices with exponents ``exps`` leave of ``x`` (f32)."""
    codes = slice_chain(x, exps, fmt)
    r = x
    for c, e in zip(codes, exps):
        r = arith.SubFOp(r, arith.MulFOp(c, unit(e, fmt)).result).result
    return r


__all__ = ["ACT_FORMATS", "LOWERINGS", "MX_BLOCK", "SCALE_RULES", "block_exponent", "e2m1_twice", "e4m3_round",
           "floor_log2", "pow2", "residual", "slice_chain", "unit"]
