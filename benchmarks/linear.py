"""Benchmark int8-weight linear layers: torch eager f32 vs IREE's own lowering vs MSD (1, 2, 3 slices).

    python benchmarks/linear.py           # full run (~3-4 min on a quiet 2-core machine) → docs/benchmarks.md
    python benchmarks/linear.py --quick   # tiny shapes, a smoke test (~20 s) → a temp file
    python benchmarks/linear.py --cases up --ms 1,16 --rounds 3   # a subset → a temp file

Every variant runs on the same weights, on the same machine, in one process; timings are interleaved
round-robin so that drift in machine load hits all variants alike.  Each variant's output is checked
once against a float64 reference, and a variant that fails the check is marked and cannot pass the bar.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import msd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ceilings import amx_peak, dot_peak, read_bandwidth  # noqa: E402
from _machine import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"
QUICK_OUTPUT = Path(tempfile.gettempdir()) / "msd-benchmarks-quick.md"
BEGIN, END = "<!-- linear.py: begin -->", "<!-- linear.py: end -->"  # this script's block of the output file


# ============================================================================= configuration
@dataclass(frozen=True)
class Case:
    """A weight shape ``[n, k]`` (y = x·Wᵀ, K → N), run as ``layers`` distinct layers in a chain, or side by
    side on the same input with their results summed (``side_by_side``: K ≠ N)."""

    key: str  # for --cases
    name: str
    k: int
    n: int
    layers: int
    why: str
    side_by_side: bool = False

    def __post_init__(self) -> None:
        if self.layers > 1 and self.k != self.n and not self.side_by_side:
            raise ValueError(f"{self.name}: a chain of layers needs K == N")

    @property
    def int8_mib(self) -> float:
        return self.layers * self.k * self.n / 2**20

    @property
    def size(self) -> str:
        mib = self.int8_mib
        return f"{mib:.0f} MiB" if mib >= 10 else f"{mib:.2g} MiB"


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    slices: int | None  # None: torch eager; 0: IREE baseline; 1-3: MSD
    rel_tol: float  # accepted max|err| / max|ref| against the float64 reference
    cpu_kernel: str = "none"  # "none": IREE's lowering of the int8 matmuls; "auto": msd's fused kernel


# f32 variants differ from the float64 reference only by f32 rounding (~1e-6 relative).  MSD's
# activation rounding is at most amax/(2·127·254^(p-1)) per element, i.e. ~4e-3 · 254^(1-p) of the
# output scale.  Correct builds show ~1e-2 (p=1), ~1e-4 (p=2) and the f32 floor (p=3); the tolerances
# leave room for that and still flag a variant that computes something else (e.g. fewer slices than
# asked for, or garbage: rel ≈ 1).
VARIANTS: tuple[Variant, ...] = (
    Variant("eager", "torch eager f32", None, 1e-4),
    Variant("iree", "IREE baseline", 0, 1e-4),
    Variant("msd1", "MSD p=1", 1, 1e-1),
    Variant("msd2", "MSD p=2", 2, 5e-4),
    Variant("msd3", "MSD p=3", 3, 1e-4),
    Variant("msd1k", "MSD p=1 fused kernel", 1, 1e-1, "auto"),
    Variant("msd2k", "MSD p=2 fused kernel", 2, 5e-4, "auto"),
    # the AVX-512 VNNI kernel named: beside "auto" where that picks amx-int8
    Variant("msd1v", "MSD p=1 VNNI kernel", 1, 1e-1, "avx512-vnni"),
    Variant("msd2v", "MSD p=2 VNNI kernel", 2, 5e-4, "avx512-vnni"),
)
# Weight formats (--format): msd.quantize's arguments; "int8" is the per-channel QuantizedLinear.
FORMATS: dict[str, dict[str, object]] = {
    "int8": {},
    "int8-g32": {"weights": "int8", "group_size": 32},
    "int4-g32": {"weights": "int4", "group_size": 32},
    "int4-g128": {"weights": "int4", "group_size": 128},
}
REF_KEY = "msd2"  # the variant the ratios and the bar are about

FULL_CASES: tuple[Case, ...] = (
    Case("square", "4096x4096", 4096, 4096, 4,
         "a chain x → L1 → L2 → L3 → L4 of 4 distinct layers, timed as one call and reported per layer "
         "(total / 4): a single 16 MiB int8 weight would stay in the 32 MiB L3 between calls and flatter "
         "MSD, which reads only the int8 weight; 4 × 16 MiB does not fit"),
    Case("up", "4096→11008", 4096, 11008, 1,
         "Llama-7B MLP up/gate projection; a single layer (43 MiB int8 > L3)"),
    Case("down", "11008→4096", 11008, 4096, 1,
         "Llama-7B MLP down projection; a single layer (43 MiB int8 > L3)"),
)
FULL_MS: tuple[int, ...] = (1, 16, 128)

QUICK_CASES: tuple[Case, ...] = (
    Case("q-chain", "256x256", 256, 256, 4, "smoke test: a chain of 4 distinct layers, reported per layer"),
    Case("q-single", "256→384", 256, 384, 1, "smoke test: a single layer"),
)
QUICK_MS: tuple[int, ...] = (1, 4)
COLD_MIB = 256  # --cold: a case's layers hold at least this many MiB of int8 weights in all


def cold_case(case: Case, mib: float = COLD_MIB) -> Case:
    """``case`` as ``--cold`` runs it: enough distinct copies of its layer (a chain when K = N, else side by
    side) that one call streams ≥ ``mib`` MiB of int8 weights, so a call's fixed cost (its dispatches
    and the host's code, cold after each flush) weighs little against the weights' reads."""
    copies = max(case.layers, math.ceil(mib / (case.k * case.n / 2**20)))
    side = case.k != case.n
    how = "side by side on the same input, results summed" if side else "in a chain"
    return dataclasses.replace(case, layers=copies, side_by_side=side,
                               why=f"{case.why}; `--cold`: {copies} distinct copies {how}, one call")


class SideBySide(nn.Module):
    """``Σ_i layer_i(x)``: distinct layers of one shape on the same input."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers[0](x)
        for layer in self.layers[1:]:
            y = y + layer(x)
        return y


@dataclass(frozen=True)
class Criterion:
    """``time(versus) / time(MSD p=2) ≥ threshold`` at batch ``m``."""

    m: int
    versus: str
    threshold: float


BAR: tuple[Criterion, ...] = (
    Criterion(1, "iree", 5.0),
    Criterion(16, "iree", 5.0),
    Criterion(128, "iree", 1.5),
    Criterion(1, "eager", 1.8),
)


@dataclass(frozen=True)
class Ceilings:
    """This machine's measured limits (benchmarks/_ceilings.py), with the threads IREE uses."""

    threads: int
    bandwidth: float  # GB/s read
    isa: str  # the fused kernel's variant on this CPU
    dot: float  # GOP/s of its dot-product instruction (amx-int8: AVX-512 VNNI's, which its leftover rows use)
    amx: tuple[float, float] = (math.nan, math.nan)  # GOP/s of AMX tdpbssd, K = 32 and 64 per product


def _auto_kernel() -> str:
    """The fused kernel ``cpu_kernel="auto"`` picks on this CPU ("" where none)."""
    from msd.compiler.pipeline.targets import kernel_isas, resolve

    isas = kernel_isas(resolve("llvm-cpu"))
    return isas[0] if isas else ""


def measure_ceilings(threads: int) -> Ceilings:
    isa = _auto_kernel()
    amx = (amx_peak(threads, 32), amx_peak(threads, 64)) if isa == "amx-int8" else (math.nan, math.nan)
    return Ceilings(threads, read_bandwidth(threads), isa, dot_peak(isa, threads) if isa else math.nan, amx)


# ============================================================================= measurement
@dataclass
class Result:
    """One variant at one (case, M)."""

    variant: Variant
    compile_s: float = 0.0
    calls_per_block: int = 0
    samples: list[float] = field(default_factory=list)  # seconds per call, all rounds
    round_medians: list[float] = field(default_factory=list)
    max_abs_err: float = math.nan
    rel_err: float = math.nan
    problem: str = ""  # non-empty: the variant is not valid (numerics, or the pass did not rewrite)
    packed_bytes: int = 0  # fused kernel: bytes of its pre-packed weight operands, all layers (model.irpa)

    @property
    def ok(self) -> bool:
        return not self.problem

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan

    @property
    def spread(self) -> float:
        """(max - min) of the per-round medians, relative to the overall median."""
        if len(self.round_medians) < 2:
            return math.nan
        return (max(self.round_medians) - min(self.round_medians)) / self.median_s


@dataclass
class CaseResult:
    case: Case
    m: int
    results: dict[str, Result]
    variants: tuple[Variant, ...] = VARIANTS
    ref: str = REF_KEY  # the variant ratios are about (MSD p=2, or its fused kernel when p=2 is not run)

    def per_layer_ms(self, key: str) -> float:
        return self.results[key].median_s / self.case.layers * 1e3

    def ratio(self, versus: str) -> float:
        """time(versus) / time(ref): how many times faster the reference MSD variant is."""
        if versus not in self.results:
            return math.nan
        return self.results[versus].median_s / self.results[self.ref].median_s

    def valid(self, *keys: str) -> bool:
        return all(k in self.results and self.results[k].ok for k in keys)


def make_layers(case: Case, seed: int, fmt: str = "int8") -> list[nn.Module]:
    g = torch.Generator().manual_seed(seed)
    if fmt != "int8":  # group-wise: msd.quantize of random float layers
        layers = []
        for _ in range(case.layers):
            lin = nn.Linear(case.k, case.n, bias=False)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(case.n, case.k, generator=g) / math.sqrt(case.k))
            layers.append(msd.quantize(nn.Sequential(lin), **FORMATS[fmt])[0])
        return layers
    layers = []
    for _ in range(case.layers):
        q = torch.randint(-127, 128, (case.n, case.k), dtype=torch.int8, generator=g)
        scale = (torch.rand(case.n, generator=g) + 0.5) / 127.0 / math.sqrt(case.k)
        layers.append(msd.QuantizedLinear(q, scale, None))
    return layers


def reference(layers: Sequence[msd.QuantizedLinear], x: torch.Tensor, side_by_side: bool = False) -> np.ndarray:
    x64 = x.to(torch.float64)
    y = x64 if not side_by_side else None
    for layer in layers:
        w = layer.dequantized_weight().to(torch.float64)
        if side_by_side:
            y = x64 @ w.T if y is None else y + x64 @ w.T
        else:
            y = y @ w.T
        del w
    return y.numpy()


def time_calls(fn: Callable[[], object], n: int, flush: Callable[[], None] | None = None) -> list[float]:
    """``n`` calls of ``fn``, each timed alone; ``flush`` (untimed) before each one."""
    out = []
    for _ in range(n):
        if flush is not None:
            flush()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def cache_flusher() -> Callable[[], None]:
    """A function that evicts the CPU caches: it writes every cache line of a buffer twice the size of
    the last-level cache (at least 64 MiB), so the next call reads its weights from DRAM as a large
    model's decode does (a layer's weights alone can stay in a big L3 between calls)."""
    try:
        kib = int(Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip().rstrip("K"))
    except (OSError, ValueError):
        kib = 32 * 1024
    buf = np.zeros(max(2 * kib * 1024, 64 << 20), np.uint8)

    def flush() -> None:
        buf[::64] += 1

    return flush


def warm_up(fn: Callable[[], object], min_calls: int, min_s: float) -> float:
    """Call ``fn`` at least ``min_calls`` times and ``min_s`` seconds; return the median call time."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_s:
        times.extend(time_calls(fn, 1))
    return statistics.median(times[1:] if len(times) > 1 else times)


def packed_bytes(cm: msd.CompiledModule) -> int:
    """Bytes of the fused kernels' pre-packed weight operands in the artifact's archive."""
    import iree.runtime as rt

    index = rt.ParameterIndex()
    index.load(str(cm.workdir / "model.irpa"))
    return sum(entry.length for key, entry in index.items() if key.startswith("msd.pack."))


def run_case(
    case: Case, m: int, layers: list[msd.QuantizedLinear], x: torch.Tensor, ref: np.ndarray, *,
    rounds: int, block_s: float, min_calls: int, log: Callable[[str], None],
    flush: Callable[[], None] | None = None,
    variants: tuple[Variant, ...] = VARIANTS,
) -> CaseResult:
    model: nn.Module = (layers[0] if len(layers) == 1 else SideBySide(layers) if case.side_by_side
                        else nn.Sequential(*layers))
    model.eval()
    xn = np.ascontiguousarray(x.numpy())
    ref_scale = float(np.max(np.abs(ref)))
    weights = [layer.dequantized_weight().contiguous() for layer in layers]

    def eager() -> torch.Tensor:
        if case.side_by_side:
            y = F.linear(x, weights[0])
            for w in weights[1:]:
                y = y + F.linear(x, w)
            return y
        y = x
        for w in weights:
            y = F.linear(y, w)
        return y

    fns: dict[str, Callable[[], object]] = {}
    results: dict[str, Result] = {}
    keep: list[msd.CompiledModule] = []  # the compiled module owns the files the runtime maps
    for v in variants:
        r = results[v.key] = Result(v)
        if v.slices is None:
            fns[v.key] = eager
            continue
        t0 = time.perf_counter()
        try:
            cm = msd.compile(model, (x,), target="llvm-cpu", slices=v.slices, cpu_kernel=v.cpu_kernel)
            assert isinstance(cm, msd.CompiledModule)
            mod = cm.runtime_module
        except Exception as e:  # a variant that does not build is reported, not fatal
            r.problem = f"does not build: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            continue
        r.compile_s = time.perf_counter() - t0
        keep.append(cm)
        if v.slices and len(cm.report.rewritten) != case.layers:
            r.problem = f"pass rewrote {len(cm.report.rewritten)} of {case.layers} matmuls"
        elif v.cpu_kernel != "none" and not all("fused" in d.reason for d in cm.report.rewritten):
            r.problem = "no fused kernel on this CPU" if not cm.report.rewritten else cm.report.rewritten[0].reason
        if v.cpu_kernel != "none":
            r.packed_bytes = packed_bytes(cm)
        fns[v.key] = lambda mod=mod: mod(xn)
    log(f"  compiled in {', '.join(f'{k} {r.compile_s:.1f}s' for k, r in results.items() if r.compile_s)}")

    with torch.inference_mode():
        for v in variants:
            r = results[v.key]
            if v.key not in fns:
                continue
            t_call = warm_up(fns[v.key], 3, 0.2)
            r.calls_per_block = max(min_calls, math.ceil(block_s / t_call))
            if flush is not None:  # each cold call pays an untimed cache flush: at most 32 per block
                r.calls_per_block = min(r.calls_per_block, max(min_calls, 32))
            out = fns[v.key]()
            y = (out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)).astype(np.float64)
            if y.shape != ref.shape:
                r.problem = r.problem or f"output shape {y.shape} != {ref.shape}"
                continue
            r.max_abs_err = float(np.max(np.abs(y - ref)))
            r.rel_err = r.max_abs_err / ref_scale
            if not math.isfinite(r.rel_err) or r.rel_err > v.rel_tol:
                r.problem = r.problem or f"max|err|/max|ref| = {r.rel_err:.2e} > {v.rel_tol:.0e}"

        gc.collect()
        gc.disable()
        try:
            for i in range(rounds):
                order = variants[i % len(variants):] + variants[:i % len(variants)]
                for v in order:
                    r = results[v.key]
                    if v.key not in fns:
                        continue
                    ts = time_calls(fns[v.key], r.calls_per_block, flush)
                    r.samples.extend(ts)
                    r.round_medians.append(statistics.median(ts))
        finally:
            gc.enable()

    keys = [v.key for v in variants]
    cr = CaseResult(case, m, results, variants, REF_KEY if REF_KEY in keys else "msd2k")
    cells = ", ".join(f"{v.key} {cr.per_layer_ms(v.key):.3f}" for v in variants)
    log(f"  per-layer median ms: {cells}; "
        f"iree/{cr.ref} {cr.ratio('iree'):.2f}x, eager/{cr.ref} {cr.ratio('eager'):.2f}x")
    for r in results.values():
        if not r.ok:
            log(f"  !! {r.variant.label}: {r.problem}")
    del keep, fns
    gc.collect()
    return cr


# ============================================================================= environment
def l3_size() -> str:
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
    except OSError:
        return "unknown"
    if text.endswith("K") and text[:-1].isdigit():
        kib = int(text[:-1])
        return f"{kib // 1024} MiB" if kib % 1024 == 0 else f"{kib} KiB"
    return text


def mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2**20:.0f} GiB"
    except (OSError, ValueError):
        pass
    return "unknown"


def pkg_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def load_avg() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


@dataclass
class Environment:
    command: str
    date: str
    cpu: str
    cores: int
    usable_cores: int
    l3: str
    memory: str
    python: str
    torch: str
    torch_threads: int
    iree_compiler: str
    iree_runtime: str
    msd: str
    load_start: str
    load_end: str = ""
    total_s: float = 0.0


def environment(argv: Sequence[str]) -> Environment:
    return Environment(
        command=shlex.join(["python", "benchmarks/linear.py", *argv]),
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        cpu=cpu_model(),
        cores=os.cpu_count() or 0,
        usable_cores=len(os.sched_getaffinity(0)),
        l3=l3_size(),
        memory=mem_total(),
        python=platform.python_version(),
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        iree_compiler=pkg_version("iree-base-compiler"),
        iree_runtime=pkg_version("iree-base-runtime"),
        msd=msd.__version__,
        load_start=load_avg(),
    )


# ============================================================================= report
def fmt_ms(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.3f}" if x < 10 else f"{x:.2f}" if x < 100 else f"{x:.1f}"


def fmt_ratio(cr: CaseResult, versus: str) -> str:
    if versus not in cr.results:
        return "not run"
    text = f"{cr.ratio(versus):.2f}x"
    return text if cr.valid(versus, cr.ref) else f"{text} (invalid)"


def case_label(case: Case) -> str:
    return f"{case.name} ×{case.layers}{' side by side' if case.side_by_side else ''}" if case.layers > 1 else case.name


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in (header, sep, *rows)]


def results_table(crs: Sequence[CaseResult]) -> list[str]:
    variants, ref = crs[0].variants, crs[0].results[crs[0].ref].variant.label
    header = ["shape", "M", *(v.label for v in variants), f"IREE baseline / {ref}",
              f"torch eager f32 / {ref}", "numerics"]
    rows = []
    for cr in crs:
        bad = [r.variant.label for r in cr.results.values() if not r.ok]
        rows.append([
            case_label(cr.case), str(cr.m),
            *(fmt_ms(cr.per_layer_ms(v.key)) + ("" if cr.results[v.key].ok else " ✗") for v in variants),
            fmt_ratio(cr, "iree"), fmt_ratio(cr, "eager"),
            "ok" if not bad else "FAIL: " + ", ".join(bad),
        ])
    return table(header, rows, "lr" + "r" * (len(variants) + 2) + "l")


def kernel_table(crs: Sequence[CaseResult], ceilings: Ceilings) -> list[str]:
    """The fused kernels' rates as shares of the machine's measured ceilings, and their weight-streaming
    rate as a share of torch eager f32's (its f32 weight bytes per call, timed in the same interleaved
    rounds: a ceiling measured at the same moments, where the machine's bandwidth drifts)."""
    kernels = [v for v in crs[0].variants if v.cpu_kernel != "none"]
    eager = any(v.slices is None for v in crs[0].variants)
    header = ["shape", "M", *(["torch eager f32: f32 weight GB/s"] if eager else [])]
    for v in kernels:
        header += [f"{v.label}: weight GB/s (of {ceilings.bandwidth:.1f}{'; of eager' if eager else ''})",
                   f"{v.label}: int8 GOP/s (of {ceilings.dot:.0f})"]
    rows = []
    for cr in crs:
        cells = [case_label(cr.case), str(cr.m)]
        e_gbs = math.nan
        if eager:
            r = cr.results["eager"]
            e_gbs = 4 * cr.case.n * cr.case.k * cr.case.layers / r.median_s / 1e9 if r.ok and r.samples else math.nan
            cells.append(f"{e_gbs:.1f}" if math.isfinite(e_gbs) else "n/a")
        for v in kernels:
            r = cr.results[v.key]
            if not r.ok or not r.samples:
                cells += ["n/a", "n/a"]
                continue
            gbs = r.packed_bytes / r.median_s / 1e9
            gops = 2 * cr.m * cr.case.n * cr.case.k * cr.case.layers * v.slices / r.median_s / 1e9
            of_eager = f"; {gbs / e_gbs:.0%}" if math.isfinite(e_gbs) else ""
            cells += [f"{gbs:.1f} ({gbs / ceilings.bandwidth:.0%}{of_eager})",
                      f"{gops:.0f} ({gops / ceilings.dot:.0%})"]
        rows.append(cells)
    return table(header, rows)


def accuracy_table(crs: Sequence[CaseResult]) -> list[str]:
    header = ["shape", "M", *(f"{v.label} (tol {v.rel_tol:.0e})" for v in crs[0].variants)]
    rows = []
    for cr in crs:
        cells = []
        for v in cr.variants:
            r = cr.results[v.key]
            cell = f"{r.max_abs_err:.2e} ({r.rel_err:.1e})" if math.isfinite(r.max_abs_err) else "n/a"
            cells.append(cell if r.ok else f"{cell} ✗ {r.problem}")
        rows.append([case_label(cr.case), str(cr.m), *cells])
    return table(header, rows)


def detail_table(crs: Sequence[CaseResult]) -> list[str]:
    header = ["shape", "M", *(v.label for v in crs[0].variants)]
    rows = []
    for cr in crs:
        cells = []
        for v in cr.variants:
            r = cr.results[v.key]
            comp = f", compile {r.compile_s:.1f} s" if r.compile_s else ""
            spread = f"±{r.spread * 100:.0f}%" if math.isfinite(r.spread) else "spread n/a"
            cells.append(f"{r.calls_per_block}×{len(r.round_medians)}, {spread}{comp}" if r.samples else "not run")
        rows.append([case_label(cr.case), str(cr.m), *cells])
    return table(header, rows)


@dataclass(frozen=True)
class Verdict:
    case: Case
    criterion: Criterion
    ratio: float
    passed: bool
    note: str


def evaluate_bar(crs: Sequence[CaseResult]) -> list[Verdict]:
    verdicts = []
    by_key = {(cr.case.name, cr.m): cr for cr in crs}
    cases = list(dict.fromkeys(cr.case for cr in crs))
    for case in cases:
        for c in BAR:
            cr = by_key.get((case.name, c.m))
            if cr is None:
                continue
            if cr.ref != REF_KEY or c.versus not in cr.results:
                continue  # the bar is about MSD p=2 as IREE lowers it, against these variants
            ratio = cr.ratio(c.versus)
            valid = cr.valid(c.versus, REF_KEY)
            note = "" if valid else "a variant failed the numerics check"
            verdicts.append(Verdict(case, c, ratio, valid and ratio >= c.threshold, note))
    return verdicts


def bar_section(crs: Sequence[CaseResult]) -> list[str]:
    labels = {v.key: v.label for v in VARIANTS}
    verdicts = evaluate_bar(crs)
    lines = [
        "## Bar",
        "",
        "Computed from the medians above: MSD p=2 must be at least 5x faster than the IREE baseline at",
        "M=1 and M=16, at least 1.5x at M=128, and at least 1.8x faster than torch eager f32 at M=1.",
        "",
    ]
    if not verdicts:
        return [*lines, "No (shape, M) in this run is covered by the bar.", ""]
    rows = []
    for v in verdicts:
        crit = f"{labels[v.criterion.versus]} / MSD p=2 at M={v.criterion.m} ≥ {v.criterion.threshold:g}x"
        verdict = "PASS" if v.passed else "FAIL" + (f" ({v.note})" if v.note else "")
        rows.append([case_label(v.case), crit, f"{v.ratio:.2f}x", verdict])
    lines += table(["shape", "criterion", "measured", "verdict"], rows, "llrl")
    lines.append("")
    for case in dict.fromkeys(v.case for v in verdicts):
        mine = [v for v in verdicts if v.case == case]
        passed = sum(v.passed for v in mine)
        overall = "PASS" if passed == len(mine) else "FAIL"
        lines.append(f"- **{case_label(case)}: {overall}** ({passed}/{len(mine)} criteria met)")
    covered = {v.criterion for v in verdicts}
    missing = [c for c in BAR if c not in covered]
    if missing:
        lines.append("")
        lines.append("Not covered by this run (no such M): " + ", ".join(
            f"{labels[c.versus]} at M={c.m}" for c in missing) + ".")
    lines.append("")
    return lines


def render(
    env: Environment, crs: Sequence[CaseResult], cases: Sequence[Case], args: argparse.Namespace,
    ceilings: Ceilings,
) -> str:
    ms = sorted({cr.m for cr in crs})
    lines = [
        BEGIN,
        "# Linear-layer benchmark: MSD vs IREE baseline vs torch eager",
        "",
        f"Produced by `{env.command}` (run from the repository root; this block of the file, between the "
        "`linear.py` markers, is rewritten on every run).",
        "",
        f"- Date: {env.date}",
        f"- Machine: {env.cpu}, {env.cores} cores ({env.usable_cores} usable by this process), "
        f"L3 {env.l3}, {env.memory} RAM",
        f"- Software: Python {env.python}, torch {env.torch}, iree-base-compiler {env.iree_compiler}, "
        f"iree-base-runtime {env.iree_runtime}, msd {env.msd}",
        f"- Threads: torch {env.torch_threads} (`torch.get_num_threads()`, left at its default); "
        "IREE `local-task` driver with its default task topology",
        f"- Load average (1/5/15 min) at start: {env.load_start}; at end: {env.load_end}",
        f"- Total run time: {env.total_s:.0f} s",
        "",
        "## Methodology",
        "",
        ("- Weights: random int8 in [-127, 127], per-output-channel f32 scales ~ U(0.5, 1.5) / 127 / "
         "sqrt(K), no bias" if args.format == "int8" else
         f"- Weights: `msd.quantize(..., {', '.join(f'{k}={v!r}' for k, v in FORMATS[args.format].items())})` of "
         "random float weights N(0, 1/K), no bias") +
        "; activations x ~ N(0, 1) in f32. Every variant uses the same weights and inputs.",
        "- MSD variants without \"fused kernel\" are `cpu_kernel=\"none\"` (IREE's lowering of the int8 matmuls"
        " and the per-group partials); the fused-kernel ones are `cpu_kernel=\"auto\"` (this CPU's variant).",
        "- Shapes (y = x·Wᵀ, K → N):",
        *(f"  - **{case_label(c)}**: K={c.k}, N={c.n}, {c.layers} layer(s), {c.size} of int8 weights "
          f"in all — {c.why}." for c in cases),
        f"- Batch sizes M: {', '.join(map(str, ms))}; each (shape, M) is compiled with a static M.",
        "- Variants, all in one process on the same machine:",
        "  - **torch eager f32**: `F.linear` with the weights dequantized to f32 ahead of time "
        f"(torch threads: {env.torch_threads}, the default);",
        "  - **IREE baseline**: `msd.compile(..., slices=0)`, IREE's own lowering of the "
        "dequantize-then-matmul;",
        "  - **MSD p=1, 2, 3**: `msd.compile(..., slices=p)`, the MSD rewrite with p int8 activation slices;",
        "  - the IREE variants target `llvm-cpu` (host CPU, data tiling on) and are called through "
        "`cm.runtime_module` with numpy arrays (output copied back to the host): no torch conversion "
        "is timed.",
        "- Timing: each variant is warmed up (≥ 3 calls and ≥ 0.2 s), which also sets its calls per "
        f"block n so that a block takes ≥ {args.block_ms:g} ms (n ≥ {args.min_calls}). Then "
        f"{args.rounds} interleaved round(s): every round visits each variant in turn (the starting "
        "variant rotates), and each visit times n consecutive calls one by one with "
        "`time.perf_counter` (Python GC off)"
        + (", each after an untimed write of a buffer twice the L3 size (`--cold`: the weights come from "
           f"DRAM; each shape runs as distinct copies of its layer holding ≥ {args.cold_mib:g} MiB of int8 weights "
           "in all, called as one function, so that the call's fixed cost — its dispatches, and the host "
           "code the flush also evicts, ~0.3 ms measured for a tiny layer — weighs little against the reads)"
           if args.cold else "") + ". Reported: the median of all per-call times, divided by "
        "the number of layers.",
        "- Numerics: each variant's output is checked once against a float64 reference (the same int8 "
        "weights and scales, dequantized in float64). A variant over its tolerance on "
        "max |err| / max |ref|, or an MSD build in which the pass did not rewrite every matmul, is "
        "marked ✗ and fails every bar criterion it is part of.",
        "",
        "## Results (per-layer median, ms)",
        "",
        f"Ratios are time(variant) / time({crs[0].results[crs[0].ref].variant.label}): how many times faster"
        " that variant is.",
        "",
        *results_table(crs),
        "",
        "## The fused kernel against this machine's ceilings",
        "",
        f"Measured in the same run (`benchmarks/_ceilings.py`, {ceilings.threads} threads, best of 5): read "
        f"bandwidth **{ceilings.bandwidth:.1f} GB/s** (the faster of a torch int64 sum and f32 matrix-vector "
        "products over a 1 GiB buffer) and the "
        f"{ceilings.isa or 'no'} dot-product peak **{ceilings.dot:.0f} GOP/s** (an IREE dispatch per thread of "
        "16 independent accumulator chains in registers; 1 op = 1 multiply or add; for amx-int8 the `vpdpbusd` "
        "zmm peak, which the GOP/s shares below are of)"
        + (f"; AMX `tdpbssd` **{ceilings.amx[0]:.0f} GOP/s** with 32 bytes of K per product (a group of 32) and "
           f"**{ceilings.amx[1]:.0f}** with 64 (4 accumulator tiles per thread)" if math.isfinite(ceilings.amx[0])
           else "") + ". Weight GB/s: the kernel's "
        "pre-packed weight bytes (codes, scales and offsets, as stored in `model.irpa`) "
        "per call / median call time — the streaming rate that decode (M=1) is bound by. int8 GOP/s: "
        "2·M·N·K·slices / median call time — the integer work prefill is bound by.",
        "",
        *kernel_table(crs, ceilings),
        "",
        "## Accuracy",
        "",
        "max |err| against the float64 reference, and in parentheses max |err| / max |ref|.",
        "",
        *accuracy_table(crs),
        "",
        "## Timing detail",
        "",
        "Per variant: calls per block × rounds, spread of the per-round medians ((max − min) / median), "
        "and compile time (export + compile + load).",
        "",
        *detail_table(crs),
        "",
        *bar_section(crs),
        END,
    ]
    return "\n".join(lines)


# ============================================================================= main
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    keys = [c.key for c in FULL_CASES]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes (K=N=256), M in {1, 4}, 2 rounds: a smoke test; writes to a temp file")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 7, quick 2)")
    p.add_argument("--output", type=Path, default=None,
                   help=f"markdown report (default: {DEFAULT_OUTPUT.relative_to(REPO)} for the full run, "
                   f"{QUICK_OUTPUT} for --quick or a subset)")
    p.add_argument("--cases", default=None,
                   help=f"comma-separated subset of the full-run shapes: {', '.join(keys)} (default all)")
    p.add_argument("--ms", default=None, help="comma-separated batch sizes M (default 1,16,128; quick 1,4)")
    p.add_argument("--block-ms", type=float, default=None,
                   help="minimum duration of one timed block of n calls (default 100, quick 5)")
    p.add_argument("--min-calls", type=int, default=5, help="minimum calls per timed block (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and inputs (default 0)")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated subset of the variants: {', '.join(v.key for v in VARIANTS)} (default all;"
                   " the ratios are about msd2, or msd2k when msd2 is not run; msd1v/msd2v, the AVX-512 VNNI kernel "
                   "named, by default only where auto picks amx-int8)")
    p.add_argument("--cold", action="store_true",
                   help="evict the caches (write a buffer of twice the L3) before every timed call: weights come"
                        f" from DRAM, as a large model's decode reads them; each shape runs as distinct copies of"
                        f" its layer (>= {COLD_MIB} MiB of int8 weights) in one call")
    p.add_argument("--format", default="int8", choices=sorted(FORMATS),
                   help="weight format: int8 per channel (default), or group-wise int8/int4 (groups of 32 or 128)")
    args = p.parse_args(argv)
    if args.quick and args.cases:
        p.error("--cases picks full-run shapes; it does not combine with --quick")
    subset = args.cases is not None or args.ms is not None
    if args.quick:
        args.case_list = list(QUICK_CASES)
    elif args.cases:
        wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
        unknown = [w for w in wanted if w not in keys]
        if unknown or not wanted:
            p.error(f"--cases: unknown {', '.join(unknown) or '(empty)'} (choose from {', '.join(keys)})")
        args.case_list = [c for c in FULL_CASES if c.key in wanted]
    else:
        args.case_list = list(FULL_CASES)
    if args.ms:
        try:
            args.m_list = sorted({int(m) for m in args.ms.split(",") if m.strip()})
        except ValueError:
            p.error(f"--ms: {args.ms!r} is not a comma-separated list of integers")
    else:
        args.m_list = list(QUICK_MS if args.quick else FULL_MS)
    if not args.m_list or min(args.m_list) < 1:
        p.error("--ms: batch sizes must be positive")
    all_keys = [v.key for v in VARIANTS]
    default = all_keys if _auto_kernel() == "amx-int8" else [k for k in all_keys if k not in ("msd1v", "msd2v")]
    wanted = [w.strip() for w in (args.variants or ",".join(default)).split(",") if w.strip()]
    if [w for w in wanted if w not in all_keys] or not ({"msd2", "msd2k"} & set(wanted)):
        p.error(f"--variants: choose from {', '.join(all_keys)}, including msd2 or msd2k")
    args.variant_list = tuple(v for v in VARIANTS if v.key in wanted)
    subset = subset or args.variants is not None
    args.rounds = args.rounds if args.rounds is not None else (2 if args.quick else 7)
    args.cold_mib = 0.5 if args.quick else COLD_MIB
    args.block_ms = args.block_ms if args.block_ms is not None else (5.0 if args.quick else 100.0)
    args.output = args.output or (QUICK_OUTPUT if args.quick or subset else DEFAULT_OUTPUT)
    if args.rounds < 1 or args.block_ms <= 0 or args.min_calls < 1:
        p.error("--rounds, --block-ms and --min-calls must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    env = environment(argv)
    cases, ms = args.case_list, args.m_list

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(f"{env.cpu}, {env.cores} cores; torch {env.torch} ({env.torch_threads} threads), "
        f"iree {env.iree_compiler}; load {env.load_start}")
    log(f"{args.rounds} rounds, blocks ≥ {args.block_ms:g} ms; output → {args.output}")
    started = time.perf_counter()
    ceilings = measure_ceilings(len(os.sched_getaffinity(0)))
    flush = cache_flusher() if args.cold else None
    log(f"ceilings: read {ceilings.bandwidth:.1f} GB/s, {ceilings.isa} dot peak {ceilings.dot:.0f} GOP/s"
        + (f", AMX {ceilings.amx[0]:.0f} / {ceilings.amx[1]:.0f} GOP/s (K 32 / 64)" if math.isfinite(ceilings.amx[0])
           else ""))
    crs: list[CaseResult] = []
    for case in cases:
        i = [c.key for c in (*FULL_CASES, *QUICK_CASES)].index(case.key)  # seeds don't depend on --cases
        case = cold_case(case, args.cold_mib) if args.cold else case
        layers = make_layers(case, args.seed * 1000 + i, args.format)
        g = torch.Generator().manual_seed(args.seed * 1000 + 500 + i)
        x_all = torch.randn(max(ms), case.k, generator=g)
        ref_all = reference(layers, x_all, case.side_by_side)  # rows are independent: M rows of x give M rows of ref
        log(f"{case_label(case)} (K={case.k}, N={case.n}, {case.size} int8): {case.why}")
        for m in ms:
            log(f" M={m}")
            crs.append(run_case(case, m, layers, x_all[:m].contiguous(), ref_all[:m], rounds=args.rounds,
                                block_s=args.block_ms / 1e3, min_calls=args.min_calls, log=log,
                                variants=args.variant_list, flush=flush))
        del layers, x_all, ref_all
        gc.collect()
    env.load_end = load_avg()
    env.total_s = time.perf_counter() - started

    ran = list(dict.fromkeys(cr.case for cr in crs))  # the cases as run (--cold: their copies)
    text = render(env, crs, ran, args, ceilings)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    old = args.output.read_text() if args.output.exists() else ""
    i, j = old.find(BEGIN), old.find(END)
    if i >= 0 and j > i:  # replace this script's block, keep the rest of the file
        args.output.write_text(old[:i] + text + old[j + len(END):])
    else:
        args.output.write_text(old + ("\n" if old else "") + text + "\n")
    log("")
    log(text)
    log(f"\nwrote {args.output} in {env.total_s:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
