"""IREE targets msd compiles for: ``name[:arch]`` → compiler flags and the runtime driver.

    llvm-cpu            host CPU (``llvm-cpu:x86-64-v3``, ``llvm-cpu:znver3`` … name a CPU;
                        ``llvm-cpu:aarch64`` cross-compiles for Arm with +dotprod,+i8mm)
    cuda                NVIDIA, default sm_80 (``cuda:sm_89``, ``cuda:sm_90`` via an explicit target attribute)
    rocm                AMD, default gfx942 (``rocm:gfx950``)
    vulkan-spirv        Vulkan/SPIR-V (``vulkan-spirv:rdna3`` names a Vulkan target)
    npu                 an NPU HAL backend, when the installed compiler registers one (see ``_npu``)

Facts behind the choices (IREE 3.13, ``../shared/docs/iree-notes.md`` §4): int8 matmuls reach the
CPU ukernels only with data tiling; IREE 3.13's CUDA target table has no sm_90/sm_100 entry (sm_90 is
written into the module as a ``hal.device.targets`` attribute; sm_80 PTX also JITs forward); the old
``--iree-hip-target`` spelling is gone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """An IREE target: compiler flags and the runtime driver that runs its artifacts."""

    name: str  # the spec as given, e.g. "cuda:sm_89"
    backend: str  # llvm-cpu | cuda | rocm | vulkan-spirv
    arch: str
    flags: tuple[str, ...]
    driver: str
    # ``hal.device.targets`` attribute to put on the module when flags alone cannot name the target
    # (IREE 3.13 has no sm_90 entry: the target is spelled out in the IR instead).
    device_targets: str = ""


CUDA_ARCHS = ("sm_60", "sm_61", "sm_70", "sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_120", "sm_121")
# Hopper: not in IREE 3.13's table, so msd writes the target into the module (sm_89's description with
# the arch and PTX version of Hopper; verified to emit ``.target sm_90`` PTX).
CUDA_EXPLICIT_ARCHS = {"sm_90": "+ptx80", "sm_90a": "+ptx80"}
_NV_TARGET = (
    '#hal.device.target<"cuda", [#hal.executable.target<"cuda", "cuda-nvptx-fb", {{iree_codegen.target_info = '
    '#iree_gpu.target<arch = "{arch}", features = "{features}", '
    'wgp = <compute = fp64|fp32|fp16|int64|int32|int16|int8, storage = b64|b32|b16|b8, '
    'subgroup = shuffle|arithmetic, dot = dp4xi8toi32, mma = [<NV_MMA_SYNC_F32_16x8x16_F16>, '
    '<NV_MMA_SYNC_F16_16x8x16_F16>, <NV_MMA_SYNC_F32_16x8x16_BF16>, <NV_MMA_SYNC_F32_16x8x32_F8E4M3FN>, '
    '<NV_MMA_SYNC_F32_16x8x32_F8E5M2>, <NV_WMMA_F32_16x16x16_F16>, <NV_WMMA_F16_16x16x16_F16>], '
    'subgroup_size_choices = [32], max_workgroup_sizes = [1024, 1024, 1024], max_thread_count_per_workgroup = 1024, '
    'max_workgroup_memory_bytes = 101376, max_workgroup_counts = [2147483647, 65535, 65535]>>}}>]> : !hal.device'
)
ROCM_ARCHS = ("gfx90a", "gfx942", "gfx950", "gfx1100", "gfx1201")
DEFAULT_ARCH = {"llvm-cpu": "host", "cuda": "sm_80", "rocm": "gfx942", "vulkan-spirv": "", "npu": ""}
BACKENDS = tuple(DEFAULT_ARCH)
# NPU HAL target backends msd can drive: registered name -> (flags, runtime driver).  nod-ai/iree-amd-aie
# (AMD XDNA) registers "amd-aie" with the "xrt" driver; untested here: no compiler with it is installed.
# Data tiling through IREE's global-optimization path (see resolve()).  That path tiles some dispatches
# (measured: SmolLM2's MLP down projection, slices=1, dynamic length) into 35 KiB of stack, over the
# 32 KiB default limit; 64 KiB stays well inside the runtime's 128 KiB task-worker stacks.
DATA_TILING = ("--iree-opt-data-tiling=false", "--iree-global-opt-data-tiling=true",
               "--iree-llvmcpu-stack-allocation-limit=65536")
NPU_BACKENDS = {"amd-aie": (("--iree-hal-target-backends=amd-aie",), "xrt")}


@functools.cache
def registered_backends() -> tuple[str, ...]:
    """HAL target backends the installed compiler registers (``iree-compile --iree-hal-list-target-backends``)."""
    from iree.compiler.tools import query_available_targets

    return tuple(query_available_targets())


def _npu(spec: str, arch: str) -> Target:
    """The NPU target when the compiler has an NPU backend; otherwise a ValueError saying what is missing."""
    registered = registered_backends()
    for name, (flags, driver) in NPU_BACKENDS.items():
        if name in registered and arch in ("", name):
            return Target(spec, "npu", name, flags, driver)
    try:
        from importlib.metadata import version

        compiler = f"iree-base-compiler {version('iree-base-compiler')}"
    except Exception:  # only for the message
        compiler = "iree-compile"
    raise ValueError(
        f"target {spec!r}: the installed {compiler} registers no NPU HAL target backend (registered: "
        f"{', '.join(registered)}). Compiling for an NPU needs a compiler built with one (msd drives: "
        f"{', '.join(NPU_BACKENDS)}); msd does not fall back to another target. The NPU cost model needs no "
        "backend: msd.compile(..., decide='cost', hardware='npu-910b') or msd-opt "
        "--msd-decompose-activations='target=npu'."
    )


def resolve(spec: str) -> Target:
    """Parse ``name[:arch]``; raise ValueError naming what is supported."""
    if not isinstance(spec, str):
        raise ValueError(f"target must be a string such as 'llvm-cpu' or 'cuda:sm_89', got {spec!r}")
    backend, _, arch = spec.partition(":")
    if backend not in BACKENDS:
        raise ValueError(f"target {spec!r} is not supported (supported: {', '.join(BACKENDS)}, optionally ':arch')")
    arch = arch or DEFAULT_ARCH[backend]
    if backend == "npu":
        return _npu(spec, arch)
    if backend == "llvm-cpu":
        cpu = (f"--iree-llvmcpu-target-cpu={arch}",)
        if arch == "aarch64":  # cross-compile for Arm with the int8 dot-product / matmul extensions
            cpu = ("--iree-llvmcpu-target-triple=aarch64-unknown-linux-gnu", "--iree-llvmcpu-target-cpu=generic",
                   "--iree-llvmcpu-target-cpu-features=+dotprod,+i8mm")
        flags = ("--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=llvm-cpu", *cpu,
                 # int8 matmuls only reach the mmt4d ukernels with data tiling (2-5x, see docs), and
                 # through the global-optimization path: IREE 3.13's default path (from dispatch
                 # creation) miscompiles a batch matmul whose operand is normalized by its own
                 # reduction, e.g. einsum(q, k / amax(|k|)) -- docs/pipeline.md, tests/test_targets.py
                 *DATA_TILING)
        return Target(spec, backend, arch, flags, "local-task")
    if backend == "cuda":
        if arch in CUDA_EXPLICIT_ARCHS:
            attr = _NV_TARGET.format(arch=arch, features=CUDA_EXPLICIT_ARCHS[arch])
            return Target(spec, backend, arch, (), "cuda", device_targets=f"[{attr}]")
        if arch not in CUDA_ARCHS:
            known = ", ".join((*CUDA_ARCHS, *CUDA_EXPLICIT_ARCHS))
            hint = " (Blackwell datacenter: compile for sm_90 or sm_89; the driver JIT-compiles the PTX)" \
                if arch.startswith("sm_10") or arch.startswith("sm_11") else ""
            raise ValueError(f"CUDA arch {arch!r} is not known to IREE 3.13 (known: {known}){hint}")
        return Target(spec, backend, arch, ("--iree-hal-target-device=cuda", f"--iree-cuda-target={arch}"), "cuda")
    if backend == "rocm":
        if arch not in ROCM_ARCHS:
            raise ValueError(f"ROCm arch {arch!r} is not supported (known: {', '.join(ROCM_ARCHS)})")
        return Target(spec, backend, arch, ("--iree-hal-target-device=hip", f"--iree-rocm-target={arch}"), "hip")
    flags = ("--iree-hal-target-device=vulkan",) + ((f"--iree-vulkan-target={arch}",) if arch else ())
    return Target(spec, backend, arch, flags, "vulkan")
