"""``torch.compile(model, backend="msd")`` (``msd.compiler.frontends.dynamo``): numerics, the MSD rewrite,
compile caching per shape, weights as IREE parameters, and the inference-only rule."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import msd
import msd.compiler.frontends.dynamo as dynamo
from msd.compiler.frontends.dynamo import MsdBackendError, stats


def qmlp() -> nn.Module:
    torch.manual_seed(0)
    return msd.quantize(nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32))).eval()


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(autouse=True)
def fresh():
    torch._dynamo.reset()
    stats.reset()
    yield
    torch._dynamo.reset()


def test_backend_is_registered() -> None:
    assert torch._dynamo.lookup_backend("msd") is dynamo.backend


def test_matches_eager_quantized_model_and_keeps_int8_weights_as_parameters() -> None:
    model = qmlp()
    compiled = torch.compile(model, backend="msd")
    x = torch.randn(4, 64)
    with torch.no_grad():
        ref = model(x)
        y = compiled(x)
    assert y.shape == ref.shape and y.dtype == torch.float32
    # not bit-exact: the int8 slice path ran, not eager torch; but within 1e-3 of it
    assert 0 < rel_err(y, ref) < 1e-3
    assert stats.compiles == 1 and stats.eager_runs == 0
    rec = stats.last
    # the model's tensors reach msd as program parameters/buffers, int8 weights as int8 ...
    int8 = sorted(shape for dtype, shape in rec.weights.values() if dtype == torch.int8)
    assert int8 == [(32, 128), (128, 64)], rec.weights
    assert not any(dtype.is_floating_point and len(shape) == 2 for dtype, shape in rec.weights.values())
    # ... and the compiled module's only runtime input is the activation
    assert rec.inputs == [("f32", (4, 64))]


def test_msd_rewrite_ran_and_slices_option_reaches_it() -> None:
    model = qmlp()
    x = torch.randn(8, 64)
    with torch.no_grad():
        ref = model(x)
        errs, reports = {}, {}
        for slices in (0, 1, 2):
            torch._dynamo.reset()
            y = torch.compile(model, backend="msd", options={"slices": slices, "target": "llvm-cpu"})(x)
            errs[slices] = rel_err(y, ref)
            assert stats.last.slices == slices
            reports[slices] = stats.last.report
    assert len(reports[2].rewritten) == 2 and len(reports[1].rewritten) == 2  # both matmuls
    assert reports[0].decisions == []  # slices=0: IREE's own lowering, no MSD
    assert errs[0] < 1e-5  # float dequantize + matmul: exact up to f32 rounding
    assert errs[1] > 10 * errs[2], errs  # one int8 slice of the activation is much coarser than two
    assert errs[2] < 1e-3


def test_same_shape_does_not_recompile() -> None:
    model = qmlp()
    compiled = torch.compile(model, backend="msd")
    with torch.no_grad():
        y1 = compiled(torch.randn(4, 64))
        x = torch.randn(4, 64)
        y2 = compiled(x)
        y3 = compiled(x)
        assert rel_err(y2, model(x)) < 1e-3
    assert torch.equal(y2, y3) and not torch.equal(y1, y2)
    assert stats.graphs == 1 and stats.compiles == 1


def test_new_batch_size_compiles_once_per_shape() -> None:
    model = qmlp()
    compiled = torch.compile(model, backend="msd")
    with torch.no_grad():
        for batch in (4, 7, 9, 4, 7):
            x = torch.randn(batch, 64)
            y = compiled(x)
            assert y.shape == (batch, 32)
            assert rel_err(y, model(x)) < 1e-3
    assert stats.compiles == 3, stats.records  # 4, 7, 9; the repeats are cached
    assert [r.inputs[0][1] for r in stats.records] == [(4, 64), (7, 64), (9, 64)]
    assert stats.graphs <= 2  # dynamo may make the batch dim dynamic once: one more graph at most


def test_requires_grad_raises_by_default() -> None:
    model = qmlp()  # msd.quantize's weights need no grad: only the input does here
    compiled = torch.compile(model, backend="msd")
    x = torch.randn(4, 64, requires_grad=True)
    with pytest.raises(MsdBackendError, match="inference-only"):
        compiled(x)
    assert stats.compiles == 0
    with torch.no_grad():  # the same input is fine without grad mode
        assert rel_err(compiled(x), model(x)) < 1e-3
    assert stats.compiles == 1


def test_float_parameters_that_require_grad_also_count() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8))  # weight.requires_grad=True
    compiled = torch.compile(model, backend="msd")
    with pytest.raises(MsdBackendError, match="inference-only"):
        compiled(torch.randn(2, 16))
    with torch.inference_mode():
        x = torch.randn(2, 16)
        assert rel_err(compiled(x), model(x)) < 1e-3


def test_grad_eager_option_runs_torch_with_a_warning() -> None:
    model = qmlp()
    compiled = torch.compile(model, backend="msd", options={"grad": "eager"})
    x = torch.randn(4, 64, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="grad is required"):
        y = compiled(x)
    assert y.requires_grad
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert stats.compiles == 0 and stats.eager_runs == 1


def test_weight_update_recompiles() -> None:
    model = qmlp()
    compiled = torch.compile(model, backend="msd")
    x = torch.randn(4, 64)
    with torch.no_grad():
        before = compiled(x)
        model[2].bias.add_(1.0)  # in place: the compiled parameter archive is now stale
        after = compiled(x)
        assert rel_err(after, model(x)) < 1e-3
    assert (after - before).abs().min() > 0.99
    assert stats.compiles == 2


class TwoParts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 128), nn.Linear(128, 32)

    def forward(self, x: torch.Tensor):
        h = torch.nn.functional.gelu(self.a(x))
        torch._dynamo.graph_break()
        return self.b(h), h.shape[0]


def test_graph_break_compiles_each_subgraph() -> None:
    torch.manual_seed(0)
    model = msd.quantize(TwoParts()).eval()
    compiled = torch.compile(model, backend="msd")
    x = torch.randn(3, 64)
    with torch.no_grad():
        y, n = compiled(x)
        ref, _ = model(x)
    assert n == 3 and rel_err(y, ref) < 1e-3
    assert stats.graphs == 2 and stats.compiles == 2
    assert all(len(r.report.rewritten) == 1 for r in stats.records)


class Counter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return self.lin(x)


def test_in_place_buffer_update_is_refused_or_falls_back() -> None:
    x = torch.randn(2, 8)
    with torch.no_grad():
        with pytest.raises(MsdBackendError, match="in place"):
            torch.compile(Counter(), backend="msd")(x)
        model = Counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = torch.compile(model, backend="msd", options={"fallback": True})(x)
        assert any("running it in torch" in str(w.message) for w in caught)
        assert model.calls.item() == 1 and torch.allclose(y, model.lin(x))


def test_unknown_option_is_an_error() -> None:
    with pytest.raises(Exception, match="unknown msd backend option 'slice'"):
        torch.compile(qmlp(), backend="msd", options={"slice": 2})(torch.randn(2, 64))
