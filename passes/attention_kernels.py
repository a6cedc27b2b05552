"""``--msd-attention-kernels``: attention in msd's own kernels — a decode step's over the token-major KV
cache, and a prompt's causal attention over itself.

A decode step attends one new query token (its ``G`` query heads per KV head stacked as rows) over the
``T`` cached keys and values plus its own.  Written in tensor ops (as the reference of
:func:`msd.compiler.ops.decode_attention` is), IREE materialises the step's concatenation
``[past; new]`` (a copy of the layer's whole cache, per call), transposes it to head-major, data-tiles
it for a matmul, and runs the softmax as separate dispatches: 17 dispatches and three passes over the
cache per layer and token.  This pass replaces the op with two dispatches of kernels msd writes.  The
first streams each head's keys and values once, straight from the cache in its stored ``[T, layers,
B, KV heads, D]`` layout, with an online softmax (running max, running sum, rescaled accumulator)
over blocks of :data:`BLOCK` keys, the new token's key and value taking the place of row ``T``; its
workgroups are (sequence, KV head, split), a split being a range of blocks (flash-decoding: a model
with few KV heads still keeps every thread streaming).  The second combines the splits' results.

A prompt's first step (prefill, no cache) attends causally over its own ``S`` tokens.  In tensor ops
that is an ``S × S`` score matrix per head, materialised, exponentiated element by element and
multiplied back (the largest non-matmul dispatch of a SmolLM2 prefill).  ``torch.msd.prefill_attention``
becomes one dispatch of a kernel with a workgroup per (sequence, KV head, query position): the same
block-of-16 online softmax over the keys up to its position, the last block masked.

The pass runs on the **torch** dialect, before IREE's input conversion (which cannot lower the ops):

1. **match** — ``torch.operator "torch.msd.decode_attention"`` (what the FX importer makes of the
   custom op), its ``_int8`` variant, the ``_ragged`` ones (a batch of sequences of their own lengths:
   an i64 ``[B]`` operand; sequence ``b``'s workgroups read its first ``lengths[b]`` rows and put its
   new token at that position) and ``torch.msd.prefill_attention``;
2. **plan** — :class:`AttentionSpec` from the operand types (f32, static heads, head dim a multiple
   of :data:`BLOCK`, layers and batch; dynamic ``T``) and the constant layer index; anything else is
   an error naming the operand, since IREE could not lower the op either;
3. **emit** — the operands as builtin tensors (``torch_c.to_builtin_tensor``), the two
   ``flow.dispatch`` ops of the kernels' ``stream.executable``s (added once per shape), the result
   back as a torch tensor.

A sliding-window layer (Gemma 3's local layers: the op's trailing ``window`` operand, a constant) gets
kernels of its own (``_w<window>`` in the symbol): a query at position ``p`` starts at the block holding
key ``max(0, p − window + 1)``, and the rows of that block before it score −inf; the splits of a decode
step divide the window's blocks, not the whole cache.

The kernels are plain ``vector``/``scf``/``math`` on f32 (no ISA intrinsics), so they serve every CPU
target IREE's ``llvm-cpu`` backend compiles for.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from iree.compiler import ir

from msd.errors import OptionError

from . import _ir
from ._torch import add_executables, f32_bits, torch_operators, vtensor_shape
from .pass_options import PassOptions
from .report import Decision, Report
from .row_kernels import OP_ROPE_QKV, plan_qkv

NAME = "msd-attention-kernels"
SUMMARY = "decode and prefill attention in msd's own kernels (torch dialect, before IREE's input phase)"
OP_NAME = "torch.msd.decode_attention"  # the FX importer's name for torch.ops.msd.decode_attention
OP_NAME_INT8 = "torch.msd.decode_attention_int8"  # ... and for torch.ops.msd.decode_attention_int8
OP_NAME_RAGGED = "torch.msd.decode_attention_ragged"  # ... torch.ops.msd.decode_attention_ragged
OP_NAME_RAGGED_INT8 = "torch.msd.decode_attention_ragged_int8"  # ... torch.ops.msd.decode_attention_ragged_int8
PREFILL_OP_NAME = "torch.msd.prefill_attention"  # ... and for torch.ops.msd.prefill_attention
SYMBOL_PREFIX = "msd_decode_attention_"
BLOCK = 16  # keys scored per online-softmax update
MIN_WORKGROUPS = 8  # (sequence, KV head, split) workgroups at least: SmolLM2's 3 KV heads on 2 threads


@dataclass(frozen=True)
class AttentionKernelsOptions(PassOptions):
    pass_name: ClassVar[str] = NAME


@dataclass(frozen=True)
class AttentionSpec:
    """One decode attention's static shape: ``batch`` sequences, ``kv_heads`` KV heads of ``group``
    query rows each, head dim ``head_dim``, a cache of ``layers`` layers."""

    batch: int
    kv_heads: int
    group: int
    head_dim: int
    layers: int
    int8: bool = False  # the cache holds int8 codes and one f32 scale per (token, layer, sequence, head)
    ragged: bool = False  # an i64 operand [B]: each sequence's cached tokens (the rows it reads), <= T
    window: int = 0  # > 0: a sliding-window layer's, only the last `window` keys (the new one included)
    f16: bool = False  # the cache and the new entries are f16 (read as f32)
    # rope > 0: the kernel takes the token's stacked q|k|v projection row and its RoPE tables instead of
    # q, k_new and v_new (torch.ops.msd.rope_qkv's work: q rotated and multiplied by `rope`, k rotated),
    # and writes the new k and v entries (f32 or f16) as two more results
    rope: float = 0.0

    @property
    def splits(self) -> int:
        """Ranges of keys per (sequence, KV head) attended by workgroups of their own (flash-decoding):
        enough workgroups to keep every thread streaming when there are few KV heads."""
        return max(1, -(-MIN_WORKGROUPS // (self.batch * self.kv_heads)))

    @property
    def symbol(self) -> str:
        return (f"{SYMBOL_PREFIX}b{self.batch}_h{self.kv_heads}_g{self.group}_d{self.head_dim}"
                f"_l{self.layers}_s{self.splits}{'_i8' if self.int8 else ''}{'_r' if self.ragged else ''}"
                f"{f'_w{self.window}' if self.window else ''}{'_f16' if self.f16 else ''}"
                f"{f'_rope{f32_bits(self.rope):08x}' if self.rope else ''}")

    @property
    def combine_symbol(self) -> str:
        return f"{self.symbol}_combine"

    def types(self) -> dict[str, str]:
        """Element layout of each operand of the attention kernel (``?``: the cached tokens ``T``), then of
        its results: per split, the accumulated ``Σ p·v`` and (running max, ``Σ p``), and with ``rope`` the
        new token's k and v entries."""
        b, h, g, d, n, s = self.batch, self.kv_heads, self.group, self.head_dim, self.layers, self.splits
        if self.int8:
            cache, scales, new = f"?x{n}x{b}x{h}x{d}xi8", f"?x{n}x{b}x{h}xf32", f"{b}x{h}x1x{d}xi8"
            ins = {"kc": cache, "ks": scales, "vc": cache, "vs": scales, "kn": new, "kns": f"{b}x{h}x1xf32",
                   "vn": new, "vns": f"{b}x{h}x1xf32"}
        else:
            e = "f16" if self.f16 else "f32"
            cache, new = f"?x{n}x{b}x{h}x{d}x{e}", f"{b}x{h}x1x{d}x{e}"
            ins = {"kc": cache, "vc": cache, "kn": new, "vn": new}
        if self.ragged:
            ins["len"] = f"{b}xi64"
        out = {"pa": f"{b}x{h}x{s}x{g}x{d}xf32", "pm": f"{b}x{h}x{s}x{g}x2xf32"}
        if self.rope:
            new = ins.pop("kn")
            del ins["vn"]
            qkv = {"qkv": f"{b}x{(h * g + 2 * h) * d}xf32", "cos": f"{b}x{d}xf32", "sin": f"{b}x{d}xf32"}
            return {**qkv, **ins, **out, "kno": new, "vno": new}
        return {"q": f"{b}x{h}x{g}x{d}xf32", **ins, **out}

    def executables(self) -> list[str]:
        """The ``stream.executable`` texts: the attention over each split, then their combination."""
        return [_Writer(self).executable(), _Writer(self).combine()]


@dataclass(frozen=True)
class CombineSpec:
    """The combination of a decode attention's splits (the second of its two dispatches) as the prologue
    of the activation quantizer that reads it (:mod:`.decompose_activations.quantize_kernel`): row ``b``
    of the quantized activation is sequence ``b``'s output ``[kv_heads · group · head_dim]``, combined
    chunk by chunk from the splits' results as :meth:`_Writer.combine` does (the same operations)."""

    batch: int
    kv_heads: int
    group: int
    head_dim: int
    splits: int

    @classmethod
    def from_symbol(cls, symbol: str) -> CombineSpec | None:
        """The combination whose kernel is named ``symbol`` (an attention's ``combine_symbol``); else None."""
        m = re.fullmatch(rf"{SYMBOL_PREFIX}b(\d+)_h(\d+)_g(\d+)_d(\d+)_l\d+_s(\d+)\w*_combine", symbol)
        return cls(*(int(g) for g in m.groups())) if m else None

    @property
    def k(self) -> int:
        return self.kv_heads * self.group * self.head_dim

    @property
    def tag(self) -> str:
        return f"combine_b{self.batch}_h{self.kv_heads}_g{self.group}_d{self.head_dim}_s{self.splits}"

    def inputs(self) -> dict[str, str]:
        b, h, g, d, s = self.batch, self.kv_heads, self.group, self.head_dim, self.splits
        return {"oacc": f"{b}x{h}x{s}x{g}x{d}xf32", "ostat": f"{b}x{h}x{s}x{g}x2xf32"}

    def outputs(self) -> dict[str, str]:
        return {}

    def writer(self, emit: Callable[[str], None]) -> CombinePrologue:
        return CombinePrologue(self, emit)


class CombinePrologue:
    """:class:`CombineSpec`'s text in a kernel with the memrefs ``%oacc``, ``%ostat`` (the attention's
    ``pa``, ``pm``), the row (sequence)
    ``%r`` and ``%c0``, ``%c1``: a chunk of the output row, ``Σ_s w_s·acc_s / Σ_s w_s·l_s``."""

    def __init__(self, spec: CombineSpec, emit: Callable[[str], None]) -> None:
        self.s, self.e, self.n = spec, emit, 0

    def setup(self, ind: str, c: int) -> None:
        if self.s.head_dim % c:
            raise ValueError(f"chunks of {c} straddle heads of {self.s.head_dim}")

    def load(self, ind: str, k: str, c: int) -> str:
        s, e, t = self.s, self.e, self.s.inputs()
        self.n += 1
        p, v = f"%q{self.n}_", f"vector<{c}xf32>"
        e(f"{ind}{p}cd = arith.constant {s.head_dim} : index")
        e(f"{ind}{p}cg = arith.constant {s.group} : index")
        e(f"{ind}{p}row = arith.divui {k}, {p}cd : index")
        e(f"{ind}{p}d = arith.remui {k}, {p}cd : index")
        e(f"{ind}{p}h = arith.divui {p}row, {p}cg : index")
        e(f"{ind}{p}g = arith.remui {p}row, {p}cg : index")
        top = ""
        for j in range(s.splits):
            e(f"{ind}{p}j{j} = arith.constant {j} : index")
            e(f"{ind}{p}m{j} = memref.load %ostat[%r, {p}h, {p}j{j}, {p}g, %c0] : memref<{t['ostat']}>")
            e(f"{ind}{p}l{j} = memref.load %ostat[%r, {p}h, {p}j{j}, {p}g, %c1] : memref<{t['ostat']}>")
            if top:
                e(f"{ind}{p}mx{j} = arith.maximumf {top}, {p}m{j} : f32")
                top = f"{p}mx{j}"
            else:
                top = f"{p}m{j}"
        den, num = "", ""
        for j in range(s.splits):
            e(f"{ind}{p}dm{j} = arith.subf {p}m{j}, {top} : f32")
            e(f"{ind}{p}w{j} = math.exp {p}dm{j} : f32")
            e(f"{ind}{p}wl{j} = arith.mulf {p}w{j}, {p}l{j} : f32")
            if den:
                e(f"{ind}{p}den{j} = arith.addf {den}, {p}wl{j} : f32")
            else:
                e(f"{ind}{p}z = arith.constant 0.0 : f32")
                e(f"{ind}{p}den{j} = arith.addf {p}z, {p}wl{j} : f32")
            den = f"{p}den{j}"
            e(f"{ind}{p}acc{j} = vector.transfer_read %oacc[%r, {p}h, {p}j{j}, {p}g, {p}d], %f0 {{in_bounds = [true]}} "
              f": memref<{t['oacc']}>, {v}")
            e(f"{ind}{p}wb{j} = vector.broadcast {p}w{j} : f32 to {v}")
            if num:
                e(f"{ind}{p}num{j} = vector.fma {p}wb{j}, {p}acc{j}, {num} : {v}")
            else:
                e(f"{ind}{p}num{j} = arith.mulf {p}wb{j}, {p}acc{j} : {v}")
            num = f"{p}num{j}"
        e(f"{ind}{p}db = vector.broadcast {den} : f32 to {v}")
        e(f"{ind}{p}out = arith.divf {num}, {p}db : {v}")
        return f"{p}out"


@dataclass(frozen=True)
class PrefillSpec:
    """One prefill attention's static shape (``S``, the prompt's tokens, is dynamic)."""

    batch: int
    kv_heads: int
    group: int
    head_dim: int
    int8: bool = False  # (the prefill kernel reads f32 keys and values)
    f16: bool = False
    splits: int = 1
    window: int = 0  # > 0: query s attends to keys s - window + 1 ... s only

    @property
    def symbol(self) -> str:
        return (f"msd_prefill_attention_b{self.batch}_h{self.kv_heads}_g{self.group}_d{self.head_dim}"
                f"{f'_w{self.window}' if self.window else ''}")

    def types(self) -> dict[str, str]:
        b, h, g, d = self.batch, self.kv_heads, self.group, self.head_dim
        return {"q": f"{b}x{h}x{g}x?x{d}xf32", "k": f"{b}x{h}x?x{d}xf32", "v": f"{b}x{h}x?x{d}xf32",
                "o": f"{b}x{h}x{g}x?x{d}xf32"}

    def executables(self) -> list[str]:
        return [_Writer(self).prefill()]


class _Writer:
    """The kernel's text, line by line (SSA names made unique per block of keys)."""

    def __init__(self, spec: AttentionSpec | PrefillSpec) -> None:
        self.s = spec
        self.lines: list[str] = []
        self.vd = f"vector<{spec.head_dim}xf32>"
        self.vk = f"vector<{BLOCK}xf32>"
        self.chunks = spec.head_dim // BLOCK
        self.elem_bytes = 1 if spec.int8 else 2 if spec.f16 else 4  # of a cached K/V element
        self.new: dict[str, str] = {}  # (rope) the new token's key and value vectors

    def chunk(self, v: str, c: int) -> str:
        """The op taking lanes ``[c·BLOCK, (c+1)·BLOCK)`` of the head-dim vector ``v``."""
        return (f"vector.extract_strided_slice {v} offsets = [{c * BLOCK}], sizes = [{BLOCK}], strides = [1] "
                f": {self.vd} to {self.vk}")

    def emit(self, line: str) -> None:
        self.lines.append(line)

    def executable(self) -> str:
        s, e, vd = self.s, self.emit, self.vd
        types = s.types()
        mem = {k: f"memref<{t}>" for k, t in types.items()}
        self.header(s.symbol, s.batch * s.kv_heads * s.splits, types, "%T: index, %layer: index")
        e("      %ninf = arith.constant 0xFF800000 : f32")
        e(f"      %zd = arith.constant dense<0.0> : {vd}")
        e("      %wid = stream.dispatch.workgroup.id[0] : index")
        e(f"      %bh = arith.divui %wid, %c{s.splits} : index")
        e(f"      %sp = arith.remui %wid, %c{s.splits} : index")
        e(f"      %b = arith.divui %bh, %c{s.kv_heads} : index")
        e(f"      %h = arith.remui %bh, %c{s.kv_heads} : index")
        tv = "%T"  # the keys this sequence has cached
        if s.ragged:  # its own length, never more than the rows the cache view holds
            e(f"      %lenv = memref.load %len[%b] : {mem['len']}")
            e("      %leni = arith.index_cast %lenv : i64 to index")
            e("      %Tb = arith.minui %leni, %T : index")
            tv = "%Tb"
        self.window_start(tv)  # %lo: the first key attended to
        if s.rope:
            self.rope_rows(mem)
        for g in range(s.group):
            if not s.rope:
                e(f"      %q{g} = vector.transfer_read %q[%b, %h, %c{g}, %c0], %f0 {{in_bounds = [true]}} : "
                  f"{mem['q']}, {vd}")
            for c in range(self.chunks):
                e(f"      %q{g}c{c} = {self.chunk(f'%q{g}', c)}")
        # blocks of keys: nblk full ones (cached keys only), then the last, which holds key T (the new
        # token's); split sp takes blocks [first, first + per) of those from the one holding %lo (block 0
        # without a window)
        e(f"      %nblk = arith.divui {tv}, %c{BLOCK} : index")
        e(f"      %tmain = arith.muli %nblk, %c{BLOCK} : index")
        e("      %nall = arith.addi %nblk, %c1 : index")
        e(f"      %blo = arith.divui %lo, %c{BLOCK} : index")
        e("      %nspan = arith.subi %nall, %blo : index")
        e(f"      %per0 = arith.addi %nspan, %c{s.splits - 1} : index")
        e(f"      %per = arith.divui %per0, %c{s.splits} : index")
        e("      %first0 = arith.muli %sp, %per : index")
        e("      %first = arith.addi %blo, %first0 : index")
        e("      %end0 = arith.addi %first, %per : index")
        e("      %end = arith.minui %end0, %nall : index")
        e("      %fullend = arith.minui %end, %nblk : index")
        e(f"      %tfrom = arith.muli %first, %c{BLOCK} : index")
        e(f"      %tto = arith.muli %fullend, %c{BLOCK} : index")
        e("      %tlast = arith.subi %T, %c1 : index")
        state = [*(f"%m{g}" for g in range(s.group)), *(f"%l{g}" for g in range(s.group)),
                 *(f"%a{g}" for g in range(s.group))]
        inits = ["%ninf"] * s.group + ["%f0"] * s.group + ["%zd"] * s.group
        state_types = ["f32"] * (2 * s.group) + [vd] * s.group
        e(f"      %st:{len(state)} = scf.for %t0 = %tfrom to %tto step %c{BLOCK} iter_args("
          + ", ".join(f"{n} = {i}" for n, i in zip(state, inits)) + f") -> ({', '.join(state_types)}) {{")

        def cached(x: str, r: int, ind: str) -> str:  # row r of the block, from the cache
            e(f"{ind}%{x}r{r} = arith.addi %t0, %c{r} : index")
            # the same row of the next block, prefetched: the rows lie a whole token's entry apart, a stride
            # the hardware prefetcher does not follow (measured in a 2-layer SmolLM2 decode at T=512: 98 -> 78
            # us per layer)
            e(f"{ind}%{x}f{r}u = arith.addi %{x}r{r}, %c{BLOCK} : index")
            e(f"{ind}%{x}f{r} = arith.minui %{x}f{r}u, %tlast : index")
            for c in range(0, s.head_dim, 64 // self.elem_bytes):  # a 64-byte line each
                e(f"{ind}memref.prefetch %{x}c[%{x}f{r}, %layer, %b, %h, %c{c}], read, locality<3>, data : "
                  f"{mem[x + 'c']}")
            if s.int8:
                e(f"{ind}memref.prefetch %{x}s[%{x}f{r}, %layer, %b, %h], read, locality<3>, data : "
                  f"{mem[x + 's']}")
            return self.row(x, f"%{x}{r}", f"%{x}r{r}", ind)

        new = self.update("M", state, self.window_rows("%t0", "        "), "        ", cached)
        e(f"        scf.yield {', '.join(new)} : {', '.join(state_types)}")
        e("      }")
        after = [f"%st#{i}" for i in range(len(state))]
        # the last block, in the split that holds it: rows tmain + r; a cached key while < T, the new
        # token's at T, none after
        e("      %before = arith.cmpi ult, %nblk, %end : index")
        e("      %after = arith.cmpi ule, %first, %nblk : index")
        e("      %haslast = arith.andi %before, %after : i1")
        e(f"      %fin:{len(state)} = scf.if %haslast -> ({', '.join(state_types)}) {{")
        for r in range(BLOCK):
            e(f"        %u{r} = arith.addi %tmain, %c{r} : index")
            e(f"        %in{r} = arith.cmpi ult, %u{r}, {tv} : index")
            e(f"        %ok{r} = arith.cmpi ule, %u{r}, {tv} : index")
            if s.window:
                e(f"        %okl{r} = arith.cmpi uge, %u{r}, %lo : index")
                e(f"        %okw{r} = arith.andi %ok{r}, %okl{r} : i1")

        def last(x: str, r: int, ind: str) -> str:  # row r of the last block: cached, or the new token's
            e(f"{ind}%{x}u{r} = scf.if %in{r} -> ({vd}) {{")
            e(f"{ind}  scf.yield {self.row(x, f'%{x}uc{r}', f'%u{r}', ind + '  ')} : {vd}")
            e(f"{ind}}} else {{")
            e(f"{ind}  scf.yield {self.row(x, f'%{x}un{r}', None, ind + '  ')} : {vd}")
            e(f"{ind}}}")
            return f"%{x}u{r}"

        ok = "%okw" if s.window else "%ok"
        final = self.update("L", after, [f"{ok}{r}" for r in range(BLOCK)], "        ", last)
        e(f"        scf.yield {', '.join(final)} : {', '.join(state_types)}")
        e("      } else {")
        e(f"        scf.yield {', '.join(after)} : {', '.join(state_types)}")
        e("      }")
        for g in range(s.group):
            m, l_, a = (f"%fin#{i * s.group + g}" for i in range(3))
            e(f"      memref.store {m}, %pm[%b, %h, %sp, %c{g}, %c0] : {mem['pm']}")
            e(f"      memref.store {l_}, %pm[%b, %h, %sp, %c{g}, %c1] : {mem['pm']}")
            e(f"      vector.transfer_write {a}, %pa[%b, %h, %sp, %c{g}, %c0] {{in_bounds = [true]}} : {vd}, "
              f"{mem['pa']}")
        self.footer()
        return "\n".join(self.lines)

    def rope_rows(self, mem: dict[str, str]) -> None:
        """(``rope``) ``%q<g>``, ``%knew``, ``%vnew`` from the token's q|k|v row: each head rotated by the
        RoPE tables (``x·cos + swap(x)·sin``, ``swap`` exchanging each pair's lanes), q multiplied by the
        scale, k and v rounded to f16 for an f16 cache (attention reads what is stored); the first split's
        workgroup writes the new k and v entries."""
        s, e, vd = self.s, self.emit, self.vd
        d, g_, hq = s.head_dim, s.group, s.kv_heads * s.group
        swap = ", ".join(str(i ^ 1) for i in range(d))
        e(f"      %rd = arith.constant {d} : index")
        e(f"      %rg = arith.constant {g_} : index")
        e(f"      %rk0 = arith.constant {hq} : index")
        e(f"      %rv0 = arith.constant {hq + s.kv_heads} : index")
        e(f"      %rscale = arith.constant dense<0x{f32_bits(s.rope):08X}> : {vd}")
        for t in ("cos", "sin"):
            e(f"      %r{t} = vector.transfer_read %{t}[%b, %c0], %f0 {{in_bounds = [true]}} : {mem[t]}, {vd}")

        def head(name: str, index: str, rotate: bool) -> str:
            e(f"      %{name}col = arith.muli {index}, %rd : index")
            e(f"      %{name}x = vector.transfer_read %qkv[%b, %{name}col], %f0 {{in_bounds = [true]}} : "
              f"{mem['qkv']}, {vd}")
            if not rotate:
                return f"%{name}x"
            e(f"      %{name}sw = vector.shuffle %{name}x, %{name}x [{swap}] : {vd}, {vd}")
            e(f"      %{name}xc = arith.mulf %{name}x, %rcos : {vd}")
            e(f"      %{name}ss = arith.mulf %{name}sw, %rsin : {vd}")
            e(f"      %{name}r = arith.addf %{name}xc, %{name}ss : {vd}")
            return f"%{name}r"

        for g in range(g_):
            e(f"      %qh{g}a = arith.muli %h, %rg : index")
            e(f"      %qh{g} = arith.addi %qh{g}a, %c{g} : index")
            e(f"      %q{g} = arith.mulf {head(f'q{g}', f'%qh{g}', True)}, %rscale : {vd}")
        e("      %kh = arith.addi %rk0, %h : index")
        e("      %vh = arith.addi %rv0, %h : index")
        stored = {}
        for x, rotate in (("k", True), ("v", False)):
            y = head(f"n{x}", f"%{x}h", rotate)
            if s.f16:
                vh = f"vector<{d}xf16>"
                e(f"      %{x}new16 = arith.truncf {y} : {vd} to {vh}")
                e(f"      %{x}new = arith.extf %{x}new16 : {vh} to {vd}")
                stored[x], self.new[x] = (f"%{x}new16", vh), f"%{x}new"
            else:
                stored[x], self.new[x] = (y, vd), y
        e("      %sp0 = arith.cmpi eq, %sp, %c0 : index")
        e("      scf.if %sp0 {")
        for x in ("k", "v"):
            e(f"        vector.transfer_write {stored[x][0]}, %{x}no[%b, %h, %c0, %c0] {{in_bounds = [true]}} : "
              f"{stored[x][1]}, {mem[x + 'no']}")
        e("      }")

    def window_start(self, last: str) -> None:
        """``%lo``: the first key a query at position ``last`` attends to, ``max(0, last + 1 − window)``
        (0 without a window)."""
        w, e = self.s.window, self.emit
        if not w:
            e("      %lo = arith.constant 0 : index")
            return
        e(f"      %cwin = arith.constant {w} : index")
        e(f"      %lo1 = arith.addi {last}, %c1 : index")
        e("      %lobig = arith.cmpi ugt, %lo1, %cwin : index")
        e("      %lod = arith.subi %lo1, %cwin : index")
        e("      %lo = arith.select %lobig, %lod, %c0 : index")

    def window_rows(self, t0: str, ind: str) -> list[str] | None:
        """Per row of the block starting at ``t0``: whether it is at or after ``%lo`` (None without a
        window: every row of a full block is a key)."""
        if not self.s.window:
            return None
        for r in range(BLOCK):
            self.emit(f"{ind}%wr{r} = arith.addi {t0}, %c{r} : index")
            self.emit(f"{ind}%wv{r} = arith.cmpi uge, %wr{r}, %lo : index")
        return [f"%wv{r}" for r in range(BLOCK)]

    def row(self, x: str, name: str, t: str | None, ind: str) -> str:
        """Emit the load of a key (``x`` = "k") or value ("v") row as f32 ``{D}`` named ``name``: cache
        row ``t`` of this layer and head, or (``t`` None) the new token's; int8 codes are converted and
        multiplied by their scale."""
        s, e, vd = self.s, self.emit, self.vd
        if t is None and s.rope:  # computed once from the q|k|v row (rope_rows)
            return self.new[x]
        src, at = (f"%{x}c", f"[{t}, %layer, %b, %h, %c0]") if t else (f"%{x}n", "[%b, %h, %c0, %c0]")
        mem = f"memref<{s.types()[src[1:]]}>"
        if s.f16:
            vh = f"vector<{s.head_dim}xf16>"
            e(f"{ind}{name}h = vector.transfer_read {src}{at}, %h0 {{in_bounds = [true]}} : {mem}, {vh}")
            e(f"{ind}{name} = arith.extf {name}h : {vh} to {vd}")
            return name
        if not s.int8:
            e(f"{ind}{name} = vector.transfer_read {src}{at}, %f0 {{in_bounds = [true]}} : {mem}, {vd}")
            return name
        vb = f"vector<{s.head_dim}xi8>"
        e(f"{ind}{name}q = vector.transfer_read {src}{at}, %i0 {{in_bounds = [true]}} : {mem}, {vb}")
        e(f"{ind}{name}f = arith.sitofp {name}q : {vb} to {vd}")
        ssrc, sat = (f"%{x}s", f"[{t}, %layer, %b, %h]") if t else (f"%{x}ns", "[%b, %h, %c0]")
        e(f"{ind}{name}s = memref.load {ssrc}{sat} : memref<{s.types()[ssrc[1:]]}>")
        e(f"{ind}{name}sb = vector.broadcast {name}s : f32 to {vd}")
        e(f"{ind}{name} = arith.mulf {name}f, {name}sb : {vd}")
        return name

    def header(self, symbol: str, workgroups: int, types: dict[str, str], scalars: str,
               per_token: bool = False) -> None:
        """An executable's export (``workgroups`` in x, times the workload ``%t`` when ``per_token``),
        its function's bindings as memrefs named like ``types``' keys (a ``?`` dim sized ``%T``), the
        common constants."""
        s, e = self.s, self.emit
        e(f"stream.executable private @{symbol} {{")
        e(f"  stream.executable.export public @{symbol} workgroups(%t: index) -> (index, index, index) {{")
        if per_token:
            e(f"    %w = arith.constant {workgroups} : index")
            e("    %x = arith.muli %w, %t : index")
        else:
            e(f"    %x = arith.constant {workgroups} : index")
        e("    %one = arith.constant 1 : index")
        e("    stream.return %x, %one, %one : index, index, index")
        e("  }")
        e("  builtin.module {")
        args = ", ".join(f"%{k}_b: !stream.binding" for k in types)
        e(f"    func.func @{symbol}({args}{', ' if scalars else ''}{scalars}) {{")
        for v in sorted({0, 1, BLOCK, s.kv_heads, s.splits, *range(max(BLOCK, s.group)),
                         *range(0, s.head_dim, 16)}):
            e(f"      %c{v} = arith.constant {v} : index")
        for k, t in types.items():
            dyn = "{%T}" if "?" in t else ""
            e(f"      %{k} = stream.binding.subspan %{k}_b[%c0] : !stream.binding -> memref<{t}>{dyn}")
        e("      %f0 = arith.constant 0.0 : f32")
        e("      %h0 = arith.constant 0.0 : f16")
        e("      %i0 = arith.constant 0 : i8")

    def footer(self) -> None:
        for line in ("      return", "    }", "  }", "}"):
            self.emit(line)

    def combine(self) -> str:
        """The splits' results combined per (sequence, KV head): ``Σ_s w_s·acc_s / Σ_s w_s·l_s`` with
        ``w_s = exp(m_s − max_s m_s)`` (an empty split has ``m = −inf``: weight 0)."""
        s, e, vd = self.s, self.emit, self.vd
        att = s.types()
        types = {"pa": att["pa"], "pm": att["pm"], "o": f"{s.batch}x{s.kv_heads}x{s.group}x{s.head_dim}xf32"}
        self.header(s.combine_symbol, s.batch * s.kv_heads, types, "")
        e("      %wid = stream.dispatch.workgroup.id[0] : index")
        e(f"      %b = arith.divui %wid, %c{s.kv_heads} : index")
        e(f"      %h = arith.remui %wid, %c{s.kv_heads} : index")
        for g in range(s.group):
            ms = []
            for j in range(s.splits):
                e(f"      %m{g}_{j} = memref.load %pm[%b, %h, %c{j}, %c{g}, %c0] : memref<{types['pm']}>")
                e(f"      %l{g}_{j} = memref.load %pm[%b, %h, %c{j}, %c{g}, %c1] : memref<{types['pm']}>")
                ms.append(f"%m{g}_{j}")
            top = ms[0]
            for j in range(1, s.splits):
                e(f"      %mx{g}_{j} = arith.maximumf {top}, {ms[j]} : f32")
                top = f"%mx{g}_{j}"
            den, num = "%f0", ""
            for j in range(s.splits):
                e(f"      %dm{g}_{j} = arith.subf %m{g}_{j}, {top} : f32")
                e(f"      %w{g}_{j} = math.exp %dm{g}_{j} : f32")
                e(f"      %wl{g}_{j} = arith.mulf %w{g}_{j}, %l{g}_{j} : f32")
                e(f"      %den{g}_{j} = arith.addf {den}, %wl{g}_{j} : f32")
                den = f"%den{g}_{j}"
                e(f"      %acc{g}_{j} = vector.transfer_read %pa[%b, %h, %c{j}, %c{g}, %c0], %f0 "
                  f"{{in_bounds = [true]}} : memref<{types['pa']}>, {vd}")
                e(f"      %wb{g}_{j} = vector.broadcast %w{g}_{j} : f32 to {vd}")
                if num:
                    e(f"      %num{g}_{j} = vector.fma %wb{g}_{j}, %acc{g}_{j}, {num} : {vd}")
                else:
                    e(f"      %num{g}_{j} = arith.mulf %wb{g}_{j}, %acc{g}_{j} : {vd}")
                num = f"%num{g}_{j}"
            e(f"      %db{g} = vector.broadcast {den} : f32 to {vd}")
            e(f"      %out{g} = arith.divf {num}, %db{g} : {vd}")
            e(f"      vector.transfer_write %out{g}, %o[%b, %h, %c{g}, %c0] {{in_bounds = [true]}} : {vd}, "
              f"memref<{types['o']}>")
        self.footer()
        return "\n".join(self.lines)

    def prefill(self) -> str:
        """The prefill kernel: workgroup (b, h, s) attends query position ``s``'s ``group`` rows to keys
        ``0 … s`` in blocks of :data:`BLOCK`, the block holding ``s`` masked past it."""
        s, e, vd = self.s, self.emit, self.vd
        types = s.types()
        mem = {k: f"memref<{t}>" for k, t in types.items()}
        self.header(s.symbol, s.batch * s.kv_heads, types, "%T: index", per_token=True)
        e("      %ninf = arith.constant 0xFF800000 : f32")
        e(f"      %zd = arith.constant dense<0.0> : {vd}")
        e("      %wid = stream.dispatch.workgroup.id[0] : index")
        e("      %pos = arith.remui %wid, %T : index")
        e("      %bh = arith.divui %wid, %T : index")
        e(f"      %b = arith.divui %bh, %c{s.kv_heads} : index")
        e(f"      %h = arith.remui %bh, %c{s.kv_heads} : index")
        for g in range(s.group):
            e(f"      %q{g} = vector.transfer_read %q[%b, %h, %c{g}, %pos, %c0], %f0 {{in_bounds = [true]}} : "
              f"{mem['q']}, {vd}")
            for c in range(self.chunks):
                e(f"      %q{g}c{c} = {self.chunk(f'%q{g}', c)}")
        e("      %n = arith.addi %pos, %c1 : index")
        e(f"      %nblk = arith.divui %n, %c{BLOCK} : index")
        e(f"      %tmain = arith.muli %nblk, %c{BLOCK} : index")
        self.window_start("%pos")
        e(f"      %blo = arith.divui %lo, %c{BLOCK} : index")
        e(f"      %tstart = arith.muli %blo, %c{BLOCK} : index")
        state = [*(f"%m{g}" for g in range(s.group)), *(f"%l{g}" for g in range(s.group)),
                 *(f"%a{g}" for g in range(s.group))]
        inits = ["%ninf"] * s.group + ["%f0"] * s.group + ["%zd"] * s.group
        state_types = ["f32"] * (2 * s.group) + [vd] * s.group
        e(f"      %st:{len(state)} = scf.for %t0 = %tstart to %tmain step %c{BLOCK} iter_args("
          + ", ".join(f"{n} = {i}" for n, i in zip(state, inits)) + f") -> ({', '.join(state_types)}) {{")

        def key(x: str, r: int, ind: str) -> str:  # row r of a full block
            e(f"{ind}%{x}j{r} = arith.addi %t0, %c{r} : index")
            e(f"{ind}%{x}{r} = vector.transfer_read %{x}[%b, %h, %{x}j{r}, %c0], %f0 {{in_bounds = [true]}} : "
              f"{mem[x]}, {vd}")
            return f"%{x}{r}"

        new = self.update("M", state, self.window_rows("%t0", "        "), "        ", key)
        e(f"        scf.yield {', '.join(new)} : {', '.join(state_types)}")
        e("      }")
        after = [f"%st#{i}" for i in range(len(state))]
        e("      %haslast = arith.cmpi ult, %tmain, %n : index")
        e(f"      %fin:{len(state)} = scf.if %haslast -> ({', '.join(state_types)}) {{")
        for r in range(BLOCK):  # keys tmain + r, those after pos masked (and read at pos instead)
            e(f"        %u{r} = arith.addi %tmain, %c{r} : index")
            e(f"        %ok{r} = arith.cmpi ule, %u{r}, %pos : index")
            e(f"        %uc{r} = arith.minui %u{r}, %pos : index")
            if s.window:
                e(f"        %okl{r} = arith.cmpi uge, %u{r}, %lo : index")
                e(f"        %okw{r} = arith.andi %ok{r}, %okl{r} : i1")

        def last(x: str, r: int, ind: str) -> str:
            e(f"{ind}%{x}u{r} = vector.transfer_read %{x}[%b, %h, %uc{r}, %c0], %f0 {{in_bounds = [true]}} : "
              f"{mem[x]}, {vd}")
            return f"%{x}u{r}"

        ok = "%okw" if s.window else "%ok"
        final = self.update("L", after, [f"{ok}{r}" for r in range(BLOCK)], "        ", last)
        e(f"        scf.yield {', '.join(final)} : {', '.join(state_types)}")
        e("      } else {")
        e(f"        scf.yield {', '.join(after)} : {', '.join(state_types)}")
        e("      }")
        for g in range(s.group):
            l_, a = f"%fin#{s.group + g}", f"%fin#{2 * s.group + g}"
            e(f"      %lb{g} = vector.broadcast {l_} : f32 to {vd}")
            e(f"      %out{g} = arith.divf {a}, %lb{g} : {vd}")
            e(f"      vector.transfer_write %out{g}, %o[%b, %h, %c{g}, %pos, %c0] {{in_bounds = [true]}} : {vd}, "
              f"{mem['o']}")
        self.footer()
        return "\n".join(self.lines)

    def update(self, tag: str, state: list[str], valid: list[str] | None, ind: str,
               row: Callable[[str, int, str], str]) -> list[str]:
        """One online-softmax step over a block of :data:`BLOCK` keys and values (``row(x, r, ind)``
        emits the load of row ``r`` of ``x`` = "k" / "v" and names it; ``valid``: per row, whether it
        is a key at all; an invalid row scores −inf).  Each row is loaded once, where all ``group``
        query rows use it.  Returns the new state's names: maxima, sums, accumulators."""
        s, e, vd, vk = self.s, self.emit, self.vd, self.vk
        groups = range(s.group)
        p = [f"%{tag}{g}_" for g in groups]
        partial: list[list[str]] = [[] for _ in groups]  # per row: BLOCK lanes summing to its score
        for r in range(BLOCK):
            k = row("k", r, ind)
            for c in range(self.chunks):
                e(f"{ind}{p[0]}k{r}c{c} = {self.chunk(k, c)}")
            for g in groups:
                acc = ""
                for c in range(self.chunks):
                    nxt = f"{p[g]}y{r}_{c}"
                    if not acc:
                        e(f"{ind}{nxt} = arith.mulf %q{g}c{c}, {p[0]}k{r}c{c} : {vk}")
                    else:
                        e(f"{ind}{nxt} = vector.fma %q{g}c{c}, {p[0]}k{r}c{c}, {acc} : {vk}")
                    acc = nxt
                partial[g].append(acc)
        sv: list[str] = []  # per query row: the block's scores
        for g in groups:  # transpose-and-add: lane r of the block's score vector sums row r's lanes
            level, n = partial[g], 0
            while len(level) > 1:
                nxt_level = []
                for j in range(0, len(level), 2):
                    a_, b_ = level[j], level[j + 1]
                    t = f"{p[g]}h{n}"
                    n += 1
                    e(f"{ind}{t}e = vector.shuffle {a_}, {b_} {list(range(0, 2 * BLOCK, 2))} : {vk}, {vk}")
                    e(f"{ind}{t}o = vector.shuffle {a_}, {b_} {list(range(1, 2 * BLOCK, 2))} : {vk}, {vk}")
                    e(f"{ind}{t} = arith.addf {t}e, {t}o : {vk}")
                    nxt_level.append(t)
                level = nxt_level
            if valid is not None:
                e(f"{ind}{p[g]}vm = vector.from_elements {', '.join(valid)} : vector<{BLOCK}xi1>")
                e(f"{ind}{p[g]}ni = vector.broadcast %ninf : f32 to {vk}")
                e(f"{ind}{p[g]}sv = arith.select {p[g]}vm, {level[0]}, {p[g]}ni : vector<{BLOCK}xi1>, {vk}")
                sv.append(f"{p[g]}sv")
            else:
                sv.append(level[0])
        for g in groups:
            m, l_, a = state[g], state[s.group + g], state[2 * s.group + g]
            q = p[g]
            e(f"{ind}{q}bm = vector.reduction <maximumf>, {sv[g]} : {vk} into f32")
            e(f"{ind}{q}mn = arith.maximumf {m}, {q}bm : f32")
            e(f"{ind}{q}dm = arith.subf {m}, {q}mn : f32")
            e(f"{ind}{q}cr = math.exp {q}dm : f32")
            e(f"{ind}{q}mb = vector.broadcast {q}mn : f32 to {vk}")
            e(f"{ind}{q}sd = arith.subf {sv[g]}, {q}mb : {vk}")
            e(f"{ind}{q}pv = math.exp {q}sd : {vk}")
            e(f"{ind}{q}ps = vector.reduction <add>, {q}pv fastmath<reassoc> : {vk} into f32")
            e(f"{ind}{q}lc = arith.mulf {l_}, {q}cr : f32")
            e(f"{ind}{q}ln = arith.addf {q}lc, {q}ps : f32")
            e(f"{ind}{q}cb = vector.broadcast {q}cr : f32 to {vd}")
            e(f"{ind}{q}a0 = arith.mulf {a}, {q}cb : {vd}")
        for r in range(BLOCK):
            v = row("v", r, ind)
            for g in groups:
                q = p[g]
                e(f"{ind}{q}p{r} = vector.extract {q}pv[{r}] : f32 from {vk}")
                e(f"{ind}{q}pb{r} = vector.broadcast {q}p{r} : f32 to {vd}")
                e(f"{ind}{q}a{r + 1} = vector.fma {q}pb{r}, {v}, {q}a{r} : {vd}")
        return [*(f"{q}mn" for q in p), *(f"{q}ln" for q in p), *(f"{q}a{BLOCK}" for q in p)]


# ================================================================================================ pass
# operands of each op: (name in messages, kernel binding, element type, shape as a function of B, H, G, D)
_F32_OPERANDS = (("q", "q", "f32"), ("k_cache", "kc", "f32"), ("v_cache", "vc", "f32"), ("k_new", "kn", "f32"),
                 ("v_new", "vn", "f32"))
_INT8_OPERANDS = (("q", "q", "f32"), ("k_codes", "kc", "si8"), ("k_scales", "ks", "f32"), ("v_codes", "vc", "si8"),
                  ("v_scales", "vs", "f32"), ("k_new", "kn", "si8"), ("k_new_scale", "kns", "f32"),
                  ("v_new", "vn", "si8"), ("v_new_scale", "vns", "f32"))
_F16_OPERANDS = tuple((what, key, "f16" if key in ("kc", "vc", "kn", "vn") else elem)
                      for what, key, elem in _F32_OPERANDS)
_LENGTHS = (("lengths", "len", "si64"),)
OPERANDS = {OP_NAME: _F32_OPERANDS, OP_NAME_INT8: _INT8_OPERANDS, OP_NAME_RAGGED: _F32_OPERANDS + _LENGTHS,
            OP_NAME_RAGGED_INT8: _INT8_OPERANDS + _LENGTHS}


def plan(op: ir.Operation) -> tuple[AttentionSpec, int]:
    """The kernel's shape and the layer index of one ``torch.msd.decode_attention[_ragged][_int8]``; an
    :class:`~msd.errors.OptionError` naming the operand that does not fit."""
    name = ir.StringAttr(op.attributes["name"]).value
    table = OPERANDS[name]
    f16 = table[1][2] == "f32" and vtensor_shape(op.operands[1].type) is not None and \
        vtensor_shape(op.operands[1].type)[1] == "f16"  # the f32 ops over an f16 cache
    if f16:
        table = _F16_OPERANDS + table[len(_F32_OPERANDS):]
    if len(op.operands) not in (len(table) + 1, len(table) + 2) or len(op.results) != 1:
        raise OptionError(f"{name}: expected {len(table) + 1} operands (and a window) and 1 result, got "
                          f"{len(op.operands)} and {len(op.results)}")
    shapes = {}
    for (what, _key, elem), v in zip(table, op.operands):
        sh = vtensor_shape(v.type)
        if sh is None or sh[1] != elem:
            raise OptionError(f"{name}: {what} must be a {elem} tensor, got {v.type}")
        shapes[what] = sh[0]
    q = shapes["q"]
    if len(q) != 4 or None in q:
        raise OptionError(f"{name}: q must be [B, kv_heads, group, D] with static sizes, got {q}")
    b, h, g, d = q
    if d % BLOCK:
        raise OptionError(f"{name}: the head dim {d} is not a multiple of {BLOCK}")
    layers = shapes[table[1][0]][1] if len(shapes[table[1][0]]) == 5 else None
    window = _constant_int(op, len(table) + 1, name, "window") if len(op.operands) == len(table) + 2 else 0
    if window < 0:
        raise OptionError(f"{name}: the window {window} is negative")
    spec = AttentionSpec(b, h, g, d, layers or 0, int8=name in (OP_NAME_INT8, OP_NAME_RAGGED_INT8),
                         ragged=name in (OP_NAME_RAGGED, OP_NAME_RAGGED_INT8), window=window, f16=f16)
    for (what, key, _), sh in zip(table, shapes.values()):
        want = spec.types()[key].split("x")[:-1]
        got = ["?" if x is None else str(x) for x in sh]
        if layers is None or got != want:
            raise OptionError(f"{name}: {what} must be [{', '.join(want)}] (T = '?', layers static), got {sh}")
    result = vtensor_shape(op.results[0].type)
    if result is None or result[0] != q or result[1] != "f32":
        raise OptionError(f"{name}: the result must be f32 {q}, got {op.results[0].type}")
    layer = _constant_int(op, len(table), name, "layer index")
    if not 0 <= layer < layers:
        raise OptionError(f"{name}: layer {layer} is outside the cache's {layers} layers")
    return spec, layer


def _constant_int(op: ir.Operation, i: int, name: str, what: str) -> int:
    """The value of operand ``i`` of ``op``, a ``torch.constant.int``; else an error naming ``what``."""
    d = op.operands[i].owner
    if not isinstance(d, ir.Operation | ir.OpView) or d.name != "torch.constant.int":
        raise OptionError(f"{name}: the {what} must be a constant integer")
    return ir.IntegerAttr(d.attributes["value"]).value


def _emit(op: ir.Operation, spec: AttentionSpec, layer: int) -> None:
    types = spec.types()
    table = OPERANDS[ir.StringAttr(op.attributes["name"]).value]
    with ir.InsertionPoint(op), op.location:
        builtin = []
        for v, (_, key, _) in zip(op.operands, table):
            t = ir.RankedTensorType.parse(f"tensor<{types[key]}>")
            builtin.append(ir.Operation.create("torch_c.to_builtin_tensor", results=[t], operands=[v]).result)
        index = ir.IndexType.get()
        zero = ir.Operation.create("arith.constant", results=[index],
                                   attributes={"value": ir.IntegerAttr.get(index, 0)}).result
        t_dim = ir.Operation.create("tensor.dim", results=[index], operands=[builtin[1], zero]).result
        lay = ir.Operation.create("arith.constant", results=[index],
                                  attributes={"value": ir.IntegerAttr.get(index, layer)}).result
        parts = [ir.RankedTensorType.parse(f"tensor<{types[k]}>") for k in ("pa", "pm")]
        dynamic = [t_dim] * sum("?" in types[key] for _, key, _ in table)
        attention = _ir.flow_dispatch(spec.symbol, parts, [t_dim], [*builtin, t_dim, lay], dynamic)
        out_t = ir.RankedTensorType.parse(f"tensor<{types['q']}>")
        combined = _ir.flow_dispatch(spec.combine_symbol, [out_t], [t_dim], list(attention.results), [])
        back = ir.Operation.create("torch_c.from_builtin_tensor", results=[op.results[0].type],
                                   operands=[combined.result])
    op.results[0].replace_all_uses_with(back.result)
    op.erase()


_VIEWS = ("torch.aten.view", "torch.aten.reshape", "torch.aten._unsafe_view", "torch.aten.unflatten.int",
          "torch.aten.squeeze.dim", "torch.aten.unsqueeze", "torch.aten.flatten.using_ints")


def rope_source(op: ir.Operation, spec: AttentionSpec) -> tuple[ir.Operation, float] | None:
    """The ``torch.msd.rope_qkv`` of one token whose results a decode attention (f32 or f16 cache) reads
    as its q (through reshapes), k_new and v_new, and its q scale; None when there is none or it does not
    match the attention's shape."""
    if spec.int8 or spec.rope:
        return None

    def through_identity(v: ir.Value) -> ir.Value:  # an f32 → f32 torch.aten.to.dtype (export keeps them)
        o = v.owner
        if isinstance(o, ir.Operation | ir.OpView) and o.name == "torch.aten.to.dtype" and o.operands[0].type == v.type:
            return o.operands[0]
        return v

    kn, vn = through_identity(op.operands[3]), through_identity(op.operands[4])
    src = kn.owner
    if not isinstance(src, ir.Operation | ir.OpView) or src.name != "torch.operator" or \
            ir.StringAttr(src.attributes["name"]).value != OP_ROPE_QKV:
        return None
    src = src.operation if isinstance(src, ir.OpView) else src
    if kn != src.results[1] or vn != src.results[2]:
        return None
    q = op.operands[0]
    while isinstance(q.owner, ir.Operation | ir.OpView) and q.owner.name in _VIEWS:
        q = q.owner.operands[0]
    if q != src.results[0]:
        return None
    try:
        qkv = plan_qkv(src)
    except OptionError:
        return None  # the row-kernel pass reports it
    shape = vtensor_shape(src.operands[0].type)
    if shape is None or shape[0][1] != 1 or (qkv.batch, qkv.heads, qkv.kv_heads, qkv.head_dim, qkv.f16) != \
            (spec.batch, spec.kv_heads * spec.group, spec.kv_heads, spec.head_dim, spec.f16):
        return None
    return src, qkv.scale


def _emit_rope(op: ir.Operation, spec: AttentionSpec, layer: int, rope: ir.Operation) -> None:
    """The decode attention ``op`` with the ``rope_qkv`` it reads taken into its kernel (``spec.rope``),
    placed where ``rope`` is; ``rope``'s k and v results are then read from the kernel's."""
    types = spec.types()
    with ir.InsertionPoint(rope), op.location:
        def builtin(v: ir.Value, groups: list[list[int]] | None = None) -> ir.Value:
            dims, elem = vtensor_shape(v.type)
            t = ir.RankedTensorType.parse(f"tensor<{'x'.join('?' if d is None else str(d) for d in dims)}x"
                                          f"{'f16' if elem == 'f16' else 'i64' if elem == 'si64' else elem}>")
            b = ir.Operation.create("torch_c.to_builtin_tensor", results=[t], operands=[v]).result
            return b if groups is None else _ir.collapse(b, groups)

        args = [builtin(rope.operands[0], [[0, 1], [2]]), builtin(rope.operands[1], [[0, 1, 2], [3]]),
                builtin(rope.operands[2], [[0, 1, 2], [3]]), builtin(op.operands[1]), builtin(op.operands[2])]
        if spec.ragged:
            args.append(builtin(op.operands[len(_F32_OPERANDS)]))
        index = ir.IndexType.get()
        zero = ir.Operation.create("arith.constant", results=[index],
                                   attributes={"value": ir.IntegerAttr.get(index, 0)}).result
        t_dim = ir.Operation.create("tensor.dim", results=[index], operands=[args[3], zero]).result
        lay = ir.Operation.create("arith.constant", results=[index],
                                  attributes={"value": ir.IntegerAttr.get(index, layer)}).result
        outs = [ir.RankedTensorType.parse(f"tensor<{types[k]}>") for k in ("pa", "pm", "kno", "vno")]
        attention = _ir.flow_dispatch(spec.symbol, outs, [t_dim], [*args, t_dim, lay], [t_dim, t_dim])
        out_t = ir.RankedTensorType.parse(f"tensor<{spec.batch}x{spec.kv_heads}x{spec.group}x{spec.head_dim}xf32>")
        combined = _ir.flow_dispatch(spec.combine_symbol, [out_t], [t_dim], list(attention.results)[:2], [])
        back = ir.Operation.create("torch_c.from_builtin_tensor", results=[op.results[0].type],
                                   operands=[combined.result])
        news = [ir.Operation.create("torch_c.from_builtin_tensor", results=[rope.results[i].type],
                                    operands=[attention.results[1 + i]]).result for i in (1, 2)]
    op.results[0].replace_all_uses_with(back.result)
    q = op.operands[0]
    op.erase()
    for i, new in zip((1, 2), news):
        rope.results[i].replace_all_uses_with(new)
    while q.owner.name in _VIEWS and not list(q.uses):  # the q reshapes left without readers
        view = q.owner
        q = view.operands[0]
        view.erase()
    if not any(list(r.uses) for r in rope.results):
        rope.erase()


def plan_prefill(op: ir.Operation) -> PrefillSpec:
    """The prefill kernel's shape for one ``torch.msd.prefill_attention``; an
    :class:`~msd.errors.OptionError` naming the operand that does not fit."""
    name = PREFILL_OP_NAME
    if len(op.operands) not in (3, 4) or len(op.results) != 1:
        raise OptionError(f"{name}: expected 3 operands (and a window) and 1 result, got {len(op.operands)} and "
                          f"{len(op.results)}")
    window = _constant_int(op, 3, name, "window") if len(op.operands) == 4 else 0
    if window < 0:
        raise OptionError(f"{name}: the window {window} is negative")
    shapes = []
    for what, v in zip(("q", "k", "v"), op.operands):
        sh = vtensor_shape(v.type)
        if sh is None or sh[1] != "f32":
            raise OptionError(f"{name}: {what} must be an f32 tensor, got {v.type}")
        shapes.append(sh[0])
    q = shapes[0]
    if len(q) != 5 or None in (q[0], q[1], q[2], q[4]):
        raise OptionError(f"{name}: q must be [B, kv_heads, group, S, D] (only S dynamic), got {q}")
    spec = PrefillSpec(q[0], q[1], q[2], q[4], window=window)
    if spec.head_dim % BLOCK:
        raise OptionError(f"{name}: the head dim {spec.head_dim} is not a multiple of {BLOCK}")
    for what, key, sh in zip(("q", "k", "v"), ("q", "k", "v"), shapes):
        want = spec.types()[key].split("x")[:-1]
        if ["?" if x is None else str(x) for x in sh] != want:
            raise OptionError(f"{name}: {what} must be [{', '.join(want)}] (S = '?'), got {sh}")
    result = vtensor_shape(op.results[0].type)
    if result is None or result[0] != q or result[1] != "f32":
        raise OptionError(f"{name}: the result must be f32 {q}, got {op.results[0].type}")
    return spec


def _emit_prefill(op: ir.Operation, spec: PrefillSpec) -> None:
    types = spec.types()
    with ir.InsertionPoint(op), op.location:
        builtin = []
        for v, key in zip(op.operands, ("q", "k", "v")):
            t = ir.RankedTensorType.parse(f"tensor<{types[key]}>")
            builtin.append(ir.Operation.create("torch_c.to_builtin_tensor", results=[t], operands=[v]).result)
        index = ir.IndexType.get()
        two = ir.Operation.create("arith.constant", results=[index],
                                  attributes={"value": ir.IntegerAttr.get(index, 2)}).result
        s_dim = ir.Operation.create("tensor.dim", results=[index], operands=[builtin[1], two]).result
        out_t = ir.RankedTensorType.parse(f"tensor<{types['o']}>")
        out = _ir.flow_dispatch(spec.symbol, [out_t], [s_dim], [*builtin, s_dim], [s_dim] * 3, (s_dim,))
        back = ir.Operation.create("torch_c.from_builtin_tensor", results=[op.results[0].type], operands=[out.result])
    op.results[0].replace_all_uses_with(back.result)
    op.erase()


def run(module: ir.Operation, options: AttentionKernelsOptions | None = None, /, **kwargs: object) -> Report:
    """Apply the pass to ``module`` (torch dialect) in place; one decision per decode attention."""
    if options is None:
        options = AttentionKernelsOptions(**kwargs)
    elif kwargs:
        raise TypeError("run() takes options or keyword arguments, not both")
    report = Report(NAME)
    specs: dict[str, AttentionSpec | PrefillSpec] = {}
    for op in torch_operators(module, (*OPERANDS, PREFILL_OP_NAME)):
        name, where = ir.StringAttr(op.attributes["name"]).value, str(op.location)
        if name == PREFILL_OP_NAME:
            spec = plan_prefill(op)
            _emit_prefill(op, spec)
            what = spec.symbol
        else:
            spec, layer = plan(op)
            source = rope_source(op, spec)
            if source is not None:
                spec = dataclasses.replace(spec, rope=source[1])
                _emit_rope(op, spec, layer, source[0])
            else:
                _emit(op, spec, layer)
            what = f"{spec.symbol} (layer {layer})"
        specs[spec.symbol] = spec
        report.decisions.append(Decision(name, where, True, what))
    add_executables(module, {symbol: spec.executables() for symbol, spec in specs.items()})
    return report


__all__ = ["BLOCK", "NAME", "OPERANDS", "OP_NAME", "OP_NAME_INT8", "OP_NAME_RAGGED", "OP_NAME_RAGGED_INT8",
           "PREFILL_OP_NAME", "SUMMARY",
           "AttentionKernelsOptions", "AttentionSpec", "CombinePrologue", "CombineSpec", "PrefillSpec", "plan",
           "plan_prefill", "run"]
