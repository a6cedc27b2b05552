"""The options of ``--msd-decompose-activations``: one frozen dataclass, validated when created."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from msd.cost.hardware import profile_for
from msd.cost.model import slices_for_bits
from msd.errors import OptionError
from msd.mx_format import ACT_FORMATS, LOWERINGS, SCALE_RULES

from ..pass_options import PassOptions, option
from .cpu_kernel import ISAS
from .cuda_kernel import ARCHS as CUDA_ARCHS
from .cuda_kernel import parse_shape

NAME = "msd-decompose-activations"
SUPPORTED_SLICES = (1, 2, 3)
ACT_SCALES = ("row", "group")


@dataclass(frozen=True)
class DecomposeOptions(PassOptions):
    """What the pass is asked to do (Python spelling here; ``act-scale=row`` etc. on msd-opt's line)."""

    pass_name: ClassVar[str] = NAME

    slices: int = option(2, choices=SUPPORTED_SLICES,
                         help="activation slices per row: about 8, 16 or 24 bits of the activation")
    act_scale: str = option("group", choices=ACT_SCALES,
                            help="where K is split into groups: one activation scale per row, or per (row, group)")
    act_format: str = option("int8", choices=ACT_FORMATS, listing=", ".join,
                             help="int8 slices, or MX slices per 32-block of K (mxfp4: exact emulation with int8"
                                  " products; mxfp8: block-scaled E4M3 against an MXFP4 weight)")
    mx_scale: str = option("ocp", choices=SCALE_RULES,
                           help="MX block-exponent rule: ocp (floor(log2 amax) - emax, clips) or noclip")
    mx_lowering: str = option("int8", choices=LOWERINGS,
                              help="MXFP4 slices as the exact int8 emulation (any target) or the block-scaled FP4"
                                   " matmul (FP4 matrix units; where the weight is provably MXFP4)")
    target: str = option("", help="hardware profile or target spec (msd.cost) whose cost model decides per"
                                  " contraction whether to rewrite; empty: always rewrite")
    min_bits: int = option(0, help="accuracy request in effective bits: the fewest int8 slices reaching it"
                                   " (8 -> 1, 16 -> 2, 24 -> 3) replace slices; 0: use slices")
    cpu_kernel: str = option("none", choices=("none", *ISAS),
                             help="write int8-slice contractions as one fused kernel dispatch for this CPU ISA"
                                  " (the target CPU must have it); none: IREE's lowering of the int8 matmul")
    gpu_kernel: str = option("none", choices=("none", *CUDA_ARCHS),
                             help="write int8-slice contractions as one tensor-core (mma.sync) kernel dispatch in"
                                  " PTX for this NVIDIA arch (the module must be compiled for CUDA); none: IREE's"
                                  " lowering")
    gpu_kernel_shape: str = option("", help="the tensor-core kernel's shape SPLITxTILESxUNROLL: warps sharing K (1-16),"
                                            " channel tiles of 8 per warp (1-4), K steps loaded together (1-8);"
                                            " empty: the default")
    dynamic_m: int = option(0, help="rows assumed for a dynamic M when costing (0: msd.cost.model.DYNAMIC_M)")

    def validate(self) -> None:
        if self.min_bits < 0 or self.dynamic_m < 0:
            raise OptionError(f"{NAME}: min-bits and dynamic-m must not be negative")
        if self.cpu_kernel != "none" and self.act_format != "int8":
            raise OptionError(f"{NAME}: cpu-kernel takes int8 slices (act-format={self.act_format})")
        if self.gpu_kernel != "none" and self.act_format != "int8":
            raise OptionError(f"{NAME}: gpu-kernel takes int8 slices (act-format={self.act_format})")
        if self.gpu_kernel != "none" and self.cpu_kernel != "none":
            raise OptionError(f"{NAME}: cpu-kernel={self.cpu_kernel} and gpu-kernel={self.gpu_kernel} name two"
                              " targets; a module is compiled for one")
        try:
            parse_shape(self.gpu_kernel_shape)
        except ValueError as e:
            raise OptionError(f"{NAME}: {e}") from None
        if self.min_bits and self.act_format != "int8":
            raise OptionError(f"{NAME}: min-bits counts int8 slices; with act-format={self.act_format} give slices=")
        self.requested_slices  # noqa: B018 (raises for more bits than three slices give)
        if self.target:
            profile_for(self.target)  # raises for a target without a cost profile

    @property
    def requested_slices(self) -> int:
        """The slices asked for: from ``min_bits`` when it is given, else ``slices``."""
        return slices_for_bits(self.min_bits) if self.min_bits else self.slices


__all__ = ["ACT_SCALES", "NAME", "SUPPORTED_SLICES", "DecomposeOptions"]
