"""msd's attention kernels (``torch.ops.msd.decode_attention[_int8]``, ``prefill_attention`` →
``--msd-attention-kernels``): compiled through IREE for this CPU and checked against a float64
reference over cache (or prompt) lengths around the kernels' block of 16 keys and the decode kernel's
splits, for the f32 and the int8 cache; the eager op against the model's own attention; the reference
ops for targets without the kernels; and the errors for shapes the kernels do not take."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import msd
from msd.compiler.ops import decode_attention
from msd.errors import OptionError
from msd.passes.attention_kernels import BLOCK

LENGTHS = (1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 3 * BLOCK - 1, 3 * BLOCK + 5, 130)  # T: around blocks, splits


class _Layer(torch.nn.Module):
    def __init__(self, layer: int) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, q, kc, vc, kn, vn):
        return torch.ops.msd.decode_attention(q, kc, vc, kn, vn, self.layer)


def _inputs(t: int, b: int, h: int, g: int, d: int, layers: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    return r(b, h, g, d), r(t, layers, b, h, d), r(t, layers, b, h, d), r(b, h, 1, d), r(b, h, 1, d)


def _reference64(q, kc, vc, kn, vn, layer: int) -> np.ndarray:
    q, kc, vc, kn, vn = (x.double().numpy() for x in (q, kc, vc, kn, vn))
    k = np.concatenate([kc[:, layer].transpose(1, 2, 0, 3), kn], axis=2)  # [B, H, T + 1, D]
    v = np.concatenate([vc[:, layer].transpose(1, 2, 0, 3), vn], axis=2)
    s = np.einsum("bhgd,bhtd->bhgt", q, k)
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhgt,bhtd->bhgd", p / p.sum(-1, keepdims=True), v)


def _compile(layer: int, shape: tuple[int, int, int, int, int], target: str = "llvm-cpu", **kw):
    b, h, g, d, layers = shape
    example = _inputs(5, b, h, g, d, layers, seed=0)
    t = torch.export.Dim("T", min=1, max=4096)
    return msd.compile(_Layer(layer), example, dynamic_shapes=(None, {0: t}, {0: t}, None, None), target=target,
                       **kw)


@pytest.mark.parametrize("shape,layer", [((1, 3, 3, 64, 4), 2), ((2, 2, 1, 32, 3), 0)],
                         ids=["smollm2-heads", "batch2-mha"])
def test_kernel_matches_float64_reference(shape, layer) -> None:
    """Error ≤ 2e-6 · max|v| at every length (the f32 kernel's rounding; an off-by-one key, a missed new
    token or a wrong layer shows up as O(1))."""
    cm = _compile(layer, shape)
    for t in LENGTHS:
        args = _inputs(t, *shape, seed=t)
        got = cm(*args).numpy()
        want = _reference64(*args, layer)
        scale = max(float(np.abs(args[2]).max()), float(np.abs(args[4]).max()))
        err = float(np.abs(got - want).max())
        assert err <= 2e-6 * scale, f"T={t}: max error {err:.3g}"


class _Int8Layer(torch.nn.Module):
    def __init__(self, layer: int) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, q, kc, ks, vc, vs, kn, kns, vn, vns):
        return torch.ops.msd.decode_attention_int8(q, kc, ks, vc, vs, kn, kns, vn, vns, self.layer)


def _int8_inputs(t: int, b: int, h: int, g: int, d: int, layers: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    codes = lambda *shape: torch.randint(-127, 128, shape, generator=gen, dtype=torch.int8)  # noqa: E731
    scales = lambda *shape: torch.rand(*shape, generator=gen) * 0.05 + 0.01  # noqa: E731
    return (torch.randn(b, h, g, d, generator=gen), codes(t, layers, b, h, d), scales(t, layers, b, h),
            codes(t, layers, b, h, d), scales(t, layers, b, h), codes(b, h, 1, d), scales(b, h, 1),
            codes(b, h, 1, d), scales(b, h, 1))


def test_int8_kernel_matches_float64_reference() -> None:
    """The int8 cache (codes and one scale per token and head): the kernel against the float64 value of
    ``softmax(q·(codes·scale)ᵀ)·(codes·scale)``.  Error ≤ 1e-5 · max|v| (its scores reach ~100, ten times
    the f32 test's: the f32 rounding of a score moves the softmax more)."""
    from msd.compiler.ops import _reference_int8

    shape, layer = (1, 3, 3, 64, 4), 2
    example = _int8_inputs(5, *shape, seed=0)
    t = torch.export.Dim("T", min=1, max=4096)
    dyn = (None, {0: t}, {0: t}, {0: t}, {0: t}, None, None, None, None)
    cm = msd.compile(_Int8Layer(layer), example, dynamic_shapes=dyn)
    for n in LENGTHS:
        args = _int8_inputs(n, *shape, seed=n)
        got = cm(*args).numpy()
        want = _reference_int8(*(x.double() if x.is_floating_point() else x for x in args), layer).numpy()
        scale = float((args[3].abs().amax() * args[4].amax()).item())
        err = float(np.abs(got - want).max())
        assert err <= 1e-5 * scale, f"T={n}: max error {err:.3g}"


class _Prefill(torch.nn.Module):
    def forward(self, q, k, v):
        return torch.ops.msd.prefill_attention(q, k, v)


def _prefill64(q, k, v) -> np.ndarray:
    q, k, v = (x.double().numpy() for x in (q, k, v))
    s = np.einsum("bhgsd,bhtd->bhgst", q, k)
    n = q.shape[3]
    s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhgst,bhtd->bhgsd", p / p.sum(-1, keepdims=True), v)


@pytest.mark.parametrize("shape", [(1, 3, 3, 64), (2, 2, 1, 32)], ids=["smollm2-heads", "batch2-mha"])
def test_prefill_kernel_matches_float64_reference(shape) -> None:
    """The causal prefill kernel (a workgroup per query position; blocks of 16 keys, the last masked)
    against float64 at prompt lengths around the block: error ≤ 2e-6 · max|v|."""
    b, h, g, d = shape
    gen = torch.Generator().manual_seed(0)
    example = (torch.randn(b, h, g, 5, d, generator=gen), torch.randn(b, h, 5, d, generator=gen),
               torch.randn(b, h, 5, d, generator=gen))
    n = torch.export.Dim("S", min=1, max=4096)
    cm = msd.compile(_Prefill(), example, dynamic_shapes=({3: n}, {2: n}, {2: n}))
    for s in (1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5):
        args = (torch.randn(b, h, g, s, d, generator=gen), torch.randn(b, h, s, d, generator=gen),
                torch.randn(b, h, s, d, generator=gen))
        err = float(np.abs(cm(*args).numpy() - _prefill64(*args)).max())
        assert err <= 2e-6 * float(args[2].abs().max()), f"S={s}: max error {err:.3g}"


def test_the_new_token_and_the_layer_matter() -> None:
    """The kernel reads this layer's keys and the new token's: changing another layer's cache changes
    nothing, changing the new value changes the output."""
    shape = (1, 2, 2, 32, 3)
    cm = _compile(1, shape)
    q, kc, vc, kn, vn = _inputs(20, *shape, seed=7)
    base = cm(q, kc, vc, kn, vn).numpy()
    other = vc.clone()
    other[:, 0] += 5.0
    other[:, 2] -= 5.0
    np.testing.assert_array_equal(cm(q, kc, other, kn, vn).numpy(), base)
    assert np.abs(cm(q, kc, vc, kn, vn + 1.0).numpy() - base).max() > 1e-3


def test_eager_op_equals_the_models_attention() -> None:
    from msd.compiler.models.llama import softmax_last

    q, kc, vc, kn, vn = _inputs(9, 1, 3, 3, 64, 2, seed=1)
    kd = torch.cat([kc[:, 1].movedim(0, 2), kn], dim=2)
    vd = torch.cat([vc[:, 1].movedim(0, 2), vn], dim=2)
    want = torch.einsum("bhgt,bhtd->bhgd", softmax_last(torch.einsum("bhgd,bhtd->bhgt", q, kd)), vd)
    torch.testing.assert_close(decode_attention(q, kc, vc, kn, vn, 1), want, rtol=1e-6, atol=1e-6)


def test_targets_without_the_kernel_get_the_reference_ops() -> None:
    shape = (1, 2, 2, 32, 2)
    assert "torch.msd.decode_attention" in _compile(0, shape, emit="torch")
    text = _compile(0, shape, target="vulkan-spirv", emit="torch")
    assert "torch.msd.decode_attention" not in text and "torch.aten.exp" in text


def test_head_dim_not_a_multiple_of_the_block_is_an_error() -> None:
    with pytest.raises((OptionError, msd.CompileError), match=f"head dim 24 is not a multiple of {BLOCK}"):
        _compile(0, (1, 2, 2, 24, 2), emit="linalg")


# ------------------------------------------------------------------ sequences of their own lengths
class _Ragged(torch.nn.Module):
    def __init__(self, layer: int, int8: bool) -> None:
        super().__init__()
        self.layer, self.int8 = layer, int8

    def forward(self, *args):
        op = torch.ops.msd.decode_attention_ragged_int8 if self.int8 else torch.ops.msd.decode_attention_ragged
        return op(*args, self.layer)


def _ragged64(q, kd, vd, lengths: list[int], t: int) -> np.ndarray:
    """float64 attention per sequence ``b`` over its first ``lengths[b]`` cached keys and the new one
    (``kd``/``vd`` ``[B, H, T + 1, D]``, float64)."""
    out = np.zeros(q.shape)
    for b, n in enumerate(lengths):
        keep = [*range(n), t]
        s = np.einsum("hgd,htd->hgt", q[b], kd[b][:, keep])
        p = np.exp(s - s.max(-1, keepdims=True))
        out[b] = np.einsum("hgt,htd->hgd", p / p.sum(-1, keepdims=True), vd[b][:, keep])
    return out


RAGGED_CASES = {4: ((37, [0, 7, 16, 37]), (130, [130, 1, 64, 95]), (1, [1, 0, 0, 1])),
                2: ((37, [0, 37]), (130, [17, 130]), (1, [1, 0]))}


@pytest.mark.parametrize("int8", [False, True], ids=["f32", "int8"])
@pytest.mark.parametrize("shape", [(4, 2, 3, 32, 3), (2, 1, 2, 64, 2)], ids=["4seq", "2seq-4splits"])
def test_ragged_kernel_reads_each_sequence_up_to_its_length(int8: bool, shape) -> None:
    """Sequences sharing a cache view of T rows, each with its own length (0, inside a block, a block
    edge, T), in one and in several splits per head: the kernel against float64 attention over each
    sequence's own rows and new token.  Rows past a sequence's length hold large values, so reading one
    would show as O(1) errors."""
    (b, h, g, d, layers), layer = shape, 1
    splits = max(1, -(-8 // (b * h)))
    t_dim = torch.export.Dim("T", min=1, max=4096)
    make = _int8_inputs if int8 else _inputs
    lengths0 = torch.tensor([0, 3, 5, 5][:b])
    example = (*make(5, b, h, g, d, layers, seed=0), lengths0)
    cached = (1, 2, 3, 4) if int8 else (1, 2)
    dyn = tuple({0: t_dim} if i in cached else None for i in range(len(example)))
    cm = msd.compile(_Ragged(layer, int8), example, dynamic_shapes=(dyn,))  # forward(*args): one entry
    text = msd.compile(_Ragged(layer, int8), example, dynamic_shapes=(dyn,), emit="linalg")
    assert f"@msd_decode_attention_b{b}_h{h}_g{g}_d{d}_l{layers}_s{splits}{'_i8' if int8 else ''}_r" in text
    for t, lengths in RAGGED_CASES[b]:
        args = list(make(t, b, h, g, d, layers, seed=t))
        if int8:
            q, kc, ks, vc, vs, kn, kns, vn, vns = args
            for i, n in enumerate(lengths):  # codes past the end of a sequence: huge scales
                ks[n:, :, i] = 1e3
                vs[n:, :, i] = 1e3
            kd = np.concatenate([(kc.double() * ks.double().unsqueeze(-1))[:, layer].permute(1, 2, 0, 3).numpy(),
                                 (kn.double() * kns.double().unsqueeze(-1)).numpy()], axis=2)
            vd = np.concatenate([(vc.double() * vs.double().unsqueeze(-1))[:, layer].permute(1, 2, 0, 3).numpy(),
                                 (vn.double() * vns.double().unsqueeze(-1)).numpy()], axis=2)
            scale, tol = float((vc.abs().amax() * vs[:, :, :].clamp(max=1.0).amax()).item()), 1e-5
        else:
            q, kc, vc, kn, vn = args
            for i, n in enumerate(lengths):
                kc[n:, :, i] = 1e3
                vc[n:, :, i] = 1e3
            kd = np.concatenate([kc[:, layer].double().permute(1, 2, 0, 3).numpy(), kn.double().numpy()], axis=2)
            vd = np.concatenate([vc[:, layer].double().permute(1, 2, 0, 3).numpy(), vn.double().numpy()], axis=2)
            scale, tol = float(max(vc.clamp(max=100).abs().max(), vn.abs().max())), 2e-6
        lens = torch.tensor(lengths)
        got = cm(*args, lens).numpy()
        want = _ragged64(q.double().numpy(), kd, vd, lengths, t)
        err = float(np.abs(got - want).max())
        assert err <= tol * scale, f"T={t}, lengths {lengths}: max error {err:.3g}"
        eager = _Ragged(layer, int8)(*args, lens).double().numpy()
        assert float(np.abs(eager - want).max()) <= tol * scale, "the eager op is the same attention"


def test_ragged_lengths_equal_to_the_view_match_the_plain_kernel() -> None:
    """With every length equal to the cache view's rows, the ragged op is :func:`decode_attention`."""
    q, kc, vc, kn, vn = _inputs(21, 2, 2, 2, 32, 2, seed=3)
    want = decode_attention(q, kc, vc, kn, vn, 1)
    got = torch.ops.msd.decode_attention_ragged(q, kc, vc, kn, vn, torch.tensor([21, 21]), 1)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
