"""Every weight format msd.quantize emits, through the pass, against the float64 bound."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import msd
from helpers import error_bound, mlp, reference64
from msd.compiler.quant.quantize import GroupQuantizedLinear, QuantizedLinear
from msd.passes.decompose_activations import MAX_K_PER_ACCUMULATOR

FORMATS = {
    "int8-channel": dict(weights="int8"),
    "int8-g32": dict(weights="int8", group_size=32),
    "int8-g64": dict(weights="int8", group_size=64),
    "int8-g128": dict(weights="int8", group_size=128),
    "int8-g256": dict(weights="int8", group_size=256),
    "int4-g32-pairs": dict(weights="int4", group_size=32, packing="pairs"),
    "int4-g128-pairs": dict(weights="int4", group_size=128, packing="pairs"),
    "int4-g64-halves": dict(weights="int4", group_size=64, packing="halves"),
}


def _input(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    x[..., 5] *= 30.0  # one outlier channel
    return x


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_format_rewritten_within_bound(fmt: str) -> None:
    model = msd.quantize(mlp(256, 256, 48, seed=3), **FORMATS[fmt])
    x = _input((3, 256))
    ref = reference64(model, x)
    errs = {}
    for slices in (1, 2, 3):
        cm = msd.compile(model, (x,), slices=slices)
        assert len(cm.report.rewritten) == 2 and not cm.report.skipped, cm.report.format()
        y = cm(x).double()
        errs[slices] = (y - ref).abs().mean().item()
        if slices > 1:
            _, bound = error_bound(model, x, slices)
            assert ((y - ref).abs() <= bound).all(), f"{fmt} slices={slices} exceeds the bound"
    assert errs[1] > 20 * errs[2] > 20 * errs[3] / 20, errs


def test_int4_is_packed_and_never_dequantized_in_the_module() -> None:
    model = msd.quantize(mlp(256, 64), weights="int4", group_size=64)
    layer = model[0]
    assert isinstance(layer, GroupQuantizedLinear) and layer.qweight.dtype == torch.uint8
    assert layer.qweight.shape == (64, 128), "two 4-bit codes per byte"
    ir_text = msd.compile(model, (torch.randn(2, 256),), emit="msd", cpu_kernel="none")  # the int8 matmul form
    for shape in ("64x256xf32", "256x64xf32", "64x4x64xf32"):
        assert f"tensor<{shape}>" not in ir_text, f"a float copy of the weight ({shape}) survived"
    assert re.search(r"linalg.batch_matmul .*: tensor<4x\d+x64xi8>, tensor<4x64x64xi8>\) outs\(.*xi32>", ir_text)


def test_both_nibble_orders_round_trip() -> None:
    from msd.compiler.quant.quantize import pack_int4, unpack_int4

    q = torch.randint(0, 16, (4, 64), dtype=torch.uint8)
    for packing in ("pairs", "halves"):
        assert torch.equal(unpack_int4(pack_int4(q, packing), packing), q)
    assert not torch.equal(pack_int4(q, "pairs"), pack_int4(q, "halves"))


def test_group_activation_scale_beats_row_scale_on_outliers() -> None:
    model = msd.quantize(mlp(512, 32, seed=5), weights="int8", group_size=64)
    x = torch.randn(4, 512)
    x[:, 7] = 500.0  # an outlier that dominates its row's amax
    ref = reference64(model, x)
    err = {a: (msd.compile(model, (x,), slices=2, act_scale=a)(x).double() - ref).abs().mean().item()
           for a in ("row", "group")}
    assert err["group"] < 0.5 * err["row"], err


def _constant_layer(k: int, n: int = 4) -> nn.Sequential:
    q = torch.full((n, k), 127, dtype=torch.int8)
    return nn.Sequential(QuantizedLinear(q, torch.full((n,), 1e-6), None))


def test_long_k_is_split_so_int32_cannot_overflow() -> None:
    """K = 2^18: 127·127·K > 2^31 would wrap a single int32 accumulator."""
    k = 2**18
    assert 127 * 127 * k > 2**31 - 1
    model = _constant_layer(k)
    x = torch.ones(2, k)
    x[1] = torch.linspace(-1, 1, k)
    cm = msd.compile(model, (x,), slices=2)
    (decision,) = cm.report.rewritten
    assert "K in groups of 131072" in decision.reason, decision.reason
    ref, bound = error_bound(model, x, 2)
    y = cm(x).double()
    assert ((y - ref).abs() <= bound).all(), (y, ref)
    assert abs(y[0, 0].item() - 127e-6 * k) < 1e-3 * 127e-6 * k


def test_long_k_without_a_safe_split_is_refused() -> None:
    k = next(p for p in range(MAX_K_PER_ACCUMULATOR + 1, 10**6)
             if all(p % d for d in range(2, int(p**0.5) + 1)))  # a prime: no chunk divides it
    model = _constant_layer(k, n=2)
    x = torch.randn(1, k)
    cm = msd.compile(model, (x,), slices=2)
    (decision,) = cm.report.skipped
    assert "could overflow the int32 accumulator" in decision.reason
    assert torch.allclose(cm(x), model(x), rtol=1e-4, atol=1e-4)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(
    m=st.integers(1, 5),
    groups=st.integers(1, 4),
    group_size=st.sampled_from([32, 64]),
    n=st.integers(1, 40),
    bits=st.sampled_from([8, 4]),
    outlier=st.floats(1.0, 1000.0),
    seed=st.integers(0, 2**16),
)
def test_random_group_layers_within_bound(m, groups, group_size, n, bits, outlier, seed) -> None:
    torch.manual_seed(seed)
    k = groups * group_size
    weights = "int8" if bits == 8 else "int4"
    model = msd.quantize(nn.Sequential(nn.Linear(k, n)), weights=weights, group_size=group_size)
    x = torch.randn(m, k) * torch.rand(1) * 10
    x[:, seed % k] *= outlier
    cm = msd.compile(model, (x,), slices=2)
    assert len(cm.report.rewritten) == 1, cm.report.format()
    ref, bound = error_bound(model, x, 2)
    assert ((cm(x).double() - ref).abs() <= bound).all()


class OffsetLinear(nn.Module):
    """The GGUF Q4_1 form: ``w = d·q + m`` per 32-block, codes stored unpacked as uint8 in [0, 15]."""

    def __init__(self, n: int, k: int, g: int = 32, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.g = g
        self.register_buffer("q", torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8))
        self.register_buffer("d", torch.rand(n, k // g, generator=gen) * 0.02)
        self.register_buffer("m", -torch.rand(n, k // g, generator=gen) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k = self.q.shape
        w = self.d.unsqueeze(-1) * self.q.view(n, k // self.g, self.g).to(x.dtype) + self.m.unsqueeze(-1)
        return nn.functional.linear(x, w.view(n, k))


class U8Linear(nn.Module):
    """Unsigned 8-bit codes over the full [0, 255] with a uint8 zero point per channel."""

    def __init__(self, n: int, k: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("q", torch.randint(0, 256, (n, k), generator=gen, dtype=torch.uint8))
        self.register_buffer("z", torch.randint(100, 156, (n, 1), generator=gen, dtype=torch.uint8))
        self.register_buffer("s", torch.rand(n, 1, generator=gen) * 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, (self.q.to(x.dtype) - self.z.to(x.dtype)) * self.s)


def _shifted_bound(w_int: torch.Tensor, w_full: torch.Tensor, x: torch.Tensor, slices: int) -> torch.Tensor:
    """§3 bound for a weight whose matmul part is ``w_int`` (the shifted codes times the scales)."""
    from helpers import F32_EPS, slice_error

    xa = x.double().abs()
    return (slice_error(xa.amax(-1, keepdim=True), slices) * w_int.abs().sum(1)
            + 16 * F32_EPS * (xa @ (w_int.abs() + (w_full - w_int).abs()).T))


def test_float_offset_form_is_rewritten_with_group_sums() -> None:
    layer = OffsetLinear(48, 256)
    x = _input((3, 256))
    cm = msd.compile(layer, (x,), slices=2)
    (decision,) = cm.report.rewritten
    assert "K in groups of 32" in decision.reason and "offset term" in decision.reason
    n, k = layer.q.shape
    d = layer.d.double().repeat_interleave(32, dim=1)
    w_full = d * layer.q.double() + layer.m.double().repeat_interleave(32, dim=1)
    w_int = d * (layer.q.double() - 128)  # unpacked uint8 codes: range unknown, shift 128
    ref = x.double() @ w_full.T
    assert ((cm(x).double() - ref).abs() <= _shifted_bound(w_int, w_full, x, 2)).all()


def test_unsigned_int8_with_zero_point() -> None:
    layer = U8Linear(40, 192)
    x = _input((5, 192))
    cm = msd.compile(layer, (x,), slices=2)
    (decision,) = cm.report.rewritten
    assert "unsigned weight as q-128" in decision.reason
    w_full = (layer.q.double() - layer.z.double()) * layer.s.double()
    w_int = (layer.q.double() - 128) * layer.s.double()
    ref = x.double() @ w_full.T
    assert ((cm(x).double() - ref).abs() <= _shifted_bound(w_int, w_full, x, 2)).all()


def test_grouped_zero_and_non_finite_rows() -> None:
    """Per-group scales and offsets keep the edge cases: zeros give the bias, NaN/Inf stay non-finite."""
    model = msd.quantize(nn.Sequential(nn.Linear(128, 24)), weights="int4", group_size=32)
    x = _input((4, 128))
    x[0] = 0.0
    x[1, 40] = float("nan")
    x[2, 100] = float("inf")
    y = msd.compile(model, (x,), slices=2)(x)
    assert torch.equal(y[0], model[0].bias.detach())
    assert not torch.isfinite(y[1]).any() and torch.isnan(y[1]).all()
    assert not torch.isfinite(y[2]).any()
    ref, bound = error_bound(model, x[3:], 2)
    assert ((y[3:].double() - ref).abs() <= bound).all()


def test_int4_unpack_runs_once_at_load_not_per_call() -> None:
    """After IREE's global optimization, the nibble unpack (shrui/andi) and the weight relayout
    live in initializers (run once when the module loads), never in the per-call function."""
    from iree.compiler import ir

    from msd.compiler.pipeline.driver import COMMON_FLAGS
    from msd.compiler.pipeline.importer import export, import_program
    from msd.compiler.pipeline.iree_session import IreeSession
    from msd.compiler.pipeline.targets import resolve
    from msd.passes import run_pass

    model = msd.quantize(nn.Sequential(nn.Linear(512, 256)), weights="int4", group_size=128)
    session = IreeSession([*COMMON_FLAGS, *resolve("llvm-cpu").flags])
    module, _ = import_program(export(model, (torch.randn(1, 512),)), session.context)
    session.load(module)
    session.run_phases("start", "input")
    with session.context, ir.Location.unknown():
        assert len(run_pass(module, "msd-decompose-activations", slices=2).rewritten) == 1
    session.run_phases("input", "global-optimization")
    text = str(module)
    main = text[text.index("util.func public @main$async"):]
    main = main[: main.index("\n  }\n")]
    assert "arith.shrui" in text and "util.initializer" in text
    assert "arith.shrui" not in main and "arith.andi" not in main, "the int4 unpack runs on every call"
