"""MSD on an NVIDIA GPU: artifacts compiled here, numerics and timing checked there.

    python benchmarks/gpu_check.py prepare OUT [--sweep]  # here (compiler + torch): CUDA artifacts → OUT
                                                   # (--sweep: also the tensor-core kernel's shapes)
    python benchmarks/gpu_check.py run OUT [MD]    # on the GPU machine: numpy, torch (CUDA) and
                                                   # iree-base-runtime only (no compiler, no msd install);
                                                   # prints the table, and writes it to MD
    python benchmarks/gpu_check.py record MD       # here: the table into docs/targets.md

``prepare`` compiles one 4096×4096 linear layer for ``cuda:sm_80`` (PTX the driver JIT-compiles for
newer GPUs) in two weight formats — int8 with one scale per channel, and int4 in groups of 128 with a
zero point (``msd.quantize(weights="int4", group_size=128)``) — at M = 1, 16, 128 and 2048, as MSD
slices=1 and 2 with msd's tensor-core kernel (the default ``gpu_kernel="auto"``: int8 ``mma.sync``
PTX written by the pass).  Weights and activations come from numpy seeds, so ``run`` rebuilds them
without the compiler; ``prepare`` stores the float64 reference output of the quantized model (its
first 128 rows) and one parameter archive per format (the kernels' packed weights; every M reads it).

``run`` checks every artifact against that reference on the GPU and times, side by side in one
process (median of interleaved rounds): the MSD artifacts through msd's torch-free runtime (the input
uploaded once, the result left on the GPU; and once more with numpy in and out, host copies
included), torch ``F.linear`` in bf16 on the float weights (cuBLAS) and torch's
``_int_mm`` (int8 × int8 → int32, cuBLASLt) on random codes of the same shape where it runs (M > 16);
torch calls end in a synchronize.  See ``benchmarks/gpu_check.sh`` for the wrapper that installs the
runtime wheel on the GPU machine, and ``docs/targets.md`` for the commands and the last table.
``tests/test_gpu_check.py`` keeps both paths working without a GPU (small llvm-cpu artifacts, ``run(...,
driver="local-task")``: torch on the CPU, no CUPTI).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

K = N = 4096
MS = (1, 16, 128, 2048)
SLICES = (1, 2)
FORMATS = ("int8", "int4-g128")
TARGET = "cuda:sm_80"
SWEEP_SHAPES = ("8x4x4", "4x4x4", "16x4x4", "8x4x8", "8x4x2", "4x4x8", "8x2x4", "4x2x4")  # the default first
SWEEP_MS = (1, 16, 2048)
REF_ROWS = 128  # reference rows stored per M (the M=2048 output would be 64 MiB in float64)
DOCS = Path(__file__).resolve().parent.parent / "docs" / "targets.md"
BEGIN, END = "<!-- gpu_check.py: begin -->", "<!-- gpu_check.py: end -->"


def float_weight(seed: int = 0) -> np.ndarray:
    """The layer's float weight ``[N, K]`` (what torch bf16 multiplies; the formats quantize it)."""
    return (np.random.default_rng(seed).standard_normal((N, K)) / K**0.5).astype(np.float32)


def activation(m: int) -> np.ndarray:
    return np.random.default_rng(1000 + m).standard_normal((m, K)).astype(np.float32)


def _model(fmt: str):
    import torch

    import msd

    linear = torch.nn.Linear(K, N, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(float_weight()))
    if fmt == "int8":
        return msd.quantize(torch.nn.Sequential(linear), weights="int8")
    return msd.quantize(torch.nn.Sequential(linear), weights="int4", group_size=128)


def prepare(out: Path, sweep: bool = False) -> None:
    """The artifacts, and with ``sweep`` the kernel-shape sweep's (``SWEEP_SHAPES`` at ``SWEEP_MS``, slices=2:
    ``gpu_kernel_shape``, :func:`msd.passes.decompose_activations.cuda_kernel.parse_shape`)."""
    import torch

    import msd
    from msd.compiler.tools.ptx import kernels_in

    out.mkdir(parents=True, exist_ok=True)
    manifest, refs = [], {}
    for fmt in FORMATS:
        model = _model(fmt)
        archive = None
        for m in MS:
            x = torch.from_numpy(activation(m))
            with torch.no_grad():
                refs[f"{fmt}_m{m}"] = torch.nn.functional.linear(  # float64, stored as f32 (1e-7 relative)
                    x[:REF_ROWS].double(), model[0].dequantized_weight().double()).float().numpy()
            for slices in SLICES:
                cm = msd.compile(model, (x,), target=TARGET, slices=slices)
                kernels = kernels_in(cm.vmfb)
                if len(kernels) != 1:
                    raise RuntimeError(f"{fmt} M={m}: expected one tensor-core kernel, got {list(kernels)}")
                name = f"{fmt}_m{m}_s{slices}.vmfb"
                (out / name).write_bytes(cm.vmfb)
                params = (cm.workdir / "model.irpa").read_bytes()
                digest = hashlib.sha256(params).hexdigest()
                if archive is None:
                    archive = digest
                    (out / f"{fmt}.irpa").write_bytes(params)
                elif digest != archive:
                    raise RuntimeError(f"{fmt}: the parameter archives of two compiles differ")
                manifest.append({"file": name, "format": fmt, "m": m, "slices": slices, "kernel": next(iter(kernels)),
                                 "rewritten": len(cm.report.rewritten)})
            for shape in SWEEP_SHAPES if sweep and m in SWEEP_MS else ():
                cm = msd.compile(model, (x,), target=TARGET, slices=2, gpu_kernel_shape=shape)
                name = f"sweep_{fmt}_m{m}_{shape}.vmfb"
                (out / name).write_bytes(cm.vmfb)
                params = (cm.workdir / "model.irpa").read_bytes()
                if hashlib.sha256(params).hexdigest() != archive:  # (N = 4096 pads no tile: one archive)
                    raise RuntimeError(f"{fmt} {shape}: its parameter archive differs from the other compiles'")
                manifest.append({"file": name, "format": fmt, "m": m, "slices": 2, "sweep": shape,
                                 "kernel": next(iter(kernels_in(cm.vmfb)))})
    np.savez(out / "reference.npz", **refs)
    (out / "manifest.json").write_text(json.dumps({"target": TARGET, "k": K, "n": N, "artifacts": manifest},
                                                  indent=1))
    print(f"wrote {len(manifest)} artifacts to {out}")


def msd_runtime(name: str):
    """``msd.runtime.<name>`` from this checkout, without installing msd or running msd/__init__ (its
    ``msd.errors`` import resolves to the checkout's msd/ folder): what the GPU machine runs."""
    import types

    root = Path(__file__).resolve().parent.parent
    if "msd" not in sys.modules:
        pkg = types.ModuleType("msd")
        pkg.__path__ = [str(root / "msd")]
        rt = types.ModuleType("msd.runtime")
        rt.__path__ = [str(root / "runtime")]
        sys.modules["msd"], sys.modules["msd.runtime"] = pkg, rt
        pkg.runtime = rt
    return importlib.import_module(f"msd.runtime.{name}")


def _median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _case(rtm, folder: Path, meta: dict, refs, fmt: str, m: int, w_bf16, w_i8, reps: int, rounds: int,
          driver: str) -> str:
    """One table row: format ``fmt`` at ``M = m`` checked against the reference, then timed."""
    import torch

    dev = w_bf16.device
    x = activation(m)
    ref = refs[f"{fmt}_m{m}"]
    mods = {a["slices"]: rtm.Module.load(folder / a["file"], folder / f"{fmt}.irpa", driver=driver)
            for a in meta["artifacts"] if a["format"] == fmt and a["m"] == m and "sweep" not in a}
    errs = {}
    for s, mod in mods.items():
        y = np.asarray(mod(x))[:REF_ROWS].astype(np.float64)
        errs[s] = np.abs(y - ref).max() / np.abs(ref).max()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    xb = torch.from_numpy(x).to(dev, torch.bfloat16)
    xi = torch.randint(-127, 128, (m, K), dtype=torch.int8, device=dev)

    def bf16(xb=xb):
        torch.nn.functional.linear(xb, w_bf16)
        sync()

    def int_mm(xi=xi):
        torch._int_mm(xi, w_i8)
        sync()

    on_device = {s: mod.upload(x) for s, mod in mods.items()}
    fns = {**{s: (lambda mod=mod, xd=on_device[s]: mod.invoke(xd)) for s, mod in mods.items()},
           "numpy": lambda mod=mods[2], x=x: mod(x), "bf16": bf16}
    try:
        int_mm()
        fns["int_mm"] = int_mm
    except RuntimeError:  # cuBLASLt's int8 GEMM wants M > 16 (and multiples of 8)
        pass
    for f in fns.values():
        for _ in range(3):
            f()
    times: dict = {k: [] for k in fns}
    for r in range(rounds):
        order = list(fns)[r % len(fns):] + list(fns)[:r % len(fns)]
        for k in order:
            times[k].append(_median_ms(fns[k], reps))
    med = {k: statistics.median(v) for k, v in times.items()}
    gpu = {k: _device_us(fns[k], reps, f"{fmt} M={m} {k}") for k in (*SLICES, "bf16")}
    weight_bytes = (folder / f"{fmt}.irpa").stat().st_size
    cells = [f"{med[s]:.3f} ({errs[s]:.1e})" for s in SLICES]
    cells += [f"{med['numpy']:.3f}", f"{med['bf16']:.3f}", f"{med['int_mm']:.3f}" if "int_mm" in med else "n/a"]
    cells += [f"{gpu[k][0]:.1f}" for k in (*SLICES, "bf16")] + [f"{gpu[2][1]:.1f}"]
    cells += [f"{_ratio(weight_bytes / 1e6, gpu[1][1]):.2f}", f"{_ratio(gpu['bf16'][0], gpu[2][0]):.2f}x",
              f"{_ratio(gpu['bf16'][0], gpu[2][1]):.2f}x"]
    return f"| {fmt} | {m} | " + " | ".join(cells) + " |"


def _sweep(rtm, folder: Path, artifacts: list[dict], refs, reps: int, driver: str) -> list[str]:
    """The kernel-shape sweep's table: per format and M, each shape's tensor-core kernel µs (CUPTI), or why
    not (an error, or a result off the float64 reference)."""
    shapes = list(dict.fromkeys(a["sweep"] for a in artifacts))
    lines = ["Kernel shapes (`gpu_kernel_shape=SPLITxTILESxUNROLL`, slices=2): µs of the tensor-core kernel per"
             " call (CUPTI).", "", "| format | M | " + " | ".join(f"`{s}`" for s in shapes) + " |",
             "|" + " --- |" * 2 + " ---: |" * len(shapes)]
    for fmt, m in dict.fromkeys((a["format"], a["m"]) for a in artifacts):
        cells = []
        for shape in shapes:
            a = next(a for a in artifacts if (a["format"], a["m"], a["sweep"]) == (fmt, m, shape))
            try:
                mod = rtm.Module.load(folder / a["file"], folder / f"{fmt}.irpa", driver=driver)
                x = activation(m)
                ref = refs[f"{fmt}_m{m}"]
                err = np.abs(np.asarray(mod(x))[:REF_ROWS].astype(np.float64) - ref).max() / np.abs(ref).max()
                if not err < 1e-4:
                    cells.append(f"wrong ({err:.1e})")
                    continue
                xd = mod.upload(x)
                for _ in range(3):
                    mod.invoke(xd)
                cells.append(f"{_device_us(lambda mod=mod, xd=xd: mod.invoke(xd), reps, a['kernel'])[1]:.1f}")
            except Exception as e:
                traceback.print_exc()
                cells.append(f"error: {type(e).__name__}")
        lines.append(f"| {fmt} | {m} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return lines


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")  # (nothing recorded: a dry run, or a profiler that saw no kernels)


def _device_us(fn, reps: int, label: str) -> tuple[float, float]:
    """Microseconds of GPU work per call of ``fn`` — every kernel and copy the process ran on the GPU while
    ``fn`` was called ``reps`` times, as CUPTI (torch's profiler) recorded them, whoever launched them (IREE
    too), and of msd's tensor-core kernels alone; host time between them is not counted.  Prints the kernels."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()  # (else a dry run: the CPU's torch ops, to exercise this code)
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
    per: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == (DeviceType.CUDA if cuda else DeviceType.CPU):
            per[e.name] = per.get(e.name, 0.0) + e.time_range.elapsed_us() / reps
    print(f"  {label}: " + "; ".join(f"{k[:60]} {v:.1f} us" for k, v in per.items()), flush=True)
    return sum(per.values()), sum(v for k, v in per.items() if k.startswith("msd_mma_"))


def run(folder: Path, md: Path | None = None, reps: int = 20, rounds: int = 5, driver: str = "cuda") -> None:
    import torch

    rtm = msd_runtime("module")
    meta = json.loads((folder / "manifest.json").read_text())
    refs = np.load(folder / "reference.npz")
    dev = torch.device("cuda" if driver == "cuda" else "cpu")
    w_bf16 = torch.from_numpy(float_weight()).to(dev, torch.bfloat16)
    w_i8 = torch.randint(-127, 128, (K, N), dtype=torch.int8, device=dev)
    gpu = torch.cuda.get_device_name() if dev.type == "cuda" else "none (a dry run on the CPU)"
    lines = [f"GPU: {gpu}; torch {torch.__version__}; artifacts for {meta['target']} (PTX, JIT-compiled by the"
             " driver); medians of interleaved rounds; max |err| / max |ref| against float64 in parentheses.", "",
             "| format | M | MSD p=1 call, ms | MSD p=2 call, ms | MSD p=2 numpy API, ms | torch bf16 `F.linear`, ms |"
             " torch `_int_mm` int8, ms | MSD p=1 GPU µs | MSD p=2 GPU µs | bf16 GPU µs | p=2 msd kernel µs |"
             " p=1 kernel weight read TB/s | p=2 vs bf16 (GPU) | p=2 kernel vs bf16 |",
             "|" + " --- |" * 2 + " ---: |" * 12]
    for fmt in FORMATS:
        for m in MS:
            try:
                lines.append(_case(rtm, folder, meta, refs, fmt, m, w_bf16, w_i8, reps, rounds, driver))
            except Exception as e:  # a first run on new hardware: report the case and go on to the next
                traceback.print_exc()
                lines.append(f"| {fmt} | {m} | error: {type(e).__name__}: {str(e)[:200]} |")
            print(lines[-1], flush=True)
    lines += ["", "Calls (wall clock, ms): MSD p=1 / p=2 with the input already on the GPU and the result left"
              " there (`Module.upload`, `Module.invoke`: IREE's synchronous call, which returns when the GPU is done);"
              " `numpy API`: the same p=2 call with numpy in and out (host copies included); torch calls end in a"
              " synchronize.  GPU µs: the kernels and copies CUPTI recorded per call (torch's profiler; for MSD"
              " msd's activation quantizer and tensor-core kernel), host time excluded;"
              " `msd kernel`: the tensor-core kernel alone.  `p=1 kernel weight read`: the parameter archive's bytes"
              " over the p=1 kernel's time.  `vs bf16`: how many times faster than cuBLAS bf16's GPU work."]
    sweep = [a for a in meta["artifacts"] if "sweep" in a]
    if sweep:
        lines += ["", *_sweep(rtm, folder, sweep, refs, reps, driver)]
    text = "\n".join(lines)
    print(text)
    if md is not None:
        md.write_text(text + "\n")


def record(md: Path) -> None:
    """Put the table ``run`` wrote into docs/targets.md, between the gpu_check.py markers."""
    doc = DOCS.read_text()
    if BEGIN not in doc:
        raise SystemExit(f"{DOCS} has no {BEGIN} marker")
    head, rest = doc.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    DOCS.write_text(f"{head}{BEGIN}\n{md.read_text().strip()}\n{END}{tail}")
    print(f"recorded {md} in {DOCS}")


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("prepare", "run", "record"):
        sys.exit(__doc__)
    if sys.argv[1] == "prepare":
        prepare(Path(sys.argv[2]), sweep="--sweep" in sys.argv[3:])
    elif sys.argv[1] == "run":
        run(Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None)
    else:
        record(Path(sys.argv[2]))
