"""``msd.compiler.llm.generate``: greedy text generation from a GGUF Llama with a KV cache.

``compile_generator(path)`` compiles two entry points into one artifact with shared weights:

- ``prefill(tokens [1, S])`` with a dynamic ``S`` (1..max_ctx) and no cache;
- ``decode(token [1, 1], *past)`` over the ``T`` cached tokens (dynamic ``T``);

both are :meth:`msd.compiler.models.llama.LlamaModel.step`: they return the last-token logits and the new tokens'
cache entries, which the host appends to its :class:`msd.runtime.generate.KVCache` (token-major buffers
of ``max_ctx`` tokens); a step reads only the filled part, so decode costs what the current length
asks.  The cache is ``k, v`` (f32), or ``k_codes, k_scales, v_codes, v_scales`` with
``kv_cache="int8"`` (``LlamaModel.cache_entries``).  With ``score=True`` a third entry point
``score(tokens [1, S], *past)`` (logits of every position) is compiled too, for teacher forcing
(:meth:`Generator.next_token_logits`).  :func:`eager_generator` runs the same steps in eager torch as the
reference.  ``Generator.generate(text, n)`` returns the reply and records prefill/decode tokens per
second in ``Generator.last_stats``; :func:`generate` is the one-call convenience (``msd.generate``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from msd.compiler.models import gguf as G
from msd.compiler.models.llama import LlamaModel
from msd.compiler.pipeline.importer import RUNTIME_DTYPES
from msd.compiler.pipeline.targets import resolve as resolve_target
from msd.errors import OptionError

# shared with the torch-free text generator
from msd.runtime.generate import (
    METADATA_KEY,
    TOKENIZER_FILE,
    USER_MARKER,
    GenerationSettings,
    GenerationStats,
    GreedyGenerator,
    StepFn,
)
from msd.runtime.module import DTYPES

DEFAULT_MAX_CTX = 2048  # KV-cache capacity (prompt + new tokens) of the generators
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>", "<end_of_turn>")


class CachedStep(nn.Module):
    """``LlamaModel.step`` as a module to export: ``forward(tokens, *past)`` with the cache format and
    ``last_only`` fixed.  Every instance holds the model as ``llama`` so the weights of all entry points
    have the same torch names (and are stored once)."""

    def __init__(self, llama: LlamaModel, kv_cache: str = "float", last_only: bool = True,
                 kernels: bool = False) -> None:
        super().__init__()
        self.llama, self.kv_cache, self.last_only = llama, kv_cache, last_only
        self.kernels = kernels

    def forward(self, tokens: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.llama.step(tokens, *past, kv_cache=self.kv_cache, last_only=self.last_only,
                               kernels=self.kernels)


class BatchStep(CachedStep):
    """The batched decode step to export: ``forward(tokens [B, 1], lengths [B], *past)``, sequences of
    their own lengths (``LlamaModel.step(lengths=...)``)."""

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.llama.step(tokens, *past, kv_cache=self.kv_cache, kernels=self.kernels,
                               lengths=lengths)


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
        raise OptionError(f"need logits for at least {max(n, 1)} positions")
    ref = torch.log_softmax(ref_logits[:n].double(), -1)
    got = torch.log_softmax(logits[:n].double(), -1)
    kl = (ref.exp() * (ref - got)).sum(-1)
    target = torch.tensor(ids[1:n + 1]).unsqueeze(-1)
    return NextTokenStats(
        positions=n, mean_kl=float(kl.mean()), max_kl=float(kl.max()),
        ref_ppl=float(torch.exp(-ref.gather(-1, target).mean())), ppl=float(torch.exp(-got.gather(-1, target).mean())),
        top1=float((ref.argmax(-1) == got.argmax(-1)).double().mean()),
    )


def eager_steps(model: LlamaModel, kv_cache: str = "float") -> tuple[StepFn, StepFn, StepFn]:
    """``(prefill, decode, score)`` numpy step functions (as the runtime's) over ``model.step`` in eager
    torch: the reference the compiled ones are compared with."""
    model.cache_entries(1, kv_cache)  # checks the format

    def run(last_only: bool) -> StepFn:
        def call(tokens: np.ndarray, *past: np.ndarray) -> tuple[np.ndarray, ...]:
            with torch.no_grad():
                out = model.step(torch.from_numpy(tokens), *(torch.from_numpy(p) for p in past),
                                 kv_cache=kv_cache, last_only=last_only)
            return tuple(o.numpy() for o in out)
        return call

    return run(True), run(True), run(False)


def eager_batch_step(model: LlamaModel, kv_cache: str = "float") -> StepFn:
    """The batched decode step ``(tokens [B, 1], lengths [B], *past)`` in eager torch (the reference)."""
    def call(tokens: np.ndarray, lengths: np.ndarray, *past: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.no_grad():
            out = model.step(torch.from_numpy(np.ascontiguousarray(tokens)), *(torch.from_numpy(p) for p in past),
                             kv_cache=kv_cache, lengths=torch.from_numpy(np.asarray(lengths, np.int64)))
        return tuple(o.numpy() for o in out)
    return call


class Generator(GreedyGenerator):
    """Greedy generation over numpy step functions (compiled or eager): ``prefill(tokens)`` and
    ``decode(token, *past)``, each returning the logits and the new tokens' cache entries; ``score``
    (optional, ``(tokens, *past)`` → logits of every position) is used by :meth:`next_token_logits`;
    ``kv_cache`` is the cache format ("float", "f16" or "int8") and ``max_ctx`` the host cache's capacity.
    ``source`` is the GGUF file it was built from."""

    def __init__(self, prefill: StepFn, decode: StepFn, model: LlamaModel, tokenizer, stop_ids: set[int],
                 max_ctx: int, compiled=None, score: StepFn | None = None, kv_cache: str = "float",
                 source: str | Path = "", decode_batch: StepFn | None = None, batch: int = 1) -> None:
        super().__init__(prefill, decode, tokenizer, stop_ids, max_ctx, decode_batch, batch)
        self.score, self.kv_cache, self.model, self.source = score, kv_cache, model, str(source)
        self.compiled = compiled  # the CompiledModule, when there is one

    @functools.cached_property
    def chat_template(self) -> str:
        """The prompt around :data:`USER_MARKER` (the GGUF file's chat template, :func:`G.chat_template`)."""
        return G.chat_template(self.source, USER_MARKER) if self.source else G.chat_prompt(USER_MARKER)

    def render(self, prompt_text: str) -> str:
        before, after = self.chat_template.split(USER_MARKER)
        return before + prompt_text + after

    def cache_entries(self) -> list[tuple[tuple[int, ...], np.dtype]]:
        return [(shape, DTYPES[RUNTIME_DTYPES[dt]]) for shape, dt in self.model.cache_entries(1, self.kv_cache)]

    def settings(self) -> GenerationSettings:
        """What the torch-free :class:`msd.runtime.generate.TextGenerator` needs to drive the artifact."""
        return GenerationSettings(
            max_ctx=self.max_ctx, kv_cache=self.kv_cache,
            cache=tuple((tuple(shape), RUNTIME_DTYPES[dt]) for shape, dt in self.model.cache_entries(1, self.kv_cache)),
            stop_ids=tuple(sorted(self.stop_ids)), chat_template=self.chat_template,
            source=Path(self.source).name, batch=self.slots)

    def save(self, folder: str | Path) -> Path:
        """Write the compiled prefill + decode, the tokenizer and :meth:`settings` as one artifact that
        ``msd generate DIR`` (``msd.runtime.generate.TextGenerator``) runs without torch."""
        if self.compiled is None:
            raise OptionError("an eager generator has nothing to save: build one with compile_generator")
        return self.compiled.save(folder, extra_files={TOKENIZER_FILE: self.tokenizer.to_str().encode()},
                                  metadata={METADATA_KEY: self.settings().to_json()})

    def next_token_logits(self, ids: list[int], chunk: int = 256) -> torch.Tensor:
        """Teacher forcing: f32 ``[len(ids), vocab]`` whose row ``i`` is the logits of the token after
        ``ids[:i + 1]``.  The first token goes through ``prefill``, the rest through the KV cache in
        chunks of ``chunk`` tokens with ``score`` (all-positions logits), or one token at a time with
        ``decode`` when there is no ``score``."""
        if not ids:
            raise OptionError("the text is empty")
        if len(ids) > self.max_ctx:
            raise OptionError(f"{len(ids)} tokens exceed max_ctx={self.max_ctx}")
        step = chunk if self.score is not None else 1
        if step < 1:
            raise OptionError(f"chunk={chunk} must be positive")
        cache = self.empty_cache()
        logits, *new = self.prefill(np.asarray([ids[:1]], dtype=np.int64))
        cache.append(new)
        rows = [logits]
        for start in range(1, len(ids), step):
            piece = np.asarray([ids[start:start + step]], dtype=np.int64)
            logits, *new = (self.score or self.decode)(piece, *cache.past())
            cache.append(new)
            rows.append(logits[0] if self.score is not None else logits)
        return torch.from_numpy(np.concatenate(rows)).to(torch.float32)


def _stop_ids(path, tokenizer) -> set[int]:
    ids = {tokenizer.token_to_id(t) for t in STOP_TOKENS} - {None}
    eos = G.special_token_id(path, "eos")
    if eos is not None:
        ids.add(eos)
    return ids


def eager_generator(gguf_path: str | Path, max_ctx: int = DEFAULT_MAX_CTX,
                    model: LlamaModel | None = None, kv_cache: str = "float", batch: int = 1) -> Generator:
    """The reference: the same cache path (``LlamaModel.step``) in eager torch; ``batch`` > 1: with a
    batched decode step of that many sequences (:meth:`Generator.generate_ids_batch`)."""
    _check_batch(batch)
    model = model if model is not None else G.load_gguf(gguf_path)
    prefill, decode, score = eager_steps(model, kv_cache)
    tok = G.tokenizer_from_gguf(gguf_path)
    return Generator(prefill, decode, model, tok, _stop_ids(gguf_path, tok), max_ctx, score=score,
                     kv_cache=kv_cache, source=gguf_path,
                     decode_batch=eager_batch_step(model, kv_cache) if batch > 1 else None, batch=batch)


MAX_BATCH = 1024


def _check_batch(batch: object) -> None:
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise OptionError(f"batch must be an integer from 1 to {MAX_BATCH} (sequences decoded together), "
                          f"got {batch!r}")


def generator_functions(model: LlamaModel, max_ctx: int, target: str = "llvm-cpu", score: bool = False,
                        kv_cache: str = "float", batch: int = 1) -> dict[str, tuple]:
    """The entry points :func:`compile_generator` compiles for ``model`` (``msd.compile_functions``'s
    ``functions``): ``prefill``, ``decode``, and ``score`` / ``decode_batch`` when asked for."""
    if max_ctx < 3:
        raise OptionError(f"max_ctx={max_ctx} is too small")
    _check_batch(batch)
    # prefill and decode attend in msd's kernels on CPU targets (msd.compiler.ops)
    kernels = resolve_target(target).backend == "llvm-cpu"
    s_example, t_example = min(8, max_ctx - 1), min(5, max_ctx - 1)
    past = model.empty_cache(1, kv_cache, length=t_example)
    seq = torch.export.Dim("S", min=1, max=max_ctx)
    held = torch.export.Dim("T", min=1, max=max_ctx - 1)
    tokens = torch.zeros(1, s_example, dtype=torch.long)
    past_dims = tuple({0: held} for _ in past)  # forward's *past: one entry
    functions = {
        "prefill": (CachedStep(model, kv_cache, kernels=kernels), (tokens,), ({1: seq},)),
        "decode": (CachedStep(model, kv_cache, kernels=kernels),
                   (torch.zeros(1, 1, dtype=torch.long), *past), (None, past_dims)),
    }
    if score:
        functions["score"] = (CachedStep(model, kv_cache, last_only=False), (tokens, *past), ({1: seq}, past_dims))
    if batch > 1:
        functions["decode_batch"] = (
            BatchStep(model, kv_cache, kernels=kernels),
            (torch.zeros(batch, 1, dtype=torch.long), torch.full((batch,), t_example, dtype=torch.long),
             *model.empty_cache(batch, kv_cache, length=t_example)), (None, None, past_dims))
    return functions


def compile_generator(gguf_path: str | Path, slices: int = 2, max_ctx: int = DEFAULT_MAX_CTX,
                      target: str = "llvm-cpu", model: LlamaModel | None = None,
                      progress: Callable[[str], None] | None = None, score: bool = False,
                      kv_cache: str = "float", cpu_kernel: str = "auto", batch: int = 1) -> Generator:
    """Compile ``prefill`` (dynamic prompt length) and ``decode`` into one msd artifact with shared
    weights and return a :class:`Generator` over it; ``score=True`` adds the all-positions entry point
    ``score`` (dynamic length) for :meth:`Generator.next_token_logits`; ``kv_cache``: "float" (f32 K/V)
    or "int8" (codes + a scale per head and token); ``cpu_kernel``: as for ``msd.compile``; ``batch`` >
    1 adds ``decode_batch``, one step of ``batch`` independent sequences of their own lengths
    (:meth:`Generator.generate_ids_batch`: each prompt prefilled alone into a slot, then decoded
    together)."""
    import msd

    model = model if model is not None else G.load_gguf(gguf_path)
    functions = generator_functions(model, max_ctx, target, score=score, kv_cache=kv_cache, batch=batch)
    cm = msd.compile_functions(functions, target=target, slices=slices, progress=progress, cpu_kernel=cpu_kernel)
    tok = G.tokenizer_from_gguf(gguf_path)

    def step(name: str) -> StepFn:
        """The compiled function ``name``: loaded now, or, for a device this machine lacks, at its first
        call (which then says so): a generator compiled for a GPU elsewhere can still be saved."""
        return cm.function(name) if cm.runs_here else lambda *args: cm.function(name)(*args)

    return Generator(step("prefill"), step("decode"), model, tok, _stop_ids(gguf_path, tok), max_ctx,
                     compiled=cm, score=step("score") if score else None, kv_cache=kv_cache,
                     source=gguf_path, decode_batch=step("decode_batch") if batch > 1 else None, batch=batch)


@functools.lru_cache(maxsize=1)
def _cached_generator(path: str, mtime_ns: int, slices: int, max_ctx: int, target: str) -> Generator:
    return compile_generator(path, slices=slices, max_ctx=max_ctx, target=target)


def generate(gguf_path: str | Path, prompt: str, max_new_tokens: int = 64, slices: int = 2,
             max_ctx: int = DEFAULT_MAX_CTX, target: str = "llvm-cpu", chat: bool = True,
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


__all__ = ["DEFAULT_MAX_CTX", "MAX_BATCH", "BatchStep", "CachedStep", "GenerationStats", "Generator",
           "NextTokenStats", "compile_generator", "eager_batch_step", "eager_generator", "eager_steps", "generate",
           "generator_functions", "next_token_stats"]
