"""A compile never takes the user's process down: IREE runs in a worker process (msd.compiler.pipeline.worker), and
a crash there (segfault, abort, LLVM's exit()) becomes a CompileError naming the phase and the signal."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import msd
from helpers import error_bound, mlp
from msd.compiler.pipeline import worker
from msd.errors import CompileError

X86_64 = platform.machine() in ("x86_64", "AMD64")


class Times2(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2  # aten.mul.Scalar on int8: IREE 3.13's torch→linalg lowering segfaults on it


INT8 = torch.arange(12, dtype=torch.int8).reshape(3, 4)


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie nobody reaped yet counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.fixture
def tmpdir_for_msd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TMPDIR of the test's own, to see what a compile leaves in it."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_a_segfault_in_iree_is_a_compile_error_and_the_next_compile_works() -> None:
    with pytest.raises(CompileError) as err:
        msd.compile(Times2(), (INT8,), slices=0)
    message = str(err.value)
    assert message.startswith("IREE crashed (SIGSEGV) while lowering torch to linalg (IREE phases start→input)")
    assert "aten.mul.Scalar on int8" in message and "x.to(torch.int32)" in message
    # the same process compiles on, in a fresh worker
    model = mlp(32, 48, 16)
    qmodel = msd.quantize(model)
    x = torch.randn(3, 32)
    steps: list[str] = []
    cm = msd.compile(qmodel, (x,), slices=2, progress=steps.append)
    assert steps == ["export", "import", "msd passes", "IREE compile", "weights"]
    assert len(cm.report.rewritten) == 2  # the pass's report crossed the process boundary
    ref, bound = error_bound(qmodel, x, 2)
    assert ((cm(x).double() - ref).abs() <= bound).all()
    assert torch.allclose(cm(x), qmodel(x), atol=1e-3)  # and matches eager
    assert (msd.compile(Times2(), (INT8.to(torch.int32),), slices=0)(INT8.to(torch.int32)) == INT8 * 2).all()


def test_iree_diagnostics_still_arrive_and_the_worker_is_reused() -> None:
    model = nn.Linear(8, 4)
    x = torch.randn(2, 8)
    assert "linalg" in msd.compile(model, (x,), slices=0, emit="linalg")
    pids = worker.worker_pids()
    assert len(pids) == 1
    with pytest.raises(CompileError, match=r"IREE failed between phases 'input' and 'end':\n.*unregistered device"):
        msd.compile(model, (x,), slices=0, extra_flags=["--iree-hal-target-device=nonsense"])
    with pytest.raises(CompileError, match="(?s)IREE rejected the compiler flags .*option not found: no-such-flag"):
        msd.compile(model, (x,), slices=0, extra_flags=["--no-such-flag"])
    assert worker.worker_pids() == pids  # an error IREE reports is not a crash: the worker stays


@pytest.mark.skipif(not X86_64, reason="LLVM's x86 backend exits on a 64-bit triple with an unknown CPU")
def test_llvm_exit_on_a_bad_flag_is_a_compile_error() -> None:
    with pytest.raises(CompileError) as err:
        msd.compile(nn.Linear(8, 4), (torch.randn(2, 8),), slices=0,
                    extra_flags=["--iree-llvmcpu-target-cpu=nonsense"])
    message = str(err.value)
    assert message.startswith("IREE exited (exit status 1) while compiling for the target (IREE phases input→end)")
    assert "Check extra_flags=['--iree-llvmcpu-target-cpu=nonsense']" in message
    assert "LLVM ERROR: 64-bit code requested" in message


@pytest.mark.parametrize("at", ["IREE compile", "weights"])
def test_ctrl_c_kills_the_worker_and_leaves_no_temporary_folder(tmpdir_for_msd: Path, at: str) -> None:
    seen: list[int] = []

    def progress(step: str) -> None:
        if step == at:
            seen.extend(worker.worker_pids())
            raise KeyboardInterrupt

    model = mlp(16, 8)
    with pytest.raises(KeyboardInterrupt):
        msd.compile(model, (torch.randn(2, 16),), slices=0, progress=progress)
    assert seen
    if at == "IREE compile":  # interrupted mid-compile: that worker is killed (and reaped)
        assert all(_gone(pid) for pid in seen) and not set(seen) & set(worker.worker_pids())
    assert not [p for p in tmpdir_for_msd.iterdir() if p.name.startswith("msd")]
    assert msd.compile(model, (torch.randn(2, 16),), slices=0, emit="vmfb")[:4]  # and compiles on


WORKER_WITHOUT_TORCH = '''
import sys
sys.modules["torch"] = None  # importing it fails
from msd.compiler.pipeline import worker
text = b"""module { func.func @main(%x: !torch.vtensor<[3,4],f32>) -> !torch.vtensor<[3,4],f32> {
  %two = torch.constant.int 2
  %0 = torch.aten.mul.Scalar %x, %two : !torch.vtensor<[3,4],f32>, !torch.int -> !torch.vtensor<[3,4],f32>
  return %0 : !torch.vtensor<[3,4],f32> } }"""
flags = ["--iree-input-type=torch", "--iree-hal-target-device=local",
         "--iree-hal-local-target-device-backends=llvm-cpu"]
request = worker.Request(flags=flags, module=text, stop="vmfb", pass_name="msd-decompose-activations",
                         pass_options={"slices": 2})
result = worker._compile(request, lambda stage: print(stage, end=" "))
print(len(result["vmfb"]) > 1000, result["report"].pass_name)
'''


def test_the_worker_needs_no_torch() -> None:
    """What the worker runs (IREE's phases, msd's passes) imports no torch."""
    run = subprocess.run([sys.executable, "-P", "-c", WORKER_WITHOUT_TORCH], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["setup", "input", "msd", "iree", "serialize", "True", "msd-decompose-activations"]


SCRIPT = '''
import sys, time, torch, msd
from torch import nn
from msd.compiler.pipeline import worker

def progress(step):
    if step == "IREE compile":
        print("worker", *worker.worker_pids(), file=sys.stderr, flush=True)

torch.manual_seed(0)
dims = [64 + 8 * i for i in range(9)]  # IREE takes ~1 s over them: long enough to interrupt
layers = []
for k, n in zip(dims[:-1], dims[1:]):
    layers += [nn.Linear(k, n), nn.GELU()]
msd.compile(msd.quantize(nn.Sequential(*layers), weights="int8"), (torch.randn(4, 64),), progress=progress)
print("finished", file=sys.stderr, flush=True)
'''


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_a_killed_or_interrupted_caller_leaves_no_worker_behind(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it): the worker ignores it, the caller
    gets KeyboardInterrupt and kills the worker.  SIGKILL of the caller alone: the worker notices that its
    parent is gone and leaves by itself."""
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        line = ""
        for line in proc.stderr:
            if line.startswith("worker"):
                break
        pids = [int(p) for p in line.split()[1:]]
        assert pids, line
        t0 = time.monotonic()
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        rest = proc.stderr.read()
        code = proc.wait(timeout=30)
        latency = time.monotonic() - t0
    finally:
        proc.kill()
    assert code == -sig or (sig == signal.SIGINT and code == 1 and "KeyboardInterrupt" in rest), rest
    assert "finished" not in rest and latency < 3, latency
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in pids)
    assert not [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("msd")]


def test_a_worker_that_cannot_start_says_so_and_the_in_process_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = nn.Linear(8, 4), torch.randn(2, 8)
    worker.shutdown()
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(CompileError, match=r"(?s)msd's compile worker failed to start \(exit status 1\) while importing"
                                           r".*MSD_COMPILE_IN_PROCESS=1"):
        msd.compile(model, (x,), slices=0, emit="linalg")
    monkeypatch.setenv("MSD_COMPILE_IN_PROCESS", "1")
    assert "linalg.generic" in msd.compile(model, (x,), slices=0, emit="linalg")
    assert worker.worker_pids() == []
