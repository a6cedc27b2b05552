"""A warp-level interpreter for the PTX subset msd's tensor-core kernel uses (tests only).

It runs the PTX text :mod:`msd.passes.decompose_activations.cuda_kernel` writes, warp by warp with
the 32 lanes as numpy vectors (the warps of a workgroup take turns between barriers, sharing the
block's shared memory), so that the kernel's addressing, fragment packing, loops and
epilogue are checked numerically on a machine without a GPU.  ``mma.sync.aligned.m16n8k32`` is
executed from the PTX ISA's definition of its fragments (which lane holds which element of A, B and
C/D); ``fma.rn.f32`` is computed in float64 and rounded once to f32 (exact product, one extra
rounding of the sum: at most one ulp from the hardware's).  Branches must be warp-uniform (the
kernel's are), every warp still running must meet each ``bar.sync`` (a warp that exits while others
wait at one is an error), and anything outside the subset raises.
"""

from __future__ import annotations

import re
import struct

import numpy as np

LANES = 32
_TYPES = {"b32": np.uint32, "b64": np.uint64, "f32": np.float32, "pred": np.bool_}


def _fragments() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index maps of the int8 m16n8k32 fragments (PTX ISA): for lane l and byte/element i, the
    (row, col) of A (16×32), of B (32×8) and of C (16×8)."""
    lane = np.arange(LANES)
    gid, tq = lane // 4, lane % 4
    a = np.zeros((LANES, 16, 2), np.int64)  # 4 words × 4 bytes
    for i in range(16):
        row = np.where((i < 4) | ((i >= 8) & (i < 12)), gid, gid + 8)
        col = tq * 4 + (i & 3) + (16 if i >= 8 else 0)
        a[:, i] = np.stack([row, col], 1)
    b = np.zeros((LANES, 8, 2), np.int64)  # 2 words × 4 bytes
    for i in range(8):
        b[:, i] = np.stack([tq * 4 + (i & 3) + (16 if i >= 4 else 0), gid], 1)
    c = np.zeros((LANES, 4, 2), np.int64)
    for i in range(4):
        c[:, i] = np.stack([gid + (8 if i >= 2 else 0), tq * 2 + (i & 1)], 1)
    return a, b, c


FRAG_A, FRAG_B, FRAG_C = _fragments()


class Memory:
    """Global memory: one byte array, each buffer at a 256-byte aligned address."""

    def __init__(self) -> None:
        self.data = np.zeros(256, np.uint8)

    def put(self, array: np.ndarray) -> int:
        raw = np.ascontiguousarray(array).view(np.uint8).ravel()
        addr = -(-len(self.data) // 256) * 256
        self.data = np.concatenate([self.data, np.zeros(addr - len(self.data), np.uint8), raw,
                                    np.zeros(256, np.uint8)])
        return addr

    def load(self, addr: np.ndarray, nbytes: int) -> np.ndarray:
        """``nbytes`` at each lane's address → uint8 [lanes, nbytes]."""
        addr = addr.astype(np.int64)
        if (addr < 256).any() or (addr + nbytes > len(self.data)).any():
            raise IndexError(f"load outside every buffer: {addr.min()}..{addr.max()}")
        if (addr % nbytes).any() and nbytes <= 8:
            raise ValueError(f"misaligned {nbytes}-byte load")
        return self.data[addr[:, None] + np.arange(nbytes)]

    def store(self, addr: np.ndarray, raw: np.ndarray) -> None:
        addr = addr.astype(np.int64)
        self.data[addr[:, None] + np.arange(raw.shape[1])] = raw


def _f32_literal(token: str) -> np.float32:
    return np.frombuffer(struct.pack(">I", int(token[2:], 16))[::-1], np.float32)[0]


class Kernel:
    """A parsed ``.entry``: its parameters, registers and instructions."""

    def __init__(self, ptx: str) -> None:
        m = re.search(r"\.entry\s+(\w+)\((.*?)\)", ptx, re.S)
        if m is None:
            raise ValueError("no .entry in the PTX")
        self.name = m.group(1)
        self.params = re.findall(r"\.param\s+\.(u64|u32)\s+(\w+)", m.group(2))
        self.regs = dict((n, t) for t, n in re.findall(r"\.reg\s+\.(\w+)\s+%(\w+);", ptx))
        ntid = re.search(r"\.maxntid\s+(\d+)", ptx)
        self.threads = int(ntid.group(1)) if ntid else LANES
        if self.threads % LANES:
            raise ValueError(f"{self.threads} threads per workgroup: not whole warps")
        shared = re.findall(r"\.shared\s+\.align\s+\d+\s+\.b8\s+(\w+)\[(\d+)\];", ptx)
        self.shared = {name: int(size) for name, size in shared}
        body = ptx[ptx.index("{", m.end()) + 1: ptx.rindex("}")]
        self.code: list[str] = []
        self.labels: dict[str, int] = {}
        for line in body.splitlines():
            line = line.split("//")[0].strip()
            if not line or line.startswith((".reg", ".shared")):
                continue
            if line.endswith(":"):
                self.labels[line[:-1]] = len(self.code)
            else:
                self.code.append(line.rstrip(";"))

    def run(self, mem: Memory, args: list[int], grid: tuple[int, int, int], max_steps: int = 10**7) -> None:
        for bz in range(grid[2]):
            for by in range(grid[1]):
                for bx in range(grid[0]):
                    self._block(mem, args, (bx, by, bz), max_steps)

    def _block(self, mem: Memory, args: list[int], ctaid: tuple[int, int, int], max_steps: int) -> None:
        """One workgroup: its warps run in turn up to each barrier."""
        shared = np.zeros(sum(self.shared.values()) + 16, np.uint8)
        warps = [_Warp(self, mem, args, ctaid, w, shared).run(max_steps) for w in range(self.threads // LANES)]
        live = list(warps)
        while live:
            at_barrier = []
            for w in live:
                try:
                    next(w)
                    at_barrier.append(w)
                except StopIteration:
                    pass
            if at_barrier and len(at_barrier) != len(live):
                raise RuntimeError("a warp exited while others wait at a barrier")
            live = at_barrier


class _Warp:
    def __init__(self, k: Kernel, mem: Memory, args: list[int], ctaid: tuple[int, int, int], warp: int = 0,
                 shared: np.ndarray | None = None) -> None:
        self.k, self.mem, self.shared = k, mem, shared
        self.param = {name: a for (_, name), a in zip(k.params, args)}
        self.reg = {n: np.zeros(LANES, _TYPES[t]) for n, t in k.regs.items()}
        offsets, at = {}, 0
        for name, size in k.shared.items():
            offsets[name] = at
            at += size
        self.symbols = offsets  # shared arrays' addresses
        self.special = {"%tid.x": np.arange(LANES, dtype=np.uint32) + LANES * warp,
                        **{f"%ctaid.{d}": np.full(LANES, c, np.uint32) for d, c in zip("xyz", ctaid)}}

    # -- operands
    def val(self, tok: str, kind: type) -> np.ndarray:
        tok = tok.strip()
        if tok in self.special:
            return self.special[tok].astype(kind)
        if tok in self.symbols:
            return np.full(LANES, self.symbols[tok], kind)
        if tok.startswith("%"):
            return self.reg[tok[1:]]
        if tok.startswith("0f"):
            return np.full(LANES, _f32_literal(tok), np.float32)
        v = int(tok)
        if kind is np.float32:
            raise ValueError(f"integer literal {tok} as f32")
        bits = 64 if kind is np.uint64 else 32
        return np.full(LANES, v % (1 << bits), kind)

    def set(self, tok: str, value: np.ndarray, mask: np.ndarray | None = None) -> None:
        name = tok.strip()[1:]
        value = value.astype(self.reg[name].dtype)
        if mask is None:
            self.reg[name] = value
        else:
            self.reg[name] = np.where(mask, value, self.reg[name])

    def _bits(self, tok: str, kind: str) -> np.ndarray:
        """A 32-bit source operand as its 4 bytes per lane (an f32 value for ``.f32``, else the bits)."""
        if tok.strip().startswith("%"):
            v = self.reg[tok.strip()[1:]]
            v = v.astype(np.float32) if kind == "f32" and v.dtype != np.uint32 else v
        else:
            v = self.val(tok, np.float32 if kind == "f32" else np.uint32)
        return np.ascontiguousarray(v).view(np.uint8).reshape(-1, 4)

    def addr(self, tok: str) -> np.ndarray:
        m = re.fullmatch(r"\[(%\w+)(?:\+(-?\d+))?\]", tok.strip())
        if m is None:
            raise ValueError(f"address {tok!r}")
        return self.reg[m.group(1)[1:]].astype(np.int64) + int(m.group(2) or 0)

    # -- execution
    def run(self, max_steps: int):
        """A generator: yields at each ``bar.sync``, returns at ``ret``."""
        pc, steps = 0, 0
        code = self.k.code
        while pc < len(code):
            steps += 1
            if steps > max_steps:
                raise RuntimeError("step limit")
            line = code[pc]
            pc += 1
            guard = None
            if line.startswith("@"):
                g, line = line.split(None, 1)
                neg = g.startswith("@!")
                guard = self.reg[g[2 if neg else 1:][1:]]
                guard = ~guard if neg else guard
            op, _, rest = line.partition(" ")
            if op == "ret":
                if guard is not None and guard.any() and not guard.all():
                    raise RuntimeError(f"divergent ret at {line!r}")
                if guard is None or guard.all():
                    return
                continue
            if op == "bar.sync":
                yield
                continue
            if op == "bra":
                if guard is None or guard.all():
                    pc = self.k.labels[rest.strip()]
                elif guard.any():
                    raise RuntimeError(f"divergent branch at {line!r}")
                continue
            self.execute(op, rest, guard)

    def execute(self, op: str, rest: str, guard: np.ndarray | None) -> None:
        if op.startswith("mma."):
            return self.mma(op, rest)
        ops = [t.strip() for t in re.split(r",(?![^{]*\})", rest)]
        parts = op.split(".")
        base = parts[0]
        u32, u64, f32 = np.uint32, np.uint64, np.float32
        if base == "ld" and parts[1] == "param":
            self.set(ops[0], np.full(LANES, self.param[ops[1].strip("[]")], u64 if parts[2] == "u64" else u32))
        elif base == "ld" and parts[1] == "global":  # only the guarded lanes load
            vec = parts[2] in ("v2", "v4")
            kind = parts[-1]
            dsts = [d.strip() for d in ops[0].strip("{}").split(",")] if vec else [ops[0]]
            keep = guard if guard is not None else np.ones(LANES, bool)
            raw = np.zeros((LANES, 4 * len(dsts)), np.uint8)
            raw[keep] = self.mem.load(self.addr(ops[1])[keep], 4 * len(dsts))
            words = raw.view(np.float32 if kind == "f32" else np.uint32)
            for i, d in enumerate(dsts):
                self.set(d, words[:, i], guard)
        elif op in ("ld.shared.f32", "ld.shared.u32"):
            a = self.addr(ops[1])
            keep = guard if guard is not None else np.ones(LANES, bool)
            raw = np.zeros((LANES, 4), np.uint8)
            raw[keep] = self.shared[a[keep][:, None] + np.arange(4)]
            self.set(ops[0], raw.view(f32 if op.endswith("f32") else u32)[:, 0], guard)
        elif op in ("st.shared.f32", "st.shared.u32"):
            a = self.addr(ops[0])
            keep = guard if guard is not None else np.ones(LANES, bool)
            self.shared[a[keep][:, None] + np.arange(4)] = self._bits(ops[1], parts[-1])[keep]
        elif op in ("red.shared.max.u32", "red.shared.add.f32"):  # lane by lane, as atomics serialize
            a = self.addr(ops[0])
            v = self.val(ops[1], u32 if parts[-1] == "u32" else f32)
            keep = guard if guard is not None else np.ones(LANES, bool)
            view = self.shared.view(np.uint32 if parts[-1] == "u32" else np.float32)
            for lane in np.flatnonzero(keep):
                i = a[lane] // 4
                view[i] = max(view[i], v[lane]) if parts[2] == "max" else np.float32(view[i] + v[lane])
        elif base == "st":
            a = self.addr(ops[0])
            keep = guard if guard is not None else np.ones(LANES, bool)
            self.mem.store(a[keep], self._bits(ops[1], parts[-1])[keep])
        elif op == "mov.b32":  # the bits, whatever the registers' types
            src = self.reg[ops[1][1:]] if ops[1].startswith("%") else self.val(ops[1], u32)
            self.set(ops[0], src.view(self.reg[ops[0][1:]].dtype), guard)
        elif op == "shfl.sync.bfly.b32":
            v = self.reg[ops[1][1:]]
            self.set(ops[0], v[np.arange(LANES) ^ int(ops[2])], guard)
        elif op in ("abs.f32", "cvt.rni.f32.f32"):
            v = self.val(ops[1], f32)
            self.set(ops[0], np.abs(v) if base == "abs" else np.rint(v), guard)
        elif op == "cvt.rzi.s32.f32":
            v = self.val(ops[1], f32)
            self.set(ops[0], np.trunc(np.nan_to_num(v)).astype(np.int64).astype(np.int32).view(u32), guard)
        elif op in ("max.f32", "min.f32", "div.rn.f32", "sub.rn.f32"):  # max/min: a NaN loses, as in PTX
            a, b = self.val(ops[1], f32), self.val(ops[2], f32)
            with np.errstate(all="ignore"):
                f = {"max": np.fmax, "min": np.fmin, "div": np.divide, "sub": np.subtract}[base]
                self.set(ops[0], f(a, b).astype(f32), guard)
        elif op in ("max.u32", "or.b32", "div.u32"):
            a, b = self.val(ops[1], u32).astype(np.int64), self.val(ops[2], u32).astype(np.int64)
            f = np.maximum(a, b) if base == "max" else a | b if base == "or" else a // b
            self.set(ops[0], f.astype(u32), guard)
        elif op == "setp.lt.f32":
            self.set(ops[0], self.val(ops[1], f32) < self.val(ops[2], f32), guard)
        elif op == "cvta.to.global.u64" or op in ("mov.u32", "mov.f32"):
            kind = f32 if op == "mov.f32" else (u64 if op.endswith("u64") else u32)
            self.set(ops[0], self.val(ops[1], kind), guard)
        elif op in ("shr.u32", "shl.b32", "and.b32", "xor.b32", "add.u32", "sub.u32", "mul.lo.u32"):
            a, b = self.val(ops[1], u32).astype(np.int64), self.val(ops[2], u32).astype(np.int64)
            f = {"shr": a >> b, "shl": a << b, "and": a & b, "xor": a ^ b, "add": a + b, "sub": a - b,
                 "mul": a * b}[base]
            self.set(ops[0], (f % (1 << 32)).astype(u32), guard)
        elif op == "mad.lo.u32":
            a, b, c = (self.val(t, u32).astype(np.int64) for t in ops[1:4])
            self.set(ops[0], ((a * b + c) % (1 << 32)).astype(u32), guard)
        elif op == "add.u64":
            self.set(ops[0], self.val(ops[1], u64) + self.val(ops[2], u64), guard)
        elif op == "mul.wide.u32":
            self.set(ops[0], self.val(ops[1], u32).astype(u64) * self.val(ops[2], u32).astype(u64), guard)
        elif op == "mad.wide.u32":
            prod = self.val(ops[1], u32).astype(u64) * self.val(ops[2], u32).astype(u64)
            self.set(ops[0], prod + self.val(ops[3], u64), guard)
        elif op in ("setp.lt.u32", "setp.ne.u32", "setp.eq.u32"):
            a, b = self.val(ops[1], u32), self.val(ops[2], u32)
            self.set(ops[0], {"lt": a < b, "ne": a != b, "eq": a == b}[parts[1]], guard)
        elif op == "and.pred":
            self.set(ops[0], self.reg[ops[1][1:]] & self.reg[ops[2][1:]], guard)
        elif op in ("selp.b32", "selp.f32"):
            p, kind = self.reg[ops[3][1:]], f32 if op == "selp.f32" else u32
            self.set(ops[0], np.where(p, self.val(ops[1], kind), self.val(ops[2], kind)), guard)
        elif op == "cvt.rn.f32.s32":
            self.set(ops[0], self.val(ops[1], u32).view(np.int32).astype(f32), guard)
        elif op in ("mul.rn.f32", "add.rn.f32"):
            a, b = self.val(ops[1], f32), self.val(ops[2], f32)
            self.set(ops[0], a * b if base == "mul" else a + b, guard)
        elif op == "fma.rn.f32":
            a, b, c = (self.val(t, f32).astype(np.float64) for t in ops[1:4])
            self.set(ops[0], (a * b + c).astype(f32), guard)
        else:
            raise NotImplementedError(f"PTX instruction {op!r} is outside the emulated subset")

    def mma(self, op: str, rest: str) -> None:
        if op != "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32":
            raise NotImplementedError(op)
        groups = [[t.strip() for t in g.split(",")] for g in re.findall(r"\{([^}]*)\}", rest)]
        d, a, b, c = groups

        def bytes_of(regs: list[str]) -> np.ndarray:  # [lanes, 4·regs] signed bytes
            return np.stack([self.reg[x[1:]] for x in regs], 1).astype(np.uint32).view(np.int8).reshape(LANES, -1)

        av, bv = bytes_of(a).astype(np.int64), bytes_of(b).astype(np.int64)
        cv = np.stack([self.reg[x[1:]].view(np.int32) for x in c], 1).astype(np.int64)
        A, B, C = np.zeros((16, 32), np.int64), np.zeros((32, 8), np.int64), np.zeros((16, 8), np.int64)
        A[FRAG_A[..., 0], FRAG_A[..., 1]] = av
        B[FRAG_B[..., 0], FRAG_B[..., 1]] = bv
        C[FRAG_C[..., 0], FRAG_C[..., 1]] = cv
        D = (A @ B + C) % (1 << 32)  # int32 wrap-around, as the hardware's
        out = D[FRAG_C[..., 0], FRAG_C[..., 1]].astype(np.uint32)
        for i, x in enumerate(d):
            self.reg[x[1:]] = out[:, i]


__all__ = ["FRAG_A", "FRAG_B", "FRAG_C", "Kernel", "Memory"]
