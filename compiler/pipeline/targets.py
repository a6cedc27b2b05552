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

import difflib
import functools
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from msd.errors import TargetError


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
# ``llvm-cpu:aarch64``: the cross-compile msd spells out (triple, CPU, the int8 dot-product / matmul features).
AARCH64_TRIPLE = "aarch64-unknown-linux-gnu"
AARCH64_FEATURES = ("dotprod", "i8mm")
# Vulkan target names the installed compiler accepts (checked by tests/test_reliability_cli.py); IREE has
# more (product names such as rx7900xtx or rtx4090), but no way to list them.
VULKAN_EXAMPLES = ("rdna3", "rdna2", "cdna3", "ampere", "ada", "turing", "pascal", "valhall", "adreno",
                   "vp_android_baseline_2022")
PROBE_TIMEOUT_S = 60


@functools.cache
def registered_backends() -> tuple[str, ...]:
    """HAL target backends the installed compiler registers (``iree-compile --iree-hal-list-target-backends``)."""
    from iree.compiler.tools import query_available_targets

    return tuple(query_available_targets())


def _compiler_name() -> str:
    try:
        from importlib.metadata import version

        return f"iree-base-compiler {version('iree-base-compiler')}"
    except Exception:  # only for messages
        return "iree-compile"


def _iree_compile(flags: list[str], source: str) -> subprocess.CompletedProcess | None:
    """Run ``iree-compile`` on ``source`` in a child process; None when it cannot be run.  A child, because
    LLVM aborts the whole process on some bad targets (an unknown CPU, an unknown Vulkan target): the probe
    may die, the caller may not."""
    try:
        from iree.compiler.tools.binaries import find_tool

        cmd = [find_tool("iree-compile"), *flags, "-", "-o", os.devnull]
        return subprocess.run(cmd, input=source.encode(), capture_output=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


@dataclass(frozen=True)
class LlvmCpuInfo:
    """What the installed compiler's LLVM knows for one target triple."""

    arch: str  # LLVM's name of the architecture, e.g. "x86_64" ("" when LLVM did not say)
    cpus: tuple[str, ...]  # CPU names accepted for this triple, in LLVM's order
    features: frozenset[str]  # feature names (without +/-)


_SECTION = re.compile(r"^Available (CPUs|features) for this target:\s*$")
_ENTRY = re.compile(r"^\s+([A-Za-z0-9_.+-]+)\s+- ")


@functools.cache
def llvm_cpu_info(triple: str = "") -> LlvmCpuInfo | None:
    """The CPU names and features the installed compiler's LLVM accepts for ``triple`` ("" = the host's),
    read from one ``iree-compile --iree-llvmcpu-target-cpu=help`` child process (about 0.2 s, once per
    process and triple); None when that probe gives no list (the caller then does not check).

    For a 64-bit triple, LLVM's CPU table also lists 32-bit CPUs (``i386``, ``pentium4`` …) that abort
    the compiler ("64-bit code requested on a subtarget that doesn't support it"); IREE prints the ones
    it accepts ("List of accepted CPUs: …"), and that list is used when present."""
    flags = ["--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=llvm-cpu",
             "--iree-llvmcpu-target-cpu=help"]
    if triple:
        flags.append(f"--iree-llvmcpu-target-triple={triple}")
    proc = _iree_compile(flags, "module {}")
    if proc is None:
        return None
    text = (proc.stdout + proc.stderr).decode(errors="replace")
    arch = (re.search(r"Unknown CPU for target architecture ([\w.-]+)\.", text) or [None, ""])[1]
    accepted: list[str] = []
    sections: dict[str, list[str]] = {"CPUs": [], "features": []}
    current = None
    for line in text.splitlines():
        if line.startswith("List of accepted CPUs:"):
            accepted = [c.strip() for c in line.split(":", 1)[1].split(",") if c.strip()]
            continue
        head = _SECTION.match(line)
        if head:
            current = head[1]
            continue
        entry = _ENTRY.match(line)
        if entry and current:
            sections[current].append(entry[1])
        elif line.strip() and not line.startswith(" "):
            current = None
    available = sections["CPUs"]
    cpus = accepted or available
    if not cpus:
        return None
    if "generic" in available and "generic" not in cpus:
        cpus = [*cpus, "generic"]  # not in IREE's list for x86_64, but LLVM's baseline CPU compiles
    return LlvmCpuInfo(arch, tuple(dict.fromkeys(cpus)), frozenset(sections["features"]))


def _names(names: list[str] | tuple[str, ...], limit: int = 200) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, … ({len(names)} in all)"


def _check_llvm_cpu(spec: str, cpu: str, triple: str = "", features: tuple[str, ...] = ()) -> None:
    """Raise TargetError unless the installed LLVM accepts ``cpu`` (and ``features``) for ``triple``."""
    info = llvm_cpu_info(triple)
    if info is None:  # no list to check against: let the compile say what it will
        return
    where = f"{info.arch or triple or 'this host'}"
    if cpu not in info.cpus:
        close = difflib.get_close_matches(cpu, info.cpus, n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise TargetError(
            f"target {spec!r}: CPU {cpu!r} is not known to the LLVM of the installed {_compiler_name()} for"
            f" {where} (known: {_names(sorted(info.cpus))}).{hint} 'llvm-cpu' (or 'llvm-cpu:host') compiles"
            " for this machine's CPU; 'llvm-cpu:aarch64' cross-compiles for Arm."
        )
    missing = [f for f in features if f not in info.features]
    if missing and info.features:
        raise TargetError(f"target {spec!r}: the LLVM of the installed {_compiler_name()} has no CPU feature(s)"
                          f" {', '.join(missing)} for {where}")


@functools.cache
def _vulkan_target_known(arch: str) -> bool | None:
    """Whether IREE accepts ``--iree-vulkan-target=arch`` (a probe compile in a child process, since an
    unknown name aborts the compiler); None when the probe fails for another reason."""
    proc = _iree_compile(["--iree-hal-target-device=vulkan", f"--iree-vulkan-target={arch}"],
                         "func.func @f(%a: tensor<4xf32>) -> tensor<4xf32> { return %a : tensor<4xf32> }")
    if proc is None:
        return None
    if proc.returncode == 0:
        return True
    return False if b"Unknown Vulkan target" in proc.stderr else None


def _npu(spec: str, arch: str) -> Target:
    """The NPU target when the compiler has an NPU backend; otherwise a TargetError saying what is missing."""
    registered = registered_backends()
    for name, (flags, driver) in NPU_BACKENDS.items():
        if name in registered and arch in ("", name):
            return Target(spec, "npu", name, flags, driver)
    compiler = _compiler_name()
    raise TargetError(
        f"target {spec!r}: the installed {compiler} registers no NPU HAL target backend (registered: "
        f"{', '.join(registered)}). Compiling for an NPU needs a compiler built with one (msd drives: "
        f"{', '.join(NPU_BACKENDS)}); msd does not fall back to another target. The NPU cost model needs no "
        "backend: msd.compile(..., decide='cost', hardware='npu-910b') or msd-opt "
        "--msd-decompose-activations='target=npu'."
    )


def resolve(spec: str) -> Target:
    """Parse ``name[:arch]``; raise :class:`~msd.errors.TargetError` (a ValueError) naming what is supported.

    An ``llvm-cpu`` CPU name and a ``vulkan-spirv`` target name are checked against the installed
    compiler here, before any compile: for an unknown one LLVM / IREE would abort the whole process.
    Each check runs ``iree-compile`` once in a child process (about 0.2 s) and is cached per process;
    ``llvm-cpu`` / ``llvm-cpu:host`` (the default) and the fixed-table backends need no probe."""
    if not isinstance(spec, str):
        raise TargetError(f"target must be a string such as 'llvm-cpu' or 'cuda:sm_89', got {spec!r}")
    backend, _, arch = spec.partition(":")
    if backend not in BACKENDS:
        raise TargetError(f"target {spec!r} is not supported (supported: {', '.join(BACKENDS)}, optionally ':arch')")
    arch = arch or DEFAULT_ARCH[backend]
    if backend == "npu":
        return _npu(spec, arch)
    if backend == "llvm-cpu":
        cpu = (f"--iree-llvmcpu-target-cpu={arch}",)
        if arch == "aarch64":  # cross-compile for Arm with the int8 dot-product / matmul extensions
            _check_llvm_cpu(spec, "generic", AARCH64_TRIPLE, AARCH64_FEATURES)
            cpu = (f"--iree-llvmcpu-target-triple={AARCH64_TRIPLE}", "--iree-llvmcpu-target-cpu=generic",
                   "--iree-llvmcpu-target-cpu-features=" + ",".join(f"+{f}" for f in AARCH64_FEATURES))
        elif arch != "host":
            _check_llvm_cpu(spec, arch)
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
            raise TargetError(f"CUDA arch {arch!r} is not known to IREE 3.13 (known: {known}){hint}")
        return Target(spec, backend, arch, ("--iree-hal-target-device=cuda", f"--iree-cuda-target={arch}"), "cuda")
    if backend == "rocm":
        if arch not in ROCM_ARCHS:
            raise TargetError(f"ROCm arch {arch!r} is not supported (known: {', '.join(ROCM_ARCHS)})")
        return Target(spec, backend, arch, ("--iree-hal-target-device=hip", f"--iree-rocm-target={arch}"), "hip")
    if arch and _vulkan_target_known(arch) is False:
        raise TargetError(f"target {spec!r}: Vulkan target {arch!r} is not known to the installed {_compiler_name()}"
                          f" (known, e.g.: {', '.join(VULKAN_EXAMPLES)}; or plain 'vulkan-spirv')")
    flags = ("--iree-hal-target-device=vulkan",) + ((f"--iree-vulkan-target={arch}",) if arch else ())
    return Target(spec, backend, arch, flags, "vulkan")


# ----------------------------------------------------------------------------- fused CPU kernels
# The x86 CPUs (LLVM names) with the byte dot product each fused-kernel variant needs.
KERNEL_CPUS: dict[str, tuple[str, ...]] = {
    "amx-int8": ("sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d", "diamondrapids"),
    "avx512-vnni": ("znver4", "znver5", "icelake-client", "icelake-server", "tigerlake", "rocketlake", "cascadelake",
                    "cooperlake", "sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d",
                    "diamondrapids"),
    "avx-vnni": ("alderlake", "raptorlake", "meteorlake", "arrowlake", "arrowlake-s", "lunarlake", "pantherlake",
                 "gracemont", "sierraforest", "grandridge", "clearwaterforest"),
    "avx2": ("haswell", "broadwell", "skylake", "kabylake", "coffeelake", "cannonlake", "znver1", "znver2",
             "znver3", "x86-64-v3", "x86-64-v4", "skylake-avx512"),
}
# /proc/cpuinfo flags each variant needs (avx512-vnni also covers the 256-bit form).
KERNEL_FLAGS: dict[str, tuple[str, ...]] = {
    "amx-int8": ("avx512f", "avx512bw", "avx512_vnni", "amx_tile", "amx_int8"),
    "avx512-vnni": ("avx512f", "avx512bw", "avx512_vnni"),
    "avx-vnni": ("avx2", "avx_vnni"),
    "avx2": ("avx2",),
}


def host_cpu_flags() -> frozenset[str]:
    """The host CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def kernel_isas(tgt: Target) -> tuple[str, ...]:
    """The fused-kernel variants ``tgt``'s CPU runs, best first (none for other backends or CPUs)."""
    if tgt.backend != "llvm-cpu":
        return ()
    if tgt.arch == "aarch64":  # compiled with the dot-product and int8-matmul features (AARCH64_FEATURES)
        return ("neon-dot", "neon-i8mm")
    if tgt.arch == "host" and platform.machine() in ("aarch64", "arm64"):
        flags = host_cpu_flags()
        return tuple(isa for isa, flag in (("neon-dot", "asimddp"), ("neon-i8mm", "i8mm")) if flag in flags)
    if tgt.arch == "host":
        flags = host_cpu_flags()
        have = {isa for isa, need in KERNEL_FLAGS.items() if all(f in flags for f in need)}
    else:
        have = {isa for isa, cpus in KERNEL_CPUS.items() if tgt.arch in cpus}
    if "amx-int8" in have:
        have.add("avx512-vnni")  # its rows left over from the tiles run on AVX-512 VNNI
    if "avx512-vnni" in have:
        have |= {"avx-vnni", "avx2"}  # AVX512-VNNI (with VL) runs the 256-bit forms too
    if "avx-vnni" in have:
        have.add("avx2")
    return tuple(isa for isa in KERNEL_FLAGS if isa in have)


# ----------------------------------------------------------------------------- tensor-core kernels (CUDA)
def ptxas_path() -> str:
    """NVIDIA's PTX assembler: from the ``nvidia-cuda-nvcc`` wheel (``pip install nvidia-cuda-nvcc``: it
    ships ``ptxas``, which needs no GPU), else ``ptxas`` on PATH.  msd uses it to check the PTX of its
    tensor-core kernels (``msd.compile(..., target="cuda:...")`` does not need it)."""
    import importlib.util
    import shutil

    spec = importlib.util.find_spec("nvidia")
    for root in (list(spec.submodule_search_locations or []) if spec is not None else []):
        for sub in ("cu13", "cuda_nvcc", "cu12"):
            cand = Path(root) / sub / "bin" / "ptxas"
            if cand.is_file() and os.access(cand, os.X_OK):
                return str(cand)
    found = shutil.which("ptxas")
    if found is None:
        raise TargetError("ptxas not found: install the nvidia-cuda-nvcc package (pip install nvidia-cuda-nvcc; "
                          "python3 dev.py test installs it) or put CUDA's ptxas on PATH")
    return found
