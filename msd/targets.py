"""``msd.targets``: hardware profiles and the per-matmul cost model msd decides with.

    import msd.targets as mt
    hw = mt.profile("npu-910b")                      # or mt.profile_for("cuda:sm_80")
    mm = mt.Matmul(m=1, n=4096, k=4096, act="bf16")
    mt.decide(hw, mm, min_bits=16)                   # rewrite or not, slices, predicted times, reason

Profiles and where their numbers come from: docs/targets.md.  ``msd.compile(..., decide="cost")``
applies :func:`decide` to every matmul the pass matches.
"""

from __future__ import annotations

from msd.compiler.cost import (
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
from msd.compiler.hardware import ELEMENT_BYTES, PROFILES, Hardware, profile, profile_for

__all__ = [
    "DYNAMIC_M", "ELEMENT_BYTES", "MIN_GAIN", "PROFILES", "SLICE_BITS", "Choice", "Cost", "Estimate", "Hardware",
    "Matmul", "Policy", "baseline_cost", "bits_of", "decide", "estimate", "fmt_time", "msd_cost", "profile",
    "profile_for", "slices_for_bits",
]
