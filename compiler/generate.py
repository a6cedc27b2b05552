"""``msd.compiler.generate``: greedy text generation from a GGUF Llama with a KV cache.

``compile_generator(path)`` compiles two entry points into one artifact with shared weights:

- ``prefill(tokens [1, S], start_pos [1], *cache)`` with a dynamic ``S`` (1..max_ctx);
- ``decode(token [1, 1], start_pos [1], *cache)``;

both are :meth:`msd.compiler.gguf.LlamaModel.step` (last-token logits and the new caches), so the
caches live on the host between calls and the functions stay pure.  The cache is ``k, v`` (f32), or
``k_codes, k_scales, v_codes, v_scales`` with ``kv_cache="int8"`` (``LlamaModel.empty_cache``).  With
``score=True`` a third entry point ``score`` (dynamic ``S``, logits of every position) is compiled too,
for teacher forcing (:meth:`Generator.next_token_logits`).  :func:`eager_generator` runs the same cache
path in eager torch as the reference.  ``Generator.generate(text, n)`` returns the reply and records
prefill/decode tokens per second in ``Generator.last_stats``; :func:`generate` is the one-call
convenience (``msd.generate``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from msd.compiler import gguf as G
from msd.runtime.generate import GenerationStats, TextStream, check_prompt  # shared with the torch-free text generator

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>")


class CachedStep(nn.Module):
    """Thin wrapper exporting ``LlamaModel.step``; every instance holds the model as ``llama`` so the
    weights of all entry points have the same torch names (and are stored once)."""

    def __init__(self, llama: G.LlamaModel) -> None:
        super().__init__()
        self.llama = llama

    def forward(self, tokens: torch.Tensor, start_pos: torch.Tensor, *cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.llama.step(tokens, start_pos, *cache)


class ScoreStep(CachedStep):
    """``LlamaModel.step`` returning the logits of every position (``[B, S, vocab]``): teacher forcing."""

    def forward(self, tokens: torch.Tensor, start_pos: torch.Tensor, *cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.llama.step(tokens, start_pos, *cache, last_only=False)


@dataclass
class NextTokenStats:
    """How a model's teacher-forced next-token distributions compare with a reference's over the same
    text (:func:`next_token_stats`): KL in nats, perplexities of the text, top-1 agreement."""

    positions: int
    mean_kl: float  # mean over positions of KL(ref || model)
    max_kl: float
    ref_ppl: float
    ppl: float
    top1: float  # fraction of positions where both argmaxes agree

    @property
    def ppl_rel(self) -> float:
        return self.ppl / self.ref_ppl - 1.0


def next_token_stats(ref_logits: torch.Tensor, logits: torch.Tensor, ids: list[int]) -> NextTokenStats:
    """Compare teacher-forced logits ``[len(ids), vocab]`` (row ``i`` predicts ``ids[i + 1]``, as from
    :meth:`Generator.next_token_logits`) with the reference's, in float64, over the ``len(ids) - 1``
    positions that have a next token."""
    n = len(ids) - 1
    if n < 1 or ref_logits.shape[0] < n or logits.shape[0] < n:
        raise ValueError(f"need logits for at least {max(n, 1)} positions")
    ref = torch.log_softmax(ref_logits[:n].double(), -1)
    got = torch.log_softmax(logits[:n].double(), -1)
    kl = (ref.exp() * (ref - got)).sum(-1)
    target = torch.tensor(ids[1:n + 1]).unsqueeze(-1)
    return NextTokenStats(
        positions=n, mean_kl=float(kl.mean()), max_kl=float(kl.max()),
        ref_ppl=float(torch.exp(-ref.gather(-1, target).mean())), ppl=float(torch.exp(-got.gather(-1, target).mean())),
        top1=float((ref.argmax(-1) == got.argmax(-1)).double().mean()),
    )


StepFn = Callable[..., tuple[torch.Tensor, ...]]  # (tokens, start_pos, *cache) -> (logits, *cache)


class Generator:
    """Greedy generation over a ``prefill`` and a ``decode`` step function (compiled or eager);
    ``score`` (optional) is the all-positions step used by :meth:`next_token_logits`; ``kv_cache`` the
    cache format the step functions take ("float" or "int8")."""

    def __init__(self, prefill: StepFn, decode: StepFn, model: G.LlamaModel, tokenizer, stop_ids: set[int],
                 max_ctx: int, compiled=None, score: StepFn | None = None, kv_cache: str = "float") -> None:
        self.prefill, self.decode, self.score = prefill, decode, score
        self.kv_cache = kv_cache
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.max_ctx = max_ctx
        self.compiled = compiled  # the CompiledModule, when there is one
        self.last_stats = GenerationStats()

    def encode(self, prompt_text: str, chat: bool = True) -> list[int]:
        text = G.chat_prompt(prompt_text) if chat else prompt_text
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def generate_ids(self, ids: list[int], max_new_tokens: int,
                     on_token: Callable[[int], None] | None = None) -> list[int]:
        """Greedy token ids after the prompt ``ids``, stopping after a stop token (included)."""
        check_prompt(ids, max_new_tokens, self.max_ctx)
        stats = self.last_stats = GenerationStats()
        out: list[int] = []
        if max_new_tokens <= 0:
            return out
        cache = self.model.empty_cache(1, self.max_ctx, self.kv_cache)
        with torch.no_grad():
            t0 = time.perf_counter()
            logits, *cache = self.prefill(torch.tensor([ids]), torch.zeros(1, dtype=torch.long), *cache)
            nxt = int(logits[0].argmax())
            stats.prefill_s, stats.prefill_tokens = time.perf_counter() - t0, len(ids)
            pos = len(ids)
            t0 = time.perf_counter()
            while True:
                out.append(nxt)
                if on_token is not None:
                    on_token(nxt)
                if nxt in self.stop_ids or len(out) >= max_new_tokens:
                    break
                logits, *cache = self.decode(torch.tensor([[nxt]]), torch.tensor([pos]), *cache)
                nxt = int(logits[0].argmax())
                pos += 1
                stats.decode_tokens += 1
            stats.decode_s = time.perf_counter() - t0
        stats.new_tokens = len(out)
        return out

    def next_token_logits(self, ids: list[int], chunk: int = 256) -> torch.Tensor:
        """Teacher forcing: f32 ``[len(ids), vocab]`` whose row ``i`` is the logits of the token after
        ``ids[:i + 1]``.  The text goes through the KV cache in chunks of ``chunk`` tokens with ``score``
        (all-positions logits), or one token at a time with ``decode`` when there is no ``score``."""
        if not ids:
            raise ValueError("the text is empty")
        if len(ids) > self.max_ctx:
            raise ValueError(f"{len(ids)} tokens exceed max_ctx={self.max_ctx}")
        step = chunk if self.score is not None else 1
        if step < 1:
            raise ValueError(f"chunk={chunk} must be positive")
        cache = self.model.empty_cache(1, self.max_ctx, self.kv_cache)
        rows = []
        with torch.no_grad():
            for start in range(0, len(ids), step):
                piece = torch.tensor([ids[start:start + step]])
                pos = torch.tensor([start])
                if self.score is not None:
                    logits, *cache = self.score(piece, pos, *cache)
                    rows.append(logits[0])
                else:
                    logits, *cache = self.decode(piece, pos, *cache)
                    rows.append(logits)
        return torch.cat(rows).to(torch.float32)

    def generate(self, prompt_text: str, max_new_tokens: int, chat: bool = True,
                 callback: Callable[[str], None] | None = None) -> str:
        """Greedy reply to ``prompt_text`` (wrapped in the chat template when ``chat``); ``callback``
        receives each new piece of text as it is produced (the pieces add up to the returned text).
        Stats are in :attr:`last_stats`."""
        stream = TextStream(self.tokenizer, callback)
        self.generate_ids(self.encode(prompt_text, chat), max_new_tokens, stream.on_token)
        return stream.finish()


def _stop_ids(path, tokenizer) -> set[int]:
    ids = {tokenizer.token_to_id(t) for t in STOP_TOKENS} - {None}
    eos = G.special_token_id(path, "eos")
    if eos is not None:
        ids.add(eos)
    return ids


def eager_generator(gguf_path: str | Path, max_ctx: int = G.DEFAULT_MAX_CTX,
                    model: G.LlamaModel | None = None, kv_cache: str = "float") -> Generator:
    """The reference: the same cache path (``LlamaModel.step``) in eager torch."""
    model = model if model is not None else G.load_gguf(gguf_path)
    model.empty_cache(1, 1, kv_cache)  # checks the format
    tok = G.tokenizer_from_gguf(gguf_path)
    return Generator(model.step, model.step, model, tok, _stop_ids(gguf_path, tok), max_ctx,
                     score=functools.partial(model.step, last_only=False), kv_cache=kv_cache)


def compile_generator(gguf_path: str | Path, slices: int = 2, max_ctx: int = G.DEFAULT_MAX_CTX,
                      target: str = "llvm-cpu", model: G.LlamaModel | None = None,
                      progress: Callable[[str], None] | None = None, score: bool = False,
                      kv_cache: str = "float") -> Generator:
    """Compile ``prefill`` (dynamic prompt length) and ``decode`` into one msd artifact with shared
    weights and return a :class:`Generator` over it; ``score=True`` adds the all-positions entry point
    ``score`` (dynamic length) for :meth:`Generator.next_token_logits`; ``kv_cache``: "float" (f32 K/V)
    or "int8" (codes + a scale per head and token)."""
    import msd

    if max_ctx < 3:
        raise ValueError(f"max_ctx={max_ctx} is too small")
    model = model if model is not None else G.load_gguf(gguf_path)
    cache = model.empty_cache(1, max_ctx, kv_cache)
    s_example = min(8, max_ctx - 1)
    seq = torch.export.Dim("S", min=1, max=max_ctx)
    prefill_args = (torch.zeros(1, s_example, dtype=torch.long), torch.zeros(1, dtype=torch.long), *cache)
    decode_args = (torch.zeros(1, 1, dtype=torch.long), torch.tensor([s_example]), *cache)
    dynamic = ({1: seq}, None, tuple(None for _ in cache))  # forward's *cache: one entry
    functions = {
        "prefill": (CachedStep(model), prefill_args, dynamic),
        "decode": (CachedStep(model), decode_args),
    }
    if score:
        functions["score"] = (ScoreStep(model), prefill_args, dynamic)
    cm = msd.compile_functions(functions, target=target, slices=slices, progress=progress)
    tok = G.tokenizer_from_gguf(gguf_path)
    return Generator(cm.prefill, cm.decode, model, tok, _stop_ids(gguf_path, tok), max_ctx, compiled=cm,
                     score=cm.score if score else None, kv_cache=kv_cache)


@functools.lru_cache(maxsize=1)
def _cached_generator(path: str, mtime_ns: int, slices: int, max_ctx: int, target: str) -> Generator:
    return compile_generator(path, slices=slices, max_ctx=max_ctx, target=target)


def generate(gguf_path: str | Path, prompt: str, max_new_tokens: int = 64, slices: int = 2,
             max_ctx: int = G.DEFAULT_MAX_CTX, target: str = "llvm-cpu", chat: bool = True,
             stream: Callable[[str], None] | None = None) -> str:
    """Greedy reply of the GGUF model at ``gguf_path`` to ``prompt`` (in its chat template when
    ``chat``), compiled with msd (``slices`` activation slices, KV cache of ``max_ctx`` tokens);
    ``stream`` receives each new piece of text as it is produced.  The compiled generator of the last
    call is kept, so a second call with the same file and settings does not compile again."""
    path = Path(gguf_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no such GGUF file: {gguf_path}")
    gen = _cached_generator(str(path), path.stat().st_mtime_ns, slices, max_ctx, target)
    return gen.generate(prompt, max_new_tokens, chat=chat, callback=stream)


__all__ = ["CachedStep", "GenerationStats", "Generator", "NextTokenStats", "ScoreStep", "compile_generator",
           "eager_generator", "generate", "next_token_stats"]
