"""Torch-free text generation from a saved GGUF artifact (``msd compile model.gguf -o out/``).

    from msd.runtime.generate import TextGenerator
    gen = TextGenerator.load("out/")
    print(gen.generate("What is the capital of France?", 32))

The artifact holds ``prefill(tokens) → (last-token logits, *new entries)`` and ``decode(token, *past)
→ (logits, *new entries)``; the cache is ``k, v`` f32, or ``k_codes, k_scales, v_codes, v_scales`` for
an int8 KV cache, token-major (``[T, *entry]``), kept on the host in a :class:`KVCache` that each step's
new entries are appended to; ``decode`` reads only the ``T`` filled entries.  The artifact also holds the
tokenizer (``tokenizer.json``, checked by sha256 like every file) and the generation settings in the
manifest's ``metadata["generation"]``: each cache tensor's per-token entry shape and dtype, ``max_ctx``
(the cache capacity), stop token ids and the chat template.  Needs numpy, iree-base-runtime and
``tokenizers``; no torch, no compiler.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .artifact import Artifact, load
from .module import ArtifactError

TOKENIZER_FILE = "tokenizer.json"
METADATA_KEY = "generation"


@dataclass
class GenerationStats:
    """Token counts and wall times of one generation."""

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


StepFn = Callable[..., tuple[np.ndarray, ...]]  # (tokens, *past) -> (logits, *new entries)


class KVCache:
    """The host side of a KV cache: one preallocated token-major buffer ``[capacity, *entry]`` per
    cache tensor, of which the first :attr:`length` tokens are filled.  :meth:`past` is what a step
    function reads (views, no copy); :meth:`append` stores the entries a step returns."""

    def __init__(self, entries: Sequence[tuple[Sequence[int], np.dtype | str]], capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"the cache capacity must be positive, got {capacity}")
        self.buffers = [np.zeros((capacity, *shape), np.dtype(dtype)) for shape, dtype in entries]
        self.capacity, self.length = capacity, 0

    def past(self) -> tuple[np.ndarray, ...]:
        return tuple(b[:self.length] for b in self.buffers)

    def append(self, new: Sequence[np.ndarray]) -> None:
        if len(new) != len(self.buffers):
            raise ValueError(f"a step returned {len(new)} cache tensors, the cache has {len(self.buffers)}")
        n = new[0].shape[0]
        for i, (b, e) in enumerate(zip(self.buffers, new)):
            if e.shape != (n, *b.shape[1:]) or e.dtype != b.dtype:
                raise ValueError(f"cache tensor {i}: got {e.dtype} {list(e.shape)}, expected {b.dtype}"
                                 f" {[n, *b.shape[1:]]}")
        if self.length + n > self.capacity:
            raise ValueError(f"{self.length} + {n} tokens exceed the cache capacity max_ctx={self.capacity}")
        for b, e in zip(self.buffers, new):
            b[self.length:self.length + n] = e
        self.length += n


def greedy(prefill: StepFn, decode: StepFn, ids: list[int], cache: KVCache, max_new_tokens: int,
           stop_ids: set[int], on_token: Callable[[int], None] | None = None,
           stats: GenerationStats | None = None) -> list[int]:
    """Greedy ids after the prompt ``ids`` (stopping after a stop token, which is included), over numpy
    step functions (``prefill(tokens)``, ``decode(token, *past)``, each returning the logits and the new
    cache entries) and the empty ``cache``; timings go into ``stats``."""
    stats = stats if stats is not None else GenerationStats()
    out: list[int] = []
    if max_new_tokens <= 0:
        return out
    t0 = time.perf_counter()
    logits, *new = prefill(np.asarray([ids], dtype=np.int64))
    cache.append(new)
    nxt = int(np.argmax(logits[0]))
    stats.prefill_s, stats.prefill_tokens = time.perf_counter() - t0, len(ids)
    t0 = time.perf_counter()
    while True:
        out.append(nxt)
        if on_token is not None:
            on_token(nxt)
        if nxt in stop_ids or len(out) >= max_new_tokens:
            break
        logits, *new = decode(np.asarray([[nxt]], dtype=np.int64), *cache.past())
        cache.append(new)
        nxt = int(np.argmax(logits[0]))
        stats.decode_tokens += 1
    stats.decode_s = time.perf_counter() - t0
    stats.new_tokens = len(out)
    return out


def check_prompt(ids: list[int], max_new_tokens: int, max_ctx: int) -> None:
    """Refuse an empty prompt, or one that with ``max_new_tokens`` would overrun the cache capacity."""
    if not ids:
        raise ValueError("the prompt is empty")
    if len(ids) + max_new_tokens > max_ctx:
        raise ValueError(f"{len(ids)} prompt + {max_new_tokens} new tokens exceed max_ctx={max_ctx}")


class TextStream:
    """Hands ``callback`` each new piece of text as ids arrive (:meth:`on_token`), holding back
    incomplete UTF-8 characters; :meth:`finish` sends what was held back and returns the whole text."""

    def __init__(self, tokenizer, callback: Callable[[str], None] | None) -> None:
        self.tokenizer, self.callback = tokenizer, callback
        self.ids: list[int] = []
        self.shown = ""

    def on_token(self, t: int) -> None:
        self.ids.append(t)
        if self.callback is not None:
            text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            if not text.endswith("\ufffd") and text.startswith(self.shown):
                self.callback(text[len(self.shown):])
                self.shown = text

    def finish(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.callback is not None and text != self.shown and text.startswith(self.shown):
            self.callback(text[len(self.shown):])
        return text


class TextGenerator:
    """Greedy generation over a loaded GGUF artifact (see the module docstring)."""

    def __init__(self, artifact: Artifact, tokenizer, settings: dict) -> None:
        self.artifact, self.tokenizer, self.settings = artifact, tokenizer, settings
        self.max_ctx = int(settings["max_ctx"])
        self.stop_ids = {int(i) for i in settings["stop_ids"]}
        self.last_stats = GenerationStats()

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> TextGenerator:
        from tokenizers import Tokenizer

        art = load(path, device)
        settings = art.metadata.get(METADATA_KEY)
        if settings is None or TOKENIZER_FILE not in art.manifest.get("files", {}):
            raise ArtifactError(f"{path} is not a text-generation artifact (compile one with"
                                " 'msd compile model.gguf -o DIR')")
        missing = {"prefill", "decode"} - set(art.functions)
        if missing:
            raise ArtifactError(f"{path} lacks the function(s) {', '.join(sorted(missing))}")
        n_cache = len(settings.get("cache", ()))
        if len(art.functions["prefill"].inputs) != 1 or len(art.functions["decode"].inputs) != 1 + n_cache:
            raise ArtifactError(f"{path} was compiled by an older msd (its steps take the whole KV cache and a"
                                " start position); compile it again with 'msd compile model.gguf -o DIR'")
        return cls(art, Tokenizer.from_file(str(art.folder / TOKENIZER_FILE)), settings)

    def encode(self, prompt_text: str, chat: bool = True) -> list[int]:
        text = self.settings["chat_template"].format(user=prompt_text) if chat else prompt_text
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def empty_cache(self) -> KVCache:
        return KVCache([(t["shape"], t["dtype"]) for t in self.settings["cache"]], self.max_ctx)

    def generate_ids(self, ids: list[int], max_new_tokens: int,
                     on_token: Callable[[int], None] | None = None) -> list[int]:
        check_prompt(ids, max_new_tokens, self.max_ctx)
        self.last_stats = GenerationStats()
        return greedy(self.artifact.prefill, self.artifact.decode, ids, self.empty_cache(), max_new_tokens,
                      self.stop_ids, on_token, self.last_stats)

    def generate(self, prompt_text: str, max_new_tokens: int, chat: bool = True,
                 callback: Callable[[str], None] | None = None) -> str:
        """Greedy reply to ``prompt_text``; ``callback`` receives each new piece of text."""
        stream = TextStream(self.tokenizer, callback)
        self.generate_ids(self.encode(prompt_text, chat), max_new_tokens, stream.on_token)
        return stream.finish()


__all__ = ["GenerationStats", "KVCache", "TextGenerator", "TextStream", "check_prompt", "greedy"]
