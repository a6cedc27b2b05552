"""Hugging Face transformers models through ``msd.quantize`` → ``msd.compile``: ``BertModel`` (a
sentence-embedding forward with a padding mask) and ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` /
``Gemma3ForCausalLM`` (logits of a fixed-length batch), from small random configs, int8 per channel and
int4 in groups of 32 (BERT both; the causal LMs one each, both formats among them).  Their exported
graphs need msd's front-end fixes (``compiler/frontends/importable.py``: boolean mask ops,
``aten.diff``, ``no_grad`` regions); every linear must be rewritten and the output must match the
eager quantized model.

Bound: slices=2 errors measured 4e-5 … 1.2e-4 of the output's largest magnitude on these models,
slices=1 ~1e-2 (llama int8: 1.0e-2 against 4.3e-5); the bound 5e-4 is 20x below slices=1."""

from __future__ import annotations

import pytest
import torch

import msd

transformers = pytest.importorskip("transformers", reason="the HF model tests need 'transformers' (test extra)")

RELATIVE_BOUND = 5e-4
COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)
FORMATS = {"int8": dict(weights="int8"), "int4-g32": dict(weights="int4", group_size=32)}


class _Logits(torch.nn.Module):
    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids, use_cache=False).logits


class _Embedding(torch.nn.Module):
    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state


def _causal_lm(name: str) -> torch.nn.Module:
    t = transformers
    if name == "llama":
        return t.LlamaForCausalLM(t.LlamaConfig(**COMMON))
    if name == "qwen2":
        return t.Qwen2ForCausalLM(t.Qwen2Config(**COMMON))
    # a sliding-window layer (its own mask and RoPE base) and a full one
    return t.Gemma3ForCausalLM(t.Gemma3TextConfig(**COMMON, head_dim=16, sliding_window=8,
                                                  layer_types=["sliding_attention", "full_attention"]))


def _check(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], fmt: str, linears: int) -> None:
    q = msd.quantize(model.eval(), **FORMATS[fmt])
    cm = msd.compile(q, inputs, slices=2)
    assert len(cm.report.rewritten) == linears and not cm.report.skipped, cm.report.format()
    with torch.no_grad():
        ref = q(*inputs)
    err = float((cm(*inputs) - ref).abs().max())
    assert err <= RELATIVE_BOUND * float(ref.abs().max()), f"{fmt}: max error {err:.3g}"


# each causal LM with one format, both formats across them (a compile costs ~12 s of the suite)
@pytest.mark.parametrize(("name", "fmt"), [("llama", "int8"), ("qwen2", "int4-g32"), ("gemma3", "int4-g32")])
def test_causal_lm_logits_match_eager(name: str, fmt: str) -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, COMMON["vocab_size"], (2, 16))
    # 2 layers x (q, k, v, o, gate, up, down) + the head
    _check(_Logits(_causal_lm(name)), (ids,), fmt, 15)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_bert_sentence_embedding_with_padding_matches_eager(fmt: str) -> None:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64)
    ids = torch.randint(0, 100, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0  # the second sentence is padded
    # 2 layers x (q, k, v, attention output, intermediate, output)
    _check(_Embedding(transformers.BertModel(cfg)), (ids, mask), fmt, 12)


def test_the_fixes_leave_other_graphs_alone() -> None:
    """A graph without the patterns comes back as the same program; with them, its values are kept."""
    from msd.compiler.frontends.importable import importable

    class Masks(torch.nn.Module):
        def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            keep = m.new_ones((), dtype=torch.bool) & (m > 0) | (m.diff(prepend=m[:1]) < 0)
            return torch.where(keep, x, 0.0)

    plain = torch.export.export(torch.nn.Linear(4, 2), (torch.randn(1, 4),))
    assert importable(plain) is plain
    x, m = torch.randn(6), torch.tensor([0, 1, 2, 0, 5, 3])
    program = importable(torch.export.export(Masks(), (x, m)))
    ops = {n.target for n in program.graph.nodes if n.op == "call_function"}
    assert torch.ops.aten.__and__.Tensor not in ops and torch.ops.aten.diff.default not in ops
    assert torch.equal(program.module()(x, m), Masks()(x, m))
    assert torch.equal(msd.compile(Masks(), (x, m))(x, m), Masks()(x, m))
