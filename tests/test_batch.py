"""Several sequences in one artifact: ``compile_generator(batch=N)``'s ``decode_batch`` step (sequences
of their own lengths, ``LlamaModel.step(lengths=...)``), the runtime's :class:`SlotCache` and
``generate_ids_batch`` (continuous batching: more prompts than slots, a stopped sequence's slot reused).
Every batched generation must give each prompt exactly the tokens it gets alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("gguf", reason="the GGUF front end needs the 'gguf' package")
pytest.importorskip("tokenizers", reason="the GGUF tokenizer needs the 'tokenizers' package")

from test_gguf import write_tiny_gguf  # noqa: E402

from msd.compiler.llm.generate import compile_generator, eager_generator  # noqa: E402
from msd.compiler.models import gguf as G  # noqa: E402
from msd.errors import ArtifactError, OptionError  # noqa: E402
from msd.runtime.generate import SlotCache, TextGenerator  # noqa: E402

MAX_CTX = 48
SLOTS = 3
NEW = 8
# five prompts of different lengths (more than the slots: later ones wait for a free slot)
PROMPTS = [[5, 200, 17], [262, 42, 99, 3, 150, 7, 11, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39], [9],
           [100, 101, 102, 103, 104, 105, 106], [12, 13]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = write_tiny_gguf(tmp_path_factory.mktemp("batch") / "tiny.gguf", seed=3)
    return path, G.load_gguf(path)


@pytest.fixture(scope="module")
def compiled(tiny):
    path, model = tiny
    return compile_generator(path, slices=2, max_ctx=MAX_CTX, model=model, batch=SLOTS)


def _alone(gen, prompts, new=NEW) -> list[list[int]]:
    return [gen.generate_ids(p, new) for p in prompts]


@pytest.mark.parametrize("kv_cache", ["float", "int8"])
def test_eager_batch_generation_equals_each_prompt_alone(tiny, kv_cache) -> None:
    path, model = tiny
    gen = eager_generator(path, MAX_CTX, model=model, kv_cache=kv_cache, batch=SLOTS)
    seen: list[tuple[int, int]] = []
    got = gen.generate_ids_batch(PROMPTS, NEW, on_token=lambda i, t: seen.append((i, t)))
    st = gen.last_stats
    assert got == _alone(gen, PROMPTS)
    assert sorted(seen) == sorted((i, t) for i, ids in enumerate(got) for t in ids)
    assert st.prefill_tokens == sum(map(len, PROMPTS)) and st.new_tokens == sum(map(len, got))
    assert st.decode_tokens == st.new_tokens - len(PROMPTS)  # each prompt's first token comes from its prefill


def test_compiled_batch_generation_equals_each_prompt_alone(compiled) -> None:
    got = compiled.generate_ids_batch(PROMPTS, NEW)
    assert got == _alone(compiled, PROMPTS)
    assert compiled.slots == SLOTS and "decode_batch" in compiled.compiled.signatures
    # decode_batch attends in msd's kernel for sequences of their own lengths (2 layers; and the other
    # steps in theirs)
    kernels = [d.reason for d in compiled.compiled.attention.decisions]
    assert sum("msd_decode_attention_b3_h2_g2_d16_l2_s2_r (layer" in k for k in kernels) == 2, kernels
    assert sum("msd_decode_attention_b1_" in k for k in kernels) == 2, kernels


def test_a_stopped_sequence_frees_its_slot(compiled) -> None:
    """Stop tokens end sequences at different steps; the waiting prompts take their slots."""
    alone = _alone(compiled, PROMPTS)
    stop = {alone[0][2], alone[3][1]}  # prompt 0 stops at its 3rd token, prompt 3 at its 2nd (at the latest)
    saved = compiled.stop_ids
    try:
        compiled.stop_ids = stop
        got = compiled.generate_ids_batch(PROMPTS, NEW)
        assert got == _alone(compiled, PROMPTS)
    finally:
        compiled.stop_ids = saved
    assert len(got[0]) <= 3 and len(got[3]) <= 2 and got[0][-1] in stop


def test_decode_batch_step_matches_eager_with_a_free_slot(tiny, compiled) -> None:
    """One ``decode_batch`` call against the eager step: lengths 0 (a free slot), short, and long, over
    a cache whose rows past each length hold another sequence's entries."""
    from msd.compiler.llm.generate import eager_batch_step

    _, model = tiny
    rng = np.random.default_rng(0)
    t = 21
    past = [rng.standard_normal((t, *shape)).astype(np.float32)
            for shape, _ in model.cache_entries(SLOTS, "float")]
    tokens = np.asarray([[5], [77], [200]], np.int64)
    lengths = np.asarray([0, 9, 21], np.int64)
    want = eager_batch_step(model)(tokens, lengths, *past)
    got = compiled.decode_batch(tokens, lengths, *past)
    for w, g in zip(want, got):
        assert w.shape == g.shape
        assert float(np.abs(w - g).max()) <= 2e-3 * float(np.abs(w).max())
    # the rows past a sequence's length do not matter
    for p in past:
        p[9:, :, 1] = 1e3
    again = compiled.decode_batch(tokens, lengths, *past)
    np.testing.assert_array_equal(again[0][1], got[0][1])


def test_saved_batch_artifact_runs_without_torch_and_checks_its_step(compiled, tmp_path) -> None:
    folder = compiled.save(tmp_path / "art")
    loaded = TextGenerator.load(folder)
    assert loaded.slots == SLOTS and loaded.settings.batch == SLOTS
    assert loaded.generate_ids_batch(PROMPTS, NEW) == compiled.generate_ids_batch(PROMPTS, NEW)
    texts = loaded.generate_batch(["hello", "a b"], 4, chat=False)
    assert texts == [loaded.tokenizer.decode(loaded.generate_ids(loaded.encode(t, chat=False), 4),
                                             skip_special_tokens=True) for t in ("hello", "a b")]
    manifest = json.loads((folder / "msd.json").read_text())
    manifest["metadata"]["generation"]["batch"] = SLOTS + 1  # settings that do not fit the step
    (folder / "msd.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"decode_batch's token ids input is .*not i64\[4, 1\]"):
        TextGenerator.load(folder)


def test_generators_without_a_batch_step_run_prompts_one_by_one(tiny) -> None:
    path, model = tiny
    gen = eager_generator(path, MAX_CTX, model=model)
    assert gen.slots == 1
    assert gen.generate_ids_batch(PROMPTS[:2], 4) == _alone(gen, PROMPTS[:2], 4)
    with pytest.raises(OptionError, match="no batched decode step"):
        gen.slot_cache()


def test_bad_batch_requests_are_refused(tiny) -> None:
    path, model = tiny
    for bad in (0, -1, 2.0, True):
        with pytest.raises(OptionError, match="batch must be an integer"):
            eager_generator(path, MAX_CTX, model=model, batch=bad)
    gen = eager_generator(path, MAX_CTX, model=model, batch=2)
    with pytest.raises(OptionError, match="prompt 1: the prompt is empty"):
        gen.generate_ids_batch([[1, 2], []], 4)
    with pytest.raises(OptionError, match=f"prompt 0: 45 prompt \\+ 4 new tokens exceed max_ctx={MAX_CTX}"):
        gen.generate_ids_batch([[1] * 45], 4)
    with pytest.raises(OptionError, match="lengths must be \\[2\\]"):
        model.step(torch.zeros(2, 1, dtype=torch.long), *model.empty_cache(2, length=3),
                   lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(OptionError, match="one-token steps after a past"):
        model.step(torch.zeros(2, 2, dtype=torch.long), *model.empty_cache(2, length=3), lengths=torch.tensor([1, 2]))


def test_slot_cache_keeps_each_sequence_in_its_own_column() -> None:
    cache = SlotCache([((2, 3, 4), np.float32)], capacity=5)
    first = np.arange(2 * 2 * 4, dtype=np.float32).reshape(2, 2, 1, 4)
    cache.put(1, [first])
    assert cache.free_slots() == [0, 2] and cache.step_lengths().tolist() == [0, 2, 0]
    np.testing.assert_array_equal(cache.buffers[0][:2, :, 1], first[:, :, 0])
    assert cache.past()[0].shape == (2, 2, 3, 4)
    step = np.full((1, 2, 3, 4), 7.0, np.float32)
    cache.append([step])  # only slot 1 is active: row 2 of column 1
    assert cache.lengths.tolist() == [0, 3, 0] and (cache.buffers[0][2, :, 1] == 7.0).all()
    assert (cache.buffers[0][:, :, [0, 2]] == 0).all()
    with pytest.raises(ValueError, match="slot 1 is not a free slot"):
        cache.put(1, [first])
    with pytest.raises(ValueError, match=r"expected float32 \[2, 2, 1, 4\]"):
        cache.put(0, [np.zeros((2, 2, 3, 4), np.float32)])
    cache.append([step])
    cache.append([step])
    with pytest.raises(ValueError, match="slot 1: 5 \\+ 1 tokens exceed the cache capacity"):
        cache.append([step])
    cache.release(1)
    assert cache.free_slots() == [0, 1, 2]
