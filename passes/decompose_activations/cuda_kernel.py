"""The fused MSD linear kernel for NVIDIA tensor cores (sm_80 and later), as PTX text.

IREE 3.13's CUDA backend has no int8 MMA intrinsic (``docs/targets.md``): left to it, MSD's int8
matmuls become scalar code.  This kernel is what the CPU kernel (:mod:`.cpu_kernel`) is for x86 and
Arm, written for ``mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32``; it computes, for every
activation row ``m`` and output channel ``n``, the same arithmetic (the f32 sum over groups in
another order when warps share K)::

    y[m, n] = Σ_g  (scale[n, g] · s[m, g]) · Σ_p 254^-p · Σ_{k∈g} a_p[m, k] · w[n, k]
              (+ offset[n, g] · xsum[m, g])

A workgroup owns 16 activation rows × ``8·warp_tiles`` output channels (4 tiles by default) and has
``split`` warps (up to 8 by default, 16 at most), each taking a share of K: whole groups, or, with one
group (a scale per channel), that group's K steps.  For each 32-wide step of K a warp loads every
slice's A fragment (four 32-bit words per lane, straight from the row-major codes ``a [M, P, K]``)
and each channel tile's B fragment — pre-packed at compile time into mma's lane order, so a lane reads
8 contiguous bytes (or 4 bytes of 4-bit codes, unpacked with three 32-bit operations per word) — and
issues one ``mma`` per (slice, tile) into int32 accumulators; the loads of up to ``max_unroll`` (4)
steps are issued before their mmas.  At the end of each group the accumulators go to f32, are
combined over the slices (Horner, radix 1/254), scaled by the weight's scale times the row's scale
and, with a zero point or min, ``offset · xsum`` is added (once per group: by warp 0 when the warps
share one group).  Warps 1.. then leave their f32 partial
sums in shared memory, warp 0 adds them and stores.  No partial goes to global memory.

Fragment layouts (PTX ISA, ``mma.m16n8k32`` with ``.s8``; lane = 4·gid + tq):

- A (16×32, row): word 0 = A[gid][4tq .. 4tq+3], 1 = A[gid+8][4tq ..], 2 = A[gid][16+4tq ..],
  3 = A[gid+8][16+4tq ..];
- B (32×8, col): word 0 = B[4tq .. 4tq+3][gid], word 1 = B[16+4tq .. 16+4tq+3][gid];
- C/D (16×8): c0 = C[gid][2tq], c1 = C[gid][2tq+1], c2 = C[gid+8][2tq], c3 = C[gid+8][2tq+1].

Operand layouts (``T`` channel tiles of 8, padded to whole warps; ``KS = K/32`` steps):

- ``a [M, P, K] i8`` signed codes (no bias: the instruction multiplies signed bytes);
  ``s [M, 1 or G] f32``; ``xs [M, G] f32`` (with an offset);
- ``w [T, KS, 32, 8] i8``: lane ``l``'s two B words of step ``ks`` of tile ``t`` (channel ``8t + l/4``,
  K ``32ks + 4(l%4) + {0..3}`` then ``+16``); 4-bit codes: ``[T, KS, 32, 4]``, byte ``i`` holding
  word 0's byte ``i`` + 8 in its low nibble and word 1's byte ``i`` + 8 in its high one;
- ``scale`` (and ``offset``) ``[T, G, 8] f32``; ``y [M, N] f32``.

Workgroups: ``(T / warp_tiles, ceil(M / 16), 1)`` of ``32·split`` threads, M dynamic (a push
constant).  The kernel needs groups of K that are multiples of 32 (GGUF's blocks, torchao's
32/64/128, or K itself): other shapes keep IREE's lowering.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from .cpu_kernel import SLICE_RADIX, SYMBOL_PREFIX, linear_roles

MMA = "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32"
K_STEP = 32  # K of one mma
ROWS = 16  # activation rows of one mma (and of one warp)
SPLITS = (1, 2, 4, 8, 16)  # warps per workgroup
UNROLLS = (1, 2, 4, 8)  # K steps whose loads are issued together
MIN_WARP_STEPS = 4  # K steps a warp takes at least (when K is split over warps)
WARP = 32
# each arch with the oldest PTX ISA version that names it (the int8 m16n8k32 mma itself is PTX 7.0, sm_80):
# the oldest version keeps the PTX loadable by the oldest driver that knows the GPU
ARCHS = {"sm_80": "7.0", "sm_86": "7.1", "sm_87": "7.4", "sm_89": "7.8", "sm_90": "7.8", "sm_90a": "8.0",
         "sm_120": "8.7", "sm_121": "8.8"}


def mlir_string(text: str) -> str:
    """``text`` as an MLIR string literal."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.extend(f"\\{b:02X}" for b in ch.encode())
    return '"' + "".join(out) + '"'


def f32_hex(value: float) -> str:
    """A PTX f32 literal (``0fXXXXXXXX``) holding ``value`` rounded to f32."""
    return "0f" + struct.pack(">f", value).hex().upper()


def ptx_executable(symbol: str, ptx: str, n_in: int, n_out: int, count: list[str], threads: int) -> str:
    """A ``hal.executable.source`` whose CUDA object holds ``ptx`` (entry ``symbol``): ``n_in`` read-only
    then ``n_out`` written storage buffers and one push constant (M), ``count`` the MLIR lines that set
    ``%x, %y, %z`` from ``%m`` (the workload), ``threads`` per workgroup.  The object's ``path`` is never
    read (``data`` holds the text) but IREE 3.13 prints an object without one in a form it cannot parse
    back."""
    bindings = ", ".join(["#hal.pipeline.binding<storage_buffer, ReadOnly>"] * n_in
                         + ["#hal.pipeline.binding<storage_buffer>"] * n_out)
    return "\n".join([
        f"hal.executable.source private @{symbol} <objects = #hal.executable.objects<{{",
        '  #hal.executable.target<"cuda", "cuda-nvptx-fb"> = [',
        f'    #hal.executable.object<{{path = "{symbol}.ptx", data = {mlir_string(ptx)}}}>',
        "  ]",
        "}>> {",
        f"  hal.executable.export public @{symbol} ordinal(0)",
        f"      layout(#hal.pipeline.layout<constants = 1, bindings = [{bindings}]>)",
        "      count(%device: !hal.device, %m: index) -> (index, index, index) {",
        *(f"    {line}" for line in count),
        "    hal.return %x, %y, %z : index, index, index",
        f"  }} <workgroup_size = [{threads} : index, 1 : index, 1 : index]>",
        "}",
    ])


def parse_shape(text: str) -> dict[str, int]:
    """A kernel shape ``SPLITxTILESxUNROLL`` (e.g. ``16x2x4``: up to 16 warps share K, 2 channel tiles of 8
    per warp, up to 4 K steps' loads issued together) as :class:`CudaKernelSpec` keywords; ``""``: the
    defaults.  Raises ValueError naming what is wrong."""
    if not text:
        return {}
    parts = text.split("x")
    if len(parts) != 3 or not all(x.isdigit() for x in parts):
        raise ValueError(f"gpu kernel shape {text!r}: expected SPLITxTILESxUNROLL, e.g. 16x2x4")
    split, tiles, unroll = map(int, parts)
    if split not in SPLITS or unroll not in UNROLLS or not 1 <= tiles <= 4:
        raise ValueError(f"gpu kernel shape {text!r}: split one of {SPLITS}, tiles 1-4, unroll one of {UNROLLS}")
    return {"max_split": split, "warp_tiles": tiles, "max_unroll": unroll}


@dataclass(frozen=True)
class CudaKernelSpec:
    """One instance of the kernel: everything that is static in its code."""

    n: int  # output channels
    k: int  # reduction length
    group: int  # K per scale group (K itself when the scale is per channel)
    slices: int
    scale_per_group: bool  # s is [M, G] (activation scale per row and group), else [M, 1]
    offset: bool  # the weight has a zero point / min: offset and xsum operands
    nibbles: bool = False  # 4-bit codes (in [-8, 7]) two per byte
    warp_tiles: int = 4  # channel tiles of 8 per warp (4: measured best on an H200, docs/targets.md)
    arch: str = "sm_80"
    max_split: int = 8  # warps per workgroup, each a share of K (fewer when K's groups or steps do not split)
    max_unroll: int = 4  # K steps whose loads are issued together (fewer when a warp's steps do not divide)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"no tensor-core MSD kernel for {self.arch!r} (int8 mma.sync m16n8k32 needs one of: "
                             f"{', '.join(ARCHS)})")
        if self.k % self.group or self.group % K_STEP:
            raise ValueError(f"K={self.k} in groups of {self.group}: the tensor-core kernel needs groups that divide"
                             f" K and are multiples of {K_STEP}")
        if (not 1 <= self.slices <= 3 or self.warp_tiles < 1 or self.n < 1 or self.max_split not in SPLITS
                or self.max_unroll not in UNROLLS):
            raise ValueError(f"slices={self.slices}, warp_tiles={self.warp_tiles}, n={self.n}, max_split="
                             f"{self.max_split}, max_unroll={self.max_unroll}: out of range")

    # -- sizes
    @property
    def groups(self) -> int:
        return self.k // self.group

    @property
    def steps(self) -> int:
        """K steps of 32 per group."""
        return self.group // K_STEP

    @property
    def ksteps(self) -> int:
        return self.k // K_STEP

    @property
    def split(self) -> int:
        """Warps per workgroup: the groups of K shared among them, or (one group: a scale per channel) its
        steps; the largest of ``max_split``, its halves, … that divides them and leaves each warp at least
        ``MIN_WARP_STEPS`` K steps (fewer make the shared-memory reduction the larger part of the work)."""
        d = self.max_split
        while d > 1 and ((self.groups % d if self.groups > 1 else self.steps % d) or self.ksteps < MIN_WARP_STEPS * d):
            d //= 2
        return max(d, 1)

    @property
    def split_groups(self) -> bool:
        """Whether the warps share out whole groups (else the one group's steps)."""
        return self.groups > 1

    @property
    def warp_groups(self) -> int:
        return self.groups // self.split if self.split_groups else 1

    @property
    def warp_steps(self) -> int:
        """K steps of a warp per group."""
        return self.steps if self.split_groups else self.steps // self.split

    @property
    def unroll(self) -> int:
        """K steps whose loads are issued together (a divisor of ``warp_steps``, at most ``max_unroll``)."""
        return next(u for u in (8, 4, 2, 1) if u <= self.max_unroll and self.warp_steps % u == 0)

    @property
    def tiles(self) -> int:
        """Tiles of 8 channels, padded to whole warps (the padding's weights and scales are zero)."""
        return -(-self.n // (8 * self.warp_tiles)) * self.warp_tiles

    lanes: ClassVar[int] = 8  # channels per tile (the scale operands' innermost dim)
    k_step: ClassVar[int] = K_STEP

    @property
    def lane_bytes(self) -> int:
        """Weight bytes one lane reads per step: two words of codes, or one of nibbles."""
        return 4 if self.nibbles else 8

    @property
    def isa(self) -> str:
        """What the report calls the kernel."""
        return f"tensor-core (mma.sync int8, {self.arch})"

    def workgroups(self, m: int) -> tuple[int, int, int]:
        return self.tiles // self.warp_tiles, -(-m // ROWS), 1

    @property
    def symbol(self) -> str:
        return (f"{SYMBOL_PREFIX}mma_linear_{self.arch}_n{self.n}_k{self.k}_g{self.group}_p{self.slices}"
                f"{'_sg' if self.scale_per_group else ''}{'_off' if self.offset else ''}"
                f"{'_i4' if self.nibbles else ''}_t{self.warp_tiles}_w{self.split}"
                f"{f'_u{self.unroll}' if self.max_unroll != 4 else ''}")

    # -- operands, in the dispatch's order
    def roles(self) -> list[str]:
        return linear_roles(self.offset, False)

    def operand_types(self) -> list[str]:
        """The tensor types of the dispatch's operands (``?`` = M), in order."""
        t, g = self.tiles, self.groups
        types = {"a": f"tensor<?x{self.slices}x{self.k}xi8>",
                 "s": f"tensor<?x{g if self.scale_per_group else 1}xf32>", "xs": f"tensor<?x{g}xf32>",
                 "w": f"tensor<{t}x{self.ksteps}x{WARP}x{self.lane_bytes}xi8>",
                 "scale": f"tensor<{t}x{g}x8xf32>", "off": f"tensor<{t}x{g}x8xf32>"}
        return [types[r] for r in self.roles()]

    def result_type(self) -> str:
        return f"tensor<?x{self.n}xf32>"

    def executable(self) -> str:
        """The ``hal.executable.source`` that carries the PTX into IREE's CUDA module (:func:`ptx_executable`):
        the operands and ``y`` as storage buffers, M as the one push constant (the dispatch passes it, an
        i32, after the tensors); workgroups ``(tiles / warp_tiles, ceil(M / 16), 1)``."""
        x = self.tiles // self.warp_tiles
        count = [f"%x = arith.constant {x} : index",
                 f"%y = affine.apply affine_map<()[s0] -> (s0 ceildiv {ROWS})>()[%m]", "%z = arith.constant 1 : index"]
        return ptx_executable(self.symbol, self.ptx(), len(self.roles()), 1, count, WARP * self.split)

    def ptx(self) -> str:
        """The kernel's PTX module (entry ``symbol``; parameters: one pointer per operand, then ``y``, then
        M as a 32-bit value)."""
        return _Writer(self).text()


class PtxWriter:
    """Builds the text of one PTX entry (parameters: one pointer per buffer, then M as a 32-bit value);
    registers are declared by name as they are first used, shared arrays by :attr:`shared`."""

    def __init__(self, symbol: str, arch: str, header: str) -> None:
        self.symbol, self.arch, self.header = symbol, arch, header
        self.regs: dict[str, str] = {}  # name -> PTX type
        self.body: list[str] = []
        self.shared: dict[str, tuple[int, int]] = {}  # name -> (alignment, bytes)

    def r(self, name: str, kind: str) -> str:
        """The register ``%name`` of ``kind`` (``b32``, ``b64``, ``f32``, ``pred``), declared once."""
        if self.regs.setdefault(name, kind) != kind:
            raise AssertionError(f"register {name} used as {kind} and {self.regs[name]}")
        return f"%{name}"

    def e(self, line: str) -> None:
        self.body.append(f"\t{line}" if not line.endswith(":") else line)

    def pointers(self, params: list[str]) -> dict[str, str]:
        """Each buffer parameter's global address, in a register."""
        ptr = {}
        for name in params:
            raw = self.r(f"p_{name}", "b64")
            self.e(f"ld.param.u64 {raw}, [{self.symbol}_{name}];")
            ptr[name] = self.r(f"g_{name}", "b64")
            self.e(f"cvta.to.global.u64 {ptr[name]}, {raw};")
        return ptr

    def module(self, params: list[str], threads: int) -> str:
        """The PTX module of the entry written so far."""
        decls = [f"\t.reg .{kind} %{name};" for name, kind in self.regs.items()]
        decls += [f"\t.shared .align {a} .b8 {name}[{n}];" for name, (a, n) in self.shared.items()]
        sym = self.symbol
        plist = ",\n".join([*(f"\t.param .u64 {sym}_{p}" for p in params), f"\t.param .u32 {sym}_m"])
        return "\n".join([
            f"// msd: {self.header}", f".version {ARCHS[self.arch]}", f".target {self.arch}", ".address_size 64", "",
            f".visible .entry {sym}(", plist, ")", f".maxntid {threads}, 1, 1", "{", *decls, *self.body, "}", ""])


class _Writer(PtxWriter):
    """The tensor-core kernel's text."""

    def __init__(self, spec: CudaKernelSpec) -> None:
        super().__init__(spec.symbol, spec.arch,
                         f"fused MSD linear ({MMA}), written by msd.passes.decompose_activations.cuda_kernel")
        self.s = spec
        self.first_warp: str | None = None  # the predicate "warp 0" when one group is split over warps

    def text(self) -> str:
        params = [*self.s.roles(), "y"]
        self.kernel(params)
        return self.module(params, WARP * self.s.split)

    def kernel(self, params: list[str]) -> None:
        s, e, r = self.s, self.e, self.r
        p, nt = s.slices, s.warp_tiles
        ptr = self.pointers(params)
        m = r("m", "b32")
        e(f"ld.param.u32 {m}, [{s.symbol}_m];")
        tid, lane, warp, gid, tq = r("thr", "b32"), r("lane", "b32"), r("wrp", "b32"), r("gid", "b32"), r("tq", "b32")
        e(f"mov.u32 {tid}, %tid.x;")
        e(f"and.b32 {lane}, {tid}, 31;")
        e(f"shr.u32 {warp}, {tid}, 5;")  # the warp's share of K
        e(f"shr.u32 {gid}, {lane}, 2;")
        e(f"and.b32 {tq}, {lane}, 3;")
        t0, m0 = r("t0", "b32"), r("m0", "b32")
        e(f"mov.u32 {t0}, %ctaid.x;")
        e(f"mul.lo.u32 {t0}, {t0}, {nt};")  # the block's first channel tile
        e(f"mov.u32 {m0}, %ctaid.y;")
        e(f"shl.b32 {m0}, {m0}, 4;")  # its first row
        # rows gid and gid + 8 of the block; a row past M reads row 0 and is never stored
        rows, valid, safe = [], [], []
        for h in range(2):
            row, v, rs = r(f"row{h}", "b32"), r(f"v{h}", "pred"), r(f"rs{h}", "b32")
            e(f"add.u32 {row}, {m0}, {gid};" if h == 0 else f"add.u32 {row}, {rows[0]}, 8;")
            e(f"setp.lt.u32 {v}, {row}, {m};")
            e(f"selp.b32 {rs}, {row}, 0, {v};")
            rows.append(row)
            valid.append(v)
            safe.append(rs)
        # the warp's first group and step: its K steps start at step0 = g0·steps + s0
        g0, step0 = r("g0", "b32"), r("step0", "b32")
        e(f"mul.lo.u32 {g0}, {warp}, {s.warp_groups if s.split_groups else 0};")
        e(f"mul.lo.u32 {step0}, {warp}, {s.warp_groups * s.steps if s.split_groups else s.warp_steps};")
        # running pointers: A rows (+ 4·tq + 32·step0), weight steps per tile, scales per tile and group,
        # row scales / sums per group
        ko = r("ko", "b64")
        e(f"mul.wide.u32 {ko}, {step0}, {K_STEP};")
        tq4 = r("tq4", "b64")
        e(f"mul.wide.u32 {tq4}, {tq}, 4;")
        e(f"add.u64 {ko}, {ko}, {tq4};")
        a_ptr = []
        for h in range(2):
            off, ap = r(f"ao{h}", "b64"), r(f"ap{h}", "b64")
            e(f"mul.wide.u32 {off}, {safe[h]}, {p * s.k};")
            e(f"add.u64 {ap}, {ptr['a']}, {off};")
            e(f"add.u64 {ap}, {ap}, {ko};")
            a_ptr.append(ap)
        lane_off, wso = r("lo", "b64"), r("wso", "b64")
        e(f"mul.wide.u32 {lane_off}, {lane}, {s.lane_bytes};")
        e(f"mul.wide.u32 {wso}, {step0}, {WARP * s.lane_bytes};")
        e(f"add.u64 {lane_off}, {lane_off}, {wso};")
        tq8, gso = r("tq8", "b64"), r("gso", "b64")
        e(f"mul.wide.u32 {tq8}, {tq}, 8;")
        e(f"mul.wide.u32 {gso}, {g0}, 32;")
        e(f"add.u64 {tq8}, {tq8}, {gso};")
        w_ptr, sc_ptr, of_ptr = [], [], []
        for j in range(nt):
            tile, wo, wp = r(f"tile{j}", "b32"), r(f"wo{j}", "b64"), r(f"wp{j}", "b64")
            e(f"add.u32 {tile}, {t0}, {j};")
            e(f"mul.wide.u32 {wo}, {tile}, {s.ksteps * WARP * s.lane_bytes};")
            e(f"add.u64 {wp}, {ptr['w']}, {wo};")
            e(f"add.u64 {wp}, {wp}, {lane_off};")
            w_ptr.append(wp)
            so = r(f"so{j}", "b64")
            e(f"mul.wide.u32 {so}, {tile}, {s.groups * 8 * 4};")
            e(f"add.u64 {so}, {so}, {tq8};")
            for name, lst in (("scale", sc_ptr), *((("off", of_ptr),) if s.offset else ())):
                q = r(f"{name}p{j}", "b64")
                e(f"add.u64 {q}, {ptr[name]}, {so};")
                lst.append(q)
        gs = s.groups if s.scale_per_group else 1
        s_ptr, x_ptr = [], []
        g4 = r("g4", "b64")
        e(f"mul.wide.u32 {g4}, {g0}, 4;")
        for h in range(2):
            q, o = r(f"sp{h}", "b64"), r(f"spo{h}", "b64")
            e(f"mul.wide.u32 {o}, {safe[h]}, {gs * 4};")
            e(f"add.u64 {q}, {ptr['s']}, {o};")
            if s.scale_per_group:
                e(f"add.u64 {q}, {q}, {g4};")
            s_ptr.append(q)
            if s.offset:
                q, o = r(f"xp{h}", "b64"), r(f"xpo{h}", "b64")
                e(f"mul.wide.u32 {o}, {safe[h]}, {s.groups * 4};")
                e(f"add.u64 {q}, {ptr['xs']}, {o};")
                e(f"add.u64 {q}, {q}, {g4};")
                x_ptr.append(q)
        if s.offset and not s.split_groups and s.split > 1:  # one group split over warps: one adds offset·xsum
            first = r("first", "pred")
            e(f"setp.eq.u32 {first}, {warp}, 0;")
            self.first_warp = first
        facc = {(j, i): r(f"F{j}_{i}", "f32") for j in range(nt) for i in range(4)}
        for f in facc.values():
            e(f"mov.f32 {f}, 0f00000000;")
        g = r("g", "b32")
        e(f"mov.u32 {g}, 0;")
        e("GROUP:")
        iacc = {(q, j, i): r(f"I{q}_{j}_{i}", "b32") for q in range(p) for j in range(nt) for i in range(4)}
        for v in iacc.values():
            e(f"mov.u32 {v}, 0;")
        blocks = s.warp_steps // s.unroll
        if blocks > 1:
            ks = r("ks", "b32")
            e(f"mov.u32 {ks}, 0;")
            e("STEP:")
        self.steps_block(a_ptr, w_ptr, valid, iacc)
        if blocks > 1:
            pk = r("pk", "pred")
            e(f"add.u32 {ks}, {ks}, 1;")
            e(f"setp.lt.u32 {pk}, {ks}, {blocks};")
            e(f"@{pk} bra STEP;")
        self.group_epilogue(s_ptr, x_ptr, sc_ptr, of_ptr, iacc, facc)
        pg = r("pg", "pred")
        e(f"add.u32 {g}, {g}, 1;")
        e(f"setp.lt.u32 {pg}, {g}, {s.warp_groups};")
        e(f"@{pg} bra GROUP;")
        if s.split > 1:
            self.reduce_warps(warp, lane, facc)
        self.store(ptr["y"], rows, valid, t0, tq, facc)
        e("ret;")

    def reduce_warps(self, warp: str, lane: str, facc: dict) -> None:
        """The warps' partial sums through shared memory: warps 1.. store theirs and leave, warp 0 adds
        them (in warp order) and goes on to the stores.  Each warp meets the barrier once."""
        s, e, r = self.s, self.e, self.r
        n = len(facc)
        self.shared["red"] = (16, (s.split - 1) * WARP * n * 4)
        pw, base, addr = r("pw", "pred"), r("sb", "b32"), r("sa", "b32")
        e(f"mov.u32 {base}, red;")
        e(f"setp.ne.u32 {pw}, {warp}, 0;")
        e(f"@{pw} bra PARTIAL;")
        e("bar.sync 0;")
        t = r("part", "f32")
        for w in range(1, s.split):
            e(f"mad.lo.u32 {addr}, {lane}, {n * 4}, {base};")
            e(f"add.u32 {addr}, {addr}, {(w - 1) * WARP * n * 4};")
            for i, f in enumerate(facc.values()):
                e(f"ld.shared.f32 {t}, [{addr}+{4 * i}];")
                e(f"add.rn.f32 {f}, {f}, {t};")
        e("bra REDUCED;")
        e("PARTIAL:")
        w1 = r("w1", "b32")
        e(f"sub.u32 {w1}, {warp}, 1;")
        e(f"mad.lo.u32 {addr}, {w1}, {WARP}, {lane};")
        e(f"mad.lo.u32 {addr}, {addr}, {n * 4}, {base};")
        for i, f in enumerate(facc.values()):
            e(f"st.shared.f32 [{addr}+{4 * i}], {f};")
        e("bar.sync 0;")
        e("ret;")
        e("REDUCED:")

    def steps_block(self, a_ptr: list[str], w_ptr: list[str], valid: list[str], iacc: dict) -> None:
        """``unroll`` K steps of 32: first every load (each slice's A fragment, each tile's B fragment, of
        every step: many loads in flight), then the mmas; the pointers move on by the steps."""
        s, e, r = self.s, self.e, self.r
        frag, bw = {}, {}
        for u in range(s.unroll):
            for q in range(s.slices):
                for word in range(4):  # rows gid / gid+8 alternate; the second half of K 16 bytes on
                    h, koff = word % 2, q * s.k + 16 * (word // 2) + K_STEP * u
                    v = r(f"A{u}_{q}_{word}", "b32")
                    e(f"ld.global.b32 {v}, [{a_ptr[h]}+{koff}];")
                    frag[u, q, word] = v
            for j in range(s.warp_tiles):
                b0, b1 = r(f"B{u}_{j}_0", "b32"), r(f"B{u}_{j}_1", "b32")
                woff = WARP * s.lane_bytes * u
                if s.nibbles:
                    e(f"ld.global.b32 {r(f'W{u}_{j}', 'b32')}, [{w_ptr[j]}+{woff}];")
                else:
                    e(f"ld.global.v2.b32 {{{b0}, {b1}}}, [{w_ptr[j]}+{woff}];")
                bw[u, j] = (b0, b1)
        for u in range(s.unroll):
            for q in range(s.slices):
                for word in range(4):
                    v = frag[u, q, word]
                    e(f"selp.b32 {v}, {v}, 0, {valid[word % 2]};")
            if s.nibbles:
                for j in range(s.warp_tiles):
                    wv, hi = f"%W{u}_{j}", r(f"Wh{u}_{j}", "b32")
                    e(f"shr.u32 {hi}, {wv}, 4;")
                    for out, src in zip(bw[u, j], (wv, hi)):  # per byte: ((c & 15) + 120) ^ 128 = c - 8
                        e(f"and.b32 {out}, {src}, 252645135;")  # 0x0F0F0F0F
                        e(f"add.u32 {out}, {out}, 2021161080;")  # 0x78787878
                        e(f"xor.b32 {out}, {out}, -2139062144;")  # 0x80808080
            for q in range(s.slices):
                a = ", ".join(frag[u, q, w] for w in range(4))
                for j in range(s.warp_tiles):
                    d = ", ".join(iacc[q, j, i] for i in range(4))
                    e(f"{MMA} {{{d}}}, {{{a}}}, {{{bw[u, j][0]}, {bw[u, j][1]}}}, {{{d}}};")
        for ap in a_ptr:
            e(f"add.u64 {ap}, {ap}, {K_STEP * s.unroll};")
        for wp in w_ptr:
            e(f"add.u64 {wp}, {wp}, {WARP * s.lane_bytes * s.unroll};")

    def group_epilogue(self, s_ptr: list[str], x_ptr: list[str], sc_ptr: list[str], of_ptr: list[str],
                       iacc: dict, facc: dict) -> None:
        """The group's int32 results into the f32 accumulators; the per-group pointers move on."""
        s, e, r = self.s, self.e, self.r
        sv, xv = [], []
        for h in range(2):
            v = r(f"sv{h}", "f32")
            e(f"ld.global.f32 {v}, [{s_ptr[h]}];")
            sv.append(v)
            if s.offset:
                v = r(f"xv{h}", "f32")
                e(f"ld.global.f32 {v}, [{x_ptr[h]}];")
                if self.first_warp is not None:  # the group's offset·xsum once, from warp 0
                    e(f"selp.f32 {v}, {v}, 0f00000000, {self.first_warp};")
                xv.append(v)
        radix = f32_hex(1.0 / SLICE_RADIX)
        for j in range(s.warp_tiles):
            sc = [r(f"sc{j}_{c}", "f32") for c in range(2)]
            e(f"ld.global.v2.f32 {{{sc[0]}, {sc[1]}}}, [{sc_ptr[j]}];")
            if s.offset:
                of = [r(f"of{j}_{c}", "f32") for c in range(2)]
                e(f"ld.global.v2.f32 {{{of[0]}, {of[1]}}}, [{of_ptr[j]}];")
            for i in range(4):
                h, c = i // 2, i % 2  # c0, c1: row gid; c2, c3: row gid+8; channels 2tq, 2tq+1
                total = r("tot", "f32")
                d = r("dig", "f32")
                for q in reversed(range(s.slices)):  # Σ_q d_q · 254^-q, Horner from the last slice
                    if q == s.slices - 1:
                        e(f"cvt.rn.f32.s32 {total}, {iacc[q, j, i]};")
                    else:
                        e(f"cvt.rn.f32.s32 {d}, {iacc[q, j, i]};")
                        e(f"fma.rn.f32 {total}, {total}, {radix}, {d};")
                kk = r("kk", "f32")
                e(f"mul.rn.f32 {kk}, {sc[c]}, {sv[h]};")
                e(f"fma.rn.f32 {facc[j, i]}, {total}, {kk}, {facc[j, i]};")
                if s.offset:
                    e(f"fma.rn.f32 {facc[j, i]}, {of[c]}, {xv[h]}, {facc[j, i]};")
        for q in [*sc_ptr, *of_ptr]:
            e(f"add.u64 {q}, {q}, 32;")
        if s.scale_per_group:
            for q in s_ptr:
                e(f"add.u64 {q}, {q}, 4;")
        for q in x_ptr:
            e(f"add.u64 {q}, {q}, 4;")

    def store(self, y: str, rows: list[str], valid: list[str], t0: str, tq: str, facc: dict) -> None:
        """Each lane's 2 rows × 2 channels of every tile, where row < M and channel < N."""
        s, e, r = self.s, self.e, self.r
        ch, pc, ok, yo, ya = r("ch", "b32"), r("pc", "pred"), r("ok", "pred"), r("yo", "b64"), r("ya", "b64")
        base = r("chb", "b32")
        e(f"shl.b32 {base}, {t0}, 3;")
        e(f"shl.b32 {ch}, {tq}, 1;")
        e(f"add.u32 {base}, {base}, {ch};")
        for j in range(s.warp_tiles):
            for i in range(4):
                h, c = i // 2, i % 2
                e(f"add.u32 {ch}, {base}, {8 * j + c};")
                e(f"setp.lt.u32 {pc}, {ch}, {s.n};")
                e(f"and.pred {ok}, {pc}, {valid[h]};")
                e(f"mad.wide.u32 {yo}, {rows[h]}, {s.n * 4}, {y};")
                e(f"mul.wide.u32 {ya}, {ch}, 4;")
                e(f"add.u64 {ya}, {ya}, {yo};")
                e(f"@{ok} st.global.f32 [{ya}], {facc[j, i]};")


__all__ = ["ARCHS", "MMA", "CudaKernelSpec", "PtxWriter", "f32_hex", "parse_shape", "ptx_executable"]
