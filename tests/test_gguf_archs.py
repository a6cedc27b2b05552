"""GGUF architectures beside llama: qwen2 (q/k/v biases) and qwen3 (per-head q/k RMSNorm), both with
"NEOX" RoPE (halves of a head rotated together).  A tiny random model of each is built with Hugging
Face transformers (the reference implementation of those families), written to GGUF as llama.cpp's
converter names and lays out its tensors, read by msd, and its logits compared with transformers'
(f32 weights: the same function to f32 rounding); then the same file with Q8_0 projections compiles
with every linear rewritten and generates the eager model's tokens.  An unknown architecture is
refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the GGUF front end needs the 'gguf' package")
transformers = pytest.importorskip("transformers", reason="the HF reference needs 'transformers' (test extra)")

from test_gguf import finish  # noqa: E402

from msd.compiler.models import gguf as G  # noqa: E402
from msd.errors import UnsupportedGGUFError  # noqa: E402

Q = gguf.GGMLQuantizationType
CFG = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0, rms_norm_eps=1e-6,
           tie_word_embeddings=False)
# HF parameter name (per layer) → llama.cpp tensor name
LAYER_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
               "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}


def _hf_model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**CFG))
    else:
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**CFG, head_dim=16))
    with torch.no_grad():  # non-trivial norms and biases (they start as ones and zeros)
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def _gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, i, rest = hf.split(".", 3)  # model.layers.<i>.<module>.<weight|bias>
    module, kind = rest.rsplit(".", 1)
    return f"blk.{i}.{LAYER_NAMES[module]}.{kind}"


def _halves_to_pairs(w: np.ndarray, head_dim: int) -> np.ndarray:
    """llama.cpp's converter's q/k row order for llama files: each head's rows (halves, as HF rotates
    them) interleaved into adjacent pairs."""
    n = w.shape[0]
    return w.reshape(n // head_dim, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_header(w: gguf.GGUFWriter, c: object, rope_theta: float) -> int:
    """The metadata llama.cpp's converter writes from an HF config ``c`` (block count, sizes, heads,
    RoPE base, norm epsilon) → the head dim."""
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    return head_dim


def write_gguf(model: torch.nn.Module, arch: str, path: Path, projections: Q = Q.F32) -> Path:
    """The HF model as llama.cpp's converter writes it for ``arch``: for llama, q/k rows interleaved
    into pairs and Llama 3's RoPE scaling as ``rope_freqs.weight``; for qwen, as they are (NEOX)."""
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    head_dim = hf_header(w, c, float(c.rope_theta if hasattr(c, "rope_theta") else c.rope_parameters["rope_theta"]))
    for name, p in model.state_dict().items():
        data = p.detach().to(torch.float32).numpy()
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            data = _halves_to_pairs(data, head_dim)
        qtype = projections if data.ndim == 2 and "embed" not in name else Q.F32
        if qtype == Q.F32:
            w.add_tensor(_gguf_name(name), data)
        else:
            w.add_tensor(_gguf_name(name), gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    rotary = model.model.rotary_emb
    if arch == "llama" and getattr(rotary, "rope_type", "default") != "default":  # the scaled frequencies
        base = 1.0 / (c.rope_parameters["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim))
        w.add_tensor("rope_freqs.weight", (base / rotary.inv_freq.float()).numpy().astype(np.float32))
    finish(w)
    return path


def _llama3() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**{**CFG, "max_position_embeddings": 256}, rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    return transformers.LlamaForCausalLM(cfg).eval()


def test_llama3_rope_scaling_equals_transformers(tmp_path: Path) -> None:
    """Llama 3's scaled RoPE frequencies, read from ``rope_freqs.weight``: logits equal to transformers'
    (at positions past the original context, where the scaling matters)."""
    hf = _llama3()
    model = G.load_gguf(write_gguf(hf, "llama", tmp_path / "l3.gguf"))
    factors = model.cfg.rope_freq_factors
    assert factors is not None and len(factors) == 8 and max(factors) == 8.0 and min(factors) < 8.0
    ids = torch.randint(0, CFG["vocab_size"], (1, 48), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_logits_equal_transformers(arch: str, tmp_path: Path) -> None:
    hf = _hf_model(arch)
    model = G.load_gguf(write_gguf(hf, arch, tmp_path / f"{arch}.gguf"))
    assert model.cfg.arch == arch and model.cfg.qkv_bias == (arch == "qwen2") and model.cfg.qk_norm == (arch == "qwen3")
    ids = torch.randint(0, CFG["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(input_ids=ids).logits
        got = model(ids)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        # and through the KV-cache step (prefill, then one token at a time)
        logits, *cache = model.step(ids[:1, :10], last_only=False)
        torch.testing.assert_close(logits[0], want[0, :10], rtol=1e-4, atol=1e-4)
        for j in range(10, 14):
            logits, *new = model.step(ids[:1, j:j + 1], *cache)
            cache = [torch.cat([c, n]) for c, n in zip(cache, new)]
            torch.testing.assert_close(logits[0], want[0, j], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_quantized_file_compiles_and_decodes_like_eager(arch: str, tmp_path: Path) -> None:
    import msd
    from msd.compiler.llm.generate import CachedStep

    path = write_gguf(_hf_model(arch), arch, tmp_path / f"{arch}.gguf", projections=Q.Q8_0)
    model = G.load_gguf(path)
    ids = torch.randint(0, CFG["vocab_size"], (1, 12), generator=torch.Generator().manual_seed(2))
    step = CachedStep(model, kernels=True)
    cm = msd.compile(step, (ids,), dynamic_shapes=({1: torch.export.Dim("S", min=1, max=64)},))
    # per layer q/k/v (one Q8_0 linear: projections of one type are fused), o, gate/up (one), down; the head
    assert len(cm.report.rewritten) == 2 * 4 + 1 and not cm.report.skipped, cm.report.format()
    logits = cm(ids)[0]
    with torch.no_grad():
        want = step(ids)[0]
    assert float((logits - want).abs().max()) <= 5e-4 * float(want.abs().max())
    assert torch.equal(logits.argmax(-1), want.argmax(-1))


def test_other_architectures_are_refused_by_name(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(str(tmp_path / "g.gguf"), "gemma2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 16), np.float32))
    finish(w)
    with pytest.raises(UnsupportedGGUFError, match="GGUF architecture 'gemma2' is not supported .supported: llama, "
                                                   "qwen2, qwen3, gemma3."):
        G.load_gguf(tmp_path / "g.gguf")


QWEN_TEMPLATE = (  # ChatML as Qwen files write it (Jinja)
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _tiny_with_template(path: Path, template: str | None) -> Path:
    from test_gguf import write_tiny_gguf

    write_tiny_gguf(path)
    if template is None:
        return path
    r = gguf.GGUFReader(str(path))  # copy the file with the template added
    w = gguf.GGUFWriter(str(path.with_suffix(".t.gguf")), "llama")
    for field in r.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        w.add_key_value(field.name, field.contents(), field.types[0],
                        field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None)
    w.add_chat_template(template)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    finish(w)
    return path.with_suffix(".t.gguf")


def test_chat_template_from_the_file_is_rendered_with_jinja(tmp_path: Path) -> None:
    from msd.compiler.llm.generate import eager_generator
    from msd.errors import GGUFError

    gen = eager_generator(_tiny_with_template(tmp_path / "a.gguf", QWEN_TEMPLATE), 32)
    assert gen.render("Hi {there}") == "<|im_start|>user\nHi {there}<|im_end|>\n<|im_start|>assistant\n"
    assert gen.settings().chat_template == "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    default = eager_generator(_tiny_with_template(tmp_path / "b.gguf", None), 32)
    assert default.render("Hi") == G.chat_prompt("Hi")  # no template in the file: ChatML as SmolLM2's
    broken = eager_generator(_tiny_with_template(tmp_path / "c.gguf", "{% for m in messages %}{{ m['content'] "), 32)
    with pytest.raises(GGUFError, match="tokenizer.chat_template does not render"):
        broken.render("Hi")
    twice = eager_generator(_tiny_with_template(tmp_path / "d.gguf", "{{ messages[0]['content'] * 2 }}"), 32)
    with pytest.raises(GGUFError, match="exactly once"):
        twice.render("Hi")
