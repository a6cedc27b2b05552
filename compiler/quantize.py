"""``msd.quantize``: weight-only quantization of ``nn.Linear`` layers in plain torch.

The quantized module's ``forward`` is ordinary torch "dequantize, then linear", so the eager
quantized model is the reference semantics that every compiled artifact is measured against.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_FORMATS = ("int8",)


class QuantizedLinear(nn.Module):
    """``nn.Linear`` with a symmetric per-output-channel int8 weight.

    Buffers: ``qweight`` (int8 ``[out, in]``), ``weight_scale`` (f32 ``[out]``); ``bias`` stays a
    float parameter.  ``forward(x) = F.linear(x, (qweight * weight_scale[:, None]).to(x.dtype), bias)``.
    """

    def __init__(self, qweight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        if qweight.dtype != torch.int8 or qweight.dim() != 2:
            raise ValueError(f"qweight must be a 2-D int8 tensor, got {qweight.dtype} {tuple(qweight.shape)}")
        if weight_scale.shape != (qweight.shape[0],):
            raise ValueError(
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


def quantize(model: nn.Module, weights: str = "int8") -> nn.Module:
    """Return a copy of ``model`` with every ``nn.Linear`` replaced by a quantized layer.

    ``weights="int8"``: symmetric per-output-channel int8 with an f32 scale per row.
    """
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights={weights!r} is not supported (choose one of {', '.join(WEIGHT_FORMATS)})")
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize expects a torch.nn.Module, got {type(model).__name__}")
    qmodel = copy.deepcopy(model)
    replaced = _replace_linears(qmodel)
    if replaced == 0:
        raise ValueError("the model has no nn.Linear layer to quantize")
    return qmodel


def _replace_linears(module: nn.Module) -> int:
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, QuantizedLinear.from_linear(child))
            count += 1
        else:
            count += _replace_linears(child)
    return count
