"""Weights pre-packed at compile time (passes/prepack_parameters.py, compiler/pipeline/packing.py).

With the fused CPU kernel, every kernel's weight-side operands are computed by the packer when the
model is compiled and stored in ``model.irpa``; the module reads them as they are (no initializer
relays anything out when it loads), and the tensors only the packing read are not in the archive.
"""

from __future__ import annotations

import iree.runtime as rt
import pytest
import torch
from torch import nn

import msd
from helpers import error_bound, mlp
from msd.compiler.pipeline.targets import kernel_isas, resolve
from msd.passes.decompose_activations.cpu_kernel import ISAS

HOST_ISAS = kernel_isas(resolve("llvm-cpu"))
pytestmark = pytest.mark.skipif(not HOST_ISAS, reason="this CPU has none of the fused kernel's ISAs (AVX2 or better,"
                                                      " Arm dot product): nothing is packed for it")


def _archive_sizes(cm) -> dict[str, int]:
    index = rt.ParameterIndex()
    index.load(str(cm.workdir / "model.irpa"))
    return {key: entry.length for key, entry in index.items()}


def _archive_keys(cm) -> set[str]:
    return set(_archive_sizes(cm))


def test_packed_weights_replace_the_stored_ones_and_nothing_runs_at_load() -> None:
    model = msd.quantize(mlp(256, 384, 36, seed=4), weights="int4", group_size=32)
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(1))
    cm = msd.compile(model, (x,), slices=2)
    keys = _archive_keys(cm)
    for layer in ("0", "2"):
        assert {f"msd.pack.{layer}.qweight.{r}" for r in ("w", "scale", "off")} <= keys, keys
        assert f"{layer}.bias" in keys  # the epilogue still reads it
        assert not {f"{layer}.qweight", f"{layer}.weight_scale", f"{layer}.weight_zero_point"} & keys, keys
    assert b"initializer" not in cm.vmfb  # no load-time relayout (cpu_kernel="none" has initializers)
    assert b"initializer" in msd.compile(model, (x,), slices=2, cpu_kernel="none").vmfb
    # int4 codes are stored as nibbles: the packed weight is half the int8 codes' bytes (N padded to 2 x 16 lanes)
    sizes = _archive_sizes(cm)
    lanes = ISAS[HOST_ISAS[0]].lanes
    padded = -(-384 // (2 * lanes)) * 2 * lanes
    assert sizes["msd.pack.0.qweight.w"] == padded * 256 // 2, sizes
    ref, bound = error_bound(model, x, 2)
    assert ((cm(x).double() - ref).abs() <= bound).all()


def test_entry_points_that_share_a_weight_share_its_packing() -> None:
    model = msd.quantize(mlp(128, 64, seed=2), weights="int8", group_size=32)
    rows = torch.export.Dim("rows", min=2, max=32)
    cm = msd.compile_functions({"prefill": (model, (torch.randn(4, 128),), ({0: rows},)),
                                "decode": (model, (torch.randn(1, 128),))}, slices=2)
    keys = _archive_keys(cm)
    assert not [k for k in keys if "#" in k], keys  # one packed copy per weight, not one per entry point
    x = torch.randn(1, 128)
    torch.testing.assert_close(cm.decode(x), cm.prefill(torch.cat([x, x]))[:1], rtol=1e-6, atol=1e-6)


class _Bf16ScaleLinear(nn.Module):
    """int8 weight with a bfloat16 scale per output channel (a format whose scale has no numpy type)."""

    def __init__(self, k: int, n: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.register_buffer("q", torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g))
        self.register_buffer("scale", (torch.rand(n, generator=g) * 0.02 + 0.001).to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.q.float() * self.scale.float()[:, None]).T


def test_a_bfloat16_parameter_is_packed_from_its_bits() -> None:
    model = _Bf16ScaleLinear(96, 40)
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(5))
    cm = msd.compile(model, (x,), slices=2)
    assert "msd.pack.q.scale" in _archive_keys(cm)
    ref = model(x.double().float()).double()
    amax = x.abs().amax(dim=1, keepdim=True).double()
    # slices=2 error per element ≤ amax/64516 (msd-method.md); times Σ|W| along K
    w = (model.q.double() * model.scale.double()[:, None]).abs().sum(1)
    assert ((cm(x).double() - ref).abs() <= amax / 64516 * w + 1e-5 * ref.abs().max()).all()
