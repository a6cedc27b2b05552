"""``--msd-row-kernels``: RMSNorm (with the residual add before it), the gated MLP activation and RoPE
in kernels msd writes, a workgroup per row.

In tensor ops a decode step's ``x + h`` then ``RMSNorm`` is three dispatches (the add, the sum of
squares, the scaling) and ``act(gate) · up`` is one more; each writes its row to memory for the next
to read back, and the linear after them quantizes the row in a dispatch of its own.  The model says
what it computes with msd's row ops (:mod:`msd.compiler.ops`): ``torch.ops.msd.rms_norm(x, w, eps)``,
``torch.ops.msd.add_rms_norm(x, r, w, eps) → (x + r, rms_norm(x + r))``,
``torch.ops.msd.glu(gate_up, activation)`` and ``torch.ops.msd.rope_qkv`` (a stacked q|k|v row →
rotated q, k and v heads in the KV cache's type, one or two elementwise dispatches per projection in
tensor ops); this pass, on the torch dialect before IREE's input conversion (which could not lower
them), makes each one dispatch of a row kernel:

1. **match** — ``torch.operator "torch.msd.rms_norm"`` (and the others);
2. **plan** — :class:`RowSpec` (:class:`QkvSpec` for RoPE) from the operand types (f32 rows of a
   static length that is a multiple of 4, a static weight of that length) and the constant ``eps`` /
   activation / heads and scale; anything else is an error naming the operand (IREE could not lower
   the op either);
3. **emit** — the operands as builtin tensors collapsed to rows ``[M, K]``, one ``flow.dispatch`` of the
   kernel (its ``stream.executable`` added once per spec), the results expanded back.

A row kernel's dispatch is also what ``--msd-decompose-activations`` looks for when it quantizes a
linear's activation for its fused kernel: when the activation is a row kernel's result, it emits one
dispatch that computes the row (:class:`RowPrologue`, the same code) and quantizes it, and the row
kernel's own dispatch goes away when nothing else reads it (:mod:`.decompose_activations.quantize_kernel`).
And ``--msd-attention-kernels`` (which runs first) takes a one-token ``rope_qkv`` into the decode
attention that reads its results (:attr:`.attention_kernels.AttentionSpec.rope`).

The kernels are plain ``vector``/``scf``/``math`` on f32, for every CPU target of IREE's ``llvm-cpu``
backend.  The sum of squares is accumulated in vector lanes and reduced once (another order of
additions than torch's; the result differs by rounding only).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from iree.compiler import ir
from iree.compiler.dialects import tensor

from msd.errors import OptionError

from . import _ir
from ._torch import add_executables, f32_bits, torch_operators, vtensor_shape
from .pass_options import PassOptions
from .report import Decision, Report

NAME = "msd-row-kernels"
SUMMARY = "RMSNorm, its residual add and the gated MLP activation in msd's own row kernels (torch dialect)"
OP_RMS_NORM = "torch.msd.rms_norm"  # the FX importer's name for torch.ops.msd.rms_norm
OP_ADD_RMS_NORM = "torch.msd.add_rms_norm"  # ... torch.ops.msd.add_rms_norm
OP_GLU = "torch.msd.glu"  # ... torch.ops.msd.glu
OP_ROPE_QKV = "torch.msd.rope_qkv"  # ... torch.ops.msd.rope_qkv
KINDS = {OP_RMS_NORM: "rms_norm", OP_ADD_RMS_NORM: "add_rms_norm", OP_GLU: "glu"}
ACTIVATIONS = ("silu", "gelu_tanh")
SYMBOL_PREFIX = "msd_row_"
GELU_C = math.sqrt(2.0 / math.pi)  # gelu_tanh: 0.5·g·(1 + tanh(√(2/π)·(g + 0.044715·g³)))
GELU_A = 0.044715


@dataclass(frozen=True)
class RowKernelsOptions(PassOptions):
    pass_name: ClassVar[str] = NAME


@dataclass(frozen=True)
class RowSpec:
    """One row kernel: ``kind`` ("rms_norm", "add_rms_norm" or "glu"), ``k`` the output row's length
    (glu reads rows of ``2k``: gate, then up), the norm's ``eps``, the glu's ``activation``."""

    kind: str
    k: int
    eps: float = 0.0
    activation: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS.values():
            raise ValueError(f"unknown row kernel kind {self.kind!r}")
        if self.k % 4:
            raise ValueError(f"row length {self.k} is not a multiple of 4")
        if self.kind == "glu" and self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")

    @property
    def norm(self) -> bool:
        return self.kind != "glu"

    @property
    def tag(self) -> str:
        """What the symbol says about the spec: kind, length, and eps (its f32 bits) or activation."""
        what = f"e{f32_bits(self.eps):08x}" if self.norm else self.activation
        return f"{self.kind}_k{self.k}_{what}"

    @property
    def symbol(self) -> str:
        return f"{SYMBOL_PREFIX}{self.tag}"

    @classmethod
    def from_symbol(cls, symbol: str) -> RowSpec | None:
        """The spec whose kernel is named ``symbol``; None when it names no row kernel."""
        m = re.fullmatch(rf"{SYMBOL_PREFIX}(rms_norm|add_rms_norm|glu)_k(\d+)_(e[0-9a-f]{{8}}|silu|gelu_tanh)", symbol)
        if m is None:
            return None
        kind, k, what = m.group(1), int(m.group(2)), m.group(3)
        if (kind == "glu") == what.startswith("e"):
            return None
        if kind == "glu":
            return cls(kind, k, activation=what)
        return cls(kind, k, eps=struct.unpack("<f", struct.pack("<I", int(what[1:], 16)))[0])

    def writer(self, emit: Callable[[str], None]) -> RowPrologue:
        """The row's computation as text for a kernel that consumes it (:class:`RowPrologue`)."""
        return RowPrologue(self, emit)

    def inputs(self) -> dict[str, str]:
        """Each input binding's memref type (``?``: the rows M)."""
        if self.kind == "glu":
            return {"x": f"?x{2 * self.k}xf32"}
        return {"x": f"?x{self.k}xf32", **({"res": f"?x{self.k}xf32"} if self.kind == "add_rms_norm" else {}),
                "w": f"{self.k}xf32"}

    def outputs(self) -> dict[str, str]:
        """Each result binding's memref type: the sum ``x + r`` (add_rms_norm), then the row ``y``."""
        sums = {"h": f"?x{self.k}xf32"} if self.kind == "add_rms_norm" else {}
        return {**sums, "y": f"?x{self.k}xf32"}

    def executable(self) -> str:
        """The standalone kernel's ``stream.executable``: each workgroup computes one row of ``y``."""
        c = chunk_of(self.k)
        v = f"vector<{c}xf32>"
        types = {**self.inputs(), **self.outputs()}
        lines = header(self.symbol, types, sorted({0, 1, c, self.k}))
        pro = RowPrologue(self, lines.append)
        pro.setup("      ", c)
        lines.append(f"      scf.for %k = %c0 to %c{self.k} step %c{c} {{")
        y = pro.load("        ", "%k", c)
        lines.append(f"        vector.transfer_write {y}, %y[%r, %k] {{in_bounds = [true]}} : {v}, "
                     f"memref<{types['y']}>")
        lines.append("      }")
        return "\n".join(lines + footer())


@dataclass(frozen=True)
class QkvSpec:
    """The RoPE row kernel of a stacked q|k|v projection (``torch.ops.msd.rope_qkv``): ``batch``
    sequences, rows of ``(heads + 2·kv_heads)·head_dim``; q's heads rotated and multiplied by ``scale``,
    k's rotated, k and v written as f16 when ``f16``.  A workgroup per token (row ``b·S + s``)."""

    batch: int
    heads: int
    kv_heads: int
    head_dim: int
    scale: float
    f16: bool = False

    def __post_init__(self) -> None:
        if self.head_dim % 4:
            raise ValueError(f"head dim {self.head_dim} is not a multiple of 4")

    @property
    def symbol(self) -> str:
        return (f"{SYMBOL_PREFIX}rope_qkv_b{self.batch}_h{self.heads}_kv{self.kv_heads}_d{self.head_dim}"
                f"_s{f32_bits(self.scale):08x}{'_f16' if self.f16 else ''}")

    def types(self) -> dict[str, str]:
        """Each binding's memref type: ``?`` is the rows ``M = B·S`` for ``x``, the tokens ``S`` elsewhere."""
        b, h, kv, d = self.batch, self.heads, self.kv_heads, self.head_dim
        e = "f16" if self.f16 else "f32"
        return {"x": f"?x{(h + 2 * kv) * d}xf32", "cos": f"{b}x1x?x{d}xf32", "sin": f"{b}x1x?x{d}xf32",
                "q": f"{b}x{h}x?x{d}xf32", "k": f"{b}x{kv}x?x{d}x{e}", "v": f"{b}x{kv}x?x{d}x{e}"}

    def executable(self) -> str:
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        c = min(chunk_of(d), 32)
        v, e = f"vector<{c}xf32>", "f16" if self.f16 else "f32"
        ve = f"vector<{c}x{e}>"
        t = self.types()
        out = [f"stream.executable private @{self.symbol} {{",
               f"  stream.executable.export public @{self.symbol} workgroups(%m: index) -> (index, index, index) {{",
               "    %one = arith.constant 1 : index",
               "    stream.return %m, %one, %one : index, index, index",
               "  }",
               "  builtin.module {",
               f"    func.func @{self.symbol}({', '.join(f'%{k}_b: !stream.binding' for k in t)}, %M: index, "
               "%S: index) {"]
        for n in sorted({0, 1, d, h, h + kv, h + 2 * kv, *range(0, d, c)}):
            out.append(f"      %c{n} = arith.constant {n} : index")
        for k, ty in t.items():
            out.append(f"      %{k} = stream.binding.subspan %{k}_b[%c0] : !stream.binding -> memref<{ty}>"
                       f"{{{'%M' if k == 'x' else '%S'}}}")
        out += ["      %f0 = arith.constant 0.0 : f32",
                "      %r = stream.dispatch.workgroup.id[0] : index",
                "      %b = arith.divui %r, %S : index",
                "      %s = arith.remui %r, %S : index",
                f"      %scale = arith.constant dense<0x{f32_bits(self.scale):08X}> : {v}"]
        for j in range(0, d, c):
            for tab in ("cos", "sin"):
                out.append(f"      %{tab}{j} = vector.transfer_read %{tab}[%b, %c0, %s, %c{j}], %f0 "
                           f"{{in_bounds = [true]}} : memref<{t[tab]}>, {v}")
        swap = ", ".join(str(i ^ 1) for i in range(c))

        def head_loop(lo: int, hi: int, dest: str, base: int, rotate: bool, scaled: bool) -> None:
            out.append(f"      scf.for %hh = %c{lo} to %c{hi} step %c1 {{")
            out.append(f"        %col = arith.muli %hh, %c{d} : index")
            out.append(f"        %hd = arith.subi %hh, %c{base} : index")
            for j in range(0, d, c):
                out.append(f"        %at{j} = arith.addi %col, %c{j} : index")
                out.append(f"        %x{j} = vector.transfer_read %x[%r, %at{j}], %f0 {{in_bounds = [true]}} : "
                           f"memref<{t['x']}>, {v}")
                y = f"%x{j}"
                if rotate:  # x·cos + swap(x)·sin, swap exchanging each pair's lanes
                    out.append(f"        %sw{j} = vector.shuffle %x{j}, %x{j} [{swap}] : {v}, {v}")
                    out.append(f"        %xc{j} = arith.mulf %x{j}, %cos{j} : {v}")
                    out.append(f"        %ss{j} = arith.mulf %sw{j}, %sin{j} : {v}")
                    out.append(f"        %y{j} = arith.addf %xc{j}, %ss{j} : {v}")
                    y = f"%y{j}"
                if scaled:
                    out.append(f"        %z{j} = arith.mulf {y}, %scale : {v}")
                    y = f"%z{j}"
                ty = v
                if dest != "q" and self.f16:
                    out.append(f"        %e{j} = arith.truncf {y} : {v} to {ve}")
                    y, ty = f"%e{j}", ve
                out.append(f"        vector.transfer_write {y}, %{dest}[%b, %hd, %s, %c{j}] {{in_bounds = [true]}} : "
                           f"{ty}, memref<{t[dest]}>")
            out.append("      }")

        head_loop(0, h, "q", 0, True, True)
        head_loop(h, h + kv, "k", h, True, False)
        head_loop(h + kv, h + 2 * kv, "v", h + kv, False, False)
        return "\n".join(out + footer())


def chunk_of(n: int) -> int:
    """Lanes read at a time: the largest of 32, 16, 8, 4 that divides ``n``."""
    return next(c for c in (32, 16, 8, 4) if n % c == 0)


def header(symbol: str, types: dict[str, str], constants: list[int]) -> list[str]:
    """A row kernel's ``stream.executable`` up to its body: one workgroup per row (the workload ``%m``),
    the bindings as memrefs named like ``types``' keys (``?``: the rows ``%M``), ``%r`` the row, the
    index constants ``%c<n>``, ``%f0``."""
    out = [f"stream.executable private @{symbol} {{",
           f"  stream.executable.export public @{symbol} workgroups(%m: index) -> (index, index, index) {{",
           "    %one = arith.constant 1 : index",
           "    stream.return %m, %one, %one : index, index, index",
           "  }",
           "  builtin.module {",
           f"    func.func @{symbol}({', '.join(f'%{k}_b: !stream.binding' for k in types)}, %M: index) {{"]
    out += [f"      %c{c} = arith.constant {c} : index" for c in constants]
    for k, t in types.items():
        dyn = "{%M}" if "?" in t else ""
        out.append(f"      %{k} = stream.binding.subspan %{k}_b[%c0] : !stream.binding -> memref<{t}>{dyn}")
    out += ["      %f0 = arith.constant 0.0 : f32", "      %r = stream.dispatch.workgroup.id[0] : index"]
    return out


def footer() -> list[str]:
    return ["      return", "    }", "  }", "}"]


class RowPrologue:
    """The row computation as kernel text, for the standalone kernel and for a kernel that consumes the
    row as it is computed (the activation quantizer).  The kernel has the memrefs of
    :meth:`RowSpec.inputs` / :meth:`RowSpec.outputs` (``%h`` for add_rms_norm), the row index ``%r`` and
    the index constants ``%c0``, ``%c1``, ``%c<chunk>``, ``%c<k>``; :meth:`setup` runs once per row
    (the norm's sum of squares; for add_rms_norm it also writes ``%h``), :meth:`load` gives a chunk of
    the row."""

    def __init__(self, spec: RowSpec, emit: Callable[[str], None]) -> None:
        self.s = spec
        self.e = emit
        self.n = 0  # SSA names made unique per load

    def constants(self) -> list[int]:
        return [0, 1, self.s.k]

    def setup(self, ind: str, c: int) -> None:
        s, e = self.s, self.e
        if not s.norm:
            return
        v, t = f"vector<{c}xf32>", self.s.inputs()
        e(f"{ind}%rz = arith.constant dense<0.0> : {v}")
        e(f"{ind}%rsq = scf.for %rk = %c0 to %c{s.k} step %c{c} iter_args(%racc = %rz) -> ({v}) {{")
        e(f"{ind}  %rx = vector.transfer_read %x[%r, %rk], %f0 {{in_bounds = [true]}} : memref<{t['x']}>, {v}")
        h = "%rx"
        if s.kind == "add_rms_norm":
            e(f"{ind}  %rr = vector.transfer_read %res[%r, %rk], %f0 {{in_bounds = [true]}} : "
              f"memref<{t['res']}>, {v}")
            e(f"{ind}  %rh = arith.addf %rx, %rr : {v}")
            e(f"{ind}  vector.transfer_write %rh, %h[%r, %rk] {{in_bounds = [true]}} : {v}, "
              f"memref<{s.outputs()['h']}>")
            h = "%rh"
        e(f"{ind}  %racc1 = vector.fma {h}, {h}, %racc : {v}")
        e(f"{ind}  scf.yield %racc1 : {v}")
        e(f"{ind}}}")
        e(f"{ind}%rsum = vector.reduction <add>, %rsq : {v} into f32")
        e(f"{ind}%rk_f = arith.constant {float(s.k)!r} : f32")
        e(f"{ind}%reps = arith.constant 0x{f32_bits(s.eps):08X} : f32")
        e(f"{ind}%rmean = arith.divf %rsum, %rk_f : f32")
        e(f"{ind}%rme = arith.addf %rmean, %reps : f32")
        e(f"{ind}%rs = math.rsqrt %rme : f32")

    def load(self, ind: str, k: str, c: int) -> str:
        """Emit the chunk of ``c`` lanes of the row at ``k`` (an index value); return its SSA name."""
        s, e, t = self.s, self.e, {**self.s.inputs(), **self.s.outputs()}
        self.n += 1
        p = f"%p{self.n}_"
        v = f"vector<{c}xf32>"
        if s.norm:
            src = "%h" if s.kind == "add_rms_norm" else "%x"
            e(f"{ind}{p}x = vector.transfer_read {src}[%r, {k}], %f0 {{in_bounds = [true]}} : "
              f"memref<{t[src[1:]]}>, {v}")
            e(f"{ind}{p}w = vector.transfer_read %w[{k}], %f0 {{in_bounds = [true]}} : memref<{t['w']}>, {v}")
            e(f"{ind}{p}rs = vector.broadcast %rs : f32 to {v}")
            e(f"{ind}{p}n = arith.mulf {p}x, {p}rs : {v}")
            e(f"{ind}{p}y = arith.mulf {p}n, {p}w : {v}")
            return f"{p}y"
        e(f"{ind}{p}ku = arith.addi {k}, %c{s.k} : index")
        e(f"{ind}{p}g = vector.transfer_read %x[%r, {k}], %f0 {{in_bounds = [true]}} : memref<{t['x']}>, {v}")
        e(f"{ind}{p}u = vector.transfer_read %x[%r, {p}ku], %f0 {{in_bounds = [true]}} : memref<{t['x']}>, {v}")
        e(f"{ind}{p}one = arith.constant dense<1.0> : {v}")
        if s.activation == "silu":  # g · σ(g) = g / (1 + exp(−g)), as 1 / (1 + exp(−g)) · g
            e(f"{ind}{p}ng = arith.negf {p}g : {v}")
            e(f"{ind}{p}ex = math.exp {p}ng : {v}")
            e(f"{ind}{p}de = arith.addf {p}ex, {p}one : {v}")
            e(f"{ind}{p}sg = arith.divf {p}one, {p}de : {v}")
            e(f"{ind}{p}a = arith.mulf {p}sg, {p}g : {v}")
        else:  # gelu_tanh: 0.5·g·(1 + tanh(√(2/π)·(g + 0.044715·g³)))
            e(f"{ind}{p}ca = arith.constant dense<{GELU_A!r}> : {v}")
            e(f"{ind}{p}cc = arith.constant dense<{GELU_C!r}> : {v}")
            e(f"{ind}{p}half = arith.constant dense<0.5> : {v}")
            e(f"{ind}{p}g2 = arith.mulf {p}g, {p}g : {v}")
            e(f"{ind}{p}g3 = arith.mulf {p}g2, {p}g : {v}")
            e(f"{ind}{p}in = vector.fma {p}ca, {p}g3, {p}g : {v}")
            e(f"{ind}{p}arg = arith.mulf {p}cc, {p}in : {v}")
            e(f"{ind}{p}th = math.tanh {p}arg : {v}")
            e(f"{ind}{p}op = arith.addf {p}one, {p}th : {v}")
            e(f"{ind}{p}hg = arith.mulf {p}half, {p}g : {v}")
            e(f"{ind}{p}a = arith.mulf {p}hg, {p}op : {v}")
        e(f"{ind}{p}y = arith.mulf {p}a, {p}u : {v}")
        return f"{p}y"


# ================================================================================================ pass
def _constant(op: ir.Operation, i: int, kind: str, what: str) -> float | int | str:
    """The value of operand ``i`` of ``op``, a ``torch.constant.<kind>``; else an error naming ``what``."""
    d = op.operands[i].owner
    name = ir.StringAttr(op.attributes["name"]).value
    if not isinstance(d, ir.Operation | ir.OpView) or d.name != f"torch.constant.{kind}":
        raise OptionError(f"{name}: the {what} must be a constant {kind}")
    a = d.attributes["value"]
    return {"float": lambda: ir.FloatAttr(a).value, "int": lambda: ir.IntegerAttr(a).value,
            "str": lambda: ir.StringAttr(a).value}[kind]()


def plan(op: ir.Operation) -> RowSpec:
    """The kernel for one row op; an :class:`~msd.errors.OptionError` naming the operand that does not
    fit."""
    name = ir.StringAttr(op.attributes["name"]).value
    kind = KINDS[name]
    n_tensors = {"rms_norm": 2, "add_rms_norm": 3, "glu": 1}[kind]
    n_results = 2 if kind == "add_rms_norm" else 1
    if len(op.operands) != n_tensors + 1 or len(op.results) != n_results:
        raise OptionError(f"{name}: expected {n_tensors + 1} operands and {n_results} result(s), got "
                          f"{len(op.operands)} and {len(op.results)}")
    x = vtensor_shape(op.operands[0].type)
    if x is None or x[1] != "f32" or not x[0] or x[0][-1] is None:
        raise OptionError(f"{name}: x must be an f32 tensor of a static last dim, got {op.operands[0].type}")
    width = x[0][-1]
    if kind == "glu":
        activation = str(_constant(op, 1, "str", "activation"))
        if width % 2 or (width // 2) % 4:
            raise OptionError(f"{name}: gate_up's last dim {width} is not twice a multiple of 4")
        if activation not in ACTIVATIONS:
            raise OptionError(f"{name}: activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
        spec = RowSpec(kind, width // 2, activation=activation)
    else:
        if width % 4:
            raise OptionError(f"{name}: the row length {width} is not a multiple of 4")
        if kind == "add_rms_norm" and vtensor_shape(op.operands[1].type) != x:
            raise OptionError(f"{name}: the residual must have x's type {op.operands[0].type}, got "
                              f"{op.operands[1].type}")
        w = vtensor_shape(op.operands[n_tensors - 1].type)
        if w is None or w != ([width], "f32"):
            raise OptionError(f"{name}: the weight must be f32 [{width}], got {op.operands[n_tensors - 1].type}")
        spec = RowSpec(kind, width, eps=float(_constant(op, n_tensors, "float", "eps")))
    for r in op.results:
        want = (x[0][:-1] + [spec.k], "f32")
        if vtensor_shape(r.type) != want:
            raise OptionError(f"{name}: a result must be f32 {want[0]}, got {r.type}")
    return spec


def _dynamic(sizes: list[int | None]) -> list[int]:
    return [ir.ShapedType.get_dynamic_size() if d is None else d for d in sizes]


def _to_builtin(v: ir.Value) -> ir.Value:
    t = ir.RankedTensorType.get(_dynamic(vtensor_shape(v.type)[0]), _ir.f32())
    return ir.Operation.create("torch_c.to_builtin_tensor", results=[t], operands=[v]).result


def _rows(v: ir.Value) -> ir.Value:
    """Builtin tensor ``v`` ``[..., K]`` as rows ``[M, K]``, M dynamic (the kernels' operand type)."""
    t = _ir.tensor_type(v)
    width = t.get_dim_size(t.rank - 1)
    v = _ir.expand(v, [[0, 1]], [1, width]) if t.rank == 1 else _ir.collapse(v, [list(range(t.rank - 1)),
                                                                                 [t.rank - 1]])
    if not _ir.tensor_type(v).is_dynamic_dim(0):
        v = tensor.CastOp(ir.RankedTensorType.get(_dynamic([None, width]), _ir.f32()), v).result
    return v


def _unrows(rows: ir.Value, like: ir.Value, width: int) -> ir.Value:
    """Rows ``[M, width]`` back in the shape of ``like`` ``[..., K]`` with its last dim ``width``."""
    t = _ir.tensor_type(like)
    lead = [_ir.size_of(like, i) for i in range(t.rank - 1)]
    m = _ir.product(lead) if lead else 1
    if isinstance(m, int):
        rows = tensor.CastOp(ir.RankedTensorType.get([m, width], _ir.f32()), rows).result
    if t.rank == 1:
        return _ir.collapse(rows, [[0, 1]])
    return _ir.expand(rows, [list(range(t.rank - 1)), [t.rank - 1]], [*lead, width])


def _emit(op: ir.Operation, spec: RowSpec) -> None:
    with ir.InsertionPoint(op), op.location:
        full = [_to_builtin(v) for v in list(op.operands)[:len(spec.inputs())]]
        builtin = [b if key == "w" else _rows(b) for b, key in zip(full, spec.inputs())]
        m = tensor.DimOp(builtin[0], _ir.index_const(0)).result
        results = [ir.RankedTensorType.parse(f"tensor<{t}>") for t in spec.outputs().values()]
        dynamic = [m] * sum("?" in t for t in spec.inputs().values())
        d = _ir.flow_dispatch(spec.symbol, results, [m], [*builtin, m], dynamic, [m] * len(results))
        outs = [ir.Operation.create("torch_c.from_builtin_tensor", results=[old.type],
                                    operands=[_unrows(r, full[0], spec.k)]).result
                for r, old in zip(d.results, op.results)]
    for old, new in zip(op.results, outs):
        old.replace_all_uses_with(new)
    op.erase()


def plan_qkv(op: ir.Operation) -> QkvSpec:
    """The RoPE kernel for one ``torch.msd.rope_qkv``; an :class:`~msd.errors.OptionError` naming the
    operand that does not fit."""
    name = OP_ROPE_QKV
    if len(op.operands) != 7 or len(op.results) != 3:
        raise OptionError(f"{name}: expected 7 operands and 3 results, got {len(op.operands)} and {len(op.results)}")
    heads, kv_heads = (int(_constant(op, i, "int", what)) for i, what in ((3, "heads"), (4, "kv_heads")))
    scale, dtype = float(_constant(op, 5, "float", "scale")), str(_constant(op, 6, "str", "kv_dtype"))
    if dtype not in ("f32", "f16"):
        raise OptionError(f"{name}: kv_dtype {dtype!r} is not f32 or f16")
    x = vtensor_shape(op.operands[0].type)
    if x is None or x[1] != "f32" or len(x[0]) != 3 or x[0][0] is None or x[0][2] is None:
        raise OptionError(f"{name}: qkv must be f32 [B, S, N] with B and N static, got {op.operands[0].type}")
    (b, s, n), width = x[0], heads + 2 * kv_heads
    if heads <= 0 or kv_heads <= 0 or n % width or (n // width) % 4:
        raise OptionError(f"{name}: rows of {n} are not {heads} + 2·{kv_heads} heads of a multiple of 4")
    d = n // width
    for i, what in ((1, "cos"), (2, "sin")):
        if vtensor_shape(op.operands[i].type) != ([b, 1, s, d], "f32"):
            raise OptionError(f"{name}: {what} must be f32 [{b}, 1, S, {d}], got {op.operands[i].type}")
    spec = QkvSpec(b, heads, kv_heads, d, scale, f16=dtype == "f16")
    for r, key in zip(op.results, "qkv"):
        want = spec.types()[key].split("x")
        want_dims = [s if w == "?" else int(w) for w in want[:-1]]
        if vtensor_shape(r.type) != (want_dims, "f16" if want[-1] == "f16" else "f32"):
            raise OptionError(f"{name}: the result {key} must be {want}, got {r.type}")
    return spec


def _emit_qkv(op: ir.Operation, spec: QkvSpec) -> None:
    dyn = ir.ShapedType.get_dynamic_size()
    with ir.InsertionPoint(op), op.location:
        qkv = _to_builtin(op.operands[0])
        rows = _rows(qkv)
        m = tensor.DimOp(rows, _ir.index_const(0)).result
        s = _ir.size_of(qkv, 1)
        s = s if isinstance(s, ir.Value) else _ir.index_const(s)
        tables = []
        for v in op.operands[1:3]:
            t = _to_builtin(v)
            tables.append(tensor.CastOp(ir.RankedTensorType.get([spec.batch, 1, dyn, spec.head_dim], _ir.f32()),
                                        t).result)
        types = spec.types()
        results = [ir.RankedTensorType.parse(f"tensor<{types[k]}>") for k in "qkv"]
        d = _ir.flow_dispatch(spec.symbol, results, [m], [rows, *tables, m, s], [m, s, s], [s, s, s])
        outs = []
        for r, old in zip(d.results, op.results):
            dims, _ = vtensor_shape(old.type)
            t = ir.RankedTensorType.get(_dynamic(dims), _ir.tensor_type(r).element_type)
            v = r if t == r.type else tensor.CastOp(t, r).result
            outs.append(ir.Operation.create("torch_c.from_builtin_tensor", results=[old.type], operands=[v]).result)
    for old, new in zip(op.results, outs):
        old.replace_all_uses_with(new)
    op.erase()


def run(module: ir.Operation, options: RowKernelsOptions | None = None, /, **kwargs: object) -> Report:
    """Apply the pass to ``module`` (torch dialect) in place; one decision per row op."""
    if options is None:
        options = RowKernelsOptions(**kwargs)
    elif kwargs:
        raise TypeError("run() takes options or keyword arguments, not both")
    report = Report(NAME)
    specs: dict[str, RowSpec | QkvSpec] = {}
    for op in torch_operators(module, (*KINDS, OP_ROPE_QKV)):
        name, where = ir.StringAttr(op.attributes["name"]).value, str(op.location)
        if name == OP_ROPE_QKV:
            spec = plan_qkv(op)
            _emit_qkv(op, spec)
        else:
            spec = plan(op)
            _emit(op, spec)
        specs[spec.symbol] = spec
        report.decisions.append(Decision(name, where, True, spec.symbol))
    add_executables(module, {symbol: [spec.executable()] for symbol, spec in specs.items()})
    return report


__all__ = ["ACTIVATIONS", "KINDS", "NAME", "OP_ADD_RMS_NORM", "OP_GLU", "OP_RMS_NORM", "OP_ROPE_QKV", "SUMMARY",
           "SYMBOL_PREFIX", "QkvSpec", "RowKernelsOptions", "RowPrologue", "RowSpec", "chunk_of", "plan", "plan_qkv",
           "run"]
