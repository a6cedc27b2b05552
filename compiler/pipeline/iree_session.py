"""The in-process IREE compiler: one session, its MLIR context, and phase-by-phase execution.

``msd.compile`` uses it in two processes: the caller only imports into a session's context (no flags,
no phases), and the compile worker (:mod:`msd.compiler.pipeline.worker`) runs the phases, so that a crash in IREE
ends the worker rather than the caller.  Used directly (tests, benchmarks, ``MSD_COMPILE_IN_PROCESS=1``)
it runs in the calling process, with the Ctrl-C handling below.

IREE 3.13's Python ``Invocation`` does not bind the compile-from/compile-to phase setters that
the C API has, so they are reached through ctypes on the same shared library.

Ctrl-C: IREE's pipeline is one long C call that cannot be cancelled, and Python only raises
``KeyboardInterrupt`` once control returns to it.  :meth:`IreeSession.run_phases` and
:meth:`IreeSession.vm_bytecode` therefore run that call in a daemon worker thread (ctypes releases
the GIL) and wait for it in short waits, so that ``KeyboardInterrupt`` reaches the caller within a
fraction of a second.  The abandoned compile keeps running in the background until it finishes (its
session stays alive with it; :func:`busy` says whether one is still running).  Tearing the
interpreter and LLVM down under a running compile crashes the process (measured: SIGSEGV at exit),
so a process that exits while one runs either leaves with ``os._exit`` (as the ``msd`` command does)
or, by default, waits for it at exit (:func:`_wait_at_exit`; a second Ctrl-C leaves at once).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from iree.compiler import ir
from iree.compiler.api import Output, Session
from iree.compiler.api import ctypes_dl as _cdl

from msd.errors import CompileError

_PHASE_SETTERS = ("ireeCompilerInvocationSetCompileFromPhase", "ireeCompilerInvocationSetCompileToPhase")
for _name in _PHASE_SETTERS:
    _fn = getattr(_cdl._dylib, _name)
    _fn.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    _fn.restype = None

_T = TypeVar("_T")
_RUNNING = 0  # IREE calls running in worker threads, abandoned ones included
_RUNNING_LOCK = threading.Lock()
WAKE_INTERVAL_S = 0.05  # how often the waiting thread wakes up to let a KeyboardInterrupt through


def busy() -> bool:
    """Whether an IREE call started by an :class:`IreeSession` is still running in a worker thread
    (one abandoned by Ctrl-C keeps running until it ends)."""
    return _RUNNING > 0


def _interruptible(fn: Callable[[], _T]) -> _T:
    """``fn()`` in a daemon worker thread, waited for in short waits so that Ctrl-C interrupts the wait.

    On ``KeyboardInterrupt`` the call is abandoned, not stopped (IREE has no cancel): it runs to its end
    in the background, holding what ``fn`` references alive; :func:`busy` is true until then.  (The wait
    is on an Event, not ``Thread.join``: in Python 3.11 an interrupted join marks a running thread as
    stopped, so ``is_alive()`` could not be trusted afterwards.)"""
    global _RUNNING
    outcome: dict[str, object] = {}
    done = threading.Event()

    def work() -> None:
        global _RUNNING
        try:
            outcome["value"] = fn()
        except BaseException as e:  # handed to the waiting thread
            outcome["error"] = e
        finally:
            with _RUNNING_LOCK:
                _RUNNING -= 1
            done.set()

    with _RUNNING_LOCK:
        _RUNNING += 1
    try:
        threading.Thread(target=work, name="msd-iree-compile", daemon=True).start()
    except BaseException:
        with _RUNNING_LOCK:
            _RUNNING -= 1
        raise
    while not done.wait(WAKE_INTERVAL_S):
        pass
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _wait_at_exit() -> None:
    """At interpreter exit, let a compile abandoned by Ctrl-C end first (its worker uses LLVM and the
    session, which exit tears down); a further Ctrl-C leaves at once with ``os._exit(130)``."""
    if not busy():
        return
    print("msd: an interrupted IREE compile is still running; waiting for it to end before exiting"
          " (Ctrl-C again to exit now)", file=sys.stderr, flush=True)
    try:
        while busy():
            time.sleep(WAKE_INTERVAL_S)
    except KeyboardInterrupt:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(130)


atexit.register(_wait_at_exit)


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
        """Run IREE's pipeline from phase ``start`` to ``end`` (e.g. "start" → "input").  Interruptible
        by Ctrl-C (see the module docstring): the pipeline itself then finishes in the background."""
        assert self._inv is not None, "load() a module first"
        _cdl._dylib.ireeCompilerInvocationSetCompileFromPhase(self._inv._inv_p, start.encode())
        _cdl._dylib.ireeCompilerInvocationSetCompileToPhase(self._inv._inv_p, end.encode())
        self._diagnostics.clear()
        # The worker references self: the session, its context and the module outlive an abandoned run.
        if not _interruptible(lambda: self._inv.execute()):
            detail = "\n".join(self._diagnostics[:20]) or "(no diagnostic was reported)"
            raise CompileError(f"IREE failed between phases '{start}' and '{end}':\n{detail}")

    def vm_bytecode(self) -> bytes:
        """The compiled module's VM bytecode (interruptible like :meth:`run_phases`)."""
        assert self._inv is not None, "load() a module first"

        def serialize() -> bytes:  # references self, like run_phases
            out = Output.open_membuffer()
            try:
                self._inv.output_vm_bytecode(out)
                return bytes(out.map_memory())
            finally:
                out.close()

        return _interruptible(serialize)
