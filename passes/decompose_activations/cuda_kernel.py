"""The fused MSD linear kernel for NVIDIA tensor cores (sm_80 and later), as PTX text.

IREE 3.13's CUDA backend has no int8 MMA intrinsic (``docs/targets.md``): left to it, MSD's int8
matmuls become scalar code.  This kernel is what the CPU kernel (:mod:`.cpu_kernel`) is for x86 and
Arm, written for ``mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32``; it computes, for every
activation row ``m`` and output channel ``n``, the same arithmetic in the same order::

    y[m, n] = Σ_g  (scale[n, g] · s[m, g]) · Σ_p 254^-p · Σ_{k∈g} a_p[m, k] · w[n, k]
              (+ offset[n, g] · xsum[m, g])

One warp (the whole workgroup: 32 threads) owns 16 activation rows × ``8·warp_tiles`` channels.  For each
32-wide step of K it loads every slice's A fragment (four 32-bit words per lane, straight from the
row-major codes ``a [M, P, K]``), each channel tile's B fragment — pre-packed at compile time into
mma's lane order, so a lane reads 8 contiguous bytes (or 4 bytes of 4-bit codes, unpacked with three
32-bit operations per word) — and issues one ``mma`` per (slice, tile) into int32 accumulators.
At the end of each group of K the accumulators go to f32, are combined over the slices (Horner,
radix 1/254), scaled by the weight's scale times the row's scale and, with a zero point or min,
``offset · xsum`` is added; no partial leaves the registers.

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

Workgroups: ``(T / warp_tiles, ceil(M / 16), 1)``, M dynamic (a push constant).  The kernel needs K in
steps of 32 and groups of K that are multiples of 32 (GGUF's blocks, torchao's 32/64/128): other
shapes keep IREE's lowering.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from .cpu_kernel import SLICE_RADIX, SYMBOL_PREFIX

MMA = "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32"
K_STEP = 32  # K of one mma
ROWS = 16  # activation rows of one mma (and of one warp)
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
    warp_tiles: int = 2  # channel tiles of 8 per warp
    arch: str = "sm_80"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"no tensor-core MSD kernel for {self.arch!r} (int8 mma.sync m16n8k32 needs one of: "
                             f"{', '.join(ARCHS)})")
        if self.k % self.group or self.group % K_STEP:
            raise ValueError(f"K={self.k} in groups of {self.group}: the tensor-core kernel needs groups that divide"
                             f" K and are multiples of {K_STEP}")
        if not 1 <= self.slices <= 3 or self.warp_tiles < 1 or self.n < 1:
            raise ValueError(f"slices={self.slices}, warp_tiles={self.warp_tiles}, n={self.n}: out of range")

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
    def tiles(self) -> int:
        """Tiles of 8 channels, padded to whole warps (the padding's weights and scales are zero)."""
        return -(-self.n // (8 * self.warp_tiles)) * self.warp_tiles

    lanes: ClassVar[int] = 8  # channels per tile (the scale operands' innermost dim)
    act_bias: ClassVar[int] = 0  # the activation codes are stored as they are (signed bytes)
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
                f"{'_i4' if self.nibbles else ''}_t{self.warp_tiles}")

    # -- operands, in the dispatch's order
    def roles(self) -> list[str]:
        return ["a", "s", *(["xs"] if self.offset else []), "w", "scale", *(["off"] if self.offset else [])]

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
        """The ``hal.executable.source`` that carries the PTX into IREE's CUDA module: one export (the
        PTX entry of the same name) with the operands and ``y`` as storage buffers and M as the one push
        constant; the dispatch passes M (i32) after the tensors.  The object's ``path`` is never read
        (``data`` holds the text) but IREE 3.13 prints an object without one in a form it cannot parse
        back."""
        n_in = len(self.roles())
        bindings = ", ".join(["#hal.pipeline.binding<storage_buffer, ReadOnly>"] * n_in
                             + ["#hal.pipeline.binding<storage_buffer>"])
        x = self.tiles // self.warp_tiles
        return "\n".join([
            f"hal.executable.source private @{self.symbol} <objects = #hal.executable.objects<{{",
            '  #hal.executable.target<"cuda", "cuda-nvptx-fb"> = [',
            f'    #hal.executable.object<{{path = "{self.symbol}.ptx", data = {mlir_string(self.ptx())}}}>',
            "  ]",
            "}>> {",
            f"  hal.executable.export public @{self.symbol} ordinal(0)",
            f"      layout(#hal.pipeline.layout<constants = 1, bindings = [{bindings}]>)",
            "      count(%device: !hal.device, %m: index) -> (index, index, index) {",
            f"    %x = arith.constant {x} : index",
            "    %one = arith.constant 1 : index",
            f"    %y = affine.apply affine_map<()[s0] -> (s0 ceildiv {ROWS})>()[%m]",
            "    hal.return %x, %y, %one : index, index, index",
            f"  }} <workgroup_size = [{WARP} : index, 1 : index, 1 : index]>",
            "}",
        ])

    def ptx(self) -> str:
        """The kernel's PTX module (entry ``symbol``; parameters: one pointer per operand, then ``y``, then
        M as a 32-bit value)."""
        return _Writer(self).text()


class _Writer:
    """Builds the PTX text; registers are declared by name as they are first used."""

    def __init__(self, spec: CudaKernelSpec) -> None:
        self.s = spec
        self.regs: dict[str, str] = {}  # name -> PTX type
        self.body: list[str] = []

    def r(self, name: str, kind: str) -> str:
        """The register ``%name`` of ``kind`` (``b32``, ``b64``, ``f32``, ``pred``), declared once."""
        if self.regs.setdefault(name, kind) != kind:
            raise AssertionError(f"register {name} used as {kind} and {self.regs[name]}")
        return f"%{name}"

    def e(self, line: str) -> None:
        self.body.append(f"\t{line}" if not line.endswith(":") else line)

    def text(self) -> str:
        s = self.s
        params = [*s.roles(), "y"]
        self.kernel(params)
        decls = [f"\t.reg .{kind} %{name};" for name, kind in self.regs.items()]
        plist = ",\n".join([*(f"\t.param .u64 {s.symbol}_{p}" for p in params), f"\t.param .u32 {s.symbol}_m"])
        return "\n".join([
            f"// msd: fused MSD linear ({MMA}), written by msd.passes.decompose_activations.cuda_kernel",
            f".version {ARCHS[s.arch]}", f".target {s.arch}", ".address_size 64", "",
            f".visible .entry {s.symbol}(", plist, ")", f".maxntid {WARP}, 1, 1", "{",
            *decls, *self.body, "}", ""])

    def kernel(self, params: list[str]) -> None:
        s, e, r = self.s, self.e, self.r
        p, nt = s.slices, s.warp_tiles
        ptr = {}
        for name in params:
            raw = r(f"p_{name}", "b64")
            e(f"ld.param.u64 {raw}, [{s.symbol}_{name}];")
            ptr[name] = r(f"g_{name}", "b64")
            e(f"cvta.to.global.u64 {ptr[name]}, {raw};")
        m = r("m", "b32")
        e(f"ld.param.u32 {m}, [{s.symbol}_m];")
        lane, gid, tq = r("lane", "b32"), r("gid", "b32"), r("tq", "b32")
        e(f"mov.u32 {lane}, %tid.x;")
        e(f"shr.u32 {gid}, {lane}, 2;")
        e(f"and.b32 {tq}, {lane}, 3;")
        t0, m0 = r("t0", "b32"), r("m0", "b32")
        e(f"mov.u32 {t0}, %ctaid.x;")
        e(f"mul.lo.u32 {t0}, {t0}, {nt};")  # the warp's first channel tile
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
        # running pointers: A rows (+ 4·tq), weight steps per tile, scales per tile, row scales / sums
        tq4 = r("tq4", "b64")
        e(f"mul.wide.u32 {tq4}, {tq}, 4;")
        a_ptr = []
        for h in range(2):
            off, ap = r(f"ao{h}", "b64"), r(f"ap{h}", "b64")
            e(f"mul.wide.u32 {off}, {safe[h]}, {p * s.k};")
            e(f"add.u64 {ap}, {ptr['a']}, {off};")
            e(f"add.u64 {ap}, {ap}, {tq4};")
            a_ptr.append(ap)
        lane_off = r("lo", "b64")
        e(f"mul.wide.u32 {lane_off}, {lane}, {s.lane_bytes};")
        tq8 = r("tq8", "b64")
        e(f"mul.wide.u32 {tq8}, {tq}, 8;")
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
        for h in range(2):
            q, o = r(f"sp{h}", "b64"), r(f"spo{h}", "b64")
            e(f"mul.wide.u32 {o}, {safe[h]}, {gs * 4};")
            e(f"add.u64 {q}, {ptr['s']}, {o};")
            s_ptr.append(q)
            if s.offset:
                q, o = r(f"xp{h}", "b64"), r(f"xpo{h}", "b64")
                e(f"mul.wide.u32 {o}, {safe[h]}, {s.groups * 4};")
                e(f"add.u64 {q}, {ptr['xs']}, {o};")
                x_ptr.append(q)
        facc = {(j, i): r(f"F{j}_{i}", "f32") for j in range(nt) for i in range(4)}
        for f in facc.values():
            e(f"mov.f32 {f}, 0f00000000;")
        g = r("g", "b32")
        e(f"mov.u32 {g}, 0;")
        e("GROUP:")
        iacc = {(q, j, i): r(f"I{q}_{j}_{i}", "b32") for q in range(p) for j in range(nt) for i in range(4)}
        for v in iacc.values():
            e(f"mov.u32 {v}, 0;")
        if s.steps > 1:
            ks = r("ks", "b32")
            e(f"mov.u32 {ks}, 0;")
            e("STEP:")
        self.step(a_ptr, w_ptr, valid, iacc)
        if s.steps > 1:
            pk = r("pk", "pred")
            e(f"add.u32 {ks}, {ks}, 1;")
            e(f"setp.lt.u32 {pk}, {ks}, {s.steps};")
            e(f"@{pk} bra STEP;")
        self.group_epilogue(s_ptr, x_ptr, sc_ptr, of_ptr, iacc, facc)
        pg = r("pg", "pred")
        e(f"add.u32 {g}, {g}, 1;")
        e(f"setp.lt.u32 {pg}, {g}, {s.groups};")
        e(f"@{pg} bra GROUP;")
        self.store(ptr["y"], rows, valid, t0, tq, facc)
        e("ret;")

    def step(self, a_ptr: list[str], w_ptr: list[str], valid: list[str], iacc: dict) -> None:
        """One K step of 32: the A fragment of every slice, the B fragment of every tile, the mmas; the
        pointers move on by one step."""
        s, e, r = self.s, self.e, self.r
        frag = {}
        for q in range(s.slices):
            for word in range(4):  # rows gid / gid+8 alternate; the second half of K 16 bytes on
                h, koff = word % 2, q * s.k + 16 * (word // 2)
                v = r(f"A{q}_{word}", "b32")
                e(f"ld.global.b32 {v}, [{a_ptr[h]}+{koff}];")
                e(f"selp.b32 {v}, {v}, 0, {valid[h]};")
                frag[q, word] = v
        bw = {}
        for j in range(s.warp_tiles):
            b0, b1 = r(f"B{j}_0", "b32"), r(f"B{j}_1", "b32")
            if s.nibbles:
                wv, hi = r(f"W{j}", "b32"), r(f"Wh{j}", "b32")
                e(f"ld.global.b32 {wv}, [{w_ptr[j]}];")
                e(f"shr.u32 {hi}, {wv}, 4;")
                for out, src in ((b0, wv), (b1, hi)):  # per byte: ((c & 15) + 120) ^ 128 = c - 8, no carry out
                    e(f"and.b32 {out}, {src}, 252645135;")  # 0x0F0F0F0F
                    e(f"add.u32 {out}, {out}, 2021161080;")  # 0x78787878
                    e(f"xor.b32 {out}, {out}, -2139062144;")  # 0x80808080
            else:
                e(f"ld.global.v2.b32 {{{b0}, {b1}}}, [{w_ptr[j]}];")
            bw[j] = (b0, b1)
        for q in range(s.slices):
            a = ", ".join(frag[q, w] for w in range(4))
            for j in range(s.warp_tiles):
                d = ", ".join(iacc[q, j, i] for i in range(4))
                e(f"{MMA} {{{d}}}, {{{a}}}, {{{bw[j][0]}, {bw[j][1]}}}, {{{d}}};")
        for ap in a_ptr:
            e(f"add.u64 {ap}, {ap}, {K_STEP};")
        for wp in w_ptr:
            e(f"add.u64 {wp}, {wp}, {WARP * s.lane_bytes};")

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


__all__ = ["ARCHS", "MMA", "CudaKernelSpec", "f32_hex"]
