"""This machine's ceilings, measured: memory read bandwidth, and the byte dot product's peak rate.

``read_bandwidth(threads)``: GB/s of reading a buffer far larger than the caches with torch (``threads``
threads), the best of a few rounds of two readers: an int64 sum, and f32 matrix-vector products over
the same bytes as ``[16384, 4096]`` blocks (MKL's gemv streams ~10% faster than the sum here: 31 against
27 GB/s on the 2-core AVX-512 VM).  ``dot_peak(isa, threads)``: GOP/s of the fused
kernel's dot-product instruction (``vpdpbusd`` zmm/ymm, Arm ``sdot``, AVX2's ``vpmaddubsw`` +
``vpmaddwd`` + add) in an IREE dispatch of ``threads`` workgroups, each running 16 independent
accumulator chains in registers with no memory traffic; one op = one multiply or one add (a 64-byte
``vpdpbusd`` is 128 ops).  ``amx_peak(threads, k)``: GOP/s of Intel AMX's ``tdpbssd`` on full 16-row
tiles with ``k`` bytes of K per product (64: the tile's most; 32: a group of 32, as msd's ``amx-int8``
kernel multiplies 4-bit weights in groups of 32), 4 independent accumulator tiles per thread.  The kernel
benchmarks state their rates as shares of these.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from msd.passes.decompose_activations.cpu_kernel import ISAS

CHAINS = 16  # independent accumulators per thread: more than the dot's latency × throughput


def _chains(isa: str) -> int:
    """Accumulators per thread: AVX2's form (16 ymm registers) uses 8, each chain's operand loaded in the loop
    (at row (i + j) mod 8: loop-invariant multiplies would be hoisted and leave only the adds)."""
    return 8 if ISAS[isa].dot == "maddubs" else CHAINS
ITERS = 200_000


def read_bandwidth(threads: int, mib: int = 1024, rounds: int = 5) -> float:
    """GB/s (10^9 bytes/s) reading ``mib`` MiB once, best of ``rounds``."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        buf = torch.ones(mib * 2**20 // 8, dtype=torch.int64)
        rows = buf.view(torch.float32).view(-1, 4096)
        blocks = [rows[i:i + 16384] for i in range(0, rows.shape[0], 16384)]
        x = torch.ones(1, 4096)
        readers = (buf.sum, lambda: [torch.nn.functional.linear(x, b) for b in blocks])
        best = 0.0
        for _ in range(rounds + 1):  # the first round faults the pages in
            for read in readers:
                t0 = time.perf_counter()
                read()
                dt = time.perf_counter() - t0
                best = max(best, buf.numel() * 8 / dt / 1e9)
        return best
    finally:
        torch.set_num_threads(old)


def _peak_module(isa: str, threads: int) -> str:
    lanes = ISAS[isa].lanes
    vi, vb = f"vector<{lanes}xi32>", f"vector<{4 * lanes}xi8>"
    vh = f"vector<{2 * lanes}xi16>"
    dot = ISAS[isa].dot
    chains = _chains(isa)
    lines = [
        "module {",
        "stream.executable private @peak_ex {",
        "  stream.executable.export public @peak workgroups() -> (index, index, index) {",
        f"    %x = arith.constant {threads} : index",
        "    %one = arith.constant 1 : index",
        "    stream.return %x, %one, %one : index, index, index",
        "  }",
        "  builtin.module {",
        "    func.func @peak(%a_b: !stream.binding, %b_b: !stream.binding, %o_b: !stream.binding) {",
        "      %c0 = arith.constant 0 : index",
        "      %c1 = arith.constant 1 : index",
        f"      %n = arith.constant {ITERS} : index",
        f"      %a = stream.binding.subspan %a_b[%c0] : !stream.binding -> memref<{4 * lanes}xi8>",
        f"      %b = stream.binding.subspan %b_b[%c0] : !stream.binding -> memref<{chains}x{4 * lanes}xi8>",
        f"      %o = stream.binding.subspan %o_b[%c0] : !stream.binding -> memref<{threads}x{lanes}xi32>",
        f"      %av = vector.load %a[%c0] : memref<{4 * lanes}xi8>, {vb}",
        f"      %zi = arith.constant dense<0> : {vi}",
        f"      %ones = arith.constant dense<1> : {vh}",
        f"      %mask = arith.constant {chains - 1} : index",
    ]
    for j in range(chains):
        lines.append(f"      %cj{j} = arith.constant {j} : index")
        if dot != "maddubs":
            lines.append(f"      %bv{j} = vector.load %b[%cj{j}, %c0] : memref<{chains}x{4 * lanes}xi8>, {vb}")
    starts = ", ".join(f"%s{j} = %zi" for j in range(chains))
    lines.append(f"      %r:{chains} = scf.for %i = %c0 to %n step %c1 iter_args({starts}) -> "
                 f"({', '.join([vi] * chains)}) {{")
    outs = []
    for j in range(chains):
        if dot == "maddubs":
            lines.append(f"        %ij{j} = arith.addi %i, %cj{j} : index")
            lines.append(f"        %ix{j} = arith.andi %ij{j}, %mask : index")
            lines.append(f"        %bv{j} = vector.load %b[%ix{j}, %c0] : memref<{chains}x{4 * lanes}xi8>, {vb}")
            lines.append(f"        %h{j} = llvm.call_intrinsic \"llvm.x86.avx2.pmadd.ub.sw\"(%av, %bv{j}) : "
                         f"({vb}, {vb}) -> {vh}")
            lines.append(f"        %d{j} = llvm.call_intrinsic \"llvm.x86.avx2.pmadd.wd\"(%h{j}, %ones) : "
                         f"({vh}, {vh}) -> {vi}")
            lines.append(f"        %t{j} = arith.addi %s{j}, %d{j} : {vi}")
        else:
            lines.append(f"        %t{j} = llvm.call_intrinsic \"{ISAS[isa].intrinsic}\"(%s{j}, %av, %bv{j}) : "
                         f"({vi}, {vb}, {vb}) -> {vi}")
        outs.append(f"%t{j}")
    lines.append(f"        scf.yield {', '.join(outs)} : {', '.join([vi] * chains)}")
    lines.append("      }")
    total = "%r#0"
    for j in range(1, chains):
        lines.append(f"      %sum{j} = arith.addi {total}, %r#{j} : {vi}")
        total = f"%sum{j}"
    lines += [
        "      %wid = stream.dispatch.workgroup.id[0] : index",
        f"      vector.store {total}, %o[%wid, %c0] : memref<{threads}x{lanes}xi32>, {vi}",
        "      return",
        "    }",
        "  }",
        "}",
        f"util.func public @peak(%a: tensor<{4 * lanes}xi8>, %b: tensor<{chains}x{4 * lanes}xi8>) -> "
        f"tensor<{threads}x{lanes}xi32> {{",
        f"  %y = flow.dispatch @peak_ex::@peak(%a, %b) : (tensor<{4 * lanes}xi8>, tensor<{chains}x{4 * lanes}xi8>) -> "
        f"tensor<{threads}x{lanes}xi32>",
        f"  util.return %y : tensor<{threads}x{lanes}xi32>",
        "}",
        "}",
    ]
    return "\n".join(lines)


def dot_peak(isa: str, threads: int, rounds: int = 5) -> float:
    """GOP/s of ``isa``'s byte dot product on ``threads`` threads (best of ``rounds``)."""
    import iree.compiler as ireec
    import iree.runtime as rt

    from msd.compiler.pipeline.targets import resolve

    vmfb = ireec.compile_str(_peak_module(isa, threads), extra_args=list(resolve("llvm-cpu").flags))
    config = rt.Config("local-task")
    ctx = rt.SystemContext(config=config)
    ctx.add_vm_module(rt.VmModule.copy_buffer(ctx.instance, vmfb))
    fn = ctx.modules.module["peak"]
    lanes = ISAS[isa].lanes
    a = np.ones(4 * lanes, np.int8)
    b = np.ones((_chains(isa), 4 * lanes), np.int8)
    out = np.asarray(fn(a, b))
    expected = ITERS * _chains(isa) * 4
    if not (out == expected).all():  # the loop really ran (nothing folded away)
        raise RuntimeError(f"dot peak kernel computed {out.ravel()[:4]}, expected {expected}")
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        np.asarray(fn(a, b))
        dt = time.perf_counter() - t0
        best = max(best, threads * ITERS * _chains(isa) * lanes * 4 * 2 / dt / 1e9)
    return best


AMX_ITERS = 200_000


def _amx_peak_module(threads: int, k: int) -> str:
    """A dispatch of ``threads`` workgroups, each: 4 accumulator tiles += A × B (16 × ``k`` bytes by ``k``/4 ×
    64), ``AMX_ITERS`` times; the first accumulator's 16×16 i32 written out."""
    cfg = {0: 1}
    for t, (rows, colsb) in enumerate([(16, 64)] * 4 + [(16, k)] * 2 + [(k // 4, 64)] * 2):
        cfg[16 + 2 * t], cfg[48 + t] = colsb, rows
    lines = [
        "module {",
        "stream.executable private @amx_ex {",
        "  stream.executable.export public @amx workgroups() -> (index, index, index) {",
        f"    %x = arith.constant {threads} : index",
        "    %one = arith.constant 1 : index",
        "    stream.return %x, %one, %one : index, index, index",
        "  }",
        "  builtin.module {",
        "    func.func @amx(%a_b: !stream.binding, %o_b: !stream.binding) {",
        "      %c0 = arith.constant 0 : index",
        "      %c1 = arith.constant 1 : index",
        f"      %n = arith.constant {AMX_ITERS} : index",
        "      %a = stream.binding.subspan %a_b[%c0] : !stream.binding -> memref<1024xi8>",
        f"      %o = stream.binding.subspan %o_b[%c0] : !stream.binding -> memref<{threads}x16x16xi32>",
        "      %cfg = memref.alloca() : memref<64xi8>",
        "      %z = arith.constant dense<0> : vector<64xi8>",
        "      vector.store %z, %cfg[%c0] : memref<64xi8>, vector<64xi8>",
    ]
    for byte, v in sorted(cfg.items()):
        lines += [f"      %v{byte} = arith.constant {v} : i8", f"      %i{byte} = arith.constant {byte} : index",
                  f"      memref.store %v{byte}, %cfg[%i{byte}] : memref<64xi8>"]
    for name, mem, ty in (("cfg", "%cfg", "memref<64xi8>"), ("a", "%a", "memref<1024xi8>")):
        lines += [f"      %{name}x = memref.extract_aligned_pointer_as_index {mem} : {ty} -> index",
                  f"      %{name}i = arith.index_cast %{name}x : index to i64",
                  f"      %{name}p = llvm.inttoptr %{name}i : i64 to !llvm.ptr"]
    lines += [f"      %t{i} = llvm.mlir.constant({i} : i8) : i8" for i in range(8)]
    lines += [
        "      %s64 = arith.constant 64 : i64",
        '      llvm.call_intrinsic "llvm.x86.ldtilecfg"(%cfgp) : (!llvm.ptr) -> ()',
        *(f'      llvm.call_intrinsic "llvm.x86.tilezero"(%t{i}) : (i8) -> ()' for i in range(4)),
        *(f'      llvm.call_intrinsic "llvm.x86.tileloadd64"(%t{i}, %ap, %s64) : (i8, !llvm.ptr, i64) -> ()'
          for i in range(4, 8)),
        "      scf.for %i = %c0 to %n step %c1 {",
        *(f'        llvm.call_intrinsic "llvm.x86.tdpbssd"(%t{c}, %t{a}, %t{b}) : (i8, i8, i8) -> ()'
          for c, a, b in ((0, 4, 6), (1, 4, 7), (2, 5, 6), (3, 5, 7))),
        "      }",
        "      %wid = stream.dispatch.workgroup.id[0] : index",
        "      %k1024 = arith.constant 1024 : index",
        "      %ob = arith.muli %wid, %k1024 : index",
        "      %ox = memref.extract_aligned_pointer_as_index %o : " + f"memref<{threads}x16x16xi32> -> index",
        "      %oa = arith.addi %ox, %ob : index",
        "      %oi = arith.index_cast %oa : index to i64",
        "      %op = llvm.inttoptr %oi : i64 to !llvm.ptr",
        '      llvm.call_intrinsic "llvm.x86.tilestored64"(%t0, %op, %s64) : (i8, !llvm.ptr, i64) -> ()',
        '      llvm.call_intrinsic "llvm.x86.tilerelease"() : () -> ()',
        "      return",
        "    }",
        "  }",
        "}",
        f"util.func public @amx(%a: tensor<1024xi8>) -> tensor<{threads}x16x16xi32> {{",
        f"  %y = flow.dispatch @amx_ex::@amx(%a) : (tensor<1024xi8>) -> tensor<{threads}x16x16xi32>",
        f"  util.return %y : tensor<{threads}x16x16xi32>",
        "}",
        "}",
    ]
    return "\n".join(lines)


def amx_peak(threads: int, k: int = 64, rounds: int = 5) -> float:
    """GOP/s of AMX ``tdpbssd`` with ``k`` bytes of K per product on ``threads`` threads (best of ``rounds``);
    NaN where the CPU or the OS does not let this process use AMX."""
    import iree.compiler as ireec
    import iree.runtime as rt

    from msd.compiler.pipeline.targets import kernel_isas, resolve
    from msd.runtime import enable_amx

    if "amx-int8" not in kernel_isas(resolve("llvm-cpu")) or not enable_amx():
        return float("nan")
    vmfb = ireec.compile_str(_amx_peak_module(threads, k), extra_args=list(resolve("llvm-cpu").flags))
    config = rt.Config("local-task")
    ctx = rt.SystemContext(config=config)
    ctx.add_vm_module(rt.VmModule.copy_buffer(ctx.instance, vmfb))
    fn = ctx.modules.module["amx"]
    a = np.ones(1024, np.int8)
    out = np.asarray(fn(a))
    if not (out == AMX_ITERS * k).all():  # the loop really ran
        raise RuntimeError(f"AMX peak kernel computed {out.ravel()[:4]}, expected {AMX_ITERS * k}")
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        np.asarray(fn(a))
        dt = time.perf_counter() - t0
        best = max(best, threads * AMX_ITERS * 4 * 16 * 16 * k * 2 / dt / 1e9)
    return best


__all__ = ["amx_peak", "dot_peak", "read_bandwidth"]
