"""The f16 KV cache (``kv_cache="f16"``, ``msd compile --kv-cache f16``): keys and values stored in half
the bytes of f32 (llama.cpp's default cache type), attended as f32 by msd's decode kernels (the rows
read as f16 and widened).  The kernel against float64 attention over the stored f16 values (plain and
ragged), and a compiled generator against the same steps in eager torch: teacher-forced logits, greedy
tokens, and the saved artifact run torch-free."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_attention_kernels import LENGTHS, _inputs, _reference64

import msd

SHAPE, LAYER = (1, 3, 3, 64, 4), 2


class _Decode(torch.nn.Module):
    def forward(self, q, kc, vc, kn, vn):
        return torch.ops.msd.decode_attention(q, kc, vc, kn, vn, LAYER)


def _f16(args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    q, *kv = args
    return (q, *(t.to(torch.float16) for t in kv))


def test_decode_kernel_reads_an_f16_cache() -> None:
    """Error ≤ 2e-6 · max|v| against float64 attention over the f16 values themselves (the kernel widens
    them exactly; the f16 rounding is the cache's, not the kernel's)."""
    t = torch.export.Dim("T", min=1, max=4096)
    cm = msd.compile(_Decode(), _f16(_inputs(5, *SHAPE, seed=0)),
                     dynamic_shapes=(None, {0: t}, {0: t}, None, None))
    assert any(d.rewritten and d.reason.endswith("_f16 (layer 2)") for d in cm.attention.decisions), \
        cm.attention.format()
    for n in LENGTHS:
        args = _f16(_inputs(n, *SHAPE, seed=n))
        want = _reference64(*(a.to(torch.float32) for a in args), LAYER)
        err = float(np.abs(cm(*args).numpy() - want).max())
        assert err <= 2e-6 * float(args[2].float().abs().max()), f"T={n}: max error {err:.3g}"
        eager = _Decode()(*args).double().numpy()
        assert float(np.abs(eager - want).max()) <= 2e-6 * float(args[2].float().abs().max())


def test_f16_generator_compiles_and_follows_eager(tmp_path) -> None:
    pytest.importorskip("gguf", reason="the GGUF front end needs the 'gguf' package")
    from test_gguf import write_tiny_gguf

    from msd.compiler.llm.generate import compile_generator, eager_generator
    from msd.runtime.generate import TextGenerator

    path = write_tiny_gguf(tmp_path / "tiny.gguf", seed=5)
    gen = compile_generator(path, slices=2, max_ctx=32, score=True, kv_cache="f16")
    assert all(dt == np.float16 for _, dt in gen.cache_entries())
    ref = eager_generator(path, 32, model=gen.model, kv_cache="f16")
    ids = [5, 200, 17, 262, 42, 99, 3, 150, 7, 11, 64, 9, 30]
    want, got = ref.next_token_logits(ids, chunk=5), gen.next_token_logits(ids, chunk=5)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-3  # slices=2, as the f32 cache
    f32 = eager_generator(path, 32, model=gen.model).next_token_logits(ids, chunk=5)
    assert 0 < float((want - f32).abs().max()) < 1e-2 * float(f32.abs().max())  # rounded, but barely
    greedy = ref.generate_ids(ids[:4], 8)
    assert gen.generate_ids(ids[:4], 8) == greedy
    art = gen.save(tmp_path / "art")
    loaded = TextGenerator.load(art)
    assert loaded.settings.kv_cache == "f16" and loaded.generate_ids(ids[:4], 8) == greedy
