"""MSD on an NVIDIA GPU: artifacts compiled here, numerics and timing checked there.

    python benchmarks/gpu_check.py prepare OUT     # here (compiler + torch): CUDA artifacts → OUT
    python benchmarks/gpu_check.py run OUT         # on the GPU machine: needs numpy, torch (CUDA)
                                                   # and iree-base-runtime only, no compiler, no msd

``prepare`` compiles one int8 per-channel linear layer (K = N = 4096) for ``cuda`` (sm_80 PTX,
which the driver JIT-compiles for newer GPUs) at M = 1, 4, 16 (decode) and 512 (prefill), as MSD
slices=1 and 2 and as IREE's own lowering (slices=0); all share one parameter archive.  ``run``
checks each artifact against a float64 reference on the GPU and times it against torch ``F.linear``
with pre-dequantized bf16 weights (cuBLAS), per call, median of interleaved repetitions, host
copies of input and output included for IREE (the numpy call API) and a synchronize for torch.
It prints one table; see benchmarks/gpu_check.sh for the wrapper that installs the runtime wheel.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

K = N = 4096
MS = (1, 4, 16, 512)
SLICES = (0, 1, 2)
TARGET = "cuda:sm_80"


def prepare(out: Path) -> None:
    import torch

    import msd
    from msd.compiler.quant.quantize import QuantizedLinear

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    q = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    s = (torch.rand(N) + 0.5) / 127 / K**0.5
    model = torch.nn.Sequential(QuantizedLinear(q, s, None))
    np.savez(out / "weights.npz", qweight=q.numpy(), scale=s.numpy())
    manifest = []
    for m in MS:
        x = torch.randn(m, K)
        for slices in SLICES:
            cm = msd.compile(model, (x,), target=TARGET, slices=slices)
            name = f"m{m}_s{slices}.vmfb"
            (out / name).write_bytes(cm.vmfb)
            if not (out / "model.irpa").exists():
                (out / "model.irpa").write_bytes((cm.workdir / "model.irpa").read_bytes())
            manifest.append({"file": name, "m": m, "slices": slices, "rewritten": len(cm.report.rewritten)})
    (out / "manifest.json").write_text(json.dumps({"target": TARGET, "k": K, "n": N, "artifacts": manifest}))
    print(f"wrote {len(manifest)} artifacts to {out}")


def _runtime_module():
    """msd's torch-free runtime module, loaded from this checkout without installing msd."""
    path = Path(__file__).resolve().parent.parent / "runtime" / "module.py"
    spec = importlib.util.spec_from_file_location("msd_runtime_module", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def run(folder: Path, reps: int = 30, rounds: int = 5) -> None:
    import torch

    rtm = _runtime_module()
    meta = json.loads((folder / "manifest.json").read_text())
    w = np.load(folder / "weights.npz")
    dev = torch.device("cuda")
    wq = torch.from_numpy(w["qweight"]).to(dev)
    w64 = wq.double() * torch.from_numpy(w["scale"]).to(dev).double()[:, None]
    w_bf16 = w64.to(torch.bfloat16)
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, artifacts for {meta['target']}")
    rows = []
    for m in MS:
        x = torch.randn(m, K, generator=torch.Generator().manual_seed(m))
        ref = (x.to(dev).double() @ w64.T)
        xb = x.to(dev, torch.bfloat16)
        mods = {}
        for a in meta["artifacts"]:
            if a["m"] == m:
                mods[a["slices"]] = rtm.Module.load(folder / a["file"], folder / "model.irpa", driver="cuda")
        xn = x.numpy()
        errs = {s: (np.abs(mod(xn) - ref.cpu().numpy()).max() / ref.abs().max().item()) for s, mod in mods.items()}
        errs["torch bf16"] = ((torch.nn.functional.linear(xb, w_bf16).double() - ref).abs().max()
                              / ref.abs().max()).item()

        def torch_call(xb=xb):
            torch.nn.functional.linear(xb, w_bf16)
            torch.cuda.synchronize()

        fns = {**{s: (lambda mod=mod, xn=xn: mod(xn)) for s, mod in mods.items()}, "torch bf16": torch_call}
        for f in fns.values():
            for _ in range(3):
                f()
        times: dict = {k: [] for k in fns}
        for _ in range(rounds):
            for k, f in fns.items():
                times[k].append(_median_ms(f, reps))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((m, med, errs))
    names = {0: "IREE baseline", 1: "MSD p=1", 2: "MSD p=2", "torch bf16": "torch bf16 (cuBLAS)"}
    header = " ".join(f"{names[k]:>22}" for k in (0, 1, 2, "torch bf16"))
    print(f"\n{'M':>5} {header}   (ms per call; max rel err)")
    for m, med, errs in rows:
        cells = [f"{med[k]:8.3f} ({errs[k]:.1e})" for k in (0, 1, 2, "torch bf16")]
        print(f"{m:>5} " + " ".join(f"{c:>22}" for c in cells))
    print("\nIREE times include the host copies of x and y (numpy API); torch's include a synchronize.")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("prepare", "run"):
        sys.exit(__doc__)
    (prepare if sys.argv[1] == "prepare" else run)(Path(sys.argv[2]))
