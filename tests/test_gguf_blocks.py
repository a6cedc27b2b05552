"""GGUF block formats beyond Q8_0/Q4_0/Q4_1: Q5_0, Q5_1 and the K-quants Q4_K, Q5_K, Q6_K (what
Q4_K_M / Q5_K_M files mix).  Each is read into the pass's group-wise form (codes, a scale per group,
an offset or an integer zero) whose plain-torch dequantization must equal gguf-py's, bit for bit, on
random blocks; a tiny Llama whose projections use them compiles with every linear rewritten (the
4-bit K codes kept as nibbles, Q6_K in groups of 16) and generates the eager model's tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the GGUF front end needs the 'gguf' package")
pytest.importorskip("tokenizers", reason="the GGUF tokenizer needs the 'tokenizers' package")

from test_gguf import RANDOM_BLOCKS, random_blocks, write_tiny_gguf  # noqa: E402

from msd.compiler.models import gguf as G  # noqa: E402
from msd.errors import UnsupportedGGUFError  # noqa: E402

Q = gguf.GGMLQuantizationType
NEW_TYPES = [Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K]


def _blocks(qtype: Q, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    if qtype in RANDOM_BLOCKS:
        return random_blocks(qtype, shape, rng)
    return gguf.quants.quantize((rng.standard_normal(shape) * 0.3).astype(np.float32), qtype)


@pytest.mark.parametrize("qtype", NEW_TYPES, ids=lambda q: q.name)
def test_block_type_dequantizes_exactly_as_gguf(qtype: Q) -> None:
    """Random blocks (every code, sub-scale and min bit pattern) of 3 rows × 512: the codes stay in
    their width, the groups are 32 (16 for Q6_K), and scale·(q − zero) + offset in f32 equals gguf-py's
    dequantization exactly (and its float64 value to f32 rounding)."""
    rng = np.random.default_rng(int(qtype))
    raw = _blocks(qtype, (3, 512), rng)
    t = G.unpack_blocks("w", qtype.name, raw, (3, 512))
    want = gguf.quants.dequantize(raw, qtype).reshape(3, 512)
    got = G.dequantize_codes(qtype.name, t.codes, t.scale, t.offset).numpy()
    np.testing.assert_array_equal(got, want)
    bits = {"Q5_0": 5, "Q5_1": 5, "Q4_K": 4, "Q5_K": 5, "Q6_K": 6}[qtype.name]
    assert t.codes.dtype == torch.uint8 and int(t.codes.max()) < 2**bits
    assert t.scale.shape == (3, 512 // (16 if qtype == Q.Q6_K else 32))
    assert (t.offset is not None) == (qtype in (Q.Q5_1, Q.Q4_K, Q.Q5_K))
    # float64: (scale·(q − zero) + offset) with the same f32 scale and offset
    q64 = t.codes.double().reshape(3, -1, 512 // t.scale.shape[1]) - G.ZERO.get(qtype.name, 0)
    w64 = q64 * t.scale.double().unsqueeze(-1) + (0 if t.offset is None else t.offset.double().unsqueeze(-1))
    np.testing.assert_allclose(got, w64.reshape(3, 512).numpy(), rtol=2e-7, atol=1e-12)
    if qtype == Q.Q4_K:  # re-packed as nibbles in msd's order, which unpack to the same codes
        from msd.compiler.quant.quantize import unpack_int4

        assert torch.equal(unpack_int4(t.packed, "halves"), t.codes)


def test_bf16_reads_exactly() -> None:
    rng = np.random.default_rng(7)
    raw = gguf.quants.quantize(rng.standard_normal((3, 64)).astype(np.float32), Q.BF16)
    t = G.unpack_blocks("w", "BF16", raw, (3, 64))
    assert t.weight.dtype == torch.bfloat16
    np.testing.assert_array_equal(t.weight.float().numpy(), gguf.quants.dequantize(raw, Q.BF16).reshape(3, 64))
    lin = G.GGUFLinear(t)
    x = torch.randn(2, 64)
    torch.testing.assert_close(lin(x), x @ t.weight.float().T)


def test_other_block_types_are_refused_by_name() -> None:
    with pytest.raises(UnsupportedGGUFError, match="GGML type Q2_K, which msd's GGUF front end does not support"):
        G.unpack_blocks("w", "Q2_K", np.zeros((1, 84), np.uint8), (1, 256))


K_LAYER = [{"attn_q": Q.Q4_K, "attn_k": Q.Q5_K, "attn_v": Q.Q6_K, "attn_output": Q.Q5_0,
            "ffn_gate": Q.Q5_1, "ffn_up": Q.Q4_K, "ffn_down": Q.Q6_K}]


def test_a_model_of_these_blocks_compiles_and_generates_like_eager(tmp_path) -> None:
    from msd.compiler.llm.generate import compile_generator, eager_generator

    path = write_tiny_gguf(tmp_path / "k.gguf", hidden=256, ffn=512, layer_types=K_LAYER, seed=5)
    model = G.load_gguf(path)
    gen = compile_generator(path, slices=2, max_ctx=48, model=model)
    report = gen.compiled.report
    assert not report.skipped and len(report.rewritten) == 2 * 8, report.format()  # 7 + the tied head, 2 steps
    reasons = [d.reason for d in report.rewritten]
    assert sum("4-bit weight codes, two per byte" in r for r in reasons) == 2 * 2, reasons  # the Q4_K ones
    assert sum("K in groups of 16" in r for r in reasons) == 2 * 2, reasons  # the Q6_K ones
    eager = eager_generator(path, 48, model=model)
    for prompt in ([5, 200, 17, 42], [9, 8, 7, 6, 5, 4, 3, 2, 1]):
        assert gen.generate_ids(prompt, 8) == eager.generate_ids(prompt, 8)


@pytest.mark.parametrize("qtype", [Q.Q5_0, Q.Q5_1, Q.Q5_K, Q.Q6_K], ids=lambda q: q.name)
def test_wide_codes_are_centred_on_their_range(qtype: Q) -> None:
    """5- and 6-bit codes sit one per byte; the pass must see their width (not a whole byte) to centre
    the integer dot on the middle of their range (16 / 32): centred on 128 instead, the activation
    slices' rounding error is multiplied by |q − 128|.  One slice of a linear with an outlier channel:
    the error stays within 1.5× that of quantizing the activation to int8 per group of 32 in float
    (llama.cpp's Q8 activation blocks; measured 0.9–1.0×, and 10× when centred on 128), and two
    slices are ≥ 50× better again."""
    import msd

    rng = np.random.default_rng(int(qtype))
    t = G.unpack_blocks("w", qtype.name, _blocks(qtype, (96, 512), rng), (96, 512))
    lin = G.GGUFLinear(t)
    x = torch.from_numpy(rng.standard_normal((4, 512)).astype(np.float32))
    x[:, 7] *= 30
    xg = x.reshape(4, -1, 32)
    s = xg.abs().amax(-1, keepdim=True) / 127
    with torch.no_grad():
        exact, q8 = lin(x), lin((torch.round(xg / s) * s).reshape(4, 512))
    bound = float((q8 - exact).abs().max())
    one, two = (msd.compile(lin, (x,), slices=n) for n in (1, 2))
    centre = {5: 16, 6: 32}[G.CODE_BITS[qtype.name]]
    assert f"unsigned weight as q-{centre}" in one.report.rewritten[0].reason, one.report.format()
    assert float((one(x) - exact).abs().max()) <= 1.5 * bound
    assert float((two(x) - exact).abs().max()) <= bound / 50
