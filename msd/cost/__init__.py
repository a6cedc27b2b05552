"""``msd.cost``: hardware profiles and the per-matmul cost model msd decides with.

    import msd.cost as mc
    hw = mc.profile("npu-910b")                      # or mc.profile_for("cuda:sm_80")
    mm = mc.Matmul(m=1, n=4096, k=4096, act="bf16")
    mc.decide(hw, mm, min_bits=16)                   # rewrite or not, slices, predicted times, reason

Nothing here reads IR or needs torch: the pass (``msd.passes``) turns a matched contraction into a
:class:`Matmul` and asks :func:`decide`; the compiler (``msd.compiler``) checks ``decide=``/
``hardware=``/``min_bits=`` with it.  Both import this package; it imports neither.  Profiles and
where their numbers come from: docs/targets.md.  (It was ``msd.targets`` before: it holds cost
profiles, not the compile targets of ``msd.compile(target=...)``.)
"""

from __future__ import annotations

from .hardware import ELEMENT_BYTES, PROFILES, Hardware, profile, profile_for
from .model import (
    DYNAMIC_M,
    MIN_GAIN,
    SLICE_BITS,
    Choice,
    Cost,
    Estimate,
    Matmul,
    Policy,
    baseline_cost,
    bits_of,
    decide,
    estimate,
    fmt_time,
    msd_cost,
    slices_for_bits,
)

__all__ = [
    "DYNAMIC_M", "ELEMENT_BYTES", "MIN_GAIN", "PROFILES", "SLICE_BITS", "Choice", "Cost", "Estimate", "Hardware",
    "Matmul", "Policy", "baseline_cost", "bits_of", "decide", "estimate", "fmt_time", "msd_cost", "profile",
    "profile_for", "slices_for_bits",
]
