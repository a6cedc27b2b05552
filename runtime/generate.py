"""Torch-free text generation from a saved GGUF artifact (``msd compile model.gguf -o out/``).

    from msd.runtime.generate import TextGenerator
    gen = TextGenerator.load("out/")
    print(gen.generate("What is the capital of France?", 32))

The artifact holds ``prefill(tokens) → (last-token logits, *new entries)`` and ``decode(token, *past)
→ (logits, *new entries)``; the cache is ``k, v`` f32, or ``k_codes, k_scales, v_codes, v_scales`` for
an int8 KV cache, token-major (``[T, *entry]``), kept in a :class:`KVCache` that each step's new entries
are appended to; ``decode`` reads only the ``T`` filled entries, in place (a view of the cache's memory
on the CPU drivers, not a copy).  The artifact also holds the
tokenizer (``tokenizer.json``, checked by sha256 like every file) and the generation settings in the
manifest's ``metadata["generation"]`` (:class:`GenerationSettings`, schema ``msd.runtime.manifest.GENERATION``,
written and read through this one class): each cache tensor's per-token entry shape and dtype,
``max_ctx`` (the cache capacity), stop token ids and the chat template.  Needs numpy, iree-base-runtime and
``tokenizers``; no torch, no compiler.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from msd.errors import ArtifactError, OptionError

from .artifact import Artifact, load
from .manifest import GENERATION, check
from .module import DTYPES

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
    """A KV cache: one preallocated token-major buffer ``[capacity, *entry]`` per cache tensor, of which
    the first :attr:`length` tokens are filled.  :meth:`past` is what a step function reads;
    :meth:`append` stores the entries a step returns.

    With a ``device`` (an IREE HAL device whose memory the host shares: the CPU drivers), each buffer is
    also imported as a device buffer once (``import_host_allocation``, no copy), and :meth:`past` hands
    the step function a buffer view of the filled prefix: a decode step then reads the cache where it
    lies instead of copying it in (``benchmarks/llm.py``'s decode rows time this path).  Appending
    writes only the new tokens' entries, in place.  Without a device, :meth:`past` returns numpy views
    (the step function copies them in)."""

    def __init__(self, entries: Sequence[tuple[Sequence[int], np.dtype | str]], capacity: int,
                 device: object | None = None) -> None:
        if capacity < 1:
            raise OptionError(f"the cache capacity must be positive, got {capacity}")
        self.buffers = [_aligned_zeros((capacity, *shape), np.dtype(dtype)) for shape, dtype in entries]
        self.capacity, self.length = capacity, 0
        self._device_buffers = [] if device is None else [_imported(device, b) for b in self.buffers]

    def past(self) -> tuple[object, ...]:
        if self._device_buffers:
            import iree.runtime as rt

            return tuple(rt.HalBufferView(db, [self.length, *b.shape[1:]], et)
                         for b, (db, et) in zip(self.buffers, self._device_buffers))
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


# IREE's CPU code generation assumes every dispatch binding starts 64-byte aligned (it emits aligned
# vector loads); numpy's large allocations are only 16-byte aligned (glibc's mmap chunk header).  A
# dispatch reading an imported cache buffer in place then faulted on an aligned AVX-512 load.
BUFFER_ALIGNMENT = 64


def _aligned_zeros(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Zeros of ``shape`` whose data starts on a :data:`BUFFER_ALIGNMENT` boundary."""
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(size + BUFFER_ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % BUFFER_ALIGNMENT
    return raw[start:start + size].view(dtype).reshape(shape)


def _imported(device: object, array: np.ndarray) -> tuple[object, object]:
    """``array``'s memory as a buffer of ``device`` (shared, not copied) and its HAL element type."""
    import iree.runtime as rt
    from iree.runtime.array_interop import map_dtype_to_element_type

    if array.ctypes.data % BUFFER_ALIGNMENT:
        raise ValueError(f"a buffer imported for dispatches to read in place must start {BUFFER_ALIGNMENT}-byte "
                         "aligned")
    buffer = device.allocator.import_host_allocation(
        array, rt.MemoryType.DEVICE_LOCAL | rt.MemoryType.HOST_VISIBLE, rt.BufferUsage.DEFAULT | rt.BufferUsage.MAPPING)
    return buffer, map_dtype_to_element_type(array.dtype)


class SlotCache(KVCache):
    """The KV cache of a batch of independent sequences, one per *slot*: the buffers of a
    :class:`KVCache` whose entries have a batch dim of ``slots`` (``[capacity, layers, slots, ...]``),
    with a length per slot.  :meth:`put` stores a sequence's prefill entries in a free slot; a batched
    decode step reads :meth:`past` (the first ``max(lengths)`` rows of every slot) with
    :meth:`step_lengths` (each slot's own length: a step attends only to its slot's rows) and
    :meth:`append` writes each active slot's new entry at that slot's length.  :meth:`release` frees a
    slot for the next sequence (its rows are overwritten, never cleared: the lengths mask them)."""

    def __init__(self, entries: Sequence[tuple[Sequence[int], np.dtype | str]], capacity: int,
                 device: object | None = None) -> None:
        if not entries or len(entries[0][0]) < 2:
            raise OptionError("a slot cache's entries are [layers, slots, ...] per token")
        super().__init__(entries, capacity, device)
        self.slots = int(entries[0][0][1])
        self.lengths = np.zeros(self.slots, np.int64)
        self.active = np.zeros(self.slots, bool)

    def free_slots(self) -> list[int]:
        return [int(s) for s in np.flatnonzero(~self.active)]

    def put(self, slot: int, new: Sequence[np.ndarray]) -> None:
        """Store one sequence's first entries (a prefill's, ``[S, layers, 1, ...]``) in free ``slot``."""
        if not 0 <= slot < self.slots or self.active[slot]:
            raise ValueError(f"slot {slot} is not a free slot of {self.slots}")
        if len(new) != len(self.buffers):
            raise ValueError(f"a step returned {len(new)} cache tensors, the cache has {len(self.buffers)}")
        n = new[0].shape[0]
        for i, (b, e) in enumerate(zip(self.buffers, new)):
            want = (n, b.shape[1], 1, *b.shape[3:])
            if e.shape != want or e.dtype != b.dtype:
                raise ValueError(f"cache tensor {i}: got {e.dtype} {list(e.shape)}, expected {b.dtype} {list(want)}")
        if n > self.capacity:
            raise ValueError(f"{n} tokens exceed the cache capacity max_ctx={self.capacity}")
        for b, e in zip(self.buffers, new):
            b[:n, :, slot] = e[:, :, 0]
        self.lengths[slot], self.active[slot] = n, True

    def release(self, slot: int) -> None:
        self.active[slot] = False

    def step_lengths(self) -> np.ndarray:
        """Each slot's cached tokens (0 for a free slot: its step's result is not used)."""
        return np.where(self.active, self.lengths, 0)

    def past(self) -> tuple[object, ...]:
        self.length = max(1, int(self.step_lengths().max()))  # the view's rows (a step needs one at least)
        return super().past()

    def append(self, new: Sequence[np.ndarray]) -> None:
        """Store a batched decode step's new entries ``[1, layers, slots, ...]``: each active slot's at
        row ``lengths[slot]`` of its own column."""
        if len(new) != len(self.buffers):
            raise ValueError(f"a step returned {len(new)} cache tensors, the cache has {len(self.buffers)}")
        for i, (b, e) in enumerate(zip(self.buffers, new)):
            if e.shape != (1, *b.shape[1:]) or e.dtype != b.dtype:
                raise ValueError(f"cache tensor {i}: got {e.dtype} {list(e.shape)}, expected {b.dtype}"
                                 f" {[1, *b.shape[1:]]}")
        for s in np.flatnonzero(self.active):
            if self.lengths[s] >= self.capacity:
                raise ValueError(f"slot {s}: {self.lengths[s]} + 1 tokens exceed the cache capacity"
                                 f" max_ctx={self.capacity}")
            for b, e in zip(self.buffers, new):
                b[self.lengths[s], :, s] = e[0, :, s]
            self.lengths[s] += 1


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


def greedy_batch(prefill: StepFn, decode_batch: StepFn, prompts: Sequence[list[int]], cache: SlotCache,
                 max_new_tokens: int, stop_ids: set[int], on_token: Callable[[int, int], None] | None = None,
                 stats: GenerationStats | None = None) -> list[list[int]]:
    """Greedy ids after each of ``prompts``, as :func:`greedy` gives them one by one, decoded together:
    each prompt is prefilled (``prefill(tokens [1, S])``) into a free slot of ``cache``; then one
    ``decode_batch(tokens [slots, 1], lengths [slots], *past)`` call per step advances every active
    sequence by a token.  A sequence that stops frees its slot for the next waiting prompt (continuous
    batching).  ``on_token(i, id)``: prompt ``i`` got token ``id``.  ``stats``: prefill tokens and time
    summed over the prompts; decode tokens summed over the sequences (a step of ``n`` active sequences
    makes ``n``) and the decode steps' time."""
    stats = stats if stats is not None else GenerationStats()
    out: list[list[int]] = [[] for _ in prompts]
    waiting = list(range(len(prompts)))[::-1]
    owner = [-1] * cache.slots  # the prompt each slot serves
    nxt = np.zeros((cache.slots, 1), np.int64)

    def take(i: int, token: int) -> bool:  # record a token; whether prompt i goes on
        out[i].append(token)
        if on_token is not None:
            on_token(i, token)
        return token not in stop_ids and len(out[i]) < max_new_tokens

    if max_new_tokens <= 0:
        return out
    while True:
        for slot in cache.free_slots():
            while waiting:
                i = waiting.pop()
                t0 = time.perf_counter()
                logits, *new = prefill(np.asarray([prompts[i]], dtype=np.int64))
                stats.prefill_s += time.perf_counter() - t0
                stats.prefill_tokens += len(prompts[i])
                token = int(np.argmax(logits[0]))
                if take(i, token):
                    cache.put(slot, new)
                    owner[slot], nxt[slot, 0] = i, token
                    break
        live = np.flatnonzero(cache.active)
        if not len(live):
            break
        t0 = time.perf_counter()
        lengths = cache.step_lengths()
        logits, *new = decode_batch(np.where(cache.active[:, None], nxt, 0), lengths, *cache.past())
        cache.append(new)
        stats.decode_s += time.perf_counter() - t0
        stats.decode_tokens += len(live)
        for slot in live:
            token = int(np.argmax(logits[slot]))
            nxt[slot, 0] = token
            if not take(owner[slot], token):
                cache.release(slot)
    stats.new_tokens = sum(len(o) for o in out)
    return out


def check_prompt(ids: list[int], max_new_tokens: int, max_ctx: int) -> None:
    """Refuse an empty prompt, or one that with ``max_new_tokens`` would overrun the cache capacity."""
    if not ids:
        raise OptionError("the prompt is empty")
    if len(ids) + max_new_tokens > max_ctx:
        raise OptionError(f"{len(ids)} prompt + {max_new_tokens} new tokens exceed max_ctx={max_ctx}")


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


USER_MARKER = "{user}"  # where a chat template puts the user's text


@dataclass(frozen=True)
class GenerationSettings:
    """How a text-generation artifact is driven; stored as ``metadata["generation"]`` in ``msd.json``.
    The compiler writes it and the runtime reads it through this class (``to_json``/``from_json``), and
    both check it against the schema ``msd.runtime.manifest.GENERATION``."""

    max_ctx: int  # the host cache's capacity (prompt + new tokens)
    kv_cache: str  # "float" | "int8"
    cache: tuple[tuple[tuple[int, ...], str], ...]  # per cache tensor: one token's entry shape, dtype
    stop_ids: tuple[int, ...]
    chat_template: str  # the prompt text around USER_MARKER (which occurs once)
    source: str = ""  # the file it was compiled from (a name, for people)
    batch: int = 1  # sequences per call of the batched decode step "decode_batch" (1: there is none)

    def to_json(self) -> dict:
        d = {"max_ctx": self.max_ctx, "kv_cache": self.kv_cache,
             "cache": [{"shape": list(shape), "dtype": dtype} for shape, dtype in self.cache],
             "stop_ids": sorted(self.stop_ids), "chat_template": self.chat_template, "source": self.source}
        if self.batch > 1:
            d["batch"] = self.batch
        return check(GENERATION, d, "generation settings")

    @classmethod
    def from_json(cls, d: object, where: str = "generation settings") -> GenerationSettings:
        d = check(GENERATION, d, where)
        return cls(d["max_ctx"], d["kv_cache"], tuple((tuple(t["shape"]), t["dtype"]) for t in d["cache"]),
                   tuple(d["stop_ids"]), d["chat_template"], d["source"], d.get("batch", 1))

    def render(self, user: str) -> str:
        """The chat prompt for ``user``'s text (plain substitution: the text is never interpreted)."""
        before, after = self.chat_template.split(USER_MARKER)
        return before + user + after


class GreedyGenerator:
    """Greedy generation over numpy step functions ``prefill(tokens)`` and ``decode(token, *past)`` (each
    returning the logits and the new tokens' cache entries) with a host :class:`KVCache` of ``max_ctx``
    tokens.  Subclasses say how a prompt is rendered (:meth:`render`) and what a cache entry is
    (:meth:`cache_entries`).  One generator may serve several threads: each call keeps its own cache and
    stats, and :attr:`last_stats` is the calling thread's last generation.

    ``decode_batch`` (optional: ``(tokens [slots, 1], lengths [slots], *past) → (logits [slots, vocab],
    *new)``) decodes ``slots`` independent sequences per call: :meth:`generate_ids_batch` then runs
    several prompts together (:func:`greedy_batch`); without it they run one after the other."""

    def __init__(self, prefill: StepFn, decode: StepFn, tokenizer, stop_ids: set[int], max_ctx: int,
                 decode_batch: StepFn | None = None, slots: int = 1) -> None:
        self.prefill, self.decode, self.decode_batch = prefill, decode, decode_batch
        self.slots = slots if decode_batch is not None else 1
        self.tokenizer, self.stop_ids, self.max_ctx = tokenizer, set(stop_ids), max_ctx
        self._local = threading.local()

    @property
    def last_stats(self) -> GenerationStats:
        """Token counts and times of this thread's last :meth:`generate_ids` / :meth:`generate`."""
        return getattr(self._local, "stats", None) or GenerationStats()

    def render(self, prompt_text: str) -> str:
        raise NotImplementedError

    def cache_entries(self) -> list[tuple[Sequence[int], np.dtype | str]]:
        raise NotImplementedError

    def encode(self, prompt_text: str, chat: bool = True) -> list[int]:
        text = self.render(prompt_text) if chat else prompt_text
        return self.tokenizer.encode(text, add_special_tokens=True).ids  # BOS when the vocabulary asks for it

    def empty_cache(self) -> KVCache:
        """A cache for one generation; shared with the device when the decode step runs on one that shares
        the host's memory (``Module.host_device``)."""
        return KVCache(self.cache_entries(), self.max_ctx, getattr(self.decode, "host_device", None))

    def generate_ids(self, ids: list[int], max_new_tokens: int,
                     on_token: Callable[[int], None] | None = None) -> list[int]:
        """Greedy token ids after the prompt ``ids``, stopping after a stop token (included)."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise OptionError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        check_prompt(ids, max_new_tokens, self.max_ctx)
        stats = self._local.stats = GenerationStats()
        return greedy(self.prefill, self.decode, ids, self.empty_cache(), max_new_tokens, self.stop_ids,
                      on_token, stats)

    def slot_cache(self) -> SlotCache:
        """A cache for :attr:`slots` sequences decoded together (needs ``decode_batch``)."""
        if self.decode_batch is None:
            raise OptionError("this generator has no batched decode step (compile with batch > 1)")
        entries = [((shape[0], self.slots, *shape[2:]), dtype) for shape, dtype in self.cache_entries()]
        return SlotCache(entries, self.max_ctx, getattr(self.decode_batch, "host_device", None))

    def generate_ids_batch(self, prompts: Sequence[list[int]], max_new_tokens: int,
                           on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
        """Greedy token ids after each prompt of ``prompts`` (as :meth:`generate_ids` gives them one by
        one), :attr:`slots` sequences decoded per step (:func:`greedy_batch`; one at a time without a
        batched decode step).  ``on_token(i, id)``: prompt ``i`` got token ``id``.  :attr:`last_stats`
        sums the prompts' prefill and decode tokens and times (decode tok/s: tokens of all sequences per
        second of decode steps)."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise OptionError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        prompts = [list(ids) for ids in prompts]
        for i, ids in enumerate(prompts):
            try:
                check_prompt(ids, max_new_tokens, self.max_ctx)
            except OptionError as e:
                raise OptionError(f"prompt {i}: {e}") from None
        stats = GenerationStats()
        if self.decode_batch is None:
            out = []
            for i, ids in enumerate(prompts):
                one = GenerationStats()
                cb = None if on_token is None else (lambda t, i=i: on_token(i, t))
                out.append(greedy(self.prefill, self.decode, ids, self.empty_cache(), max_new_tokens,
                                  self.stop_ids, cb, one))
                for f in ("prefill_tokens", "prefill_s", "decode_tokens", "decode_s", "new_tokens"):
                    setattr(stats, f, getattr(stats, f) + getattr(one, f))
        else:
            out = greedy_batch(self.prefill, self.decode_batch, prompts, self.slot_cache(), max_new_tokens,
                               self.stop_ids, on_token, stats)
        self._local.stats = stats
        return out

    def generate_batch(self, prompt_texts: Sequence[str], max_new_tokens: int, chat: bool = True) -> list[str]:
        """Greedy replies to each of ``prompt_texts`` (:meth:`generate_ids_batch`)."""
        prompts = [self.encode(text, chat) for text in prompt_texts]
        return [self.tokenizer.decode(ids, skip_special_tokens=True)
                for ids in self.generate_ids_batch(prompts, max_new_tokens)]

    def generate(self, prompt_text: str, max_new_tokens: int, chat: bool = True,
                 callback: Callable[[str], None] | None = None) -> str:
        """Greedy reply to ``prompt_text`` (in the chat template when ``chat``); ``callback`` receives each
        new piece of text as it is produced (the pieces add up to the returned text)."""
        stream = TextStream(self.tokenizer, callback)
        self.generate_ids(self.encode(prompt_text, chat), max_new_tokens, stream.on_token)
        return stream.finish()


class TextGenerator(GreedyGenerator):
    """Greedy generation over a loaded GGUF artifact (see the module docstring)."""

    def __init__(self, artifact: Artifact, tokenizer, settings: GenerationSettings) -> None:
        batched = artifact.functions["decode_batch"] if settings.batch > 1 else None
        super().__init__(artifact.prefill, artifact.decode, tokenizer, set(settings.stop_ids), settings.max_ctx,
                         batched, settings.batch)
        self.artifact, self.settings = artifact, settings

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> TextGenerator:
        from tokenizers import Tokenizer

        art = load(path, device)
        if METADATA_KEY not in art.metadata:
            raise ArtifactError(f"{path} is not a text-generation artifact (compile one with"
                                " 'msd compile model.gguf -o DIR')")
        settings = GenerationSettings.from_json(art.metadata[METADATA_KEY], f"{art.folder / 'msd.json'} metadata")
        _check_steps(art, settings)
        tok_path = art.file(TOKENIZER_FILE)
        try:
            tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as e:  # the tokenizers library raises its own exception type
            raise ArtifactError(f"{tok_path} is not a tokenizer the tokenizers library reads: {e}") from None
        return cls(art, tokenizer, settings)

    def render(self, prompt_text: str) -> str:
        return self.settings.render(prompt_text)

    def cache_entries(self) -> list[tuple[Sequence[int], np.dtype | str]]:
        return [(shape, DTYPES[dtype]) for shape, dtype in self.settings.cache]


def _check_steps(art: Artifact, settings: GenerationSettings) -> None:
    """The prefill/decode signatures must be the ones the settings drive: tokens in, cache tensors whose
    per-token entries have the recorded shapes and dtypes."""
    where = art.folder / "msd.json"
    prefill, decode = art.functions["prefill"], art.functions["decode"]
    if len(prefill.inputs) != 1 or len(decode.inputs) != 1 + len(settings.cache):
        raise ArtifactError(f"{where}: prefill takes {len(prefill.inputs)} and decode {len(decode.inputs)} inputs;"
                            f" a generator with {len(settings.cache)} cache tensors needs 1 and"
                            f" {1 + len(settings.cache)}")
    for fn in (prefill, decode):
        tok = fn.inputs[0]
        if tok.dtype != "i64" or len(tok.shape) != 2:
            raise ArtifactError(f"{where}: {fn.name}'s first input is {tok.describe()}, not i64 token ids [1, S]")
        if len(fn.outputs) != 1 + len(settings.cache):
            raise ArtifactError(f"{where}: {fn.name} returns {len(fn.outputs)} outputs, expected logits and"
                                f" {len(settings.cache)} cache tensors")
    for i, ((shape, dtype), spec) in enumerate(zip(settings.cache, decode.inputs[1:])):
        if spec.dtype != dtype or tuple(spec.shape[1:]) != tuple(shape):
            raise ArtifactError(f"{where}: cache tensor {i} is {dtype}{list(shape)} per token in the settings, but"
                                f" decode takes {spec.describe()}")
        for fn in (prefill, decode):
            out = fn.outputs[1 + i]
            if out.dtype != dtype or tuple(out.shape[1:]) != tuple(shape):
                raise ArtifactError(f"{where}: {fn.name} returns {out.describe()} for cache tensor {i}, but the"
                                    f" settings say {dtype}{list(shape)} per token")
    if settings.batch > 1:
        _check_batch_step(art, settings)


def _check_batch_step(art: Artifact, settings: GenerationSettings) -> None:
    """``decode_batch`` takes token ids ``[batch, 1]``, lengths ``[batch]`` and the cache tensors with
    ``batch`` sequences per entry, and returns logits and new entries of that form."""
    where, fn, n = art.folder / "msd.json", art.functions["decode_batch"], settings.batch
    if len(fn.inputs) != 2 + len(settings.cache) or len(fn.outputs) != 1 + len(settings.cache):
        raise ArtifactError(f"{where}: decode_batch takes {len(fn.inputs)} inputs and returns {len(fn.outputs)}"
                            f" outputs; with {len(settings.cache)} cache tensors it needs {2 + len(settings.cache)}"
                            f" and {1 + len(settings.cache)}")
    for spec, shape, what in ((fn.inputs[0], (n, 1), "token ids"), (fn.inputs[1], (n,), "lengths")):
        if spec.dtype != "i64" or tuple(spec.shape) != shape:
            raise ArtifactError(f"{where}: decode_batch's {what} input is {spec.describe()}, not i64{list(shape)}")
    for i, (shape, dtype) in enumerate(settings.cache):
        entry = (shape[0], n, *shape[2:])
        for spec in (fn.inputs[2 + i], fn.outputs[1 + i]):
            if spec.dtype != dtype or tuple(spec.shape[1:]) != entry:
                raise ArtifactError(f"{where}: decode_batch has {spec.describe()} for cache tensor {i}; batch {n}"
                                    f" needs {dtype}{list(entry)} per token")


__all__ = ["GenerationSettings", "GenerationStats", "GreedyGenerator", "KVCache", "SlotCache", "TextGenerator",
           "TextStream", "check_prompt", "greedy", "greedy_batch"]
