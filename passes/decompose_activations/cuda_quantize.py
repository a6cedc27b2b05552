"""The activation quantizer that feeds the tensor-core kernel (:mod:`.cuda_kernel`), as PTX text.

IREE lowers the quantizing tensor ops of :mod:`.emit_kernel` (``_activation_stats``, ``_slice_scale``,
``_codes``) to two or three small CUDA dispatches per linear — measured on an H200 at 4-8 µs per call,
as long as the int8 ``mma`` kernel itself at M ≤ 16 (``docs/targets.md``).  This is one dispatch with
the same arithmetic (that of :mod:`.quantize_kernel`, the CPU's), 2.9-3.9 µs there at M ≤ 16:

- ``s [M, G]`` (one scale per row and group) or ``[M, 1]``: ``max(amax, FLT_MIN) / 127``, NaN where
  ``amax`` is not finite;
- ``a [M, P, K] i8``: slice ``p``'s digit of ``x / s`` (``d_1 = round(t)``, ``d_{p+1} = round(254·(t_p −
  d_p))``, half to even, clamped to ±127; 0 where ``x / s`` is not finite), signed;
- with a weight offset, ``xs [M, G]``: the group sums of ``x`` (f32, equal to f32 rounding: summed in
  another order than the tensor ops', and, across warps, in the order their shared-memory atomics land,
  which may differ from run to run).

A workgroup quantizes one row (128-1024 threads, about one per 16 values): each thread first issues
the loads of all its quads of 4 consecutive f32 (a few rounds; the row is read once and kept in
registers), then the maxima of ``|x|`` (as their bit patterns: a NaN's is above infinity's, so a
non-finite group is seen) and the sums are combined within the lanes that hold one group by butterfly
shuffles and across rounds and warps by shared-memory reductions; after a barrier every thread derives
its group's scale and writes its 4 codes per slice as one 32-bit word.
Workgroups: ``(M, 1, 1)``; M is a push constant (unused: the grid has one workgroup per row).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .cpu_kernel import SYMBOL_PREFIX
from .cuda_kernel import ARCHS, PtxWriter, f32_hex, ptx_executable
from .emit_common import FLT_MIN, QMAX, SLICE_RADIX

MIN_THREADS, MAX_THREADS = 128, 1024  # per workgroup (one row)
WARP = 32
INF_BITS = 0x7F800000


@dataclass(frozen=True)
class CudaQuantizeSpec:
    """One instance: K, the group length (K itself for one scale per row), the slices, whether the scale
    is per group, whether group sums are wanted (a weight offset), the NVIDIA arch."""

    k: int
    group: int
    slices: int
    scale_per_group: bool
    offset: bool
    arch: str = "sm_80"

    def __post_init__(self) -> None:
        if self.k % self.group or self.group % 4 or not 1 <= self.slices <= 3 or self.arch not in ARCHS:
            raise ValueError(f"K={self.k}, group={self.group}, slices={self.slices}, arch={self.arch}: groups must"
                             " divide K and be multiples of 4, 1-3 slices, an arch of the tensor-core kernel")

    @property
    def groups(self) -> int:
        return self.k // self.group

    @property
    def scale_group(self) -> int:
        """K per scale: the group, or the whole row."""
        return self.group if self.scale_per_group else self.k

    @property
    def threads(self) -> int:
        """Threads of a row's workgroup: about one per 4 quads of 4 values (a power of two, 128-1024)."""
        t = MIN_THREADS
        while t < MAX_THREADS and 4 * t < self.k // 4:
            t *= 2
        return t

    @property
    def rounds(self) -> int:
        """Quads each thread reads (the row's last round may be partial)."""
        return -(-(self.k // 4) // self.threads)

    @property
    def symbol(self) -> str:
        return (f"{SYMBOL_PREFIX}cuda_quantize_{self.arch}_k{self.k}_g{self.group}_p{self.slices}"
                f"{'_sg' if self.scale_per_group else ''}{'_off' if self.offset else ''}")

    def results(self) -> dict[str, str]:
        """Each result's tensor type (``?``: M), in the dispatch's order: codes, scales, (group sums)."""
        p, k, g = self.slices, self.k, self.groups
        out = {"a": f"?x{p}x{k}xi8", "s": f"?x{g if self.scale_per_group else 1}xf32"}
        if self.offset:
            out["xs"] = f"?x{g}xf32"
        return out

    def executable(self) -> str:
        count = ["%x = affine.apply affine_map<()[s0] -> (s0)>()[%m]", "%y = arith.constant 1 : index",
                 "%z = arith.constant 1 : index"]
        return ptx_executable(self.symbol, self.ptx(), 1, len(self.results()), count, self.threads)

    def ptx(self) -> str:
        """The PTX module (entry ``symbol``; parameters: ``x``, the results, then M as a 32-bit value)."""
        return _Writer(self).text()


def _segment(quads: int) -> int:
    """Lanes combined by butterfly shuffles for a group of ``quads`` 4-element reads: the largest power of
    two ≤ 32 dividing it (the lanes of one segment always hold one group)."""
    s = 1
    while s < WARP and quads % (2 * s) == 0:
        s *= 2
    return s


class _Writer(PtxWriter):
    def __init__(self, spec: CudaQuantizeSpec) -> None:
        super().__init__(spec.symbol, spec.arch,
                         "MSD activation quantizer, written by msd.passes.decompose_activations.cuda_quantize")
        self.s = spec
        self.shared["qmax"] = (4, 4 * (spec.k // spec.scale_group))
        if spec.offset:
            self.shared["qsum"] = (4, 4 * spec.groups)

    def text(self) -> str:
        params = ["x", *self.s.results()]
        self.kernel(params)
        return self.module(params, self.s.threads)

    def each_entry(self, tid: str, table: str, n: int) -> Iterator[tuple[str, str, str]]:
        """For each entry ``i`` < ``n`` of the shared ``table`` a thread owns (``i = tid + k·threads``):
        ``(i, i < n, its shared address)``, the lines that compute them emitted."""
        e, r = self.e, self.r
        for base in range(0, n, self.s.threads):
            i, ok, addr = r(f"{table}_i", "b32"), r(f"{table}_ok", "pred"), r(f"{table}_a", "b32")
            e(f"add.u32 {i}, {tid}, {base};")
            e(f"setp.lt.u32 {ok}, {i}, {n};")
            e(f"mov.u32 {addr}, {table};")
            e(f"mad.lo.u32 {addr}, {i}, 4, {addr};")
            yield i, ok, addr

    def kernel(self, params: list[str]) -> None:
        s, e, r = self.s, self.e, self.r
        ptr = self.pointers(params)
        tid, row = r("thr", "b32"), r("row", "b32")
        e(f"mov.u32 {tid}, %tid.x;")
        e(f"mov.u32 {row}, %ctaid.x;")
        gm, gx = s.k // s.scale_group, s.groups
        zi, zf = r("zi", "b32"), r("zf", "f32")
        e(f"mov.u32 {zi}, 0;")
        e(f"mov.f32 {zf}, 0f00000000;")
        tables = [("qmax", gm, "u32", zi)] + ([("qsum", gx, "f32", zf)] if s.offset else [])
        for table, n, kind, zero in tables:  # the shared tables start at zero
            for _i, ok, addr in self.each_entry(tid, table, n):
                e(f"@{ok} st.shared.{kind} [{addr}], {zero};")
        e("bar.sync 0;")
        xrow, arow, off = r("xrow", "b64"), r("arow", "b64"), r("roff", "b64")
        e(f"mul.wide.u32 {off}, {row}, {4 * s.k};")
        e(f"add.u64 {xrow}, {ptr['x']}, {off};")
        e(f"mul.wide.u32 {off}, {row}, {s.slices * s.k};")
        e(f"add.u64 {arow}, {ptr['a']}, {off};")
        quads = []  # each round's (quad index, in the row?, 4 values): every load issued first
        for rd in range(s.rounds):
            j = r(f"j{rd}", "b32")
            e(f"add.u32 {j}, {tid}, {rd * s.threads};")
            quads.append((j, *self.read(xrow, j, rd)))
        for j, valid, xs in quads:
            self.stats(j, valid, xs)
        e("bar.sync 0;")
        self.write_scales(ptr, row, tid, gm, gx)
        for j, valid, xs in quads:
            self.codes(arow, j, valid, xs)
        e("ret;")

    def read(self, xrow: str, j: str, rd: int) -> tuple[str, list[str]]:
        """Round ``rd``'s 4 values at quad ``j`` (0 past the row's end) and whether ``j`` is in the row."""
        s, e, r = self.s, self.e, self.r
        valid, addr, off = r(f"valid{rd}", "pred"), r("xa", "b64"), r("xo", "b64")
        e(f"setp.lt.u32 {valid}, {j}, {s.k // 4};")
        xs = [r(f"x{rd}_{i}", "f32") for i in range(4)]
        for v in xs:
            e(f"mov.f32 {v}, 0f00000000;")
        e(f"mul.wide.u32 {off}, {j}, 16;")
        e(f"add.u64 {addr}, {xrow}, {off};")
        e(f"@{valid} ld.global.v4.f32 {{{', '.join(xs)}}}, [{addr}];")
        return valid, xs

    def stats(self, j: str, valid: str, xs: list[str]) -> None:
        """A quad's max |x| bits (and sum) into its group's shared entries."""
        s, e, r = self.s, self.e, self.r
        bits = r("bm", "b32")
        e(f"mov.u32 {bits}, 0;")  # (the bits of |x| are never below 0's)
        for i, v in enumerate(xs):
            a, b = r("ab", "f32"), r(f"b{i}", "b32")
            e(f"abs.f32 {a}, {v};")
            e(f"mov.b32 {b}, {a};")
            e(f"max.u32 {bits}, {bits}, {b};")
        self.combine(bits, "max.u32", _segment(s.scale_group // 4), "qmax", s.scale_group // 4, j, valid, "u32")
        if s.offset:
            total = r("sm", "f32")
            e(f"add.rn.f32 {total}, {xs[0]}, {xs[1]};")
            e(f"add.rn.f32 {total}, {total}, {xs[2]};")
            e(f"add.rn.f32 {total}, {total}, {xs[3]};")
            self.combine(total, "add.rn.f32", _segment(s.group // 4), "qsum", s.group // 4, j, valid, "f32")

    def combine(self, v: str, op: str, lanes: int, table: str, quads: int, j: str, valid: str, kind: str) -> None:
        """``v`` combined (``op``) over each aligned segment of ``lanes`` lanes (one group's), then the
        segment's first lane adds it into ``table[j / quads]`` (a shared-memory reduction)."""
        e, r = self.e, self.r
        t = r(f"sh_{kind}", "f32" if kind == "f32" else "b32")
        step = 1
        while step < lanes:
            e(f"shfl.sync.bfly.b32 {t}, {v}, {step}, 31, -1;")
            e(f"{op} {v}, {v}, {t};")
            step *= 2
        lead, lane, gi, addr = r("lead", "pred"), r("ln", "b32"), r("gi", "b32"), r("ga", "b32")
        e(f"and.b32 {lane}, {j}, {lanes - 1};")
        e(f"setp.eq.u32 {lead}, {lane}, 0;")
        e(f"and.pred {lead}, {lead}, {valid};")
        e(f"div.u32 {gi}, {j}, {quads};")
        e(f"mov.u32 {addr}, {table};")
        e(f"mad.lo.u32 {addr}, {gi}, 4, {addr};")
        e(f"@{lead} red.shared.{'max.u32' if kind == 'u32' else 'add.f32'} [{addr}], {v};")

    def scale_of(self, bits: str, out: str) -> None:
        """``out`` = the scale of a group whose max |x| has the bit pattern ``bits``."""
        e, r = self.e, self.r
        amax, fin = r("amax", "f32"), r("fin", "pred")
        e(f"mov.b32 {amax}, {bits};")
        e(f"setp.lt.u32 {fin}, {bits}, {INF_BITS};")
        e(f"max.f32 {amax}, {amax}, {f32_hex(FLT_MIN)};")
        e(f"div.rn.f32 {out}, {amax}, {f32_hex(QMAX)};")
        e(f"selp.f32 {out}, {out}, 0f7FC00000, {fin};")

    def write_scales(self, ptr: dict[str, str], row: str, tid: str, gm: int, gx: int) -> None:
        """Threads 0.. write the row's scales (and group sums)."""
        s, e, r = self.s, self.e, self.r
        outs = [("qmax", "s", gm)] + ([("qsum", "xs", gx)] if s.offset else [])
        for table, name, n in outs:
            for i, ok, addr in self.each_entry(tid, table, n):
                ga, go = r("wg", "b64"), r("wgo", "b32")
                e(f"mad.lo.u32 {go}, {row}, {n}, {i};")
                e(f"mul.wide.u32 {ga}, {go}, 4;")
                e(f"add.u64 {ga}, {ga}, {ptr[name]};")
                if table == "qmax":
                    bits, sc = r("wb", "b32"), r("wsc", "f32")
                    e(f"@{ok} ld.shared.u32 {bits}, [{addr}];")
                    self.scale_of(bits, sc)
                    e(f"@{ok} st.global.f32 [{ga}], {sc};")
                else:
                    v = r("wv", "f32")
                    e(f"@{ok} ld.shared.f32 {v}, [{addr}];")
                    e(f"@{ok} st.global.f32 [{ga}], {v};")

    def codes(self, arow: str, j: str, valid: str, xs: list[str]) -> None:
        """A quad's codes, one 32-bit word per slice."""
        s, e, r = self.s, self.e, self.r
        gi, addr, bits, sc = r("gi", "b32"), r("ga", "b32"), r("cb", "b32"), r("csc", "f32")
        e(f"div.u32 {gi}, {j}, {s.scale_group // 4};")
        e(f"mov.u32 {addr}, qmax;")
        e(f"mad.lo.u32 {addr}, {gi}, 4, {addr};")
        e(f"mov.u32 {bits}, 0;")
        e(f"@{valid} ld.shared.u32 {bits}, [{addr}];")  # (a quad past the row's end has no group)
        self.scale_of(bits, sc)
        words = [r(f"w{p}", "b32") for p in range(s.slices)]
        for w in words:
            e(f"mov.u32 {w}, 0;")
        for i, v in enumerate(xs):
            t, at, ok = r("t", "f32"), r("at", "f32"), r("tok2", "pred")
            e(f"div.rn.f32 {t}, {v}, {sc};")
            e(f"abs.f32 {at}, {t};")
            e(f"setp.lt.f32 {ok}, {at}, 0f7F800000;")
            for p in range(s.slices):
                d, c = r("d", "f32"), r("c", "b32")
                e(f"cvt.rni.f32.f32 {d}, {t};")
                e(f"max.f32 {d}, {d}, {f32_hex(-QMAX)};")
                e(f"min.f32 {d}, {d}, {f32_hex(QMAX)};")
                if p + 1 < s.slices:
                    e(f"sub.rn.f32 {t}, {t}, {d};")
                    e(f"mul.rn.f32 {t}, {t}, {f32_hex(SLICE_RADIX)};")
                e(f"cvt.rzi.s32.f32 {c}, {d};")
                e(f"selp.b32 {c}, {c}, 0, {ok};")
                e(f"and.b32 {c}, {c}, 255;")
                e(f"shl.b32 {c}, {c}, {8 * i};")
                e(f"or.b32 {words[p]}, {words[p]}, {c};")
        off, wa = r("ao", "b64"), r("wa64", "b64")
        e(f"mul.wide.u32 {off}, {j}, 4;")
        e(f"add.u64 {wa}, {arow}, {off};")
        for p in range(s.slices):
            e(f"@{valid} st.global.b32 [{wa}+{p * s.k}], {words[p]};")


__all__ = ["CudaQuantizeSpec"]
