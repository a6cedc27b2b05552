"""Artifact folders as a trust boundary, and compiles that used to give silently wrong answers.

- ``msd.json`` is checked against one schema (``msd.runtime.manifest``) before anything is read;
  only plain file names inside the folder, each listed and hashed, are ever opened.  Hypothesis
  mutates a valid manifest (deleted keys, swapped types, path strings) and every outcome must be a
  load that works or an :class:`msd.MsdError`, never another exception and never a read of a sentinel
  file outside the folder (watched with an audit hook; the sentinel is a byte-identical copy of the
  module, so following a path to it would *succeed* and be seen).
- Two different models in one ``compile_functions`` artifact each compute their own function;
  identical parameters are stored once.
- int4 groups whose values are all equal, f64 models, per-thread generation stats.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import msd
import msd.runtime
from helpers import mlp
from msd.runtime.manifest import MANIFEST_FILE, MODULE_FILE, PARAMETERS_FILE

SENTINEL_NAME = "sentinel-outside.vmfb"
_opened: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0]) if not isinstance(args[0], int) else ""
        if SENTINEL_NAME in path:
            _opened.append(path)


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one only records opens of the sentinel


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """A saved artifact, a byte-identical copy of its module outside the folder, an input and the output."""
    root = tmp_path_factory.mktemp("artifact")
    model = msd.quantize(mlp(32, 16, seed=3), weights="int8")
    x = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    folder = msd.compile(model, (x,)).save(root / "art")
    sentinel = root / SENTINEL_NAME
    shutil.copyfile(folder / MODULE_FILE, sentinel)
    y = msd.runtime.load(folder).main(x.numpy())
    return folder, sentinel, x.numpy(), y


def _with_manifest(src: Path, dst: Path, manifest: object) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in (MODULE_FILE, PARAMETERS_FILE):
        if not (dst / name).exists():
            os.link(src / name, dst / name) if hasattr(os, "link") else shutil.copyfile(src / name, dst / name)
    (dst / MANIFEST_FILE).write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return dst


def _outcome(folder: Path, x: np.ndarray, y: np.ndarray) -> str:
    """Load and call; a load that works must compute the right answer (or refuse the call clearly)."""
    _opened.clear()
    try:
        art = msd.runtime.load(folder)
        if len(art.functions) == 1:
            fn = next(iter(art.functions.values()))
            try:
                out = fn(x)
            except msd.MsdError:
                return "refused call"
            np.testing.assert_allclose(out, y, rtol=1e-6, atol=1e-6)
        return "loaded"
    except msd.MsdError:
        return "refused"
    finally:
        assert not _opened, f"msd opened a file outside the artifact folder: {_opened}"


# ----------------------------------------------------------------------------------------------
# specific refusals


def _manifest(saved_folder: Path) -> dict:
    return json.loads((saved_folder / MANIFEST_FILE).read_text())


@pytest.mark.parametrize("name", ["../" + SENTINEL_NAME, "ABSOLUTE", "sub/../module.vmfb", "./module.vmfb", "..",
                                  ".", "", "module.vmfb\x00", "LINK"])
def test_file_names_must_be_plain_names_inside_the_folder(saved, tmp_path: Path, name: str) -> None:
    folder, sentinel, x, y = saved
    m = _manifest(folder)
    info = m["files"].pop(MODULE_FILE)
    if name == "ABSOLUTE":
        name = str(sentinel)
    if name == "LINK":  # a plain name, but a symlink that leads out of the folder
        name = "linked.vmfb"
        (tmp_path / "art").mkdir()
        (tmp_path / "art" / name).symlink_to(sentinel)
    m["files"][name] = info
    art = _with_manifest(folder, tmp_path / "art", m)
    _opened.clear()
    with pytest.raises(msd.ArtifactError) as e:
        msd.runtime.load(art)
    assert not _opened
    assert "plain file name" in str(e.value) or "outside the artifact folder" in str(e.value) \
        or "module.vmfb is not listed" in str(e.value)


def test_the_module_is_read_only_when_listed(saved, tmp_path: Path) -> None:
    folder, _, _, _ = saved
    m = _manifest(folder)
    del m["files"][PARAMETERS_FILE]
    with pytest.raises(msd.ArtifactError, match="model.irpa is not listed"):
        msd.runtime.load(_with_manifest(folder, tmp_path / "a", m))


@pytest.mark.parametrize("change, message", [
    (lambda m: m["target"].update(backend="tpu"), r"target.backend: 'tpu' is not one of"),
    (lambda m: m["target"].update(driver="cuda"), r"target.driver: 'cuda' cannot run a llvm-cpu module"),
    (lambda m: m.pop("functions"), r"the key 'functions' is missing"),
    (lambda m: m.update(slices="2"), r"slices: expected an integer in \[0, 3\], got a string"),
    (lambda m: m["functions"]["main"]["inputs"][0].update(dtype="f128"), r"dtype: 'f128' is not one of"),
    (lambda m: m["functions"]["main"]["inputs"][0].update(shape=[2, -1]), r"shape\[1\]: -1 is not"),
    (lambda m: m["files"][MODULE_FILE].update(sha256="xyz"), r"sha256: 'xyz' is not a sha256 hex digest"),
    (lambda m: m.update(extra=1), r"unknown key 'extra'"),
    (lambda m: m.update(decisions={}), r"decisions: expected a list, got an object"),
    (lambda m: m["decisions"].append({"op": "x"}), r"decisions\[\d+\]: the key 'location' is missing"),
    (lambda m: m.update(format_version=1), r"format 1 was written by an older msd"),
    (lambda m: m.update(format_version=99), r"newer than this msd runtime understands"),
    (lambda m: m.update(metadata={"generation": {}}), r"metadata.generation: the key 'max_ctx' is missing"),
])
def test_manifest_schema_refusals_name_the_key(saved, tmp_path: Path, change, message: str) -> None:
    folder, _, _, _ = saved
    m = _manifest(folder)
    change(m)
    with pytest.raises(msd.ArtifactError, match=message) as e:
        msd.runtime.load(_with_manifest(folder, tmp_path / "a", m))
    assert "msd.json" in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("{", "is not valid JSON"), ('{"format": "msd-artifact", "x": NaN}', "is not valid JSON"),
    ("[" * 100000 + "]" * 100000, "is not valid JSON"), ("[]", "is not an msd artifact manifest"),
    ("\xff\xfe", "is not valid JSON"),
])
def test_malformed_json_is_refused(saved, tmp_path: Path, text: str, message: str) -> None:
    folder, _, _, _ = saved
    with pytest.raises(msd.ArtifactError, match=message):
        msd.runtime.load(_with_manifest(folder, tmp_path / "a", text))


def test_a_lying_signature_is_refused_at_the_call(saved, tmp_path: Path) -> None:
    folder, _, x, _ = saved
    m = _manifest(folder)
    m["functions"]["main"]["inputs"][0].update(dtype="i32")
    art = msd.runtime.load(_with_manifest(folder, tmp_path / "a", m))
    with pytest.raises(msd.ArtifactError, match="the IREE runtime refused the call to main"):
        art.main(x.view(np.int32))


def test_wrong_inputs_are_input_errors(saved) -> None:
    folder, _, x, _ = saved
    art = msd.runtime.load(folder)
    for bad in (x.astype(np.float64), x[:, :5], "text"):
        with pytest.raises(msd.InputError):
            art.main(bad)
    with pytest.raises(msd.InputError, match="expected 1 input"):
        art.main(x, x)


# ----------------------------------------------------------------------------------------------
# property-based: random mutations of a valid manifest


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _parent(m: object, path: tuple) -> object:
    for p in path[:-1]:
        m = m[p]
    return m


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)
PATH_STRINGS = st.sampled_from(["../" + SENTINEL_NAME, "../../" + SENTINEL_NAME, "/etc/passwd", "..", ".", "",
                                "a/b", "module.vmfb/", "~/x", "\\\\server\\x", "con", "module.vmfb\n",
                                "x" * 300, "tokenizer.json", "SENTINEL"])


@st.composite
def mutations(draw, manifest: dict) -> dict:
    m = copy.deepcopy(manifest)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(m)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _parent(m, path), path[-1]
        kind = draw(st.sampled_from(["delete", "swap", "path", "rename-file"]))
        if kind == "delete":
            del parent[key]
        elif kind == "swap":
            parent[key] = draw(JSON_VALUES)
        elif kind == "path":
            parent[key] = draw(PATH_STRINGS)
        elif isinstance(m.get("files"), dict) and m["files"]:
            name = draw(st.sampled_from(sorted(m["files"])))
            m["files"][draw(PATH_STRINGS)] = m["files"].pop(name)
    return m


def test_mutated_manifests_load_correctly_or_raise_msd_errors(saved, tmp_path_factory: pytest.TempPathFactory) -> None:
    folder, sentinel, x, y = saved
    manifest = _manifest(folder)
    work = tmp_path_factory.mktemp("mutated") / "art"
    outcomes: dict[str, int] = {}

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mutations(manifest))
    def check(m: dict) -> None:
        text = json.dumps(m).replace('"SENTINEL"', json.dumps(str(sentinel)))
        outcome = _outcome(_with_manifest(folder, work, text), x, y)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    check()
    assert outcomes.get("refused", 0) > 100, outcomes  # the mutations do reach the checks


# ----------------------------------------------------------------------------------------------
# compiles that were silently wrong


def test_two_models_in_one_artifact_keep_their_own_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m1 = msd.quantize(torch.nn.Linear(64, 32), weights="int8")
    m2 = msd.quantize(torch.nn.Linear(64, 32), weights="int8")
    x = torch.randn(4, 64)
    cm = msd.compile_functions({"a": (m1, (x,)), "b": (m2, (x,))})
    for fn, model in ((cm.a, m1), (cm.b, m2)):
        torch.testing.assert_close(fn(x), model(x), rtol=0, atol=1e-3)
    assert (cm.b(x) - m1(x)).abs().max() > 0.1  # the two models really differ
    # the same model twice: one copy of its weights, so the archive is no bigger than one function's
    once = msd.compile(m1, (x,)).save(tmp_path / "once")
    twice = msd.compile_functions({"a": (m1, (x,)), "b": (m1, (x,))}).save(tmp_path / "twice")
    assert (twice / PARAMETERS_FILE).stat().st_size == (once / PARAMETERS_FILE).stat().st_size


class _Flat(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a_b = torch.nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a_b(x)


class _Nested(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Module()
        self.a.b = torch.nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a.b(x)


def test_parameter_names_that_sanitize_alike_stay_apart() -> None:
    torch.manual_seed(1)
    flat, nested = _Flat(), _Nested()  # "a_b.weight" and "a.b.weight": one IR symbol spelling
    x = torch.randn(3, 16)
    cm = msd.compile_functions({"f": (flat, (x,)), "n": (nested, (x,))}, slices=0)
    torch.testing.assert_close(cm.f(x), flat(x))
    torch.testing.assert_close(cm.n(x), nested(x))


def test_constant_int4_groups_are_exact() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 8)
    with torch.no_grad():
        lin.weight[3] = 0.0
        lin.weight[5] = 0.37
        lin.weight[6] = -0.2
        lin.weight[7, :128] = 0.0  # one constant group of two
    q = msd.quantize(lin, weights="int4")
    w = q.dequantized_weight()
    assert torch.equal(w[3], torch.zeros(256)) and torch.equal(w[7, :128], torch.zeros(128))
    torch.testing.assert_close(w[5], torch.full((256,), 0.37), rtol=0, atol=1e-7)
    torch.testing.assert_close(w[6], torch.full((256,), -0.2), rtol=0, atol=1e-7)
    x = torch.randn(4, 256)
    ref = q(x)
    err = (msd.compile(q, (x,), slices=1)(x) - ref).abs().amax(0)
    assert err[3] == 0  # a zero row stays exactly zero (was 0.86 with scale 1)
    assert err[[5, 6]].max() < 1e-4 and err.max() < 0.05


def test_f64_models_run_in_f64() -> None:
    torch.manual_seed(0)
    model = msd.quantize(torch.nn.Linear(64, 32).double(), weights="int8")
    x = torch.randn(4, 64, dtype=torch.float64)
    cm = msd.compile(model, (x,))
    y = cm(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, model(x), rtol=0, atol=1e-12)
    assert "f64" in cm.report.format()  # left to IREE, and said so


# ----------------------------------------------------------------------------------------------
# text-generation artifacts


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_gguf import write_tiny_gguf

    from msd.compiler.llm.generate import compile_generator

    root = tmp_path_factory.mktemp("llm")
    path = write_tiny_gguf(root / "tiny.gguf")
    return compile_generator(path, slices=2, max_ctx=48).save(root / "art")


def test_generation_settings_must_match_the_steps(llm: Path, tmp_path: Path) -> None:
    from msd.runtime.generate import TextGenerator

    m = _manifest(llm)
    m["metadata"]["generation"]["cache"][0]["dtype"] = "f16"
    art = tmp_path / "a"
    shutil.copytree(llm, art)
    (art / MANIFEST_FILE).write_text(json.dumps(m))
    with pytest.raises(msd.ArtifactError, match="cache tensor 0 is f16"):
        TextGenerator.load(art)
    m = _manifest(llm)
    m["metadata"]["generation"]["chat_template"] = "no marker"
    (art / MANIFEST_FILE).write_text(json.dumps(m))
    with pytest.raises(msd.ArtifactError, match=r"chat_template: must hold the marker \{user\} exactly once"):
        TextGenerator.load(art)
    (art / MANIFEST_FILE).write_text((llm / MANIFEST_FILE).read_text())
    (art / "tokenizer.json").write_text("{}")
    with pytest.raises(msd.ArtifactError, match="tokenizer.json was modified"):
        TextGenerator.load(art)


def test_a_loaded_generator_reads_its_cache_in_place_and_matches_the_compiled_one(llm: Path) -> None:
    """The torch-free path (``TextGenerator.load``, what ``msd generate DIR`` runs) shares its KV cache
    with IREE's CPU device like the in-process generator: before, its step functions did not say which
    device they run on, so every decode call copied the whole cache in (SmolLM2, 512-token prompt:
    30.4 tok/s against 71.7 in-process, benchmarks/llm.py)."""
    from msd.runtime.generate import KVCache, TextGenerator, greedy

    gen = TextGenerator.load(llm)
    assert gen.decode.host_device is not None
    shared = gen.empty_cache()
    assert len(shared._device_buffers) == len(shared.buffers)
    copied = KVCache(gen.cache_entries(), gen.max_ctx)  # no device: numpy views, copied in on every call
    ids = [5, 6, 7, 8]
    assert greedy(gen.prefill, gen.decode, ids, shared, 8, set()) == greedy(gen.prefill, gen.decode, ids, copied, 8,
                                                                            set())


def test_one_generator_serves_several_threads(llm: Path) -> None:
    from msd.runtime.generate import TextGenerator

    gen = TextGenerator.load(llm)
    prompts = {"a": [5, 6, 7], "b": [9, 10, 11, 12, 13, 14, 15]}
    alone = {k: gen.generate_ids(ids, 6) for k, ids in prompts.items()}
    seen: dict[str, tuple[list[int], int, int]] = {}

    def run(key: str) -> None:
        for _ in range(4):
            ids = gen.generate_ids(prompts[key], 6)
            st_ = gen.last_stats
            seen[key] = (ids, st_.prefill_tokens, st_.new_tokens)

    threads = [threading.Thread(target=run, args=(k,)) for k in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for key, (ids, prefill_tokens, new_tokens) in seen.items():
        assert ids == alone[key]
        assert prefill_tokens == len(prompts[key]) and new_tokens == len(ids)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
        gen.generate_ids([5], -5)


@pytest.mark.parametrize("cut", [16, 1000, 3000])
def test_a_rehashed_broken_module_is_refused(saved, tmp_path: Path, cut: int) -> None:
    """The hashes were updated with the broken file (a deliberate change): IREE's bytecode verifier
    refuses it, as an ArtifactError (it raised IndexError before)."""
    import hashlib

    folder, _, _, _ = saved
    art = tmp_path / "a"
    shutil.copytree(folder, art)
    data = (folder / MODULE_FILE).read_bytes()[:cut]
    (art / MODULE_FILE).write_bytes(data)
    m = _manifest(folder)
    m["files"][MODULE_FILE] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (art / MANIFEST_FILE).write_text(json.dumps(m))
    with pytest.raises(msd.ArtifactError, match="not a valid IREE module"):
        msd.runtime.load(art)
