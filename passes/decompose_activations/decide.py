"""The bridge to the cost model (:mod:`msd.cost`): Plan → :class:`Matmul` → :class:`Choice` → Plan.

With ``target=`` the model of that hardware decides per contraction whether MSD pays and with how
many slices; the report then carries its predicted times.  Without it every plan is rewritten with the
requested slices.
"""

from __future__ import annotations

import math
from dataclasses import replace

from iree.compiler import ir

from msd.cost.hardware import PROFILES, cpu_kernel, iree_lowering, profile_for
from msd.cost.model import DYNAMIC_M, Matmul, Policy

from .. import _ir
from ..report import NotHandled
from .options import DecomposeOptions
from .plan import Plan

NOT_COSTED = "; not costed (N or K not static): rewritten with the requested slices"


def policy_for(options: DecomposeOptions) -> Policy | None:
    """The cost policy ``options`` ask for (None: always rewrite)."""
    if not options.target:
        return None
    hw = profile_for(options.target)
    kernel = options.cpu_kernel if hw.kind == "cpu" else options.gpu_kernel
    if kernel == "none":  # the int8 matmuls are IREE's to lower: cost them so
        hw = iree_lowering(hw)
    elif hw.kind == "cpu" and options.target not in PROFILES:  # a target's CPU: msd's fused kernel (a profile
        hw = cpu_kernel(hw)  # named explicitly is costed as it is)
    return Policy(hw, options.requested_slices, options.min_bits, options.dynamic_m or DYNAMIC_M)


def decide(p: Plan, policy: Policy | None) -> Plan:
    """``p`` with the slices the cost model picks (and its numbers for the report); :class:`NotHandled`
    with its reason and numbers when it keeps IREE's own lowering."""
    if policy is None:
        return p
    mm = matmul_of(p, policy.dynamic_m)
    if mm is None:
        return replace(p, cost_note=NOT_COSTED)
    choice = policy.decide(mm)
    est = choice.estimate
    cost = {"shape": mm.shape, "format": mm.format, "slices": choice.slices if choice.rewrite else 0,
            "hardware": policy.hardware.name, "baseline_s": est.baseline.total_s, "msd_s": est.msd.total_s}
    if not choice.rewrite:
        raise NotHandled(choice.reason, **cost)
    return replace(p, slices=choice.slices, cost=cost, cost_note="; " + choice.reason)


def matmul_of(p: Plan, dynamic_m: int) -> Matmul | None:
    """The cost model's view of ``p`` from the IR types; None when N or K is not static.

    A dynamic M (batch x sequence) is taken as ``dynamic_m`` rows times its static part."""
    x_t, q_t = _ir.tensor_type(p.x), _ir.tensor_type(p.q)
    x_dims = _ir.dim_positions(p.x_map)

    def x_size(d: int) -> int | None:
        i = x_dims.index(d)
        return None if x_t.is_dynamic_dim(i) else x_t.get_dim_size(i)

    def q_size(d: int) -> int | None:
        for i, e in enumerate(p.q_map.results):
            if isinstance(e, ir.AffineDimExpr) and e.position == d:
                return None if q_t.is_dynamic_dim(i) else q_t.get_dim_size(i)
        return None

    m, dynamic, batch = 1, False, 1
    for d in p.m_dims:
        size = x_size(d)
        dynamic |= size is None
        m *= size or 1
    for d in p.b_dims:
        size = x_size(d) or q_size(d)
        if size is None:
            return None
        batch *= size
    n, k, act = q_size(p.n_dim), p.k_size, str(_ir.elem_type(p.x))
    if n is None or k is None or not q_t.has_static_shape or act not in ("f32", "bf16", "f16"):
        return None
    width = ir.IntegerType(_ir.elem_type(p.q)).width
    bits = min(width, max(1, round(width * math.prod(q_t.shape) / (batch * n * k))))
    return Matmul(m * dynamic_m if dynamic else m, n, k, batch, act, bits, p.group, p.offset is not None,
                  m_assumed=dynamic)


__all__ = ["decide", "matmul_of", "policy_for"]
