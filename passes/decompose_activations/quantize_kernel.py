"""The activation-quantizing kernel that feeds the fused MSD linear (:mod:`.cpu_kernel`), as MLIR text.

One dispatch turns f32 activation rows ``x [M, K]`` into what the linear kernel reads:

- ``s [M, G]`` (one scale per row and group) or ``[M, 1]`` (per row): ``max(amax, FLT_MIN) / 127``,
  NaN where ``amax`` is not finite;
- ``a [M, P, K] i8``: slice ``p``'s digit of ``x / s`` (``d_1 = round(t)``, ``d_{p+1} = round(254·(t_p −
  d_p))``, half to even, clamped to ±127; 0 where ``x / s`` is not finite), signed;
- with a weight offset, ``xs [M, G]``: the group sums of ``x``;
- for a kernel that reads its weight codes with a bias ``b`` (:meth:`.cpu_kernel.Isa.weight_bias`),
  ``as [M, P, G] i32``: ``-b ·`` each slice's group sum of codes, the kernel's accumulator start.

These are the same values the tensor ops of :mod:`.emit_kernel` compute (``_activation_stats``,
``_slice_scale``, ``_codes``: the fallback for other element types), which IREE made three dispatches
per activation (a reduction, the scale, the codes) and, in a decode step, three of the ~30 per layer.
Here a workgroup quantizes one row: it reads the row in chunks of up to 32 lanes, once for the maxima
(and sums) and once for the codes (the row stays in L1 between the two).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..attention_kernels import CombineSpec
from ..row_kernels import RowSpec
from .cpu_kernel import SYMBOL_PREFIX, code_row
from .emit_common import FLT_MIN, QMAX, SLICE_RADIX


@dataclass(frozen=True)
class QuantizeSpec:
    """One instance of the kernel: K, the group length (K itself for one scale per row), the slices,
    whether the scale is per group, whether group sums are wanted, and the weight bias of the kernel it
    feeds (0: no code sums)."""

    k: int
    group: int
    slices: int
    scale_per_group: bool
    offset: bool
    weight_bias: int
    # the row is computed here from another kernel's inputs: a row kernel's (:mod:`..row_kernels`), or a
    # decode attention's splits (:class:`..attention_kernels.CombineSpec`)
    prologue: RowSpec | CombineSpec | None = None

    def __post_init__(self) -> None:
        if self.k % self.group or self.group % 4:
            raise ValueError(f"K={self.k} in groups of {self.group}: groups must divide K and be multiples of 4")
        if self.prologue is not None and self.prologue.k != self.k:
            raise ValueError(f"a row of {self.prologue.k} does not feed a quantizer of K={self.k}")

    @property
    def groups(self) -> int:
        return self.k // self.group

    @property
    def chunk(self) -> int:
        """Lanes read at a time: the largest of 32, 16, 8, 4 that divides the group (and, combining an
        attention's heads, the head dim: a chunk never straddles two heads)."""
        head = self.prologue.head_dim if isinstance(self.prologue, CombineSpec) else self.group
        return next(c for c in (32, 16, 8, 4) if self.group % c == 0 and head % c == 0)

    @property
    def symbol(self) -> str:
        return (f"{SYMBOL_PREFIX}quantize_k{self.k}_g{self.group}_p{self.slices}{'_sg' if self.scale_per_group else ''}"
                f"{'_off' if self.offset else ''}{f'_wb{self.weight_bias}' if self.weight_bias else ''}"
                f"{f'_{self.prologue.tag}' if self.prologue is not None else ''}")

    def inputs(self) -> dict[str, str]:
        """Each input binding's memref type (``?``: the rows M): the rows, or the prologue's inputs."""
        return self.prologue.inputs() if self.prologue is not None else {"x": f"?x{self.k}xf32"}

    def results(self) -> dict[str, str]:
        """Each result binding's memref type: the codes (rows of :func:`.cpu_kernel.code_row`, the bytes past
        K left unwritten), the scales, the group sums (with an offset), the code sums (with a weight bias),
        and a prologue's sum ``h`` (add_rms_norm)."""
        p, k, g = self.slices, self.k, self.groups
        out = {"a": f"?x{p}x{code_row(k)}xi8", "s": f"?x{g if self.scale_per_group else 1}xf32"}
        if self.offset:
            out["xs"] = f"?x{g}xf32"
        if self.weight_bias:
            out["as"] = f"?x{p}x{g}xi32"
        if self.prologue is not None and "h" in self.prologue.outputs():
            out["h"] = self.prologue.outputs()["h"]
        return out

    def types(self) -> dict[str, str]:
        """Each binding's memref type: the inputs, then the results."""
        return {**self.inputs(), **self.results()}

    def executable(self) -> str:
        return _Writer(self).text()

    def standalone_module(self) -> str:
        """A module whose function ``quantize`` takes f32 rows ``[M, K]`` and dispatches this kernel alone
        (no prologue): what the tests and ``benchmarks/kernel.py --quantizer`` compile."""
        k, outs = self.k, [f"tensor<{t}>" for key, t in self.types().items() if key != "x"]
        return (f"module {{\n{self.executable()}\nutil.func public @quantize(%x: tensor<?x{k}xf32>) -> "
                f"({', '.join(outs)}) {{\n  %c0 = arith.constant 0 : index\n"
                f"  %m = tensor.dim %x, %c0 : tensor<?x{k}xf32>\n"
                f"  %r:{len(outs)} = flow.dispatch @{self.symbol}::@{self.symbol}[%m](%x, %m) : "
                f"(tensor<?x{k}xf32>{{%m}}, index) -> ({', '.join(o + '{%m}' for o in outs)})\n"
                f"  util.return {', '.join(f'%r#{j}' for j in range(len(outs)))} : {', '.join(outs)}\n}}\n}}\n")


class _Writer:
    def __init__(self, spec: QuantizeSpec) -> None:
        self.s = spec
        self.lines: list[str] = []
        self.v = f"vector<{spec.chunk}xf32>"
        self.pro = spec.prologue.writer(self.e) if spec.prologue is not None else None

    def read(self, ind: str) -> str:
        """The chunk of the row at ``%k``: read from ``%x``, or computed by the prologue."""
        if self.pro is not None:
            return self.pro.load(ind, "%k", self.s.chunk)
        self.e(f"{ind}%xv = vector.transfer_read %x[%r, %k], %f0 {{in_bounds = [true]}} : "
               f"memref<{self.s.types()['x']}>, {self.v}")
        return "%xv"

    def e(self, line: str) -> None:
        self.lines.append(line)

    def text(self) -> str:
        s, e, v = self.s, self.e, self.v
        types = s.types()
        sym = s.symbol
        e(f"stream.executable private @{sym} {{")
        e(f"  stream.executable.export public @{sym} workgroups(%m: index) -> (index, index, index) {{")
        e("    %one = arith.constant 1 : index")
        e("    stream.return %m, %one, %one : index, index, index")
        e("  }")
        e("  builtin.module {")
        args = ", ".join(f"%{k}_b: !stream.binding" for k in types)
        e(f"    func.func @{sym}({args}, %M: index) {{")
        for c in sorted({0, 1, s.chunk, s.group, s.groups, s.k, *range(s.slices)}):
            e(f"      %c{c} = arith.constant {c} : index")
        for k, t in types.items():
            dyn = "{%M}" if "?" in t else ""
            e(f"      %{k} = stream.binding.subspan %{k}_b[%c0] : !stream.binding -> memref<{t}>{dyn}")
        e("      %f0 = arith.constant 0.0 : f32")
        e(f"      %zero = arith.constant dense<0.0> : {v}")
        e(f"      %inf = arith.constant dense<0x7F800000> : {v}")
        e(f"      %lo = arith.constant dense<{-QMAX}> : {v}")
        e(f"      %hi = arith.constant dense<{QMAX}> : {v}")
        e(f"      %radix = arith.constant dense<{SLICE_RADIX}> : {v}")
        if s.weight_bias:
            e("      %zero32 = arith.constant 0 : i32")
            e(f"      %nb = arith.constant {-s.weight_bias} : i32")
        e("      %r = stream.dispatch.workgroup.id[0] : index")
        if self.pro is not None:
            self.pro.setup("      ", s.chunk)
        if s.scale_per_group:
            e(f"      scf.for %gi = %c0 to %c{s.groups} step %c1 {{")
            e(f"        %base = arith.muli %gi, %c{s.group} : index")
            self.stats("        ", "%gi")
            self.scale("        ", "%gi", amax="%st#0")
            self.codes("        ", "%gi")
            e("      }")
        else:
            e(f"      %row:2 = scf.for %gi = %c0 to %c{s.groups} step %c1 iter_args(%pm = %f0, %ps = %f0)"
              " -> (f32, f32) {")
            e(f"        %base = arith.muli %gi, %c{s.group} : index")
            self.stats("        ", "%gi", carried="%pm")
            e("        scf.yield %st#0, %st#1 : f32, f32")
            e("      }")
            self.scale("      ", "%c0", amax="%row#0")
            e(f"      scf.for %gi = %c0 to %c{s.groups} step %c1 {{")
            e(f"        %base = arith.muli %gi, %c{s.group} : index")
            self.codes("        ", "%gi")
            e("      }")
        e("      return")
        e("    }")
        e("  }")
        e("}")
        return "\n".join(self.lines)

    def stats(self, ind: str, g: str, carried: str = "%f0") -> None:
        """``%st#0`` = max(``carried``, max |x| over this group), ``%st#1`` its sum (stored as ``xs[r, g]``
        when wanted)."""
        s, e, v = self.s, self.e, self.v
        e(f"{ind}%st:2 = scf.for %ci = %c0 to %c{s.group} step %c{s.chunk} iter_args(%m0 = {carried}, %s0 = %f0)"
          " -> (f32, f32) {")
        e(f"{ind}  %k = arith.addi %base, %ci : index")
        xv = self.read(ind + "  ")
        e(f"{ind}  %ax = math.absf {xv} : {v}")
        e(f"{ind}  %mx = vector.reduction <maximumf>, %ax : {v} into f32")
        e(f"{ind}  %m1 = arith.maximumf %m0, %mx : f32")
        # (reassociated: a tree of adds, not a chain of 32 scalar adds; the group sum feeds only the f32
        # offset term, whose order of sums the kernel does not keep anyway)
        e(f"{ind}  %sx = vector.reduction <add>, {xv} fastmath<reassoc> : {v} into f32")
        e(f"{ind}  %s1 = arith.addf %s0, %sx : f32")
        e(f"{ind}  scf.yield %m1, %s1 : f32, f32")
        e(f"{ind}}}")
        if s.offset:
            e(f"{ind}memref.store %st#1, %xs[%r, {g}] : memref<{s.types()['xs']}>")

    def scale(self, ind: str, g: str, amax: str) -> None:
        """``%sc`` = the first slice's scale from ``amax``, stored as ``s[r, g]``."""
        e = self.e
        e(f"{ind}%fl = arith.constant {FLT_MIN!r} : f32")
        e(f"{ind}%q = arith.constant {QMAX} : f32")
        e(f"{ind}%nan = arith.constant 0x7FC00000 : f32")
        e(f"{ind}%pinf = arith.constant 0x7F800000 : f32")
        e(f"{ind}%floor = arith.maximumf {amax}, %fl : f32")
        e(f"{ind}%sq = arith.divf %floor, %q : f32")
        e(f"{ind}%fin = arith.cmpf olt, {amax}, %pinf : f32")
        e(f"{ind}%sc = arith.select %fin, %sq, %nan : f32")
        e(f"{ind}memref.store %sc, %s[%r, {g}] : memref<{self.s.types()['s']}>")

    def codes(self, ind: str, g: str) -> None:
        """This group's codes of every slice, with ``%sc`` the row's (or group's) scale; with a weight
        bias, each slice's ``-bias · Σ codes`` stored as ``as[r, p, g]``."""
        s, e, v = self.s, self.e, self.v
        vi, vb = f"vector<{s.chunk}xi32>", f"vector<{s.chunk}xi8>"
        p_all = range(s.slices)
        e(f"{ind}%scb = vector.broadcast %sc : f32 to {v}")
        if s.weight_bias:
            carried = ", ".join(f"%cs{p} = %zero32" for p in p_all)
            e(f"{ind}%csum:{s.slices} = scf.for %ci = %c0 to %c{s.group} step %c{s.chunk} iter_args({carried}) -> "
              f"({', '.join(['i32'] * s.slices)}) {{")
        else:
            e(f"{ind}scf.for %ci = %c0 to %c{s.group} step %c{s.chunk} {{")
        e(f"{ind}  %k = arith.addi %base, %ci : index")
        xv = self.read(ind + "  ")
        e(f"{ind}  %t0 = arith.divf {xv}, %scb : {v}")
        e(f"{ind}  %at = math.absf %t0 : {v}")
        e(f"{ind}  %ok = arith.cmpf olt, %at, %inf : {v}")
        t = "%t0"
        for p in range(s.slices):
            # LLVM's own round-half-to-even (one vrndscaleps / frintn per vector): IREE expands
            # math.roundeven into a long integer sequence (see docs/benchmarks.md, "The activation quantizer")
            e(f'{ind}  %r{p} = llvm.call_intrinsic "llvm.roundeven.v{s.chunk}f32"({t}) : ({v}) -> {v}')
            e(f"{ind}  %l{p} = arith.maximumf %r{p}, %lo : {v}")
            e(f"{ind}  %d{p} = arith.minimumf %l{p}, %hi : {v}")
            e(f"{ind}  %z{p} = arith.select %ok, %d{p}, %zero : vector<{s.chunk}xi1>, {v}")
            e(f"{ind}  %i{p} = arith.fptosi %z{p} : {v} to {vi}")
            e(f"{ind}  %y{p} = arith.trunci %i{p} : {vi} to {vb}")
            if s.weight_bias:
                e(f"{ind}  %r{p}s = vector.reduction <add>, %i{p} : {vi} into i32")
                e(f"{ind}  %n{p}s = arith.addi %cs{p}, %r{p}s : i32")
            e(f"{ind}  vector.transfer_write %y{p}, %a[%r, %c{p}, %k] {{in_bounds = [true]}} : {vb}, "
              f"memref<{s.types()['a']}>")
            if p + 1 < s.slices:
                e(f"{ind}  %e{p} = arith.subf {t}, %d{p} : {v}")
                e(f"{ind}  %t{p + 1} = arith.mulf %e{p}, %radix : {v}")
                t = f"%t{p + 1}"
        if s.weight_bias:
            e(f"{ind}  scf.yield {', '.join(f'%n{p}s' for p in p_all)} : {', '.join(['i32'] * s.slices)}")
            e(f"{ind}}}")
            for p in p_all:
                e(f"{ind}%as{p} = arith.muli %csum#{p}, %nb : i32")
                e(f"{ind}memref.store %as{p}, %as[%r, %c{p}, {g}] : memref<{s.types()['as']}>")
        else:
            e(f"{ind}}}")


__all__ = ["QuantizeSpec"]
