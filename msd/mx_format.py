"""``msd.mx_format``: the constants of the OCP Microscaling (MX) formats msd uses, and its MX options.

One definition for both halves: the pass's IR arithmetic (``msd.passes._mx``) and the numpy reference
and MXFP4 weights of the compiler (``msd.compiler.quant.mx``, ``msd.compiler.quant.quantize``) import
them from here.  Plain Python: no torch, no IR, no numpy.

An MX block is :data:`MX_BLOCK` consecutive elements along K sharing one E8M0 scale ``2**e``
(``E8M0_MIN <= e <= E8M0_MAX``, stored as the byte ``e + E8M0_BIAS``; 0xFF is NaN).  Elements are
E2M1 (MXFP4: magnitudes :data:`E2M1_MAGNITUDES`, largest 6 = 1.5·2**2) or E4M3 (MXFP8: largest
448 = 1.75·2**8).  The block-exponent rules (:data:`SCALE_RULES`): ``"ocp"``, the OCP MX v1.0 rule
``e = floor(log2(amax)) − emax`` (elements above the largest one clip); ``"noclip"``, the smallest
``e`` at which nothing clips.
"""

from __future__ import annotations

MX_BLOCK = 32  # elements per block (along K), one E8M0 scale each

E8M0_BIAS = 127  # the E8M0 byte of exponent e is e + 127
E8M0_MIN, E8M0_MAX = -127, 127  # exponents msd produces (byte 0x00 .. 0xFE)
E8M0_NAN = 128  # unbiased sentinel of a NaN block; + bias = 0xFF, the OCP E8M0 NaN byte

#: E2M1 magnitudes for codes 0..7; codes 8..15 are their negatives (code 8 is -0).
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_EMAX = 2  # 6 = 1.5 · 2**2
E2M1_MAX = E2M1_MAGNITUDES[-1]
E4M3_EMAX = 8  # 448 = 1.75 · 2**8
E4M3_MAX = 448.0
E4M3_NAN_CODE = 0x7F  # E4M3FN has no Inf; S.1111.111 is NaN

#: Twice each E2M1 value: the integers the decoded weight codes take (``2·e2m1`` is exact in int8).
TWICE_E2M1 = frozenset(int(s * 2 * m) for m in E2M1_MAGNITUDES for s in (1, -1))
#: Scales ``2**(u(s) + E8M0_HALF_OFFSET)`` of the decoded ``2·e2m1`` codes: the E8M0 bias plus one.
E8M0_HALF_OFFSET = -(E8M0_BIAS + 1)

#: (emax, largest element) of each MX activation format's element type.
ELEMENT = {"mxfp4": (E2M1_EMAX, E2M1_MAX), "mxfp8": (E4M3_EMAX, E4M3_MAX)}

SCALE_RULES = ("ocp", "noclip")  # block-exponent rules (mx_scale=, scale_rule=)
ACT_FORMATS = ("int8", "mxfp4", "mxfp8")  # activation slices (act_format=)
LOWERINGS = ("int8", "scaled")  # MX slices: exact emulation on int8 units / block-scaled FP4 (mx_lowering=)

__all__ = ["ACT_FORMATS", "E2M1_EMAX", "E2M1_MAGNITUDES", "E2M1_MAX", "E4M3_EMAX", "E4M3_MAX", "E4M3_NAN_CODE",
           "E8M0_BIAS", "E8M0_HALF_OFFSET", "E8M0_MAX", "E8M0_MIN", "E8M0_NAN", "ELEMENT", "LOWERINGS", "MX_BLOCK",
           "SCALE_RULES", "TWICE_E2M1"]
