"""The msd command line: compile from an entry point, then run / inspect / bench the artifact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

MSD = str(Path(sys.executable).with_name("msd"))

ENTRY = '''
import torch, msd
from torch import nn

def build():
    torch.manual_seed(0)
    model = msd.quantize(nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 16)))
    return model, (torch.randn(2, 64),)
'''


def _msd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([MSD, *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("cli")
    (work / "my_models.py").write_text(ENTRY)
    proc = _msd("compile", "my_models:build", "-o", "out", "--json", cwd=work)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["rewritten"] == 2 and result["skipped"] == 0
    return work / "out"


def test_help_lists_the_commands(tmp_path: Path) -> None:
    proc = _msd("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for command in ("compile", "run", "inspect", "bench"):
        assert command in proc.stdout


def test_compile_shows_progress(tmp_path: Path) -> None:
    (tmp_path / "my_models.py").write_text(ENTRY)
    proc = _msd("compile", "my_models:build", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for stage in ("export", "import", "msd passes", "IREE compile", "weights", "saved"):
        assert stage in proc.stderr
    assert "2 rewritten, 0 skipped" in proc.stderr


def test_run_matches_the_eager_model(artifact: Path, tmp_path: Path) -> None:
    import torch

    sys.path.insert(0, str(artifact.parent))
    from my_models import build

    model, (x,) = build()
    np.save(tmp_path / "x.npy", x.numpy())
    proc = _msd("run", str(artifact), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"),
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    y = np.load(tmp_path / "y.npy")
    assert np.allclose(y, model(x).detach().numpy(), rtol=1e-3, atol=1e-3)
    assert torch.is_tensor(x)


def test_inspect_and_bench(artifact: Path, tmp_path: Path) -> None:
    proc = _msd("inspect", str(artifact), cwd=tmp_path)
    assert proc.returncode == 0 and "main(input: f32[2, 64])" in proc.stdout and "rewritten:" in proc.stdout
    manifest = json.loads(_msd("inspect", str(artifact), "--json", cwd=tmp_path).stdout)
    assert manifest["format"] == "msd-artifact"
    bench = json.loads(_msd("bench", str(artifact), "--reps", "5", "--json", cwd=tmp_path).stdout)
    assert bench["shapes"] == [[2, 64]] and bench["median_ms"] > 0


def test_failures_exit_nonzero_with_a_reason(artifact: Path, tmp_path: Path) -> None:
    proc = _msd("run", str(tmp_path / "nothing"), cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "nothing does not exist: an msd artifact is a folder with msd.json" in proc.stderr
    proc = _msd("compile", "no_such_module:build", "-o", "o", cwd=tmp_path)
    assert proc.returncode == 1 and "cannot load entry point 'no_such_module:build'" in proc.stderr
    np.save(tmp_path / "bad.npy", np.zeros((3, 64), np.float32))
    proc = _msd("run", str(artifact), "--input", str(tmp_path / "bad.npy"), cwd=tmp_path)
    assert proc.returncode == 1 and "expected main(input: f32[2, 64])" in proc.stderr


def test_generate_from_a_gguf_file(tmp_path: Path) -> None:
    """`msd generate` compiles prefill + decode for a (tiny, synthetic) GGUF model and streams text."""
    from test_gguf import write_tiny_gguf

    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    proc = _msd("generate", str(path), "hello", "--max-new-tokens", "4", "--max-ctx", "32", "--no-chat", "--json",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["prefill_tokens"] >= 1 and 1 <= result["decode_tokens"] + 1 <= 4
    proc = _msd("generate", str(tmp_path / "missing.gguf"), "hi", cwd=tmp_path)
    assert proc.returncode == 1 and "no such GGUF file" in proc.stderr


@pytest.mark.parametrize("kv_cache", ["f16", "int8"])
def test_compile_a_gguf_file_then_generate_without_torch(tmp_path: Path, kv_cache: str) -> None:
    """`msd compile model.gguf` saves prefill + decode + tokenizer; `msd generate DIR` runs it torch-free
    and says what the eager reference says (f16 or int8 KV cache; saved f32-cache artifacts are loaded
    and run in tests/test_batch.py); a tampered tokenizer is refused.  The
    int8 artifact also gets a batched decode step (``--batch 2``): several prompts decode together."""
    from test_gguf import write_tiny_gguf

    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    batch = ["--batch", "2"] if kv_cache == "int8" else []
    proc = _msd("compile", str(path), "-o", "llm", "--max-ctx", "32", "--kv-cache", kv_cache, *batch, "--json",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["max_ctx"] == 32
    manifest = json.loads((tmp_path / "llm" / "msd.json").read_text())
    steps = {"prefill", "decode", *(["decode_batch"] if batch else [])}
    assert set(manifest["functions"]) == steps and "tokenizer.json" in manifest["files"]
    settings = manifest["metadata"]["generation"]
    assert settings["max_ctx"] == 32 and settings["kv_cache"] == kv_cache
    dtypes = [t["dtype"] for t in settings["cache"]]
    assert dtypes == (["f16"] * 2 if kv_cache == "f16" else ["i8", "f32"] * 2)  # the signature's dtype names
    if kv_cache == "int8":  # prefill and decode attend in msd's kernels: no int8 attention matmul is left
        decisions = [d for d in manifest["decisions"] if "per-K scale folded" in d.get("reason", "")]
        assert not decisions, manifest["decisions"]
    no_torch = ("import sys; sys.modules['torch'] = None; from msd.compiler.tools.cli import main; "
                "sys.exit(main(sys.argv[1:]))")
    run = subprocess.run([sys.executable, "-c", no_torch, "generate", "llm", "hello", "--max-new-tokens", "6",
                          "--no-chat", "--json"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    saved = json.loads(run.stdout)
    from msd.compiler.llm.generate import eager_generator

    eager = eager_generator(path, 32, kv_cache=kv_cache)  # the same cache path in eager torch
    ids = eager.generate_ids(eager.encode("hello", chat=False), 6)
    assert saved["text"] == eager.tokenizer.decode(ids, skip_special_tokens=True)
    assert saved["decode_tokens"] == eager.last_stats.decode_tokens
    if batch:  # three prompts, two decoded at a time: each reply as it is alone
        run = subprocess.run([sys.executable, "-c", no_torch, "generate", "llm", "hello", "a b", "the", "--no-chat",
                              "--max-new-tokens", "5", "--json"], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        both = json.loads(run.stdout)
        assert both["batch"] == 2
        assert both["texts"] == [eager.tokenizer.decode(eager.generate_ids(eager.encode(p, chat=False), 5),
                                                        skip_special_tokens=True) for p in ("hello", "a b", "the")]
    import shutil

    old = tmp_path / "old"  # settings whose cache list does not match what decode takes
    shutil.copytree(tmp_path / "llm", old)
    manifest["metadata"]["generation"]["cache"].pop()
    (old / "msd.json").write_text(json.dumps(manifest))
    proc = _msd("generate", "old", "hello", cwd=tmp_path)
    n = len(manifest["metadata"]["generation"]["cache"])
    assert proc.returncode == 1, proc.stderr
    assert f"a generator with {n} cache tensors needs 1 and {n + 1}" in proc.stderr, proc.stderr
    with open(tmp_path / "llm" / "tokenizer.json", "a") as f:
        f.write(" ")
    proc = _msd("generate", "llm", "hello", cwd=tmp_path)
    assert proc.returncode == 1 and "tokenizer.json was modified" in proc.stderr
    proc = _msd("compile", "my_models:build", "-o", "o", "--max-ctx", "8", cwd=tmp_path)
    assert proc.returncode == 1 and "--max-ctx, --kv-cache and --batch apply to .gguf models only" in proc.stderr


def test_compile_with_cost_decisions_and_mx_slices(tmp_path: Path) -> None:
    """`--decide cost --min-bits 16` records the cost model's per-matmul table; `--act-format mxfp4`
    takes MXFP4 slices on an MXFP4 model."""
    (tmp_path / "mx_models.py").write_text(
        "import torch, msd\nfrom torch import nn\n\ndef build():\n    torch.manual_seed(0)\n"
        "    return msd.quantize(nn.Sequential(nn.Linear(128, 64)), weights='mxfp4'), (torch.randn(1, 128),)\n")
    proc = _msd("compile", "mx_models:build", "-o", "cost", "--decide", "cost", "--min-bits", "16", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    shown = _msd("inspect", "cost", cwd=tmp_path).stdout
    assert "decisions by the cost model" in shown and "M=1 N=64 K=128" in shown
    proc = _msd("compile", "mx_models:build", "-o", "mx", "--act-format", "mxfp4", cwd=tmp_path)
    assert proc.returncode == 0 and "2 MXFP4 slice(s)" in proc.stderr
