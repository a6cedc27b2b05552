"""``msd.compiler.models.llama``: the Llama architecture in plain torch, independent of the file format.

:class:`LlamaModel` takes its layers ready-made (``msd.compiler.models.gguf.load_gguf`` builds them from a
GGUF file: linear layers that dequantize their stored weights in ``forward``).  ``forward`` is the
stateless full-sequence model; :meth:`LlamaModel.step` the functional KV-cache step that prefill and
decode export (``kv_cache="float"``: f32 K/V; ``"int8"``: int8 codes with one f32 scale per head and
token, :func:`quantize_per_token`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from msd.compiler import ops as _ops  # noqa: F401 - registers torch.ops.msd.decode_attention
from msd.compiler.ops import mask_table, ragged_mask
from msd.compiler.ops import window_mask as ops_window_mask
from msd.errors import OptionError

# f32 K/V; f16 K/V (half the bytes, llama.cpp's default cache type); int8 codes with one f32 scale per
# (head, token)
KV_CACHE_FORMATS = ("float", "f16", "int8")
ACTIVATIONS = ("silu", "gelu_tanh")


def softmax_last(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, written as ``exp(s - max) · (1 / Σ exp)``: the same values as
    ``torch.softmax`` (to an ulp), but IREE 3.13 lowers ``torch.softmax`` (and a plain division by the
    sum) to a dispatch that divides element by element, several times slower on CPU than the
    reciprocal's multiply (``python benchmarks/softmax.py``: 72 / 64 / 9 ms for a [1, 3, 3, 512, 512]
    softmax on the 2-core Xeon of docs/benchmarks.md); in a 512-token SmolLM2 prefill that division
    was most of the time once the fused kernels were in (``benchmarks/llm.py``'s prefill profile)."""
    e = torch.exp(scores - scores.amax(-1, keepdim=True))
    return e * (1.0 / e.sum(-1, keepdim=True))


@dataclass
class LlamaConfig:
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    vocab: int
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    head_dim: int = 0
    context_length: int = 2048
    arch: str = "llama"  # the GGUF architecture it was read from
    qkv_bias: bool = False  # q, k, v projections add a bias (qwen2)
    qk_norm: bool = False  # q and k heads are RMS-normalized before RoPE (qwen3)
    # per rotated pair, a divisor of its frequency (Llama 3's RoPE scaling: GGUF's rope_freqs.weight)
    rope_freq_factors: tuple[float, ...] | None = None
    # Gemma 3's differences (all off for llama):
    embed_scale: float = 1.0  # the embedded rows are multiplied by it (gemma3: √hidden)
    activation: str = "silu"  # the MLP's gate activation: "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    post_norms: bool = False  # the attention's and the MLP's outputs are RMS-normalized before each residual add
    attn_scale: float = 0.0  # q is multiplied by it before q·k (0: 1/√head_dim)
    sliding_window: int = 0  # the layers in sliding_layers attend to the last sliding_window positions only
    sliding_layers: tuple[int, ...] = ()
    rope_base_local: float = 0.0  # the RoPE base of the sliding layers (0: rope_base)

    def __post_init__(self) -> None:
        if not self.head_dim:
            self.head_dim = self.hidden // self.n_heads
        if not self.attn_scale:
            self.attn_scale = 1.0 / math.sqrt(self.head_dim)
        if not self.rope_base_local:
            self.rope_base_local = self.rope_base
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.sliding_layers and self.sliding_window <= 0:
            raise ValueError("sliding_layers need a positive sliding_window")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")

    def window(self, layer: int) -> int:
        """How many positions (its own included) layer ``layer``'s queries attend to; 0: all before them."""
        return self.sliding_window if layer in self.sliding_layers else 0

    def layer_rope(self, layer: int) -> tuple[float, tuple[float, ...] | None]:
        """Layer ``layer``'s RoPE base and frequency divisors (a sliding layer's are never scaled)."""
        if layer in self.sliding_layers:
            return self.rope_base_local, None
        return self.rope_base, self.rope_freq_factors


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight.to(torch.float32))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    def kernel(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, norm(h))`` with ``h = x + residual`` (``x`` itself without one) through msd's row ops
        (``torch.ops.msd.rms_norm`` / ``add_rms_norm``: the same values as :meth:`forward`, one kernel
        dispatch once compiled, absorbed by the quantizer of the linear that reads it)."""
        if residual is None:
            return x, torch.ops.msd.rms_norm(x, self.weight, self.eps)
        return torch.ops.msd.add_rms_norm(x, residual, self.weight, self.eps)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float,
                 factors: tuple[float, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE's tables ``[..., S, head_dim]`` for :func:`apply_rope`: pair ``i`` (lanes ``2i, 2i+1``) is
    rotated by ``pos · base^(−2i/head_dim) / factors[i]`` (``factors``: Llama 3's frequency scaling, as
    llama.cpp applies ``rope_freqs``); ``cos`` holds that angle's cosine in both lanes of the pair,
    ``sin`` its sine negated in the first lane."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    if factors is not None:
        inv_freq = inv_freq / torch.tensor(factors, dtype=torch.float32)
    # per lane (both lanes of a pair share the angle), so that one elementwise op makes both tables
    ang = positions.to(torch.float32).unsqueeze(-1) * inv_freq.repeat_interleave(2)
    sign = (torch.arange(head_dim, device=positions.device) % 2 * 2 - 1).to(torch.float32)  # -1, 1, -1, ...
    return torch.cos(ang), torch.sin(ang) * sign


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """llama.cpp "normal" RoPE: rotates adjacent pairs ``(x[2i], x[2i+1])``.

    This is the pairing that applies to GGUF llama q/k weights: llama.cpp's converter permutes the
    rows of HF's ``q_proj``/``k_proj`` (which HF rotates as halves ``(x[i], x[i+d/2])``) back into
    the interleaved Meta layout.  ``x``: ``[B, H, S, D]``; ``cos``/``sin``: ``[B, 1, S, D]`` from
    :func:`rope_cos_sin`.  Written as ``x·cos + swap(x)·sin`` (``swap`` exchanges each pair's lanes):
    the same values as ``(x0·c − x1·s, x0·s + x1·c)`` to the bit, in ops IREE fuses into one
    elementwise dispatch (the pair-wise ``stack`` took four per projection, two of them copies).
    """
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return x * cos + swapped * sin


class Attention(nn.Module):
    """``bias``: the q, k, v projections' biases (``cfg.qkv_bias``); ``qk_norm``: the RMSNorms of each
    q and k head (``cfg.qk_norm``), applied before RoPE.  ``k`` and ``v`` None: ``q`` is one projection
    whose output rows are q's, then k's, then v's (``qkv_proj``: one matmul, one kernel dispatch, where
    three would read the same activation)."""

    def __init__(self, cfg: LlamaConfig, q: nn.Module, k: nn.Module, v: nn.Module, o: nn.Module,
                 bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                 qk_norm: tuple[nn.Module, nn.Module] | None = None, layer: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.window = cfg.window(layer)  # 0, or the positions a sliding-window layer's queries attend to
        if (k is None) != (v is None):
            raise ValueError("k and v are both projections, or both None (q then projects q, k and v)")
        if k is None:
            self.qkv_proj, self.o_proj = q, o
        else:
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = q, k, v, o
        if bias is not None:
            for name, b in zip(("q_bias", "k_bias", "v_bias"), bias):
                self.register_buffer(name, b.to(torch.float32))
        self.q_norm, self.k_norm = qk_norm if qk_norm is not None else (None, None)

    def _project(self, x: torch.Tensor, y: torch.Tensor, which: str, heads: int) -> torch.Tensor:
        b, s, _ = x.shape
        if f"{which}_bias" in self._buffers:
            y = y + self._buffers[f"{which}_bias"]
        y = y.view(b, s, heads, self.cfg.head_dim)
        norm = self.q_norm if which == "q" else self.k_norm if which == "k" else None
        return (norm(y) if norm is not None else y).transpose(1, 2)

    @property
    def _plain_qkv(self) -> bool:
        """A stacked q|k|v projection with no bias and no head norms, heads of a multiple of 4:
        ``torch.ops.msd.rope_qkv`` (one row kernel) takes its rows."""
        return ("qkv_proj" in self._modules and "q_bias" not in self._buffers and self.q_norm is None
                and self.cfg.head_dim % 4 == 0)

    def _qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, scaled: bool = False):
        """Projected heads ``[B, heads, S, D]`` with RoPE applied to q and k (``scaled``: and q multiplied
        by ``attn_scale``)."""
        c = self.cfg
        if "qkv_proj" in self._modules:
            nq, nkv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
            ys = self.qkv_proj(x).split([nq, nkv, nkv], dim=-1)
        else:
            ys = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q, k, v = (self._project(x, y, which, heads)
                   for y, which, heads in zip(ys, "qkv", (c.n_heads, c.n_kv_heads, c.n_kv_heads)))
        q = apply_rope(q, cos, sin)
        return q * c.attn_scale if scaled else q, apply_rope(k, cos, sin), v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        b, s, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        group = c.n_heads // c.n_kv_heads  # query head h reads kv head h // group
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        scores = torch.matmul(q * c.attn_scale, k.transpose(-1, -2))  # scale q: [S, d], not [S, T]
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
        if self.window:
            causal = causal & ~torch.ones(s, s, dtype=torch.bool, device=x.device).tril(-self.window)
        scores = scores.masked_fill(~causal, float("-inf"))
        out = torch.matmul(softmax_last(scores), v)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, c.n_heads * c.head_dim))

    def forward_cached(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, past: tuple[torch.Tensor, ...],
                       hidden: torch.Tensor | None, kv_cache: str, layer: int, fused: bool = False,
                       lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Attention of the ``S`` new tokens over layer ``layer``'s ``T`` past entries and themselves →
        ``(output, new entries)``.

        ``past`` is the whole cache, token-major, all layers: ``(k, v)`` f32 ``[T, n_layers, B,
        n_kv_heads, D]``, or for ``kv_cache="int8"`` ``(k_codes, k_scales, v_codes, v_scales)``, int8
        codes with one f32 scale per (layer, head, token) ``[T, n_layers, B, n_kv_heads]``; ``()`` when
        nothing precedes the new tokens.  ``fused``: a one-token step attends with
        ``torch.ops.msd.decode_attention`` (``_int8`` for the int8 cache; :mod:`msd.compiler.ops`: the
        same values, msd's decode-attention kernels once compiled) when the head dim is a multiple of
        16, and a first step (no past) with ``torch.ops.msd.prefill_attention``.  The new tokens' keys
        and values are returned in the same form with ``B, n_kv_heads, S``
        leading (int8: quantized symmetrically per token, ``amax/127``, round half to even); the caller
        appends them.  Attention
        reads ``codes · scale`` ("dequantize then attend": the reference msd's pass rewrites into int8
        ``q·Kᵀ`` and ``P·V``) over the ``T + S`` keys: past, then new.  ``hidden`` ``[S, T + S]`` is an
        additive float mask (−inf where key ``j`` lies after query ``s``, i.e. ``j > T + s``, and for a
        sliding-window layer where it lies ``window`` or more positions before it; None when ``S = 1``
        and every key is seen).  Grouped-query heads are attended as ``[B·n_kv_heads, group·S, ·]``: the query heads
        sharing a KV head stack along the rows.  ``lengths`` ``[B]`` (a one-token step of sequences of
        their own lengths, :meth:`LlamaModel.step`): sequence ``b`` reads its first ``lengths[b]`` past
        entries (``hidden`` then masks the others; fused: ``torch.ops.msd.decode_attention_ragged``)."""
        c = self.cfg
        b, s, _ = x.shape
        if fused and kv_cache != "int8" and self._plain_qkv:  # one row kernel: RoPE, q's scale, the cache's type
            q, kn, vn = torch.ops.msd.rope_qkv(self.qkv_proj(x), cos, sin, c.n_heads, c.n_kv_heads, c.attn_scale,
                                               "f16" if kv_cache == "f16" else "f32")
            new: tuple[torch.Tensor, ...] = (kn, vn)
            k, v = (kn, vn) if kv_cache == "float" else (kn.to(torch.float32), vn.to(torch.float32))
        else:
            q, k, v = self._qkv(x, cos, sin, scaled=True)  # q · attn_scale: [S, d] multiplies, not [S, T] divisions
            new, k, v = _entries(k, v, kv_cache)
        hkv, group, d = c.n_kv_heads, c.n_heads // c.n_kv_heads, c.head_dim
        qg = q.unflatten(1, (hkv, group))  # query head h = kv·group + j reads kv head h // group
        w = self.window
        if fused and past and isinstance(s, int) and s == 1 and d % 16 == 0:
            qs = qg.squeeze(3)
            if lengths is not None:
                op = (torch.ops.msd.decode_attention_ragged_int8 if kv_cache == "int8"
                      else torch.ops.msd.decode_attention_ragged)
                out = op(qs, *past, *new, lengths, layer, w)
            elif kv_cache != "int8":  # f32 or f16 cache and new entries
                out = torch.ops.msd.decode_attention(qs, past[0], past[1], new[0], new[1], layer, w)
            else:
                out = torch.ops.msd.decode_attention_int8(qs, *past, *new, layer, w)
            return self.o_proj(out.reshape(b, 1, c.n_heads * d)), new
        if fused and not past and d % 16 == 0:  # a prompt's first step: causal attention over itself
            kd, vd = (k, v) if kv_cache != "int8" else (new[0].to(torch.float32) * new[1].unsqueeze(-1),
                                                        new[2].to(torch.float32) * new[3].unsqueeze(-1))
            out = torch.ops.msd.prefill_attention(qg, kd, vd, w).flatten(1, 2)
            return self.o_proj(out.transpose(1, 2).reshape(b, s, c.n_heads * d)), new
        # this layer's past entries [T, B, H, ...] -> [B, H, T, ...], then the new ones after them
        full = [torch.cat([p[:, layer].movedim(0, 2), n], dim=2) for p, n in zip(past, new)] if past else list(new)
        if kv_cache != "int8":
            kd, vd = (t.to(torch.float32) for t in full)
        else:
            kc, ks, vc, vs = full
            kd = kc.to(torch.float32) * ks.unsqueeze(-1)
            vd = vc.to(torch.float32) * vs.unsqueeze(-1)
        scores = torch.einsum("bhgsd,bhtd->bhgst", qg, kd)
        if hidden is not None:
            scores = scores + hidden
        out = torch.einsum("bhgst,bhtd->bhgsd", softmax_last(scores), vd).flatten(1, 2)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, c.n_heads * d)), new


def window_mask(positions: torch.Tensor, t: int, window: int, hidden: torch.Tensor | None,
                lengths: torch.Tensor | None) -> torch.Tensor:
    """``hidden`` (the step's additive mask, or None: nothing masked) with −inf added on the keys that
    lie ``window`` or more positions before their query (a sliding-window layer's).  Keys ``0 … T + S −
    1``; the queries at ``positions`` ``[B, S]``.  With ``lengths`` (one-token steps of sequences of their
    own lengths) sequence ``b``'s query is at ``lengths[b]`` and its new key (index ``T``) is never early."""
    if lengths is not None:  # [B, ·, ·, S = 1, T + 1], as the ragged mask
        mask = ops_window_mask(lengths, t, window).view(-1, 1, 1, 1, t + 1)
    else:
        keys = torch.arange(t + positions.shape[1], device=positions.device)
        early = (keys.view(1, -1) <= positions[0].view(-1, 1) - window).to(torch.long)  # [S, T + S]
        mask = mask_table(positions.device)[early]
    return mask if hidden is None else hidden + mask


def _entries(k: torch.Tensor, v: torch.Tensor, kv_cache: str) -> tuple[tuple[torch.Tensor, ...], torch.Tensor,
                                                                        torch.Tensor]:
    """The new tokens' cache entries in ``kv_cache``'s form, and the keys and values attention reads (f16:
    rounded to f16 like the stored ones)."""
    if kv_cache == "float":
        return (k, v), k, v
    if kv_cache == "f16":
        new = (k.to(torch.float16), v.to(torch.float16))
        return new, new[0].to(torch.float32), new[1].to(torch.float32)
    (kq, kqs), (vq, vqs) = quantize_per_token(k), quantize_per_token(v)
    return (kq, kqs, vq, vqs), k, v


def quantize_per_token(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per vector along the last dim: ``(codes int8, scale f32 [...])`` with
    ``t ≈ codes · scale``; an all-zero vector gets zero codes."""
    scale = t.abs().amax(-1).clamp_min(1e-30) / 127.0
    return torch.round(t / scale.unsqueeze(-1)).clamp(-127, 127).to(torch.int8), scale


class MLP(nn.Module):
    """``down(act(gate(x)) · up(x))``: SwiGLU (``activation="silu"``) or GeGLU with the tanh-approximated
    GELU (``"gelu_tanh"``, Gemma's).  ``up`` None: ``gate`` is one projection whose output rows are
    gate's, then up's (``gate_up_proj``: one matmul, one kernel dispatch)."""

    def __init__(self, gate: nn.Module, up: nn.Module | None, down: nn.Module, activation: str = "silu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if up is None:
            self.gate_up_proj, self.down_proj = gate, down
        else:
            self.gate_proj, self.up_proj, self.down_proj = gate, up, down
        self.activation = activation

    def forward(self, x: torch.Tensor, kernels: bool = False) -> torch.Tensor:
        """``kernels`` (and a stacked gate|up): ``act(gate) · up`` through ``torch.ops.msd.glu`` (the same
        values; one row kernel, absorbed by the down projection's quantizer once compiled)."""
        if "gate_up_proj" in self._modules and kernels:
            return self.down_proj(torch.ops.msd.glu(self.gate_up_proj(x), self.activation))
        if "gate_up_proj" in self._modules:
            g, u = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            g, u = self.gate_proj(x), self.up_proj(x)
        a = F.silu(g) if self.activation == "silu" else F.gelu(g, approximate="tanh")
        return self.down_proj(a * u)


class Block(nn.Module):
    """Pre-norm residual block; ``post_norms`` (Gemma's): the attention's and the MLP's outputs are
    normalized again before each residual add."""

    def __init__(self, cfg: LlamaConfig, attn_norm: RMSNorm, attn: Attention, ffn_norm: RMSNorm, mlp: MLP,
                 post_norms: tuple[RMSNorm, RMSNorm] | None = None) -> None:
        super().__init__()
        self.attn_norm, self.attn, self.ffn_norm, self.mlp = attn_norm, attn, ffn_norm, mlp
        self.post_attn_norm, self.post_ffn_norm = post_norms if post_norms is not None else (None, None)

    def _residual(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        x = x + (self.post_attn_norm(h) if self.post_attn_norm is not None else h)
        h = self.mlp(self.ffn_norm(x))
        return x + (self.post_ffn_norm(h) if self.post_ffn_norm is not None else h)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return self._residual(x, self.attn(self.attn_norm(x), cos, sin))

    def forward_cached(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, past: tuple[torch.Tensor, ...],
                       hidden: torch.Tensor | None, kv_cache: str, layer: int, fused: bool = False,
                       lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        h, new = self.attn.forward_cached(self.attn_norm(x), cos, sin, past, hidden, kv_cache, layer, fused, lengths)
        return self._residual(x, h), new

    def forward_kernels(self, x: torch.Tensor, pending: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                        past: tuple[torch.Tensor, ...], hidden: torch.Tensor | None, kv_cache: str, layer: int,
                        lengths: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """:meth:`forward_cached` (fused) with its norms, residual adds and MLP activation in msd's row ops:
        ``pending`` is the previous block's output not yet added to ``x`` (None for the first block);
        returns ``(x, h, new)`` with this block's output ``h`` likewise left for the next norm to add
        (``torch.ops.msd.add_rms_norm``).  The same arithmetic as :meth:`forward_cached`."""
        x, xn = self.attn_norm.kernel(x, pending)
        h, new = self.attn.forward_cached(xn, cos, sin, past, hidden, kv_cache, layer, True, lengths)
        if self.post_attn_norm is not None:
            h = self.post_attn_norm.kernel(h)[1]
        x, xn = self.ffn_norm.kernel(x, h)
        h = self.mlp(xn, kernels=True)
        if self.post_ffn_norm is not None:
            h = self.post_ffn_norm.kernel(h)[1]
        return x, h, new


class LlamaModel(nn.Module):
    """Stateless full-sequence Llama: ``forward(tokens [B, S], positions [B, S] | None) → logits
    [B, S, vocab]`` (f32).  ``positions`` defaults to ``0..S-1``.  :meth:`step` is the functional
    KV-cache path (caches passed in and returned) used for prefill/decode.

    ``embed`` maps token ids ``[B, S]`` to f32 ``[B, S, hidden]``; ``lm_head`` is a linear layer
    ``hidden → vocab``; ``tied``: the head is the embedding's own table (the loader shares them)."""

    def __init__(self, cfg: LlamaConfig, embed: nn.Module, blocks: list[Block], norm: RMSNorm,
                 lm_head: nn.Module, tied: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = embed
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm
        self.lm_head = lm_head  # the embedding table itself when tied
        self.tied = tied

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        b, s = tokens.shape
        if positions is None:
            positions = torch.arange(s, device=tokens.device).unsqueeze(0).expand(b, s)
        tables = self._rope_tables(positions)
        x = self._embed(tokens)
        for i, blk in enumerate(self.blocks):
            x = blk(x, *tables[self.cfg.layer_rope(i)])
        return self.lm_head(self.norm(x))

    @property
    def row_kernels(self) -> bool:
        """Whether msd's row kernels take this model's rows (lengths of multiples of 4)."""
        return self.cfg.hidden % 4 == 0 and self.cfg.ffn % 4 == 0

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        return x * self.cfg.embed_scale if self.cfg.embed_scale != 1.0 else x

    def _rope_tables(self, positions: torch.Tensor) -> dict[tuple, tuple[torch.Tensor, torch.Tensor]]:
        """RoPE's ``(cos, sin)`` ``[B, 1, S, D]`` per (base, divisors) the layers use (one, or Gemma's two)."""
        c = self.cfg
        out = {}
        for rope in dict.fromkeys(c.layer_rope(i) for i in range(len(self.blocks))):
            cos, sin = rope_cos_sin(positions, c.head_dim, *rope)
            out[rope] = (cos.unsqueeze(1), sin.unsqueeze(1))
        return out

    def cache_entries(self, batch: int = 1, kv_cache: str = "float") -> list[tuple[tuple[int, ...], torch.dtype]]:
        """Shape and dtype of one token's entry in each cache tensor (the cache is token-major: a
        tensor is ``[T, *shape]``): ``kv_cache="float"`` → keys and values, f32 ``[n_layers, batch,
        n_kv_heads, head_dim]``; ``"f16"`` → the same in f16; ``"int8"`` → ``k_codes, k_scales, v_codes,
        v_scales``, codes int8 of that shape and scales f32 ``[n_layers, batch, n_kv_heads]``."""
        c = self.cfg
        shape = (c.n_layers, batch, c.n_kv_heads, c.head_dim)
        if kv_cache in ("float", "f16"):
            return [(shape, torch.float32 if kv_cache == "float" else torch.float16)] * 2
        if kv_cache == "int8":
            return [(shape, torch.int8), (shape[:-1], torch.float32)] * 2
        raise OptionError(f"kv_cache={kv_cache!r} is not supported (choose one of {', '.join(KV_CACHE_FORMATS)})")

    def empty_cache(self, batch: int = 1, kv_cache: str = "float", length: int = 0) -> tuple[torch.Tensor, ...]:
        """Zero cache tensors of ``length`` tokens (:meth:`cache_entries`; 0: an empty cache)."""
        return tuple(torch.zeros((length, *shape), dtype=dtype) for shape, dtype in self.cache_entries(batch, kv_cache))

    def step(self, tokens: torch.Tensor, *past: torch.Tensor, kv_cache: str = "float",
             last_only: bool = True, kernels: bool = False,
             lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """KV-cache forward: ``tokens [B, S]`` at positions ``T .. T+S-1`` after the ``T`` tokens held in
        ``past`` → ``(logits, *new)``.  ``past`` is the cache in ``kv_cache`` format, token-major (one
        ``[T, *entry]`` tensor per :meth:`cache_entries` entry), or nothing at all for ``T = 0``
        (prefill); ``new`` is the S new tokens' entries in the same form ``[S, *entry]``, for the caller
        to append.  ``logits`` is ``[B, vocab]`` for the last token (``last_only``) or ``[B, S, vocab]``.
        Attention reads only the ``T + S`` real entries, so a step costs what the current length asks,
        whatever the capacity of the caller's cache.  Nothing is mutated and no tensor value reaches
        Python control flow, so it exports with a dynamic ``S`` (prefill) or ``S = 1`` (decode) and a
        dynamic ``T``.  ``kernels``: a one-token step attends through
        ``torch.ops.msd.decode_attention`` (:meth:`Attention.forward_cached`), and (:attr:`row_kernels`) the
        norms, residual adds and MLP activations go through msd's row ops (:meth:`Block.forward_kernels`):
        the same values, msd's kernels once compiled.

        ``lengths`` (int64 ``[B]``, a one-token step only): the ``B`` sequences are independent and each
        has its own number of past tokens, ``lengths[b] <= T``: sequence ``b``'s token is at position
        ``lengths[b]`` and attends to its first ``lengths[b]`` past entries (the rows after them belong
        to longer sequences, or to none); its new entries go to row ``lengths[b]`` of its cache."""
        entries = self.cache_entries(tokens.shape[0], kv_cache)
        if past and len(past) != len(entries):
            raise OptionError(f"kv_cache={kv_cache!r} takes {len(entries)} cache tensors, got {len(past)}")
        b, s = tokens.shape
        t = past[0].shape[0] if past else 0
        positions = (torch.arange(s, device=tokens.device) + t).unsqueeze(0).expand(b, s)  # [B, S]
        hidden = None
        if lengths is not None:
            if not (past and isinstance(s, int) and s == 1):
                raise OptionError("lengths: sequences of their own lengths take one-token steps after a past")
            if tuple(lengths.shape) != (b,):
                raise OptionError(f"lengths must be [{b}] (one per sequence), got {list(lengths.shape)}")
            positions = lengths.view(b, 1)
            hidden = ragged_mask(lengths, t).view(b, 1, 1, 1, t + 1)  # [B, ·, ·, S = 1, T + 1]
        elif not (isinstance(s, int) and s == 1):  # one new token sees every key: no mask
            # additive mask [S, T + S]: -inf on keys after each query (ops.mask_table: a lookup, not a select)
            keys = torch.arange(t + s, device=tokens.device)
            later = (keys.view(1, -1) > positions[0].view(-1, 1)).to(torch.long)
            hidden = mask_table(tokens.device)[later]
        tables = self._rope_tables(positions)
        windows = dict.fromkeys(self.cfg.window(i) for i in range(len(self.blocks)))
        masks = {w: window_mask(positions, t, w, hidden, lengths) if w else hidden for w in windows}
        x = self._embed(tokens)
        new: list[list[torch.Tensor]] = [[] for _ in entries]
        rows = kernels and self.row_kernels
        pending = None  # (row kernels) the last block's output, added to x by the next norm
        for i, blk in enumerate(self.blocks):
            args = (*tables[self.cfg.layer_rope(i)], past, masks[self.cfg.window(i)], kv_cache, i)
            if rows:
                x, pending, layer = blk.forward_kernels(x, pending, *args, lengths)
            else:
                x, layer = blk.forward_cached(x, *args, kernels, lengths)
            for acc, e in zip(new, layer):
                acc.append(e)
        if last_only:
            x = x[:, -1, :]
            pending = pending[:, -1, :] if pending is not None else None
        xn = self.norm.kernel(x, pending)[1] if rows else self.norm(x)
        # per layer [B, H, S, ...] -> [n_layers, B, H, S, ...] -> token-major [S, n_layers, B, H, ...]
        return (self.lm_head(xn), *(torch.stack(es).movedim(3, 0) for es in new))

    @torch.no_grad()
    def generate_cached(self, tokens: list[int] | torch.Tensor, max_new_tokens: int,
                        eos: int | set[int] | None = None, kv_cache: str = "float") -> list[int]:
        """Greedy decoding with the KV cache (:meth:`step`): one prefill, then one token per step,
        each appending its entries to the cache."""
        ids = torch.as_tensor(tokens, dtype=torch.long).reshape(1, -1)
        stop = {eos} if isinstance(eos, int) else set(eos or ())
        logits, *cache = self.step(ids, kv_cache=kv_cache)
        out = []
        for i in range(max_new_tokens):
            nxt = int(logits[0].argmax())
            out.append(nxt)
            if nxt in stop or i == max_new_tokens - 1:
                break
            logits, *new = self.step(torch.tensor([[nxt]]), *cache, kv_cache=kv_cache)
            cache = [torch.cat([c, n]) for c, n in zip(cache, new)]
        return out

    @torch.no_grad()
    def generate(self, tokens: list[int] | torch.Tensor, max_new_tokens: int, eos: int | None = None) -> list[int]:
        """Greedy decoding, recomputing the whole sequence each step (no KV cache)."""
        ids = torch.as_tensor(tokens, dtype=torch.long).reshape(1, -1)
        out: list[int] = []
        for _ in range(max_new_tokens):
            nxt = int(self(ids)[0, -1].argmax())
            out.append(nxt)
            if eos is not None and nxt == eos:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        return out


__all__ = ["ACTIVATIONS", "KV_CACHE_FORMATS", "Attention", "Block", "LlamaConfig", "LlamaModel", "MLP", "RMSNorm",
           "apply_rope", "quantize_per_token", "rope_cos_sin", "window_mask"]
