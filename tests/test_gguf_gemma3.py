"""The gemma3 GGUF architecture and SentencePiece-style ("llama") GGUF vocabularies.

A tiny random Gemma 3 (transformers' ``Gemma3ForCausalLM``, the reference implementation: embedding
scaled by √hidden, GeGLU, q/k RMSNorm, pre- and post-norms, five sliding-window layers of every six with
their own RoPE base) is written to GGUF as llama.cpp's converter writes it (norm weights + 1, tied
output), with a small SentencePiece vocabulary; msd's logits equal transformers' over a prompt longer
than the window, the compiled prefill + decode (msd's attention kernels with the window) generate the
eager model's tokens.  The SentencePiece tokenizer is checked against the ``sentencepiece`` library on a
BPE model it trains here, written to GGUF as llama.cpp's converter writes one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the GGUF front end needs the 'gguf' package")
transformers = pytest.importorskip("transformers", reason="the HF reference needs 'transformers' (test extra)")
spm = pytest.importorskip("sentencepiece", reason="the tokenizer reference needs 'sentencepiece' (test extra)")

from test_gguf import finish  # noqa: E402
from test_gguf_archs import hf_header  # noqa: E402

from msd.compiler.models import gguf as G  # noqa: E402

Q = gguf.GGMLQuantizationType
WINDOW = 8
# llama.cpp's names for Gemma 3's per-layer tensors (HF module → GGUF)
NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
         "input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
         "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm"}
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
CHARS = list("\u2581abcdefghijklmnopqrstuvwxyz.,!?\n")


def _vocab(n: int) -> tuple[list[str], list[float], list[int]]:
    """Specials, byte tokens, characters, then joined pieces up to ``n`` tokens (scores: −rank)."""
    tokens = SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + CHARS
    pieces = ["\u2581t", "he", "\u2581the", "in", "\u2581a", "er", "on", "\u2581s", "at", "\u2581w"]
    tokens += pieces[: max(0, n - len(tokens))]
    types = [3] * len(SPECIALS) + [6] * 256 + [1] * (len(tokens) - len(SPECIALS) - 256)
    types[SPECIALS.index("<start_of_turn>")] = types[SPECIALS.index("<end_of_turn>")] = 4
    return tokens, [0.0] * (len(SPECIALS) + 256) + [-float(i) for i in range(len(tokens) - len(SPECIALS) - 256)], types


def _hf_gemma3(vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=128, sliding_window=WINDOW,
        query_pre_attn_scalar=16, rms_norm_eps=1e-6)
    model = transformers.Gemma3ForCausalLM(cfg)
    with torch.no_grad():  # non-trivial norms (they start as zeros: a scale of 1)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def write_gemma3(model: torch.nn.Module, path: Path, projections: Q = Q.F32) -> Path:
    c = model.config
    tokens, scores, types = _vocab(c.vocab_size)
    w = gguf.GGUFWriter(str(path), "gemma3")
    hf_header(w, c, c.rope_parameters["full_attention"]["rope_theta"])
    w.add_uint32("gemma3.attention.sliding_window", c.sliding_window)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    for name, p in model.state_dict().items():
        if name == "lm_head.weight":  # tied
            continue
        data = p.detach().to(torch.float32).numpy()
        if name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        else:
            _, _, i, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            out = f"blk.{i}.{NAMES[module]}.{kind}"
        if "norm" in name:  # llama.cpp's converter stores Gemma's (1 + w)
            data = data + 1.0
        qtype = projections if data.ndim == 2 and "embed" not in name else Q.F32
        if qtype == Q.F32:
            w.add_tensor(out, data)
        else:
            w.add_tensor(out, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    finish(w)
    return path


@pytest.fixture(scope="module")
def hf() -> torch.nn.Module:
    return _hf_gemma3(len(_vocab(10_000)[0]))


def test_gemma3_config_from_metadata(hf, tmp_path: Path) -> None:
    cfg = G.read_config(write_gemma3(hf, tmp_path / "g.gguf"))
    assert cfg.arch == "gemma3" and cfg.qk_norm and cfg.post_norms and cfg.activation == "gelu_tanh"
    assert cfg.sliding_window == WINDOW and cfg.sliding_layers == (0, 1, 2, 3, 4)
    assert cfg.rope_base == 1e6 and cfg.rope_base_local == 1e4 and cfg.embed_scale == pytest.approx(8.0)


def test_gemma3_logits_equal_transformers(hf, tmp_path: Path) -> None:
    """Full sequence and through the KV-cache step, at positions past the window (where it matters:
    without it the sliding layers would see every key)."""
    model = G.load_gguf(write_gemma3(hf, tmp_path / "g.gguf"))
    ids = torch.randint(0, hf.config.vocab_size, (2, 3 * WINDOW), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(input_ids=ids).logits
        torch.testing.assert_close(model(ids), want, rtol=1e-4, atol=1e-4)
        logits, *cache = model.step(ids[:1, :WINDOW + 3], last_only=False)
        torch.testing.assert_close(logits[0], want[0, :WINDOW + 3], rtol=1e-4, atol=1e-4)
        for j in range(WINDOW + 3, 3 * WINDOW):
            logits, *new = model.step(ids[:1, j:j + 1], *cache)
            cache = [torch.cat([c, n]) for c, n in zip(cache, new)]
            torch.testing.assert_close(logits[0], want[0, j], rtol=1e-4, atol=1e-4)
        for blk in model.blocks:  # the window is what makes them equal
            blk.attn.window = 0
        assert not torch.allclose(model(ids)[:, WINDOW:], want[:, WINDOW:], rtol=1e-3, atol=1e-3)


def test_gemma3_compiled_generates_the_eager_tokens(hf, tmp_path: Path) -> None:
    """Q8_0 projections; prefill of a prompt longer than the window, then decode across it, through
    msd's prefill and decode attention kernels with the window (the int8 cache's windowed kernel is
    checked against float64 in tests/test_sliding_window.py)."""
    from msd.compiler.llm.generate import compile_generator, eager_generator

    path = write_gemma3(hf, tmp_path / "g8.gguf", projections=Q.Q8_0)
    prompt = [2, *torch.randint(6, hf.config.vocab_size, (WINDOW + 5,),
                                generator=torch.Generator().manual_seed(2)).tolist()]
    for kv in ("float",):
        gen = compile_generator(path, max_ctx=64, kv_cache=kv)
        assert sum(f"_w{WINDOW}" in d.reason for d in gen.compiled.attention.decisions) >= 2, \
            gen.compiled.attention.format()
        want = eager_generator(path, max_ctx=64, model=gen.model, kv_cache=kv).generate_ids(prompt, 2 * WINDOW)
        assert gen.generate_ids(prompt, 2 * WINDOW) == want


def test_gemma3_chat_without_template_uses_gemma_turns_and_one_bos(hf, tmp_path: Path) -> None:
    path = write_gemma3(hf, tmp_path / "g.gguf")
    text = G.chat_template(path, "hi")
    assert text == "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    ids = G.tokenizer_from_gguf(path).encode(text).ids
    assert ids[0] == 2 and ids.count(2) == 1 and ids[1] == SPECIALS.index("<start_of_turn>")


# ------------------------------------------------------------------------- SentencePiece vocabularies
TRAIN = "\n".join(__import__("pydoc_data.topics", fromlist=["topics"]).topics[k] for k in ("naming", "exceptions"))
HELD_OUT = [__import__("pydoc_data.topics", fromlist=["topics"]).topics["execmodel"][:3000],
            "Hello  world!\n\n  spaced   out\tand tabs", "ünïcödé 日本語 🙂 x", " leading space", "12345 3.14159", ""]


def _sentencepiece_gguf(tmp_path: Path, dummy_prefix: bool) -> tuple[object, Path]:
    """A BPE model trained by sentencepiece (no normalization, byte fallback) and its vocabulary as
    llama.cpp's converter writes it: pieces, scores, types, add_space_prefix from the model."""
    (tmp_path / "train.txt").write_text(TRAIN)
    prefix = str(tmp_path / f"sp{int(dummy_prefix)}")
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "train.txt"), model_prefix=prefix, vocab_size=600, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=dummy_prefix, minloglevel=2, user_defined_symbols=["<start_of_turn>"])
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i)
                     else 6 if sp.is_byte(i) else 4 if sp.id_to_piece(i) == "<start_of_turn>" else 1)
    w = gguf.GGUFWriter(str(tmp_path / f"v{int(dummy_prefix)}.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_space_prefix(dummy_prefix)
    finish(w)
    return sp, tmp_path / f"v{int(dummy_prefix)}.gguf"


@pytest.mark.parametrize("dummy_prefix", [True, False], ids=["llama-style", "gemma-style"])
def test_sentencepiece_vocabulary_encodes_as_sentencepiece(dummy_prefix: bool, tmp_path: Path) -> None:
    sp, path = _sentencepiece_gguf(tmp_path, dummy_prefix)
    tok = G.tokenizer_from_gguf(path)
    for text in HELD_OUT:
        want = sp.encode(text)
        assert tok.encode(text, add_special_tokens=False).ids == want, repr(text[:40])
        assert tok.encode(text).ids == [sp.bos_id(), *want]  # add_bos_token defaults to true for "llama"
        assert tok.decode(want) == sp.decode(want)
    assert "\u2581" not in tok.decode(tok.encode("a b").ids)
    # a user-defined token: one id, matched in the raw text, and kept as text when decoding
    ids = tok.encode("x<start_of_turn>y", add_special_tokens=False).ids
    assert sp.piece_to_id("<start_of_turn>") in ids
    assert "<start_of_turn>" in tok.decode(ids, skip_special_tokens=True)


def test_qwen2_pre_tokenizer_splits_digits_one_by_one(tmp_path: Path) -> None:
    from test_gguf import write_tiny_gguf

    path = write_tiny_gguf(tmp_path / "q.gguf")
    r = gguf.GGUFReader(str(path))
    w = gguf.GGUFWriter(str(tmp_path / "q2.gguf"), "llama")
    for field in r.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "tokenizer.ggml.pre"):
            continue
        w.add_key_value(field.name, field.contents(), field.types[0],
                        field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None)
    w.add_tokenizer_pre("qwen2")
    finish(w)
    tok = G.tokenizer_from_gguf(tmp_path / "q2.gguf")
    pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str("abc 2024, it's")]
    assert pieces[:5] == ["abc", "Ġ", "2", "0", "2"] and "'s" in pieces, pieces


def test_unknown_tokenizer_model_is_refused_by_name(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    w.add_tokenizer_model("rwkv")
    w.add_token_list(["a", "b"])
    finish(w)
    with pytest.raises(G.UnsupportedGGUFError, match="tokenizer.ggml.model='rwkv' is not supported"):
        G.tokenizer_from_gguf(tmp_path / "t.gguf")
