"""The public API: quantize, compile stages, parameters, artifacts, and clear errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import iree.runtime as rt
import pytest
import torch
from torch import nn

import msd
from helpers import mlp
from msd.compiler.quant.quantize import QuantizedLinear


@pytest.fixture(scope="module")
def qmodel() -> nn.Module:
    return msd.quantize(mlp(256, 512, 64))


@pytest.fixture(scope="module")
def compiled(qmodel):
    x = torch.randn(4, 256)
    return msd.compile(qmodel, (x,), slices=2)


# ------------------------------------------------------------------------------ quantize
def test_quantize_replaces_linears_with_int8_buffers() -> None:
    model = mlp(32, 16, 8)
    q = msd.quantize(model, weights="int8")
    layers = [m for m in q.modules() if isinstance(m, QuantizedLinear)]
    assert len(layers) == 2
    assert all(m.qweight.dtype == torch.int8 and m.weight_scale.dtype == torch.float32 for m in layers)
    assert not any(isinstance(m, nn.Linear) for m in q.modules())
    assert any(isinstance(m, nn.Linear) for m in model.modules()), "the input model must not change"
    x = torch.randn(5, 32)
    rel = (q(x) - model(x)).abs().max() / model(x).abs().max()
    assert 0 < rel < 0.02  # int8 weight rounding: small, but not zero


def test_quantize_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="weights='int3' is not supported"):
        msd.quantize(mlp(8, 8), weights="int3")
    with pytest.raises(ValueError, match="no nn.Linear"):
        msd.quantize(nn.Sequential(nn.ReLU()))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        msd.quantize(torch.randn(3))


# ------------------------------------------------------------------------------ stages
def test_emit_stages(qmodel) -> None:
    x = torch.randn(4, 256)
    torch_ir = msd.compile(qmodel, (x,), emit="torch")
    assert "torch.aten.linear" in torch_ir or "torch.aten.mm" in torch_ir
    linalg_ir = msd.compile(qmodel, (x,), emit="linalg")
    assert "linalg.matmul" in linalg_ir and "torch.aten" not in linalg_ir
    assert re.search(r"arith.sitofp %\S+ : i8 to f32", linalg_ir), "the dequantization is in the input"
    msd_ir = msd.compile(qmodel, (x,), emit="msd")
    base_ir = msd.compile(qmodel, (x,), slices=0, emit="msd")
    assert base_ir == linalg_ir, "slices=0 leaves IREE's lowering untouched"
    vmfb = msd.compile(qmodel, (x,), emit="vmfb")
    assert isinstance(vmfb, bytes) and len(vmfb) > 1000
    assert msd_ir != linalg_ir


def test_msd_ir_has_int8_matmul_and_no_float_weight(qmodel) -> None:
    x = torch.randn(4, 256)
    ir_text = msd.compile(qmodel, (x,), emit="msd", cpu_kernel="none")  # IREE lowers the int8 matmuls
    int_mm = re.findall(r"linalg.matmul .*ins\(.*: tensor<\d+x\d+xi8>, tensor<\d+x\d+xi8>\) outs\(.*xi32>\)", ir_text)
    assert len(int_mm) == 2, ir_text
    assert not re.search(r"sitofp %\S+ : i8 to", ir_text), "a weight is still converted to float"
    for n, k in ((512, 256), (64, 512)):
        for shape in (f"{n}x{k}", f"{k}x{n}"):
            assert f"tensor<{shape}xf32>" not in ir_text, f"a float copy of a {shape} weight"


def test_weights_are_named_parameters(compiled, qmodel, tmp_path: Path) -> None:
    weight_bytes = sum(b.numel() * b.element_size() for b in qmodel.buffers())
    assert len(compiled.vmfb) < weight_bytes / 2, "weights were inlined into the module"
    folder = compiled.save(tmp_path / "artifact")
    index = rt.ParameterIndex()
    index.load(str(folder / "model.irpa"))
    keys = {key for key, _ in index.items()}
    expected = {name for name, _ in qmodel.named_buffers()} | {n for n, _ in qmodel.named_parameters()}
    if any("fused" in d.reason for d in compiled.report.rewritten):
        # the fused kernel reads its weights pre-packed (tests/test_prepack.py): the packed tensors take
        # the place of the ones only the packing read
        packed = {k for k in keys if k.startswith("msd.pack.")}
        assert packed and {k.split(".")[2] for k in packed} == {"0", "2"}
        assert keys - packed <= expected and {"0.bias", "2.bias"} <= keys
    else:
        assert keys == expected


def test_report_lists_rewritten_layers(compiled) -> None:
    assert len(compiled.report.rewritten) == 2 and not compiled.report.skipped
    assert "2 int8 slice(s)" in compiled.report.format()


def test_float_layer_is_left_alone_and_reported() -> None:
    model = nn.Sequential(msd.quantize(nn.Sequential(nn.Linear(32, 16)))[0], nn.Linear(16, 8))
    x = torch.randn(3, 32)
    cm = msd.compile(model, (x,), slices=2)
    assert len(cm.report.rewritten) == 1
    (skipped,) = cm.report.skipped
    assert "float weights" in skipped.reason
    assert torch.allclose(cm(x), model(x), rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------ errors
def test_bad_arguments_are_named(qmodel) -> None:
    x = torch.randn(4, 256)
    with pytest.raises(ValueError, match="target 'tpu' is not supported"):
        msd.compile(qmodel, (x,), target="tpu")
    with pytest.raises(ValueError, match="slices=4 is not supported"):
        msd.compile(qmodel, (x,), slices=4)
    with pytest.raises(ValueError, match="emit='asm' is not a stage"):
        msd.compile(qmodel, (x,), emit="asm")
    with pytest.raises(TypeError, match="example input 0 must be a torch.Tensor"):
        msd.compile(qmodel, ([1.0],))
    with pytest.raises(msd.ExportError, match="torch.export could not capture"):
        msd.compile(qmodel, (torch.randn(4, 7),))


def test_call_checks_inputs(compiled) -> None:
    expected = r"; expected main\(input: f32\[4, 256\]\)"
    shape_error = r"input 0 \(input\): shape \(3, 256\) does not match the compiled \[4x256\]"
    with pytest.raises(ValueError, match=shape_error + expected):
        compiled(torch.randn(3, 256))
    with pytest.raises(TypeError, match=r"input 0 \(input\): dtype float64 does not match the compiled f32"):
        compiled(torch.randn(4, 256, dtype=torch.float64))
    with pytest.raises(TypeError, match="expected 1 input tensor"):
        compiled(torch.randn(4, 256), torch.randn(4, 256))


def test_corrupted_artifacts_are_refused(compiled, tmp_path: Path) -> None:
    from msd.runtime import ArtifactError, Module

    folder = compiled.save(tmp_path / "a")
    bad = tmp_path / "bad.vmfb"
    bad.write_bytes(b"\x00not a module" * 64)
    with pytest.raises(ArtifactError, match="not a valid IREE module"):
        Module.load(bad, folder / "model.irpa")
    truncated = tmp_path / "truncated.irpa"
    truncated.write_bytes((folder / "model.irpa").read_bytes()[:100])
    with pytest.raises(ArtifactError, match="not a valid parameter archive"):
        Module.load(folder / "module.vmfb", truncated)
    with pytest.raises(ArtifactError, match="module not found"):
        Module.load(tmp_path / "missing.vmfb")


def test_saved_artifact_runs_without_torch(compiled, tmp_path: Path) -> None:
    folder = compiled.save(tmp_path / "artifact")
    x = torch.randn(4, 256)
    expected = compiled(x).numpy()
    (tmp_path / "x.npy").write_bytes(b"")
    import numpy as np

    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "expected.npy", expected)
    script = f"""
import sys
sys.modules["torch"] = None  # any torch import now fails
import numpy as np
from msd.runtime import Module
m = Module.load(r"{folder}/module.vmfb", r"{folder}/model.irpa")
y = m(np.load(r"{tmp_path}/x.npy"))
assert np.array_equal(y, np.load(r"{tmp_path}/expected.npy")), "different result"
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
