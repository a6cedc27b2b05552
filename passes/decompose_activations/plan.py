"""Planning: from a :class:`~.match.Contraction` to a frozen :class:`Plan` of the whole rewrite.

Everything is decided here, before any IR is created: which operand is the weight and what it is
(the weight trace, :mod:`msd.passes.analysis.dequant`), the roles of the iteration dims, a per-K scale
to fold into the activation, whether and how K is split (weight groups, int32 chunks, MX blocks), the
lowering (int8 slices, MXFP4 emulation, block-scaled FP4/FP8), and the slice count.  The cost model
(:mod:`.decide`) may then replace the slice count — again by returning a new plan.  A candidate the
pass cannot rewrite exactly raises :class:`NotHandled` with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from iree.compiler import ir

from msd.mx_format import MX_BLOCK

from .. import _ir
from ..analysis.dequant import Const, Expr, FloatAffine, IntAffine, Leaf, Node, WeightTrace, factors, mentions
from ..report import NotHandled
from .cpu_kernel import KernelSpec
from .cuda_kernel import CudaKernelSpec
from .fp4_weight import e8m0_scale
from .match import Contraction
from .options import DecomposeOptions
from .overflow import accumulation_chunk


@dataclass(frozen=True, eq=False)
class Plan:
    """The rewrite of one contraction ``y = x · W``, ``W = scale·q + offset`` (see the module docstring)."""

    c: Contraction
    # -- the operands, as the weight trace found them
    x: ir.Value  # the float activation
    x_map: ir.AffineMap
    q: ir.Value  # the integer weight (8 bits or fewer), used untouched (narrower: widened first, q_width)
    q_map: ir.AffineMap
    scale: Expr  # constant along K (or per group of K)
    offset: Expr | None  # a zero point / float offset; None: none
    leaves: tuple[Leaf, ...]  # the tensors scale and offset read
    k_scale: tuple[Leaf, ...]  # factors varying along K only: folded into the activation first
    q_shift: int  # q is read unsigned: the matmul uses q - q_shift (exact in int8)
    # -- the iteration space (dims of the contraction)
    k: int  # the reduction dim
    k_size: int | None  # None: dynamic (checked against the int32 bound at run time)
    m_dims: tuple[int, ...]  # activation rows (in the activation and result, not the weight)
    n_dim: int  # output channels (in the weight and result, not the activation)
    b_dims: tuple[int, ...]  # a true batch dim (in all three), at most one
    group: int | None  # K is split into groups of this size (weight groups, int32 chunks, MX blocks)
    notes: tuple[str, ...]  # said in the report
    # -- what is emitted
    slices: int
    act_format: str  # "int8", "mxfp4" or "mxfp8" slices
    act_scale: str  # "row" or "group": where K is split, one activation scale per row or per (row, group)
    mx_rule: str  # MX block-exponent rule
    q_unit_dims: tuple[int, ...] = ()  # size-1 dims of q read at 0, collapsed away first (int8 matmul)
    e8m0: Leaf | None = None  # the weight's E8M0 bytes: the block-scaled form is emitted (emit_scaled)
    fallback: str = ""  # why the block-scaled form was asked for but not used
    cost: Mapping[str, object] = field(default_factory=dict)  # the cost model's numbers, for the report
    cost_note: str = ""  # what the cost model said, appended to the report's reason
    # emitted as this fused kernel (emit_kernel: a CPU ISA's, or NVIDIA's tensor-core one), else emit_int8
    kernel: KernelSpec | CudaKernelSpec | None = None
    kernel_note: str = ""  # why the fused kernel asked for was not used

    @property
    def q_width(self) -> int:
        """Bits of the weight's element type: under 8, the emitters read it widened to i8 (zero-extended
        when the dequantization reads it unsigned, ``q_shift`` > 0; else sign-extended)."""
        return ir.IntegerType(_ir.elem_type(self.q)).width

    @property
    def block_scaled(self) -> bool:
        return self.e8m0 is not None

    @property
    def weight_type(self) -> ir.Type:
        """The type of the weight the matmul reads (after its unit dims are collapsed away)."""
        if not self.q_unit_dims:
            return self.q.type
        t = _ir.tensor_type(self.q)
        return _ir.collapsed_type(t, _ir.unit_dim_groups(t.rank, self.q_unit_dims))

    def describe(self) -> str:
        """The report's reason for this rewrite."""
        n, rule = self.slices, self.mx_rule
        if self.block_scaled and self.act_format == "mxfp8":
            what = (f"{n} MXFP8 (E4M3) slice(s) ({rule} scale rule) x MXFP4 weight {self.weight_type} as E4M3,"
                    " block-scaled FP8 matmul (scaling_extf)")
        elif self.block_scaled:
            what = (f"{n} MXFP4 slice(s) ({rule} scale rule) x MXFP4 weight {self.weight_type},"
                    " block-scaled FP4 matmul (scaling_extf)")
        elif self.act_format == "mxfp4":
            what = f"{n} MXFP4 slice(s) ({rule} scale rule, doubled E2M1 codes) x {self.weight_type}{self.fallback}"
        elif self.kernel is not None:
            what = f"{n} int8 slice(s) x {self.weight_type} in one fused {self.kernel.isa} kernel dispatch"
            if self.kernel.nibbles:
                what += " (4-bit weight codes, two per byte)"
        else:
            what = f"{n} int8 slice(s) x {self.weight_type}"
        if self.q_shift:
            what += f" (unsigned weight as q-{self.q_shift})"
        if self.group is not None:
            what += f", K in groups of {self.group} (activation scale per {self.act_scale})"
        if self.offset is not None:
            what += " with zero-point/offset term"
        if self.notes:
            what += "; " + "; ".join(sorted(set(self.notes)))
        if self.kernel_note:
            what += f"; fused kernel not used: {self.kernel_note}"
        return what + self.cost_note


def plan(c: Contraction, options: DecomposeOptions) -> Plan:
    """The plan for ``c`` under ``options`` (slices as requested: :func:`.decide.decide` may change
    them); :class:`NotHandled` with the reason when ``c`` cannot be rewritten exactly."""
    p = _operands(c, options)
    fmt = options.act_format
    if fmt != "int8":
        p = replace(p, group=_mx_group(p, fmt))
    if fmt == "mxfp8":
        try:
            return replace(p, e8m0=_mxfp4_weight(p))
        except NotHandled as e:
            raise NotHandled(f"act-format=mxfp8 is lowered as a block-scaled E4M3 matmul against an"
                             f" MXFP4 weight: {e}") from None
    fallback = ""
    if fmt == "mxfp4" and options.mx_lowering == "scaled":
        try:
            return replace(p, e8m0=_mxfp4_weight(p))
        except NotHandled as e:
            fallback = f"; block-scaled FP4 form not used ({e}): int8 emulation"
    return replace(p, fallback=fallback, q_unit_dims=_unit_dims(p.q, p.q_map))


# ============================================================================= the operands
def _operands(c: Contraction, options: DecomposeOptions) -> Plan:
    """Which operand is the weight, what it is, and the roles of the iteration dims."""
    out_t = _ir.elem_type(c.op.results[0])
    if not _ir.is_float(out_t) or isinstance(out_t, ir.F64Type):
        raise NotHandled(f"result element type {out_t} (f32, f16 or bf16 expected)")
    if len(c.reductions) != 1:
        raise NotHandled(f"{len(c.reductions)} reduction dims (one, or two that merge into one, expected)")
    (k,) = c.reductions
    errors = []
    for w_idx in (1, 0):
        trace = WeightTrace(k)
        x, w = (c.lhs, c.rhs) if w_idx == 1 else (c.rhs, c.lhs)
        x_map, w_map = (c.maps[0], c.maps[1]) if w_idx == 1 else (c.maps[1], c.maps[0])
        try:
            return _traced(c, k, x, x_map, trace, trace.tensor(w, w_map), options)
        except NotHandled as e:
            e.found_integer = trace.found_integer
            errors.append(e)
    # A reason about an integer weight beats "this operand is just a float tensor".
    for e in errors:
        if e.found_integer:
            raise e
    raise NotHandled("no operand is dequantized from an integer tensor (float weights)")


def _traced(c: Contraction, k: int, x: ir.Value, x_map: ir.AffineMap, trace: WeightTrace,
            form: FloatAffine | IntAffine, options: DecomposeOptions) -> Plan:
    x_t = _ir.elem_type(x)
    if isinstance(form, IntAffine):
        raise NotHandled("the contraction reads an integer tensor directly (no int-to-float dequantization)")
    if form.scale is None:
        raise NotHandled("float tensor varying along the reduction dim: not a dequantized weight")
    if len({(hash(q.value), str(q.map)) for q in trace.q_leaves}) != 1:
        raise NotHandled("more than one integer tensor varies along the reduction dim")
    q_leaf = trace.q_leaves[0]
    if not _ir.is_float(x_t) or isinstance(x_t, ir.F64Type):
        raise NotHandled(f"activation element type {x_t} (f32, f16 or bf16 expected)")
    x_dims = _ir.dim_positions(x_map)
    c_dims = _ir.dim_positions(c.maps[2])
    if x_dims is None or len(set(x_dims)) != len(x_dims):
        raise NotHandled("activation read through a non-permutation map")
    q_use = [_ir.k_usage(e, k) for e in q_leaf.map.results]
    groups = {u[1] for u in q_use if u[0] in ("kgroup", "kin")}
    q_dims = [u[1] for u in q_use if u[0] == "dim"] + ([k] if groups else [])
    split_kinds = sorted(u[0] for u in q_use if u[0] != "dim")
    if len(set(q_dims)) != len(q_dims) or (groups and split_kinds != ["kgroup", "kin"]):
        raise NotHandled("integer weight read through a non-permutation map")
    if c_dims is None or k in c_dims:
        raise NotHandled("result indexed by the reduction dim")
    if k not in x_dims:
        raise NotHandled("activation does not vary along the reduction dim")
    m_dims, n_dim, b_dims = _roles(c, k, x_dims, q_dims, c_dims)
    scale, k_scale = _split_k_scale(form, trace, k, {*b_dims, k}, n_dim)
    groups |= _scale_groups(trace, k, {*b_dims, n_dim})
    if len(groups) > 1:
        raise NotHandled(f"inconsistent group sizes along the reduction dim: {sorted(groups)}")
    group = groups.pop() if groups else None
    x_tt = _ir.tensor_type(x)
    k_pos = x_dims.index(k)
    k_size = None if x_tt.is_dynamic_dim(k_pos) else x_tt.get_dim_size(k_pos)
    group = accumulation_chunk(k_size, group)
    if group is not None and b_dims:
        raise NotHandled("group-wise or K-split weights together with a batch dim are not supported")
    notes = [*trace.notes, *(["per-K scale folded into the activation"] if k_scale else []),
             *(["dynamic K, checked against the int32 bound at run time"] if k_size is None else [])]
    return Plan(c, x, x_map, q_leaf.value, q_leaf.map, scale, form.offset, tuple(trace.leaves), k_scale,
                trace.q_shift, k, k_size, m_dims, n_dim, b_dims, group, tuple(notes),
                options.requested_slices, options.act_format, options.act_scale, options.mx_scale)


def _roles(c: Contraction, k: int, x_dims: list[int], q_dims: list[int],
           c_dims: list[int]) -> tuple[tuple[int, ...], int, tuple[int, ...]]:
    """M dims (activation rows, in x's order), the N dim and the batch dims, from where each
    iteration dim appears."""
    m_dims, n_dims, b_dims = [], [], []
    for d in range(c.n_dims):
        if d == k:
            continue
        where = (d in x_dims, d in q_dims, d in c_dims)
        if where == (True, False, True):
            m_dims.append(d)
        elif where == (False, True, True):
            n_dims.append(d)
        elif where == (True, True, True):
            b_dims.append(d)
        else:
            raise NotHandled(f"iteration dim d{d} is neither batch, M nor N")
    m_dims.sort(key=x_dims.index)
    if len(n_dims) != 1:
        raise NotHandled(f"{len(n_dims)} output-channel dims in the weight (exactly one expected)")
    if len(b_dims) > 1:
        raise NotHandled(f"{len(b_dims)} batch dims shared by weight and activation (at most one)")
    return tuple(m_dims), n_dims[0], tuple(b_dims)


def _scale_groups(trace: WeightTrace, k: int, weight_dims: set[int]) -> set[int]:
    """The group sizes along K the scale and offset tensors vary with; they must not vary along K
    within a group, nor along an activation dim."""
    groups: set[int] = set()
    for leaf in trace.leaves:
        reach = trace.k_reach(leaf.map)
        if reach == "full":
            raise NotHandled(f"scale or zero point varies along the reduction dim within a group ({leaf.value.type})")
        if reach == "group":
            groups |= {u[1] for u in (_ir.k_usage(e, k) for e in leaf.map.results) if u and u[0] == "kgroup"}
        if _ir.used_dims(leaf.map) - weight_dims - {k}:
            raise NotHandled(f"scale or zero point varies along an activation dim ({leaf.value.type})")
    return groups


def _split_k_scale(form: FloatAffine, trace: WeightTrace, k: int, x_side: set[int],
                   n_dim: int) -> tuple[Expr, tuple[Leaf, ...]]:
    """``scale = s_k · rest`` where ``s_k`` varies along K only (e.g. a per-token V scale in
    ``P·V``): since ``Σ_k x[k]·s_k[k]·q[k, n] = Σ_k (x[k]·s_k[k])·q[k, n]``, ``s_k`` is folded into
    the activation and ``rest`` stays in the epilogue.  Anything else varying along K is refused."""
    if not trace.k_leaves:
        return form.scale, ()
    for leaf in trace.k_leaves:
        if _ir.used_dims(leaf.map) - x_side or n_dim in _ir.used_dims(leaf.map):
            origin = _ir.producer(leaf.value).name if _ir.producer(leaf.value) is not None else "argument"
            raise NotHandled(f"float tensor varying along the reduction dim and the output channels ({origin}"
                             f" {leaf.value.type}) in the weight chain: a float weight")
    if form.offset is not None and mentions(form.offset, trace.k_leaves):
        raise NotHandled("a zero point or offset varies along the reduction dim")
    fs = factors(form.scale)
    k_part = [f for f in fs if isinstance(f, Leaf) and any(f is leaf for leaf in trace.k_leaves)]
    rest = [f for f in fs if not any(f is g for g in k_part)]
    if any(mentions(f, trace.k_leaves) for f in rest) or len(k_part) != len(trace.k_leaves):
        raise NotHandled("a scale varying along the reduction dim enters the weight other than as a factor")
    out: Expr = rest[0] if rest else Const(1.0)
    for f in rest[1:]:
        out = Node("mul", (out, f))
    return out, tuple(k_part)


def _unit_dims(value: ir.Value, amap: ir.AffineMap) -> tuple[int, ...]:
    """The size-1 dims of ``value`` that ``amap`` reads at constant 0 (a weight sliced out of a bigger
    tensor, e.g. one layer and batch of a KV cache): the int8 matmul collapses them away."""
    t = _ir.tensor_type(value)
    unit = tuple(i for i, e in enumerate(amap.results)
                 if isinstance(e, ir.AffineConstantExpr) and e.value == 0 and t.get_dim_size(i) == 1)
    return () if len(unit) == t.rank else unit


# ============================================================================= MX slices
def _mx_group(p: Plan, fmt: str) -> int:
    """MX activation slices have one scale per 32-block of K: K must split into the blocks, and
    any group-wise weight scale must use the same blocks."""
    if p.group is None:
        if p.k_size is None or p.k_size % MX_BLOCK:
            raise NotHandled(f"act-format={fmt} needs a static K that is a multiple of {MX_BLOCK}"
                             f" (K = {p.k_size if p.k_size is not None else 'dynamic'})")
        return MX_BLOCK
    if p.group != MX_BLOCK:
        raise NotHandled(f"act-format={fmt} needs weight groups of {MX_BLOCK} along K (the MX block);"
                         f" the weight has groups of {p.group}")
    return p.group


def _mxfp4_weight(p: Plan) -> Leaf:
    """The E8M0 bytes of ``p``'s weight when the block-scaled form is exact for it (a plain matmul
    against an MXFP4 weight); :class:`NotHandled` with the reason otherwise."""
    if p.b_dims:
        raise NotHandled("a true batch dim (the block-scaled form handles plain matmuls)")
    if p.k_scale:
        raise NotHandled("a per-K scale folded into the activation (not an MX weight)")
    if p.offset is not None or p.q_shift:
        raise NotHandled("a zero point or offset term (FP4 weights have none)")
    return e8m0_scale(p.q, p.scale)


__all__ = ["Plan", "plan"]
