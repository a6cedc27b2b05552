"""The in-process IREE compiler: one session, its MLIR context, and phase-by-phase execution.

IREE 3.13's Python ``Invocation`` does not bind the compile-from/compile-to phase setters that
the C API has, so they are reached through ctypes on the same shared library.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

from iree.compiler import ir
from iree.compiler.api import Output, Session
from iree.compiler.api import ctypes_dl as _cdl

_PHASE_SETTERS = ("ireeCompilerInvocationSetCompileFromPhase", "ireeCompilerInvocationSetCompileToPhase")
for _name in _PHASE_SETTERS:
    _fn = getattr(_cdl._dylib, _name)
    _fn.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    _fn.restype = None


class CompileError(RuntimeError):
    """IREE rejected the program; the message carries IREE's own diagnostics."""


class IreeSession:
    """An IREE compiler session whose context the importer and msd passes share."""

    def __init__(self, flags: Sequence[str]) -> None:
        self.session = Session()
        try:
            self.session.set_flags(*flags)
        except ValueError as e:
            raise CompileError(f"IREE rejected the compiler flags {list(flags)}: {e}") from None
        self.context: ir.Context = self.session.context
        # The session context loads dialects lazily and allows unregistered ops: load everything
        # so that ops built from Python are real, registered ops.
        self.context.load_all_available_dialects()
        self.context.allow_unregistered_dialects = False
        self._diagnostics: list[str] = []
        self.context.attach_diagnostic_handler(self._on_diagnostic)
        self._inv = None

    def _on_diagnostic(self, d: ir.Diagnostic) -> bool:
        if d.severity == ir.DiagnosticSeverity.ERROR:
            self._diagnostics.append(f"{d.location}: {d.message}")
        return True

    def load(self, module: ir.Operation) -> None:
        """Hand the module (built in :attr:`context`) to a new invocation; it is mutated in place."""
        self._inv = self.session.invocation()
        self._inv.import_module(module)

    def run_phases(self, start: str, end: str) -> None:
        """Run IREE's pipeline from phase ``start`` to ``end`` (e.g. "start" → "input")."""
        assert self._inv is not None, "load() a module first"
        _cdl._dylib.ireeCompilerInvocationSetCompileFromPhase(self._inv._inv_p, start.encode())
        _cdl._dylib.ireeCompilerInvocationSetCompileToPhase(self._inv._inv_p, end.encode())
        self._diagnostics.clear()
        if not self._inv.execute():
            detail = "\n".join(self._diagnostics[:20]) or "(no diagnostic was reported)"
            raise CompileError(f"IREE failed between phases '{start}' and '{end}':\n{detail}")

    def vm_bytecode(self) -> bytes:
        out = Output.open_membuffer()
        try:
            self._inv.output_vm_bytecode(out)
            return bytes(out.map_memory())
        finally:
            out.close()
