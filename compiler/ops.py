"""``msd.compiler.ops``: torch custom ops that msd compiles into kernels of its own.

``torch.ops.msd.decode_attention`` — one decode step's attention over a token-major KV cache;
``torch.ops.msd.decode_attention_int8`` — the same over an int8 cache (codes and per-token scales);
``torch.ops.msd.decode_attention_ragged`` (and ``_ragged_int8``) — the same for a batch of sequences
that each hold their own number of cached tokens (``lengths``);
``torch.ops.msd.prefill_attention`` — a prompt's causal attention over itself.  Eager torch runs the
reference below; ``torch.export`` keeps the op whole, and msd's ``--msd-attention-kernels`` pass
(:mod:`msd.passes.attention_kernels`) compiles them into kernels of msd's own for CPU targets.

``torch.ops.msd.rms_norm``, ``torch.ops.msd.add_rms_norm`` (a residual add, then the RMSNorm of the
sum), ``torch.ops.msd.glu`` (the gated MLP's ``act(gate) · up``) and ``torch.ops.msd.rope_qkv`` (a
stacked q|k|v projection's rows split into heads, RoPE applied, q scaled, k and v in the cache's type):
row ops that ``--msd-row-kernels`` (:mod:`msd.passes.row_kernels`) makes one kernel dispatch each (the
first three are then absorbed by the activation quantizer of the linear that reads them).

For other targets the compiler driver decomposes every op into the reference's tensor ops
(:func:`decompose_for`) before import.
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


def mask_table(device: torch.device) -> torch.Tensor:
    """An additive mask's two values ``[0, −inf]``: a mask is this table indexed by 0/1 (a gather rather
    than a bool select, so that msd's matmul pass sees a float operand for the attention matmuls — a
    bool mask reads to it as an i1 "integer weight")."""
    return torch.cat([torch.zeros(1, device=device), torch.full((1,), float("-inf"), device=device)])


def window_mask(ends: torch.Tensor, t: int, window: int) -> torch.Tensor:
    """Additive mask ``[B, T + 1]`` of a one-token step of a sliding-window layer: −inf on cached key
    ``j`` when it lies ``window`` or more positions before sequence ``b``'s query at ``ends[b]``
    (``j <= ends[b] − window``), 0 on the others and on the new token's key ``T``."""
    keys = torch.arange(t, device=ends.device).view(1, -1)
    early = torch.cat([(keys <= ends.view(-1, 1) - window).to(torch.long),
                       torch.zeros(ends.shape[0], 1, dtype=torch.long, device=ends.device)], dim=1)
    return mask_table(ends.device)[early]


def ragged_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """Additive mask ``[B, T + 1]``: −inf on cached key ``j`` when ``j >= lengths[b]`` (a row past
    sequence ``b``'s end), 0 on the others and on the new token's key ``T`` (a lookup in
    :func:`mask_table`)."""
    keys = torch.arange(t, device=lengths.device).view(1, -1)
    new = torch.zeros(lengths.shape[0], 1, dtype=torch.long, device=lengths.device)  # the new token's key
    past_end = torch.cat([(keys >= lengths.view(-1, 1)).to(torch.long), new], dim=1)  # (no i1 `and`: IREE)
    return mask_table(lengths.device)[past_end]


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
    scores = torch.einsum("bhgsd,bhtd->bhgst", q, k) + mask_table(q.device)[later]  # an additive mask
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


def _reference_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


@torch.library.custom_op(f"{OP_NAMESPACE}::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim: ``x · rsqrt(mean(x²) + eps) · weight`` (f32; ``weight`` ``[K]``)."""
    return _reference_rms_norm(x, weight, eps)


@rms_norm.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty_like(x)


def _reference_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                            eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    h = x + residual
    return h, _reference_rms_norm(h, weight, eps)


@torch.library.custom_op(f"{OP_NAMESPACE}::add_rms_norm", mutates_args=())
def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A residual add and the RMSNorm of its sum: ``(h, rms_norm(h, weight, eps))`` with ``h = x +
    residual``."""
    return _reference_add_rms_norm(x, residual, weight, eps)


@add_rms_norm.register_fake
def _(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), torch.empty_like(x)


def _reference_glu(gate_up: torch.Tensor, activation: str) -> torch.Tensor:
    g, u = gate_up.chunk(2, dim=-1)
    a = torch.nn.functional.silu(g) if activation == "silu" else torch.nn.functional.gelu(g, approximate="tanh")
    return a * u


@torch.library.custom_op(f"{OP_NAMESPACE}::glu", mutates_args=())
def glu(gate_up: torch.Tensor, activation: str) -> torch.Tensor:
    """The gated MLP's activation: ``act(gate) · up`` of ``gate_up`` ``[..., 2F]`` (gate, then up);
    ``activation`` "silu" (SwiGLU) or "gelu_tanh" (GeGLU).  Returns ``[..., F]``."""
    return _reference_glu(gate_up, activation)


@glu.register_fake
def _(gate_up: torch.Tensor, activation: str) -> torch.Tensor:
    return gate_up.new_empty((*gate_up.shape[:-1], gate_up.shape[-1] // 2))


def _reference_rope_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int,
                        scale: float, kv_dtype: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, s, n = qkv.shape
    d = n // (heads + 2 * kv_heads)
    q, k, v = qkv.view(b, s, heads + 2 * kv_heads, d).transpose(1, 2).split([heads, kv_heads, kv_heads], dim=1)

    def rope(x: torch.Tensor) -> torch.Tensor:  # adjacent pairs (llama.cpp's "normal" RoPE), as llama.apply_rope
        return x * cos + x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2) * sin

    dtype = torch.float16 if kv_dtype == "f16" else torch.float32
    return rope(q) * scale, rope(k).to(dtype), v.to(dtype, copy=True)  # (outputs may not alias inputs)


@torch.library.custom_op(f"{OP_NAMESPACE}::rope_qkv", mutates_args=())
def rope_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int, scale: float,
             kv_dtype: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A stacked q|k|v projection's rows ``[B, S, (heads + 2·kv_heads)·D]`` as attention reads them:
    ``q`` ``[B, heads, S, D]`` rotated (RoPE tables ``cos``/``sin`` ``[B, 1, S, D]``, adjacent pairs) and
    multiplied by ``scale``; ``k`` rotated and ``v``, ``[B, kv_heads, S, D]``, in the KV cache's
    ``kv_dtype`` ("f32" or "f16")."""
    return _reference_rope_qkv(qkv, cos, sin, heads, kv_heads, scale, kv_dtype)


@rope_qkv.register_fake
def _(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int, scale: float,
      kv_dtype: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, s, n = qkv.shape
    d = n // (heads + 2 * kv_heads)
    dtype = torch.float16 if kv_dtype == "f16" else torch.float32
    return (qkv.new_empty((b, heads, s, d)), qkv.new_empty((b, kv_heads, s, d), dtype=dtype),
            qkv.new_empty((b, kv_heads, s, d), dtype=dtype))


def decompose_for(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` with every msd op replaced by its reference tensor ops (for targets msd has no
    kernel for); unchanged when it has none."""
    ops = {torch.ops.msd.decode_attention.default: _reference,
           torch.ops.msd.decode_attention_int8.default: _reference_int8,
           torch.ops.msd.decode_attention_ragged.default: _reference_ragged,
           torch.ops.msd.decode_attention_ragged_int8.default: _reference_ragged_int8,
           torch.ops.msd.prefill_attention.default: _reference_prefill,
           torch.ops.msd.rms_norm.default: _reference_rms_norm,
           torch.ops.msd.add_rms_norm.default: _reference_add_rms_norm,
           torch.ops.msd.glu.default: _reference_glu,
           torch.ops.msd.rope_qkv.default: _reference_rope_qkv}
    if not any(n.op == "call_function" and n.target in ops for n in program.graph.nodes):
        return program
    return program.run_decompositions(ops)


__all__ = ["add_rms_norm", "decode_attention", "decode_attention_int8", "decode_attention_ragged",
           "decode_attention_ragged_int8", "decompose_for", "glu", "mask_table", "prefill_attention", "ragged_mask",
           "rms_norm", "rope_qkv", "window_mask"]
