"""The tensor-core MSD kernel (passes/decompose_activations/cuda_kernel.py) without a GPU.

- its PTX, executed by a warp-level interpreter (tests/ptx_emu.py: the mma from the PTX ISA's fragment
  layouts), equals the float64 arithmetic on odd shapes (M = 1, 7, 33; N not a multiple of the warp's
  channels; groups of 32 and 128 and per channel; int8 and 4-bit codes; 1-3 slices);
- ``ptxas`` (the ``nvidia-cuda-nvcc`` package) assembles it for sm_80 and sm_90 without spills.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ptx_emu import Kernel, Memory
from test_cpu_kernel import _quantize_reference

import msd
from helpers import error_bound, mlp
from msd.compiler.pipeline.targets import ptxas_path
from msd.compiler.tools.ptx import assemble, kernels_in, mma_count, quantizers_in
from msd.errors import MsdError, OptionError
from msd.passes.decompose_activations.cpu_kernel import SLICE_RADIX
from msd.passes.decompose_activations.cuda_kernel import ARCHS, CudaKernelSpec, parse_shape
from msd.passes.decompose_activations.cuda_quantize import CudaQuantizeSpec
from msd.passes.decompose_activations.options import DecomposeOptions
from msd.passes.decompose_activations.quantize_kernel import QuantizeSpec


def pack_weight(w: np.ndarray, spec: CudaKernelSpec) -> np.ndarray:
    """``w [N, K]`` codes in the kernel's lane order (the layout the pass's tensor ops write)."""
    t, ks = spec.tiles, spec.ksteps
    padded = np.zeros((t * 8, spec.k), np.int8)
    padded[: spec.n] = w
    # [tile, n8, step, half, tq, byte] -> [tile, step, n8, tq, half, byte]: lane = 4·n8 + tq
    lanes = padded.reshape(t, 8, ks, 2, 4, 4).transpose(0, 2, 1, 4, 3, 5).reshape(t, ks, 32, 2, 4)
    if not spec.nibbles:
        return np.ascontiguousarray(lanes.reshape(t, ks, 32, 8))
    u = (lanes.astype(np.int16) + 8).astype(np.uint8)
    return np.ascontiguousarray((u[..., 0, :] | (u[..., 1, :] << 4)).view(np.int8))


def per_tile(v: np.ndarray, spec: CudaKernelSpec) -> np.ndarray:
    out = np.zeros((spec.tiles * 8, spec.groups), np.float32)
    out[: spec.n] = v
    return np.ascontiguousarray(out.reshape(spec.tiles, 8, spec.groups).transpose(0, 2, 1))


def operands(spec: CudaKernelSpec, m: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    n, k, g, p, groups = spec.n, spec.k, spec.group, spec.slices, spec.groups
    lo, hi = (-8, 8) if spec.nibbles else (-128, 128)
    w = rng.integers(lo, hi, (n, k)).astype(np.int8)
    w[0, :8] = lo
    codes = rng.integers(-127, 128, (m, p, k)).astype(np.int8)
    codes[:, :, :8] = -127
    s = (rng.random((m, groups if spec.scale_per_group else 1)) + 0.5).astype(np.float32)
    scale = (rng.random((n, groups)) * 0.01).astype(np.float32)
    offset = (rng.random((n, groups)) - 0.5).astype(np.float32)
    xsum = rng.standard_normal((m, groups)).astype(np.float32)
    ops = [codes, s, *([xsum] if spec.offset else []), pack_weight(w, spec), per_tile(scale, spec),
           *([per_tile(offset, spec)] if spec.offset else [])]
    dots = np.einsum("mpgk,ngk->mpng", codes.reshape(m, p, groups, g).astype(np.float64),
                     w.reshape(n, groups, g).astype(np.float64))
    digits = sum(dots[:, i] / SLICE_RADIX**i for i in range(p))
    s_g = np.broadcast_to(s.astype(np.float64), (m, groups))
    ref = np.einsum("mng,ng,mg->mn", digits, scale.astype(np.float64), s_g)
    if spec.offset:
        ref += xsum.astype(np.float64) @ offset.astype(np.float64).T
    return ops, ref


def run_emulated(spec: CudaKernelSpec, ops: list[np.ndarray], m: int) -> np.ndarray:
    mem = Memory()
    addrs = [mem.put(o) for o in ops]
    y_addr = mem.put(np.full((m, spec.n), np.nan, np.float32))
    Kernel(spec.ptx()).run(mem, [*addrs, y_addr, m], spec.workgroups(m))
    return mem.data[y_addr: y_addr + 4 * m * spec.n].view(np.float32).reshape(m, spec.n).copy()


CASES = [  # n, k, group, slices, scale per group, offset, nibbles, tiles
    (40, 256, 32, 2, False, True, True, 2),  # GGUF Q4_1-like: 4-bit, groups of 32, a min
    (33, 256, 128, 3, True, False, False, 2),  # int8 groups of 128, scale per (row, group), 3 slices
    (24, 96, 96, 1, False, False, False, 1),  # per channel (one group), 1 slice, one tile per warp
    (8, 128, 64, 2, False, True, True, 4),  # four tiles per warp, three of them padding
    (20, 256, 256, 2, False, True, False, 2),  # one group (per channel) split over 2 warps, with an offset
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: CudaKernelSpec(*c[:7], warp_tiles=c[7]).symbol)
def test_emulated_kernel_matches_float64(case: tuple) -> None:
    """Each warp of a workgroup takes a share of K (whole groups, or the one group's steps) and warp 0
    adds the others' partial sums from shared memory; the loads of up to 4 steps are issued together."""
    spec = CudaKernelSpec(*case[:7], warp_tiles=case[7])
    for m in (1, 7, 33):
        ops, ref = operands(spec, m, seed=m)
        got = run_emulated(spec, ops, m).astype(np.float64)
        assert not np.isnan(got).any(), "an output element was never written"
        rel = np.abs(got - ref).max() / np.abs(ref).max()
        assert rel < 1e-6, (spec.symbol, m, rel)


SHAPES = [  # n, k, group, slices, scale per group, offset, nibbles; gpu_kernel_shape
    ((40, 2048, 32, 2, False, True, True), "16x4x2"),  # 16 warps share 64 groups of 32
    ((20, 2048, 2048, 2, False, True, False), "16x2x8"),  # 16 warps share one group's 64 steps, 4 each
    ((24, 1024, 128, 3, True, True, True), "8x1x8"),  # 8 warps, one group of 4 steps each: unroll 4, not 8
    ((33, 1024, 1024, 1, False, False, False), ""),  # the default shape: 8 warps, 4 tiles (N padded to 64)
    ((33, 256, 256, 2, False, False, False), "16x2x4"),  # 8 steps of K: 2 warps (each at least 4 steps)
]


@pytest.mark.parametrize("case", SHAPES, ids=lambda c: c[1] or "default")
def test_emulated_kernel_shapes(case: tuple) -> None:
    """``gpu_kernel_shape``: more warps sharing K, other tile counts and load depths compute the same."""
    spec = CudaKernelSpec(*case[0], **parse_shape(case[1]))
    assert spec.split == min(int(case[1].split("x")[0]) if case[1] else 8, spec.ksteps // 4)
    for m in (1, 17):
        ops, ref = operands(spec, m, seed=m)
        got = run_emulated(spec, ops, m).astype(np.float64)
        assert not np.isnan(got).any(), "an output element was never written"
        assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-6, (spec.symbol, m)


def test_kernel_shape_option_names_what_is_wrong() -> None:
    for bad, says in (("16x2", "expected SPLITxTILESxUNROLL"), ("3x2x4", "split one of"), ("8x5x4", "tiles 1-4"),
                      ("8x2x16", "unroll one of")):
        with pytest.raises(OptionError, match=says):
            DecomposeOptions(gpu_kernel="sm_80", gpu_kernel_shape=bad).validate()


QUANTIZE_CASES = [  # k, group, slices, scale per group, offset
    (96, 32, 2, True, True), (96, 96, 3, False, False), (256, 128, 1, False, True), (64, 16, 2, True, False),
    (40, 20, 2, True, True),  # a group of 5 quads: no shuffles, every lane adds into shared memory
    (576, 576, 2, False, False),  # 144 quads: a second, partial round
    (1024, 32, 2, False, True),  # one scale per row (4 warps' maxima, 2 rounds), sums per group of 32
    (4096, 128, 2, True, True),  # 256 threads, 4 rounds
    (16384, 16384, 1, False, False),  # 1024 threads (32 warps) share one maximum
]


def run_quantizer(q: CudaQuantizeSpec, x: np.ndarray) -> list[np.ndarray]:
    m = x.shape[0]
    mem = Memory()
    outs = {"a": np.full((m, q.slices, q.k), 99, np.int8), "s": np.full((m, q.groups if q.scale_per_group else 1),
                                                                         -1, np.float32)}
    if q.offset:
        outs["xs"] = np.full((m, q.groups), -1, np.float32)
    addrs = [mem.put(x), *(mem.put(v) for v in outs.values())]
    Kernel(q.ptx()).run(mem, [*addrs, m], (m, 1, 1))
    return [mem.data[a: a + v.nbytes].view(v.dtype).reshape(v.shape).copy() for a, v in zip(addrs[1:], outs.values())]


@pytest.mark.parametrize("case", QUANTIZE_CASES, ids=lambda c: CudaQuantizeSpec(*c).symbol)
def test_emulated_quantizer_matches_the_tensor_ops(case: tuple) -> None:
    """The PTX quantizer's codes and scales bit for bit as emit_kernel's tensor ops compute them (the CPU
    quantizer's reference), group sums to f32 rounding; rows of zeros, of huge values, with an inf
    (scale NaN, codes 0) and with a NaN."""
    q = CudaQuantizeSpec(*case)
    ref_spec = QuantizeSpec(q.k, q.group, q.slices, q.scale_per_group, q.offset, 0)
    rng = np.random.default_rng(q.k)
    x = (rng.standard_normal((6, q.k)) * rng.choice([1e-3, 1.0, 1e3], (6, 1))).astype(np.float32)
    x[1] = 0.0
    x[2] *= np.float32(1e30)
    x[3, 5] = np.inf
    x[4, q.k - 1] = np.nan
    got = run_quantizer(q, x)
    a, s, sums, _ = _quantize_reference(x, ref_spec)
    np.testing.assert_array_equal(got[0], a)
    np.testing.assert_array_equal(got[1], s)
    if q.offset:
        fine = np.isfinite(sums)
        bound = 1e-6 * np.abs(x.reshape(6, q.groups, q.group)).sum(-1)
        assert (np.abs(got[2][fine] - sums[fine]) <= bound[fine]).all()
        assert not np.isfinite(got[2][~fine]).any()


def test_emulated_kernel_writes_nothing_outside_y() -> None:
    """Rows past M and channels past N are not stored: the bytes around y keep their sentinel."""
    spec = CudaKernelSpec(20, 64, 32, 2, False, False, warp_tiles=2)
    ops, _ = operands(spec, 3, seed=0)
    mem = Memory()
    addrs = [mem.put(o) for o in ops]
    y_addr = mem.put(np.zeros((3, 20), np.float32))
    guard = mem.put(np.full(64, 7, np.uint8))
    Kernel(spec.ptx()).run(mem, [*addrs, y_addr, 3], spec.workgroups(3))
    assert (mem.data[guard: guard + 64] == 7).all()
    assert (mem.data[y_addr + 240: guard] == 0).all()


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_ptxas_assembles_every_variant(arch: str) -> None:
    ptxas_path()  # a clear error when the nvidia-cuda-nvcc package is missing
    for case in CASES:
        spec = CudaKernelSpec(*case[:7], warp_tiles=case[7], arch=arch)
        proc = assemble(spec.ptx(), arch)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "0 bytes spill stores" in proc.stderr, proc.stderr


def test_spec_refuses_what_it_cannot_run() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        CudaKernelSpec(16, 96, 48, 2, False, False)
    with pytest.raises(ValueError, match="no tensor-core MSD kernel for 'sm_75'"):
        CudaKernelSpec(16, 64, 32, 2, False, False, arch="sm_75")
    assert "sm_80" in ARCHS


# ----------------------------------------------------------------------------------------------
# Through msd.compile: the CUDA module's kernels, the weights its packing ops wrote


def _archive(cm) -> dict[str, bytes]:
    import iree.runtime as rt

    index = rt.ParameterIndex()
    index.load(str(cm.workdir / "model.irpa"))
    return {key: bytes(entry.file_view) for key, entry in index.items() if entry.is_file}


@pytest.mark.parametrize("fmt", ["int4-g32", "int8"])
def test_compiled_cuda_linear_computes_the_model_in_emulation(fmt: str) -> None:
    """msd.compile(target="cuda:sm_80") end to end but the GPU: the PTX in the .vmfb, run by the emulator
    on the weights the module's own packing ops wrote into model.irpa (at compile time, on this CPU) and
    on the activation codes its PTX quantizer wrote (bit for bit the tensor ops' codes), equals the
    quantized model within the slices=2 bound."""
    n, k = 40, 256
    kwargs = {"weights": "int4", "group_size": 32} if fmt == "int4-g32" else {"weights": "int8"}
    model = msd.quantize(mlp(k, n, seed=3), **kwargs)
    x = torch.randn(7, k, generator=torch.Generator().manual_seed(5))
    cm = msd.compile(model, (x,), target="cuda:sm_80", slices=2)
    grouped = fmt == "int4-g32"
    spec = CudaKernelSpec(n, k, 32 if grouped else k, 2, grouped, grouped, nibbles=grouped)
    kernels = kernels_in(cm.vmfb)
    assert list(kernels) == [spec.symbol], list(kernels)
    params = _archive(cm)
    packed = {key.rsplit(".", 1)[1]: value for key, value in params.items() if key.startswith("msd.pack.")}
    assert set(packed) == {r for r in spec.roles() if r not in ("a", "s", "xs")}, set(packed)
    quantizer = CudaQuantizeSpec(k, spec.group, 2, grouped, grouped)
    assert list(quantizers_in(cm.vmfb)) == [quantizer.symbol]
    emulated = run_quantizer(quantizer, x.numpy())
    a, s, xs, _ = _quantize_reference(x.numpy(), QuantizeSpec(k, spec.group, 2, grouped, grouped, 0))
    np.testing.assert_array_equal(emulated[0], a)
    np.testing.assert_array_equal(emulated[1], s)
    a, s, xs = emulated if grouped else (*emulated, None)
    types = dict(zip(spec.roles(), spec.operand_types()))
    ops = []
    for role in spec.roles():
        if role in packed:
            dims = [int(d) for d in types[role][7:-1].split("x")[:-1]]
            ops.append(np.frombuffer(packed[role], np.int8 if role == "w" else np.float32).reshape(dims))
        else:
            ops.append({"a": a, "s": s, "xs": xs}[role])
    y = run_emulated(spec, ops, x.shape[0]).astype(np.float64)
    y += np.frombuffer(params["0.bias"], np.float32)
    ref, bound = error_bound(model, x, slices=2)
    err = np.abs(y - ref.numpy())
    assert (err <= bound.numpy()).all(), (err / bound.numpy()).max()
    assert err.max() > 0  # the emulated kernel really computed it (not the reference)


def test_every_msd_contraction_of_a_cuda_module_gets_ptx_that_assembles() -> None:
    """An int8 MLP compiled for sm_80 and sm_90: each rewritten contraction is reported with
    the tensor-core kernel (or the reason it kept IREE's lowering), each kernel's PTX is in the .vmfb
    with its mma instructions, and ptxas assembles it for its arch without spilling."""
    torch.manual_seed(0)
    model = mlp(256, 96, 48, 40, seed=1)
    model = msd.quantize(model, weights="int8")  # one scale per channel: a group of K
    x = torch.randn(5, 256)
    for arch in ("sm_80", "sm_90"):
        cm = msd.compile(model, (x,), target=f"cuda:{arch}", slices=2)
        done = [d for d in cm.report.decisions if d.rewritten]
        with_kernel = [d for d in done if "tensor-core (mma.sync int8" in d.reason]
        # K = 48 does not split into the kernel's steps of 32: IREE's lowering, said why
        assert len(done) == 3 and len(with_kernel) == 2, [d.reason for d in done]
        (other,) = [d for d in done if d not in with_kernel]
        assert "fused kernel not used: K=48" in other.reason, other.reason
        kernels, quantizers = kernels_in(cm.vmfb), quantizers_in(cm.vmfb)
        assert len(kernels) == 2 and len(quantizers) == 2, (list(kernels), list(quantizers))
        for ptx in [*kernels.values(), *quantizers.values()]:
            assert f".target {arch}" in ptx and (mma_count(ptx) >= 2 or ptx in quantizers.values())
            proc = assemble(ptx, arch)
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert "0 bytes spill stores" in proc.stderr, proc.stderr


def test_a_gguf_generator_compiled_for_cuda_is_saved_here_and_refused_to_run_here(tmp_path) -> None:
    """compile_generator(target="cuda:sm_80") on a machine without a GPU: the prefill/decode artifact
    (every quantized linear a tensor-core kernel fed by the PTX quantizer) is saved for the GPU machine;
    running it here is refused with a message that says why."""
    pytest.importorskip("gguf", reason="the GGUF front end needs the 'gguf' package")
    from test_gguf import write_tiny_gguf

    from msd.compiler.llm.generate import compile_generator
    from msd.runtime.generate import TextGenerator

    gen = compile_generator(write_tiny_gguf(tmp_path / "tiny.gguf", seed=5), slices=2, max_ctx=32,
                            target="cuda:sm_80")
    cm = gen.compiled
    assert cm.report.rewritten and all("tensor-core" in d.reason for d in cm.report.rewritten), cm.report.format()
    assert kernels_in(cm.vmfb) and quantizers_in(cm.vmfb)
    folder = gen.save(tmp_path / "artifact")
    assert json.loads((folder / "msd.json").read_text())["target"]["driver"] == "cuda"
    with pytest.raises(RuntimeError, match="which this machine does not have"):
        gen.generate_ids([5, 200], 2)
    with pytest.raises(MsdError, match="compiled for cuda:sm_80, which needs a device of IREE.s .cuda. driver"):
        TextGenerator.load(folder)
