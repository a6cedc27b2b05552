"""Emitting a :class:`~.plan.Plan` as one fused CPU kernel dispatch (:mod:`.cpu_kernel`).

Where :mod:`.emit_int8` leaves the integer matmul, the per-group partials and their reduction to
IREE's code generation, this emitter writes the contraction as one ``flow.dispatch`` of a kernel
msd generates itself.  Around it, ordinary tensor ops:

1. the activation, as ``[M, K]`` rows: ``amax`` per row (or per row and group) and, with a zero
   point / min in the weight, the sums per (row, group); the slices' codes as signed bytes and, for a
   kernel that reads the weight codes with a bias ``b`` as its unsigned bytes (VNNI, AMX's 8-bit
   products, AVX2 on 4-bit codes), the accumulators' start ``-b·Σ_{k∈g} a`` per (row, slice, group) —
   once per row, before the kernel, by one dispatch of :mod:`.quantize_kernel` for f32 rows (the
   linears that read the same activation share it after CSE), by tensor ops otherwise;
2. the weight side, which reads only the weight and so is computed at compile time
   (``--msd-prepack-parameters``): the integer codes relaid into the kernel's tiles (``+ b``; 4-bit
   codes two per byte), and the scale and offset per (channel, group);
3. the dispatch, then one elementwise epilogue: the init added and the result's type (the op later
   consumers such as a bias add are folded into, as for the other emitters).

:func:`kernel_for` says whether a plan fits the kernel (else the reason, and the plan is emitted by
:mod:`.emit_int8`).
"""

from __future__ import annotations

import dataclasses
import math

from iree.compiler import ir
from iree.compiler.dialects import arith, linalg, tensor
from iree.compiler.dialects import math as math_d

from .. import _ir
from ..analysis.dequant import Expr, mentions
from ..analysis.values import value_set
from ..attention_kernels import CombineSpec
from ..row_kernels import RowSpec
from .cpu_kernel import ISAS, ROLES_ATTR, KernelSpec, code_row
from .cuda_kernel import ARCHS as CUDA_ARCHS
from .cuda_kernel import K_STEP, CudaKernelSpec, parse_shape
from .cuda_quantize import CudaQuantizeSpec
from .emit_common import (
    centred,
    drop_unit_dims,
    fold_k_scale,
    mark_epilogue,
    row_scale,
    scalar_expr,
    select_slice,
    slice_digits,
    slice_index,
    split_map,
)
from .plan import Plan
from .quantize_kernel import QuantizeSpec

PARALLEL, REDUCTION = _ir.PARALLEL, _ir.REDUCTION
Kernel = KernelSpec | CudaKernelSpec | QuantizeSpec | CudaQuantizeSpec  # what a pass run adds an executable for
# Workgroups per CPU kernel dispatch.  IREE's task system hands a worker 8 workgroups at a time once a
# dispatch has 8 per worker or more, 1 at a time below that: 32 (or 16 where the layer has fewer than 32
# register blocks) stay balanced on 1, 2, 4, 8 or 16 workers, where the counts the kernel had before (N/32
# channel tiles rounded, e.g. 35 or 40; one per block below 32, e.g. 18 or 30) left one of two workers 19
# of 35, 24 of 40 or 10 of 18 (benchmarks/kernel.py --workgroups, docs/benchmarks.md "Fused CPU kernel").
WORKGROUPS = (32, 16)


def _kernel_shape(p: Plan, step: int, which: str) -> tuple[int, int] | str:
    """``(N, group)`` of ``p`` when a fused kernel that reads K in steps of ``step`` covers it, else why
    not (``which`` names the kernel in the reason)."""
    if p.block_scaled or p.act_format != "int8":
        return f"act-format={p.act_format} (the kernel takes int8 slices)"
    if p.b_dims:
        return "a batch dim shared by weight and activation"
    if p.k_size is None:
        return "dynamic K"
    x_dims = _ir.dim_positions(p.x_map)
    if x_dims != [*p.m_dims, p.k]:
        return "the activation is not laid out as rows of K"
    if _ir.dim_positions(p.c.maps[2]) != [*p.m_dims, p.n_dim]:
        return "the result is not laid out as rows of output channels"
    layout = _weight_layout(p)
    if layout is None:
        return "the integer weight is not a static [N, K], [K, N] or [N, K/g, g] tensor"
    n = _ir.tensor_type(p.q).get_dim_size(_kept_dims(p)[0 if layout != "kn" else 1])
    group = p.group or p.k_size
    if p.k_size % group or group % step:
        return f"K={p.k_size} in groups of {group} (the {which} kernel needs groups that are multiples of {step})"
    return n, group


def kernel_for(p: Plan, isa: str) -> KernelSpec | str:
    """The kernel instance for ``p`` on ``isa``, or why the kernel does not cover it."""
    if isa not in ISAS:
        return f"no fused kernel for ISA {isa!r}"
    step = ISAS[isa].k_step
    shape = _kernel_shape(p, step, isa)
    if isinstance(shape, str):
        return shape
    n, group = shape
    per_group = p.group is not None and p.act_scale == "group"
    rows, cols = _register_block(ISAS[isa].lanes, p.slices)
    return KernelSpec(isa, n, p.k_size, group, p.slices, per_group, p.offset is not None, rows=rows,
                      workgroups=kernel_workgroups(n, isa, cols), cols=cols,
                      nibbles=group % (2 * step) == 0 and _four_bit(p))


def mma_kernel_for(p: Plan, arch: str, shape_text: str = "") -> CudaKernelSpec | str:
    """The tensor-core kernel instance for ``p`` on the NVIDIA ``arch`` (of the shape ``shape_text``:
    :func:`.cuda_kernel.parse_shape`), or why it does not cover it."""
    if arch not in CUDA_ARCHS:
        return f"no tensor-core kernel for {arch!r} (int8 mma.sync needs one of {', '.join(CUDA_ARCHS)})"
    shape = _kernel_shape(p, K_STEP, "tensor-core")
    if isinstance(shape, str):
        return shape
    n, group = shape
    per_group = p.group is not None and p.act_scale == "group"
    return CudaKernelSpec(n, p.k_size, group, p.slices, per_group, p.offset is not None, nibbles=_four_bit(p),
                          arch=arch, **parse_shape(shape_text))


def _four_bit(p: Plan) -> bool:
    """Whether every weight code the matmul reads (``q - q_shift``) is proven to lie in [-8, 7]: the
    kernel then reads them as nibbles, two per byte (half the weight bytes of int8 codes)."""
    values = value_set(p.q)
    return values is not None and all(-8 <= v - p.q_shift <= 7 for v in values)


def _register_block(lanes: int, slices: int) -> tuple[int, int]:
    """(rows, channel tiles) per register block: rows × tiles × slices i32 accumulators, rows × tiles
    f32 ones and a weight vector per tile must fit the vector registers (32 for AVX-512 and Arm NEON,
    16 for the 256-bit x86 forms)."""
    if lanes == 8:
        return 2, 1
    return (4 if slices <= 2 else 3), 2


def kernel_workgroups(n: int, isa: str, cols: int) -> int:
    """Workgroups of a kernel over ``n`` channels: the largest of WORKGROUPS the register blocks fill, else
    one per block."""
    blocks = -(-n // (ISAS[isa].lanes * cols))
    return next((w for w in WORKGROUPS if blocks >= w), blocks)


def _kept_dims(p: Plan) -> list[int]:
    """The weight tensor's dims left once its unit dims are dropped."""
    return [i for i in range(len(p.q_map.results)) if i not in p.q_unit_dims]


def _weight_layout(p: Plan) -> str | None:
    """How the integer weight (unit dims dropped) is laid out: "nk", "kn" or "ngk" (``[N, K/g, g]``, as
    group-wise formats store it), or None when the kernel cannot read it."""
    t = _ir.tensor_type(p.q)
    if not t.has_static_shape:
        return None
    usage = [_ir.k_usage(p.q_map.results[i], p.k) for i in _kept_dims(p)]
    if usage == [("dim", p.n_dim), ("dim", p.k)]:
        return "nk"
    if usage == [("dim", p.k), ("dim", p.n_dim)]:
        return "kn"
    if len(usage) == 3 and usage[0] == ("dim", p.n_dim) and usage[1] is not None and usage[1][0] == "kgroup" \
            and usage[2] == ("kin", usage[1][1]):
        return "ngk"
    return None


def emit(p: Plan, spec: KernelSpec | CudaKernelSpec, kernels: dict[str, Kernel]) -> ir.Value:
    """Emit ``p.c`` as the kernel ``spec`` at the current insertion point; return the value that
    replaces its result.  The kernels it dispatches are added to ``kernels`` (by symbol), whose
    executables the pass adds to the module at the end (:func:`executables`)."""
    kernels[spec.symbol] = spec
    x = fold_k_scale(p.x, p.x_map, p.k_scale)
    x_t = _ir.tensor_type(x)
    nm = len(p.m_dims)
    m_sizes = [_ir.size_of(x, i) for i in range(nm)]
    rows = _ir.collapse(x, [list(range(nm)), [nm]]) if nm else _ir.expand(x, [[0, 1]], [1, spec.k])
    g, groups = spec.group, spec.groups
    mf = _ir.size_of(rows, 0)
    xg = _ir.expand(rows, [[0], [1, 2]], [mf, groups, g])  # [M, G, g]

    if isinstance(spec, KernelSpec) and isinstance(_ir.elem_type(rows), ir.F32Type):
        q = QuantizeSpec(spec.k, g, spec.slices, spec.scale_per_group, spec.offset, spec.weight_bias)
        dyn = _quantize(q, rows, kernels)
    elif isinstance(spec, CudaKernelSpec) and isinstance(_ir.elem_type(rows), ir.F32Type):
        q = CudaQuantizeSpec(spec.k, g, spec.slices, spec.scale_per_group, spec.offset, spec.arch)
        dyn = _quantize_on_gpu(q, rows, kernels)
    else:
        amax, sums = _activation_stats(p, spec, xg, mf)
        scale = _slice_scale(amax)
        codes = _codes(spec, xg, scale, mf)
        bias = spec.weight_bias if isinstance(spec, KernelSpec) else 0
        code_sums = [_code_sums(codes, bias)] if bias else []
        codes = _ir.collapse(codes, [[0], [1], [2, 3]])
        if isinstance(spec, KernelSpec):
            codes = _padded_last(codes, code_row(spec.k), mf)
        dyn = [_dynamic_rows(v) for v in [codes, scale, *([sums] if spec.offset else []), *code_sums]]
    weights = _weight_operands(p, spec) if isinstance(spec, KernelSpec) else _mma_weight_operands(p, spec)

    m = tensor.DimOp(dyn[0], _ir.index_const(0)).result
    operands = [*dyn, *weights]
    y = _dispatch(spec, operands, m, len(dyn))
    if not isinstance(mf, ir.Value):
        y = tensor.CastOp(ir.RankedTensorType.get([mf, spec.n], _ir.f32()), y).result
    y = _ir.expand(y, [list(range(nm)), [nm]], [*m_sizes, spec.n]) if nm > 1 else y
    if nm == 0:
        y = _ir.collapse(y, [[0, 1]])
    if _adds_nothing(p):  # an f32 result into a +0.0 fill: the kernel's result is the answer
        return y
    return mark_epilogue(_epilogue(p, y, x_t.rank))


# ============================================================================= the activation
def _quantize(q: QuantizeSpec, rows: ir.Value, kernels: dict[str, Kernel]) -> list[ir.Value]:
    """``[codes, scale, (sums)]`` of f32 ``rows`` ``[M, K]`` by one dispatch of the kernel ``q``
    (M dynamic, one workgroup per row), added to ``kernels``.  When the rows are the result of a row
    kernel (:mod:`..row_kernels`: an RMSNorm, a residual add and RMSNorm, a gated activation) or of a
    decode attention's combination of its splits, the dispatch computes them from that kernel's inputs
    instead (``q`` with it as its prologue), placed where that kernel is; a row kernel's sum ``h``, if it
    has one, is then read from it too, and the producer's dispatch goes away once nothing reads it."""
    source = _prologue_of(rows)
    if source is None:
        ip, loc = ir.InsertionPoint.current, ir.Location.current
        inputs = [_dynamic_rows(rows)]
        m = tensor.DimOp(inputs[0], _ir.index_const(0)).result
    else:
        src_op, spec = source
        q = dataclasses.replace(q, prologue=spec)
        ip, loc = ir.InsertionPoint(src_op), src_op.location
        inputs = list(src_op.operands)[1:1 + len(spec.inputs())]  # after the workload
        with ip, loc:  # a row kernel's workload is its rows; a combination's rows are its sequences
            m = src_op.operands[0] if isinstance(spec, RowSpec) else _ir.index_const(spec.batch)
    kernels[q.symbol] = q
    results = [ir.RankedTensorType.parse(f"tensor<{t}>") for t in q.results().values()]
    dynamic = [m] * sum("?" in t for t in q.inputs().values())
    with ip, loc:
        op = _ir.flow_dispatch(q.symbol, results, [m], [*inputs, m], dynamic, [m] * len(results))
    out = list(op.results)
    if "h" in q.results():  # the residual stream's sum: read from the fused dispatch from now on
        src_op.results[0].replace_all_uses_with(out[-1])
        out = out[:-1]
    return out


def _quantize_on_gpu(q: CudaQuantizeSpec, rows: ir.Value, kernels: dict[str, Kernel]) -> list[ir.Value]:
    """``[codes, scale, (sums)]`` of f32 ``rows`` ``[M, K]`` by one dispatch of the PTX quantizer ``q`` (one
    workgroup per row; M also its i32 push constant), added to ``kernels``."""
    kernels[q.symbol] = q
    x = _dynamic_rows(rows)
    m = tensor.DimOp(x, _ir.index_const(0)).result
    m32 = arith.IndexCastOp(ir.IntegerType.get_signless(32), m).result
    results = [ir.RankedTensorType.parse(f"tensor<{t}>") for t in q.results().values()]
    return list(_ir.flow_dispatch(q.symbol, results, [m], [x, m32], [m], [m] * len(results)).results)


def _prologue_of(rows: ir.Value) -> tuple[ir.Operation, RowSpec | CombineSpec] | None:
    """The dispatch of msd's whose result ``rows`` ``[M, K]`` is, through reshapes (casts, collapses,
    expansions: the same row-major elements, so the same rows), when the quantizer can compute that
    result itself: a row kernel's ``y`` ``[M, K]``, or a decode attention's combination ``[B, kv_heads,
    group, D]`` (row ``b``: sequence ``b``'s heads); with the prologue's spec.  Else None."""
    k = _ir.tensor_type(rows).get_dim_size(1)
    v = rows
    while (op := _ir.producer(v)) is not None and op.name in ("tensor.cast", "tensor.collapse_shape",
                                                              "tensor.expand_shape"):
        v = op.operands[0]
    if op is None or op.name != "flow.dispatch" or v != op.results[len(op.results) - 1]:
        return None
    symbol = _entry_symbol(op)
    spec = RowSpec.from_symbol(symbol) or CombineSpec.from_symbol(symbol)
    if spec is None or spec.k != k or (isinstance(spec, CombineSpec) and spec.head_dim % 4):
        return None
    return op, spec


def _entry_symbol(dispatch: ir.Operation) -> str:
    """The entry point a ``flow.dispatch`` calls (``@exe::@fn`` → ``fn``)."""
    return str(ir.ArrayAttr(dispatch.attributes["entry_points"])[0]).rsplit("::@", 1)[-1]


def _activation_stats(p: Plan, spec: KernelSpec, xg: ir.Value, mf: _ir.Size) -> tuple[ir.Value, ir.Value | None]:
    """``amax`` ``[M, G or 1]`` and, with an offset, the group sums ``[M, G]`` of ``xg`` ``[M, G, g]``."""
    groups = spec.groups
    gs = groups if spec.scale_per_group else 1

    def amax_body(v, o, *rest):
        out = [arith.MaximumFOp(math_d.AbsFOp(_ir.to_f32(v)).result, o).result]
        if rest:
            out.append(arith.AddFOp(_ir.to_f32(v), rest[0]).result)
        return out

    zero = _ir.f32_const(0.0)
    if spec.offset and spec.scale_per_group:
        amax, sums = _ir.generic(
            [xg], [_ir.filled([mf, groups], zero), _ir.filled([mf, groups], zero)],
            [_map(3, [0, 1, 2]), _map(3, [0, 1]), _map(3, [0, 1])], [PARALLEL, PARALLEL, REDUCTION], amax_body)
        return amax, sums
    amax = _ir.generic(
        [xg], [_ir.filled([mf, gs], zero)],
        [_map(3, [0, 1, 2]), _map(3, [0, 1] if spec.scale_per_group else [0, ("c", 0)])],
        [PARALLEL, PARALLEL if spec.scale_per_group else REDUCTION, REDUCTION], amax_body)[0]
    if not spec.offset:
        return amax, None
    sums = _ir.generic(
        [xg], [_ir.filled([mf, groups], zero)], [_map(3, [0, 1, 2]), _map(3, [0, 1])],
        [PARALLEL, PARALLEL, REDUCTION], lambda v, o: [arith.AddFOp(_ir.to_f32(v), o).result])[0]
    return amax, sums


def _slice_scale(amax: ir.Value) -> ir.Value:
    """The first slice's scale ``max(amax, FLT_MIN)/127``; NaN for a row whose amax is not finite (the
    whole row's result is then NaN, as with the other emitters)."""
    rank = _ir.tensor_type(amax).rank
    ident = ir.AffineMap.get_identity(rank)

    def body(a, _o):
        finite = arith.CmpFOp(arith.CmpFPredicate.OLT, a, _ir.f32_const(float("inf"))).result
        return [arith.SelectOp(finite, row_scale(a), _ir.f32_const(float("nan"))).result]

    sizes = [_ir.size_of(amax, i) for i in range(rank)]
    return _ir.generic([amax], [_ir.empty(sizes, _ir.f32())], [ident, ident], [PARALLEL] * rank, body)[0]


def _codes(spec: KernelSpec | CudaKernelSpec, xg: ir.Value, scale: ir.Value, mf: _ir.Size) -> ir.Value:
    """``[M, P, G, g] i8``: slice ``p``'s signed codes of ``x / scale`` (:func:`_slice_scale`); 0 where
    that is not finite."""
    slices, i8 = spec.slices, ir.IntegerType.get_signless(8)
    i32 = ir.IntegerType.get_signless(32)

    def body(xv, s, _out):
        t = arith.DivFOp(_ir.to_f32(xv), s).result
        finite = arith.CmpFOp(arith.CmpFPredicate.OLT, math_d.AbsFOp(t).result, _ir.f32_const(float("inf"))).result
        digits = slice_digits(t, slices)
        v = select_slice(slice_index(1), digits) if slices > 1 else digits[0]
        v = arith.SelectOp(finite, v, _ir.f32_const(0.0)).result
        return [arith.TruncIOp(i8, arith.FPToSIOp(i32, v).result).result]

    # iteration (m, p, G, g) over x read as [M, G, g]
    return _ir.generic(
        [xg, scale], [_ir.empty([mf, slices, spec.groups, spec.group], i8)],
        [_map(4, [0, 2, 3]), _map(4, [0, 2] if spec.scale_per_group else [0, ("c", 0)]), _map(4, [0, 1, 2, 3])],
        [PARALLEL] * 4, body)[0]


def _code_sums(codes: ir.Value, bias: int) -> ir.Value:
    """``[M, P, G] i32``: ``-bias · Σ`` of each (row, slice, group)'s codes ``[M, P, G, g]`` — the start of
    a kernel's accumulators that reads its weight codes ``+ bias`` (:meth:`.cpu_kernel.Isa.weight_bias`)."""
    i32 = ir.IntegerType.get_signless(32)
    sizes = [_ir.size_of(codes, i) for i in range(3)]
    nb = _ir.int_const(i32, -bias)
    return _ir.generic(
        [codes], [_ir.filled(sizes, _ir.int_const(i32, 0))], [_map(4, [0, 1, 2, 3]), _map(4, [0, 1, 2])],
        [PARALLEL, PARALLEL, PARALLEL, REDUCTION],
        lambda v, o: [arith.AddIOp(o, arith.MulIOp(arith.ExtSIOp(i32, v).result, nb).result).result])[0]


def _dynamic_rows(v: ir.Value) -> ir.Value:
    """``v`` with its first (row) dim dynamic, as the kernel's operand types have it."""
    t = _ir.tensor_type(v)
    if t.is_dynamic_dim(0):
        return v
    shape = [ir.ShapedType.get_dynamic_size(), *[t.get_dim_size(i) for i in range(1, t.rank)]]
    return tensor.CastOp(ir.RankedTensorType.get(shape, t.element_type), v).result


# ============================================================================= the weight
def _weight_operands(p: Plan, spec: KernelSpec) -> list[ir.Value]:
    """``[w, scale, (offset)]`` in the kernel's layouts (codes ``+ weight_bias``); they read only the weight."""
    q = _centred_nk(p)
    lanes, tiles, groups, step = spec.lanes, spec.tiles, spec.groups, spec.k_step
    i8 = ir.IntegerType.get_signless(8)
    q = _padded_rows(q, tiles * lanes, _ir.int_const(i8, 0))
    if step == 4:  # a step of a tile: [lane, 4 codes]
        shape, perm = [tiles, lanes, groups, spec.group // 4, 4], [0, 2, 3, 1, 4]
    else:  # smmla: [channel pair, channel, 8 codes]
        shape, perm = [tiles, lanes // 2, 2, groups, spec.group // 8, 8], [0, 3, 4, 1, 2, 5]
    n_dims = len(shape) - 3
    q_t = _ir.expand(q, [list(range(n_dims)), list(range(n_dims, len(shape)))], shape)
    tiled = linalg.transpose(q_t, outs=[_ir.empty([shape[i] for i in perm], i8)], permutation=perm)
    tiled = tiled.operation.results[0] if isinstance(tiled, ir.OpView) else tiled
    rank = len(shape)
    if spec.weight_bias and not spec.nibbles:  # int8 codes + 128: the dot's unsigned bytes
        ident = ir.AffineMap.get_identity(rank)
        tiled = _ir.generic([tiled], [_ir.empty([shape[i] for i in perm], i8)], [ident, ident], [PARALLEL] * rank,
                            lambda v, _o: [arith.AddIOp(v, _ir.int_const(i8, spec.weight_bias)).result])[0]
    # (4-bit codes are stored + 8 as nibbles either way)
    w = _ir.collapse(_nibbles(tiled) if spec.nibbles else tiled, [[0], [1], [2], list(range(3, rank))])
    out = [w, _per_channel_group(p, spec, p.scale)]
    if spec.offset:
        out.append(_per_channel_group(p, spec, p.offset))
    return out


def _centred_nk(p: Plan) -> ir.Value:
    """The weight's integer codes, centred, as ``[N, K]``."""
    q, _ = drop_unit_dims(p.q, p.q_map, p.q_unit_dims)
    q = centred(q, p.q_shift)
    layout = _weight_layout(p)
    if layout == "kn":
        return _transposed(q)
    if layout == "ngk":
        return _ir.collapse(q, [[0], [1, 2]])
    return q


def _mma_weight_operands(p: Plan, spec: CudaKernelSpec) -> list[ir.Value]:
    """``[w, scale, (offset)]`` in the tensor-core kernel's layouts (:mod:`.cuda_kernel`): each lane's B
    fragment words of every (tile, K step) contiguous; they read only the weight."""
    q = _centred_nk(p)
    tiles, ks = spec.tiles, spec.ksteps
    i8 = ir.IntegerType.get_signless(8)
    q = _padded_rows(q, tiles * 8, _ir.int_const(i8, 0))
    # [tile, n8, step, half, tq, byte] -> [tile, step, n8, tq, half, byte]: lane 4·n8 + tq, word = half
    shape, perm = [tiles, 8, ks, 2, 4, 4], [0, 2, 1, 4, 3, 5]
    q_t = _ir.expand(q, [[0, 1], [2, 3, 4, 5]], shape)
    lanes = linalg.transpose(q_t, outs=[_ir.empty([shape[i] for i in perm], i8)], permutation=perm)
    lanes = lanes.operation.results[0] if isinstance(lanes, ir.OpView) else lanes
    if spec.nibbles:  # word 0's byte i + 8 in the low nibble of byte i, word 1's in the high one
        def body(lo, hi, _o):
            def nibble(v):
                return arith.AndIOp(arith.AddIOp(v, _ir.int_const(i8, 8)).result, _ir.int_const(i8, 15)).result

            return [arith.OrIOp(nibble(lo), arith.ShLIOp(nibble(hi), _ir.int_const(i8, 4)).result).result]

        lanes = _ir.generic(
            [lanes, lanes], [_ir.empty([tiles, ks, 8, 4, 4], i8)],
            [_map(5, [0, 1, 2, 3, ("c", 0), 4]), _map(5, [0, 1, 2, 3, ("c", 1), 4]), _map(5, [0, 1, 2, 3, 4])],
            [PARALLEL] * 5, body)[0]
        w = _ir.collapse(lanes, [[0], [1], [2, 3], [4]])
    else:
        w = _ir.collapse(lanes, [[0], [1], [2, 3], [4, 5]])
    out = [w, _per_channel_group(p, spec, p.scale)]
    if spec.offset:
        out.append(_per_channel_group(p, spec, p.offset))
    return out


def _nibbles(tiled: ir.Value) -> ir.Value:
    """``[NT, G, S, ...]`` codes in [-8, 7] (``S`` steps per group) → ``[NT, G, S/2, ...]`` bytes: the code
    of step ``j`` + 8 in the low nibble, of step ``j + S/2`` + 8 in the high one (the kernel's two halves
    of a group)."""
    i8 = ir.IntegerType.get_signless(8)
    t = _ir.tensor_type(tiled)
    sizes = [t.get_dim_size(i) for i in range(t.rank)]
    half = sizes[2] // 2
    rest = list(range(3, t.rank))
    halves = _ir.expand(tiled, [[0], [1], [2, 3], *[[i + 1] for i in rest]], [*sizes[:2], 2, half, *sizes[3:]])

    def body(lo, hi, _o):
        def nibble(v):
            return arith.AndIOp(arith.AddIOp(v, _ir.int_const(i8, 8)).result, _ir.int_const(i8, 15)).result

        high = arith.ShLIOp(nibble(hi), _ir.int_const(i8, 4)).result
        return [arith.OrIOp(nibble(lo), high).result]

    n = t.rank
    return _ir.generic(
        [halves, halves], [_ir.empty([*sizes[:2], half, *sizes[3:]], i8)],
        [_map(n, [0, 1, ("c", 0), *range(2, n)]), _map(n, [0, 1, ("c", 1), *range(2, n)]), _map(n, list(range(n)))],
        [PARALLEL] * n, body)[0]


def _transposed(q: ir.Value) -> ir.Value:
    t = _ir.tensor_type(q)
    out = linalg.transpose(q, outs=[_ir.empty([t.get_dim_size(1), t.get_dim_size(0)], t.element_type)],
                           permutation=[1, 0])
    return out.operation.results[0] if isinstance(out, ir.OpView) else out


def _padded_last(v: ir.Value, length: int, m: _ir.Size) -> ir.Value:
    """``v`` ``[m, ...]`` with its last dim zero-padded to ``length`` (``m``: dim 0, static or not)."""
    t = _ir.tensor_type(v)
    sizes = [t.get_dim_size(i) for i in range(t.rank)]
    if sizes[-1] == length:
        return v
    dest = _ir.filled([m, *sizes[1:-1], length], _ir.int_const(t.element_type, 0))
    dyn = [m] if isinstance(m, ir.Value) else []
    static = [ir.ShapedType.get_dynamic_size() if dyn else m, *sizes[1:]]
    return tensor.InsertSliceOp(v, dest, [], dyn, [], [0] * t.rank, static, [1] * t.rank).result


def _padded_rows(v: ir.Value, rows: int, zero: ir.Value) -> ir.Value:
    """``v`` ``[R, ...]`` as ``[rows, ...]``, the new rows ``zero``."""
    t = _ir.tensor_type(v)
    if t.get_dim_size(0) == rows:
        return v
    sizes = [t.get_dim_size(i) for i in range(t.rank)]
    dest = _ir.filled([rows, *sizes[1:]], zero)
    return tensor.InsertSliceOp(v, dest, [], [], [], [0] * t.rank, sizes, [1] * t.rank).result


def _per_channel_group(p: Plan, spec: KernelSpec, e: Expr) -> ir.Value:
    """The weight's scale (or offset) expression evaluated per (channel, group), in ``[NT, G, W]``."""
    pos = {p.n_dim: 0, p.k: 1}
    if p.group is not None:
        n_all = p.c.n_dims + 1
        leaf_maps = [_ir.reindex(split_map(leaf.map, p.k, p.c.n_dims, n_all), pos, 2) for leaf in p.leaves]
    else:
        leaf_maps = [_ir.reindex(leaf.map, pos, 2) for leaf in p.leaves]
    used = [i for i, leaf in enumerate(p.leaves) if mentions(e, [leaf])]
    ins = [p.leaves[i].value for i in used]
    maps = [leaf_maps[i] for i in used]

    def body(*args):
        env = {id(p.leaves[i]): a for i, a in zip(used, args[:-1])}
        return [scalar_expr(e, lambda leaf: env[id(leaf)])]

    values = _ir.generic(ins, [_ir.empty([spec.n, spec.groups], _ir.f32())], [*maps, _map(2, [0, 1])],
                         [PARALLEL, PARALLEL], body)[0]
    lanes, tiles = spec.lanes, spec.tiles
    values = _padded_rows(values, tiles * lanes, _ir.f32_const(0.0))
    v3 = _ir.expand(values, [[0, 1], [2]], [tiles, lanes, spec.groups])
    out = linalg.transpose(v3, outs=[_ir.empty([tiles, spec.groups, lanes], _ir.f32())], permutation=[0, 2, 1])
    return out.operation.results[0] if isinstance(out, ir.OpView) else out


# ============================================================================= dispatch, epilogue
def _dispatch(spec: KernelSpec | CudaKernelSpec, operands: list[ir.Value], m: ir.Value, n_dynamic: int) -> ir.Value:
    """``flow.dispatch @<symbol>::@<symbol>[m](operands..., m)`` → ``[M, N] f32`` (M an index for the
    CPU kernel's function, an i32 push constant for the PTX kernel)."""
    result = ir.RankedTensorType.get([ir.ShapedType.get_dynamic_size(), spec.n], _ir.f32())
    scalar = m if isinstance(spec, KernelSpec) else arith.IndexCastOp(ir.IntegerType.get_signless(32), m).result
    roles = ir.ArrayAttr.get([ir.StringAttr.get(r) for r in spec.roles()])
    return _ir.flow_dispatch(spec.symbol, [result], [m], [*operands, scalar], [m] * n_dynamic, [m],
                             {ROLES_ATTR: roles}).results[0]



def _adds_nothing(p: Plan) -> bool:
    """Whether the epilogue would add a +0.0 fill to an f32 result: then it changes no value but the
    sign of a zero (−0.0 + 0.0 = +0.0), and left in, it is one more dispatch per linear whose consumer
    IREE cannot fuse with msd's dispatch (a reshape, RoPE's gather: three per decode layer)."""
    fill = _ir.producer(p.c.init)
    if fill is None or fill.name != "linalg.fill" or not isinstance(_ir.elem_type(p.c.init), ir.F32Type):
        return False
    scalar = _ir.producer(fill.operands[0])
    if scalar is None or scalar.name != "arith.constant":
        return False
    value = scalar.attributes["value"]
    return isinstance(value, ir.FloatAttr) and value.value == 0.0 and math.copysign(1.0, value.value) > 0


def _epilogue(p: Plan, y: ir.Value, rank: int) -> ir.Value:
    """``init + y`` in the result's element type (the init read as its scalar when it is a fill)."""
    c = p.c
    out_t = _ir.elem_type(c.init)
    ident = ir.AffineMap.get_identity(rank)
    fill = _ir.producer(c.init)
    if fill is not None and fill.name == "linalg.fill":
        scalar = fill.operands[0]
        return _ir.generic([y], [fill.operands[1]], [ident, ident], [PARALLEL] * rank,
                           lambda v, _o: [_ir.from_f32(arith.AddFOp(_ir.to_f32(scalar), v).result, out_t)])[0]
    return _ir.generic([y], [c.init], [ident, ident], [PARALLEL] * rank,
                       lambda v, o: [_ir.from_f32(arith.AddFOp(_ir.to_f32(o), v).result, out_t)])[0]


def _map(n: int, positions: list) -> ir.AffineMap:
    return _ir.dims_map(n, positions)


def executables(module: ir.Operation, specs: dict[str, Kernel]) -> None:
    """Add the ``stream.executable`` of each kernel in ``specs`` to ``module`` (once per symbol)."""
    body = module.regions[0].blocks[0]
    present = {ir.StringAttr(op.attributes["sym_name"]).value for op in body.operations
               if "sym_name" in op.attributes}
    for symbol, spec in specs.items():
        if symbol in present:
            continue
        parsed = ir.Module.parse(spec.executable(), module.context)
        exe = parsed.body.operations[0]
        exe.move_before(body.operations[0])


__all__ = ["Kernel", "emit", "executables", "kernel_for", "mma_kernel_for"]
