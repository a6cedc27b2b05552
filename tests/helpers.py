"""Test helpers: small quantized models and the float64 error bound of msd-method.md §3."""

from __future__ import annotations

import copy

import torch
from torch import nn

from msd.compiler.quantize import QuantizedLinear

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
            if isinstance(layer, QuantizedLinear):
                w = layer.dequantized_weight().double()
                wabs = w.abs()
                reach = h.abs() + err  # MSD's own input may differ from the reference by err
                amax = reach.amax(dim=-1, keepdim=True)
                decomposition = slice_error(amax, slices) * wabs.sum(dim=1)
                rounding = 16 * F32_EPS * (reach @ wabs.T)
                err = err @ wabs.T + decomposition + rounding
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
