"""Saved artifacts: self-describing, checked at load, runnable without torch, precise errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.export import Dim

import msd
import msd.runtime
from helpers import mlp
from msd.runtime import ArtifactError


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    model = msd.quantize(mlp(64, 96, 32))
    x = torch.randn(4, 64)
    cm = msd.compile(model, (x,), slices=2, dynamic_shapes=({0: Dim("batch", min=1, max=16)},))
    return cm.save(tmp_path_factory.mktemp("artifact") / "a"), model


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_manifest_describes_the_artifact(saved) -> None:
    folder, model = saved
    m = json.loads((folder / "msd.json").read_text())
    assert m["format"] == "msd-artifact" and m["msd_version"] == msd.__version__
    assert m["iree_version"].startswith("3.13") and m["target"]["backend"] == "llvm-cpu"
    (x,) = m["functions"]["main"]["inputs"]
    assert x["shape"] == [None, 64] and x["dtype"] == "f32"
    assert x["dims"][0][1:] == [1, 16], "the dynamic batch dim keeps its bounds"
    assert m["functions"]["main"]["outputs"][0]["shape"] == [None, 32]
    assert len(m["decisions"]) == 2 and all(d["rewritten"] for d in m["decisions"])
    assert set(m["files"]) == {"module.vmfb", "model.irpa"} and all(len(f["sha256"]) == 64 for f in m["files"].values())


def test_load_and_call_without_torch(saved, tmp_path: Path) -> None:
    folder, model = saved
    x = torch.randn(3, 64)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "expected.npy", msd.runtime.load(folder)(x.numpy()))
    script = f"""
import sys
sys.modules["torch"] = None  # any torch import now fails
import numpy as np
import msd.runtime
art = msd.runtime.load(r"{folder}")
y = art.main(np.load(r"{tmp_path}/x.npy"))
assert np.array_equal(y, np.load(r"{tmp_path}/expected.npy")), "different result"
print(art.main.signature)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "main(" in proc.stdout and "f32[" in proc.stdout


def test_torch_tensors_in_torch_tensors_out(saved) -> None:
    folder, model = saved
    x = torch.randn(5, 64)
    y = msd.runtime.load(folder)(x)
    assert isinstance(y, torch.Tensor) and y.shape == (5, 32)
    assert torch.allclose(y, model(x), rtol=1e-3, atol=1e-3)


def test_bad_inputs_show_the_signature(saved) -> None:
    art = msd.runtime.load(saved[0])
    with pytest.raises(ValueError, match=r"dim 0 = 17 is outside the compiled range .*\[1\.\.16\]; expected main\("):
        art(np.zeros((17, 64), np.float32))
    with pytest.raises(ValueError, match=r"shape \(2, 63\) does not match the compiled \[\?x64\]"):
        art(np.zeros((2, 63), np.float32))
    with pytest.raises(TypeError, match=r"dtype float64 does not match the compiled f32; expected main\(input: f32\["):
        art(np.zeros((2, 64)))


def test_modified_or_missing_files_are_refused(saved, tmp_path: Path) -> None:
    bad = _copy(saved[0], tmp_path / "modified")
    data = bytearray((bad / "model.irpa").read_bytes())
    data[-1] ^= 0xFF
    (bad / "model.irpa").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.irpa was modified after the artifact was saved"):
        msd.runtime.load(bad)
    missing = _copy(saved[0], tmp_path / "missing")
    (missing / "module.vmfb").unlink()
    with pytest.raises(ArtifactError, match="artifact file missing: .*module.vmfb"):
        msd.runtime.load(missing)
    with pytest.raises(ArtifactError, match="msd.json is missing"):
        msd.runtime.load(tmp_path)


def test_incompatible_versions_and_devices_are_refused(saved, tmp_path: Path) -> None:
    for field, value, message in (("iree_version", "2.9.0", "built with IREE 2.9.0"),
                                  ("format_version", 99, "newer than this msd runtime understands")):
        folder = _copy(saved[0], tmp_path / field)
        m = json.loads((folder / "msd.json").read_text())
        m[field] = value
        (folder / "msd.json").write_text(json.dumps(m))
        with pytest.raises(ArtifactError, match=message):
            msd.runtime.load(folder)
    with pytest.raises(ArtifactError, match="unknown device 'tpu'"):
        msd.runtime.load(saved[0], device="tpu")
    wrong_device = "compiled for llvm-cpu, which runs on local-task or local-sync, not on 'cuda'"
    with pytest.raises(ArtifactError, match=wrong_device):
        msd.runtime.load(saved[0], device="cuda")


def test_gpu_artifact_names_its_device(tmp_path: Path) -> None:
    model = msd.quantize(mlp(64, 32))
    folder = msd.compile(model, (torch.randn(2, 64),), target="cuda", slices=2).save(tmp_path / "cuda")
    with pytest.raises(ArtifactError, match="compiled for cuda, which runs on cuda, not on 'local-task'"):
        msd.runtime.load(folder, device="local-task")
    from msd.compiler.pipeline.driver import device_present

    if not device_present("cuda"):
        with pytest.raises(ArtifactError, match="cannot open IREE driver 'cuda'"):
            msd.runtime.load(folder)


def test_several_functions_share_one_artifact(tmp_path: Path) -> None:
    """Two entry points (e.g. prefill and decode) in one module, the weights stored once."""
    model = msd.quantize(mlp(64, 96, 32))
    prefill = (model, (torch.randn(8, 64),), ({0: Dim("tokens", min=2, max=64)},))
    decode = (model, (torch.randn(1, 64),))
    cm = msd.compile_functions({"prefill": prefill, "decode": decode}, slices=2)
    assert len(cm.report.rewritten) == 4  # two matmuls in each function
    x, t = torch.randn(5, 64), torch.randn(1, 64)
    assert torch.allclose(cm.prefill(x), model(x), rtol=1e-3, atol=1e-3)
    assert torch.allclose(cm.decode(t), model(t), rtol=1e-3, atol=1e-3)
    with pytest.raises(TypeError, match="several functions"):
        cm(x)
    folder = cm.save(tmp_path / "two")
    irpa_single = msd.compile(model, (t,), slices=2).save(tmp_path / "one") / "model.irpa"
    assert (folder / "model.irpa").stat().st_size == irpa_single.stat().st_size, "weights stored once"
    art = msd.runtime.load(folder)
    assert set(art.functions) == {"prefill", "decode"}
    assert np.array_equal(art.decode(t.numpy()), cm.decode(t).numpy())
    with pytest.raises(ValueError, match=r"outside the compiled range .*\[2\.\.64\]"):
        art.prefill(np.zeros((1, 64), np.float32))


class _Scaled(torch.nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x * t


def test_a_scalar_input_keeps_its_rank(tmp_path: Path) -> None:
    # a 0-d array passed through np.ascontiguousarray becomes 1-d, which IREE's shape check refuses
    x, t = torch.randn(3, 4), torch.tensor(2.5)
    folder = msd.compile(_Scaled(), (x, t)).save(tmp_path / "scalar")
    y = msd.runtime.load(folder)(x.numpy(), np.float32(2.5) * np.ones((), np.float32))
    np.testing.assert_allclose(y, (x * t).numpy(), rtol=1e-6)


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"),
                    reason="SCHED_BATCH is Linux-only; elsewhere the runtime leaves the caller's scheduling alone")
def test_calls_run_the_caller_under_sched_batch_and_restore_its_policy(saved, monkeypatch) -> None:
    """The runtime's calls run the calling thread under SCHED_BATCH (IREE's wait would otherwise often
    preempt the worker it waits for, docs/benchmarks.md) and give it back its policy afterwards."""
    from msd.runtime import module

    folder, _ = saved
    art = msd.runtime.load(folder)
    seen = []
    fn = art.main._module._fn

    def spy(*args):
        seen.append(os.sched_getscheduler(0))
        return fn(*args)

    monkeypatch.setattr(art.main._module, "_fn", spy)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    art.main(np.ones((2, 64), np.float32))
    assert seen == [os.SCHED_BATCH] and os.sched_getscheduler(0) == os.SCHED_OTHER
    with module.batch_caller(False):
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
    plain = msd.runtime.load(folder, batch_caller=False)
    fn2 = plain.main._module._fn
    monkeypatch.setattr(plain.main._module, "_fn", lambda *a: (seen.append(os.sched_getscheduler(0)), fn2(*a))[1])
    plain.main(np.ones((2, 64), np.float32))
    assert seen[-1] == os.SCHED_OTHER
