"""``msd.compiler.generate``: greedy text generation from a GGUF Llama with a KV cache.

``compile_generator(path)`` compiles two entry points into one artifact with shared weights:

- ``prefill(tokens [1, S], start_pos [1], k_cache, v_cache)`` with a dynamic ``S`` (1..max_ctx);
- ``decode(token [1, 1], start_pos [1], k_cache, v_cache)``;

both are :meth:`msd.compiler.gguf.LlamaModel.step` (last-token logits and the new caches), so the
caches live on the host between calls and the functions stay pure.  :func:`eager_generator` runs the
same cache path in eager torch as the reference.  ``Generator.generate(text, n)`` returns the reply and
records prefill/decode tokens per second in ``Generator.last_stats``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from msd.compiler import gguf as G

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>")


class CachedStep(nn.Module):
    """Thin wrapper exporting ``LlamaModel.step``; every instance holds the model as ``llama`` so the
    weights of all entry points have the same torch names (and are stored once)."""

    def __init__(self, llama: G.LlamaModel) -> None:
        super().__init__()
        self.llama = llama

    def forward(self, tokens: torch.Tensor, start_pos: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.llama.step(tokens, start_pos, k_cache, v_cache)


@dataclass
class GenerationStats:
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_tokens: int = 0  # decode calls (tokens fed back), not counting the prefill's token
    decode_s: float = 0.0
    new_tokens: int = 0

    @property
    def prefill_tok_s(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s else 0.0

    def format(self) -> str:
        return (f"prefill {self.prefill_tokens} tok in {self.prefill_s:.3f} s ({self.prefill_tok_s:.1f} tok/s), "
                f"decode {self.decode_tokens} tok in {self.decode_s:.3f} s ({self.decode_tok_s:.1f} tok/s)")


StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                  tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class Generator:
    """Greedy generation over a ``prefill`` and a ``decode`` step function (compiled or eager)."""

    def __init__(self, prefill: StepFn, decode: StepFn, model: G.LlamaModel, tokenizer, stop_ids: set[int],
                 max_ctx: int, compiled=None) -> None:
        self.prefill, self.decode = prefill, decode
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
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) + max_new_tokens > self.max_ctx:
            raise ValueError(f"{len(ids)} prompt + {max_new_tokens} new tokens exceed max_ctx={self.max_ctx}")
        stats = self.last_stats = GenerationStats()
        out: list[int] = []
        if max_new_tokens <= 0:
            return out
        k, v = self.model.empty_cache(1, self.max_ctx)
        with torch.no_grad():
            t0 = time.perf_counter()
            logits, k, v = self.prefill(torch.tensor([ids]), torch.zeros(1, dtype=torch.long), k, v)
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
                logits, k, v = self.decode(torch.tensor([[nxt]]), torch.tensor([pos]), k, v)
                nxt = int(logits[0].argmax())
                pos += 1
                stats.decode_tokens += 1
            stats.decode_s = time.perf_counter() - t0
        stats.new_tokens = len(out)
        return out

    def generate(self, prompt_text: str, max_new_tokens: int, chat: bool = True,
                 callback: Callable[[str], None] | None = None) -> str:
        """Greedy reply to ``prompt_text`` (wrapped in the chat template when ``chat``); ``callback``
        receives each new piece of text as it is produced.  Stats are in :attr:`last_stats`."""
        tok = self.tokenizer
        done: list[int] = []
        shown = ""

        def on_token(t: int) -> None:
            nonlocal shown
            done.append(t)
            if callback is not None:
                text = tok.decode(done, skip_special_tokens=True)
                if not text.endswith("\ufffd") and text.startswith(shown):  # wait for whole UTF-8 chars
                    callback(text[len(shown):])
                    shown = text

        out = self.generate_ids(self.encode(prompt_text, chat), max_new_tokens, on_token)
        return tok.decode(out, skip_special_tokens=True)


def _stop_ids(path, tokenizer) -> set[int]:
    ids = {tokenizer.token_to_id(t) for t in STOP_TOKENS} - {None}
    eos = G.special_token_id(path, "eos")
    if eos is not None:
        ids.add(eos)
    return ids


def eager_generator(gguf_path: str | Path, max_ctx: int = G.DEFAULT_MAX_CTX,
                    model: G.LlamaModel | None = None) -> Generator:
    """The reference: the same cache path (``LlamaModel.step``) in eager torch."""
    model = model if model is not None else G.load_gguf(gguf_path)
    tok = G.tokenizer_from_gguf(gguf_path)
    return Generator(model.step, model.step, model, tok, _stop_ids(gguf_path, tok), max_ctx)


def compile_generator(gguf_path: str | Path, slices: int = 2, max_ctx: int = G.DEFAULT_MAX_CTX,
                      target: str = "llvm-cpu", model: G.LlamaModel | None = None,
                      progress: Callable[[str], None] | None = None) -> Generator:
    """Compile ``prefill`` (dynamic prompt length) and ``decode`` into one msd artifact with shared
    weights and return a :class:`Generator` over it."""
    import msd

    if max_ctx < 3:
        raise ValueError(f"max_ctx={max_ctx} is too small")
    model = model if model is not None else G.load_gguf(gguf_path)
    k, v = model.empty_cache(1, max_ctx)
    s_example = min(8, max_ctx - 1)
    seq = torch.export.Dim("S", min=1, max=max_ctx)
    prefill_args = (torch.zeros(1, s_example, dtype=torch.long), torch.zeros(1, dtype=torch.long), k, v)
    decode_args = (torch.zeros(1, 1, dtype=torch.long), torch.tensor([s_example]), k, v)
    cm = msd.compile_functions({
        "prefill": (CachedStep(model), prefill_args, ({1: seq}, None, None, None)),
        "decode": (CachedStep(model), decode_args),
    }, target=target, slices=slices, progress=progress)
    tok = G.tokenizer_from_gguf(gguf_path)
    return Generator(cm.prefill, cm.decode, model, tok, _stop_ids(gguf_path, tok), max_ctx, compiled=cm)


__all__ = ["CachedStep", "GenerationStats", "Generator", "compile_generator", "eager_generator"]
