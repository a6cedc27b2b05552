"""``msd.compiler.ops``: torch custom ops that msd compiles into kernels of its own.

``torch.ops.msd.decode_attention`` — one decode step's attention over a token-major KV cache;
``torch.ops.msd.decode_attention_int8`` — the same over an int8 cache (codes and per-token scales);
``torch.ops.msd.decode_attention_ragged`` (and ``_ragged_int8``) — the same for a batch of sequences
that each hold their own number of cached tokens (``lengths``);
``torch.ops.msd.prefill_attention`` — a prompt's causal attention over itself.  Eager
torch runs the reference below; ``torch.export`` keeps the op whole, and msd's
``--msd-attention-kernels`` pass (:mod:`msd.passes.attention_kernels`) compiles them into kernels of
msd's own for CPU targets.  For other targets the compiler driver decomposes it into the reference's
tensor ops (:func:`decompose_for`) before import.
"""

from __future__ import annotations

import torch

OP_NAMESPACE = "msd"


def _attend(q: torch.Tensor, kd: torch.Tensor, vd: torch.Tensor, lengths: torch.Tensor | None,
            window: int = 0) -> torch.Tensor:
    """Softmax attention of ``q`` ``[B, H, G, D]`` over keys/values ``[B, H, T + 1, D]`` (the last one the
    new token's); with ``lengths`` ``[B]``, sequence ``b`` sees only cached keys ``0 … lengths[b] - 1``
    and its new one; ``window`` (> 0): only the last ``window`` of those (its own key included)."""
    scores = torch.einsum("bhgd,bhtd->bhgt", q, kd)
    t = kd.shape[2] - 1
    if lengths is not None:
        scores = scores + ragged_mask(lengths, t).view(kd.shape[0], 1, 1, -1)
    if window:
        ends = lengths if lengths is not None else torch.full((kd.shape[0],), t, device=kd.device)
        scores = scores + window_mask(ends, t, window).view(kd.shape[0], 1, 1, -1)
    e = torch.exp(scores - scores.amax(-1, keepdim=True))
    return torch.einsum("bhgt,bhtd->bhgd", e * (1.0 / e.sum(-1, keepdim=True)), vd)


def _mask_table(device: torch.device) -> torch.Tensor:  # an additive mask's values: [0, −inf]
    return torch.cat([torch.zeros(1, device=device), torch.full((1,), float("-inf"), device=device)])


def window_mask(ends: torch.Tensor, t: int, window: int) -> torch.Tensor:
    """Additive mask ``[B, T + 1]`` of a one-token step of a sliding-window layer: −inf on cached key
    ``j`` when it lies ``window`` or more positions before sequence ``b``'s query at ``ends[b]``
    (``j <= ends[b] − window``), 0 on the others and on the new token's key ``T``."""
    keys = torch.arange(t, device=ends.device).view(1, -1)
    early = torch.cat([(keys <= ends.view(-1, 1) - window).to(torch.long),
                       torch.zeros(ends.shape[0], 1, dtype=torch.long, device=ends.device)], dim=1)
    return _mask_table(ends.device)[early]


def ragged_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """Additive mask ``[B, T + 1]``: −inf on cached key ``j`` when ``j >= lengths[b]`` (a row past
    sequence ``b``'s end), 0 on the others and on the new token's key ``T``.  A lookup in ``[0, −inf]``
    rather than a bool select (see :mod:`msd.compiler.models.llama`)."""
    keys = torch.arange(t, device=lengths.device).view(1, -1)
    new = torch.zeros(lengths.shape[0], 1, dtype=torch.long, device=lengths.device)  # the new token's key
    past_end = torch.cat([(keys >= lengths.view(-1, 1)).to(torch.long), new], dim=1)  # (no i1 `and`: IREE)
    return _mask_table(lengths.device)[past_end]


def _reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor,
               v_new: torch.Tensor, layer: int, window: int = 0, lengths: torch.Tensor | None = None) -> torch.Tensor:
    kd = torch.cat([k_cache[:, layer].movedim(0, 2), k_new], dim=2).to(q.dtype)  # [B, H, T + 1, D]
    vd = torch.cat([v_cache[:, layer].movedim(0, 2), v_new], dim=2).to(q.dtype)
    return _attend(q, kd, vd, lengths, window)


@torch.library.custom_op(f"{OP_NAMESPACE}::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor,
                     v_new: torch.Tensor, layer: int, window: int = 0) -> torch.Tensor:
    """Softmax attention of one new token's query rows over the cached keys of ``layer`` and its own.

    ``q`` ``[B, kv_heads, group, D]``: the token's query heads grouped by the KV head they read (already
    scaled by ``1/√D``); ``k_cache``/``v_cache`` ``[T, layers, B, kv_heads, D]``: the cache, token-major,
    all layers, f32 or f16 (read as f32); ``k_new``/``v_new`` ``[B, kv_heads, 1, D]`` (the cache's
    dtype): the token's own key and value, which attend as key ``T``; ``window`` > 0 (a sliding-window
    layer): only keys ``T − window + 1 … T``.  Returns ``[B, kv_heads, group, D]`` (f32)."""
    return _reference(q, k_cache, v_cache, k_new, v_new, layer, window)


@decode_attention.register_fake
def _(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor,
      v_new: torch.Tensor, layer: int, window: int = 0) -> torch.Tensor:
    return torch.empty_like(q)


def _reference_int8(q: torch.Tensor, k_codes: torch.Tensor, k_scales: torch.Tensor, v_codes: torch.Tensor,
                    v_scales: torch.Tensor, k_new: torch.Tensor, k_new_scale: torch.Tensor, v_new: torch.Tensor,
                    v_new_scale: torch.Tensor, layer: int, window: int = 0,
                    lengths: torch.Tensor | None = None) -> torch.Tensor:
    def dequantized(codes, scales, new, new_scale):
        c = torch.cat([codes[:, layer].movedim(0, 2), new], dim=2)  # [B, H, T + 1, D]
        s = torch.cat([scales[:, layer].movedim(0, 2), new_scale], dim=2)  # [B, H, T + 1]
        return c.to(torch.float32) * s.unsqueeze(-1)

    kd = dequantized(k_codes, k_scales, k_new, k_new_scale)
    vd = dequantized(v_codes, v_scales, v_new, v_new_scale)
    return _attend(q, kd, vd, lengths, window)


@torch.library.custom_op(f"{OP_NAMESPACE}::decode_attention_int8", mutates_args=())
def decode_attention_int8(q: torch.Tensor, k_codes: torch.Tensor, k_scales: torch.Tensor, v_codes: torch.Tensor,
                          v_scales: torch.Tensor, k_new: torch.Tensor, k_new_scale: torch.Tensor,
                          v_new: torch.Tensor, v_new_scale: torch.Tensor, layer: int,
                          window: int = 0) -> torch.Tensor:
    """:func:`decode_attention` over an int8 cache: keys and values are int8 codes ``[T, layers, B,
    kv_heads, D]`` with one f32 scale per (token, layer, sequence, head) ``[T, layers, B, kv_heads]``
    (the new token's: ``[B, kv_heads, 1, D]`` codes, ``[B, kv_heads, 1]`` scales); attends to
    ``codes · scale``."""
    return _reference_int8(q, k_codes, k_scales, v_codes, v_scales, k_new, k_new_scale, v_new, v_new_scale, layer,
                           window)


@decode_attention_int8.register_fake
def _(q: torch.Tensor, k_codes: torch.Tensor, k_scales: torch.Tensor, v_codes: torch.Tensor, v_scales: torch.Tensor,
      k_new: torch.Tensor, k_new_scale: torch.Tensor, v_new: torch.Tensor, v_new_scale: torch.Tensor,
      layer: int, window: int = 0) -> torch.Tensor:
    return torch.empty_like(q)


def _reference_ragged(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor,
                      v_new: torch.Tensor, lengths: torch.Tensor, layer: int, window: int = 0) -> torch.Tensor:
    return _reference(q, k_cache, v_cache, k_new, v_new, layer, window, lengths)


@torch.library.custom_op(f"{OP_NAMESPACE}::decode_attention_ragged", mutates_args=())
def decode_attention_ragged(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor,
                            v_new: torch.Tensor, lengths: torch.Tensor, layer: int,
                            window: int = 0) -> torch.Tensor:
    """:func:`decode_attention` for ``B`` independent sequences of their own lengths: ``lengths`` ``[B]``
    (int64) holds how many cached tokens each sequence has (``0 … T``, ``T`` the cache view's rows);
    sequence ``b`` attends to cache rows ``0 … lengths[b] - 1`` (rows after them, another sequence's
    length, are not read) and to its new token, which is at position ``lengths[b]`` (``window`` > 0:
    only rows ``lengths[b] − window + 1`` and later)."""
    return _reference(q, k_cache, v_cache, k_new, v_new, layer, window, lengths)


@decode_attention_ragged.register_fake
def _(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
      lengths: torch.Tensor, layer: int, window: int = 0) -> torch.Tensor:
    return torch.empty_like(q)


def _reference_ragged_int8(q: torch.Tensor, k_codes: torch.Tensor, k_scales: torch.Tensor, v_codes: torch.Tensor,
                           v_scales: torch.Tensor, k_new: torch.Tensor, k_new_scale: torch.Tensor,
                           v_new: torch.Tensor, v_new_scale: torch.Tensor, lengths: torch.Tensor,
                           layer: int, window: int = 0) -> torch.Tensor:
    return _reference_int8(q, k_codes, k_scales, v_codes, v_scales, k_new, k_new_scale, v_new, v_new_scale, layer,
                           window, lengths)


@torch.library.custom_op(f"{OP_NAMESPACE}::decode_attention_ragged_int8", mutates_args=())
def decode_attention_ragged_int8(q: torch.Tensor, k_codes: torch.Tensor, k_scales: torch.Tensor,
                                 v_codes: torch.Tensor, v_scales: torch.Tensor, k_new: torch.Tensor,
                                 k_new_scale: torch.Tensor, v_new: torch.Tensor, v_new_scale: torch.Tensor,
                                 lengths: torch.Tensor, layer: int, window: int = 0) -> torch.Tensor:
    """:func:`decode_attention_int8` with ``lengths`` as in :func:`decode_attention_ragged`."""
    return _reference_ragged_int8(q, k_codes, k_scales, v_codes, v_scales, k_new, k_new_scale, v_new, v_new_scale,
                                  lengths, layer, window)


@decode_attention_ragged_int8.register_fake
def _(q: torch.Tensor, k_codes: torch.Tensor, k_scales: torch.Tensor, v_codes: torch.Tensor, v_scales: torch.Tensor,
      k_new: torch.Tensor, k_new_scale: torch.Tensor, v_new: torch.Tensor, v_new_scale: torch.Tensor,
      lengths: torch.Tensor, layer: int, window: int = 0) -> torch.Tensor:
    return torch.empty_like(q)


def _reference_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int = 0) -> torch.Tensor:
    s = q.shape[3]
    positions = torch.arange(s, device=q.device)
    later = (positions.view(1, -1) > positions.view(-1, 1)).to(torch.long)  # key after query
    if window:  # or `window` or more positions before it
        later = later + (positions.view(1, -1) <= positions.view(-1, 1) - window).to(torch.long)
    scores = torch.einsum("bhgsd,bhtd->bhgst", q, k) + _mask_table(q.device)[later]  # an additive mask (see llama.py)
    e = torch.exp(scores - scores.amax(-1, keepdim=True))
    return torch.einsum("bhgst,bhtd->bhgsd", e * (1.0 / e.sum(-1, keepdim=True)), v)


@torch.library.custom_op(f"{OP_NAMESPACE}::prefill_attention", mutates_args=())
def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int = 0) -> torch.Tensor:
    """Causal softmax attention of ``S`` new tokens over themselves (a prompt's first step: no cache).

    ``q`` ``[B, kv_heads, group, S, D]``: each token's query heads grouped by the KV head they read
    (already scaled by ``1/√D``); ``k``/``v`` ``[B, kv_heads, S, D]``.  Query ``s`` attends to keys
    ``0 … s`` (``window`` > 0: ``s − window + 1 … s``).  Returns ``[B, kv_heads, group, S, D]`` (f32)."""
    return _reference_prefill(q, k, v, window)


@prefill_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int = 0) -> torch.Tensor:
    return torch.empty_like(q)


def decompose_for(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` with every msd op replaced by its reference tensor ops (for targets msd has no
    kernel for); unchanged when it has none."""
    ops = {torch.ops.msd.decode_attention.default: _reference,
           torch.ops.msd.decode_attention_int8.default: _reference_int8,
           torch.ops.msd.decode_attention_ragged.default: _reference_ragged,
           torch.ops.msd.decode_attention_ragged_int8.default: _reference_ragged_int8,
           torch.ops.msd.prefill_attention.default: _reference_prefill}
    if not any(n.op == "call_function" and n.target in ops for n in program.graph.nodes):
        return program
    return program.run_decompositions(ops)


__all__ = ["decode_attention", "decode_attention_int8", "decode_attention_ragged", "decode_attention_ragged_int8",
           "decompose_for", "prefill_attention", "ragged_mask",
           "window_mask"]
