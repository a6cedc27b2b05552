"""msd's MLIR passes, written on the Python bindings that ship with iree-base-compiler.

One pass per module, named like its flag: ``decompose_activations`` ↔
``--msd-decompose-activations``.  :data:`PASSES` is the registry ``msd-opt`` and the compiler
driver read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from iree.compiler import ir

from msd.errors import OptionError

from . import decompose_activations
from .report import Decision, Report


@dataclass(frozen=True)
class PassInfo:
    """A registered pass: its flag, options (name → type, default) and entry point."""

    name: str
    summary: str
    options: dict[str, tuple[type, object]]
    run: Callable[..., Report]


PASSES: dict[str, PassInfo] = {
    decompose_activations.NAME: PassInfo(
        decompose_activations.NAME,
        "rewrite dequantize-then-matmul into decomposed-activation int8 matmuls",
        {"slices": (int, 2), "act-scale": (str, "group"), "act-format": (str, "int8"), "mx-scale": (str, "ocp"),
         "mx-lowering": (str, "int8"),
         "target": (str, ""), "min-bits": (int, 0), "dynamic-m": (int, 0)},
        decompose_activations.run,
    ),
}


class PassOptionError(OptionError):
    """A pass name or option that does not exist or does not parse."""


def parse_options(name: str, text: str) -> dict[str, object]:
    """Parse ``"a=1 b=2"`` for pass ``name`` into typed options (defaults filled in)."""
    info = PASSES[name]
    values = {k: default for k, (_, default) in info.options.items()}
    for item in text.replace(",", " ").split():
        key, sep, raw = item.partition("=")
        if not sep or key not in info.options:
            known = ", ".join(info.options) or "none"
            raise PassOptionError(f"--{name}: unknown option '{item}' (options: {known})")
        typ = info.options[key][0]
        try:
            values[key] = typ(raw)
        except ValueError:
            raise PassOptionError(f"--{name}: option {key}={raw!r} is not a {typ.__name__}") from None
    return {k.replace("-", "_"): v for k, v in values.items()}


def run_pass(module: ir.Operation, name: str, **options: object) -> Report:
    """Run one registered pass on ``module`` (an ``ir.Operation``, usually ``builtin.module``)."""
    if name not in PASSES:
        raise PassOptionError(f"unknown pass '--{name}' (known: {', '.join(PASSES)})")
    try:
        return PASSES[name].run(module, **options)
    except ValueError as e:
        raise PassOptionError(str(e)) from None


__all__ = ["PASSES", "Decision", "PassInfo", "PassOptionError", "Report", "parse_options", "run_pass"]
