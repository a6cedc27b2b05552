"""``--msd-decode-attention``: one token's attention over a token-major KV cache, as one kernel dispatch.

A decode step attends one new query token (its ``G`` query heads per KV head stacked as rows) over the
``T`` cached keys and values plus its own.  Written in tensor ops (as the reference of
:func:`msd.compiler.ops.decode_attention` is), IREE materialises the step's concatenation
``[past; new]`` (a copy of the layer's whole cache, per call), transposes it to head-major, data-tiles
it for a matmul, and runs the softmax as separate dispatches: 17 dispatches and three passes over the
cache per layer and token.  This pass replaces the op with one dispatch of a kernel msd writes: per
(sequence, KV head) workgroup it streams that head's keys and values once, straight from the cache in
its stored ``[T, layers, B, KV heads, D]`` layout, with an online softmax (flash-decoding's update:
running max, running sum, rescaled accumulator) over blocks of :data:`BLOCK` tokens, the new token's
key and value taking the place of row ``T``.

The pass runs on the **torch** dialect, before IREE's input conversion (which cannot lower the op):

1. **match** — ``torch.operator "torch.msd.decode_attention"`` (what the FX importer makes of the
   custom op);
2. **plan** — :class:`AttentionSpec` from the operand types (f32, static heads, head dim, layers and
   batch; dynamic ``T``) and the constant layer index; anything else is an error naming the operand,
   since IREE could not lower the op either;
3. **emit** — the operands as builtin tensors (``torch_c.to_builtin_tensor``), a ``flow.dispatch`` of
   the kernel's ``stream.executable`` (added once per shape), the result back as a torch tensor.

The kernel is plain ``vector``/``scf``/``math`` on f32 (no ISA intrinsics), so it serves every CPU
target IREE's ``llvm-cpu`` backend compiles for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from iree.compiler import ir

from msd.errors import OptionError

from .pass_options import PassOptions
from .report import Decision, Report

NAME = "msd-decode-attention"
SUMMARY = "one kernel dispatch per decode-step attention over the token-major KV cache (torch dialect)"
OP_NAME = "torch.msd.decode_attention"  # the FX importer's name for torch.ops.msd.decode_attention
SYMBOL_PREFIX = "msd_decode_attention_"
BLOCK = 16  # keys scored per online-softmax update


@dataclass(frozen=True)
class DecodeAttentionOptions(PassOptions):
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

    @property
    def symbol(self) -> str:
        return (f"{SYMBOL_PREFIX}b{self.batch}_h{self.kv_heads}_g{self.group}_d{self.head_dim}"
                f"_l{self.layers}")

    @property
    def workgroups(self) -> int:
        return self.batch * self.kv_heads

    def types(self) -> dict[str, str]:
        """Element layout of each operand (``?``: the cached tokens ``T``)."""
        b, h, g, d, n = self.batch, self.kv_heads, self.group, self.head_dim, self.layers
        cache = f"?x{n}x{b}x{h}x{d}xf32"
        return {"q": f"{b}x{h}x{g}x{d}xf32", "kc": cache, "vc": cache, "kn": f"{b}x{h}x1x{d}xf32",
                "vn": f"{b}x{h}x1x{d}xf32", "o": f"{b}x{h}x{g}x{d}xf32"}

    def executable(self) -> str:
        """The ``stream.executable`` text."""
        return _Writer(self).executable()


class _Writer:
    """The kernel's text, line by line (SSA names made unique per block of keys)."""

    def __init__(self, spec: AttentionSpec) -> None:
        self.s = spec
        self.lines: list[str] = []
        self.vd = f"vector<{spec.head_dim}xf32>"
        self.vk = f"vector<{BLOCK}xf32>"
        self.chunks = spec.head_dim // BLOCK

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
        e(f"stream.executable private @{s.symbol} {{")
        e(f"  stream.executable.export public @{s.symbol} workgroups(%t: index) -> (index, index, index) {{")
        e(f"    %x = arith.constant {s.workgroups} : index")
        e("    %one = arith.constant 1 : index")
        e("    stream.return %x, %one, %one : index, index, index")
        e("  }")
        e("  builtin.module {")
        args = ", ".join(f"%{k}_b: !stream.binding" for k in types)
        e(f"    func.func @{s.symbol}({args}, %T: index, %layer: index) {{")
        for v in sorted({0, 1, BLOCK, s.kv_heads, *range(max(BLOCK, s.group)), *range(0, s.head_dim, 16)}):
            e(f"      %c{v} = arith.constant {v} : index")
        for k, t in mem.items():
            dyn = "{%T}" if "?" in t else ""
            e(f"      %{k} = stream.binding.subspan %{k}_b[%c0] : !stream.binding -> {t}{dyn}")
        e("      %f0 = arith.constant 0.0 : f32")
        e("      %ninf = arith.constant 0xFF800000 : f32")
        e(f"      %zd = arith.constant dense<0.0> : {vd}")
        e("      %wid = stream.dispatch.workgroup.id[0] : index")
        e(f"      %b = arith.divui %wid, %c{s.kv_heads} : index")
        e(f"      %h = arith.remui %wid, %c{s.kv_heads} : index")
        for g in range(s.group):
            e(f"      %q{g} = vector.transfer_read %q[%b, %h, %c{g}, %c0], %f0 {{in_bounds = [true]}} : "
              f"{mem['q']}, {vd}")
            for c in range(self.chunks):
                e(f"      %q{g}c{c} = {self.chunk(f'%q{g}', c)}")
        e(f"      %nblk = arith.divui %T, %c{BLOCK} : index")
        e(f"      %tmain = arith.muli %nblk, %c{BLOCK} : index")
        state = [*(f"%m{g}" for g in range(s.group)), *(f"%l{g}" for g in range(s.group)),
                 *(f"%a{g}" for g in range(s.group))]
        inits = ["%ninf"] * s.group + ["%f0"] * s.group + ["%zd"] * s.group
        state_types = ["f32"] * (2 * s.group) + [vd] * s.group
        e(f"      %st:{len(state)} = scf.for %t0 = %c0 to %tmain step %c{BLOCK} iter_args("
          + ", ".join(f"{n} = {i}" for n, i in zip(state, inits)) + f") -> ({', '.join(state_types)}) {{")

        e("        %tlast = arith.subi %T, %c1 : index")

        def cached(x: str, r: int, ind: str) -> str:  # row r of the block, from the cache
            e(f"{ind}%{x}r{r} = arith.addi %t0, %c{r} : index")
            # the same row of the next block, prefetched: the rows lie a whole token's entry apart, a stride
            # the hardware prefetcher does not follow (measured in a 2-layer SmolLM2 decode at T=512: 98 -> 78
            # us per layer)
            e(f"{ind}%{x}f{r}u = arith.addi %{x}r{r}, %c{BLOCK} : index")
            e(f"{ind}%{x}f{r} = arith.minui %{x}f{r}u, %tlast : index")
            for c in range(0, s.head_dim, 16):
                e(f"{ind}memref.prefetch %{x}c[%{x}f{r}, %layer, %b, %h, %c{c}], read, locality<3>, data : "
                  f"{mem[x + 'c']}")
            e(f"{ind}%{x}{r} = vector.transfer_read %{x}c[%{x}r{r}, %layer, %b, %h, %c0], %f0 "
              f"{{in_bounds = [true]}} : {mem[x + 'c']}, {vd}")
            return f"%{x}{r}"

        new = self.update("M", state, None, "        ", cached)
        e(f"        scf.yield {', '.join(new)} : {', '.join(state_types)}")
        e("      }")
        after = [f"%st#{i}" for i in range(len(state))]
        # the last block: rows tmain + r; a cached key while < T, the new token's at T, none after
        for r in range(BLOCK):
            e(f"      %u{r} = arith.addi %tmain, %c{r} : index")
            e(f"      %in{r} = arith.cmpi ult, %u{r}, %T : index")
            e(f"      %ok{r} = arith.cmpi ule, %u{r}, %T : index")

        def last(x: str, r: int, ind: str) -> str:  # row r of the last block: cached, or the new token's
            e(f"{ind}%{x}u{r} = scf.if %in{r} -> ({vd}) {{")
            e(f"{ind}  %x = vector.transfer_read %{x}c[%u{r}, %layer, %b, %h, %c0], %f0 {{in_bounds = [true]}} :"
              f" {mem[x + 'c']}, {vd}")
            e(f"{ind}  scf.yield %x : {vd}")
            e(f"{ind}}} else {{")
            e(f"{ind}  %x = vector.transfer_read %{x}n[%b, %h, %c0, %c0], %f0 {{in_bounds = [true]}} : "
              f"{mem[x + 'n']}, {vd}")
            e(f"{ind}  scf.yield %x : {vd}")
            e(f"{ind}}}")
            return f"%{x}u{r}"

        final = self.update("L", after, [f"%ok{r}" for r in range(BLOCK)], "      ", last)
        for g in range(s.group):
            l_, a = final[s.group + g], final[2 * s.group + g]
            e(f"      %lb{g} = vector.broadcast {l_} : f32 to {vd}")
            e(f"      %out{g} = arith.divf {a}, %lb{g} : {vd}")
            e(f"      vector.transfer_write %out{g}, %o[%b, %h, %c{g}, %c0] {{in_bounds = [true]}} : {vd}, {mem['o']}")
        e("      return")
        e("    }")
        e("  }")
        e("}")
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
_TENSOR = "!torch.vtensor<["


def _shape(t: ir.Type) -> tuple[list[int | None], str] | None:
    """``(dims, element type)`` of a ``!torch.vtensor`` type (None for a dynamic dim)."""
    text = str(t)
    if not text.startswith(_TENSOR):
        return None
    dims_text, _, elem = text[len(_TENSOR):].rstrip(">").partition("],")
    dims = [None if d == "?" else int(d) for d in dims_text.split(",") if d]
    return dims, elem


def plan(op: ir.Operation) -> tuple[AttentionSpec, int]:
    """The kernel's shape and the layer index of one ``torch.msd.decode_attention``; an
    :class:`~msd.errors.OptionError` naming the operand that does not fit."""
    names = ("q", "k_cache", "v_cache", "k_new", "v_new")
    if len(op.operands) != 6 or len(op.results) != 1:
        raise OptionError(f"{OP_NAME}: expected 6 operands and 1 result, got {len(op.operands)} and "
                          f"{len(op.results)}")
    shapes = []
    for name, v in zip(names, op.operands):
        sh = _shape(v.type)
        if sh is None or sh[1] != "f32":
            raise OptionError(f"{OP_NAME}: {name} must be an f32 tensor, got {v.type}")
        shapes.append(sh[0])
    q, kc, vc, kn, vn = shapes
    if len(q) != 4 or None in q:
        raise OptionError(f"{OP_NAME}: q must be [B, kv_heads, group, D] with static sizes, got {q}")
    b, h, g, d = q
    if d % BLOCK:
        raise OptionError(f"{OP_NAME}: the head dim {d} is not a multiple of {BLOCK}")
    for name, sh in (("k_cache", kc), ("v_cache", vc)):
        if len(sh) != 5 or sh[2:] != [b, h, d] or sh[1] is None:
            raise OptionError(f"{OP_NAME}: {name} must be [T, layers, {b}, {h}, {d}] (layers static), got {sh}")
    if kc[1] != vc[1]:
        raise OptionError(f"{OP_NAME}: k_cache and v_cache hold {kc[1]} and {vc[1]} layers")
    for name, sh in (("k_new", kn), ("v_new", vn)):
        if sh != [b, h, 1, d]:
            raise OptionError(f"{OP_NAME}: {name} must be [{b}, {h}, 1, {d}], got {sh}")
    result = _shape(op.results[0].type)
    if result is None or result[0] != q or result[1] != "f32":
        raise OptionError(f"{OP_NAME}: the result must be f32 {q}, got {op.results[0].type}")
    layer_def = op.operands[5].owner
    if not isinstance(layer_def, ir.Operation | ir.OpView) or layer_def.name != "torch.constant.int":
        raise OptionError(f"{OP_NAME}: the layer index must be a constant integer")
    layer = ir.IntegerAttr(layer_def.attributes["value"]).value
    if not 0 <= layer < kc[1]:
        raise OptionError(f"{OP_NAME}: layer {layer} is outside the cache's {kc[1]} layers")
    return AttentionSpec(b, h, g, d, kc[1]), layer


def _emit(op: ir.Operation, spec: AttentionSpec, layer: int) -> None:
    types = spec.types()
    with ir.InsertionPoint(op), op.location:
        builtin = []
        for v, key in zip(op.operands[:5], ("q", "kc", "vc", "kn", "vn")):
            t = ir.RankedTensorType.parse(f"tensor<{types[key]}>")
            builtin.append(ir.Operation.create("torch_c.to_builtin_tensor", results=[t], operands=[v]).result)
        index = ir.IndexType.get()
        zero = ir.Operation.create("arith.constant", results=[index],
                                   attributes={"value": ir.IntegerAttr.get(index, 0)}).result
        t_dim = ir.Operation.create("tensor.dim", results=[index], operands=[builtin[1], zero]).result
        lay = ir.Operation.create("arith.constant", results=[index],
                                  attributes={"value": ir.IntegerAttr.get(index, layer)}).result
        entry = ir.ArrayAttr.get([ir.SymbolRefAttr.get([spec.symbol, spec.symbol])])
        out_t = ir.RankedTensorType.parse(f"tensor<{types['o']}>")
        dispatch = ir.Operation.create(
            "flow.dispatch", results=[out_t], operands=[t_dim, *builtin, t_dim, lay, t_dim, t_dim],
            attributes={
                "entry_points": entry,
                "operandSegmentSizes": ir.DenseI32ArrayAttr.get([1, 7, 2, 0]),
                "tied_operands": ir.ArrayAttr.get([ir.IntegerAttr.get(index, -1)]),
            })
        back = ir.Operation.create("torch_c.from_builtin_tensor", results=[op.results[0].type],
                                   operands=[dispatch.result])
    op.results[0].replace_all_uses_with(back.result)
    op.erase()


def run(module: ir.Operation, options: DecodeAttentionOptions | None = None, /, **kwargs: object) -> Report:
    """Apply the pass to ``module`` (torch dialect) in place; one decision per decode attention."""
    if options is None:
        options = DecodeAttentionOptions(**kwargs)
    elif kwargs:
        raise TypeError("run() takes options or keyword arguments, not both")
    report = Report(NAME)
    found: list[ir.Operation] = []

    def visit(o: ir.Operation) -> ir.WalkResult:
        if o.name == "torch.operator" and ir.StringAttr(o.attributes["name"]).value == OP_NAME:
            found.append(o)
        return ir.WalkResult.ADVANCE

    module.walk(visit, ir.WalkOrder.PRE_ORDER)
    specs: dict[str, AttentionSpec] = {}
    for op in found:
        spec, layer = plan(op)
        where = str(op.location)
        _emit(op, spec, layer)
        specs[spec.symbol] = spec
        report.decisions.append(Decision(OP_NAME, where, True, f"{spec.symbol} (layer {layer})"))
    body = module.regions[0].blocks[0]
    present = {ir.StringAttr(o.attributes["sym_name"]).value for o in body.operations if "sym_name" in o.attributes}
    for symbol, spec in specs.items():
        if symbol not in present:
            parsed = ir.Module.parse(spec.executable(), module.context)  # kept alive while the op moves
            parsed.body.operations[0].move_before(body.operations[0])
    return report


__all__ = ["BLOCK", "NAME", "OP_NAME", "SUMMARY", "AttentionSpec", "DecodeAttentionOptions", "plan", "run"]
