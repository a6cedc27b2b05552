"""Failures the user can cause, answered before any long work with one line and a non-zero status:
bad targets (without taking the process down), bad arguments, bad files, Ctrl-C."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import msd
from msd.compiler.pipeline import targets as T
from msd.compiler.tools.cli import main
from msd.errors import TargetError

MSD = str(Path(sys.executable).with_name("msd"))
X86_64 = platform.machine() in ("x86_64", "AMD64")

ENTRY = '''
import torch, msd
from torch import nn

def build():
    torch.manual_seed(0)
    return msd.quantize(nn.Sequential(nn.Linear(32, 16))), (torch.randn(2, 32),)

def boom():
    raise RuntimeError("no weights here")

def wrong():
    return 42

not_a_function = 3

def slow():  # 40 matmuls of different shapes: IREE takes several seconds over them
    torch.manual_seed(0)
    dims = [64 + 8 * i for i in range(41)]
    layers = []
    for k, n in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(k, n), nn.GELU()]
    return msd.quantize(nn.Sequential(*layers), weights="int8"), (torch.randn(4, 64),)
'''
MODULE = "reliability_models"  # a name no other test imports


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    """``msd argv`` in this process: (exit status, stderr); a refusal at parse time is status 2."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the entry-point module and a compiled artifact ``art`` (compiled in this process)."""
    work = tmp_path_factory.mktemp("reliability")
    (work / f"{MODULE}.py").write_text(ENTRY)
    cwd = Path.cwd()
    os.chdir(work)
    try:
        assert main(["compile", f"{MODULE}:build", "-o", "art"]) == 0
    finally:
        os.chdir(cwd)
    return work


@pytest.fixture
def in_work(work: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(work)
    return work


# ----------------------------------------------------------------------------- targets
def test_unknown_llvm_cpu_is_refused_before_compiling() -> None:
    """LLVM would print "'nonsense' is not a recognized processor" and abort the whole process."""
    import torch
    from torch import nn

    model = msd.quantize(nn.Sequential(nn.Linear(32, 16)))
    with pytest.raises(TargetError, match=r"CPU 'nonsense' is not known to the LLVM of the installed .*\(known: .*"
                                          r"generic.*'llvm-cpu:aarch64' cross-compiles"):
        msd.compile(model, (torch.randn(2, 32),), target="llvm-cpu:nonsense")
    with pytest.raises(ValueError, match="Did you mean"):  # TargetError is a ValueError
        T.resolve("llvm-cpu:genric")


def test_known_llvm_cpus_resolve_and_the_probe_is_cached() -> None:
    info = T.llvm_cpu_info()
    assert info is not None and "generic" in info.cpus and len(info.cpus) > 10
    for spec in ("llvm-cpu", "llvm-cpu:host", "llvm-cpu:generic", f"llvm-cpu:{info.cpus[-1]}"):
        assert T.resolve(spec).backend == "llvm-cpu"
    t0 = time.perf_counter()
    T.resolve(f"llvm-cpu:{info.cpus[0]}")
    assert time.perf_counter() - t0 < 0.05  # no second child process
    arm = T.llvm_cpu_info(T.AARCH64_TRIPLE)
    assert arm is not None and set(T.AARCH64_FEATURES) <= arm.features and "neoverse-v2" in arm.cpus
    flags = T.resolve("llvm-cpu:aarch64").flags
    assert f"--iree-llvmcpu-target-triple={T.AARCH64_TRIPLE}" in flags
    assert "--iree-llvmcpu-target-cpu-features=+dotprod,+i8mm" in flags


@pytest.mark.skipif(not X86_64, reason="the 32-bit CPUs of LLVM's x86 table")
def test_32_bit_x86_cpus_are_refused() -> None:
    """LLVM's x86 table lists i386 too; on x86_64 it aborts ("64-bit code requested on a subtarget …")."""
    assert T.resolve("llvm-cpu:x86-64-v3").arch == "x86-64-v3"
    with pytest.raises(TargetError, match="CPU 'i386' is not known .* for x86_64"):
        T.resolve("llvm-cpu:i386")


def test_every_backend_refuses_with_a_target_error() -> None:
    for spec, message in (("cuda:sm_100", "Blackwell datacenter"), ("rocm:gfx900", "ROCm arch 'gfx900'"),
                          ("npu", "registers no NPU"), ("tpu", "target 'tpu' is not supported"),
                          ("vulkan-spirv:nonsense", "Vulkan target 'nonsense' is not known"),
                          (7, "target must be a string")):
        with pytest.raises(TargetError, match=message):
            T.resolve(spec)


def test_the_vulkan_examples_in_the_message_are_known() -> None:
    for name in T.VULKAN_EXAMPLES:
        assert T._vulkan_target_known(name) is True, name


def test_compile_command_refuses_a_bad_target_first(capsys, in_work: Path) -> None:
    code, err = _cli(capsys, "compile", f"{MODULE}:boom", "-o", "new", "--target", "llvm-cpu:nonsense")
    assert code == 1 and "TargetError: target 'llvm-cpu:nonsense'" in err  # before the entry point runs
    assert not (in_work / "new").exists()


# ----------------------------------------------------------------------------- Ctrl-C
def test_interrupted_wait_returns_at_once_and_the_call_finishes_in_the_background() -> None:
    import _thread

    from msd.compiler.pipeline import iree_session

    finished = threading.Event()

    def slow_call() -> int:
        time.sleep(1.0)
        finished.set()
        return 1

    threading.Timer(0.2, _thread.interrupt_main).start()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        iree_session._interruptible(slow_call)
    assert time.perf_counter() - t0 < 0.5
    assert iree_session.busy()  # abandoned, still running (an interrupted Thread.join would say otherwise)
    assert finished.wait(5)
    time.sleep(0.05)
    assert not iree_session.busy()
    assert iree_session._interruptible(lambda: 7) == 7
    with pytest.raises(ZeroDivisionError):
        iree_session._interruptible(lambda: 1 / 0)


def test_ctrl_c_during_iree_compile_exits_at_once(tmp_path: Path) -> None:
    (tmp_path / f"{MODULE}.py").write_text(ENTRY)
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    proc = subprocess.Popen([MSD, "compile", f"{MODULE}:slow", "-o", "out"], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "IREE compile" in line:
                break
        assert "IREE compile" in seen[-1], "".join(seen)
        time.sleep(0.3)
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        code = proc.wait(timeout=10)
        latency = time.perf_counter() - t0
    finally:
        proc.kill()
    assert code == 130, rest
    assert latency < 3, latency
    assert rest.strip() == "msd compile: interrupted"
    assert not (tmp_path / "out").exists()
    assert not [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("msd")]


def test_ctrl_c_while_saving_removes_the_new_output_folder(capsys, in_work: Path, monkeypatch) -> None:
    class Saving:
        def save(self, folder, **_):
            Path(folder).mkdir()
            (Path(folder) / "module.vmfb").write_bytes(b"partial")
            raise KeyboardInterrupt

    monkeypatch.setattr(msd, "compile", lambda *a, **k: Saving(), raising=False)
    code, err = _cli(capsys, "compile", f"{MODULE}:build", "-o", "half")
    assert code == 130 and err.strip() == "msd compile: interrupted"
    assert not (in_work / "half").exists()


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(("argv", "message"), [
    (["generate", "m.gguf", "hi", "--max-new-tokens", "-5"], "argument --max-new-tokens: must be at least 1, got -5"),
    (["generate", "m.gguf", "hi", "--max-new-tokens", "0"], "argument --max-new-tokens: must be at least 1, got 0"),
    (["generate", "m.gguf", "hi", "--slices", "4"], "argument --slices: must be between 0 and 3, got 4"),
    (["generate", "m.gguf", "hi", "--max-ctx", "2"], "argument --max-ctx: must be at least 3, got 2"),
    (["bench", "art", "--reps", "0"], "argument --reps: must be at least 1, got 0"),
    (["bench", "art", "--reps", "ten"], "argument --reps: 'ten' is not an integer"),
    (["bench", "art", "--shape", "16xabc"], "argument --shape: '16xabc' is not a shape such as 16x4096"),
    (["bench", "art", "--shape", "0x5"], "argument --shape: '0x5': every dimension must be at least 1"),
    (["compile", "m:f", "-o", "o", "--slices", "-1"], "argument --slices: must be between 0 and 3, got -1"),
    (["compile", "m:f", "-o", "o", "--max-ctx", "0"], "argument --max-ctx: must be at least 3, got 0"),
    (["compile", "m:f", "-o", "o", "--min-bits", "0"], "argument --min-bits: must be at least 1, got 0"),
])
def test_arguments_out_of_range_are_refused_when_parsed(capsys, argv: list[str], message: str) -> None:
    code, err = _cli(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_generate_refuses_compile_options_for_an_artifact_folder(capsys, tmp_path: Path) -> None:
    folder = tmp_path / "llm"
    folder.mkdir()
    (folder / "msd.json").write_text(json.dumps({"slices": 1, "metadata": {"generation": {
        "max_ctx": 512, "kv_cache": "int8"}}}))
    code, err = _cli(capsys, "generate", str(folder), "hi", "--slices", "2", "--max-ctx", "64")
    assert code == 1
    assert "is a compiled artifact (slices=1, max_ctx=512, kv_cache=int8): --slices, --max-ctx are fixed when" \
           " compiling (msd compile model.gguf -o DIR" in err
    code, err = _cli(capsys, "generate", str(folder), "hi", "--kv-cache", "float")
    assert code == 1 and "--kv-cache is fixed when compiling" in err
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    code, err = _cli(capsys, "generate", str(tmp_path / "m.gguf"), "hi", "--device", "cuda")
    assert code == 1 and "--device applies to artifact folders" in err


def test_compile_checks_the_output_folder_first(capsys, in_work: Path, monkeypatch) -> None:
    entry = f"{MODULE}:build"
    (in_work / "a_file").write_text("x")
    code, err = _cli(capsys, "compile", entry, "-o", "a_file")
    assert code == 1 and "-o a_file: exists and is not a folder" in err
    code, err = _cli(capsys, "compile", entry, "-o", "a_file/sub")
    assert code == 1 and "is a file, not a folder" in err
    (in_work / "mine").mkdir(exist_ok=True)
    (in_work / "mine" / "notes.txt").write_text("keep me")
    code, err = _cli(capsys, "compile", entry, "-o", "mine")
    assert code == 1 and "-o mine: a folder with other files in it and no msd.json (not an msd artifact)" in err
    assert (in_work / "mine" / "notes.txt").read_text() == "keep me"
    # an earlier artifact, or an empty folder, may be written over: the next check (the target) speaks
    (in_work / "empty").mkdir(exist_ok=True)
    for out in ("art", "empty", "new/deeper"):
        code, err = _cli(capsys, "compile", entry, "-o", out, "--target", "llvm-cpu:nonsense")
        assert code == 1 and "TargetError" in err, err
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == in_work else real_access(p, mode))
    code, err = _cli(capsys, "compile", entry, "-o", "new/deeper")
    assert code == 1 and f"-o new/deeper: cannot create it, {in_work} is not writable" in err


@pytest.mark.parametrize(("entry", "message"), [
    (f"{MODULE}:boom", f"entry point '{MODULE}:boom' raised RuntimeError: no weights here (at "),
    (f"{MODULE}:wrong", f"{MODULE}:wrong must return (model, example_inputs[, dynamic_shapes]), got int"),
    (f"{MODULE}:not_a_function", f"entry point '{MODULE}:not_a_function' is not a function (it is a int)"),
    (f"{MODULE}:missing", f"cannot load entry point '{MODULE}:missing': module '{MODULE}' has no attribute"),
    ("broken_module:build", "cannot load entry point 'broken_module:build': SyntaxError: "),
    (MODULE, f"entry point '{MODULE}' must be 'module:function'"),
    (":build", "entry point ':build' must be 'module:function'"),
])
def test_compile_entry_point_failures_are_one_line(capsys, in_work: Path, entry: str, message: str) -> None:
    (in_work / "broken_module.py").write_text("def build(:\n")
    code, err = _cli(capsys, "compile", entry, "-o", "never")
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (in_work / "never").exists()


def test_compile_option_pairings_are_refused_before_the_entry_point_runs(capsys, in_work: Path) -> None:
    code, err = _cli(capsys, "compile", f"{MODULE}:boom", "-o", "never", "--hardware", "npu-910b")
    assert code == 1 and "needs decide='cost'" in err and "boom" not in err


def test_run_bench_inspect_failures_are_one_line(capsys, in_work: Path) -> None:
    np.save("x.npy", np.zeros((2, 32), np.float32))
    np.save("x64.npy", np.zeros((2, 32), np.float64))
    np.save("wide.npy", np.zeros((2, 33), np.float32))
    (in_work / "not_npy.npy").write_text("hello")
    (in_work / "plain").mkdir(exist_ok=True)
    for argv, message in (
        (["run", "art", "--input", "missing.npy"], "cannot read --input missing.npy: No such file or directory"),
        (["run", "art", "--input", "not_npy.npy"], "cannot read --input not_npy.npy as a .npy array"),
        (["run", "art"], "main(input: f32[2, 32]) -> (linear: f32[2, 16]) takes 1 input(s), got 0 --input file(s)"),
        (["run", "art", "--input", "x.npy", "--input", "x.npy"], "takes 1 input(s), got 2 --input file(s)"),
        (["run", "art", "--input", "x64.npy"], "InputError: input 0"),
        (["run", "art", "--input", "wide.npy"], "InputError: input 0"),
        (["run", "art", "--input", "x.npy", "--output", "a.npy", "--output", "b.npy"], "has 1 output(s), got 2"),
        (["run", "art", "--input", "x.npy", "--output", "nowhere/y.npy"], "nowhere does not exist"),
        (["run", "art", "--function", "decode", "--input", "x.npy"], "no function 'decode' (the artifact has: main)"),
        (["bench", "art", "--shape", "2x32", "--shape", "2x32"], "1 input(s) but 2 --shape value(s)"),
        (["bench", "art", "--shape", "2x33", "--reps", "1"], "InputError: input 0"),
        (["inspect", "plain"], "plain is not an msd artifact: msd.json is missing"),
        (["inspect", "x.npy"], "x.npy is not a folder: an msd artifact is a folder with msd.json"),
    ):
        code, err = _cli(capsys, *argv)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    code, err = _cli(capsys, "run", "art", "--input", "x.npy", "--output", "y.npy")
    assert code == 0 and np.load("y.npy").shape == (2, 16)
