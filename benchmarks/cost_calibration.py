"""Check msd's cost model against this machine: predicted vs measured MSD/baseline time ratios.

    python benchmarks/cost_calibration.py            # measure linear.py's shapes (a few minutes) and compare
                                                     # → the "cost_calibration.py" block of docs/targets.md
    python benchmarks/cost_calibration.py --fit      # fit the cpu-host profile to docs/benchmarks.md (no run)
    python benchmarks/cost_calibration.py --quick    # M=1,16 of one shape, 2 rounds: a smoke test (no docs)
    python benchmarks/cost_calibration.py --kernel   # cpu-host-kernel against the fused-kernel runs recorded
                                                     # in docs/benchmarks.md (no run)

The shapes are those of ``benchmarks/linear.py`` (4096x4096 as a chain of 4 layers, 4096→11008 and
11008→4096; M = 1, 16, 128), built with its ``make_layers`` and timed with its ``time_calls``/``warm_up``:
IREE's own lowering (``slices=0``) and MSD with 1, 2 and 3 slices, interleaved round-robin, per-layer
median.  For each (shape, M, p) the measured ratio time(MSD p) / time(baseline) is compared with
``msd.cost.model.estimate(cpu-host, ...)``; a prediction passes within ±30 % of the measured ratio.

``--kernel`` reads the fused-kernel tables of docs/benchmarks.md ("Fused CPU kernel": each under the
``linear.py --format FORMAT`` command that produced it) and compares each "MSD p=N fused kernel" median
with the ``cpu-host-kernel`` profile's prediction (msd's quantizer and kernel, two dispatches).  The profile
models the AVX-512 VNNI kernel: a table that also has "MSD p=N VNNI kernel" columns (where ``auto`` picked
``amx-int8``) is compared through those.

``--fit`` reads the per-layer medians of the linear.py run recorded in docs/benchmarks.md and fits the
seven constants of the ``cpu-host`` profile (bandwidth, f32 and int8 matrix rates, vector rate, dispatch
cost, memory/compute overlap, page-fault cost) by least squares on log time (Nelder-Mead); it prints
them for ``msd/cost/hardware.py`` and the residuals.  The profile in hardware.py holds the fitted values;
the default run then checks them against a fresh measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_block  # noqa: E402

DOC = REPO / "docs" / "targets.md"
BENCH_DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- cost_calibration.py: begin -->", "<!-- cost_calibration.py: end -->"
TOLERANCE = 0.30
SLICES = (1, 2, 3)
MS = (1, 16, 128)
SHAPES = {"4096x4096 ×4": (4096, 4096, 4), "4096→11008": (4096, 11008, 1), "11008→4096": (11008, 4096, 1)}
FAULTS: list[tuple[str, int, float, float]] = []  # (shape, M, faults per layer and call, kernel s per fault)
FIT_PARAMS = ("bandwidth", "f32", "i8", "vector", "launch_s", "overlap", "fault_s")


@dataclass(frozen=True)
class Point:
    shape: str
    m: int
    baseline_ms: float  # per layer
    msd_ms: dict[int, float]  # slices -> per-layer ms

    @property
    def kn(self) -> tuple[int, int, int]:
        return SHAPES[self.shape]


# ============================================================================= the model side
def hardware(values: dict[str, float] | None = None):
    """The cpu-host profile, or a copy with ``values`` (FIT_PARAMS names) replaced."""
    from msd.cost.hardware import CPU_HOST

    if not values:
        return CPU_HOST
    matrix = dict(CPU_HOST.matrix, f32=values["f32"], i8=values["i8"])
    return dataclasses.replace(CPU_HOST, matrix=matrix, bandwidth=values["bandwidth"], vector=values["vector"],
                               launch_s=values["launch_s"], overlap=values["overlap"], fault_s=values["fault_s"])


def predict(hw, pt: Point, p: int) -> tuple[float, float]:
    """(baseline ms, MSD p ms) per layer."""
    from msd.cost.model import Matmul, estimate

    k, n, layers = pt.kn
    est = estimate(hw, Matmul(pt.m, n, k, chain=layers), p)
    return est.baseline.total_s * 1e3, est.msd.total_s * 1e3


# ============================================================================= the fused kernel (documented runs)
KERNEL_FORMATS = {"int8": (8, None, False), "int4-g32": (4, 32, True)}  # weight bits, group, offset


@dataclass(frozen=True)
class KernelPoint:
    fmt: str
    shape: str
    m: int
    slices: int
    ms: float  # per layer, measured


def parse_kernel_runs(path: Path) -> list[KernelPoint]:
    """The "MSD p=N fused kernel" per-layer medians of the results tables in the "Fused CPU kernel" section
    of ``path``, each table's weight format from the ``linear.py --format`` command above it."""
    text = path.read_text().split("## Fused CPU kernel", 1)[-1].split("\n# ", 1)[0]
    points, fmt, header, kind = [], None, None, "fused"
    for line in text.splitlines():
        found = re.search(r"linear\.py --format (\S+)", line)
        if found and "--cold" not in line:
            fmt, header = found.group(1), None
            continue
        if "--cold" in line:
            fmt = None
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or fmt not in KERNEL_FORMATS:
            continue
        if cells[:2] == ["shape", "M"]:
            header = cells if any("fused kernel" in c and ":" not in c for c in cells) else None
            # the profile models the AVX-512 VNNI kernel: where auto picked amx-int8, its named VNNI columns
            kind = "VNNI" if header and any(re.fullmatch(r"MSD p=\d VNNI kernel", c) for c in header) else "fused"
            continue
        if header is None or cells[0] not in SHAPES or not cells[1].isdigit():
            continue
        for col, cell in zip(header, cells):
            found = re.fullmatch(rf"MSD p=(\d) {kind} kernel", col)
            if found and re.fullmatch(r"[0-9.]+", cell):
                points.append(KernelPoint(fmt, cells[0], int(cells[1]), int(found.group(1)), float(cell)))
    if not points:
        raise SystemExit(f"no fused-kernel results tables found in {path}")
    return points


def kernel_table(points: Sequence[KernelPoint]) -> tuple[list[str], int]:
    """The comparison with cpu-host-kernel, and how many predictions are within ±30 %."""
    from msd.cost.hardware import CPU_HOST_KERNEL
    from msd.cost.model import Matmul, estimate

    lines = ["| format | shape | M | p | measured ms | predicted ms | predicted / measured | within ±30 % |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    passed = 0
    for pt in points:
        k, n, _ = SHAPES[pt.shape]
        bits, group, offset = KERNEL_FORMATS[pt.fmt]
        pred = estimate(CPU_HOST_KERNEL, Matmul(pt.m, n, k, weight_bits=bits, group=group, offset=offset),
                        pt.slices).msd.total_s * 1e3
        ok = abs(pred / pt.ms - 1) <= TOLERANCE
        passed += ok
        lines.append(f"| {pt.fmt} | {pt.shape} | {pt.m} | {pt.slices} | {pt.ms:.3g} | {pred:.3g} | "
                     f"{pred / pt.ms:.2f} | {'yes' if ok else '**no**'} |")
    return lines, passed


# ============================================================================= fit (documented measurements)
def parse_benchmarks(path: Path) -> list[Point]:
    """The per-layer medians of the "Results" table of a linear.py report."""
    points = []
    text = path.read_text()
    if "<!-- linear.py: begin -->" in text:  # linear.py's block, when the file holds other reports too
        text = text.split("<!-- linear.py: begin -->", 1)[1].split("<!-- linear.py: end -->", 1)[0]
    section = text.split("## Results", 1)[-1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 7 or cells[0] not in SHAPES or not cells[1].isdigit():
            continue
        nums = [float(re.sub(r"[^0-9.]", "", c)) for c in cells[2:7]]  # eager, iree, p1, p2, p3
        points.append(Point(cells[0], int(cells[1]), nums[1], {1: nums[2], 2: nums[3], 3: nums[4]}))
    if not points:
        raise SystemExit(f"no linear.py results table found in {path}")
    return points


def nelder_mead(f: Callable[[np.ndarray], float], x0: np.ndarray, steps: int = 4000) -> np.ndarray:
    """Minimize ``f`` from ``x0`` (a plain Nelder-Mead simplex; no scipy here)."""
    n = len(x0)
    simplex = [x0] + [x0 + np.eye(n)[i] * 0.3 for i in range(n)]
    values = [f(x) for x in simplex]
    for _ in range(steps):
        order = np.argsort(values)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        centroid = np.mean(simplex[:-1], axis=0)
        worst = simplex[-1]
        xr = centroid + (centroid - worst)
        fr = f(xr)
        if fr < values[0]:
            xe = centroid + 2 * (centroid - worst)
            fe = f(xe)
            simplex[-1], values[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = xr, fr
        else:
            xc = centroid + 0.5 * (worst - centroid)
            fc = f(xc)
            if fc < values[-1]:
                simplex[-1], values[-1] = xc, fc
            else:
                simplex = [simplex[0] + 0.5 * (x - simplex[0]) for x in simplex]
                values = [f(x) for x in simplex]
        if max(values) - min(values) < 1e-12:
            break
    return simplex[int(np.argmin(values))]


def _decode(z: np.ndarray) -> dict[str, float]:
    v = dict(zip(FIT_PARAMS, np.exp(z)))
    v["overlap"] = 1.0 / (1.0 + 1.0 / v["overlap"])  # logistic: (0, 1)
    return v


def fit(points: Sequence[Point]) -> dict[str, float]:
    start = hardware()
    x0 = {"bandwidth": start.bandwidth, "f32": start.matrix["f32"], "i8": start.matrix["i8"], "vector": start.vector,
          "launch_s": start.launch_s, "overlap": start.overlap / (1 - start.overlap), "fault_s": start.fault_s}
    z0 = np.log(np.array([x0[k] for k in FIT_PARAMS]))

    def loss(z: np.ndarray) -> float:
        hw = hardware(_decode(z))
        err = 0.0
        for pt in points:
            for p in SLICES:
                base, msd_ms = predict(hw, pt, p)
                err += math.log(msd_ms / pt.msd_ms[p]) ** 2
            err += 3 * math.log(base / pt.baseline_ms) ** 2  # the baseline appears once, the slices thrice
        return err

    z = z0
    for _ in range(3):  # restart: Nelder-Mead stalls on the kinks of max()
        z = nelder_mead(loss, z)
    return _decode(z)


# ============================================================================= measurement (fresh)
def measure(shapes: Sequence[str], ms: Sequence[int], rounds: int, block_s: float,
            log: Callable[[str], None]) -> dict[str, list[Point]]:
    """Per (shape, M): per-layer times of the baseline and MSD p=1..3, as the median and as the
    minimum of all timed calls ({"median": [...], "min": [...]})."""
    import torch
    from linear import FULL_CASES, make_layers, time_calls, warm_up  # the benchmark's own helpers
    from torch import nn

    import msd

    cases = {c.name + (f" ×{c.layers}" if c.layers > 1 else ""): c for c in FULL_CASES}
    points: dict[str, list[Point]] = {"median": [], "min": []}
    for si, name in enumerate(shapes):
        case = cases[name]
        layers = make_layers(case, 1000 + si)
        model = layers[0] if len(layers) == 1 else nn.Sequential(*layers)
        model.eval()
        g = torch.Generator().manual_seed(2000 + si)
        for m in ms:
            x = torch.randn(m, case.k, generator=g)
            xn = np.ascontiguousarray(x.numpy())
            fns, keep = {}, []
            for p in (0, *SLICES):
                cm = msd.compile(model, (x,), target="llvm-cpu", slices=p)
                if p and len(cm.report.rewritten) != case.layers:
                    raise SystemExit(f"{name} M={m} p={p}: the pass rewrote {len(cm.report.rewritten)} matmuls")
                keep.append(cm)
                fns[p] = (lambda mod, arg: lambda: mod(arg))(cm.runtime_module, xn)
            n_calls = {p: max(3, math.ceil(block_s / warm_up(fn, 3, 0.2))) for p, fn in fns.items()}
            samples: dict[int, list[float]] = {p: [] for p in fns}
            order = list(fns)
            faults = sys_s = 0.0  # the baseline's first-touch page faults and kernel time (the model's fault_s)
            with torch.inference_mode():
                for r in range(rounds):
                    for p in order[r % len(order):] + order[:r % len(order)]:
                        r0 = resource.getrusage(resource.RUSAGE_SELF)
                        samples[p].extend(time_calls(fns[p], n_calls[p]))
                        r1 = resource.getrusage(resource.RUSAGE_SELF)
                        if p == 0:
                            faults += r1.ru_minflt - r0.ru_minflt
                            sys_s += r1.ru_stime - r0.ru_stime
            calls = rounds * n_calls[0]
            log(f"  {name} M={m}: baseline {faults / calls / case.layers:.0f} page faults per layer and call, "
                f"{sys_s / max(faults, 1) * 1e6:.2f} us of kernel time per fault")
            FAULTS.append((name, m, faults / calls / case.layers, sys_s / max(faults, 1)))
            for stat, fn in (("median", statistics.median), ("min", min)):
                per_layer = {p: fn(s) / case.layers * 1e3 for p, s in samples.items()}
                pt = Point(name, m, per_layer[0], {p: per_layer[p] for p in SLICES})
                points[stat].append(pt)
                log(f"  {name} M={m} ({stat}): baseline {pt.baseline_ms:.3f} ms, MSD " +
                    ", ".join(f"p={p} {pt.msd_ms[p]:.3f}" for p in SLICES) + " ms per layer")
            del keep, fns
    return points


# ============================================================================= report
def rows(points: Sequence[Point], hw=None) -> list[tuple[Point, int, float, float, float, float, bool]]:
    """(point, p, measured ratio, predicted ratio, predicted baseline ms, predicted MSD ms, within tolerance)."""
    hw = hw or hardware()
    out = []
    for pt in points:
        for p in SLICES:
            base, msd_ms = predict(hw, pt, p)
            meas, pred = pt.msd_ms[p] / pt.baseline_ms, msd_ms / base
            out.append((pt, p, meas, pred, base, msd_ms, abs(pred / meas - 1) <= TOLERANCE))
    return out


def table(points: Sequence[Point], hw=None) -> list[str]:
    lines = ["| shape | M | p | measured baseline ms | measured MSD ms | predicted baseline ms | predicted MSD ms "
             "| measured MSD/baseline | predicted MSD/baseline | predicted / measured | within ±30 % |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for pt, p, meas, pred, base, msd_ms, ok in rows(points, hw):
        lines.append(f"| {pt.shape} | {pt.m} | {p} | {pt.baseline_ms:.3g} | {pt.msd_ms[p]:.3g} | {base:.3g} | "
                     f"{msd_ms:.3g} | {meas:.4f} | {pred:.4f} | {pred / meas:.2f} | {'yes' if ok else '**no**'} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", nargs="?", const=str(BENCH_DOC), default=None, metavar="REPORT",
                    help="fit cpu-host to a linear.py report (default docs/benchmarks.md); no measurement")
    ap.add_argument("--quick", action="store_true", help="one shape, M=1,16, 2 rounds; does not touch the docs")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 2)")
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite the block in docs/targets.md")
    ap.add_argument("--stat", choices=("min", "median"), default="min",
                    help="per-call statistic compared (default min: other processes on the machine can only "
                    "slow a call down)")
    ap.add_argument("--kernel", nargs="?", const=str(BENCH_DOC), default=None, metavar="REPORT",
                    help="compare cpu-host-kernel with the fused-kernel runs in REPORT (default docs/benchmarks.md)")
    args = ap.parse_args(argv)

    if args.kernel:
        lines, passed = kernel_table(parse_kernel_runs(Path(args.kernel)))
        print("\n".join(lines))
        print(f"\n{passed} of {len(lines) - 2} predictions within ±30 %")
        return 0
    if args.fit:
        points = parse_benchmarks(Path(args.fit))
        values = fit(points)
        print("fitted cpu-host constants:")
        for k in FIT_PARAMS:
            print(f"  {k:10s} {values[k]:.4g}")
        print("\n".join(table(points, hardware(values))))
        print("\nwith the constants now in msd/cost/hardware.py:")
        print("\n".join(table(points)))
        return 0

    from msd.cost.hardware import CPU_HOST

    shapes = ["4096→11008"] if args.quick else list(SHAPES)
    ms = (1, 16) if args.quick else MS
    rounds = args.rounds or (2 if args.quick else 3)
    started = time.perf_counter()
    load_start = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"measuring {len(shapes)} shape(s) x M={ms}, {rounds} rounds; load {load_start} …", flush=True)
    measured = measure(shapes, ms, rounds, 0.1, lambda s: print(s, flush=True))
    elapsed = time.perf_counter() - started
    load_end = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    points = measured[args.stat]
    other = "median" if args.stat == "min" else "min"
    result = rows(points)
    passed = sum(r[-1] for r in result)
    passed_other = sum(r[-1] for r in rows(measured[other]))
    out = [
        f"Produced by `python benchmarks/cost_calibration.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        f"({elapsed:.0f} s, {rounds} interleaved rounds; load average {load_start} at start, {load_end} at end). "
        f"Measured: the **{args.stat}** per-layer time of each variant's calls. Predictions: profile "
        f"`{CPU_HOST.name}` as in `msd/cost/hardware.py`.",
        "",
        *table(points),
        "",
        f"**{passed} of {len(result)}** predicted MSD/baseline ratios are within ±30 % of the measured ones "
        f"({passed_other} of {len(result)} when the {other} call times of the same run are compared).",
    ]
    if FAULTS:
        per_fault = sorted(f[3] for f in FAULTS)
        out.append("")
        out.append(f"IREE baseline, first-touch page faults of the dequantized f32 weight: "
                   f"{', '.join(f'{s} M={m} {n:.0f}' for s, m, n, _ in FAULTS)} per layer and call; kernel time "
                   f"{per_fault[0] * 1e6:.2f}–{per_fault[-1] * 1e6:.2f} us per fault (median "
                   f"{statistics.median(per_fault) * 1e6:.2f} us; the profile charges {CPU_HOST.fault_s * 1e6:.2f} us "
                   "of wall time per page, fitted to the documented run).")
    misses = [r for r in result if not r[-1]]
    if misses:
        out.append("Outside: " + "; ".join(f"{pt.shape} M={pt.m} p={p} (predicted/measured {pred / meas:.2f})"
                                           for pt, p, meas, pred, *_ in misses) + ".")
    text = "\n".join(out)
    print(text)
    if not (args.quick or args.no_docs):
        write_block(DOC, f"{BEGIN}\n{text}\n{END}", BEGIN, END, must_exist=True)
        print(f"wrote the block in {DOC.relative_to(REPO)}")
    return 0 if not misses else 1


if __name__ == "__main__":
    sys.exit(main())
