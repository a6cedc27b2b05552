"""IREE's compile phases in a worker process, so that a crash in IREE or LLVM cannot take the caller down.

IREE runs in-process through its C API: a segfault in one of its passes (IREE 3.13's torch→linalg
lowering crashes on ``x * 2`` of an int8 tensor), an ``abort()`` or LLVM's ``exit()`` on a flag it
cannot honour would end the user's Python process.  :func:`compile_module` therefore hands the
imported torch-dialect module to a worker process, which runs everything after the import: IREE's
phases start→input, msd's passes, IREE's phases input→end and the VM bytecode serialization.  A
crash there kills only the worker; the caller gets a :class:`~msd.errors.CompileError` naming the
phase, the signal (or exit status), what to change when that is known, and IREE's last stderr lines.

The worker (``python -m msd.compiler.pipeline.worker``) needs iree.compiler and msd.passes, not torch.  One is
kept per process and reused across compiles (importing IREE takes ~0.5 s); :func:`prewarm` starts it
early so that it imports while the caller exports its model.  The protocol, over the worker's
stdin/stdout: length-prefixed pickles.  The caller sends one request (flags, the module as MLIR
bytecode, where to stop, the pass options); the worker answers ``("stage", key)`` before each phase
(the caller turns those into ``progress`` steps and knows what a crash interrupted), then ``("done",
result)`` or ``("error", exception, traceback)``.  The worker writes its protocol to a copy of fd 1 and
points fd 1 at stderr, so that nothing IREE prints can corrupt the stream; its stderr goes to an
anonymous temporary file that the caller copies to its own stderr after each request, or quotes in
the error after a crash.

Ctrl-C: the worker ignores SIGINT (a terminal sends it to the whole process group); the caller waits
on the pipe, so ``KeyboardInterrupt`` reaches it at once, and it then kills the worker and re-raises.
A worker also leaves by itself when its caller dies (it watches its parent process id).
"""

from __future__ import annotations

import atexit
import gc
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from msd.errors import CompileError, MsdError

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

LARGE_ELEMENTS_LIMIT = 16  # elements of a constant printed in emitted MLIR text before it is elided
STDERR_LINES = 20  # the worker's last stderr lines quoted in a crash's error
# "1": run the phases in the calling process, as before the worker existed (a crash then ends the caller;
# for debugging IREE under gdb, or where the worker cannot start).
IN_PROCESS_ENV = "MSD_COMPILE_IN_PROCESS"
_HEADER = struct.Struct(">Q")

# What the worker is doing at each stage (a crash names it); "msd" and "iree" are progress steps too.
STAGES = {
    "request": "reading the compile request",
    "setup": "setting up IREE's compiler session (flags, module)",
    "input": "lowering torch to linalg (IREE phases start→input)",
    "msd": "running msd's passes",
    "packer": "compiling the weight packer for the host CPU",
    "iree": "compiling for the target (IREE phases input→end)",
    "serialize": "writing the VM bytecode",
    "print": "printing the module",
}
PROGRESS = {"msd": "msd passes", "iree": "IREE compile"}


@dataclass
class Request:
    """One compile: everything after the import to torch MLIR."""

    flags: list[str]
    module: bytes  # MLIR bytecode of the torch-dialect module (weights are named parameters, not in it)
    stop: str  # "linalg" | "msd" | "vmfb"
    pass_name: str = ""  # "" runs no msd pass (slices=0)
    pass_options: dict[str, Any] | None = None
    post_pipeline: str = ""  # run after the pass (e.g. canonicalize, cse)
    profiles: dict[str, Any] | None = None  # hardware profiles the pass costs with, as the caller has them
    # Flags of the host CPU build of the packer (--msd-prepack-parameters); empty: no packing pass.
    packer_flags: list[str] | None = None


# ------------------------------------------------------------------------------------------ framing
def _pickle(message: object) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def _send(stream: BinaryIO, message: object) -> None:
    _send_bytes(stream, _pickle(message))


def _send_bytes(stream: BinaryIO, data: bytes) -> None:
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _recv(stream: BinaryIO) -> Any:
    """The next message, or None at end of stream (the other side is gone)."""
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


# ------------------------------------------------------------------------------------------ the worker
def _serve(parent: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle: it kills us
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever IREE or LLVM prints to stdout must not corrupt the protocol
    inp = os.fdopen(os.dup(0), "rb")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    threading.Thread(target=_watch_parent, args=(parent,), name="msd-worker-parent", daemon=True).start()
    from msd.compiler.pipeline.iree_session import IreeSession  # noqa: F401 - imported before "ready"
    from msd.passes import run_pass  # noqa: F401

    _send(out, ("ready", os.getpid()))
    while True:
        request = _recv(inp)
        if request is None:
            return 0
        try:
            reply = _pickle(("done", _compile(request, lambda key: _send(out, ("stage", key)))))
        except Exception as e:  # noqa: BLE001 - every failure goes back to the caller
            reply = _pickle(("error", _portable(e), traceback.format_exc()))
        sys.stderr.flush()
        _send_bytes(out, reply)
        del reply
        gc.collect()  # IREE sessions sit in reference cycles: free them while the caller writes its weights


def _watch_parent(parent: int) -> None:
    """Leave when the caller is gone (killed without closing our stdin, mid-compile)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling, else a CompileError with its text."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001
        return CompileError(f"{type(e).__name__}: {e}")


def _compile(req: Request, stage: Callable[[str], None]) -> dict[str, Any]:
    from iree.compiler import ir, passmanager

    from msd.compiler.pipeline.iree_session import IreeSession
    from msd.cost.hardware import PROFILES
    from msd.passes import run_pass
    from msd.passes.attention_kernels import NAME as ATTENTION_KERNELS
    from msd.passes.prepack_parameters import NAME as PREPACK
    from msd.passes.prepack_parameters import parameter_keys, split
    from msd.passes.row_kernels import NAME as ROW_KERNELS

    stage("setup")
    session = IreeSession(req.flags)
    module = ir.Module.parse(req.module, context=session.context)
    op = module.operation
    with session.context, ir.Location.unknown():
        attention = run_pass(op, ATTENTION_KERNELS)  # torch dialect: before IREE's input conversion
        rows = run_pass(op, ROW_KERNELS)  # (after it: a decode attention may take a RoPE row op in)
    session.load(op)
    stage("input")
    session.run_phases("start", "input")
    if req.stop == "linalg":
        stage("print")
        return {"text": op.get_asm(large_elements_limit=LARGE_ELEMENTS_LIMIT)}
    report = packing = None
    if req.pass_name:
        stage("msd")
        PROFILES.update(req.profiles or {})
        with session.context, ir.Location.unknown():
            report = run_pass(op, req.pass_name, **(req.pass_options or {}))
            if req.post_pipeline:
                passmanager.PassManager.parse(req.post_pipeline).run(op)
            if req.packer_flags is not None:
                packing = run_pass(op, PREPACK)
    if req.stop == "msd":
        stage("print")
        return {"text": op.get_asm(large_elements_limit=LARGE_ELEMENTS_LIMIT), "report": report, "packing": packing,
                "attention": attention, "rows": rows}
    with session.context:
        packer_module, calls = split(op)
        keys = sorted(parameter_keys(op))
    packer = None
    if packer_module is not None:
        stage("packer")
        packer = {"vmfb": compile_packer(packer_module, req.packer_flags or []), "calls": calls}
    stage("iree")
    session.run_phases("input", "end")
    stage("serialize")
    return {"vmfb": session.vm_bytecode(), "report": report, "packing": packing, "attention": attention,
            "rows": rows, "packer": packer, "parameters": keys}


def compile_packer(module: Any, flags: list[str]) -> bytes:
    """The pack functions (:func:`msd.passes.prepack_parameters.split`), compiled for this machine's CPU
    in a session of their own: they run here, at compile time, whatever the model's target."""
    import io

    from iree.compiler import ir

    from msd.compiler.pipeline.iree_session import IreeSession

    buffer = io.BytesIO()
    if "hal.device.targets" in module.attributes:
        del module.attributes["hal.device.targets"]
    module.write_bytecode(buffer)
    session = IreeSession(flags)
    op = ir.Module.parse(buffer.getvalue(), context=session.context).operation
    session.load(op)
    session.run_phases("start", "end")
    return session.vm_bytecode()


# ------------------------------------------------------------------------------------------ the caller
class WorkerCrash(Exception):
    """The worker died in the middle of a request."""

    def __init__(self, stage: str | None, returncode: int | None, stderr: str) -> None:
        self.stage, self.returncode, self.stderr = stage, returncode, stderr
        super().__init__(f"{self.how()} while {self.doing()}")

    def how(self) -> str:
        rc = self.returncode
        if rc is None:
            status = "no exit status"
        elif rc < 0:
            try:
                status = signal.Signals(-rc).name
            except ValueError:
                status = f"signal {-rc}"
        else:
            status = f"exit status {rc}"
        if self.stage is None:
            return f"msd's compile worker failed to start ({status})"
        if rc is not None and rc >= 0:
            return f"IREE exited ({status})"
        return f"IREE crashed ({status})"

    def doing(self) -> str:
        if self.stage is None:
            return "importing IREE and msd's passes"
        return STAGES.get(self.stage, self.stage)


class _Worker:
    def __init__(self) -> None:
        self.owner = os.getpid()
        self.ready = False
        self.stderr = tempfile.TemporaryFile()  # anonymous: nothing to clean up
        if fcntl is not None:  # the worker appends even after we truncated it
            flags = fcntl.fcntl(self.stderr.fileno(), fcntl.F_GETFL)
            fcntl.fcntl(self.stderr.fileno(), fcntl.F_SETFL, flags | os.O_APPEND)
        # -P: the caller's working directory must not shadow a module the worker imports.
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "msd.compiler.pipeline.worker", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, close_fds=True,
        )

    def alive(self) -> bool:
        return self.owner == os.getpid() and self.proc.poll() is None

    def request(self, req: Request, on_stage: Callable[[str], None]) -> tuple[str, Any]:
        """The worker's reply: ("done", result) or ("error", exception) -- the worker stays usable -- or
        WorkerCrash when it died."""
        stage = None
        try:
            _send(self.proc.stdin, req)
        except OSError:  # BrokenPipeError: it is gone
            self._crashed(stage)
        while True:
            msg = _recv(self.proc.stdout)
            if msg is None:
                self._crashed(stage)
            kind = msg[0]
            if kind == "ready":
                self.ready = True
            elif kind == "stage":
                stage = msg[1]
                on_stage(stage)
            else:
                self._relay_stderr()
                if kind == "done":
                    return kind, msg[1]
                _, error, trace = msg
                if not isinstance(error, MsdError):
                    error.add_note(f"(raised in msd's compile worker)\n{trace}")
                return kind, error

    def _crashed(self, stage: str | None) -> None:
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        stderr = self._take_stderr()
        self.kill()
        raise WorkerCrash((stage or "request") if self.ready else None, rc, stderr)

    def _take_stderr(self) -> str:
        try:
            self.stderr.seek(0)
            data = self.stderr.read()
            self.stderr.seek(0)
            self.stderr.truncate()
        except (OSError, ValueError):
            return ""
        return data.decode(errors="replace")

    def _relay_stderr(self) -> None:
        """What IREE printed during the request goes to our stderr, as it did when IREE ran in-process."""
        text = self._take_stderr()
        if text:
            try:
                os.write(2, text.encode())
            except OSError:
                pass

    def close(self) -> None:
        """Let an idle worker leave (end of its stdin), or kill it if it does not at once."""
        if self.owner != os.getpid():
            return
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def kill(self) -> None:
        if self.owner != os.getpid():
            return
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for f in (self.proc.stdin, self.proc.stdout, self.stderr):
            try:
                f.close()
            except OSError:
                pass
        _LIVE.discard(self)


_LOCK = threading.Lock()
_IDLE: list[_Worker] = []  # at most one kept between compiles
_LIVE: set[_Worker] = set()  # idle and busy, for the exit


def _acquire() -> _Worker:
    with _LOCK:
        while _IDLE:
            worker = _IDLE.pop()
            if worker.alive():
                return worker
            worker.kill()
        worker = _Worker()
        _LIVE.add(worker)
        return worker


def _release(worker: _Worker) -> None:
    with _LOCK:
        if worker.alive() and not _IDLE:
            _IDLE.append(worker)
            return
    worker.close()


def prewarm() -> None:
    """Start the worker now if there is none, so that it imports IREE while the caller does other work."""
    if os.environ.get(IN_PROCESS_ENV, "") not in ("", "0"):
        return
    with _LOCK:
        if any(w.alive() for w in _IDLE):
            return
    _release(_acquire())


def shutdown() -> None:
    """Stop every worker of this process (at exit; tests use it too)."""
    with _LOCK:
        workers = list(_LIVE)
        _IDLE.clear()
    for worker in workers:
        if worker.owner == os.getpid():
            worker.close()


def worker_pids() -> list[int]:
    """Process ids of this process's live workers."""
    return [w.proc.pid for w in list(_LIVE) if w.alive()]


atexit.register(shutdown)
if hasattr(os, "register_at_fork"):  # a forked child starts workers of its own
    os.register_at_fork(after_in_child=lambda: (_IDLE.clear(), _LIVE.clear()))


def compile_module(req: Request, progress: Callable[[str], None] | None = None,
                   advice: Callable[[WorkerCrash], str] | None = None) -> dict[str, Any]:
    """Run ``req`` in the worker; its result (``text`` or ``vmfb``, and ``report``).  IREE's own errors
    arrive as the CompileError the worker raised; a crash of the worker becomes a CompileError that
    names the phase, the signal, ``advice(crash)`` and the worker's last stderr lines.  Any exception
    of the caller's (KeyboardInterrupt, or one from ``progress``) kills the worker and is re-raised."""
    step = progress or (lambda _name: None)

    def on_stage(key: str) -> None:
        if key in PROGRESS:
            step(PROGRESS[key])

    if os.environ.get(IN_PROCESS_ENV, "") not in ("", "0"):
        return _compile(req, on_stage)
    worker = _acquire()
    try:
        kind, value = worker.request(req, on_stage)
    except WorkerCrash as crash:  # the worker is gone already
        raise CompileError(crash_message(crash, advice(crash) if advice else "")) from None
    except BaseException:  # Ctrl-C, or the progress callback raised: the worker is mid-compile
        worker.kill()
        raise
    _release(worker)
    if kind == "error":
        raise value
    return value


def crash_message(crash: WorkerCrash, advice: str = "") -> str:
    counts: dict[str, int] = {}  # LLVM repeats a warning per thread: each line once, with its count
    for line in crash.stderr.splitlines():
        if line.strip():
            counts[line] = counts.get(line, 0) + 1
    lines = [line[:500] + (f" (×{n})" if n > 1 else "") for line, n in counts.items()][-STDERR_LINES:]
    text = f"{crash}" if crash.stage is None else \
        f"{crash}; it ran in msd's compile worker process, so only that process was lost."
    if advice:
        text += f"\n{advice}"
    if lines:
        text += "\nIREE's last messages:\n" + "\n".join(f"  {line}" for line in lines)
    return text


_SMALL_INT_SCALAR = re.compile(r"torch\.aten\.([\w]+)\.Scalar\b[^\n]*:\s*!torch\.vtensor<\[[^\]]*\],([su]i8)>")


def small_int_scalar_ops(torch_asm: str) -> list[str]:
    """``aten.OP.Scalar`` ops on int8/uint8 tensors in a torch-dialect module (IREE 3.13's torch→linalg
    lowering crashes on ``mul``, ``sub``, ``floor_divide`` of them)."""
    found = []
    for op, dtype in _SMALL_INT_SCALAR.findall(torch_asm):
        name = f"aten.{op}.Scalar on {'int8' if dtype == 'si8' else 'uint8'}"
        if op != "add" and name not in found:
            found.append(name)
    return found


def advice_for(crash: WorkerCrash, torch_asm: Callable[[], str], extra_flags: Sequence[str], target: str) -> str:
    """What the user can change, for a crash in ``crash.stage``."""
    if crash.stage is None:
        return (f"Check that `{sys.executable} -P -m msd.compiler.pipeline.worker` runs in this environment,"
                f" or set {IN_PROCESS_ENV}=1 to compile in this process (unprotected).")
    if crash.stage == "input":
        ops = small_int_scalar_ops(torch_asm())
        if ops:
            return (f"The model has {', '.join(ops)} (an int8/uint8 tensor with a Python number: x * 2, x - 3,"
                    " x // 2), which IREE 3.13's torch→linalg lowering crashes on: compute in a wider type,"
                    " e.g. (x.to(torch.int32) * 2).to(torch.int8).")
        return ("This is a bug in IREE's torch→linalg lowering of an op of this model: emit='torch' prints the"
                " module to find the op (or to report it to IREE).")
    if crash.stage == "msd":
        return "This is a bug in msd's passes: slices=0 compiles without them; please report it."
    culprit = f"extra_flags={list(extra_flags)}" if extra_flags else f"target={target!r}"
    return (f"Check {culprit}: a flag IREE accepts but cannot compile with ends the compiler this way"
            " (LLVM's message is below).")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parent = int(args[0]) if args else os.getppid()
    return _serve(parent)


if __name__ == "__main__":  # run the module's own copy, not __main__'s: requests unpickle into it
    from msd.compiler.pipeline import worker as _module

    raise SystemExit(_module.main())
