"""The fused CPU kernel alone: one dispatch of ``cpu_kernel.KernelSpec``, no quantizer, no host copies.

    python benchmarks/kernel.py --shapes 4096x11008,11008x4096 --ms 512 --act-scale group,row
    python benchmarks/kernel.py --shapes 4096x44032 --ms 1 --cold --prefetch 0,2048,4096,8192,16384
    python benchmarks/kernel.py --shapes 4096x11008 --ms 512 --act-scale group,row --code-rows padded,unpadded
    python benchmarks/kernel.py --shapes 4096x11008 --ms 512 --blocks 4x2,8x1,6x1 --act-scale row
    python benchmarks/kernel.py --format int8 --isas avx2,avx512-vnni --shapes 4096x11008 --ms 512
    python benchmarks/kernel.py --isas amx-int8,avx512-vnni --shapes 4096x11008,11008x4096 --ms 128,512
    python benchmarks/kernel.py --isas amx-int8,avx512-vnni --format int8 --shapes 4096x11008 --ms 512
    python benchmarks/kernel.py --isas amx-int8 --shapes 4096x11008 --ms 512 --amx-groups 1,2,4,8,16
    python benchmarks/kernel.py --shapes 576x576,1536x576,4096x4096 --ms 512 --quantizer
    python benchmarks/kernel.py --isas amx-int8,avx512-vnni --shapes 4096x3840,4096x11008 --ms 512 --amx-prefetch 0,1024
    python benchmarks/kernel.py --isas amx-int8 --shapes 4096x3840,4096x11008 --ms 512 --workgroups 32,35,40
    python benchmarks/kernel.py --shapes 11008x4096 --ms 16 --rounds 6 --calls 20 --caller-policy other,batch

Every combination of the lists given (shapes KxN, M, ISA, activation scale per group of K or per row,
register block ROWSxTILES, prefetch distance, activation code rows padded as ``cpu_kernel.code_row`` pads
them or not, workgroups) is compiled as the pass would emit it (register block and
workgroups from ``emit_kernel``, unless ``--blocks``), its operands random in the kernel's layouts (the
timing does not depend on the values), and timed in interleaved rounds (``--rounds``, each a block of
``--calls`` calls per configuration).  Printed per configuration: the median call and its 10th/90th
percentiles (a bimodal row shows there), int8 GOP/s (2·M·N·K·slices) as a share of the ISA's dot-product
peak, and the packed weight bytes per second as a share of the read bandwidth, both ceilings measured in
the same run (``_ceilings.py``).  ``--cold`` writes a buffer twice the L3 size before every timed call
(pick a large N: a cold call's fixed cost is ~0.3 ms); ``--threads`` sets IREE's worker count;
``--quantizer`` also times the activation-quantizing kernel that feeds each (K, M), alone.  The last
column is the CPU time the calling thread itself used per call (``time.thread_time``): IREE's caller
sometimes stays busy through a call, taking a core from a worker (``--pin-caller`` puts it on one CPU;
``--caller-policy`` runs the calls as msd's runtime does, under ``SCHED_BATCH``, and/or without).
The docs' kernel-alone figures (docs/benchmarks.md "Fused CPU kernel") come from the commands above.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ceilings import amx_peak, dot_peak, read_bandwidth  # noqa: E402
from _machine import cpu_model  # noqa: E402
from linear import cache_flusher  # noqa: E402

# group (None: K), 4-bit codes as nibbles
FORMATS = {"int4-g32": (32, True), "int4-g128": (128, True), "int8-g32": (32, False), "int8": (None, False)}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def spec_for(fmt: str, k: int, n: int, isa: str, per_group: bool, block: tuple[int, int] | None, slices: int):
    from msd.passes.decompose_activations import emit_kernel
    from msd.passes.decompose_activations.cpu_kernel import ISAS, KernelSpec

    group, nibbles = FORMATS[fmt]
    rows, cols = block or emit_kernel._register_block(ISAS[isa].lanes, slices)
    workgroups = emit_kernel.kernel_workgroups(n, isa, cols)
    return KernelSpec(isa, n, k, group or k, slices, per_group and group is not None, offset=fmt.startswith("int4"),
                      rows=rows, cols=cols, workgroups=workgroups, nibbles=nibbles)


def operands(spec, m: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random arrays of the dispatch's operand types (``?`` = ``m``)."""
    out = []
    for t in spec.operand_types():
        *dims, elem = t.removeprefix("tensor<").removesuffix(">").split("x")
        shape = [m if d == "?" else int(d) for d in dims]
        if elem == "f32":
            out.append((rng.random(shape) + 0.5).astype(np.float32))
        elif elem == "i32":
            out.append(rng.integers(-1000, 1000, shape).astype(np.int32))
        else:
            out.append(rng.integers(-127, 128, shape).astype(np.int8))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--format", default="int4-g32", choices=sorted(FORMATS))
    ap.add_argument("--shapes", default="4096x11008", help="comma-separated KxN")
    ap.add_argument("--ms", default="512", help="comma-separated M")
    ap.add_argument("--isas", default="", help="comma-separated kernel ISAs (default: this CPU's first)")
    ap.add_argument("--slices", type=int, default=2)
    ap.add_argument("--act-scale", default="group", help="group and/or row: the activation scale per K group or row")
    ap.add_argument("--blocks", default="", help="comma-separated ROWSxTILES register blocks (default: the pass's)")
    ap.add_argument("--prefetch", default="", help="comma-separated prefetch distances in bytes (default: "
                    "cpu_kernel.PREFETCH_BYTES)")
    ap.add_argument("--code-rows", default="padded", help="padded and/or unpadded: the activation codes' rows "
                    "as cpu_kernel.code_row lays them out, or K long")
    ap.add_argument("--amx-groups", default="", help="comma-separated groups per pipelined AMX block at most "
                    "(amx-int8; default: cpu_kernel.AMX_GROUP_BLOCK)")
    ap.add_argument("--amx-prefetch", default="", help="comma-separated distances in bytes at which the AMX "
                    "blocks' staging prefetches the weight codes (amx-int8; default: cpu_kernel.AMX_PREFETCH_BYTES)")
    ap.add_argument("--workgroups", default="", help="comma-separated workgroup counts (each at most the kernel's "
                    "register blocks; default: emit_kernel.kernel_workgroups)")
    ap.add_argument("--quantizer", action="store_true", help="also time the activation-quantizing kernel that feeds "
                    "each (K, M) (quantize_kernel.QuantizeSpec as the pass would emit it for f32 rows)")
    ap.add_argument("--cold", action="store_true", help="evict the caches before every timed call")
    ap.add_argument("--threads", type=int, default=0, help="IREE workers (default: IREE's)")
    ap.add_argument("--caller-policy", default="batch", help="batch and/or other: the calling thread's Linux "
                    "scheduling policy during each call (msd's runtime uses batch: runtime.module.batch_caller)")
    ap.add_argument("--pin-caller", type=int, default=-1, help="run the calling thread on this CPU only (the "
                    "workers keep theirs): whether the caller competes with a worker for its core")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--calls", type=int, default=8)
    args = ap.parse_args(argv)

    import iree.compiler as ireec
    import iree.runtime as rt

    from msd.compiler.pipeline.targets import kernel_isas, resolve
    from msd.passes.decompose_activations import cpu_kernel
    from msd.passes.decompose_activations.quantize_kernel import QuantizeSpec
    from msd.runtime.module import batch_caller

    if args.threads:
        rt.flags.parse_flags(f"--task_topology_group_count={args.threads}")
    isas = [i for i in args.isas.split(",") if i] or kernel_isas(resolve("llvm-cpu"))[:1]
    if not isas:
        raise SystemExit("this CPU has none of the fused kernel's ISAs")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    blocks = [tuple(int(v) for v in b.split("x")) for b in args.blocks.split(",") if b] or [None]
    prefetches = _ints(args.prefetch) or [cpu_kernel.PREFETCH_BYTES]
    scales = [s for s in args.act_scale.split(",") if s]
    code_rows = [c for c in args.code_rows.split(",") if c]
    padded = cpu_kernel.code_row
    config = rt.Config("local-task")
    rng = np.random.default_rng(0)
    runs = []
    policies = [p for p in args.caller_policy.split(",") if p]
    if not set(policies) <= {"batch", "other"}:
        raise SystemExit(f"--caller-policy takes batch and/or other, not {args.caller_policy!r}")
    amx_groups = _ints(args.amx_groups) or [cpu_kernel.AMX_GROUP_BLOCK]
    amx_prefetch = _ints(args.amx_prefetch) or [cpu_kernel.AMX_PREFETCH_BYTES]
    for (k, n), m, isa, scale, block, pf, rows, ag, apf, wg in itertools.product(
            shapes, _ints(args.ms), isas, scales, blocks, prefetches, code_rows, amx_groups, amx_prefetch,
            _ints(args.workgroups) or [0]):
        if (ag, apf) != (amx_groups[0], amx_prefetch[0]) and not cpu_kernel.ISAS[isa].amx:
            continue
        spec = spec_for(args.format, k, n, isa, scale == "group", block, args.slices)
        if wg:
            spec = dataclasses.replace(spec, workgroups=min(wg, spec.blocks))
        cpu_kernel.PREFETCH_BYTES = pf  # all read when the kernel's text and operand types are written
        cpu_kernel.AMX_GROUP_BLOCK, cpu_kernel.AMX_PREFETCH_BYTES = ag, apf
        cpu_kernel.code_row = padded if rows == "padded" else (lambda k: k)
        vmfb = ireec.compile_str(spec.standalone_module(), extra_args=list(resolve("llvm-cpu").flags))
        ctx = rt.SystemContext(config=config)
        ctx.add_vm_module(rt.VmModule.copy_buffer(ctx.instance, vmfb))
        fn = ctx.modules.module["linear"]
        ops = operands(spec, m, rng)
        row_len = spec.operand_types()[0].split("x")[2]
        dev = [rt.asdevicearray(config.device, o) for o in ops]
        fn(*dev)
        weight = sum(o.nbytes for o, role in zip(ops, spec.roles()) if role in ("w", "scale", "off"))
        label = (f"{k}x{n} M={m} {isa} scale/{scale} block {spec.rows}x{spec.cols} prefetch {pf} code rows {row_len}"
                 f" workgroups {spec.workgroups}")
        if spec.amx:
            label += f" amx groups {spec.amx_group_block} amx prefetch {apf}"
        for policy in policies:
            runs.append((label + (f" caller {policy}" if len(policies) > 1 else ""), isa, fn, dev,
                         2 * m * n * k * spec.slices, weight, [], [], policy == "batch"))
    quantizers = []
    if args.quantizer:
        for k, m in dict.fromkeys((k, m) for (k, _), m in itertools.product(shapes, _ints(args.ms))):
            spec = spec_for(args.format, k, 16, isas[0], "group" in scales, None, args.slices)
            q = QuantizeSpec(k, spec.group, spec.slices, spec.scale_per_group, spec.offset, spec.weight_bias)
            vmfb = ireec.compile_str(q.standalone_module(), extra_args=list(resolve("llvm-cpu").flags))
            ctx = rt.SystemContext(config=config)
            ctx.add_vm_module(rt.VmModule.copy_buffer(ctx.instance, vmfb))
            x = rt.asdevicearray(config.device, rng.standard_normal((m, k)).astype(np.float32))
            quantizers.append((f"quantize K={k} M={m} g{q.group} p={q.slices}", ctx.modules.module["quantize"],
                               [x], m * k, []))
    flush = cache_flusher() if args.cold else None
    cpus = os.sched_getaffinity(0)
    if args.pin_caller >= 0:
        os.sched_setaffinity(0, {args.pin_caller})
    for _ in range(args.rounds):
        for _, fn, dev, _, times in quantizers:
            for _ in range(args.calls):
                t0 = time.perf_counter()
                fn(*dev)
                times.append(time.perf_counter() - t0)
        for _, _, fn, dev, _, _, times, caller, batch in runs:
            for _ in range(args.calls):
                if flush is not None:
                    flush()
                with batch_caller(batch):
                    c0, t0 = time.thread_time(), time.perf_counter()
                    fn(*dev)
                    times.append(time.perf_counter() - t0)
                caller.append(time.thread_time() - c0)
    os.sched_setaffinity(0, cpus)
    threads = args.threads or 2
    # amx-int8: the vpdpbusd zmm peak (its other rows'), measured once with avx512-vnni's
    bases = {isa: "avx512-vnni" if cpu_kernel.ISAS[isa].amx else isa for isa in isas}
    measured = {base: dot_peak(base, threads) for base in dict.fromkeys(bases.values())}
    peaks = {isa: measured[base] for isa, base in bases.items()}
    amx = [amx_peak(threads, kb) for kb in (32, 64)] if any(cpu_kernel.ISAS[i].amx for i in isas) else []
    bandwidth = read_bandwidth(threads)
    print(f"{cpu_model()}; format {args.format}, p={args.slices}, {'cold' if args.cold else 'warm'}, "
          f"{args.rounds}x{args.calls} calls; read bandwidth {bandwidth:.1f} GB/s, dot peak "
          f"{', '.join(f'{i} {p:.0f}' for i, p in measured.items())} GOP/s"
          + (f"; AMX tdpbssd {amx[0]:.0f} / {amx[1]:.0f} GOP/s with 32 / 64 bytes of K" if amx else "")
          + " (same run; the shares below are of the vpdpbusd peak)")
    print("| configuration | median ms | p10 / p90 ms | int8 GOP/s (of peak) | weight GB/s (of read) "
          "| caller CPU ms, median / p90 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, isa, _, _, ops, weight, times, caller, _ in runs:
        med, p10, p90 = (float(np.percentile(times, q)) for q in (50, 10, 90))
        gops, gbs = ops / med / 1e9, weight / med / 1e9
        print(f"| {label} | {med * 1e3:.3f} | {p10 * 1e3:.2f} / {p90 * 1e3:.2f} | {gops:.0f} ({gops / peaks[isa]:.0%}) "
              f"| {gbs:.1f} ({gbs / bandwidth:.0%}) | {np.median(caller) * 1e3:.2f} / "
              f"{np.percentile(caller, 90) * 1e3:.2f} |")
    if quantizers:
        print("\n| quantizer | median ms | p10 / p90 ms | activation elements per ns |")
        print("| --- | ---: | ---: | ---: |")
        for label, _, _, elements, times in quantizers:
            med, p10, p90 = (float(np.percentile(times, q)) for q in (50, 10, 90))
            print(f"| {label} | {med * 1e3:.3f} | {p10 * 1e3:.2f} / {p90 * 1e3:.2f} | {elements / med / 1e9:.2f} |")
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
