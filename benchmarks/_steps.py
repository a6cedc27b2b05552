"""Timing a greedy generation over prefill/decode step functions (torch-free: benchmarks/llm.py also
runs it in a process that imports msd's runtime only)."""

from __future__ import annotations

import time

import numpy as np


def time_greedy(gen, prompt: list[int], n_decode: int) -> tuple[float, float, list[int]]:
    """Warm up (8-token prefill, 2 decodes), then one timed prefill of ``prompt`` and ``n_decode``
    greedy decode steps (stop tokens ignored), each call timed from Python (numpy in, numpy out, the new
    cache entries appended to ``gen``'s cache).  Returns (prefill s, decode s, the first greedy token and
    the decoded ones)."""
    warm = gen.empty_cache()
    _, *new = gen.prefill(np.asarray([prompt[:8]]))
    warm.append(new)
    for j in range(2):
        _, *new = gen.decode(np.asarray([[prompt[8 + j]]]), *warm.past())
        warm.append(new)
    cache = gen.empty_cache()
    t0 = time.perf_counter()
    logits, *new = gen.prefill(np.asarray([prompt]))
    cache.append(new)
    tokens = [int(logits[0].argmax())]
    prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n_decode):
        logits, *new = gen.decode(np.asarray([[tokens[-1]]]), *cache.past())
        cache.append(new)
        tokens.append(int(logits[0].argmax()))
    return prefill_s, time.perf_counter() - t0, tokens
