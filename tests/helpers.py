"""Test helpers: small quantized models and the float64 error bound of msd-method.md §3."""

from __future__ import annotations

import copy

import torch
from torch import nn

from msd.compiler.quant.quantize import GroupQuantizedLinear, QuantizedLinear

GELU_LIPSCHITZ = 1.13  # max |d gelu(x)/dx| ≈ 1.1289
F32_EPS = 2.0**-24


def mlp(*dims: int, act: type[nn.Module] = nn.GELU, bias: bool = True, seed: int = 0) -> nn.Sequential:
    """A float MLP ``dims[0] → dims[1] → …`` with ``act`` between layers."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (k, n) in enumerate(zip(dims[:-1], dims[1:])):
        if i:
            layers.append(act())
        layers.append(nn.Linear(k, n, bias=bias))
    return nn.Sequential(*layers)


def reference64(model: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """The model evaluated in float64 from the same integer weights and scales."""
    m = copy.deepcopy(model).double()
    with torch.no_grad():
        return m(*[x.double() for x in inputs])


def matmul_split(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight as MSD computes it: ``W = w_int + w_off`` where ``w_int = s·(q − c)`` meets the
    activation slices in the int8 matmul (c centres unsigned codes: 8 for 4-bit) and
    ``w_off = s·(c − z)`` is applied exactly through the row/group sums of the activation."""
    if isinstance(layer, QuantizedLinear):
        return layer.dequantized_weight().double(), torch.zeros(1, dtype=torch.float64)
    n, k, g = layer.out_features, layer.in_features, layer.group_size
    q = layer.codes().double().view(n, k // g, g)
    s = layer.weight_scale.double().unsqueeze(-1)
    c = 8.0 if layer.bits == 4 else 0.0
    z = 0.0 if layer.weight_zero_point is None else layer.weight_zero_point.double().unsqueeze(-1)
    return (s * (q - c)).view(n, k), (s * (c - z)).expand(n, k // g, g).reshape(n, k)


def slice_error(amax: torch.Tensor, slices: int) -> torch.Tensor:
    """Bound on |x - x̂| per element after ``slices`` int8 slices (msd-method.md §1)."""
    return amax / (127.0 * 2.0 * 254.0 ** (slices - 1))


def error_bound(model: nn.Sequential, x: torch.Tensor, slices: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(float64 reference, elementwise bound on |y_msd - y_ref|) for a Sequential model.

    Per layer: the decomposition error ``Σ_k |W[n,k]| · amax[m]/(127·2·254^(p-1))`` (msd-method.md
    §3), plus f32 rounding of the int32 → float recombination (a few ulps of ``|x|·|W|ᵀ``), plus the
    error arriving from earlier layers pushed through ``|W|`` and the activations' Lipschitz
    constants.
    """
    h = x.double()
    err = torch.zeros_like(h)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, (QuantizedLinear, GroupQuantizedLinear)):
                w = layer.dequantized_weight().double()
                w_int, w_off = matmul_split(layer)
                reach = h.abs() + err  # MSD's own input may differ from the reference by err
                amax = reach.amax(dim=-1, keepdim=True)
                decomposition = slice_error(amax, slices) * w_int.abs().sum(dim=1)
                rounding = 16 * F32_EPS * (reach @ (w_int.abs() + w_off.abs()).T)
                err = err @ w.abs().T + decomposition + rounding
                bias = None if layer.bias is None else layer.bias.double()
                h = nn.functional.linear(h, w, bias)
                if layer.bias is not None:
                    err = err + F32_EPS * layer.bias.double().abs()
            elif isinstance(layer, nn.ReLU):
                h = torch.relu(h)
            elif isinstance(layer, nn.GELU):
                h = nn.functional.gelu(h)
                err = err * GELU_LIPSCHITZ + 64 * F32_EPS * h.abs()  # f32 erf approximation
            else:
                raise TypeError(f"no error model for {type(layer).__name__}")
    return h, err + 1e-30
