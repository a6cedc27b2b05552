"""The cost model (msd.cost): hand-computed cases, decisions per shape and target, and the pass,
compiler and artifact honouring them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import msd
import msd.cost as mt
from msd.cost.hardware import Hardware

REPO = Path(__file__).resolve().parent.parent


def toy(**kw: object) -> Hardware:
    """A profile with round numbers, so that the expected times can be worked out by hand."""
    base: dict = dict(name="toy", title="toy", kind="gpu", peak={}, matrix={"f32": 1e12, "bf16": 2e12, "i8": 4e12},
                      vector=1e11, bandwidth=1e11, dequant_fuses=True, launch_s=0.0, overlap=1.0)
    base.update(kw)
    return Hardware(**base)


# ------------------------------------------------------------------------------ hand-computed cases
def test_fused_baseline_by_hand() -> None:
    c = mt.baseline_cost(toy(), mt.Matmul(1, 1000, 1000))
    # bytes: int8 weight 1e6 + f32 scales 4e3 + x, y 4e3 each; matrix 2·1·1e6 / 1e12; the
    # dequantization (2 ops per weight element) once, since M=1 is one block of 128 rows.
    assert c.bytes == pytest.approx(1.012e6)
    assert c.memory_s == pytest.approx(1.012e-5)
    assert c.matrix_s == pytest.approx(2e-6)
    assert c.vector_s == pytest.approx(2e-5)
    assert c.total_s == pytest.approx(2.2e-5)  # max(memory, matrix + vector): vector-bound
    assert c.dispatches == 1 and c.stall_s == 0


def test_fused_dequantization_is_redone_per_block_of_rows() -> None:
    one = mt.baseline_cost(toy(), mt.Matmul(128, 1000, 1000)).vector_s
    two = mt.baseline_cost(toy(), mt.Matmul(129, 1000, 1000)).vector_s
    assert two == pytest.approx(2 * one)


def test_msd_on_coupled_units_by_hand() -> None:
    c = mt.msd_cost(toy(), mt.Matmul(1, 1000, 1000), 2)
    # amax: x 4e3 B | 2e3 ops; slices: x + 2e3 int8 | 1e4 ops; int8 matmul: weight + slices + 8e3 B of
    # int32 accumulators | 2·2·1e6 / 4e12; epilogue: accumulators + y | 7e3 ops.  Each dispatch is
    # max(memory, compute) with overlap=1.
    parts = [max(4e3 / 1e11, 2e3 / 1e11), max(6e3 / 1e11, 1e4 / 1e11),
             max((1.004e6 + 2e3 + 8e3) / 1e11, 1e-6), max(12e3 / 1e11, 7e3 / 1e11)]
    assert c.total_s == pytest.approx(sum(parts))
    assert c.matrix_s == pytest.approx(1e-6)
    assert c.dispatches == 4


def test_decoupled_units_stall_the_matrix_unit_on_dequantization() -> None:
    npu = toy(kind="npu", matrix={"bf16": 1e12, "i8": 2e12}, vector=1e10, dequant_fuses=False, decoupled=True,
              m_tile=16)
    mm = mt.Matmul(1, 1000, 1000, act="bf16")
    b = mt.baseline_cost(npu, mm)
    # int8 read + bf16 write + bf16 read of the weight, + scales, x, y
    assert b.bytes == pytest.approx(1e6 + 4e3 + 2 * 2e6 + 4e3)
    assert b.matrix_s == pytest.approx(2 * 16 * 1e6 / 1e12)  # M padded to the 16-row cube
    assert b.vector_s == pytest.approx(2e6 / 1e10)
    assert b.stall_s == pytest.approx(2e-4 - 3.2e-5)
    assert b.total_s == pytest.approx(2e-4)  # the cube waits for the vector unit
    q = mt.msd_cost(npu, mm, 2)
    assert q.bytes == pytest.approx(1.004e6 + 2e3 + 2 * 2e3 + 2 * 8e3 + 2e3)
    assert q.vector_s == pytest.approx(((2 + 2 * 5) * 1e3 + (2 * 2 + 3) * 1e3) / 1e10)
    assert q.stall_s == 0
    assert q.total_s == pytest.approx(2 * 16 * 1e6 / 2e12)  # both slices fit one 16-row tile


def test_cpu_baseline_pays_page_faults_for_a_fresh_float_weight() -> None:
    cpu = toy(kind="cpu", matrix={"f32": 1e11, "i8": 2e11}, vector=1e10, bandwidth=1e10, dequant_fuses=False,
              fault_s=1e-6, fresh_min_bytes=1e6, transient_buffers=2, overlap=0.5, launch_s=1e-6)
    c = mt.baseline_cost(cpu, mt.Matmul(1, 1000, 1000, chain=4))
    faults = 1e-6 * 4e6 / 4096 * (2 / 4)  # a chain of 4 reuses 2 transient buffers
    t1 = 5.004e-4 + 0.5 * 2e-4 + faults  # read int8 + write f32 | 2e6 dequant ops
    t2 = 4.008e-4 + 0.5 * 2e-5  # read f32 + x, y | 2e6 MACs
    assert c.fault_s == pytest.approx(faults)
    assert c.total_s == pytest.approx(t1 + t2 + 2e-6)
    small = mt.baseline_cost(cpu, mt.Matmul(1, 100, 1000))  # 400 kB float weight: below fresh_min_bytes
    assert small.fault_s == 0


def test_bits_and_slices() -> None:
    assert [mt.slices_for_bits(b) for b in (1, 8, 9, 16, 17, 24)] == [1, 1, 2, 2, 3, 3]
    assert [mt.bits_of(p) for p in (1, 2, 3)] == [8, 16, 24]
    with pytest.raises(ValueError, match="about 24 bits"):
        mt.slices_for_bits(25)
    with pytest.raises(ValueError, match="must be positive"):
        mt.slices_for_bits(0)
    with pytest.raises(ValueError, match="not supported"):
        mt.bits_of(4)


def test_matmul_validates_and_describes() -> None:
    mm = mt.Matmul(512, 4096, 4096, batch=2, act="bf16", weight_bits=4, group=128, offset=True, m_assumed=True)
    assert mm.shape == "B=2 M=512? N=4096 K=4096"
    assert mm.format == "i4 g128 +offset, bf16 act"
    assert mm.groups == 32
    with pytest.raises(ValueError, match="does not divide"):
        mt.Matmul(1, 8, 100, group=32)
    with pytest.raises(ValueError, match="must be positive"):
        mt.Matmul(0, 8, 8)


# ------------------------------------------------------------------------------ decisions
LLAMA_Q = dict(n=4096, k=4096, act="bf16")


def test_npu_decode_rewrites_prefill_keeps_unless_fewer_slices() -> None:
    npu = mt.profile("npu-910b")
    decode = mt.decide(npu, mt.Matmul(1, **LLAMA_Q), min_bits=16)
    assert decode.rewrite and decode.slices == 2 and decode.estimate.speedup > 2
    prefill = mt.decide(npu, mt.Matmul(2048, **LLAMA_Q), min_bits=16)
    assert not prefill.rewrite and "baseline kept" in prefill.reason  # int8 cube = 2x bf16: 2 slices tie
    coarse = mt.decide(npu, mt.Matmul(2048, **LLAMA_Q), min_bits=8)
    assert coarse.rewrite and coarse.slices == 1 and coarse.estimate.speedup > 1.5


def test_npu_decode_dequantization_outruns_the_cube() -> None:
    est = mt.estimate("npu", mt.Matmul(1, **LLAMA_Q), 2)
    assert est.baseline.vector_s > 3 * est.baseline.matrix_s and est.baseline.stall_s > 0
    assert est.msd.stall_s == 0 and est.msd.vector_s < est.msd.matrix_s
    assert est.baseline.bytes / est.msd.bytes == pytest.approx(5, rel=0.05)  # 1 + 2 + 2 bytes vs 1 per weight


def test_kv_cache_traffic_ratio() -> None:
    """Scores q·Kᵀ over an int8 K cache (32 heads, 4096 tokens, head dim 128): the baseline reads int8,
    writes and reads bf16 (5 bytes per cached element), MSD reads the int8 K once; per-token scales
    and MSD's int32 scores bring the whole contraction to a bit over 4x."""
    scores = mt.Matmul(1, 4096, 128, batch=32, act="bf16")
    est = mt.estimate("npu", scores, 2)
    assert 4.0 < est.baseline.bytes / est.msd.bytes < 5.0


@pytest.mark.parametrize(("spec", "decode", "prefill"), [
    ("npu", True, False),
    ("cpu-host", True, True),  # IREE's llvm-cpu does not fuse the dequantization: MSD always pays
    ("rocm:gfx942", False, False),
    ("cuda:sm_80", False, False),  # no int8 tensor cores through IREE 3.13
])
def test_decisions_differ_by_target_bf16(spec: str, decode: bool, prefill: bool) -> None:
    assert mt.decide(spec, mt.Matmul(1, **LLAMA_Q), slices=2).rewrite is decode
    assert mt.decide(spec, mt.Matmul(2048, **LLAMA_Q), slices=2).rewrite is prefill


def test_f32_prefill_pays_on_int8_matrix_units_only() -> None:
    f32 = mt.Matmul(2048, 4096, 4096)
    assert mt.decide("rocm:gfx942", f32).rewrite  # int8 MFMA is 16x the f32 MFMA rate
    assert not mt.decide("cuda-sm_80", f32).rewrite  # IREE's lowering: scalar int8 = the f32 CUDA-core rate
    assert mt.decide("cuda:sm_80", f32).rewrite  # msd's tensor-core kernel (the default on sm_80+)


def test_cuda_profiles_of_the_tensor_core_kernel_and_of_irees_lowering() -> None:
    """A cuda target costs msd's kernel (gpu_kernel="auto": int8 on the tensor cores, two dispatches);
    with gpu-kernel none the pass costs IREE's lowering (scalar int8), and the manifest says which."""
    from msd.cost.hardware import iree_lowering
    from msd.passes.decompose_activations.decide import policy_for
    from msd.passes.decompose_activations.options import DecomposeOptions

    mma, scalar = mt.profile_for("cuda:sm_90"), mt.profile_for("cuda-sm_90")
    assert mma.fused_msd and not scalar.fused_msd and iree_lowering(mma) is scalar and iree_lowering(scalar) is scalar
    assert mma.rate("i8") > 4 * scalar.rate("i8") and mma.rows(1, "i8") == 16 and scalar.rows(1, "i8") == 1
    assert mt.estimate(mma, mt.Matmul(1, 4096, 4096), 2).msd.dispatches == 2
    assert policy_for(DecomposeOptions(target="cuda", gpu_kernel="sm_80")).hardware.name == "cuda-sm_80-mma"
    assert policy_for(DecomposeOptions(target="cuda")).hardware.name == "cuda-sm_80"


def test_cpu_profiles_of_the_fused_kernel_and_of_irees_lowering() -> None:
    """An llvm-cpu target with the fused CPU kernel (cpu_kernel on, the default where the CPU has a byte dot
    product) costs msd's two dispatches at the kernel's rate; cpu-kernel none costs IREE's lowering; a
    profile named explicitly is costed as it is.  On the AVX-512 server profile IREE's lowering loses to
    f32 at prefill (vpdpwssd, four dispatches) while the fused kernel wins."""
    from msd.cost.hardware import cpu_kernel, iree_lowering
    from msd.passes.decompose_activations.decide import policy_for
    from msd.passes.decompose_activations.options import DecomposeOptions

    for name in ("cpu-host", "cpu-avx2", "cpu-avx512-vnni", "cpu-aarch64-i8mm"):
        iree, fused = mt.profile(name), cpu_kernel(mt.profile(name))
        assert fused.name == name + "-kernel" and fused.fused_msd and not iree.fused_msd
        assert iree_lowering(fused) is iree and cpu_kernel(fused) is fused
        assert mt.estimate(fused, mt.Matmul(16, 4096, 4096), 2).msd.dispatches == 2
    assert cpu_kernel(mt.profile("cuda-sm_80")).name == "cuda-sm_80"
    pick = {(target, isa): policy_for(DecomposeOptions(target=target, cpu_kernel=isa)).hardware.name
            for target, isa in (("llvm-cpu", "avx512-vnni"), ("llvm-cpu", "none"), ("llvm-cpu:znver3", "avx2"),
                                ("cpu-host", "avx512-vnni"), ("cpu-host-kernel", "none"))}
    assert pick == {("llvm-cpu", "avx512-vnni"): "cpu-host-kernel", ("llvm-cpu", "none"): "cpu-host",
                    ("llvm-cpu:znver3", "avx2"): "cpu-avx2-kernel", ("cpu-host", "avx512-vnni"): "cpu-host",
                    ("cpu-host-kernel", "none"): "cpu-host"}
    prefill = mt.Matmul(2048, 4096, 4096, weight_bits=4, group=32, offset=True)
    assert not mt.decide("cpu-avx512-vnni", prefill).rewrite
    assert mt.decide("cpu-avx512-vnni-kernel", prefill).rewrite


def test_profiles_for_targets() -> None:
    names = {s: mt.profile_for(s).name for s in ("llvm-cpu", "llvm-cpu:host", "llvm-cpu:aarch64", "llvm-cpu:znver4",
                                                  "llvm-cpu:x86-64-v3", "cuda", "cuda:sm_89", "cuda:sm_90", "rocm",
                                                  "rocm:gfx950", "npu", "npu-910b")}
    assert names == {"llvm-cpu": "cpu-host", "llvm-cpu:host": "cpu-host", "llvm-cpu:aarch64": "cpu-aarch64-i8mm",
                     "llvm-cpu:znver4": "cpu-avx512-vnni", "llvm-cpu:x86-64-v3": "cpu-avx2", "cuda": "cuda-sm_80-mma",
                     "cuda:sm_89": "cuda-sm_80-mma", "cuda:sm_90": "cuda-sm_90-mma", "rocm": "rocm-gfx942",
                     "rocm:gfx950": "rocm-gfx950", "npu": "npu-910b", "npu-910b": "npu-910b"}
    with pytest.raises(ValueError, match="no hardware profile for 'vulkan-spirv'"):
        mt.profile_for("vulkan-spirv")
    for hw in mt.PROFILES.values():
        assert hw.sources and hw.bandwidth > 0 and hw.rate("i8") > 0 and hw.rate("f32") > 0


# ------------------------------------------------------------------------------ the NPU target
def test_npu_target_needs_a_registered_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    from msd.compiler.pipeline import targets

    registered = targets.registered_backends()
    assert "llvm-cpu" in registered  # the list really comes from the installed compiler
    if "amd-aie" not in registered:
        with pytest.raises(ValueError, match="registers no NPU HAL target backend") as err:
            targets.resolve("npu")
        assert "llvm-cpu" in str(err.value) and "does not fall back" in str(err.value)
        with pytest.raises(ValueError, match="registers no NPU HAL target backend"):
            msd.compile(nn.Linear(4, 4), (torch.randn(1, 4),), target="npu")
    monkeypatch.setattr(targets, "registered_backends", lambda: (*registered, "amd-aie"))
    t = targets.resolve("npu")
    assert t.backend == "npu" and t.flags == ("--iree-hal-target-backends=amd-aie",) and t.driver == "xrt"


# ------------------------------------------------------------------------------ the pass, compiler, artifact
def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return msd.quantize(nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 16)))


def test_pass_records_the_cost_fields() -> None:
    from iree.compiler import ir

    from msd.passes import run_pass
    from msd.passes.decompose_activations import NAME

    text = (REPO / "tests" / "lit" / "decompose_activations" / "cost_decisions.mlir").read_text()
    with ir.Context(), ir.Location.unknown():
        module = ir.Module.parse(text)
        report = run_pass(module.operation, NAME, slices=2, target="npu")
    decode, prefill, dynamic = report.decisions[:3]  # bf16 decode, prefill, dynamic M (then f32 ones)
    assert [decode.shape, prefill.shape, dynamic.shape] == ["M=1 N=4096 K=4096", "M=2048 N=4096 K=4096",
                                                            "M=512? N=4096 K=4096"]
    assert decode.rewritten and decode.slices == 2 and decode.hardware == "npu-910b"
    assert decode.format == "i8 per-channel, bf16 act"
    assert decode.baseline_s > 2 * decode.msd_s
    assert not prefill.rewritten and prefill.slices == 0 and prefill.baseline_s and prefill.msd_s
    assert dynamic.rewritten and "costed as 512 rows" in dynamic.reason
    assert decode.to_json()["baseline_s"] == decode.baseline_s


def test_compile_decide_cost_keeps_or_rewrites_and_stays_correct(tmp_path: Path) -> None:
    model = _mlp()
    x = torch.randn(2, 64)
    ref = model(x)
    kept = msd.compile(model, (x,), decide="cost", hardware="cuda-sm_80")  # runs on llvm-cpu, decided as CUDA
    assert len(kept.report.skipped) == 2 and not kept.report.rewritten
    assert torch.allclose(kept(x), ref, rtol=1e-4, atol=1e-4)  # IREE's own lowering of the same model
    torch.manual_seed(1)
    mixed = msd.quantize(nn.Sequential(nn.Linear(1024, 1024), nn.GELU(), nn.Linear(1024, 16)))
    x = torch.randn(2, 1024)
    cm = msd.compile(mixed, (x,), decide="cost", min_bits=24, hardware="npu-910b")
    # the 1024x1024 layer moves 5 bytes per weight in the baseline: MSD; the 16-row one is launch-bound: kept
    assert [(d.rewritten, d.slices) for d in cm.report.decisions] == [(True, 3), (False, 0)] and cm.slices == 3
    assert torch.allclose(cm(x), mixed(x), rtol=1e-4, atol=1e-4)
    folder = cm.save(tmp_path / "art")
    manifest = json.loads((folder / "msd.json").read_text())
    assert manifest["decide"] == {"policy": "cost", "hardware": "npu-910b", "min_bits": 24}
    d = manifest["decisions"][0]
    assert d["shape"] == "M=2 N=1024 K=1024" and d["slices"] == 3 and d["baseline_s"] > d["msd_s"] > 0
    out = subprocess.run([str(Path(sys.executable).with_name("msd")), "inspect", str(folder)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert "decisions by the cost model for npu-910b, min_bits=24" in out.stdout
    assert "M=2 N=1024 K=1024" in out.stdout and "keep baseline" in out.stdout and "rewrite" in out.stdout


def test_compile_default_is_unchanged() -> None:
    cm = msd.compile(_mlp(), (torch.randn(2, 64),), emit="msd")
    assert isinstance(cm, str) and cm.count("xi8>) outs(") >= 2


def test_compile_decision_options_are_checked() -> None:
    model, x = _mlp(), (torch.randn(2, 64),)
    with pytest.raises(ValueError, match="decide='maybe' is not supported"):
        msd.compile(model, x, decide="maybe")
    with pytest.raises(ValueError, match="needs decide='cost'"):
        msd.compile(model, x, hardware="npu-910b")
    with pytest.raises(ValueError, match="about 24 bits"):
        msd.compile(model, x, min_bits=32)
    with pytest.raises(ValueError, match="slices=0"):
        msd.compile(model, x, slices=0, decide="cost")
    with pytest.raises(ValueError, match="no hardware profile for 'vulkan-spirv'"):
        msd.compile(model, x, target="vulkan-spirv", decide="cost")


# ------------------------------------------------------------------------------ calibration data
def test_cpu_host_profile_reproduces_the_documented_measurements() -> None:
    """cpu-host was fitted to docs/benchmarks.md (benchmarks/cost_calibration.py --fit): every
    MSD/baseline ratio there must be predicted within ±30 %.  A new linear.py run that breaks this
    means the machine changed: refit."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import cost_calibration

    points = cost_calibration.parse_benchmarks(REPO / "docs" / "benchmarks.md")
    rows = cost_calibration.rows(points)
    assert len(rows) == 27
    bad = [(pt.shape, pt.m, p, round(pred / meas, 2)) for pt, p, meas, pred, *_, ok in rows if not ok]
    assert not bad, f"outside ±30 %: {bad}"


def test_cpu_host_kernel_profile_reproduces_the_documented_kernel_runs() -> None:
    """cpu-host-kernel against the fused-kernel runs in docs/benchmarks.md (benchmarks/cost_calibration.py
    --kernel): p=2 at M = 1, 128 and 512 within ±30 % for int8 and int4 groups of 32, and most rows in all
    (M = 16 and p=1 are looser: docs/targets.md says why)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import cost_calibration

    points = cost_calibration.parse_kernel_runs(REPO / "docs" / "benchmarks.md")
    assert {pt.fmt for pt in points} == {"int8", "int4-g32"} and len(points) == 32
    lines, passed = cost_calibration.kernel_table(points)
    rows = [line.split(" | ") for line in lines[2:]]
    bad = [r[:4] + [r[6]] for r in rows if r[3] == "2" and r[2] in ("1", "128", "512") and "**no**" in r[7]]
    assert not bad, f"outside ±30 %: {bad}"
    assert passed >= 0.8 * len(points)
