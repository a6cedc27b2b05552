"""``msd.quantize``: weight-only quantization of ``nn.Linear`` layers in plain torch.

The quantized module's ``forward`` is ordinary torch "dequantize, then linear", so the eager
quantized model is the reference semantics that every compiled artifact is measured against.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from msd.errors import OptionError
from msd.mx_format import E8M0_BIAS, MX_BLOCK, SCALE_RULES

WEIGHT_FORMATS = ("int8", "int4", "mxfp4")
PACKINGS = ("pairs", "halves")  # int4 nibble orders: torchao-style adjacent pairs, GGUF-style block halves
INT4_DEFAULT_GROUP = 128


class QuantizedLinear(nn.Module):
    """``nn.Linear`` with a symmetric per-output-channel int8 weight.

    Buffers: ``qweight`` (int8 ``[out, in]``), ``weight_scale`` (f32 ``[out]``); ``bias`` stays a
    float parameter.  ``forward(x) = F.linear(x, (qweight * weight_scale[:, None]).to(x.dtype), bias)``.
    """

    def __init__(self, qweight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        if qweight.dtype != torch.int8 or qweight.dim() != 2:
            raise OptionError(f"qweight must be a 2-D int8 tensor, got {qweight.dtype} {tuple(qweight.shape)}")
        if weight_scale.shape != (qweight.shape[0],):
            raise OptionError(
                f"weight_scale must have shape ({qweight.shape[0]},), got {tuple(weight_scale.shape)}"
            )
        self.in_features = qweight.shape[1]
        self.out_features = qweight.shape[0]
        self.register_buffer("qweight", qweight)
        self.register_buffer("weight_scale", weight_scale.to(torch.float32))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> QuantizedLinear:
        w = linear.weight.detach().to(torch.float32)
        amax = w.abs().amax(dim=1)
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        q = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(q, scale, bias)

    def dequantized_weight(self) -> torch.Tensor:
        return self.qweight.to(torch.float32) * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight().to(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights=int8"


def constant_group_scale(c: torch.Tensor) -> torch.Tensor:
    """The int4 scale of a group whose values all equal ``c``: with codes 8 and :func:`constant_group_zero`,
    ``s·(8 − z) = c`` (``c/8`` for c > 0, ``−c/7`` for c < 0, 1 for c = 0)."""
    return torch.where(c > 0, c / 8.0, torch.where(c < 0, -c / 7.0, torch.ones_like(c)))


def constant_group_zero(c: torch.Tensor) -> torch.Tensor:
    """The zero point that goes with :func:`constant_group_scale`: 0 for c > 0, 15 for c < 0, 8 for c = 0."""
    return torch.where(c > 0, 0.0, torch.where(c < 0, 15.0, 8.0))


class GroupQuantizedLinear(nn.Module):
    """``nn.Linear`` with group-wise weights along K: ``w[n, k] = s[n, g] · (q[n, k] − z[n, g])``.

    ``bits=8``: symmetric int8 (``qweight`` int8 ``[N, K]``, no zero point).
    ``bits=4``: asymmetric 4-bit codes in [0, 15] packed two per byte (``qweight`` uint8
    ``[N, K/2]``) with an integer zero point per group; ``packing="pairs"`` stores k=2i in the low
    and k=2i+1 in the high nibble (torchao), ``"halves"`` stores, per 32-element block, elements
    0..15 in the low and 16..31 in the high nibbles (GGUF).  ``forward`` unpacks and dequantizes in
    plain torch: it is the reference semantics.
    """

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                 bias: torch.Tensor | None, *, bits: int, group_size: int, packing: str = "pairs") -> None:
        super().__init__()
        n = qweight.shape[0]
        k = qweight.shape[1] * (2 if bits == 4 else 1)
        if k % group_size or scale.shape != (n, k // group_size):
            raise OptionError(f"scale must have shape ({n}, {k // group_size}) for K={k}, group {group_size}")
        if packing not in PACKINGS or (bits == 4 and packing == "halves" and k % 32):
            raise OptionError(f"packing={packing!r} is not supported (choose one of {', '.join(PACKINGS)})")
        self.in_features, self.out_features = k, n
        self.bits, self.group_size, self.packing = bits, group_size, packing
        self.register_buffer("qweight", qweight)
        self.register_buffer("weight_scale", scale.to(torch.float32))
        self.register_buffer("weight_zero_point", zero_point)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, bits: int, group_size: int, packing: str = "pairs"):
        w = linear.weight.detach().to(torch.float32)
        n, k = w.shape
        if k % group_size:
            raise OptionError(f"in_features={k} is not a multiple of group_size={group_size}")
        wg = w.view(n, k // group_size, group_size)
        bias = None if linear.bias is None else linear.bias.detach()
        if bits == 8:
            amax = wg.abs().amax(dim=-1)
            scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
            q = torch.clamp(torch.round(wg / scale[..., None]), -127, 127).to(torch.int8).view(n, k)
            return cls(q, scale, None, bias, bits=8, group_size=group_size)
        lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)
        spread = hi > lo
        scale = torch.where(spread, (hi - lo) / 15.0, torch.ones_like(hi))
        zero = torch.clamp(torch.round(-lo / scale), 0, 15)
        q = torch.clamp(torch.round(wg / scale[..., None]) + zero[..., None], 0, 15)
        # A constant group c (an all-zero row, a constant bias-like column): codes at the midpoint 8 and
        # s·(8 − z) = c, so the group dequantizes to c and its codes cancel the MSD centring by 8 (a
        # scale of 1 there made the zero-point term cost the channel ~0.9 at slices=1).
        scale = torch.where(spread, scale, constant_group_scale(lo))
        zero = torch.where(spread, zero, constant_group_zero(lo))
        q = torch.where(spread[..., None], q, 8.0).to(torch.uint8).view(n, k)
        return cls(pack_int4(q, packing), scale, zero.to(torch.uint8), bias, bits=4, group_size=group_size,
                   packing=packing)

    def codes(self) -> torch.Tensor:
        """The integer codes ``[N, K]`` (int8 as stored, or the unpacked 4-bit values)."""
        return self.qweight if self.bits == 8 else unpack_int4(self.qweight, self.packing)

    def dequantized_weight(self) -> torch.Tensor:
        n, k, g = self.out_features, self.in_features, self.group_size
        q = self.codes().view(n, k // g, g).to(torch.float32)
        if self.weight_zero_point is not None:
            q = q - self.weight_zero_point.to(torch.float32).unsqueeze(-1)
        return (q * self.weight_scale.unsqueeze(-1)).view(n, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight().to(x.dtype), bias)

    def extra_repr(self) -> str:
        fmt = f"int{self.bits}" + (f" packed {self.packing}" if self.bits == 4 else "")
        return (f"in_features={self.in_features}, out_features={self.out_features}, weights={fmt},"
                f" group={self.group_size}")


class MXFP4Linear(nn.Module):
    """``nn.Linear`` with OCP MXFP4 weights, stored as checkpoints store them.

    Buffers: ``blocks`` (uint8 ``[N, K/2]``, two E2M1 codes per byte, element ``2i`` in the low
    nibble) and ``scales`` (uint8 ``[N, K/32]``, E8M0: ``2**(s − 127)``).  ``forward`` decodes in
    plain torch — twice each E2M1 value as an int8 in [−12, 12] (exact), times ``2**(s − 128)`` —
    then runs ``F.linear``: the reference semantics.  ``scale_rule`` records how the block scales
    were chosen (``compiler/quant/mx.py``: "ocp" = ``floor(log2(amax)) − 2``, "noclip" = no element clips).
    """

    def __init__(self, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                 scale_rule: str = "ocp") -> None:
        super().__init__()
        n, half = blocks.shape
        if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
            raise OptionError(f"blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")
        if (2 * half) % MX_BLOCK or scales.shape != (n, 2 * half // MX_BLOCK):
            raise OptionError(f"scales must have shape ({n}, {2 * half // MX_BLOCK}) for blocks {tuple(blocks.shape)}"
                             f" (K a multiple of {MX_BLOCK})")
        self.in_features, self.out_features, self.scale_rule = 2 * half, n, scale_rule
        self.register_buffer("blocks", blocks)
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, scale_rule: str = "ocp") -> MXFP4Linear:
        from . import mx

        w = linear.weight.detach().to(torch.float64).numpy()
        if w.shape[1] % MX_BLOCK:
            raise OptionError(f"in_features={w.shape[1]} is not a multiple of the MX block ({MX_BLOCK})")
        if not np.isfinite(w).all():
            raise OptionError("the weight has NaN/Inf values: MXFP4 cannot encode them")
        codes, exps = mx.quantize_mxfp4(w, scale_rule)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(torch.from_numpy(mx.pack_fp4(codes)), torch.from_numpy(mx.exps_to_e8m0(exps)), bias, scale_rule)

    def twice_values(self) -> torch.Tensor:
        """``2 · E2M1(code)`` as int8 ``[N, K]`` (integers in [−12, 12]), decoded arithmetically
        (sign bit 3, exponent bits 1-2, mantissa bit 0; no lookup table, no shifts by tensors)."""
        n, half = self.blocks.shape
        i = unpack_int4(self.blocks, "pairs").to(torch.int32)  # int32: torch-mlir miscompiles some u8 math
        mag = i & 7
        e, m = mag >> 1, mag & 1
        dbl = torch.where(e == 0, m, (m + 2) * torch.where(e == 3, 4, torch.where(e == 2, 2, 1)))
        return torch.where(i >= 8, -dbl, dbl).to(torch.int8)

    def dequantized_weight(self) -> torch.Tensor:
        n, k = self.out_features, self.in_features
        # 2**(s - 127) / 2: the codes are doubled
        half_scale = torch.exp2(self.scales.to(torch.float32) - float(E8M0_BIAS + 1))
        blocks = self.twice_values().to(torch.float32).view(n, k // MX_BLOCK, MX_BLOCK)
        return (blocks * half_scale.unsqueeze(-1)).view(n, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight().to(x.dtype), bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, weights=mxfp4"
                f" ({self.scale_rule} scales)")


def pack_int4(q: torch.Tensor, packing: str) -> torch.Tensor:
    """Pack 4-bit codes ``[N, K]`` (uint8 in [0, 15]) two per byte → ``[N, K/2]``."""
    n, k = q.shape
    if packing == "pairs":
        pairs = q.view(n, k // 2, 2)
        return pairs[..., 0] | (pairs[..., 1] << 4)
    blocks = q.view(n, k // 32, 2, 16)
    return (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(n, k // 2)


def unpack_int4(packed: torch.Tensor, packing: str) -> torch.Tensor:
    """Inverse of :func:`pack_int4`, written in plain torch ops (it is exported with the model).

    One broadcast and one elementwise shift-and-mask, with no stack/concat, so that after export
    the unpack is a single elementwise producer that IREE hoists to load time as one step.
    """
    n, half = packed.shape
    low, high = packed & 15, packed >> 4
    if packing == "pairs":  # [N, K/2, 2]: byte i holds k = 2i (low) and 2i+1 (high)
        shape, axis = (n, half, 2), 2
    else:  # [N, K/32, 2, 16]: per 32-block, low nibbles hold 0..15, high nibbles 16..31
        shape, axis = (n, half // 16, 2, 16), 2
    index = [1] * len(shape)
    index[axis] = 2
    is_high = torch.arange(2, device=packed.device).view(index) == 1
    pieces = (high.view(*shape[:axis], 1, *shape[axis + 1:]), low.view(*shape[:axis], 1, *shape[axis + 1:]))
    return torch.where(is_high, *pieces).view(n, 2 * half)


def quantize(model: nn.Module, weights: str = "int8", *, group_size: int | None = None,
             packing: str = "pairs", scale_rule: str = "ocp") -> nn.Module:
    """Return a copy of ``model`` with every ``nn.Linear`` replaced by a quantized layer.

    - ``weights="int8"``: symmetric int8, one f32 scale per output channel, or per
      (channel, group of ``group_size`` along K) when ``group_size`` is given;
    - ``weights="int4"``: asymmetric 4-bit codes with a scale and integer zero point per group
      (``group_size`` default 128), packed two per byte (``packing="pairs"`` or ``"halves"``);
    - ``weights="mxfp4"``: OCP MXFP4 (E2M1 codes two per byte, an E8M0 scale per 32 along K),
      block scales by ``scale_rule`` ("ocp": ``floor(log2(amax)) − 2``, or "noclip").
    """
    if weights not in WEIGHT_FORMATS:
        raise OptionError(f"weights={weights!r} is not supported (choose one of {', '.join(WEIGHT_FORMATS)})")
    if not isinstance(model, nn.Module):
        raise OptionError(f"quantize expects a torch.nn.Module, got {type(model).__name__}")
    if weights == "mxfp4":
        if group_size not in (None, MX_BLOCK):
            raise OptionError(f"MXFP4 blocks are {MX_BLOCK} elements along K; group_size={group_size} is not possible")
        if scale_rule not in SCALE_RULES:
            raise OptionError(f"scale_rule={scale_rule!r} is not supported (choose one of {', '.join(SCALE_RULES)})")
        return _quantized_copy(model, lambda lin: MXFP4Linear.from_linear(lin, scale_rule))
    if weights == "int4" and group_size is None:
        group_size = INT4_DEFAULT_GROUP
    if group_size is not None and (not isinstance(group_size, int) or group_size <= 0):
        raise OptionError(f"group_size must be a positive int, got {group_size!r}")

    def convert(linear: nn.Linear) -> nn.Module:
        if group_size is None:
            return QuantizedLinear.from_linear(linear)
        return GroupQuantizedLinear.from_linear(linear, bits=8 if weights == "int8" else 4,
                                                group_size=group_size, packing=packing)

    return _quantized_copy(model, convert)


def _quantized_copy(model: nn.Module, convert) -> nn.Module:
    if isinstance(model, nn.Linear):  # the model is a single layer
        return convert(model)
    qmodel = copy.deepcopy(model)
    if _replace_linears(qmodel, convert) == 0:
        raise OptionError("the model has no nn.Linear layer to quantize")
    return qmodel


def _replace_linears(module: nn.Module, convert) -> int:
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, convert(child))
            count += 1
        else:
            count += _replace_linears(child, convert)
    return count
