"""The fused MSD linear kernel for CPUs (x86 VNNI and AVX2, Arm dot product and int8 matrix multiply),
as MLIR text: a ``stream.executable`` IREE compiles.

One dispatch computes, for every activation row ``m`` and output channel ``n``::

    y[m, n] = Σ_g  scale[n, g] · s[m, g] · Σ_p 254^-p · Σ_{k∈g} a_p[m, k] · w[n, k]
              (+ offset[n, g] · xsum[m, g])

from the activation slices ``a_p`` (int8 codes, quantized once per row by the ops before the
dispatch), the integer weight ``w`` (pre-packed once, when the module loads), the per-(channel,
group) float scale and, for weights with a zero point or min, the offset times the row's group sum.
No per-group partial leaves the registers: each group's integer dots go to f32 and into the row's
accumulator right away, and all slices of a row reuse each weight vector loaded.  A scale ``s`` per row
multiplies the row's sum once, after the group loop (one multiply per group fewer); the offset term is
summed by a second loop over the groups, whose accumulators would not fit beside the dots': a group's
f32 work per (tile, row) is 4 operations for p=2 with a scale per row, 5 with one per group (6 when
the offset and the scale product were in the group loop).

Layouts (``W`` = lanes: 16 for AVX-512, 8 for 256-bit AVX-VNNI and AVX2, 4 for Arm NEON;
``NT = ceil(N/W)``, ``G`` groups of ``g``):

- ``a``: ``[M, P, code_row(K)] i8`` — the activation's signed codes (a row padded by a cache line
  when K is a multiple of 2048, :func:`code_row`); the kernel broadcasts four consecutive bytes (one
  32-bit word) to every lane;
- ``s``: ``[M, 1]`` (one scale per row) or ``[M, G]`` f32, the first slice's scale;
- ``w``: ``[NT, G, g/4, W·4] i8`` — lane ``j`` of a vector holds 4 consecutive K codes of channel
  ``n0 + j`` (the rows past N are zero); for ``smmla`` ``[NT, G, g/8, 32]``, a step being two channel
  pairs × 2 channels × 8 consecutive codes.  4-bit codes (proven in [-8, 7]) are stored two per byte,
  ``code + 8``: step ``j`` of a group in the low nibbles, step ``j + S/2`` in the high ones (``S``
  steps per group), so the step axis is halved;
- with a weight bias ``b`` (:meth:`Isa.weight_bias`: VNNI, and AVX2 on 4-bit codes), the weight codes
  are stored ``+ b`` and read as unsigned bytes (4-bit ones then unpack with a mask and a shift), and
  ``as [M, P, G] i32`` = ``-b · Σ_{k∈g} a_p[m, k]`` (from the quantizer) is each accumulator's start:
  broadcast from memory, shared by every channel tile;
- ``scale`` (and ``offset``): ``[NT, G, W] f32``; ``xsum``: ``[M, G] f32``;
- ``y``: ``[M, N] f32``; the last channel tile is stored masked when ``W`` does not divide N.

Workgroups split the channel tiles; M (the prompt length) is dynamic, in blocks of ``rows`` rows and
a one-row remainder loop.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Isa:
    """How one variant does the byte dot product ``acc[j] += Σ_{i<4} a[4j+i] · w[4j+i]``."""

    lanes: int  # i32 lanes per vector (the channels of a tile)
    # "vpdpbusd": one VNNI instruction (u8 × s8); "sdot": Arm's (s8 × s8); "maddubs": AVX2's form;
    # "smmla": Arm's int8 matrix multiply (a 2×8 by 8×2 block of s8 into a 2×2 block of i32)
    dot: str
    intrinsic: str = ""  # the LLVM intrinsic of a one-instruction dot (VNNI, Arm)
    k_step: int = 4  # K per lane per instruction: 4 for the dot products, 8 for smmla
    # Intel AMX (AMX-INT8): blocks of 16 rows go through the tile unit (``tdpbsud``), the rows left
    # over (M mod 16, and all of a short prompt) through this ISA's own dot product
    amx: bool = False

    def weight_bias(self, nibbles: bool) -> int:
        """What the weight codes are stored plus when the dot reads them as its unsigned bytes (VNNI's
        ``vpdpbusd`` multiplies unsigned × signed bytes: weight code + 128, or + 8 for 4-bit codes; AVX2's
        ``vpmaddubsw`` on 4-bit codes + 8, which then need no sign trick), 0 when it reads signed weight
        codes.  The bias comes back out through the accumulator's start ``-bias · Σ_{k∈g} a[k]``, which
        the activation's quantizer computes once per (row, slice, group)."""
        if self.dot == "vpdpbusd":
            return 8 if nibbles else 128
        return 8 if self.dot == "maddubs" and nibbles else 0

    @property
    def arm(self) -> bool:
        """An Arm (NEON) variant, else x86."""
        return self.dot in ("sdot", "smmla")

    @property
    def rows(self) -> int:
        """Activation rows per register block (32 registers for AVX-512 and Arm, 16 ymm for AVX2)."""
        return 4 if self.lanes != 8 else 2


ISAS: dict[str, Isa] = {
    # AMX tiles for the rows in blocks of 16, AVX-512 VNNI for the rest (same operands, same layouts)
    "amx-int8": Isa(16, "vpdpbusd", "llvm.x86.avx512.vpdpbusd.512", amx=True),
    "avx512-vnni": Isa(16, "vpdpbusd", "llvm.x86.avx512.vpdpbusd.512"),
    "avx-vnni": Isa(8, "vpdpbusd", "llvm.x86.avx512.vpdpbusd.256"),
    # |w| (u8) × sign(w)·a (s8) → pairs summed to i16 (vpmaddubsw: at most 2·128·127, no saturation),
    # then pairs of i16 summed to i32 (vpmaddwd by ones): exact for every int8 weight and code in ±127
    "avx2": Isa(8, "maddubs"),
    # Armv8.2+ dot product (SDOT, FEAT_DotProd): signed bytes on both sides, 4 lanes of 128-bit NEON
    "neon-dot": Isa(4, "sdot", "llvm.aarch64.neon.sdot.v4i32.v16i8"),
    # Armv8.6 int8 matrix multiply (SMMLA, FEAT_I8MM): two activation rows (or slices) × 8 K × two
    # channels per instruction, twice the multiplies of SDOT; a tile is 4 channels, as two pairs
    "neon-i8mm": Isa(4, "smmla", "llvm.aarch64.neon.smmla.v4i32.v16i8", k_step=8),
}
SLICE_RADIX = 254.0
# How far ahead of its reads the kernel asks for its weight codes (a software prefetch per register block
# and K step, one cache line per channel tile).  `python benchmarks/kernel.py --shapes 4096x44032 --ms 1
# --cold --prefetch 0,2048,4096,8192,16384` on this repo's 2-core AVX-512 VM (int4 groups of 32, the
# weights from DRAM): 20.5, 23.6, 24.2, 25.1 and 23.6 GB/s (75% -> 92% of the read bandwidth).  A try
# that also prefetched the scales did not help and was not kept.
PREFETCH_BYTES = 8192
AMX_ROWS = 16  # activation rows per AMX block (a tile's rows)
# x86-64 Linux: the system call, request and feature that grant a process the AMX tile state
SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18
AMX_K = 64  # K per AMX tile product at most (a tile row's bytes)
# How far ahead the AMX blocks' staging asks for a tile's weight codes (0: not).  The kernel alone, int4 in
# groups of 32, p=2, M=512 (`python benchmarks/kernel.py --isas amx-int8,avx512-vnni --shapes
# 4096x3840,4096x4096,4096x11008 --ms 512 --amx-prefetch 0,1024,4096 --rounds 3`), GOP/s without / 1024 /
# 4096: 733 / 815 / 808, 1180 / 1248 / 1233, 917 / 923 / 936 (VNNI kernel: 751, 919, 881).
AMX_PREFETCH_BYTES = 1024
# Groups per AMX block at most (KernelSpec.amx_group_block): `python benchmarks/kernel.py --isas amx-int8 --shapes
# 4096x11008 --ms 512 --amx-groups 1,2,4,8,16` measured 2 and 4 fastest (docs/benchmarks.md)
AMX_GROUP_BLOCK = 2
SYMBOL_PREFIX = "msd_"  # every kernel executable's name starts so
ROLES_ATTR = "msd.operand_roles"  # on a kernel's flow.dispatch: what each tensor operand is (KernelSpec.roles)
ACTIVATION_ROLES = ("a", "s", "xs", "as")  # the operands computed from the activation, per call


def code_row(k: int) -> int:
    """The length of one slice's row in the activation codes ``a`` ``[M, P, code_row(K)] i8``: K, and one
    cache line more when K is a multiple of 2048.  A register block reads rows × slices code rows at once;
    at a stride that is a multiple of 4 KiB they all fall in the same L1 set and evict each other.  A small
    gain: ``benchmarks/kernel.py --shapes 4096x11008 --ms 512 --code-rows padded,unpadded`` measured 1-4%
    (int8 and int4 groups of 32, both activation-scale forms)."""
    return k + 64 if k % 2048 == 0 else k


def linear_roles(offset: bool, code_sums: bool) -> list[str]:
    """The operands of a fused linear kernel's dispatch, in order: the activation side (codes ``a``,
    scales ``s``, group sums ``xs`` with an offset, code sums ``as`` with a weight bias), then the weight
    side (codes ``w``, ``scale``, ``off``).  Shared by the CPU and the tensor-core kernels."""
    return ["a", "s", *(["xs"] if offset else []), *(["as"] if code_sums else []), "w", "scale",
            *(["off"] if offset else [])]


@dataclass(frozen=True)
class KernelSpec:
    """One instance of the kernel: everything that is static in its code."""

    isa: str
    n: int  # output channels
    k: int  # reduction length
    group: int  # K per scale group (K itself when the scale is per channel)
    slices: int
    scale_per_group: bool  # s is [M, G] (activation scale per row and group), else [M, 1]
    offset: bool  # the weight has a zero point / min: offset and xsum operands
    rows: int = 4  # activation rows per register block
    workgroups: int = 1  # the register blocks are shared out between this many, at most one apart
    cols: int = 1  # channel tiles per register block
    nibbles: bool = False  # 4-bit weight codes (in [-8, 7]), two per byte: w is [NT, G, g/8, W·4]

    def __post_init__(self) -> None:
        if self.isa not in ISAS:
            raise ValueError(f"unknown kernel ISA {self.isa!r} (known: {', '.join(ISAS)})")
        step = ISAS[self.isa].k_step
        if self.group % step or self.k % self.group:
            raise ValueError(f"K={self.k} in groups of {self.group}: groups must divide K and be multiples of {step}")
        if self.nibbles and self.group % (2 * step):
            raise ValueError(f"4-bit weights are packed in pairs of {step}-code steps: group {self.group} is not a"
                             f" multiple of {2 * step}")
        if not 1 <= self.workgroups <= self.blocks:
            raise ValueError(f"workgroups={self.workgroups}: the kernel has {self.blocks} register blocks to share out"
                             " (at least one each)")

    @property
    def lanes(self) -> int:
        return ISAS[self.isa].lanes

    @property
    def weight_bias(self) -> int:
        return ISAS[self.isa].weight_bias(self.nibbles)

    @property
    def tiles(self) -> int:
        """Channel tiles, padded to whole register blocks (the padding's weights are zero, its stores masked)."""
        return -(-self.n // (self.lanes * self.cols)) * self.cols

    @property
    def groups(self) -> int:
        return self.k // self.group

    @property
    def blocks(self) -> int:
        """Register blocks of ``cols`` channel tiles."""
        return self.tiles // self.cols

    @property
    def symbol(self) -> str:
        """The executable's name: one per distinct spec in a module."""
        return (f"{SYMBOL_PREFIX}linear_{self.isa.replace('-', '_')}_n{self.n}_k{self.k}_g{self.group}_p{self.slices}"
                f"{'_sg' if self.scale_per_group else ''}{'_off' if self.offset else ''}_r{self.rows}"
                f"_c{self.cols}_w{self.workgroups}{'_i4' if self.nibbles else ''}")

    # -- operands, in the dispatch's order
    def roles(self) -> list[str]:
        """What each operand is (:func:`linear_roles`)."""
        return linear_roles(self.offset, bool(self.weight_bias))

    def operand_types(self) -> list[str]:
        """The tensor types of the dispatch's operands (``?`` = M), in order."""
        w, nt, gr = self.lanes, self.tiles, self.groups
        types = [f"tensor<?x{self.slices}x{code_row(self.k)}xi8>", f"tensor<?x{gr if self.scale_per_group else 1}xf32>"]
        if self.offset:
            types.append(f"tensor<?x{gr}xf32>")
        if self.weight_bias:
            types.append(f"tensor<?x{self.slices}x{gr}xi32>")
        types.append(f"tensor<{nt}x{gr}x{self.weight_steps}x{self.step_bytes}xi8>")
        types.append(f"tensor<{nt}x{gr}x{w}xf32>")
        if self.offset:
            types.append(f"tensor<{nt}x{gr}x{w}xf32>")
        return types

    @property
    def k_step(self) -> int:
        return ISAS[self.isa].k_step

    @property
    def amx(self) -> bool:
        return ISAS[self.isa].amx

    @property
    def amx_chunk(self) -> int:
        """K per AMX tile product: the largest multiple of 4 that divides the group and is at most 64 (a
        tile row's 64 bytes).
        With 4-bit codes a group of several chunks has an even number of them (a chunk then holds only
        low-nibble or only high-nibble steps)."""
        g = self.group
        return max(d for d in range(4, min(g, AMX_K) + 1, 4)
                   if g % d == 0 and (not self.nibbles or d == g or (g // d) % 2 == 0))

    @property
    def amx_group_block(self) -> int:
        """Groups per AMX block (their products first, then their f32 work): a divisor of the groups, at
        most 16, even where one is, and small enough that the staged weight codes and the stored results
        fit 40 KiB of stack; 1 when a group has several chunks."""
        if self.group > self.amx_chunk:
            return 1
        g = self.groups
        per_group = 2 * (self.group * 16 + self.slices * 1024)  # two slots of staged codes and stored results
        fits = [d for d in range(1, AMX_GROUP_BLOCK + 1) if g % d == 0 and d * per_group <= 40960]
        even = [d for d in fits if d % 2 == 0]
        return max(even or fits)

    @property
    def amx_sets(self) -> int:
        """Sets of C tiles the products alternate between (2 when the tiles fit: 3 slices do not)."""
        return 2 if self.amx_group_block % 2 == 0 and 3 * self.slices + 2 <= 8 else 1

    @property
    def amx_staged(self) -> int:
        """Chunks whose weight codes are staged at once: the block's groups (one chunk each), or up to 8
        chunks of a group of several (a divisor of its chunks, or of a half's with 4-bit codes)."""
        cpg = self.group // self.amx_chunk
        if cpg == 1:
            return self.amx_group_block
        per = cpg // 2 if self.nibbles else cpg
        return max(d for d in range(1, 9) if per % d == 0)

    @property
    def weight_steps(self) -> int:
        """Weight steps per (tile, group): one per ``k_step`` codes of K, or per twice that with nibbles."""
        return self.group // (self.k_step * (2 if self.nibbles else 1))

    @property
    def step_bytes(self) -> int:
        """Bytes of one weight step of a tile: ``lanes × k_step`` codes (or two steps' nibbles)."""
        return self.lanes * self.k_step

    def result_type(self) -> str:
        return f"tensor<?x{self.n}xf32>"

    def executable(self, emulate: bool = False) -> str:
        """The ``stream.executable`` text.  ``emulate``: the Arm instructions (``sdot``, ``smmla``)
        written as portable vector arithmetic with the same semantics, so that the kernel's data flow
        can be checked numerically on a CPU without them (the tests do; never used to compile a model)."""
        return _Writer(self, emulate).executable()

    def standalone_module(self, emulate: bool = False) -> str:
        """A module whose function ``linear`` takes the operands (:meth:`operand_types`) and dispatches the
        kernel alone: what the tests and ``benchmarks/kernel.py`` compile."""
        types = self.operand_types()
        args = ", ".join(f"%a{i}: {t}" for i, t in enumerate(types))
        dims = ", ".join(f"{t}{{%m}}" if "?" in t else t for t in types)
        names = ", ".join(f"%a{i}" for i in range(len(types)))
        out, sym = self.result_type(), self.symbol
        return (f"module {{\n{self.executable(emulate)}\nutil.func public @linear({args}) -> {out} {{\n"
                f"  %c0 = arith.constant 0 : index\n  %m = tensor.dim %a0, %c0 : {types[0]}\n"
                f"  %y = flow.dispatch @{sym}::@{sym}[%m]({names}, %m) : ({dims}, index) -> {out}{{%m}}\n"
                f"  util.return %y : {out}\n}}\n}}\n")


class _Writer:
    """Builds the kernel's text line by line (SSA names are made unique per register block)."""

    def __init__(self, spec: KernelSpec, emulate: bool = False) -> None:
        self.s = spec
        self.emulate = emulate and ISAS[spec.isa].arm
        self.lines: list[str] = []

    def emit(self, line: str) -> None:
        self.lines.append(line)

    def unpack_nibbles(self, ind: str, w: str) -> None:
        """``{w}l`` / ``{w}h``: the 4-bit codes in the low / high nibbles of the bytes ``w`` (stored
        ``code + 8``): as they are stored (unsigned, 0..15) with a weight bias, else signed."""
        vb = self.vb
        if self.s.weight_bias:
            self.emit(f"{ind}{w}l = arith.andi {w}, %lo4 : {vb}")
            self.emit(f"{ind}{w}h = arith.shrui {w}, %sh4 : {vb}")
            return
        self.emit(f"{ind}{w}m = arith.andi {w}, %lo4 : {vb}")
        self.emit(f"{ind}{w}l = arith.subi {w}m, %off4 : {vb}")
        self.emit(f"{ind}{w}s = arith.shrui {w}, %sh4 : {vb}")
        self.emit(f"{ind}{w}h = arith.subi {w}s, %off4 : {vb}")

    def dot_call(self, ind: str, out: str, acc: str, a: str, b: str) -> None:
        """``out = acc + dot(a, b)`` with the ISA's one-instruction dot (``sdot`` / ``smmla`` / VNNI)."""
        isa, vi, vb = ISAS[self.s.isa], self.vi, self.vb
        if not self.emulate:
            self.emit(f"{ind}{out} = llvm.call_intrinsic \"{isa.intrinsic}\"({acc}, {a}, {b}) : "
                      f"({vi}, {vb}, {vb}) -> {vi}")
            return
        # sdot: lane l sums a[4l+i]·b[4l+i]; smmla: [i, j] sums a[8i+k]·b[8j+k] (2×2 lanes, row-major)
        n, e = 4 * self.s.lanes, self.emit
        if isa.dot == "smmla":
            pick_a = [8 * i + k for i in range(2) for j in range(2) for k in range(8)]
            pick_b = [8 * j + k for i in range(2) for j in range(2) for k in range(8)]
            e(f"{ind}{out}sa = vector.shuffle {a}, {a} {pick_a} : {vb}, {vb}")
            e(f"{ind}{out}sb = vector.shuffle {b}, {b} {pick_b} : {vb}, {vb}")
            a, b, n, k = f"{out}sa", f"{out}sb", 32, 8
        else:
            k = 4
        # signed bytes widened as (zero-extended ^ 128) - 128: measured, IREE 3.13 compiled arith.extsi of
        # the broadcast activation word as a zero extension
        e(f"{ind}{out}k = arith.constant dense<128> : vector<{n}xi32>")
        for x, src in (("xa", a), ("xb", b)):
            e(f"{ind}{out}{x}u = arith.extui {src} : vector<{n}xi8> to vector<{n}xi32>")
            e(f"{ind}{out}{x}f = arith.xori {out}{x}u, {out}k : vector<{n}xi32>")
            e(f"{ind}{out}{x} = arith.subi {out}{x}f, {out}k : vector<{n}xi32>")
        e(f"{ind}{out}p = arith.muli {out}xa, {out}xb : vector<{n}xi32>")
        total = acc  # lane o sums products o·k .. o·k + k - 1 (1-D shuffles: IREE's custom-dispatch
        for i in range(k):  # pipeline does not unroll 2-D vectors)
            e(f"{ind}{out}t{i} = vector.shuffle {out}p, {out}p {[o * k + i for o in range(n // k)]} : "
              f"vector<{n}xi32>, vector<{n}xi32>")
            e(f"{ind}{out}{'' if i == k - 1 else f's{i}'} = arith.addi {total}, {out}t{i} : {vi}")
            total = f"{out}s{i}"

    def executable(self) -> str:
        s = self.s
        w, nt, gr, p = s.lanes, s.tiles, s.groups, s.slices
        vi, vf, vb = f"vector<{w}xi32>", f"vector<{w}xf32>", f"vector<{4 * w}xi8>"
        self.vi, self.vf, self.vb = vi, vf, vb
        gs = gr if s.scale_per_group else 1
        self.t_a = f"memref<?x{p}x{code_row(s.k)}xi8>"
        self.t_s = f"memref<?x{gs}xf32>"
        self.t_xs = f"memref<?x{gr}xf32>"
        self.t_w = f"memref<{nt}x{gr}x{s.weight_steps}x{s.step_bytes}xi8>"
        self.w_bytes = nt * gr * s.weight_steps * s.step_bytes
        self.t_as = f"memref<?x{p}x{gr}xi32>"
        self.t_f = f"memref<{nt}x{gr}x{w}xf32>"
        self.t_y = f"memref<?x{s.n}xf32>"
        bindings = [*s.roles(), "y"]
        types = {"a": self.t_a, "s": self.t_s, "xs": self.t_xs, "as": self.t_as, "w": self.t_w, "scale": self.t_f,
                 "off": self.t_f, "y": self.t_y}
        e = self.emit
        e(f"stream.executable private @{s.symbol} {{")
        e(f"  stream.executable.export public @{s.symbol} workgroups(%m: index) -> (index, index, index) {{")
        e(f"    %x = arith.constant {s.workgroups} : index")
        e("    %one = arith.constant 1 : index")
        e("    stream.return %x, %one, %one : index, index, index")
        e("  }")
        e("  builtin.module {")
        args = ", ".join(f"%{b}_b: !stream.binding" for b in bindings)
        e(f"    func.func @{s.symbol}({args}, %m: index) {{")
        amx = (64, *range(17)) if s.amx else ()  # the AMX block's rows, chunk steps and tile rows' bytes
        for v in sorted({0, 1, 4, 8, 16, *amx, *range(max(s.rows, p, s.cols)), w, s.rows, s.cols, gr, s.group // 4,
                         s.group // 8, s.weight_steps, nt, s.n}):
            e(f"      %c{v} = arith.constant {v} : index")
        for b in bindings:
            dyn = "{%m}" if types[b].startswith("memref<?") else ""
            e(f"      %{b} = stream.binding.subspan %{b}_b[%c0] : !stream.binding -> {types[b]}{dyn}")
        # the weight codes as bytes, for the prefetches (clamped to the last one)
        e(f"      %wflat = memref.collapse_shape %w [[0, 1, 2, 3]] : {self.t_w} into memref<{self.w_bytes}xi8>")
        e(f"      %wlast = arith.constant {self.w_bytes - 1} : index")
        e(f"      %pfstep = arith.constant {s.step_bytes} : index")
        e(f"      %tilebytes = arith.constant {gr * s.weight_steps * s.step_bytes} : index")
        e(f"      %pfahead = arith.constant {PREFETCH_BYTES} : index")
        e(f"      %zf = arith.constant dense<0.0> : {vf}")
        if not s.weight_bias:  # the accumulators' start
            e(f"      %zi = arith.constant dense<0> : {vi}")
        if s.nibbles:  # a byte's two 4-bit codes, stored + 8
            e(f"      %lo4 = arith.constant dense<15> : {vb}")
            e(f"      %sh4 = arith.constant dense<4> : {vb}")
            if not s.weight_bias:
                e(f"      %off4 = arith.constant dense<8> : {vb}")
        if ISAS[s.isa].dot == "smmla":  # the missing partner of an odd activation row/slice
            e("      %z8 = arith.constant dense<0> : vector<8xi8>")
        if ISAS[s.isa].dot == "maddubs":  # vpmaddwd by ones sums pairs of i16
            e(f"      %ones16 = arith.constant dense<1> : vector<{2 * w}xi16>")
        e(f"      %radix = arith.constant dense<{1.0 / SLICE_RADIX!r}> : {vf}")
        e("      %wid = stream.dispatch.workgroup.id[0] : index")
        # workgroup w of W: the register blocks [w·B/W, (w+1)·B/W) of the B (shares at most one apart)
        e(f"      %wblocks = arith.constant {s.blocks} : index")
        e(f"      %wcount = arith.constant {s.workgroups} : index")
        e(f"      %wcols = arith.constant {s.cols} : index")
        e("      %wnext = arith.addi %wid, %c1 : index")
        for name, wg in (("t0", "%wid"), ("t1", "%wnext")):
            e(f"      %{name}b = arith.muli {wg}, %wblocks : index")
            e(f"      %{name}q = arith.divui %{name}b, %wcount : index")
            e(f"      %{name} = arith.muli %{name}q, %wcols : index")
        if s.amx:  # rows in blocks of 16 through the tile unit, first; the rest as without AMX
            self.amx_region()
        else:
            e("      %m16 = arith.constant 0 : index")
        e("      %mrest = arith.subi %m, %m16 : index")
        e(f"      %mblocks = arith.divui %mrest, %c{s.rows} : index")
        e(f"      %mblk = arith.muli %mblocks, %c{s.rows} : index")
        e("      %mmain = arith.addi %m16, %mblk : index")
        e(f"      scf.for %t = %t0 to %t1 step %c{s.cols} {{")
        for c in range(s.cols):  # the block's channel tiles; a mask clips the one past N (all-false beyond)
            e(f"        %tt{c} = arith.addi %t, %c{c} : index")
            e(f"        %n0_{c} = arith.muli %tt{c}, %c{w} : index")
            e(f"        %nleft{c} = arith.subi %c{s.n}, %n0_{c} : index")
            e(f"        %nmask{c} = vector.create_mask %nleft{c} : vector<{w}xi1>")
            e(f"        %tb{c} = arith.muli %tt{c}, %tilebytes : index")  # the prefetches' start in the tile
            e(f"        %pft{c} = arith.addi %tb{c}, %pfahead : index")
        # the first row block reads the tiles' weights from memory (prefetching them); the next ones find
        # them in the cache.  The remainder rows prefetch too (they are the first readers when M < rows).
        e(f"        %mfirst0 = arith.addi %m16, %c{s.rows} : index")
        e("        %mfirst = arith.minui %mmain, %mfirst0 : index")
        e(f"        scf.for %m0 = %m16 to %mfirst step %c{s.rows} {{")
        self.row_block(s.rows, "P", prefetch=True)
        e("        }")
        e(f"        scf.for %m0 = %mfirst to %mmain step %c{s.rows} {{")
        self.row_block(s.rows, "B", prefetch=False)
        e("        }")
        e("        scf.for %m0 = %mmain to %m step %c1 {")
        self.row_block(1, "R", prefetch=True)
        e("        }")
        e("      }")
        if s.amx:
            e("      scf.if %useamx {")
            e('        llvm.call_intrinsic "llvm.x86.tilerelease"() : () -> ()')
            e("      }")
        e("      return")
        e("    }")
        e("  }")
        e("}")
        return "\n".join(self.lines)

    def row_block(self, rows: int, tag: str, prefetch: bool, amx: bool = False) -> None:
        """Rows ``m0 .. m0+rows`` of the channel tiles ``t .. t+cols``: the group loop, then the stores.
        Each activation word loaded serves every tile of the block; each weight vector, every row and
        slice.  ``amx``: 16 rows of one tile, the integer dots by the tile unit (:meth:`dots_amx`)."""
        s, e = self.s, self.emit
        vi, vf, p, cols = self.vi, self.vf, s.slices, 1 if amx else s.cols
        ind = "          "
        for r in range(rows):
            e(f"{ind}%{tag}row{r} = arith.addi %m0, %c{r} : index")
            if not s.scale_per_group:
                e(f"{ind}%{tag}s{r} = memref.load %s[%{tag}row{r}, %c0] : {self.t_s}")
                e(f"{ind}%{tag}sv{r} = vector.broadcast %{tag}s{r} : f32 to {vf}")
        facc = [(c, r) for c in range(cols) for r in range(rows)]
        types = ", ".join([vf] * len(facc))
        # The offset sums' accumulators would not fit in the registers beside the dots' (16 rows of an AMX
        # block: 32 of 32, spilled in the loop): those are summed first and parked in y, read back at the end.
        offset_first = s.offset and amx
        if offset_first:
            self.offset_sums(tag, rows, cols, ind)
            for i, (c, r) in enumerate(facc):
                e(f"{ind}vector.maskedstore %y[%{tag}row{r}, %n0_{c}], %nmask{c}, %{tag}oacc#{i} : {self.t_y}, "
                  f"vector<{s.lanes}xi1>, {vf}")
        if amx:  # groups in blocks, software-pipelined: block j staged, j-1 multiplied, j-2's f32 work
            ga = ", ".join(f"%{tag}G{c}_{r} = %zf" for c, r in facc)
            gs = [f"%{tag}G{c}_{r}" for c, r in facc]
            e(f"{ind}%{tag}acc:{len(facc)} = scf.for %jb = %c0 to %amxjend step %c1 iter_args({ga}) -> ({types}) {{")
            i1, i2 = ind + "  ", ind + "    "
            e(f"{i1}%jpar = arith.remui %jb, %c2 : index")
            e(f"{i1}%slj = arith.muli %jpar, %amxgb : index")  # the buffers' slots of blocks j and j-2
            e(f"{i1}%slp = arith.subi %amxgb, %slj : index")  # of block j-1
            e(f"{i1}%jge1 = arith.cmpi uge, %jb, %c1 : index")
            e(f"{i1}%jlen = arith.cmpi ule, %jb, %amxnb : index")
            e(f"{i1}%doprod = arith.andi %jge1, %jlen : i1")
            e(f"{i1}scf.if %doprod {{")
            e(f"{i2}%jm1 = arith.subi %jb, %c1 : index")
            e(f"{i2}%gbp = arith.muli %jm1, %amxgb : index")
            self.amx_products(i2, tag, "%gbp", "%slp")
            e(f"{i1}}}")
            if s.nibbles and s.group == s.amx_chunk:  # (4-bit codes of several chunks per group: staged
                # by amx_products, a block of chunks at a time; 8-bit codes: read in place)
                e(f"{i1}%dostage = arith.cmpi ult, %jb, %amxnb : index")
                e(f"{i1}scf.if %dostage {{")
                e(f"{i2}%gbs = arith.muli %jb, %amxgb : index")
                self.amx_stage(i2, tag, "%gbs", "%slj")
                e(f"{i1}}}")
            e(f"{i1}%doepi = arith.cmpi uge, %jb, %c2 : index")
            e(f"{i1}%{tag}res:{len(facc)} = scf.if %doepi -> ({types}) {{")
            e(f"{i2}%jm2 = arith.subi %jb, %c2 : index")
            e(f"{i2}%gbe = arith.muli %jm2, %amxgb : index")
            fa = ", ".join(f"%{tag}F{c}_{r} = %{tag}G{c}_{r}" for c, r in facc)
            e(f"{i2}%{tag}in:{len(facc)} = scf.for %gi = %c0 to %amxgb step %c1 iter_args({fa}) -> ({types}) {{")
            ind2 = i2 + "  "
            e(f"{ind2}%g = arith.addi %gbe, %gi : index")
            e(f"{ind2}%gs = arith.addi %slj, %gi : index")
            ints = self.amx_results(ind2, tag, rows)
        else:
            fa = ", ".join(f"%{tag}F{c}_{r} = %zf" for c, r in facc)
            e(f"{ind}%{tag}acc:{len(facc)} = scf.for %g = %c0 to %c{s.groups} step %c1 iter_args({fa}) -> ({types}) {{")
            ind2 = ind + "  "
            dots = self.dots_mmla if ISAS[s.isa].dot == "smmla" else self.dots
            ints = dots(rows, tag, ind2, prefetch)
        for c in range(cols):
            e(f"{ind2}%{tag}sc{c} = vector.load %scale[%tt{c}, %g, %c0] : {self.t_f}, {vf}")
        for r in range(rows):
            if s.scale_per_group:
                e(f"{ind2}%{tag}s{r} = memref.load %s[%{tag}row{r}, %g] : {self.t_s}")
                e(f"{ind2}%{tag}sv{r} = vector.broadcast %{tag}s{r} : f32 to {vf}")
        ys = []
        for c, r in facc:
            total = None
            for q in reversed(range(p)):  # Σ_q d_q · 254^-q, Horner from the last slice
                d = f"%{tag}f{c}_{r}_{q}"
                e(f"{ind2}{d} = arith.sitofp {ints[(c, r, q)]} : {vi} to {vf}")
                if total is not None:
                    e(f"{ind2}{d}h = math.fma {total}, %radix, {d} : {vf}")
                    d = f"{d}h"
                total = d
            k = f"%{tag}sc{c}"  # a per-row activation scale multiplies the row's sum once, after the loop
            if s.scale_per_group:
                k = f"%{tag}k{c}_{r}"
                e(f"{ind2}{k} = arith.mulf %{tag}sc{c}, %{tag}sv{r} : {vf}")
            y = f"%{tag}y{c}_{r}"
            e(f"{ind2}{y} = math.fma {total}, {k}, %{tag}F{c}_{r} : {vf}")
            ys.append(y)
        e(f"{ind2}scf.yield {', '.join(ys)} : {', '.join([vf] * len(ys))}")
        if amx:
            e(f"{i2}}}")
            e(f"{i2}scf.yield {', '.join(f'%{tag}in#{i}' for i in range(len(facc)))} : {types}")
            e(f"{i1}}} else {{")
            e(f"{i2}scf.yield {', '.join(gs)} : {types}")
            e(f"{i1}}}")
            e(f"{i1}scf.yield {', '.join(f'%{tag}res#{i}' for i in range(len(facc)))} : {types}")
        e(f"{ind}}}")
        outs = [f"%{tag}acc#{i}" for i in range(len(facc))]
        if s.offset and not offset_first:
            self.offset_sums(tag, rows, cols, ind)
        for i, (c, r) in enumerate(facc):
            y = outs[i]
            if offset_first:  # back from y
                e(f"{ind}%{tag}oacc{i} = vector.maskedload %y[%{tag}row{r}, %n0_{c}], %nmask{c}, %zf : {self.t_y}, "
                  f"vector<{s.lanes}xi1>, {vf} into {vf}")
            oacc = f"%{tag}oacc{i}" if offset_first else f"%{tag}oacc#{i}"
            if not s.scale_per_group:
                if s.offset:
                    e(f"{ind}%{tag}z{i} = math.fma {y}, %{tag}sv{r}, {oacc} : {vf}")
                else:
                    e(f"{ind}%{tag}z{i} = arith.mulf {y}, %{tag}sv{r} : {vf}")
                y = f"%{tag}z{i}"
            elif s.offset:
                e(f"{ind}%{tag}z{i} = arith.addf {y}, {oacc} : {vf}")
                y = f"%{tag}z{i}"
            e(f"{ind}vector.maskedstore %y[%{tag}row{r}, %n0_{c}], %nmask{c}, {y} : {self.t_y}, "
              f"vector<{s.lanes}xi1>, {vf}")

    def offset_sums(self, tag: str, rows: int, cols: int, ind: str) -> None:
        """Σ_g offset · xsum of the block's rows and tiles, in ``%{tag}oacc``: the weight's per-group offsets
        (zero point or min, times the scale) against the activation's per-group sums."""
        s, e, vf = self.s, self.emit, self.vf
        facc = [(c, r) for c in range(cols) for r in range(rows)]
        ind2 = ind + "  "
        fo = ", ".join(f"%{tag}O{c}_{r} = %zf" for c, r in facc)
        e(f"{ind}%{tag}oacc:{len(facc)} = scf.for %g = %c0 to %c{s.groups} step %c1 iter_args({fo}) -> "
          f"({', '.join([vf] * len(facc))}) {{")
        for c in range(cols):
            e(f"{ind2}%{tag}of{c} = vector.load %off[%tt{c}, %g, %c0] : {self.t_f}, {vf}")
        for r in range(rows):
            e(f"{ind2}%{tag}xs{r} = memref.load %xs[%{tag}row{r}, %g] : {self.t_xs}")
            e(f"{ind2}%{tag}xv{r} = vector.broadcast %{tag}xs{r} : f32 to {vf}")
        for c, r in facc:
            e(f"{ind2}%{tag}o{c}_{r} = math.fma %{tag}of{c}, %{tag}xv{r}, %{tag}O{c}_{r} : {vf}")
        e(f"{ind2}scf.yield {', '.join(f'%{tag}o{c}_{r}' for c, r in facc)} : {', '.join([vf] * len(facc))}")
        e(f"{ind}}}")

    # -- AMX: blocks of 16 rows through the tile unit
    def tile(self, role: str, q: int = 0, h: int = 0) -> str:
        """The tile register of C (slice ``q`` of set ``h``), A (slice ``q``) or B (set ``h``)."""
        p, sets = self.s.slices, self.s.amx_sets
        return f"%tmm{ {'C': h * p + q, 'A': sets * p + q, 'B': sets * p + p + h}[role] }"

    def pointer(self, ind: str, name: str, address: str) -> str:
        """``!llvm.ptr`` ``name`` of the byte address ``address`` (an index)."""
        self.emit(f"{ind}{name}i = arith.index_cast {address} : index to i64")
        self.emit(f"{ind}{name} = llvm.inttoptr {name}i : i64 to !llvm.ptr")
        return name

    def amx_region(self) -> None:
        """The tile configuration (when M >= 16), then the rows in blocks of 16 (``%m16`` of them): row
        blocks outside, the workgroup's channel tiles inside, so that a block's activation codes stay in
        the cache across the tiles and the tiles' weights across the row blocks."""
        s, e = self.s, self.emit
        p, ch, gb = s.slices, s.amx_chunk, s.amx_group_block
        # Linux hands out the AMX tile state only on request (arch_prctl(ARCH_REQ_XCOMP_PERM,
        # XFEATURE_XTILEDATA), process-wide; a tile instruction before it faults): the kernel asks itself,
        # so that any IREE host runs it, and keeps to AVX-512 VNNI where it is refused (an older kernel)
        e("      %mge16 = arith.cmpi uge, %m, %c16 : index")
        e("      %amxno = arith.constant -1 : i64")
        e("      %amxperm = scf.if %mge16 -> (i64) {")
        e(f"        %amxnr = arith.constant {SYS_ARCH_PRCTL} : i64")
        e(f"        %amxreq = arith.constant {ARCH_REQ_XCOMP_PERM} : i64")
        e(f"        %amxfeat = arith.constant {XFEATURE_XTILEDATA} : i64")
        e('        %amxr = llvm.inline_asm has_side_effects asm_dialect = att "syscall", '
          '"={rax},{rax},{rdi},{rsi},~{rcx},~{r11},~{memory}" %amxnr, %amxreq, %amxfeat : (i64, i64, i64) -> i64')
        e("        scf.yield %amxr : i64")
        e("      } else {")
        e("        scf.yield %amxno : i64")
        e("      }")
        e("      %amxz = arith.constant 0 : i64")
        e("      %amxok = arith.cmpi eq, %amxperm, %amxz : i64")
        e("      %useamx = arith.andi %mge16, %amxok : i1")
        e("      %m16d = arith.divui %m, %c16 : index")
        e("      %m16a = arith.muli %m16d, %c16 : index")
        e("      %m16 = arith.select %useamx, %m16a, %c0 : index")
        # the tile configuration: palette 1 at byte 0; colsb (u16) at 16+2t; rows at 48+t
        e("      %cfg = memref.alloca() alignment = 64 : memref<64xi8>")
        self.t_cbuf = f"memref<{2 * gb}x{p}x{AMX_ROWS}x16xi32>"  # two blocks' slots: one read, one written
        staged = 2 * gb if s.group == ch else s.amx_staged
        self.t_bbuf = f"memref<{staged}x{ch // 4}x64xi8>"
        # on cache lines: where the frame's size put them off one, every tile store and load and the vector
        # loads of the results straddled two lines (docs/benchmarks.md, "Fused CPU kernel")
        e(f"      %cbuf = memref.alloca() alignment = 64 : {self.t_cbuf}")
        e(f"      %bbuf = memref.alloca() alignment = 64 : {self.t_bbuf}")
        e("      %z64 = arith.constant dense<0> : vector<64xi8>")
        e("      vector.store %z64, %cfg[%c0] : memref<64xi8>, vector<64xi8>")
        cfg = {0: 1}
        tiles = [(AMX_ROWS, 64)] * (s.amx_sets * p) + [(AMX_ROWS, ch)] * p + [(ch // 4, 64)] * s.amx_sets
        for i, (rows, colsb) in enumerate(tiles):
            cfg[16 + 2 * i], cfg[48 + i] = colsb, rows
        for byte, v in sorted(cfg.items()):
            e(f"      %cfgv{byte} = arith.constant {v} : i8")
            e(f"      %cfgi{byte} = arith.constant {byte} : index")
            e(f"      memref.store %cfgv{byte}, %cfg[%cfgi{byte}] : memref<64xi8>")
        for name, mem, ty in (("cfg", "%cfg", "memref<64xi8>"), ("cbuf", "%cbuf", self.t_cbuf),
                              ("bbuf", "%bbuf", self.t_bbuf)):
            e(f"      %{name}x = memref.extract_aligned_pointer_as_index {mem} : {ty} -> index")
        for name, mem, ty, rank in (("abase", "%a", self.t_a, 3), ("wbase", "%w", self.t_w, 4)):  # bytes: + offset
            e(f"      %{name}p = memref.extract_aligned_pointer_as_index {mem} : {ty} -> index")
            dims = ", ".join(f"%{name}d{i}" for i in range(2 * rank))
            e(f"      %{name}m, %{name}o, {dims} = memref.extract_strided_metadata {mem} : {ty} -> "
              f"memref<i8>, index, {', '.join(['index'] * 2 * rank)}")
            e(f"      %{name}x = arith.addi %{name}p, %{name}o : index")
        self.pointer("      ", "%cfgp", "%cfgx")
        for i in range(len(tiles)):
            e(f"      %tmm{i} = llvm.mlir.constant({i} : i8) : i8")
        e("      %s64 = arith.constant 64 : i64")
        row = s.slices * code_row(s.k)
        e(f"      %sa = arith.constant {row} : i64")  # the stride between activation rows
        e(f"      %arow = arith.constant {row} : index")
        e(f"      %aslice = arith.constant {code_row(s.k)} : index")
        e(f"      %agroup = arith.constant {s.group} : index")
        e(f"      %achunk = arith.constant {ch} : index")
        e(f"      %bstaged = arith.constant {ch * 16} : index")  # bytes of one staged chunk (quads × 64)
        e("      %cres = arith.constant 1024 : index")  # bytes of one stored C tile
        e(f"      %amxgb = arith.constant {gb} : index")
        e(f"      %amxnb = arith.constant {s.groups // gb} : index")  # blocks of groups
        e(f"      %amxjend = arith.constant {s.groups // gb + 2} : index")  # the pipeline's iterations
        e(f"      %amxsets = arith.constant {s.amx_sets} : index")
        e(f"      %amxcpg = arith.constant {s.group // ch} : index")
        e(f"      %amxcb = arith.constant {s.amx_staged if s.group // ch > 1 else 1} : index")
        e(f"      %amxhalf = arith.constant {s.group // ch // 2} : index")
        e(f"      %wquads = arith.constant {ch // 4} : index")
        e(f"      %wgsteps = arith.constant {s.weight_steps} : index")  # weight steps per (tile, group)
        e("      %w8 = arith.constant dense<8> : vector<64xi8>")
        if not s.weight_bias:
            raise ValueError("the AMX kernel reads the weight codes as the VNNI kernel stores them (with a bias)")
        e("      scf.if %useamx {")
        e('        llvm.call_intrinsic "llvm.x86.ldtilecfg"(%cfgp) : (!llvm.ptr) -> ()')
        e("      }")
        e("      scf.for %m0 = %c0 to %m16 step %c16 {")
        e("        scf.for %t = %t0 to %t1 step %c1 {")
        e("          %tt0 = arith.addi %t, %c0 : index")
        e(f"          %n0_0 = arith.muli %tt0, %c{s.lanes} : index")
        e(f"          %nleft0 = arith.subi %c{s.n}, %n0_0 : index")
        e(f"          %nmask0 = vector.create_mask %nleft0 : vector<{s.lanes}xi1>")
        self.row_block(AMX_ROWS, "X", prefetch=False, amx=True)
        e("        }")
        e("      }")

    def stage(self, ind: str, tag: str, group: str, slot: str, rows: list[tuple[str, str]]) -> None:
        """4-bit weight codes of the tile's ``group`` as signed bytes in ``%bbuf[slot]``, where the
        tile unit reads them: row ``i`` from weight step ``rows[i][0]``, its low or high nibbles
        (``rows[i][1]``: "l", "h", or an i1 value: low nibbles where it is true, else high)."""
        e, t_w = self.emit, self.t_w
        for i, (step, half) in enumerate(rows):
            v = f"%{tag}bw{i}"
            e(f"{ind}{v} = vector.load %w[%tt0, {group}, {step}, %c0] : {t_w}, vector<64xi8>")
            if half in ("l", "h"):
                op, arg = ("andi", "%lo4") if half == "l" else ("shrui", "%sh4")
                e(f"{ind}{v}m = arith.{op} {v}, {arg} : vector<64xi8>")
            else:  # chosen at run time
                e(f"{ind}{v}l = arith.andi {v}, %lo4 : vector<64xi8>")
                e(f"{ind}{v}h = arith.shrui {v}, %sh4 : vector<64xi8>")
                e(f"{ind}{v}m = arith.select {half}, {v}l, {v}h : vector<64xi8>")
            e(f"{ind}{v}s = arith.subi {v}m, %w8 : vector<64xi8>")  # signed: no bias to take out
            e(f"{ind}vector.store {v}s, %bbuf[{slot}, %c{i}, %c0] : {self.t_bbuf}, vector<64xi8>")

    def products(self, ind: str, tag: str, baddr: str, kofs: str, h: int, zero: bool) -> None:
        """B (set ``h``) from the byte address ``baddr`` (64-byte rows: the weight codes in place, or staged),
        then per slice A_q (16 rows of codes from K offset ``kofs``) and C_q (set ``h``) += A_q · B
        (``tdpbsud``: signed activation codes × the weight codes as stored, unsigned; ``zero``: C_q
        zeroed first)."""
        e, p = self.emit, self.s.slices
        b = self.tile("B", h=h)
        ptr = self.pointer(ind, f"%{tag}bp", baddr)
        e(f'{ind}llvm.call_intrinsic "llvm.x86.tileloadd64"({b}, {ptr}, %s64) : (i8, !llvm.ptr, i64) -> ()')
        e(f"{ind}%{tag}ar = arith.muli %m0, %arow : index")
        e(f"{ind}%{tag}a0 = arith.addi %{tag}ar, {kofs} : index")
        e(f"{ind}%{tag}ab = arith.addi %abasex, %{tag}a0 : index")
        for q in range(p):
            addr = f"%{tag}ab"
            if q:
                e(f"{ind}%{tag}aq{q}o = arith.muli %aslice, %c{q} : index")
                e(f"{ind}%{tag}aq{q} = arith.addi %{tag}ab, %{tag}aq{q}o : index")
                addr = f"%{tag}aq{q}"
            ptr = self.pointer(ind, f"%{tag}ap{q}", addr)
            c, a = self.tile("C", q, h), self.tile("A", q)
            if zero:
                e(f'{ind}llvm.call_intrinsic "llvm.x86.tilezero"({c}) : (i8) -> ()')
            e(f'{ind}llvm.call_intrinsic "llvm.x86.tileloadd64"({a}, {ptr}, %sa) : (i8, !llvm.ptr, i64) -> ()')
            op = "tdpbssd" if self.s.nibbles else "tdpbsud"
            e(f'{ind}llvm.call_intrinsic "llvm.x86.{op}"({c}, {a}, {b}) : (i8, i8, i8) -> ()')

    def b_address(self, ind: str, tag: str, group: str, step: str | None, slot: str | None) -> str:
        """The byte address of a chunk's B rows: the weight codes in place (``step``: the chunk's first weight
        step in the tile's ``group``), or staged (``%bbuf[slot]``)."""
        e = self.emit
        if slot is not None:
            e(f"{ind}%{tag}bo = arith.muli {slot}, %bstaged : index")
            e(f"{ind}%{tag}ba = arith.addi %bbufx, %{tag}bo : index")
            return f"%{tag}ba"
        e(f"{ind}%{tag}wg = arith.muli %tt0, %c{self.s.groups} : index")
        e(f"{ind}%{tag}wg2 = arith.addi %{tag}wg, {group} : index")
        e(f"{ind}%{tag}ws = arith.muli %{tag}wg2, %wgsteps : index")
        e(f"{ind}%{tag}ws2 = arith.addi %{tag}ws, {step} : index")
        e(f"{ind}%{tag}wo = arith.muli %{tag}ws2, %c64 : index")
        e(f"{ind}%{tag}ba = arith.addi %wbasex, %{tag}wo : index")
        return f"%{tag}ba"

    def store_results(self, ind: str, tag: str, slot: str, h: int) -> None:
        """C_q of set ``h`` into ``%cbuf[slot, q]``."""
        e, p = self.emit, self.s.slices
        for q in range(p):
            e(f"{ind}%{tag}cs{q} = arith.muli {slot}, %c{p} : index")
            e(f"{ind}%{tag}cq{q} = arith.addi %{tag}cs{q}, %c{q} : index")
            e(f"{ind}%{tag}co{q} = arith.muli %{tag}cq{q}, %cres : index")
            e(f"{ind}%{tag}ca{q} = arith.addi %cbufx, %{tag}co{q} : index")
            ptr = self.pointer(ind, f"%{tag}cp{q}", f"%{tag}ca{q}")
            e(f'{ind}llvm.call_intrinsic "llvm.x86.tilestored64"({self.tile("C", q, h)}, {ptr}, %s64) : '
              "(i8, !llvm.ptr, i64) -> ()")

    def amx_stage(self, ind: str, tag: str, gbase: str, slot: str) -> None:
        """The 4-bit weight codes of the groups ``gbase ..`` (a block of ``amx_group_block``, one chunk each)
        staged as bytes in ``%bbuf[slot ..]``: quads 0..S/2-1 of a group from the steps' low nibbles,
        S/2.. from their high ones."""
        half = self.s.amx_chunk // 8
        e = self.emit
        e(f"{ind}scf.for %sgi = %c0 to %amxgb step %c1 {{")
        e(f"{ind}  %sg = arith.addi {gbase}, %sgi : index")
        e(f"{ind}  %sgs = arith.addi {slot}, %sgi : index")
        rows = [(f"%c{i}", "l") for i in range(half)] + [(f"%c{i}", "h") for i in range(half)]
        self.stage(ind + "  ", f"{tag}s", "%sg", "%sgs", rows)
        if AMX_PREFETCH_BYTES:  # the tile's codes AMX_PREFETCH_BYTES ahead, a line per weight step
            i2 = ind + "  "
            e(f"{i2}%spt = arith.muli %tt0, %tilebytes : index")
            e(f"{i2}%spg = arith.muli %sg, %wgsteps : index")
            e(f"{i2}%spg64 = arith.muli %spg, %c64 : index")
            e(f"{i2}%spa = arith.addi %spt, %spg64 : index")
            e(f"{i2}%spd = arith.constant {AMX_PREFETCH_BYTES} : index")
            e(f"{i2}%spb = arith.addi %spa, %spd : index")
            for i in range(half):
                e(f"{i2}%spo{i} = arith.constant {64 * i} : index")
                e(f"{i2}%spx{i} = arith.addi %spb, %spo{i} : index")
                e(f"{i2}%spc{i} = arith.minui %spx{i}, %wlast : index")
                e(f"{i2}memref.prefetch %wflat[%spc{i}], read, locality<3>, data : memref<{self.w_bytes}xi8>")
        e(f"{ind}}}")

    def amx_products(self, ind: str, tag: str, gbase: str, slot: str) -> None:
        """The tile products of the groups ``gbase ..`` (a block of ``amx_group_block``; 16 rows, one
        channel tile), their i32 results stored in ``%cbuf[slot ..]``.  Groups of one chunk (K <= 64 per
        group; 4-bit codes staged in ``%bbuf[slot ..]`` one block earlier): unrolled, group i's products in
        C set i % sets, then group i-1's results stored (issued one group earlier, they are done).  A group
        of several chunks (the block is that group): C accumulated over its chunks (4-bit codes staged
        ``amx_staged`` chunks at a time)."""
        s, e = self.s, self.emit
        quads, cpg = s.amx_chunk // 4, s.group // s.amx_chunk
        if cpg == 1:
            for gi in range(s.amx_group_block):
                h = gi % s.amx_sets
                e(f"{ind}%pg{gi} = arith.addi {gbase}, %c{gi} : index")
                e(f"{ind}%pk{gi} = arith.muli %pg{gi}, %agroup : index")
                e(f"{ind}%ps{gi} = arith.addi {slot}, %c{gi} : index")
                if s.nibbles:
                    baddr = self.b_address(ind, f"{tag}p{gi}_", f"%pg{gi}", None, f"%ps{gi}")
                else:
                    baddr = self.b_address(ind, f"{tag}p{gi}_", f"%pg{gi}", "%c0", None)
                self.products(ind, f"{tag}p{gi}_", baddr, f"%pk{gi}", h, zero=True)
                if s.amx_sets == 1:
                    self.store_results(ind, f"{tag}r{gi}_", f"%ps{gi}", h)
                elif gi:
                    self.store_results(ind, f"{tag}r{gi - 1}_", f"%ps{gi - 1}", (gi - 1) % s.amx_sets)
            if s.amx_sets > 1:
                last = s.amx_group_block - 1
                self.store_results(ind, f"{tag}r{last}_", f"%ps{last}", last % s.amx_sets)
            return
        i2 = ind + "  "
        for q in range(s.slices):
            e(f'{ind}llvm.call_intrinsic "llvm.x86.tilezero"({self.tile("C", q)}) : (i8) -> ()')
        e(f"{ind}%gk = arith.muli {gbase}, %agroup : index")
        if not s.nibbles:  # the codes in place, chunk by chunk
            e(f"{ind}scf.for %uc = %c0 to %amxcpg step %c1 {{")
            e(f"{i2}%ucs = arith.muli %uc, %wquads : index")
            e(f"{i2}%uko = arith.muli %uc, %achunk : index")
            e(f"{i2}%uk = arith.addi %gk, %uko : index")
            baddr = self.b_address(i2, f"{tag}u", gbase, "%ucs", None)
            self.products(i2, f"{tag}u", baddr, "%uk", 0, zero=False)
            e(f"{ind}}}")
            self.store_results(ind, f"{tag}r", slot, 0)
            return
        cb = s.amx_staged
        e(f"{ind}scf.for %ub = %c0 to %amxcpg step %amxcb {{")
        e(f"{i2}%ulow = arith.cmpi ult, %ub, %amxhalf : index")  # the block lies in one half of the group
        e(f"{i2}%uhi = arith.subi %ub, %amxhalf : index")
        e(f"{i2}%u0 = arith.select %ulow, %ub, %uhi : index")
        e(f"{i2}%ustep = arith.muli %u0, %wquads : index")
        for ci in range(cb):
            e(f"{i2}%ucs{ci} = arith.constant {ci} : index")
            rows = []
            for i in range(quads):
                e(f"{i2}%us{ci}_{i}o = arith.constant {ci * quads + i} : index")
                e(f"{i2}%us{ci}_{i} = arith.addi %ustep, %us{ci}_{i}o : index")
                rows.append((f"%us{ci}_{i}", "%ulow"))
            self.stage(i2, f"{tag}s{ci}_", gbase, f"%ucs{ci}", rows)
        for ci in range(cb):
            e(f"{i2}%uu{ci} = arith.addi %ub, %ucs{ci} : index")
            e(f"{i2}%uk{ci}o = arith.muli %uu{ci}, %achunk : index")
            e(f"{i2}%uk{ci} = arith.addi %gk, %uk{ci}o : index")
            baddr = self.b_address(i2, f"{tag}u{ci}_", gbase, None, f"%ucs{ci}")
            self.products(i2, f"{tag}u{ci}_", baddr, f"%uk{ci}", 0, zero=False)
        e(f"{ind}}}")
        self.store_results(ind, f"{tag}r", slot, 0)

    def amx_results(self, ind: str, tag: str, rows: int) -> dict[tuple[int, int, int], str]:
        """Group ``gi`` of the block's stored results: the i32 vector of each (row, slice)."""
        e, ints = self.emit, {}
        for r in range(rows):
            e(f"{ind}%{tag}ci{r} = arith.constant {r} : index")
            for q in range(self.s.slices):
                v = f"%{tag}c{r}_{q}"
                e(f"{ind}{v}{'c' if not self.s.nibbles else ''} = vector.load %cbuf[%gs, %c{q}, %{tag}ci{r}, %c0] : "
                  f"{self.t_cbuf}, vector<16xi32>")
                if not self.s.nibbles:  # the 8-bit codes' bias out: + (-128 · Σ codes) of the (row, slice, group)
                    e(f"{ind}{v}s = memref.load %as[%{tag}row{r}, %c{q}, %g] : {self.t_as}")
                    e(f"{ind}{v}b = vector.broadcast {v}s : i32 to vector<16xi32>")
                    e(f"{ind}{v} = arith.addi {v}c, {v}b : vector<16xi32>")
                ints[(0, r, q)] = v
        return ints

    def prefetch(self, ind: str, tag: str, step: str) -> None:
        """Ask for the weight bytes PREFETCH_BYTES past this K step's (``kb0 + step``: the step in the
        tile), in every channel tile of the block."""
        e = self.emit
        e(f"{ind}%{tag}pfs = arith.addi %{tag}kb0, {step} : index")
        e(f"{ind}%{tag}pfb = arith.muli %{tag}pfs, %pfstep : index")
        for c in range(self.s.cols):
            e(f"{ind}%{tag}pf{c} = arith.addi %pft{c}, %{tag}pfb : index")
            e(f"{ind}%{tag}pfc{c} = arith.minui %{tag}pf{c}, %wlast : index")
            e(f"{ind}memref.prefetch %wflat[%{tag}pfc{c}], read, locality<3>, data : memref<{self.w_bytes}xi8>")

    def dots(self, rows: int, tag: str, ind2: str, prefetch: bool) -> dict[tuple[int, int, int], str]:
        """One group's integer dots, the activation word broadcast to every lane (VNNI, AVX2, sdot):
        the i32 vector of each (tile, row, slice); ``prefetch``: also ask for the weights ahead."""
        s, e = self.s, self.emit
        vi, vb, p, cols = self.vi, self.vb, s.slices, s.cols
        e(f"{ind2}%{tag}kb = arith.muli %g, %c{s.group // 4} : index")
        if prefetch:  # the group's first K step in the tile
            e(f"{ind2}%{tag}kb0 = arith.muli %g, %c{s.weight_steps} : index")
        iacc = [(c, r, q) for c in range(cols) for r in range(rows) for q in range(p)]
        if s.weight_bias:  # the accumulators' start: -bias·Σa of the (row, slice) in this group, every lane
            for r in range(rows):
                for q in range(p):
                    v = f"%{tag}st{r}_{q}"
                    e(f"{ind2}{v}s = memref.load %as[%{tag}row{r}, %c{q}, %g] : {self.t_as}")
                    e(f"{ind2}{v} = vector.broadcast {v}s : i32 to {vi}")
        starts = ", ".join(f"%{tag}I{c}_{r}_{q} = {f'%{tag}st{r}_{q}' if s.weight_bias else '%zi'}"
                           for c, r, q in iacc)
        e(f"{ind2}%{tag}d:{len(iacc)} = scf.for %k4 = %c0 to %c{s.weight_steps} step %c1 iter_args({starts}) -> "
          f"({', '.join([vi] * len(iacc))}) {{")
        ind3 = ind2 + "  "
        isa = ISAS[s.isa]
        # the weight vectors of this step: (name per tile, the K quad they hold)
        halves = [("", f"%{tag}kb")]
        for c in range(cols):
            e(f"{ind3}%{tag}wv{c} = vector.load %w[%tt{c}, %g, %k4, %c0] : {self.t_w}, {vb}")
        if prefetch:
            self.prefetch(ind3, tag, "%k4")
        if s.nibbles:  # low nibbles: quads k4 of the group; high nibbles: quads k4 + g/8
            halves = [("l", f"%{tag}kb"), ("h", f"%{tag}kb2")]
            e(f"{ind3}%{tag}kb2 = arith.addi %{tag}kb, %c{s.weight_steps} : index")
            for c in range(cols):
                self.unpack_nibbles(ind3, f"%{tag}wv{c}")
        out = {key: f"%{tag}I{key[0]}_{key[1]}_{key[2]}" for key in iacc}
        for h, base in halves:
            if isa.dot == "maddubs" and not s.weight_bias:
                for c in range(cols):
                    e(f"{ind3}%{tag}wa{c}{h} = math.absi %{tag}wv{c}{h} : {vb}")
            e(f"{ind3}%{tag}kq{h} = arith.addi {base}, %k4 : index")
            e(f"{ind3}%{tag}kk{h} = arith.muli %{tag}kq{h}, %c4 : index")
            for r in range(rows):
                for q in range(p):
                    v = f"%{tag}x{r}_{q}{h}"
                    e(f"{ind3}{v}l = vector.load %a[%{tag}row{r}, %c{q}, %{tag}kk{h}] : {self.t_a}, vector<4xi8>")
                    e(f"{ind3}{v}i = vector.bitcast {v}l : vector<4xi8> to vector<1xi32>")
                    e(f"{ind3}{v}w = vector.extract {v}i[0] : i32 from vector<1xi32>")
                    e(f"{ind3}{v}v = vector.broadcast {v}w : i32 to {vi}")
                    e(f"{ind3}{v}b = vector.bitcast {v}v : {vi} to {vb}")
                    for c in range(cols):
                        acc, n, wv = out[(c, r, q)], f"{v}n{c}", f"%{tag}wv{c}{h}"
                        if isa.dot == "vpdpbusd":  # unsigned weight bytes × signed activation bytes
                            self.dot_call(ind3, n, acc, wv, f"{v}b")
                        elif isa.dot == "sdot":
                            self.dot_call(ind3, n, acc, f"{v}b", wv)
                        elif s.weight_bias:  # 4-bit codes + 8 (u8) × signed codes: pairs fit i16 as they are
                            vh = f"vector<{2 * s.lanes}xi16>"
                            call = f"{ind3}{n}{{}} = llvm.call_intrinsic \"llvm.x86.avx2.{{}}\"({{}}) : ({{}}) -> {{}}"
                            e(call.format("h", "pmadd.ub.sw", f"{wv}, {v}b", f"{vb}, {vb}", vh))
                            e(call.format("d", "pmadd.wd", f"{n}h, %ones16", f"{vh}, {vh}", vi))
                            e(f"{ind3}{n} = arith.addi {acc}, {n}d : {vi}")
                        else:
                            vh = f"vector<{2 * s.lanes}xi16>"
                            call = f"{ind3}{n}{{}} = llvm.call_intrinsic \"llvm.x86.avx2.{{}}\"({{}}) : ({{}}) -> {{}}"
                            e(call.format("s", "psign.b", f"{v}b, {wv}", f"{vb}, {vb}", vb))  # sign(w)·a
                            # |w|·(sign(w)·a)
                            e(call.format("h", "pmadd.ub.sw", f"%{tag}wa{c}{h}, {n}s", f"{vb}, {vb}", vh))
                            e(call.format("d", "pmadd.wd", f"{n}h, %ones16", f"{vh}, {vh}", vi))
                            e(f"{ind3}{n} = arith.addi {acc}, {n}d : {vi}")
                        out[(c, r, q)] = n
        e(f"{ind3}scf.yield {', '.join(out[key] for key in iacc)} : {', '.join([vi] * len(iacc))}")
        e(f"{ind2}}}")
        return {key: f"%{tag}d#{i}" for i, key in enumerate(iacc)}

    def dots_mmla(self, rows: int, tag: str, ind2: str, prefetch: bool) -> dict[tuple[int, int, int], str]:
        """One group's integer dots with ``smmla``: the (row, slice) units in pairs, each pair's 8 codes
        of K against a pair of channels; the i32 vector of each (tile, row, slice) gathered after the
        loop.  The weight step of a tile is ``[channel pair, channel, 8 codes]`` (32 bytes)."""
        s, e = self.s, self.emit
        vi, vb, p, cols = self.vi, self.vb, s.slices, s.cols
        units: list[tuple[int, int] | None] = [(r, q) for r in range(rows) for q in range(p)]
        if len(units) % 2:
            units.append(None)
        pairs = [(units[i], units[i + 1]) for i in range(0, len(units), 2)]
        e(f"{ind2}%{tag}kb = arith.muli %g, %c{s.group // 8} : index")
        if prefetch:  # the group's first K step in the tile
            e(f"{ind2}%{tag}kb0 = arith.muli %g, %c{s.weight_steps} : index")
        accs = [(c, cp, i) for c in range(cols) for cp in range(2) for i in range(len(pairs))]
        starts = ", ".join(f"%{tag}M{c}_{cp}_{i} = %zi" for c, cp, i in accs)
        e(f"{ind2}%{tag}d:{len(accs)} = scf.for %k8 = %c0 to %c{s.weight_steps} step %c1 iter_args({starts}) -> "
          f"({', '.join([vi] * len(accs))}) {{")
        ind3 = ind2 + "  "
        halves = [("", f"%{tag}kb")]
        for c in range(cols):
            for cp in range(2):
                e(f"{ind3}%{tag}wv{c}_{cp} = vector.load %w[%tt{c}, %g, %k8, %c{16 * cp}] : {self.t_w}, {vb}")
        if prefetch:
            self.prefetch(ind3, tag, "%k8")
        if s.nibbles:  # low nibbles: octets k8 of the group; high nibbles: octets k8 + g/16
            halves = [("l", f"%{tag}kb"), ("h", f"%{tag}kb2")]
            e(f"{ind3}%{tag}kb2 = arith.addi %{tag}kb, %c{s.weight_steps} : index")
            for c in range(cols):
                for cp in range(2):
                    self.unpack_nibbles(ind3, f"%{tag}wv{c}_{cp}")
        out = {key: f"%{tag}M{key[0]}_{key[1]}_{key[2]}" for key in accs}
        for h, base in halves:
            e(f"{ind3}%{tag}ko{h} = arith.addi {base}, %k8 : index")
            e(f"{ind3}%{tag}kk{h} = arith.muli %{tag}ko{h}, %c8 : index")
            for i, pair in enumerate(pairs):
                halves8 = []
                for j, unit in enumerate(pair):
                    if unit is None:
                        halves8.append("%z8")
                        continue
                    r, q = unit
                    x = f"%{tag}x{i}_{j}{h}"
                    e(f"{ind3}{x} = vector.load %a[%{tag}row{r}, %c{q}, %{tag}kk{h}] : {self.t_a}, vector<8xi8>")
                    halves8.append(x)
                xp = f"%{tag}xp{i}{h}"
                e(f"{ind3}{xp} = vector.shuffle {halves8[0]}, {halves8[1]} [{', '.join(map(str, range(16)))}] : "
                  "vector<8xi8>, vector<8xi8>")
                for c in range(cols):
                    for cp in range(2):
                        n = f"%{tag}n{c}_{cp}_{i}{h}"
                        self.dot_call(ind3, n, out[(c, cp, i)], xp, f"%{tag}wv{c}_{cp}{h}")
                        out[(c, cp, i)] = n
        e(f"{ind3}scf.yield {', '.join(out[key] for key in accs)} : {', '.join([vi] * len(accs))}")
        e(f"{ind2}}}")
        # acc[c, pair, i] = [u0·ch(2cp), u0·ch(2cp+1), u1·ch(2cp), u1·ch(2cp+1)]: unit j's 4 channels of tile c
        ints = {}
        for i, pair in enumerate(pairs):
            for j, unit in enumerate(pair):
                if unit is None:
                    continue
                r, q = unit
                for c in range(cols):
                    lo, hi = accs.index((c, 0, i)), accs.index((c, 1, i))
                    v = f"%{tag}u{c}_{r}_{q}"
                    e(f"{ind2}{v} = vector.shuffle %{tag}d#{lo}, %{tag}d#{hi} [{2 * j}, {2 * j + 1}, {4 + 2 * j}, "
                      f"{5 + 2 * j}] : {vi}, {vi}")
                    ints[(c, r, q)] = v
        return ints

__all__ = ["ACTIVATION_ROLES", "ISAS", "ROLES_ATTR", "SYMBOL_PREFIX", "KernelSpec", "code_row", "linear_roles"]
