"""Hardware profiles for msd's cost model (public as ``msd.cost``).

A :class:`Hardware` says what one machine does per second: the matrix unit's rate per element type
(the peak, and the rate IREE 3.13's generated code can reach on it), the vector unit's rate, the
memory bandwidth, whether IREE fuses weight dequantization into the matmul there, and whether the
matrix and vector units are decoupled engines that exchange data through global memory (Ascend's
AIC/AIV split).  :mod:`msd.cost.model` turns a profile and a matmul shape into predicted times.

Every number and where it comes from is listed in docs/targets.md ("Hardware profiles").  Only
``cpu-host`` is fitted to measurements on this machine (``benchmarks/cost_calibration.py --fit``);
the others are public peak figures, marked as such, and were not measured here.

Units: matrix rates in operations per second (one multiply-add = 2 operations), vector rates in
lane operations per second (one f32 add, multiply, convert, ... on one element = 1), bandwidth in
bytes per second, times in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from msd.errors import OptionError

ELEMENT_BYTES: dict[str, float] = {"f32": 4.0, "bf16": 2.0, "f16": 2.0, "fp8": 1.0, "i8": 1.0, "i4": 0.5, "fp4": 0.5}
KINDS = ("cpu", "gpu", "npu")

T = 1e12
G = 1e9


@dataclass(frozen=True)
class Hardware:
    """What one target machine does per second, as the cost model needs it."""

    name: str  # profile name, e.g. "npu-910b"
    title: str  # one line for humans
    kind: str  # cpu | gpu | npu
    peak: Mapping[str, float]  # hardware peak matrix rate (ops/s) per input element type
    matrix: Mapping[str, float]  # the rate IREE 3.13's code reaches (fitted, or a peak where it uses that unit)
    vector: float  # vector / SIMT unit, lane ops/s
    bandwidth: float  # global memory (DRAM / HBM), bytes/s
    dequant_fuses: bool  # IREE fuses weight dequantization into the matmul on this target
    decoupled: bool = False  # matrix and vector units are separate engines; data between them goes through memory
    m_tile: int = 1  # rows the matrix unit works on at once: M is padded to a multiple of it
    unpadded: tuple[str, ...] = ()  # element types computed on scalar/SIMT lanes instead (no padding)
    fused_m_block: int = 128  # a fused dequantization is redone once per block of this many rows
    launch_s: float = 5e-6  # cost of one dispatch
    overlap: float = 1.0  # 1: memory and compute of a dispatch overlap fully (roofline max); 0: they add up
    fault_s: float = 0.0  # per 4 KiB page of a fresh transient buffer (first touch), CPU runtimes
    fresh_min_bytes: float = math.inf  # transients at least this large are fresh (faulted in) on every call
    transient_buffers: int = 1  # a chain of such layers in one call reuses this many transient buffers
    int_type: str = "i8"  # the integer matmul MSD emits
    fused_msd: bool = False  # MSD is msd's own two dispatches: a quantizer, then one kernel (rescale in registers)
    kernel_vector: float = 0.0  # lane ops/s of msd's own kernels' vector work (0: ``vector``, IREE's code's rate)
    sources: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise OptionError(f"{self.name}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        for t in (*self.peak, *self.matrix):
            if t not in ELEMENT_BYTES:
                raise OptionError(f"{self.name}: unknown element type {t!r}")

    def rows(self, m: int, element_type: str) -> int:
        """``m`` rows as the matrix unit computes them for ``element_type`` (padded to ``m_tile``)."""
        if element_type in self.unpadded or self.m_tile <= 1:
            return m
        return -(-m // self.m_tile) * self.m_tile

    def rate(self, element_type: str) -> float:
        """Matrix ops/s for ``element_type`` inputs as reached by IREE's code (f32 when not listed)."""
        if element_type in self.matrix:
            return self.matrix[element_type]
        if element_type in ("bf16", "f16") and "f32" in self.matrix:  # no 16-bit unit: computed in f32
            return self.matrix["f32"]
        raise OptionError(f"hardware profile {self.name} has no matrix rate for {element_type}")


# ----------------------------------------------------------------------------- CPUs
# This machine, fitted by `python benchmarks/cost_calibration.py --fit` to the linear.py run recorded in
# docs/benchmarks.md (see docs/targets.md for the fit and its residuals).  Effective rates of IREE's code,
# not peaks: /proc/cpuinfo here lists avx512_vnni and avx512_bf16 (iree-notes.md describes an AVX2 host),
# and IREE's s8s8s32 mmt4d ukernel reaches about 2.5x its f32 rate in int8.
CPU_HOST = Hardware(
    name="cpu-host",
    title="this machine: 2-core AMD EPYC VM, IREE llvm-cpu host, data tiling (fitted)",
    kind="cpu",
    peak={},  # unknown: the VM reports no clock (and the cores it lands on have varied, see docs/targets.md)
    matrix={"f32": 252 * G, "i8": 639 * G},
    vector=27.4 * G,
    bandwidth=60 * G,
    dequant_fuses=False,
    launch_s=1.9e-6,
    overlap=0.30,
    fault_s=0.98e-6,
    fresh_min_bytes=48 * 2**20,
    transient_buffers=2,
    sources=("fitted: docs/benchmarks.md (benchmarks/linear.py, 2026-11-27)",
             "transient page faults: getrusage minflt per call, docs/targets.md"),
)

CPU_AVX2 = Hardware(
    name="cpu-avx2",
    title="2-core Zen3 VM at 2.445 GHz, AVX2+FMA, no VNNI (the host of ../shared/docs/iree-notes.md)",
    kind="cpu",
    peak={"f32": 157 * G, "i8": 314 * G, "bf16": 157 * G},
    matrix={"f32": 99 * G, "i8": 217 * G, "bf16": 50 * G},
    vector=78 * G,
    bandwidth=27 * G,
    dequant_fuses=False,
    launch_s=10e-6,
    overlap=0.6,
    fault_s=2.0e-6,
    fresh_min_bytes=48 * 2**20,
    transient_buffers=2,
    sources=("iree-notes §5: f32 peak 2x2.445 GHzx32, vpmaddwd int8 ~2x f32, DRAM 27 GB/s",
             "iree-notes §5 table: f32 M=128 43.2 ms (63%), MSD M=128 39.5 ms (69%); §6 bf16 86.3 ms"),
)

CPU_AVX512_VNNI = Hardware(
    name="cpu-avx512-vnni",
    title="16 AVX-512 VNNI server cores at 2.0 GHz (Ice Lake / Sapphire Rapids class), 150 GB/s share",
    kind="cpu",
    peak={"f32": 2.05 * T, "i8": 8.2 * T, "bf16": 4.1 * T},
    # IREE's s8s8s32 x86 ukernel multiplies i16 pairs (vpdpwssd: 32 MACs per zmm), so int8 reaches 2x f32,
    # not the 4x of u8xs8 vpdpbusd; 70% of peak is assumed, as measured for f32/int8 on the AVX2 host.
    matrix={"f32": 1.43 * T, "i8": 2.87 * T, "bf16": 2.87 * T},
    vector=1.02 * T,
    bandwidth=150 * G,
    dequant_fuses=False,
    launch_s=10e-6,
    overlap=0.6,
    fault_s=0.75e-6,
    fresh_min_bytes=48 * 2**20,
    transient_buffers=2,
    sources=("Intel: 2 FMA ports x 16 f32 lanes; VNNI vpdpbusd 64 / vpdpwssd 32 MACs per zmm; avx512_bf16 "
             "vdpbf16ps 32 MACs", "8-channel DDR5-4800 = 307 GB/s per socket, about half for 16 cores (assumed)"),
)

CPU_AARCH64_I8MM = Hardware(
    name="cpu-aarch64-i8mm",
    title="16 Neoverse V1-class cores at 2.6 GHz with +dotprod,+i8mm (Graviton3 class), 80 GB/s share",
    kind="cpu",
    peak={"f32": 1.33 * T, "i8": 10.6 * T, "bf16": 5.3 * T},
    matrix={"f32": 0.93 * T, "i8": 7.4 * T, "bf16": 3.7 * T},  # 70% of peak assumed
    vector=0.67 * T,
    bandwidth=80 * G,
    dequant_fuses=False,
    launch_s=10e-6,
    overlap=0.6,
    fault_s=0.75e-6,
    fresh_min_bytes=48 * 2**20,
    transient_buffers=2,
    sources=("Arm Neoverse V1: 2x256-bit SVE pipes; SMMLA 2x2x8 MACs per 128 bits (8x the f32 FMA rate), "
             "BFMMLA 2x2x4 (4x)", "Graviton3: 64 cores, DDR5 307 GB/s; a 16-core share assumed"),
)

# msd's fused CPU kernel (cpu_kernel="auto", the default on llvm-cpu where the CPU has a byte dot product:
# AVX-512 VNNI, AVX-VNNI, AVX2, Arm dotprod / i8mm): one quantizer dispatch and one kernel per linear, the
# per-group rescale in registers (fused_msd).  Its int8 rate is the whole kernel's (dots, unpacking,
# epilogue), measured on this repo's 2-core Intel Xeon VM (AVX-512 VNNI; benchmarks/linear.py,
# docs/benchmarks.md "Fused CPU kernel"): int8 per channel, 4096->11008 and 11008->4096, M = 512, p = 2:
# 80.8 and 81.0 ms per layer = 1.14 TOP/s = 80% of the vpdpbusd peak measured in that run (1.43 TOP/s).
# The other profiles take 65% of their byte-dot peak (an assumption from that measurement, less the
# quantizer's and the host copies' share of a whole call; not measured on them).  The AVX2 variant
# (vpsignb + vpmaddubsw + vpmaddwd + vpaddd per 32 int8 MACs) reached 74% of its instruction sequence's
# peak on the same VM (benchmarks/kernel.py --format int8 --isas avx2 --ms 512: 271 of 367 GOP/s), and that
# sequence's peak on the Zen3 of cpu-avx2 is about its i8 peak (2 multiplies per cycle).
# kernel_vector: the SIMD peak (cores x 2 ports x lanes x clock), at which the kernels' own vector code
# (the quantizer, the f32 epilogue) is costed.
KERNEL_SUFFIX = "-kernel"
KERNEL_SHARE = 0.65
CPU_HOST_KERNEL = replace(
    CPU_HOST, name="cpu-host" + KERNEL_SUFFIX, title="this machine with msd's fused CPU kernel (measured on the "
    "2-core AVX-512 VNNI Intel Xeon VM)", fused_msd=True, matrix={**CPU_HOST.matrix, "i8": 1.14 * T},
    kernel_vector=2 * 2 * 16 * 2.6 * G,
    sources=(*CPU_HOST.sources, "fused kernel: benchmarks/linear.py --format int8 --ms 512 (2026-12-04): 1.14 TOP/s; "
             "kernel_vector: 2 cores x 2 ports x 16 f32 lanes x 2.6 GHz"))
CPU_AVX2_KERNEL = replace(
    CPU_AVX2, name="cpu-avx2" + KERNEL_SUFFIX, title=CPU_AVX2.title + ", msd's fused AVX2 kernel", fused_msd=True,
    matrix={**CPU_AVX2.matrix, "i8": KERNEL_SHARE * CPU_AVX2.peak["i8"]}, kernel_vector=CPU_AVX2.vector,
    sources=(*CPU_AVX2.sources, f"fused kernel: {KERNEL_SHARE:.0%} of the i8 peak (assumed; the AVX2 variant reached "
             "74% of its sequence's peak on the AVX-512 VM; not measured on a Zen3)"))
CPU_AVX512_VNNI_KERNEL = replace(
    CPU_AVX512_VNNI, name="cpu-avx512-vnni" + KERNEL_SUFFIX, title=CPU_AVX512_VNNI.title + ", msd's fused VNNI "
    "kernel", fused_msd=True, matrix={**CPU_AVX512_VNNI.matrix, "i8": KERNEL_SHARE * CPU_AVX512_VNNI.peak["i8"]},
    kernel_vector=CPU_AVX512_VNNI.vector,
    sources=(*CPU_AVX512_VNNI.sources, f"fused kernel: {KERNEL_SHARE:.0%} of the vpdpbusd peak (67% measured on "
             "the 2-core VM)"))
CPU_AARCH64_I8MM_KERNEL = replace(
    CPU_AARCH64_I8MM, name="cpu-aarch64-i8mm" + KERNEL_SUFFIX, title=CPU_AARCH64_I8MM.title + ", msd's fused "
    "smmla kernel", fused_msd=True,
    matrix={**CPU_AARCH64_I8MM.matrix, "i8": KERNEL_SHARE * CPU_AARCH64_I8MM.peak["i8"]},
    kernel_vector=CPU_AARCH64_I8MM.vector,
    sources=(*CPU_AARCH64_I8MM.sources, f"fused kernel: {KERNEL_SHARE:.0%} of the smmla peak (assumed; not run on "
             "Arm)"))

# ----------------------------------------------------------------------------- GPUs
# IREE 3.13 lowers an int8 matmul on CUDA to scalar mad.lo.s32 (docs/targets.md): the int8 rate it
# reaches is the INT32 CUDA-core rate, not the tensor cores'.  f32 matmuls do not use TF32 by default.
CUDA_SM80 = Hardware(
    name="cuda-sm_80",
    title="NVIDIA A100 SXM4 80 GB (sm_80) through IREE 3.13",
    kind="gpu",
    peak={"f32": 19.5 * T, "bf16": 312 * T, "f16": 312 * T, "i8": 624 * T},
    matrix={"f32": 19.5 * T, "bf16": 312 * T, "f16": 312 * T, "i8": 19.5 * T},
    vector=9.75 * T,
    bandwidth=2.04 * T,
    dequant_fuses=True,
    m_tile=16,
    unpadded=("f32", "i8"),
    sources=("NVIDIA A100 datasheet: FP16/BF16 tensor 312 TFLOPS, INT8 624 TOPS, FP32 19.5 TFLOPS, 2039 GB/s",
             "IREE 3.13 int8 -> scalar mad.lo.s32 (tests/test_targets.py): 108 SMs x 64 INT32 lanes x 1.41 GHz"),
)

CUDA_SM90 = Hardware(
    name="cuda-sm_90",
    title="NVIDIA H100 SXM5 (sm_90) through IREE 3.13",
    kind="gpu",
    peak={"f32": 66.9 * T, "bf16": 989 * T, "f16": 989 * T, "fp8": 1979 * T, "i8": 1979 * T},
    # mma.sync only (no wgmma in IREE 3.13's NVIDIA path): 60% of the dense peak is assumed for it.
    matrix={"f32": 66.9 * T, "bf16": 594 * T, "f16": 594 * T, "i8": 33.5 * T},
    vector=33.5 * T,
    bandwidth=3.35 * T,
    dequant_fuses=True,
    m_tile=16,
    unpadded=("f32", "i8"),
    sources=("NVIDIA H100 SXM5 datasheet (dense): BF16 989 TFLOPS, INT8 1979 TOPS, FP32 67 TFLOPS, 3.35 TB/s",
             "IREE 3.13 int8 -> scalar mad.lo.s32: 132 SMs x 64 INT32 lanes x 1.98 GHz"),
)

# msd's own tensor-core kernel (gpu_kernel="auto", the default on sm_80 and later: int8 mma.sync PTX the
# pass writes, fed by its PTX quantizer) puts int8 on the tensor cores, M padded to the mma's 16 rows.
# Its rate was measured on an H200 (sm_90 silicon; benchmarks/gpu_check.py, docs/targets.md): ~150 TOPS
# for a 4096x4096 int8 layer at M = 128..2048, far under the datasheet peak (no shared-memory staging).
MMA_SUFFIX = "-mma"
CUDA_SM90_MMA = replace(
    CUDA_SM90, name="cuda-sm_90" + MMA_SUFFIX, title="NVIDIA H100/H200 (sm_90) with msd's tensor-core kernel",
    matrix={**CUDA_SM90.matrix, "i8": 150 * T}, unpadded=("f32",), fused_msd=True,
    sources=(CUDA_SM90.sources[0], "msd's mma.sync kernel on an H200 (benchmarks/gpu_check.py, 2026-12-04): "
             "4096x4096 int8, M=2048 p=1 68.7 GOP in 441 us, M=128 4.3 GOP in 30 us: ~150 TOPS"))
# Not measured on an A100: the H200 rate scaled by SMs x clock (108 x 1.41 GHz against 132 x 1.98 GHz).
CUDA_SM80_MMA = replace(
    CUDA_SM80, name="cuda-sm_80" + MMA_SUFFIX, title="NVIDIA A100 (sm_80) with msd's tensor-core kernel",
    matrix={**CUDA_SM80.matrix, "i8": 87 * T}, unpadded=("f32",), fused_msd=True,
    sources=(CUDA_SM80.sources[0], "estimated: the H200's measured ~150 TOPS (cuda-sm_90-mma) x (108 x 1.41) / "
             "(132 x 1.98) SMs x GHz = 87 TOPS; not measured on an A100"))

ROCM_GFX942 = Hardware(
    name="rocm-gfx942",
    title="AMD Instinct MI300X (gfx942) through IREE 3.13",
    kind="gpu",
    peak={"f32": 163.4 * T, "bf16": 1307.4 * T, "f16": 1307.4 * T, "fp8": 2614.9 * T, "i8": 2614.9 * T},
    matrix={"f32": 163.4 * T, "bf16": 1307.4 * T, "f16": 1307.4 * T, "i8": 2614.9 * T},
    vector=81.7 * T,
    bandwidth=5.3 * T,
    dequant_fuses=True,
    m_tile=16,
    sources=("AMD MI300X datasheet: FP16/BF16 1307.4 TFLOPS, INT8/FP8 2614.9, FP32 matrix/vector 163.4, 5.3 TB/s",
             "IREE 3.13 int8 -> v_mfma_i32_16x16x32_i8 (tests/test_targets.py)"),
)

ROCM_GFX950 = Hardware(
    name="rocm-gfx950",
    title="AMD Instinct MI355X (gfx950) through IREE 3.13",
    kind="gpu",
    peak={"f32": 157.3 * T, "bf16": 2516.6 * T, "f16": 2516.6 * T, "fp8": 5033 * T, "i8": 5033 * T,
          "fp4": 10066 * T},
    matrix={"f32": 157.3 * T, "bf16": 2516.6 * T, "f16": 2516.6 * T, "fp8": 5033 * T, "i8": 5033 * T},
    vector=78.6 * T,
    bandwidth=8.0 * T,
    dequant_fuses=True,
    m_tile=16,
    sources=("AMD MI355X: 256 CUs at 2.4 GHz, FP8 8192 flops/clk/CU (ISSCC 2026) = 5.0 PFLOPS, FP16 2.5, "
             "MXFP4 10; HBM3E 8 TB/s", "IREE 3.13 int8 -> v_mfma_i32_*_i8 (tests/test_targets.py)"),
)

# ----------------------------------------------------------------------------- NPU
# Ascend-910B-like, separated ("decoupled") architecture: each AI Core is an AI Cube core (AIC) plus
# two AI Vector cores (AIV); AIC and AIV exchange data through global memory.  Weight dequantization
# runs on the AIV and hands the cube a bf16 weight through global memory.
NPU_910B = Hardware(
    name="npu-910b",
    title="Ascend-910B-like NPU: 24 AIC + 48 AIV at 1.8 GHz, decoupled, 1.6 TB/s HBM (model, not measured)",
    kind="npu",
    peak={"bf16": 354 * T, "f16": 354 * T, "i8": 708 * T, "f32": 88 * T},
    matrix={"bf16": 354 * T, "f16": 354 * T, "i8": 708 * T, "f32": 88 * T},
    vector=5.5 * T,
    bandwidth=1.6 * T,
    dequant_fuses=False,
    decoupled=True,
    m_tile=16,
    launch_s=5e-6,
    sources=("Da Vinci core (HotChips 2019): cube 16x16x16 = 4096 FP16 MACs or 8192 INT8 MACs per cycle, "
             "vector unit 2048 bits", "Ascend C docs: separated architecture, AIC and AIV exchange data "
             "through global memory", "24 AIC / 48 AIV, 1.8 GHz, 1.6 TB/s are assumptions (published 910B "
             "figures: 280-376 TFLOPS FP16, 1.2-1.6 TB/s)"),
)

PROFILES: dict[str, Hardware] = {h.name: h for h in (
    CPU_HOST, CPU_AVX2, CPU_AVX512_VNNI, CPU_AARCH64_I8MM, CPU_HOST_KERNEL, CPU_AVX2_KERNEL, CPU_AVX512_VNNI_KERNEL,
    CPU_AARCH64_I8MM_KERNEL, CUDA_SM80, CUDA_SM90, CUDA_SM80_MMA, CUDA_SM90_MMA,
    ROCM_GFX942, ROCM_GFX950, NPU_910B,
)}

# llvm-cpu CPU names (``llvm-cpu:NAME``) that have AVX-512 VNNI; any other x86 name maps to cpu-avx2.
AVX512_CPUS = ("x86-64-v4", "icelake-server", "icelake-client", "sapphirerapids", "emeraldrapids", "graniterapids",
               "cascadelake", "cooperlake", "tigerlake", "znver4", "znver5")


def profile(name: str) -> Hardware:
    """A profile by name; raise ValueError listing the known ones."""
    if name not in PROFILES:
        raise OptionError(f"unknown hardware profile {name!r} (known: {', '.join(PROFILES)})")
    return PROFILES[name]


def profile_for(spec: str) -> Hardware:
    """The profile for a profile name or an msd target spec (``llvm-cpu[:cpu]``, ``cuda:sm_80``, ``npu``...)."""
    if spec in PROFILES:
        return PROFILES[spec]
    backend, _, arch = spec.partition(":")
    if backend == "llvm-cpu":
        if arch in ("", "host"):
            return CPU_HOST
        if arch == "aarch64":
            return CPU_AARCH64_I8MM
        return CPU_AVX512_VNNI if arch in AVX512_CPUS else CPU_AVX2
    if backend == "cuda" and (arch in ("", "sm_80", "sm_86", "sm_87", "sm_89") or arch.startswith("sm_8")):
        return CUDA_SM80_MMA  # (the default gpu_kernel="auto"; IREE's own lowering: iree_lowering())
    if backend == "cuda" and arch.startswith("sm_9"):
        return CUDA_SM90_MMA
    if backend == "rocm" and arch in ("", "gfx942"):
        return ROCM_GFX942
    if backend == "rocm" and arch == "gfx950":
        return ROCM_GFX950
    if backend == "npu":
        return NPU_910B
    raise OptionError(f"no hardware profile for {spec!r}: name one of {', '.join(PROFILES)}")


def iree_lowering(hw: Hardware) -> Hardware:
    """The profile of IREE's own lowering for a profile of msd's tensor-core kernel (``gpu_kernel="none"``:
    scalar int8 on CUDA) or of its fused CPU kernel (``cpu_kernel="none"``), else ``hw``."""
    for suffix in (MMA_SUFFIX, KERNEL_SUFFIX):
        if hw.name.endswith(suffix):
            return PROFILES[hw.name.removesuffix(suffix)]
    return hw


def cpu_kernel(hw: Hardware) -> Hardware:
    """The profile of msd's fused CPU kernel on the CPU of ``hw`` (a CPU profile of IREE's lowering), else
    ``hw``."""
    return PROFILES.get(hw.name + KERNEL_SUFFIX, hw) if hw.kind == "cpu" else hw


__all__ = ["ELEMENT_BYTES", "PROFILES", "Hardware", "cpu_kernel", "iree_lowering", "profile", "profile_for"]
