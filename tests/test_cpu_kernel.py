"""The fused MSD CPU kernel (passes/decompose_activations/cpu_kernel.py, emit_kernel.py).

- the kernel alone, through IREE, against a float64 reference of its own arithmetic (odd M, N not a
  multiple of the lanes, group 32 and 128, slices 1-3, offsets) on the ISAs this CPU has;
- the activation-quantizing kernel alone, against the arithmetic of the tensor ops it replaces;
- every variant compiled for a CPU that has it and disassembled: the byte dot product is there;
- whole models through ``msd.compile`` (``cpu_kernel`` auto/explicit): within the float64 error bound
  of the method, with a dynamic M, the report naming the kernel, and the same result as IREE's
  lowering of the int8 matmuls up to f32 rounding.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from iree.compiler.tools.binaries import find_tool

import msd
from helpers import error_bound, mlp
from msd.compiler.pipeline.targets import kernel_isas, resolve
from msd.passes.decompose_activations.cpu_kernel import ISAS, SLICE_RADIX, KernelSpec, code_row
from msd.passes.decompose_activations.quantize_kernel import QuantizeSpec
from msd.runtime import enable_amx

HOST_ISAS = kernel_isas(resolve("llvm-cpu"))
# A CPU that has each variant (the disassembly check compiles for it, whatever this host is) and the
# instructions its dot products must be, with their registers: (instruction, register, at least how many).
# AMX: the tile products (signed 4-bit codes, staged; unsigned 8-bit ones, in place) and, for the rows
# left over from the tiles, AVX-512 VNNI.
ISA_CPU = {"avx512-vnni": ("znver4", [("vpdpbusd", "%zmm", 8)]), "avx-vnni": ("alderlake", [("vpdpbusd", "%ymm", 8)]),
           "avx2": ("znver3", [("vpmaddubsw", "%ymm", 8)]), "neon-dot": ("aarch64", [("sdot", ".4s", 8)]),
           "neon-i8mm": ("aarch64", [("smmla", ".4s", 8)]),
           "amx-int8": ("sapphirerapids", [("tdpbs", "%tmm", 2), ("vpdpbusd", "%zmm", 8)])}


def _needs(isa: str) -> None:
    if isa not in HOST_ISAS:
        pytest.skip(f"this CPU lacks {isa} (it has: {', '.join(HOST_ISAS) or 'none'}); the variant's code is still "
                    "compiled and disassembled by test_each_variant_uses_its_dot_product_instruction (and an Arm "
                    "variant's data flow is run with its instruction emulated)")


# ----------------------------------------------------------------------------------------------
# The kernel alone


def _compile(spec: KernelSpec, tmp: Path, cpu: str = "host", dump: Path | None = None, emulate: bool = False) -> Path:
    src, out = tmp / "kernel.mlir", tmp / "kernel.vmfb"
    src.write_text(spec.standalone_module(emulate))
    target = list(resolve(f"llvm-cpu:{cpu}").flags)  # the flags msd.compile uses (aarch64: triple + features)
    cmd = [find_tool("iree-compile"), str(src), *target, "-o", str(out)]
    if dump is not None:
        cmd.append(f"--iree-hal-dump-executable-intermediates-to={dump}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _operands(spec: KernelSpec, m: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Random operands in the kernel's layouts, and the float64 result of its arithmetic."""
    rng = np.random.default_rng(seed)
    n, k, g, p, lanes, tiles, groups = spec.n, spec.k, spec.group, spec.slices, spec.lanes, spec.tiles, spec.groups
    lo, hi = (-8, 8) if spec.nibbles else (-128, 128)
    w = rng.integers(lo, hi, (n, k)).astype(np.int8)
    w[0, :8] = lo  # the extremes of both operands meet (with the codes -127 below): no saturation
    w[1 % n, 8:16] = hi - 1
    codes = rng.integers(-127, 128, (m, p, k)).astype(np.int32)
    codes[:, :, :8] = -127
    s = (rng.random((m, groups if spec.scale_per_group else 1)) + 0.5).astype(np.float32)
    scale = (rng.random((n, groups)) * 0.01).astype(np.float32)
    offset = (rng.random((n, groups)) - 0.5).astype(np.float32)
    xsum = rng.standard_normal((m, groups)).astype(np.float32)
    padded = np.zeros((tiles * lanes, k), np.int8)
    padded[:n] = w
    if spec.k_step == 4:  # a step: [lane, 4 codes]
        w_t = padded.reshape(tiles, lanes, groups, g // 4, 4).transpose(0, 2, 3, 1, 4)
    else:  # smmla: [channel pair, channel, 8 codes]
        w_t = padded.reshape(tiles, lanes // 2, 2, groups, g // 8, 8).transpose(0, 3, 4, 1, 2, 5)
    w_t = w_t.reshape(tiles, groups, g // spec.k_step, -1)
    if spec.nibbles:  # quad j in the low nibble, quad j + g/8 in the high one, each + 8
        u = (w_t.astype(np.int16) + 8).astype(np.uint8)
        half = g // spec.k_step // 2
        w_t = (u[:, :, :half] | (u[:, :, half:] << 4)).view(np.int8)
    elif spec.weight_bias:  # int8 codes + 128, read as unsigned bytes
        w_t = (w_t.astype(np.int16) + spec.weight_bias).astype(np.uint8).view(np.int8)
    code_sums = -spec.weight_bias * codes.reshape(m, p, groups, g).sum(-1, dtype=np.int32)

    def per_tile(v: np.ndarray) -> np.ndarray:
        out = np.zeros((tiles * lanes, groups), np.float32)
        out[:n] = v
        return np.ascontiguousarray(out.reshape(tiles, lanes, groups).transpose(0, 2, 1))

    a = np.zeros((m, p, code_row(k)), np.int8)  # [m, p, k] signed bytes, rows padded as the kernel reads them
    a[:, :, :k] = codes
    ops = [a, s, *([xsum] if spec.offset else []), *([code_sums.astype(np.int32)] if spec.weight_bias else []),
           np.ascontiguousarray(w_t), per_tile(scale), *([per_tile(offset)] if spec.offset else [])]
    dots = np.einsum("mpgk,ngk->mpng", codes.reshape(m, p, groups, g).astype(np.float64),
                     w.reshape(n, groups, g).astype(np.float64))
    digits = sum(dots[:, i] / SLICE_RADIX**i for i in range(p))  # [m, n, G]
    s_g = np.broadcast_to(s.astype(np.float64), (m, groups))
    ref = np.einsum("mng,ng,mg->mn", digits, scale.astype(np.float64), s_g)
    if spec.offset:
        ref += xsum.astype(np.float64) @ offset.astype(np.float64).T
    return ops, ref


def _two(isa: str, n: int, cols: int) -> int:
    """Two workgroups where the channels make two register blocks or more (N=40 in 1-tile blocks: 3 blocks,
    shared 1 and 2), else one."""
    return min(2, -(-n // (ISAS[isa].lanes * cols)))


KERNEL_CASES = [  # n, k, group, slices, scale per group, offset, 4-bit codes as nibbles
    (40, 64, 32, 2, False, False, False),
    (33, 256, 128, 3, False, True, False),
    (16, 128, 32, 1, True, True, False),
    (1, 96, 96, 2, False, False, False),
    (40, 64, 32, 2, False, False, True),
    (33, 256, 128, 3, True, True, True),
    (7, 96, 96, 1, False, True, True),
    (20, 2048, 64, 2, False, True, True),  # K a multiple of 2048: code rows padded by a cache line
]


@pytest.mark.parametrize("isa", sorted(ISAS))
def test_kernel_matches_its_float64_arithmetic(isa: str, tmp_path: Path) -> None:
    _needs(isa)
    import iree.runtime as rt

    for i, (n, k, g, p, per_group, offset, nibbles) in enumerate(KERNEL_CASES):
        spec = KernelSpec(isa, n, k, g, p, per_group, offset, rows=ISAS[isa].rows, workgroups=_two(isa, n, 1 + i % 2),
                          cols=1 + i % 2, nibbles=nibbles)  # 2 channel tiles per block: N=33 leaves a tile masked
        vmfb = _compile(spec, tmp_path)
        ctx = rt.SystemContext(config=rt.Config("local-task"))
        ctx.add_vm_module(rt.VmModule.copy_buffer(ctx.instance, vmfb.read_bytes()))
        for m in (1, 7, 33, 55):  # the row blocks and the one-row remainder loop (AMX: blocks of 16 first)
            ops, ref = _operands(spec, m, seed=10 * i + m)
            got = np.asarray(ctx.modules.module["linear"](*ops)).astype(np.float64)
            assert got.shape == (m, n)
            rel = np.abs(got - ref).max() / np.abs(ref).max()
            assert rel < 1e-6, (spec.symbol, m, rel)  # f32 accumulation of exact integer dots


# ----------------------------------------------------------------------------------------------
# The activation-quantizing kernel alone


def _quantize_reference(x: np.ndarray, spec: QuantizeSpec) -> tuple[np.ndarray, ...]:
    """The tensor ops' arithmetic (emit_kernel's fallback) in numpy f32: codes, scales, group sums, and
    the code sums the kernel starts from (``-weight_bias · Σ codes`` per row, slice and group)."""
    m, k, g = x.shape[0], spec.k, spec.group
    xg = x.reshape(m, spec.groups, g)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        amax = np.abs(xg).max(-1) if spec.scale_per_group else np.abs(x).max(-1, keepdims=True)
        amax = np.where(np.isnan(amax), np.float32(np.nan), amax).astype(np.float32)
        s = np.where(amax < np.inf, np.maximum(amax, np.float32(1.17549435e-38)) / np.float32(127), np.nan)
        s = s.astype(np.float32)
        t = xg / (s[:, :, None] if spec.scale_per_group else s[:, :, None])
        ok = np.abs(t) < np.inf
        codes = []
        for _ in range(spec.slices):
            d = np.clip(np.rint(t), -127, 127).astype(np.float32)
            codes.append(np.where(ok, d, 0).astype(np.int32))
            t = ((t - d) * np.float32(SLICE_RADIX)).astype(np.float32)
    c = np.stack(codes, 1)  # [m, p, G, g]
    code_sums = (-spec.weight_bias * c.sum(-1)).astype(np.int32)
    return c.reshape(m, spec.slices, k).astype(np.int8), s, xg.sum(-1, dtype=np.float64), code_sums


QUANTIZE_CASES = [  # k, group, slices, scale per group, offset, weight bias of the kernel fed
    (96, 32, 2, True, True, 128), (96, 96, 3, False, False, 0), (256, 128, 1, False, True, 8),
    (64, 16, 2, True, False, 0), (40, 20, 2, True, True, 128), (2048, 128, 2, False, True, 8),
]


def test_quantize_kernel_matches_the_tensor_ops(tmp_path: Path) -> None:
    """Codes, scales and code sums bit for bit as emit_kernel's tensor ops compute them (one scale per
    group or per row, 1-3 slices, the -bias·Σcodes of VNNI's and AVX2's biased weights), group sums to
    f32 rounding; rows of zeros, of huge values, with an inf
    (scale NaN, codes 0) and with a NaN; odd M and a group that is not a multiple of 8 lanes."""
    import iree.runtime as rt

    for i, (k, g, p, per_group, offset, bias) in enumerate(QUANTIZE_CASES):
        spec = QuantizeSpec(k, g, p, per_group, offset, bias)
        (tmp_path / "q.mlir").write_text(spec.standalone_module())
        vmfb = tmp_path / "q.vmfb"
        proc = subprocess.run([find_tool("iree-compile"), str(tmp_path / "q.mlir"), *resolve("llvm-cpu").flags,
                               "-o", str(vmfb)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        ctx = rt.SystemContext(config=rt.Config("local-task"))
        ctx.add_vm_module(rt.VmModule.copy_buffer(ctx.instance, vmfb.read_bytes()))
        rng = np.random.default_rng(i)
        for m in (1, 7):
            x = (rng.standard_normal((m, k)) * rng.choice([1e-3, 1.0, 1e3], (m, 1))).astype(np.float32)
            if m == 7:
                x[1] = 0.0
                x[2] *= np.float32(1e30)
                x[3, 5] = np.inf
                x[4, k - 1] = np.nan
            got = [np.asarray(v) for v in ctx.modules.module["quantize"](x)]
            a, s, sums, code_sums = _quantize_reference(x, spec)
            assert got[0].shape == (m, p, code_row(k))
            np.testing.assert_array_equal(got[0][:, :, :k], a, err_msg=f"{spec.symbol} M={m}: codes")
            # an all-zero row's scale FLT_MIN/127 is subnormal: the CPU may flush it to zero (its codes are
            # 0 and its result 0 either way)
            sub = (s > 0) & (s < np.finfo(np.float32).tiny)
            assert np.all((got[1][sub] == s[sub]) | (got[1][sub] == 0))
            np.testing.assert_array_equal(got[1][~sub], s[~sub], err_msg=f"{spec.symbol} M={m}: scales")
            if offset:
                fine = np.isfinite(sums)
                np.testing.assert_allclose(got[2][fine], sums[fine], rtol=1e-5,
                                           atol=1e-5 * np.abs(x[np.isfinite(x)]).max())
            if bias:
                np.testing.assert_array_equal(got[-1], code_sums, err_msg=f"{spec.symbol} M={m}: code sums")


ARM = [isa for isa in sorted(ISAS) if ISAS[isa].arm]


@pytest.mark.parametrize("isa", ARM)
def test_arm_kernels_data_flow_with_their_instructions_emulated(isa: str, tmp_path: Path) -> None:
    """The Arm kernels' layouts, loops and lane shuffles, checked numerically on any CPU: the same kernel
    text with ``sdot`` / ``smmla`` written as vector arithmetic of the same semantics."""
    import iree.runtime as rt

    for i, (n, k, g, p, per_group, offset, nibbles) in enumerate(KERNEL_CASES):
        spec = KernelSpec(isa, n, k, g, p, per_group, offset, rows=ISAS[isa].rows, workgroups=_two(isa, n, 1 + i % 2),
                          cols=1 + i % 2, nibbles=nibbles)
        vmfb = _compile(spec, tmp_path, emulate=True)
        ctx = rt.SystemContext(config=rt.Config("local-task"))
        ctx.add_vm_module(rt.VmModule.copy_buffer(ctx.instance, vmfb.read_bytes()))
        for m in (1, 7):
            ops, ref = _operands(spec, m, seed=10 * i + m)
            got = np.asarray(ctx.modules.module["linear"](*ops)).astype(np.float64)
            rel = np.abs(got - ref).max() / np.abs(ref).max()
            assert rel < 1e-6, (spec.symbol, m, rel)


@pytest.mark.parametrize("nibbles", [False, True], ids=["int8", "int4"])
@pytest.mark.parametrize("isa", sorted(ISAS))
def test_each_variant_uses_its_dot_product_instruction(isa: str, nibbles: bool, tmp_path: Path) -> None:
    cpu, expected = ISA_CPU[isa]
    spec = KernelSpec(isa, 40, 256, 32, 2, False, True, nibbles=nibbles)
    _compile(spec, tmp_path, cpu=cpu, dump=tmp_path / "dump")
    (asm,) = (tmp_path / "dump").glob("*.s")
    lines = asm.read_text().splitlines()
    for instruction, reg, least in expected:  # e.g. a block of rows × 2 slices per weight vector, unrolled
        dots = [line for line in lines if instruction in line]
        assert len(dots) >= least and all(reg in line for line in dots), (instruction, dots[:4])
    if isa == "amx-int8":  # signed 4-bit codes staged, unsigned 8-bit codes read in place
        assert any(("tdpbssd" if nibbles else "tdpbsud") in line for line in lines)


def test_amx_use_is_granted_where_the_cpu_has_it() -> None:
    """``enable_amx`` asks Linux for the AMX tile state: refused without the CPU flags, granted with them
    (Linux >= 5.16 has the request; an older kernel refuses it, and the kernel then keeps to VNNI)."""
    import platform

    if "amx-int8" in HOST_ISAS and tuple(int(v) for v in platform.release().split(".")[:2]) < (5, 16):
        pytest.skip(f"Linux {platform.release()} predates the AMX permission request (5.16)")
    assert enable_amx() == ("amx-int8" in HOST_ISAS)


AMX_CHILD = """
import ctypes, sys
import numpy as np
import iree.runtime as rt

def permitted():  # arch_prctl(ARCH_GET_XCOMP_PERM): the process's permitted xstate features
    mask = ctypes.c_uint64()
    assert ctypes.CDLL(None).syscall(158, 0x1022, ctypes.byref(mask)) == 0
    return bool(mask.value >> 18 & 1)  # XFEATURE_XTILEDATA

before = permitted()
ctx = rt.SystemContext(config=rt.Config("local-task"))
ctx.add_vm_module(rt.VmModule.copy_buffer(ctx.instance, open(sys.argv[1], "rb").read()))
data = np.load(sys.argv[2])
ops = [data[f"op{i}"] for i in range(len(data.files) - 1)]
got = np.asarray(ctx.modules.module["linear"](*ops)).astype(np.float64)
ref = data["ref"]
print(before, permitted(), float(np.abs(got - ref).max() / np.abs(ref).max()))
"""


def test_amx_kernel_asks_for_the_tiles_itself(tmp_path: Path) -> None:
    """In a process that never asked Linux for AMX (plain iree.runtime, no msd), the amx-int8 kernel at
    M >= 16 requests the tile state itself (the permission appears) and computes the right result; so
    IREE's own tools (iree-run-module, iree-benchmark-module) run msd's AMX modules too."""
    _needs("amx-int8")
    import sys

    spec = KernelSpec("amx-int8", 40, 256, 32, 2, True, True, workgroups=2, cols=2, nibbles=True)
    vmfb = _compile(spec, tmp_path)
    ops, ref = _operands(spec, 37, seed=5)
    np.savez(tmp_path / "ops.npz", **{f"op{i}": o for i, o in enumerate(ops)}, ref=ref)
    out = subprocess.run([sys.executable, "-c", AMX_CHILD, str(vmfb), str(tmp_path / "ops.npz")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after, rel = out.stdout.split()
    assert (before, after) == ("False", "True"), out.stdout
    assert float(rel) < 1e-6


def test_amx_blocks_and_chunks() -> None:
    """How the AMX variant cuts K: groups of <= 64 are one tile product each, in blocks of 2 groups where
    the count is even (two sets of C tiles where 2 slices leave room); larger groups in chunks of 64 (4-bit
    codes: an even number of chunks, each within one nibble half); a chunk always divides the group."""
    spec = KernelSpec("amx-int8", 32, 4096, 32, 2, True, True, nibbles=True)
    assert (spec.amx_chunk, spec.amx_group_block, spec.amx_sets) == (32, 2, 2)
    assert KernelSpec("amx-int8", 32, 4096, 32, 3, True, False).amx_sets == 1  # 3 slices: 10 tiles for 2 sets
    assert KernelSpec("amx-int8", 32, 4096, 4096, 2, False, False).amx_chunk == 64
    assert KernelSpec("amx-int8", 32, 576, 96, 2, False, False, nibbles=True).amx_chunk == 48
    assert KernelSpec("amx-int8", 32, 576, 192, 2, False, False, nibbles=True).amx_chunk == 48  # 4 chunks
    assert KernelSpec("amx-int8", 32, 300, 100, 1, False, False).amx_chunk == 20
    assert KernelSpec("amx-int8", 32, 576, 32, 2, False, False).amx_group_block == 2  # 18 groups
    assert KernelSpec("amx-int8", 32, 288, 32, 2, False, False).amx_group_block == 1  # 9: blocks divide the groups


def test_kernel_spec_refuses_what_it_cannot_run() -> None:
    with pytest.raises(ValueError, match="unknown kernel ISA"):
        KernelSpec("sse4", 16, 64, 32, 2, False, False)
    with pytest.raises(ValueError, match="groups must divide K and be multiples of 4"):
        KernelSpec("avx512-vnni", 16, 64, 30, 2, False, False)
    with pytest.raises(ValueError, match="group 12 is not a multiple of 8"):
        KernelSpec("avx512-vnni", 16, 48, 12, 2, False, False, nibbles=True)
    with pytest.raises(ValueError, match="workgroups=3: the kernel has 2 register blocks"):
        KernelSpec("avx512-vnni", 40, 64, 32, 2, False, False, cols=2, workgroups=3)


# ----------------------------------------------------------------------------------------------
# Whole models through msd.compile

FORMATS = {
    "int8-channel": dict(weights="int8"),
    "int8-g32": dict(weights="int8", group_size=32),
    "int4-g128-zero-point": dict(weights="int4", group_size=128),
}


@pytest.mark.parametrize(("isa", "fmt"), [*(("avx512-vnni", f) for f in sorted(FORMATS)),
                                          *(("amx-int8", f) for f in sorted(FORMATS)),
                                          ("avx-vnni", "int4-g128-zero-point"), ("avx2", "int8-g32"),
                                          ("avx2", "int4-g128-zero-point")])
def test_models_through_the_kernel_stay_within_the_bound(isa: str, fmt: str) -> None:
    _needs(isa)
    model = msd.quantize(mlp(256, 384, 36, seed=4), **FORMATS[fmt])  # N = 36: not a multiple of the lanes
    x = torch.randn(7, 256, generator=torch.Generator().manual_seed(2))
    x[:, 3] *= 20.0
    rows = torch.export.Dim("rows", min=1, max=64)
    slices = 2
    cm = msd.compile(model, (x,), slices=slices, cpu_kernel=isa, dynamic_shapes=({0: rows},))
    assert len(cm.report.rewritten) == 2, cm.report.format()
    assert all(f"fused {isa} kernel" in d.reason for d in cm.report.rewritten), cm.report.format()
    four_bit = "4-bit weight codes, two per byte"
    assert all((four_bit in d.reason) == fmt.startswith("int4") for d in cm.report.rewritten), cm.report.format()
    plain = msd.compile(model, (x,), slices=slices, cpu_kernel="none", dynamic_shapes=({0: rows},))
    for m in (1, 7, 33, 50):
        xm = torch.randn(m, 256, generator=torch.Generator().manual_seed(m))
        y = cm(xm).double()
        ref, bound = error_bound(model, xm, slices)
        assert ((y - ref).abs() <= bound).all(), f"{fmt} slices={slices} M={m} exceeds the bound"
        # the same arithmetic as IREE's lowering of the int8 matmuls, summed in another order
        torch.testing.assert_close(y, plain(xm).double(), rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_code_rows_padded_when_k_is_a_multiple_of_2048(dtype: torch.dtype) -> None:
    """K = 2048: the codes' rows are one cache line longer than K (:func:`code_row`), written so by the
    quantizing kernel (f32 rows) and by the tensor ops (bf16 rows), for an x86 and an Arm kernel alike;
    run on this CPU's kernel, the results stay IREE's lowering's."""
    model = msd.quantize(mlp(2048, 40, seed=3), weights="int4", group_size=32).to(dtype)
    x = torch.randn(5, 2048, generator=torch.Generator().manual_seed(1)).to(dtype)
    for isa, cpu in (("avx512-vnni", "znver4"), ("neon-dot", "aarch64")):
        ir_text = msd.compile(model, (x,), emit="msd", cpu_kernel=isa, target=f"llvm-cpu:{cpu}")
        assert f"tensor<?x2x{code_row(2048)}xi8>" in ir_text and "tensor<?x2x2048xi8>" not in ir_text, isa
    if not HOST_ISAS:
        pytest.skip("this CPU has no byte dot product msd's kernels use (AVX2, AVX-VNNI, AVX-512 VNNI, Arm "
                    "dotprod), so nothing to run here; the padded layout was checked in the IR above, and its "
                    "K=2048 kernel case runs on every CPU through test_arm_kernels_data_flow_with_their_"
                    "instructions_emulated")
    y = msd.compile(model, (x,), cpu_kernel=HOST_ISAS[0])(x).double()
    plain = msd.compile(model, (x,), cpu_kernel="none")(x).double()
    if dtype == torch.float32:
        ref, bound = error_bound(model, x, 2)
        assert ((y - ref).abs() <= bound).all()
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: the result's own rounding
    torch.testing.assert_close(y, plain, rtol=tol, atol=tol * float(plain.abs().max()))


def test_auto_picks_the_hosts_kernel_and_none_keeps_irees_lowering() -> None:
    model = msd.quantize(mlp(128, 64, seed=1), weights="int8", group_size=32)
    x = torch.randn(3, 128)
    auto = msd.compile(model, (x,)).report.rewritten[0].reason
    if HOST_ISAS:
        assert f"fused {HOST_ISAS[0]} kernel" in auto
    else:
        assert "fused" not in auto
    assert "fused" not in msd.compile(model, (x,), cpu_kernel="none").report.rewritten[0].reason
    ir_text = msd.compile(model, (x,), emit="msd", cpu_kernel="avx512-vnni", target="llvm-cpu:znver4")
    assert "flow.dispatch @msd_linear_avx512_vnni" in ir_text and "stream.executable private" in ir_text
    arm = msd.compile(model, (x,), emit="vmfb", target="llvm-cpu:aarch64")  # auto: the Arm dot-product kernel
    assert b"msd_linear_neon_dot" in arm


def test_kernel_options_are_checked() -> None:
    model = msd.quantize(mlp(64, 32), weights="int8")
    x = torch.randn(2, 64)
    with pytest.raises(msd.OptionError, match="takes int8 slices"):
        msd.compile(model, (x,), cpu_kernel="avx512-vnni", act_format="mxfp4")
    with pytest.raises(msd.OptionError, match="is a CPU kernel; target 'cuda' is not llvm-cpu"):
        msd.compile(model, (x,), cpu_kernel="avx512-vnni", target="cuda", emit="msd")
    with pytest.raises(msd.OptionError, match="'neon-dot' is an Arm kernel; target 'llvm-cpu:znver4' is an x86 CPU"):
        msd.compile(model, (x,), cpu_kernel="neon-dot", target="llvm-cpu:znver4", emit="msd")
    with pytest.raises(msd.OptionError, match="'avx2' is an x86 kernel; target 'llvm-cpu:aarch64' is an Arm CPU"):
        msd.compile(model, (x,), cpu_kernel="avx2", target="llvm-cpu:aarch64", emit="msd")
    missing = [isa for isa in ISAS if isa not in HOST_ISAS]
    if missing:  # on a host without a variant, asking for it names what the host has
        with pytest.raises(msd.OptionError, match="this host's CPU lacks it"):
            msd.compile(model, (x,), cpu_kernel=missing[0])


def test_kernel_benchmark_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks/kernel.py`` (the kernel alone, the docs' kernel figures) end to end on tiny shapes with
    this CPU's kernels: a table row per configuration.  Its ceilings are the one part replaced (they take
    seconds and are tested by the benchmarks that report them)."""
    if not HOST_ISAS:
        pytest.skip("kernel.py times the fused CPU kernel on this CPU, which has none of its ISAs (AVX2, AVX-VNNI, "
                    "AVX-512 VNNI, AMX, Arm dotprod/i8mm); the kernels' code is checked by the disassembly tests")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import kernel

    for name in ("read_bandwidth", "dot_peak", "amx_peak"):
        monkeypatch.setattr(kernel, name, lambda *a, **k: 1.0)
    isas = ",".join(HOST_ISAS[:2])
    assert kernel.main(["--shapes", "256x40", "--ms", "1,17", "--isas", isas, "--rounds", "1", "--calls", "2",
                        "--quantizer", "--workgroups", "1,2"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.startswith("| 256x40 M=")]
    assert len(rows) == 2 * 2 * len(HOST_ISAS[:2]), rows
    assert {line.split(" workgroups ")[1].split()[0] for line in rows} == {"1", "2"}, rows
    assert len([line for line in out if line.startswith("| quantize K=256 M=")]) == 2, out


@pytest.mark.parametrize("case", [0, 2, 5, 7], ids=lambda i: "n{}_k{}_g{}_p{}".format(*KERNEL_CASES[i][:4]))
def test_amx_rows_equal_the_vnni_rows_bit_for_bit(case: int, tmp_path: Path) -> None:
    """The AMX blocks compute the same exact integer dots as AVX-512 VNNI and then the same f32 steps in
    the same order, so amx-int8 and avx512-vnni give identical results (not just close ones)."""
    _needs("amx-int8")
    import iree.runtime as rt

    n, k, g, p, per_group, offset, nibbles = KERNEL_CASES[case]
    out = {}
    for isa in ("amx-int8", "avx512-vnni"):
        spec = KernelSpec(isa, n, k, g, p, per_group, offset, workgroups=_two(isa, n, 2), cols=2, nibbles=nibbles)
        (tmp_path / isa).mkdir()
        vmfb = _compile(spec, tmp_path / isa)
        ctx = rt.SystemContext(config=rt.Config("local-task"))
        ctx.add_vm_module(rt.VmModule.copy_buffer(ctx.instance, vmfb.read_bytes()))
        ops, _ = _operands(spec, 41, seed=case)
        out[isa] = np.asarray(ctx.modules.module["linear"](*ops))
    np.testing.assert_array_equal(out["amx-int8"], out["avx512-vnni"])


def test_kernels_have_workgroup_counts_irees_task_system_balances() -> None:
    """32 workgroups, 16 for layers of 16-31 register blocks, else one per block (IREE hands a worker 8
    workgroups at a time once there are 8 per worker: docs/benchmarks.md, "Fused CPU kernel")."""
    from msd.passes.decompose_activations.emit_kernel import kernel_workgroups

    # AVX-512, 2 tiles of 16: 32 channels a block (1, 6, 15, 18, 30, 48 and 344 blocks)
    channels = (24, 192, 480, 576, 960, 1536, 11008)
    assert [kernel_workgroups(n, "avx512-vnni", 2) for n in channels] == [1, 6, 15, 16, 16, 32, 32]
    assert kernel_workgroups(960, "avx2", 1) == 32  # 8 channels a block: 120 blocks
