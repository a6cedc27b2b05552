"""msd's MLIR passes, written on the Python bindings that ship with iree-base-compiler.

One pass per package, named like its flag: ``decompose_activations`` ↔
``--msd-decompose-activations``; its options are one frozen dataclass (:mod:`.pass_options`).
:data:`PASSES` is the registry ``msd-opt`` and the compiler driver read; option names, types and
defaults come from that dataclass.  Analyses more than one pass may ask live in :mod:`.analysis`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from iree.compiler import ir

from . import attention_kernels, decompose_activations, prepack_parameters, row_kernels
from .pass_options import OptionSpec, PassOptionError, PassOptions
from .report import Decision, Report


@dataclass(frozen=True)
class PassInfo:
    """A registered pass: its flag, a one-line summary, its options type and its entry point."""

    name: str
    summary: str
    options_type: type[PassOptions]
    run: Callable[[ir.Operation, PassOptions], Report]

    @property
    def specs(self) -> list[OptionSpec]:
        return self.options_type.specs()

    @property
    def options(self) -> dict[str, tuple[type, object]]:
        """Command-line option name → (type, default)."""
        return {s.cli: (s.type, s.default) for s in self.specs}


PASSES: dict[str, PassInfo] = {
    info.name: info for info in [
        PassInfo(decompose_activations.NAME, decompose_activations.SUMMARY, decompose_activations.DecomposeOptions,
                 decompose_activations.run),
        PassInfo(attention_kernels.NAME, attention_kernels.SUMMARY, attention_kernels.AttentionKernelsOptions,
                 attention_kernels.run),
        PassInfo(row_kernels.NAME, row_kernels.SUMMARY, row_kernels.RowKernelsOptions, row_kernels.run),
        PassInfo(prepack_parameters.NAME, prepack_parameters.SUMMARY, prepack_parameters.PrepackOptions,
                 prepack_parameters.run),
    ]
}


def _pass(name: str) -> PassInfo:
    if name not in PASSES:
        raise PassOptionError(f"unknown pass '--{name}' (known: {', '.join(PASSES)})")
    return PASSES[name]


def parse_options(name: str, text: str) -> dict[str, object]:
    """Parse ``"a=1 b=2"`` for pass ``name`` into typed keyword options (defaults filled in); the
    values are checked when the pass runs (:func:`run_pass`)."""
    return _pass(name).options_type.parse_text(text)


def run_pass(module: ir.Operation, name: str, **options: object) -> Report:
    """Run one registered pass on ``module`` (an ``ir.Operation``, usually ``builtin.module``) with its
    options as keyword arguments (Python spelling: ``act_scale="row"``)."""
    info = _pass(name)
    known = [s.name for s in info.specs]
    unknown = [k for k in options if k not in known]
    if unknown:
        raise PassOptionError(f"--{name}: unknown option(s) {', '.join(unknown)} (options: {', '.join(known)})")
    try:
        opts = info.options_type(**options)
    except ValueError as e:
        raise PassOptionError(str(e)) from None
    return info.run(module, opts)


__all__ = ["PASSES", "Decision", "PassInfo", "PassOptionError", "PassOptions", "Report", "parse_options", "run_pass"]
