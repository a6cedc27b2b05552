"""IREE targets msd compiles for: ``name[:arch]`` → compiler flags and the runtime driver.

    llvm-cpu            host CPU (``llvm-cpu:x86-64-v3``, ``llvm-cpu:znver3`` … name a CPU;
                        ``llvm-cpu:aarch64`` cross-compiles for Arm with +dotprod,+i8mm)
    cuda                NVIDIA, default sm_80 (``cuda:sm_89``); see docs/targets.md for sm_90
    rocm                AMD, default gfx942 (``rocm:gfx950``)
    vulkan-spirv        Vulkan/SPIR-V (``vulkan-spirv:rdna3`` names a Vulkan target)

Facts behind the choices (IREE 3.13, ``../shared/docs/iree-notes.md`` §4): int8 matmuls reach the
CPU ukernels only with data tiling; IREE 3.13's CUDA target table has no sm_90/sm_100 entry (sm_80
PTX is JIT-compiled forward by the driver); the old ``--iree-hip-target`` spelling is gone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """An IREE target: compiler flags and the runtime driver that runs its artifacts."""

    name: str  # the spec as given, e.g. "cuda:sm_89"
    backend: str  # llvm-cpu | cuda | rocm | vulkan-spirv
    arch: str
    flags: tuple[str, ...]
    driver: str


CUDA_ARCHS = ("sm_60", "sm_61", "sm_70", "sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_120", "sm_121")
ROCM_ARCHS = ("gfx90a", "gfx942", "gfx950", "gfx1100", "gfx1201")
DEFAULT_ARCH = {"llvm-cpu": "host", "cuda": "sm_80", "rocm": "gfx942", "vulkan-spirv": ""}
BACKENDS = tuple(DEFAULT_ARCH)


def resolve(spec: str) -> Target:
    """Parse ``name[:arch]``; raise ValueError naming what is supported."""
    if not isinstance(spec, str):
        raise ValueError(f"target must be a string such as 'llvm-cpu' or 'cuda:sm_89', got {spec!r}")
    backend, _, arch = spec.partition(":")
    if backend not in BACKENDS:
        raise ValueError(f"target {spec!r} is not supported (supported: {', '.join(BACKENDS)}, optionally ':arch')")
    arch = arch or DEFAULT_ARCH[backend]
    if backend == "llvm-cpu":
        cpu = (f"--iree-llvmcpu-target-cpu={arch}",)
        if arch == "aarch64":  # cross-compile for Arm with the int8 dot-product / matmul extensions
            cpu = ("--iree-llvmcpu-target-triple=aarch64-unknown-linux-gnu", "--iree-llvmcpu-target-cpu=generic",
                   "--iree-llvmcpu-target-cpu-features=+dotprod,+i8mm")
        flags = ("--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=llvm-cpu", *cpu,
                 # int8 matmuls only reach the mmt4d ukernels with data tiling (2-5x, see docs).
                 "--iree-opt-data-tiling")
        return Target(spec, backend, arch, flags, "local-task")
    if backend == "cuda":
        if arch not in CUDA_ARCHS:
            hint = " (Hopper/Blackwell: compile for sm_80 or sm_89; the driver JIT-compiles the PTX)" \
                if arch.startswith("sm_9") or arch.startswith("sm_10") else ""
            raise ValueError(f"CUDA arch {arch!r} is not known to IREE 3.13 (known: {', '.join(CUDA_ARCHS)}){hint}")
        return Target(spec, backend, arch, ("--iree-hal-target-device=cuda", f"--iree-cuda-target={arch}"), "cuda")
    if backend == "rocm":
        if arch not in ROCM_ARCHS:
            raise ValueError(f"ROCm arch {arch!r} is not supported (known: {', '.join(ROCM_ARCHS)})")
        return Target(spec, backend, arch, ("--iree-hal-target-device=hip", f"--iree-rocm-target={arch}"), "hip")
    flags = ("--iree-hal-target-device=vulkan",) + ((f"--iree-vulkan-target={arch}",) if arch else ())
    return Target(spec, backend, arch, flags, "vulkan")
