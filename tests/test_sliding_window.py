"""Sliding-window attention (Gemma 3's local layers: a query at position ``p`` attends to keys ``p −
window + 1 … p``): msd's decode and prefill attention kernels with a ``window`` compiled through IREE
for this CPU against a float64 reference over lengths around the window and the kernels' block of 16
keys (f32 and int8 caches, sequences of their own lengths), the eager ops against the same reference,
and the model's masks (full-sequence, KV-cache step, fused kernels) against each other."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_attention_kernels import _inputs, _int8_inputs

import msd
from msd.passes.attention_kernels import BLOCK

WINDOW = 20  # not a multiple of the block: the first attended key falls inside a block
LENGTHS = (1, 5, WINDOW - 2, WINDOW - 1, WINDOW, WINDOW + 1, 2 * BLOCK + 3, 3 * BLOCK, 130)


def _attend64(q: np.ndarray, k: np.ndarray, v: np.ndarray, keep: list[int]) -> np.ndarray:
    s = np.einsum("...gd,...td->...gt", q, k[..., keep, :])
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("...gt,...td->...gd", p / p.sum(-1, keepdims=True), v[..., keep, :])


def _window_keys(n: int, window: int) -> list[int]:
    """The cached keys a query at position ``n`` (after ``n`` cached tokens) attends to besides its own."""
    return list(range(max(0, n + 1 - window), n))


class _Decode(torch.nn.Module):
    def __init__(self, op: str, layer: int) -> None:
        super().__init__()
        self.op, self.layer = op, layer

    def forward(self, *args):
        return getattr(torch.ops.msd, self.op)(*args, self.layer, WINDOW)


def _dense(args: list[torch.Tensor], int8: bool, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q and the keys/values ``[B, H, T + 1, D]`` (cached, then the new token's) in float64."""
    if int8:
        q, kc, ks, vc, vs, kn, kns, vn, vns = (x.double() for x in args)
        k = torch.cat([(kc * ks.unsqueeze(-1))[:, layer].permute(1, 2, 0, 3), kn * kns.unsqueeze(-1)], dim=2)
        v = torch.cat([(vc * vs.unsqueeze(-1))[:, layer].permute(1, 2, 0, 3), vn * vns.unsqueeze(-1)], dim=2)
    else:
        q, kc, vc, kn, vn = (x.double() for x in args)
        k = torch.cat([kc[:, layer].permute(1, 2, 0, 3), kn], dim=2)
        v = torch.cat([vc[:, layer].permute(1, 2, 0, 3), vn], dim=2)
    return q.numpy(), k.numpy(), v.numpy()


@pytest.mark.parametrize("int8", [False, True], ids=["f32", "int8"])
def test_decode_kernel_attends_to_the_window(int8: bool) -> None:
    """One sequence: the kernel (several splits per head) against float64 attention over the last
    ``window`` keys.  Keys before the window hold large values: reading one shows as an O(1) error."""
    shape, layer = (1, 2, 3, 32, 3), 1
    op = "decode_attention_int8" if int8 else "decode_attention"
    make = _int8_inputs if int8 else _inputs
    t_dim = torch.export.Dim("T", min=1, max=4096)
    example = make(5, *shape, seed=0)
    cached = (1, 2, 3, 4) if int8 else (1, 2)
    dyn = tuple({0: t_dim} if i in cached else None for i in range(len(example)))
    cm = msd.compile(_Decode(op, layer), example, dynamic_shapes=(dyn,))
    assert any(d.rewritten and f"_w{WINDOW}" in d.reason for d in cm.attention.decisions), cm.attention.format()
    for t in LENGTHS:
        args = list(make(t, *shape, seed=t))
        early = slice(0, max(0, t + 1 - WINDOW))
        if int8:
            args[2][early], args[4][early] = 1e3, 1e3  # huge scales before the window
        else:
            args[1][early], args[2][early] = 1e3, 1e3
        q, k, v = _dense(args, int8, layer)
        want = _attend64(q, k, v, [*_window_keys(t, WINDOW), t])
        scale = float(np.abs(v[..., [*_window_keys(t, WINDOW), t], :]).max())
        tol = 1e-5 if int8 else 2e-6
        got = cm(*args).numpy()
        assert float(np.abs(got - want).max()) <= tol * scale, f"T={t}"
        eager = _Decode(op, layer)(*args).double().numpy()
        assert float(np.abs(eager - want).max()) <= tol * scale, f"T={t}: the eager op"


@pytest.mark.parametrize("int8", [False, True], ids=["f32", "int8"])
def test_ragged_decode_kernel_attends_to_each_sequences_window(int8: bool) -> None:
    shape, layer = (3, 1, 2, 32, 2), 0
    op = "decode_attention_ragged_int8" if int8 else "decode_attention_ragged"
    make = _int8_inputs if int8 else _inputs
    t_dim = torch.export.Dim("T", min=1, max=4096)
    example = (*make(5, *shape, seed=0), torch.tensor([0, 3, 5]))
    cached = (1, 2, 3, 4) if int8 else (1, 2)
    dyn = tuple({0: t_dim} if i in cached else None for i in range(len(example)))
    cm = msd.compile(_Decode(op, layer), example, dynamic_shapes=(dyn,))
    for t, lengths in ((40, [0, WINDOW, 40]), (70, [19, 21, 70]), (3, [3, 1, 0])):
        args = list(make(t, *shape, seed=t))
        q, k, v = _dense(args, int8, layer)
        want = np.stack([_attend64(q[b], k[b], v[b], [*_window_keys(n, WINDOW), t]) for b, n in enumerate(lengths)])
        tol = (1e-5 if int8 else 2e-6) * float(np.abs(v).max())
        got = cm(*args, torch.tensor(lengths)).numpy()
        assert float(np.abs(got - want).max()) <= tol, f"T={t}, lengths {lengths}"
        eager = _Decode(op, layer)(*args, torch.tensor(lengths)).double().numpy()
        assert float(np.abs(eager - want).max()) <= tol, f"T={t}, lengths {lengths}: the eager op"


class _Prefill(torch.nn.Module):
    def forward(self, q, k, v):
        return torch.ops.msd.prefill_attention(q, k, v, WINDOW)


def test_prefill_kernel_attends_to_the_window() -> None:
    b, h, g, d = 1, 2, 2, 32
    gen = torch.Generator().manual_seed(0)
    example = (torch.randn(b, h, g, 5, d, generator=gen), torch.randn(b, h, 5, d, generator=gen),
               torch.randn(b, h, 5, d, generator=gen))
    n = torch.export.Dim("S", min=1, max=4096)
    cm = msd.compile(_Prefill(), example, dynamic_shapes=({3: n}, {2: n}, {2: n}))
    for s in (1, WINDOW - 1, WINDOW, WINDOW + 1, 2 * BLOCK + 7, 70):
        q, k, v = (torch.randn(b, h, g, s, d, generator=gen), torch.randn(b, h, s, d, generator=gen),
                   torch.randn(b, h, s, d, generator=gen))
        qd, kd, vd = (x.double().numpy() for x in (q, k, v))
        want = np.stack([_attend64(qd[:, :, :, i], kd, vd, [*_window_keys(i, WINDOW), i]) for i in range(s)], axis=3)
        tol = 2e-6 * float(v.abs().max())
        assert float(np.abs(cm(q, k, v).numpy() - want).max()) <= tol, f"S={s}"
        assert float(np.abs(_Prefill()(q, k, v).double().numpy() - want).max()) <= tol, f"S={s}: the eager op"
