"""``CompileOptions``: how ``msd.compile`` applies MSD — one frozen, self-validating dataclass.

The pass's own options (``act_scale``, ``act_format``, ``mx_scale``) are taken over from
``msd.passes.decompose_activations.DecomposeOptions`` field by field (default, allowed values,
help); the compiler adds what only it decides: ``slices=0`` (IREE's own lowering, the baseline),
``mx_lowering="auto"`` (by target), ``decide``/``hardware`` (who picks per matmul) and ``min_bits``.
``msd.compile``/``compile_functions`` take these as keyword arguments, the ``msd compile`` flags and
the ``torch.compile(backend="msd")`` options are made from :meth:`CompileOptions.specs`, and
:meth:`CompileOptions.pass_options` is what the pass gets.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from msd.cost import profile_for, slices_for_bits
from msd.errors import OptionError
from msd.mx_format import LOWERINGS
from msd.passes.decompose_activations import DecomposeOptions
from msd.passes.decompose_activations.cpu_kernel import ISAS
from msd.passes.decompose_activations.cuda_kernel import ARCHS as CUDA_KERNEL_ARCHS
from msd.passes.decompose_activations.decide import policy_for
from msd.passes.decompose_activations.options import SUPPORTED_SLICES
from msd.passes.pass_options import PassOptions, option, same_option

from .targets import Target, kernel_isas

DECIDE = ("always", "cost")
FP4_MATRIX_TARGETS = ("rocm:gfx950",)  # targets whose matrix units take block-scaled FP4


@dataclass(frozen=True)
class CompileOptions(PassOptions):
    """The MSD options of a compile (see the module docstring); validated when created."""

    python_spelling: ClassVar[bool] = True

    slices: int = same_option(DecomposeOptions, "slices", choices=(0, *SUPPORTED_SLICES),
                              help="activation slices 1-3 (about 8, 16, 24 bits); 0 = IREE's own lowering")
    act_scale: str = same_option(DecomposeOptions, "act_scale")
    act_format: str = same_option(DecomposeOptions, "act_format")
    mx_scale: str = same_option(DecomposeOptions, "mx_scale")
    mx_lowering: str = same_option(DecomposeOptions, "mx_lowering", default="auto", choices=("auto", *LOWERINGS),
                                   help="MXFP4 slices as exact int8 emulation or block-scaled FP4 (auto: scaled on"
                                        f" {', '.join(FP4_MATRIX_TARGETS)})")
    cpu_kernel: str = same_option(DecomposeOptions, "cpu_kernel", default="auto", choices=("auto", "none", *ISAS),
                                  help="int8-slice contractions as one fused kernel dispatch for this CPU ISA (auto:"
                                       " the best the llvm-cpu target's CPU has; none: IREE's lowering)")
    gpu_kernel: str = option("auto", choices=("auto", "none"),
                             help="int8-slice contractions as one tensor-core (mma.sync) kernel dispatch msd writes in"
                                  " PTX (auto: on a cuda target of sm_80 or later; none: IREE's lowering)")
    gpu_kernel_shape: str = same_option(DecomposeOptions, "gpu_kernel_shape")
    decide: str = option("always", choices=DECIDE,
                         help="cost: a cost model of the target keeps IREE's lowering where MSD is not predicted"
                              " faster")
    min_bits: int | None = option(None, help="accuracy request instead of slices (8, 16, 24 bits)")
    hardware: str | None = option(None, help="hardware profile (msd.cost) for decide='cost'; default: the target's")

    def validate(self) -> None:
        if self.min_bits is not None:
            if self.slices == 0:
                raise OptionError("min_bits asks for MSD slices, but slices=0 compiles IREE's own lowering")
            if self.min_bits < 1:
                raise OptionError(f"min_bits={self.min_bits} must be positive")
            slices_for_bits(self.min_bits)  # raises for more bits than 3 slices give
        if self.decide == "always" and self.hardware is not None:
            raise OptionError("hardware= names the cost model's profile: it needs decide='cost'")
        if self.decide == "cost" and self.slices == 0:
            raise OptionError("decide='cost' picks MSD or IREE's lowering per matmul; slices=0 asks for the latter"
                              " only")
        if self.hardware is not None:
            profile_for(self.hardware)  # raises naming the profiles
        if self.cpu_kernel not in ("auto", "none") and self.act_format != "int8":
            raise OptionError(f"cpu_kernel={self.cpu_kernel!r} takes int8 slices (act_format={self.act_format!r})")

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> CompileOptions:
        """The options given as keyword arguments; an unknown name is an :class:`OptionError` listing the known."""
        known = [f.name for f in fields(cls)]
        unknown = [k for k in options if k not in known]
        if unknown:
            raise OptionError(f"unknown option(s) {', '.join(map(repr, unknown))} (known: {', '.join(known)})")
        return cls(**options)

    @property
    def effective_slices(self) -> int:
        """The slices compiled: from ``min_bits`` when given, else ``slices``."""
        return slices_for_bits(self.min_bits) if self.min_bits else self.slices

    def cost_target(self, target: str) -> str:
        """The profile the pass costs with ("" when ``decide="always"``): ``hardware``, else ``target``'s."""
        if self.decide == "always":
            return ""
        spec = self.hardware or target
        profile_for(spec)  # raises naming the profiles
        return spec

    def decide_record(self, target: str, tgt: Target) -> dict:
        """How the matmuls were decided, as the artifact manifest records it: the profile the pass costs
        with (:func:`~msd.passes.decompose_activations.decide.policy_for` of its options for ``tgt``)."""
        cost = self.cost_target(target)
        opts = self.pass_options(tgt, cost) if cost else None
        policy = policy_for(opts) if opts is not None else None
        hardware = policy.hardware.name if policy else profile_for(cost).name if cost else None
        return {"policy": self.decide, "hardware": hardware, "min_bits": self.min_bits}

    def pass_options(self, tgt: Target, cost_target: str = "") -> DecomposeOptions | None:
        """What the pass gets for ``tgt`` (None for ``slices=0``: no pass)."""
        if not self.slices:
            return None
        lowering = self.mx_lowering
        if lowering == "auto":
            lowering = "scaled" if f"{tgt.backend}:{tgt.arch}" in FP4_MATRIX_TARGETS else "int8"
        return DecomposeOptions(slices=self.effective_slices, act_scale=self.act_scale, act_format=self.act_format,
                                mx_scale=self.mx_scale, mx_lowering=lowering, target=cost_target,
                                min_bits=self.min_bits or 0, cpu_kernel=self.kernel_isa(tgt),
                                gpu_kernel=self.gpu_arch(tgt), gpu_kernel_shape=self.gpu_kernel_shape)

    def gpu_arch(self, tgt: Target) -> str:
        """The NVIDIA arch the tensor-core kernel is written for ("none": IREE's lowering)."""
        if self.gpu_kernel == "none" or self.act_format != "int8" or tgt.backend != "cuda":
            return "none"
        return tgt.arch if tgt.arch in CUDA_KERNEL_ARCHS else "none"

    def kernel_isa(self, tgt: Target) -> str:
        """The fused-kernel variant compiled for ``tgt`` ("none": IREE's lowering of the int8 matmuls)."""
        if self.cpu_kernel == "none" or self.act_format != "int8":
            return "none"
        have = kernel_isas(tgt)
        if self.cpu_kernel == "auto":
            return have[0] if have else "none"
        if tgt.backend != "llvm-cpu":
            raise OptionError(f"cpu_kernel={self.cpu_kernel!r} is a CPU kernel; target {tgt.name!r} is not llvm-cpu")
        if tgt.arch == "host":
            if self.cpu_kernel not in have:
                raise OptionError(f"cpu_kernel={self.cpu_kernel!r}: this host's CPU lacks it (it has:"
                                  f" {', '.join(have) or 'no fused-kernel ISA'}); name a CPU that has it in the target,"
                                  " e.g. 'llvm-cpu:znver4', to cross-compile")
        elif ISAS[self.cpu_kernel].arm != (tgt.arch == "aarch64"):
            arm = ISAS[self.cpu_kernel].arm
            raise OptionError(f"cpu_kernel={self.cpu_kernel!r} is an {'Arm' if arm else 'x86'} kernel; target"
                              f" {tgt.name!r} is {'an x86' if arm else 'an Arm'} CPU")
        return self.cpu_kernel


__all__ = ["DECIDE", "FP4_MATRIX_TARGETS", "CompileOptions"]
