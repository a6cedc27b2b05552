"""``msd.compiler.models.gguf``: a GGUF front end for Llama-architecture models.

``load_gguf(path)`` reads a GGUF file with :class:`msd.compiler.models.gguf_file.GGUFFile` (a strict
parser: a truncated, corrupted or inconsistent file raises :class:`msd.errors.GGUFError` naming the file
and the problem), reads its :class:`~msd.compiler.models.llama.LlamaConfig` and builds a plain-torch
:class:`~msd.compiler.models.llama.LlamaModel` from it, keeping the quantized tensors as the file stores
them (:class:`GGUFLinear`, :class:`GGUFEmbedding`):

- ``Q8_0``: blocks of 32 int8 codes + one f16 scale ``d``: ``w = d·q``;
- ``Q4_0``: blocks of 32 4-bit codes + f16 ``d``: ``w = d·(q − 8)``;
- ``Q4_1``: blocks of 32 4-bit codes + f16 ``d`` + f16 min ``m``: ``w = d·q + m``;
- ``Q5_0`` / ``Q5_1``: as Q4_0 / Q4_1 with 5-bit codes (the fifth bits in a 32-bit plane per block):
  ``w = d·(q − 16)`` / ``w = d·q + m``;
- ``Q4_K`` / ``Q5_K``: super-blocks of 256 = 8 sub-blocks of 32 with 6-bit integer scales ``sc`` and
  mins ``mn`` under f16 ``d`` / ``dmin``: ``w = (d·sc)·q − dmin·mn``;
- ``Q6_K``: super-blocks of 256 = 16 sub-blocks of 16, int8 scales under f16 ``d``, 6-bit codes:
  ``w = (d·sc)·(q − 32)``;
- ``F32`` / ``F16`` / ``BF16``: plain float tensors.

Every block format becomes the pass's group-wise form, exactly (the same f32 operations as ggml's
dequantization, bit for bit): unsigned codes ``q`` ``[N, K]``, a scale per (row, group) and either a
float offset per (row, group) or an integer zero (8, 16, 32) subtracted from the codes.  The K-quants'
integer sub-scales are multiplied by ``d`` at load time (one f32 per sub-block, as ggml does).

4-bit codes are unpacked at load time (GGUF order: within a block of 32, the low nibbles of the
16 bytes hold elements 0..15 and the high nibbles elements 16..31) into uint8 ``[N, K]`` buffers, one
code per byte.  Scales and mins become f32 ``[N, K/32]`` buffers.  Every ``forward`` dequantizes in
plain torch (``codes.view(N, K/32, 32) * d[..., None] (+ m[..., None])``) then calls ``F.linear``, so
the eager model is the reference semantics and the compiler sees group-wise (group 32) weights.

``tokenizer_from_gguf(path)`` builds a ``tokenizers`` BPE tokenizer from the vocabulary and merges
stored in the file (``tokenizer.ggml.model == "gpt2"``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msd.compiler.quant.quantize import unpack_int4
from msd.errors import GGUFError, UnsupportedGGUFError

from .gguf_file import GGUFFile, GGUFTensorInfo, open_gguf
from .llama import MLP, Attention, Block, LlamaConfig, LlamaModel, RMSNorm

T = TypeVar("T")

if TYPE_CHECKING:
    from tokenizers import Tokenizer

BLOCK = 32  # elements per Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 block
SUPER = 256  # elements per K-quant super-block
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")
# bytes per block (of BLOCK elements, or SUPER for the K-quants)
_BLOCK_BYTES = {"Q8_0": 2 + BLOCK, "Q4_0": 2 + BLOCK // 2, "Q4_1": 4 + BLOCK // 2, "Q5_0": 2 + 4 + BLOCK // 2,
                "Q5_1": 4 + 4 + BLOCK // 2, "Q4_K": 4 + 12 + SUPER // 2, "Q5_K": 4 + 12 + SUPER // 8 + SUPER // 2,
                "Q6_K": SUPER // 2 + SUPER // 4 + SUPER // 16 + 2}
_BLOCK_ELEMENTS = {q: SUPER if q.endswith("_K") else BLOCK for q in _BLOCK_BYTES}
# the integer subtracted from the codes before the scale (the others have a float offset, or none)
ZERO = {"Q4_0": 8, "Q5_0": 16, "Q6_K": 32}
# codes wider than 4 bits, one per byte: masked to their width in the dequantization (a no-op on the
# values) so that msd's pass sees their range, as it sees a nibble's, and centres the integer dot on
# the middle of it (16 / 32, the formats' zero) rather than on 128 — which would multiply the activation
# slices' rounding error by |q − 128| (measured on Gemma 3's Q5_0 projections: slices=1 10x, slices=2
# 50x the error of the centred codes)
CODE_BITS = {"Q5_0": 5, "Q5_1": 5, "Q5_K": 5, "Q6_K": 6}
_FLOAT_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
FLOAT_TYPES = tuple(_FLOAT_BYTES)
# GGUF architectures read (one LlamaConfig each: metadata under "<arch>.*"): qwen2 adds q/k/v biases,
# qwen3 RMS-normalizes each q and k head before RoPE; gemma3 does too, and scales the embedding by
# √hidden, gates its MLP with GELU (tanh), normalizes the attention's and the MLP's outputs again, and
# lets five of every six layers attend to a sliding window with a RoPE base of their own (10000, as
# llama.cpp hard-codes it); all three rotate halves of a head ("NEOX" RoPE), which msd's llama
# (adjacent pairs) reads after permuting the q and k rows at load time.  Mistral's GGUF files are
# written as "llama".
ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3")
NEOX_ROPE = ("qwen2", "qwen3", "gemma3")
GEMMA3_SWA_PATTERN = 6  # layers i with i % 6 < 5 attend to a window (llama.cpp's set_swa_pattern(6))
GEMMA3_SWA_ROPE_BASE = 10000.0

# ----------------------------------------------------------------------------------------------
# Quantized tensors


@dataclass
class GGUFTensor:
    """One weight as stored in the file, unpacked to torch: ``codes`` int8 (Q8_0) or uint8 (the others)
    ``[N, K]``, ``scale`` f32 ``[N, K/g]`` (``g`` 32, or 16 for Q6_K), ``offset`` f32 ``[N, K/g]``
    (Q4_1, Q5_1, Q4_K, Q5_K: ``w = scale·q + offset``); for the 4-bit types also ``packed`` uint8
    ``[N, K/2]``, two codes per byte (per 32-block: elements 0..15 in the low nibbles, 16..31 in the
    high ones — the file's order for Q4_0/Q4_1, re-packed so for Q4_K); for F32/F16 only ``weight``."""

    name: str
    qtype: str
    shape: tuple[int, ...]  # torch order: (N, K) for matrices
    codes: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    offset: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    packed: torch.Tensor | None = None


def unpack_blocks(name: str, qtype: str, raw: np.ndarray, shape: tuple[int, ...]) -> GGUFTensor:
    """Split the raw bytes ``raw`` (uint8, ``[rows, bytes per row]``) of tensor ``name`` of GGML type
    ``qtype`` into codes/scales/mins; ``shape`` is the logical torch shape ``(..., K)``.  ``raw`` must
    hold exactly the bytes ``shape`` needs in that type (else :class:`GGUFError`)."""
    shape = tuple(int(d) for d in shape)
    if not shape or any(d < 1 for d in shape):
        raise GGUFError(f"tensor {name!r}: shape {shape} is not a non-empty tuple of positive sizes")
    if qtype not in _FLOAT_BYTES and qtype not in _BLOCK_BYTES:
        raise UnsupportedGGUFError(
            f"tensor {name!r} has GGML type {qtype}, which msd's GGUF front end does not support"
            f" (supported: {', '.join(SUPPORTED_TYPES)})"
        )
    k = shape[-1]
    n = math.prod(shape[:-1])
    if qtype in _FLOAT_BYTES:
        need = n * k * _FLOAT_BYTES[qtype]
    else:
        per = _BLOCK_ELEMENTS[qtype]
        if k % per:
            raise GGUFError(f"tensor {name!r} ({qtype}): row length {k} is not a multiple of {per}")
        need = n * (k // per) * _BLOCK_BYTES[qtype]
    raw = np.asarray(raw)
    if raw.nbytes != need:
        raise GGUFError(f"tensor {name!r} ({qtype}, shape {shape}) needs {need} bytes, got {raw.nbytes}")
    raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if qtype == "BF16":  # numpy has no bfloat16: the bytes as int16, reinterpreted by torch
        arr = torch.from_numpy(raw.view(np.int16).reshape(shape).copy()).view(torch.bfloat16)
        return GGUFTensor(name, qtype, shape, weight=arr)
    if qtype in _FLOAT_BYTES:
        dtype = np.float32 if qtype == "F32" else np.float16
        arr = raw.view(dtype).reshape(shape)
        return GGUFTensor(name, qtype, shape, weight=torch.from_numpy(arr.copy()))
    if qtype not in ("Q8_0", "Q4_0", "Q4_1"):
        return _unpack_wide(name, qtype, raw.reshape(n, k // _BLOCK_ELEMENTS[qtype], _BLOCK_BYTES[qtype]), n, k)
    nb = k // BLOCK
    blocks = raw.reshape(n, nb, _BLOCK_BYTES[qtype])
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    offset = packed_codes = None
    if qtype == "Q8_0":
        codes = blocks[..., 2:].copy().view(np.int8).reshape(n, k)
    else:
        start = 4 if qtype == "Q4_1" else 2
        packed = blocks[..., start:]  # [n, nb, 16]
        # low nibbles: elements 0..15 of the block, high nibbles: elements 16..31
        codes = np.concatenate([packed & 0x0F, packed >> 4], axis=-1).astype(np.uint8).reshape(n, k)
        packed_codes = torch.from_numpy(np.ascontiguousarray(packed).reshape(n, k // 2))
        if qtype == "Q4_1":
            offset = torch.from_numpy(blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32))
    return GGUFTensor(name, qtype, (n, k), codes=torch.from_numpy(np.ascontiguousarray(codes)),
                      scale=torch.from_numpy(d), offset=offset, packed=packed_codes)


def _f16(b: np.ndarray) -> np.ndarray:
    """Little-endian f16 from the last axis' two bytes → f32."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _nibble_halves(codes: np.ndarray) -> np.ndarray:
    """4-bit codes ``[n, K]`` packed two per byte in msd's "halves" order (per 32 elements: 0..15 in
    the low nibbles, 16..31 in the high ones)."""
    n, k = codes.shape
    c = codes.reshape(n, k // BLOCK, 2, BLOCK // 2)
    return np.ascontiguousarray((c[:, :, 0] | (c[:, :, 1] << 4)).astype(np.uint8).reshape(n, k // 2))


def _k_scales_mins(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and mins packed in a K-quant super-block's 12 bytes ``s`` ``[..., 12]``:
    sub-blocks 0..3 in the low 6 bits of bytes 0..3 (scales) and 4..7 (mins); 4..7 from the nibbles of
    bytes 8..11 with their top 2 bits in the top bits of bytes 0..7."""
    s = s.astype(np.uint8)
    sc = np.empty((*s.shape[:-1], 8), np.uint8)
    mn = np.empty_like(sc)
    sc[..., :4] = s[..., 0:4] & 63
    mn[..., :4] = s[..., 4:8] & 63
    sc[..., 4:] = (s[..., 8:12] & 0x0F) | ((s[..., 0:4] >> 6) << 4)
    mn[..., 4:] = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return sc, mn


def _unpack_wide(name: str, qtype: str, blocks: np.ndarray, n: int, k: int) -> GGUFTensor:
    """Q5_0, Q5_1, Q4_K, Q5_K, Q6_K blocks ``[n, blocks per row, bytes]`` → codes (uint8, one per byte),
    scale and offset per group, as the module docstring describes."""
    nb = blocks.shape[1]
    packed = offset = None
    if qtype in ("Q5_0", "Q5_1"):
        start = 2 if qtype == "Q5_0" else 4
        scale = _f16(blocks[..., 0:2])
        qh = np.ascontiguousarray(blocks[..., start:start + 4]).view("<u4")[..., 0]  # [n, nb]
        qs = blocks[..., start + 4:]  # [n, nb, 16]
        high = (qh[..., None] >> np.arange(32, dtype=np.uint32)) & 1  # the fifth bit of elements 0..31
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1) | (high.astype(np.uint8) << 4)
        if qtype == "Q5_1":
            offset = _f16(blocks[..., 2:4])
    elif qtype in ("Q4_K", "Q5_K"):
        d, dmin = _f16(blocks[..., 0:2]), _f16(blocks[..., 2:4])
        sc, mn = _k_scales_mins(blocks[..., 4:16])
        scale = d[..., None] * sc.astype(np.float32)  # [n, nb, 8]: (d·sc) as ggml rounds it
        offset = -(dmin[..., None] * mn.astype(np.float32))
        qs = blocks[..., -SUPER // 2:].reshape(n, nb, 4, 32)  # 4 chunks of 64 elements, 32 bytes each
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # [n, nb, 4, 64]: low nibbles, then high
        if qtype == "Q5_K":
            qh = blocks[..., 16:16 + SUPER // 8]  # [n, nb, 32]: bit 2c of byte l → element 64c + l, 2c+1 → +32
            bits = (qh[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1  # [n, nb, 8, 32]
            codes = codes | (bits.reshape(n, nb, 4, 64) << 4)
        else:
            packed = True
        scale, offset = scale.reshape(n, nb * 8), offset.reshape(n, nb * 8)
    else:  # Q6_K
        ql = blocks[..., 0:128].reshape(n, nb, 2, 64)
        qh = blocks[..., 128:192].reshape(n, nb, 2, 32)
        sc = np.ascontiguousarray(blocks[..., 192:208]).view(np.int8)
        d = _f16(blocks[..., 208:210])
        low = np.concatenate([ql & 0x0F, ql >> 4], axis=-1)  # [n, nb, 2, 128]: per half, elements 0..127
        high = np.concatenate([(qh >> s) & 3 for s in (0, 2, 4, 6)], axis=-1)  # elements 0..31, 32..63, ...
        codes = low | (high << 4)
        scale = (d[..., None] * sc.astype(np.float32)).reshape(n, nb * 16)
    codes = np.ascontiguousarray(codes.astype(np.uint8).reshape(n, k))
    if packed:
        packed = torch.from_numpy(_nibble_halves(codes))
    return GGUFTensor(name, qtype, (n, k), codes=torch.from_numpy(codes),
                      scale=torch.from_numpy(np.ascontiguousarray(scale, np.float32).reshape(n, -1)),
                      offset=None if offset is None else torch.from_numpy(np.ascontiguousarray(offset, np.float32)
                                                                           .reshape(n, -1)),
                      packed=packed)


def dequantize_codes(qtype: str, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """Plain-torch dequantization of ``codes [..., K]`` with per-group ``scale``/``offset`` ``[..., K/g]``
    → f32 ``[..., K]`` (bit-identical to ``gguf.quants.dequantize``)."""
    lead, k = codes.shape[:-1], codes.shape[-1]
    g = k // scale.shape[-1]
    if qtype in CODE_BITS:
        codes = codes & ((1 << CODE_BITS[qtype]) - 1)
    q = codes.reshape(*lead, k // g, g).to(torch.float32)
    if qtype in ZERO:
        q = q - float(ZERO[qtype])
    w = q * scale.unsqueeze(-1)
    if offset is not None:
        w = w + offset.unsqueeze(-1)
    return w.reshape(*lead, k)


class GGUFLinear(nn.Module):
    """Bias-free linear layer whose weight is a GGUF tensor kept in its file format.

    Buffers: ``codes`` (int8 ``[N, K]``, Q8_0; uint8, the 5- and 6-bit types) or ``packed``
    (Q4_0/Q4_1/Q4_K: uint8 ``[N, K/2]``, two 4-bit codes per byte, unpacked in ``forward`` — so the
    codes' range [0, 15] is visible to msd's pass, which then centres them exactly by 8), ``scale``
    (f32 ``[N, K/g]``), ``offset`` (f32 ``[N, K/g]``: Q4_1, Q5_1, Q4_K, Q5_K); or ``weight``
    (``[N, K]``, f32/f16) for float tensors.
    ``forward`` = dequantize + ``F.linear``: traced (``torch.export``, ``torch.compile``), the
    dequantization is in the graph for msd's pass to find; run eagerly, the float weight is made once
    and kept (until a buffer changes), so an eager reference does not dequantize on every token.
    """

    def __init__(self, t: GGUFTensor) -> None:
        super().__init__()
        if len(t.shape) != 2:
            raise ValueError(f"tensor {t.name!r} is not a matrix: shape {t.shape}")
        self.out_features, self.in_features = t.shape
        self.qtype = t.qtype
        self.tensor_name = t.name
        if t.weight is not None:
            self.register_buffer("weight", t.weight)
        else:
            if t.packed is not None:
                self.register_buffer("packed", t.packed)
            else:
                self.register_buffer("codes", t.codes)
            self.register_buffer("scale", t.scale)
            if t.offset is not None:
                self.register_buffer("offset", t.offset)

    def __getattr__(self, name: str):
        if name == "codes" and "packed" in self._buffers:  # the 4-bit codes, one per byte [N, K]
            return unpack_int4(self._buffers["packed"], "halves")
        return super().__getattr__(name)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """The codes of the rows ``index`` (any shape) → ``[*index.shape, K]``, unpacking only those."""
        if "packed" not in self._buffers:
            return self.codes[index]
        picked = self._buffers["packed"][index.reshape(-1)]
        return unpack_int4(picked, "halves").reshape(*index.shape, self.in_features)

    def dequantized_weight(self) -> torch.Tensor:
        if self.qtype in FLOAT_TYPES:
            return self.weight.to(torch.float32)
        return dequantize_codes(self.qtype, self.codes, self.scale, getattr(self, "offset", None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return F.linear(x, self.dequantized_weight().to(x.dtype))
        return F.linear(x, self._eager_weight().to(x.dtype))

    def _eager_weight(self) -> torch.Tensor:
        key = tuple((name, t.data_ptr(), t._version) for name, t in self._buffers.items() if t is not None)
        cached = self.__dict__.get("_float_weight")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, self.dequantized_weight())
            self.__dict__["_float_weight"] = cached
        return cached[1]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.qtype}"


class GGUFEmbedding(nn.Module):
    """Token embedding from a (possibly quantized) ``[vocab, hidden]`` table: gathers the rows of the
    codes/scales/mins and dequantizes only those rows in plain torch."""

    def __init__(self, table: GGUFLinear) -> None:
        super().__init__()
        self.table = table  # shared with a tied output head

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = self.table
        if t.qtype in FLOAT_TYPES:
            return t.weight[tokens].to(torch.float32)
        offset = t.offset[tokens] if "offset" in t._buffers else None
        return dequantize_codes(t.qtype, t.rows(tokens), t.scale[tokens], offset)


# ----------------------------------------------------------------------------------------------
# Loading


def _reader(path: str | Path | GGUFFile) -> GGUFFile:
    """``path`` parsed and checked by :class:`GGUFFile` (a parsed file is returned as is)."""
    return open_gguf(path)


@contextmanager
def _opened(path: str | Path | GGUFFile) -> Iterator[GGUFFile]:
    """:func:`_reader`, closing the file afterwards when it was opened here."""
    f = open_gguf(path)
    try:
        yield f
    finally:
        if f is not path:
            f.close()


def _positive(f: GGUFFile, key: str, value: int) -> int:
    if value < 1:
        raise GGUFError(f"{f.path}: metadata key {key!r} is {value}, expected a positive integer")
    return value


def _finite(f: GGUFFile, key: str, value: float, low: float, strict: bool) -> float:
    if not math.isfinite(value) or value < low or (strict and value == low):
        bound = f"> {low}" if strict else f">= {low}"
        raise GGUFError(f"{f.path}: metadata key {key!r} is {value}, expected a finite number {bound}")
    return value


def _reads_file(read: Callable[[GGUFFile], T]) -> Callable[[str | Path | GGUFFile], T]:
    """``read`` taking a path or an open :class:`GGUFFile` (a file opened here is closed again)."""

    @functools.wraps(read)
    def wrapper(path_or_file: str | Path | GGUFFile) -> T:
        with _opened(path_or_file) as f:
            return read(f)

    return wrapper


@_reads_file
def read_config(f: GGUFFile) -> LlamaConfig:
    """The :class:`LlamaConfig` of a llama, qwen2 or qwen3 GGUF file, every value type-checked and
    sanity-checked (positive counts, heads dividing the hidden size, ``vocab_size`` equal to the rows of
    ``token_embd.weight``).  Metadata keys are ``<architecture>.*``."""
    p = f.path
    arch = f.get_str("general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedGGUFError(f"{p}: GGUF architecture {arch!r} is not supported (supported: "
                                   f"{', '.join(ARCHITECTURES)})")
    n_layers = _positive(f, f"{arch}.block_count", f.get_int(f"{arch}.block_count"))
    hidden = _positive(f, f"{arch}.embedding_length", f.get_int(f"{arch}.embedding_length"))
    n_heads = _positive(f, f"{arch}.attention.head_count", f.get_int(f"{arch}.attention.head_count"))
    n_kv_heads = _positive(f, f"{arch}.attention.head_count_kv", f.get_int(f"{arch}.attention.head_count_kv", n_heads))
    if n_heads % n_kv_heads:
        raise GGUFError(f"{p}: {arch}.attention.head_count={n_heads} is not a multiple of"
                        f" {arch}.attention.head_count_kv={n_kv_heads}")
    if f"{arch}.attention.key_length" in f.fields:
        head_dim = _positive(f, f"{arch}.attention.key_length", f.get_int(f"{arch}.attention.key_length"))
    elif hidden % n_heads:
        raise GGUFError(f"{p}: {arch}.embedding_length={hidden} is not divisible by"
                        f" {arch}.attention.head_count={n_heads}")
    else:
        head_dim = hidden // n_heads
    if head_dim % 2:
        raise GGUFError(f"{p}: the head dimension {head_dim} is odd; RoPE rotates pairs of elements")
    value_dim = f.get_int(f"{arch}.attention.value_length", head_dim)
    if value_dim != head_dim:
        raise UnsupportedGGUFError(f"{p}: value heads of {value_dim} elements differ from key heads of {head_dim};"
                                   f" msd's llama reads equal key and value head sizes only")
    rope_dim = f.get_int(f"{arch}.rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        raise UnsupportedGGUFError(
            f"{p}: partial RoPE (rope.dimension_count={rope_dim}, head dim {head_dim}) is not supported")
    scaling = f.get_str(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", "", "linear"):
        raise UnsupportedGGUFError(f"{p}: RoPE scaling {scaling!r} is not supported (only 'linear')")
    factors = _rope_freq_factors(f, head_dim)
    if scaling == "linear":  # positions divided by the factor: every frequency divided by it
        k = f"{arch}.rope.scaling.factor"
        linear = _finite(f, k, f.get_float(k, 1.0), 0.0, True)
        if linear != 1.0:
            factors = tuple(x * linear for x in (factors or (1.0,) * (head_dim // 2)))
    embd = f.tensor("token_embd.weight")
    if embd is None:
        raise GGUFError(f"{p}: the file has no tensor 'token_embd.weight'")
    if len(embd.shape) != 2:
        raise GGUFError(f"{p}: tensor 'token_embd.weight' has dims {list(embd.shape)}, expected 2 dims"
                        f" [embedding_length, vocab_size]")
    vocab = _positive(f, f"{arch}.vocab_size", f.get_int(f"{arch}.vocab_size", embd.shape[1]))
    if vocab != embd.shape[1]:
        raise GGUFError(f"{p}: {arch}.vocab_size={vocab} but tensor 'token_embd.weight' has {embd.shape[1]} rows")
    return LlamaConfig(
        n_layers=n_layers,
        hidden=hidden,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        ffn=_positive(f, f"{arch}.feed_forward_length", f.get_int(f"{arch}.feed_forward_length")),
        vocab=vocab,
        rope_base=_finite(f, f"{arch}.rope.freq_base", f.get_float(f"{arch}.rope.freq_base", 10000.0), 0.0, True),
        rms_eps=_finite(f, f"{arch}.attention.layer_norm_rms_epsilon",
                        f.get_float(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5), 0.0, False),
        head_dim=head_dim,
        context_length=_positive(f, f"{arch}.context_length", f.get_int(f"{arch}.context_length", 2048)),
        arch=arch, qkv_bias=arch == "qwen2", qk_norm=arch in ("qwen3", "gemma3"),
        rope_freq_factors=factors,
        **(_gemma3(f, n_layers, hidden, n_heads, head_dim) if arch == "gemma3" else {}),
    )


def _gemma3(f: GGUFFile, n_layers: int, hidden: int, n_heads: int, head_dim: int) -> dict[str, object]:
    """Gemma 3's differences from llama, as llama.cpp reads them: the embedding scaled by √hidden, GeGLU,
    post-norms, the query scale (``1/√(hidden/heads)`` for the 62-layer 27B, ``1/√head_dim`` otherwise),
    and a sliding window (``gemma3.attention.sliding_window``) on five of every six layers, which rotate
    with RoPE base 10000 and no scaling.  Logit soft-capping (Gemma 2's) is refused."""
    for key in ("gemma3.final_logit_softcapping", "gemma3.attn_logit_softcapping"):
        if key in f.fields and f.get_float(key) != 0.0:
            raise UnsupportedGGUFError(f"{f.path}: {key}={f.get_float(key)} (logit soft-capping) is not supported")
    window = f.get_int("gemma3.attention.sliding_window", 0)
    if window < 0:
        raise GGUFError(f"{f.path}: metadata key 'gemma3.attention.sliding_window' is {window}, expected >= 0")
    layers = tuple(i for i in range(n_layers) if i % GEMMA3_SWA_PATTERN < GEMMA3_SWA_PATTERN - 1) if window else ()
    return dict(embed_scale=math.sqrt(hidden), activation="gelu_tanh", post_norms=True,
                attn_scale=1.0 / math.sqrt(hidden / n_heads if n_layers == 62 else head_dim),
                sliding_window=window, sliding_layers=layers, rope_base_local=GEMMA3_SWA_ROPE_BASE)


def _rope_freq_factors(f: GGUFFile, head_dim: int) -> tuple[float, ...] | None:
    """``rope_freqs.weight`` (Llama 3.1+: one frequency divisor per rotated pair, F32), if the file has it."""
    t = f.tensor("rope_freqs.weight")
    if t is None:
        return None
    if t.ggml_type != "F32" or t.torch_shape != (head_dim // 2,):
        raise GGUFError(f"{f.path}: tensor 'rope_freqs.weight' is {t.ggml_type} {list(t.shape)}, expected F32"
                        f" [{head_dim // 2}] (a divisor per rotated pair)")
    factors = np.ascontiguousarray(t.data()).reshape(-1).view(np.float32)
    if not np.all(np.isfinite(factors) & (factors > 0)):
        raise GGUFError(f"{f.path}: tensor 'rope_freqs.weight' holds factors that are not finite and positive")
    return tuple(float(x) for x in factors)


def llama_tensor_shapes(cfg: LlamaConfig, tied: bool) -> dict[str, tuple[int, ...]]:
    """Every tensor a llama of ``cfg`` needs → its torch shape (rows first); ``output.weight`` only when
    not ``tied``."""
    h, q, kv = cfg.hidden, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (cfg.vocab, h)}
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        shapes |= {b + "attn_norm.weight": (h,), b + "attn_q.weight": (q, h), b + "attn_k.weight": (kv, h),
                   b + "attn_v.weight": (kv, h), b + "attn_output.weight": (h, q), b + "ffn_norm.weight": (h,),
                   b + "ffn_gate.weight": (cfg.ffn, h), b + "ffn_up.weight": (cfg.ffn, h),
                   b + "ffn_down.weight": (h, cfg.ffn)}
        if cfg.qkv_bias:
            shapes |= {b + "attn_q.bias": (q,), b + "attn_k.bias": (kv,), b + "attn_v.bias": (kv,)}
        if cfg.qk_norm:
            shapes |= {b + "attn_q_norm.weight": (cfg.head_dim,), b + "attn_k_norm.weight": (cfg.head_dim,)}
        if cfg.post_norms:
            shapes |= {b + "post_attention_norm.weight": (h,), b + "post_ffw_norm.weight": (h,)}
    shapes["output_norm.weight"] = (h,)
    if not tied:
        shapes["output.weight"] = (cfg.vocab, h)
    return shapes


def check_llama_tensors(reader: str | Path | GGUFFile, cfg: LlamaConfig) -> dict[str, GGUFTensorInfo]:
    """Check that every tensor ``cfg`` needs is present, of a supported type (norms: F32/F16) and of the
    shape the config implies → those tensors by name.  Raises :class:`GGUFError` naming the tensor and
    the expected and found dims (GGUF order: row length first)."""
    f = _reader(reader)
    p = f.path
    if cfg.n_layers > len(f.tensors):  # checked up front: the shape table below grows with n_layers
        raise GGUFError(f"{p}: llama.block_count={cfg.n_layers} but the file holds only {len(f.tensors)} tensors")
    out: dict[str, GGUFTensorInfo] = {}
    for name, shape in llama_tensor_shapes(cfg, tied=f.tensor("output.weight") is None).items():
        t = f.tensor(name)
        if t is None:
            raise GGUFError(f"{p}: the file has no tensor {name!r} (needed by a llama with"
                            f" llama.block_count={cfg.n_layers})")
        if t.ggml_type not in SUPPORTED_TYPES:
            raise UnsupportedGGUFError(
                f"{p}: tensor {name!r} has GGML type {t.ggml_type}, which msd's GGUF front end does not support"
                f" (supported: {', '.join(SUPPORTED_TYPES)})")
        if len(shape) == 1 and t.ggml_type not in _FLOAT_BYTES:
            raise UnsupportedGGUFError(f"{p}: norm tensor {name!r} has GGML type {t.ggml_type}; msd reads norm"
                                       f" weights in F32 or F16 only")
        if t.torch_shape != shape:
            raise GGUFError(f"{p}: tensor {name!r} has dims {list(t.shape)}, expected {list(reversed(shape))}"
                            f" for this config (GGUF order, row length first)")
        out[name] = t
    # A tensor the llama graph would not read changes the model it belongs to (attention biases of a
    # Qwen-style file, Llama 3.1's rope_freqs factors): ignoring it would be a silently wrong model.
    # (rope_freqs.weight, checked and read by read_config, is the config's rope_freq_factors.)
    unused = [t.name for t in f.tensors if t.name not in out and t.name != "rope_freqs.weight"]
    if unused:
        shown = ", ".join(repr(n) for n in unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
        raise UnsupportedGGUFError(f"{p}: the file holds tensor(s) msd's llama does not use: {shown}; running"
                                   " without them would compute another model, so msd refuses the file")
    return out


def read_tensors(reader: str | Path | GGUFFile, names: list[str] | None = None) -> dict[str, GGUFTensor]:
    """The tensors ``names`` (default: all) of the file, unpacked (GGUF lists dims innermost first; torch
    order is reversed).  A tensor of a type msd does not read raises :class:`UnsupportedGGUFError`."""
    with _opened(reader) as f:
        return _read_tensors(f, [t.name for t in f.tensors] if names is None else names)


def _read_tensors(f: GGUFFile, names: list[str]) -> dict[str, GGUFTensor]:
    out = {}
    for name in names:
        t = f.tensor(name)
        if t is None:
            raise GGUFError(f"{f.path}: the file has no tensor {name!r}")
        if t.ggml_type not in SUPPORTED_TYPES:
            raise UnsupportedGGUFError(
                f"{f.path}: tensor {t.name!r} has GGML type {t.ggml_type}, which msd's GGUF front end does not"
                f" support (supported: {', '.join(SUPPORTED_TYPES)})")
        out[t.name] = unpack_blocks(t.name, t.ggml_type, t.data(), t.torch_shape)
    return out


def stack_rows(ts: list[GGUFTensor]) -> GGUFTensor:
    """The tensors ``ts`` (one type, one row length) as one, their rows one after the other."""
    def cat(field: str) -> torch.Tensor | None:
        parts = [getattr(t, field) for t in ts]
        return None if parts[0] is None else torch.cat(parts)

    n = sum(t.shape[0] for t in ts)
    return GGUFTensor("+".join(t.name for t in ts), ts[0].qtype, (n, ts[0].shape[1]), codes=cat("codes"),
                      scale=cat("scale"), offset=cat("offset"), weight=cat("weight"), packed=cat("packed"))


def _rows_to_pairs(t: GGUFTensor, head_dim: int) -> GGUFTensor:
    """``t`` with the rows (or, 1-D, the elements) of each head reordered from halves to pairs: row
    ``i`` of a head's first half and row ``i`` of its second half become rows ``2i`` and ``2i + 1``, so
    that rotating adjacent pairs (msd's RoPE) rotates what NEOX RoPE rotates.  q and k get the same
    order, so their dot products — the attention — are unchanged."""
    half = head_dim // 2
    n = t.shape[0]
    order = torch.arange(n).view(n // head_dim, 2, half).transpose(1, 2).reshape(n)

    def rows(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x[order].contiguous()

    return GGUFTensor(t.name, t.qtype, t.shape, codes=rows(t.codes), scale=rows(t.scale), offset=rows(t.offset),
                      weight=rows(t.weight), packed=rows(t.packed))


def load_gguf(path: str | Path | GGUFFile, fuse: bool = True) -> LlamaModel:
    """Build a :class:`LlamaModel` from a GGUF file (tensors kept in their stored formats).  The file,
    its config and the shapes of the tensors it needs are checked first: a bad file raises
    :class:`GGUFError` (or :class:`UnsupportedGGUFError`) naming the file and the problem.

    ``fuse``: a layer's q, k and v projections become one linear (rows stacked) when the file stores
    them in one type, and its gate and up projections too — the same values, from one matmul that reads
    the activation once (a kernel dispatch per decode token and layer instead of three, and two)."""
    with _opened(path) as f:
        cfg = read_config(f)
        tensors = _read_tensors(f, list(check_llama_tensors(f, cfg)))

    if cfg.arch in NEOX_ROPE:  # q/k rows (and their biases, head norms) into msd's pair order
        for name in tensors:
            if name.split(".", 2)[-1] in ("attn_q.weight", "attn_k.weight", "attn_q.bias", "attn_k.bias",
                                          "attn_q_norm.weight", "attn_k_norm.weight"):
                tensors[name] = _rows_to_pairs(tensors[name], cfg.head_dim)

    def lin(name: str) -> GGUFLinear:
        return GGUFLinear(tensors[name])

    def fused(*names: str) -> GGUFLinear | None:
        """One linear of the tensors ``names``' rows stacked, when they share a type (else None)."""
        if not fuse or len({tensors[n].qtype for n in names}) != 1:
            return None
        return GGUFLinear(stack_rows([tensors[n] for n in names]))

    def norm(name: str) -> RMSNorm:
        return RMSNorm(tensors[name].weight, cfg.rms_eps)

    embed = lin("token_embd.weight")
    blocks = []
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        bias = tuple(tensors[p + f"attn_{x}.bias"].weight for x in "qkv") if cfg.qkv_bias else None
        qk_norm = (norm(p + "attn_q_norm.weight"), norm(p + "attn_k_norm.weight")) if cfg.qk_norm else None
        qkv = fused(p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight")
        q, k, v = (qkv, None, None) if qkv is not None else (lin(p + f"attn_{x}.weight") for x in "qkv")
        attn = Attention(cfg, q, k, v, lin(p + "attn_output.weight"), bias, qk_norm, layer=i)
        gate_up = fused(p + "ffn_gate.weight", p + "ffn_up.weight")
        gate, up = (gate_up, None) if gate_up is not None else (lin(p + "ffn_gate.weight"), lin(p + "ffn_up.weight"))
        mlp = MLP(gate, up, lin(p + "ffn_down.weight"), cfg.activation)
        post = (norm(p + "post_attention_norm.weight"), norm(p + "post_ffw_norm.weight")) if cfg.post_norms else None
        blocks.append(Block(cfg, norm(p + "attn_norm.weight"), attn, norm(p + "ffn_norm.weight"), mlp, post))
    lm_head = lin("output.weight") if "output.weight" in tensors else embed
    model = LlamaModel(cfg, GGUFEmbedding(embed), blocks, norm("output_norm.weight"), lm_head, tied=lm_head is embed)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Tokenizer


TOKEN_TYPES = range(0, 7)  # llama.cpp: undefined, normal, unknown, control, user defined, unused, byte


def _special_ids(f: GGUFFile, n_tokens: int) -> dict[str, int]:
    """Every ``tokenizer.ggml.*_token_id`` of the file, checked to be an integer id in ``[0, n_tokens)``."""
    out = {}
    for key in f.fields:
        if key.startswith("tokenizer.ggml.") and key.endswith("_token_id"):
            v = f.get_int(key)
            if not 0 <= v < n_tokens:
                raise GGUFError(f"{f.path}: metadata key {key!r} is {v}, outside the vocabulary of {n_tokens} tokens")
            out[key] = v
    return out


# llama.cpp's pre-tokenizer regexes (tokenizer.ggml.pre) for byte-level BPE vocabularies
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")  # digits one by one
SPACE = "\u2581"  # SentencePiece's visible space "▁"


@_reads_file
def tokenizer_from_gguf(f: GGUFFile) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` for the vocabulary stored in the file:

    - ``tokenizer.ggml.model = "gpt2"``: byte-level BPE from ``tokenizer.ggml.tokens`` and
      ``tokenizer.ggml.merges``, split first by the pre-tokenizer ``tokenizer.ggml.pre`` names (gpt2,
      smollm/starcoder, llama3, qwen2);
    - ``"llama"`` (SentencePiece-style: Llama 1/2, Mistral, Gemma): llama.cpp's SPM tokenizer — spaces as
      ``▁`` (and one before the text when ``tokenizer.ggml.add_space_prefix``), then adjacent pieces merged
      highest ``tokenizer.ggml.scores`` first, unknown characters as ``<0xXX>`` byte tokens — as a BPE
      whose merge ranks follow the scores.

    ``tokenizer.ggml.add_bos_token`` (default: true for "llama", false for "gpt2", as llama.cpp) puts the
    BOS token first when encoding with ``add_special_tokens=True``.

    Control tokens (type 3) are added as special tokens so chat markers like ``<|im_start|>`` map to their
    single ids; user-defined tokens (type 4) are matched the same way but decode as text.  Array types,
    token types, special-token ids and every merge's tokens are checked (:class:`GGUFError` otherwise)."""
    from tokenizers import AddedToken, processors

    p = f.path
    kind = f.get_str("tokenizer.ggml.model")
    if kind not in ("gpt2", "llama"):
        raise UnsupportedGGUFError(f"{p}: tokenizer.ggml.model={kind!r} is not supported (only 'gpt2' byte-level"
                                   " BPE and 'llama' SentencePiece)")
    tokens = f.get_array("tokenizer.ggml.tokens", "str")
    if not tokens:
        raise GGUFError(f"{p}: tokenizer.ggml.tokens is empty")
    types = f.get_array("tokenizer.ggml.token_type", "int", [1] * len(tokens))
    if len(types) != len(tokens):
        raise GGUFError(f"{p}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    bad = next((i for i, ty in enumerate(types) if ty not in TOKEN_TYPES), None)
    if bad is not None:
        raise GGUFError(f"{p}: tokenizer.ggml.token_type[{bad}] is {types[bad]}, not a llama token type (0..6)")
    special_ids = _special_ids(f, len(tokens))
    try:
        tok = _byte_level_bpe(f, tokens) if kind == "gpt2" else _sentencepiece(f, tokens, types, special_ids)
        if _adds_bos(f):
            bos_id = special_ids["tokenizer.ggml.bos_token_id"]
            bos = tokens[bos_id]
            tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                               special_tokens=[(bos, bos_id)])
        # both matched in the raw text before the model, as llama.cpp does; a decode that skips special
        # tokens drops the control ones only (user-defined ones are text: Gemma's runs of spaces, "\n")
        pairs = list(zip(tokens, types))
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in pairs if ty == 3])
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in pairs if ty == 4])
    except GGUFError:
        raise
    except Exception as e:  # the tokenizers library's own refusal, e.g. of a token it cannot add
        raise GGUFError(f"{p}: the tokenizer stored in the file could not be built: {e}") from e
    return tok


def _byte_level_bpe(f: GGUFFile, tokens: list[str]) -> Tokenizer:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    p = f.path
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for i, m in enumerate(f.get_array("tokenizer.ggml.merges", "str")):
        a, sep, b = m.partition(" ")
        if not sep or not a or not b:
            raise GGUFError(f"{p}: tokenizer.ggml.merges[{i}] = {m!r} is not two tokens separated by a space")
        for t in (a, b, a + b):
            if t not in vocab:
                raise GGUFError(f"{p}: tokenizer.ggml.merges[{i}] = {m!r} uses {t!r}, which is not in"
                                f" tokenizer.ggml.tokens")
        merges.append((a, b))
    pre = f.get_str("tokenizer.ggml.pre", "default")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder", "refact"):  # llama.cpp: split every digit, then the GPT-2 regex
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("default", "gpt2", "gpt-2"):
        tok.pre_tokenizer = byte_level
    elif pre in ("llama3", "llama-bpe", "llama-v3", "qwen2"):
        split = _QWEN2_SPLIT if pre == "qwen2" else _LLAMA3_SPLIT
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        raise UnsupportedGGUFError(f"{p}: tokenizer.ggml.pre={pre!r} is not supported")
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece(f: GGUFFile, tokens: list[str], types: list[int], special_ids: dict[str, int]) -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, normalizers

    p = f.path
    scores = f.get_array("tokenizer.ggml.scores", "float")
    if len(scores) != len(tokens):
        raise GGUFError(f"{p}: tokenizer.ggml.scores has {len(scores)} entries for {len(tokens)} tokens")
    score = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(score)):
        raise GGUFError(f"{p}: tokenizer.ggml.scores holds values that are not finite")
    vocab = {t: i for i, t in enumerate(tokens)}
    # llama.cpp merges the adjacent pair whose joined text is the token of highest score (the leftmost
    # pair on a tie): every split of every token into two tokens is a merge, ranked by the joined
    # token's score (then its id, then the left part's, for a total order)
    rows = [(i, vocab[t[:j]], t[:j], t[j:]) for i, t in enumerate(tokens)
            for j in range(1, len(t)) if t[:j] in vocab and t[j:] in vocab]
    joined = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    left = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
    order = np.lexsort((left, joined, -score[joined])) if rows else []
    merges = [(rows[k][2], rows[k][3]) for k in order]
    unk = special_ids.get("tokenizer.ggml.unknown_token_id")
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    fallback = all(t in vocab for t in byte_tokens)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=tokens[unk] if unk is not None else None,
                               byte_fallback=fallback, fuse_unk=True))
    prefix = f.get_bool("tokenizer.ggml.add_space_prefix", True)
    steps = [normalizers.Prepend(SPACE)] if prefix else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", SPACE)])
    decode = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence([*decode, decoders.Strip(" ", 1, 0)] if prefix else decode)
    return tok


def _adds_bos(f: GGUFFile) -> bool:
    """Whether encoding puts the BOS token first: ``tokenizer.ggml.add_bos_token``, by default true for
    SentencePiece vocabularies and false for byte-level BPE (llama.cpp's defaults), and a BOS id given."""
    default = f.get_str("tokenizer.ggml.model", "") == "llama"
    return f.get_bool("tokenizer.ggml.add_bos_token", default) and "tokenizer.ggml.bos_token_id" in f.fields


def chat_prompt(user: str, system: str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face") -> str:
    """ChatML text as in SmolLM2's chat template (``<|im_start|>role\\n...<|im_end|>\\n``)."""
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            f"<|im_start|>assistant\n")


_SLOT = "\x00msd-user-text\x00"  # stands for the user's text while a template renders
# Gemma's turns, for a gemma3 file without a template (its BOS comes from the tokenizer)
GEMMA_TURNS = "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n"


def chat_template(path_or_file: str | Path | GGUFFile, marker: str) -> str:
    """The chat prompt for one user turn, with ``marker`` where the user's text goes: the file's
    ``tokenizer.chat_template`` (Jinja, rendered in a sandbox with ``messages=[{"role": "user", ...}]``,
    ``add_generation_prompt=True`` and the file's BOS/EOS tokens), or when the file has none, Gemma's
    turns for a gemma3 file and SmolLM2's ChatML (:func:`chat_prompt`) for the others.  When the
    tokenizer puts BOS first itself (``tokenizer.ggml.add_bos_token``) the template's ``bos_token`` is
    empty, so that the prompt holds one BOS.  A template that does not render, or that does not put the
    text in once as it is, raises :class:`GGUFError` (``--no-chat`` skips templates)."""
    with _opened(path_or_file) as f:
        return _chat_template(f, marker)


def _chat_template(f: GGUFFile, marker: str) -> str:
    if "tokenizer.chat_template" not in f.fields:
        if f.get_str("general.architecture", "") == "gemma3":
            return GEMMA_TURNS.format(marker)
        return chat_prompt(marker)
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    tokens = f.get_array("tokenizer.ggml.tokens", "str", [])

    def token(key: str) -> str:
        i = f.get_int(f"tokenizer.ggml.{key}_token_id", -1)
        return tokens[i] if 0 <= i < len(tokens) else ""

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    try:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        text = env.from_string(f.get_str("tokenizer.chat_template")).render(
            messages=[{"role": "user", "content": _SLOT}], add_generation_prompt=True,
            bos_token="" if _adds_bos(f) else token("bos"), eos_token=token("eos"))
    except TemplateError as e:
        raise GGUFError(f"{f.path}: tokenizer.chat_template does not render: {e}") from None
    if text.count(_SLOT) != 1:
        raise GGUFError(f"{f.path}: tokenizer.chat_template does not place the user's text exactly once, unchanged")
    return text.replace(_SLOT, marker)


def special_token_id(reader_or_path: str | Path | GGUFFile, key: str) -> int | None:
    """The id in ``tokenizer.ggml.{key}_token_id`` (e.g. ``key="eos"``), or None when the file has none;
    an id that is not an integer or lies outside ``tokenizer.ggml.tokens`` raises :class:`GGUFError`."""
    with _opened(reader_or_path) as f:
        name = f"tokenizer.ggml.{key}_token_id"
        if name not in f.fields:
            return None
        return _special_ids(f, len(f.get_array("tokenizer.ggml.tokens", "str")))[name]


__all__ = ["FLOAT_TYPES", "SUPPORTED_TYPES", "GGUFEmbedding", "GGUFError", "GGUFFile", "GGUFLinear", "GGUFTensor",
           "UnsupportedGGUFError", "chat_prompt", "chat_template", "check_llama_tensors", "dequantize_codes",
           "llama_tensor_shapes",
           "load_gguf", "read_config", "read_tensors", "special_token_id", "tokenizer_from_gguf", "unpack_blocks"]
