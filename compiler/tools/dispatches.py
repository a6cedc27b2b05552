"""``msd.compiler.tools.dispatches``: how many kernel dispatches one call of a compiled function makes.

Read from the module's VM disassembly (``iree-dump-module``, shipped with iree-base-compiler): the
``hal.command_buffer.dispatch`` calls in ``function$async``, plus those of the command buffers it
replays (IREE records a static-shape function's command buffer once, in a function whose result
``__init`` stores to a global).  Dispatches are the unit of a decode step's fixed cost on CPU: each one
is a barrier and a trip through the task system (``docs/benchmarks.md``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def iree_tool(name: str) -> str | None:
    """The IREE tool ``name`` beside this Python (the venv's), else on PATH; None when there is none."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else shutil.which(name)


def vm_functions(disassembly: str) -> list[tuple[str, list[str]]]:
    """``(name, body lines)`` of each ``vm.func`` in an ``iree-dump-module`` disassembly."""
    funcs: list[tuple[str, list[str]]] = []
    for line in disassembly.splitlines():
        m = re.match(r"vm\.func @([^(]+)\(", line)
        if m:
            funcs.append((m.group(1), []))
        elif funcs:
            funcs[-1][1].append(line)
    return funcs


def dispatches_per_call(vmfb: bytes, function: str) -> int | None:
    """``hal.command_buffer.dispatch`` calls made by one call of ``function``: those in
    ``function$async`` plus those in the command buffers it replays (IREE records a static-shape
    function's command buffer once, in a function ``__init`` stores to a global)."""
    tool = iree_tool("iree-dump-module")
    if tool is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "module.vmfb"
        f.write_bytes(vmfb)
        text = subprocess.run([tool, "--output=disassembly", str(f)], capture_output=True, text=True).stdout
    funcs = vm_functions(text)
    names = [n for n, _ in funcs]
    if f"{function}$async" not in names:
        return None
    count = [sum("hal.command_buffer.dispatch" in line for line in lines) for _, lines in funcs]
    builder: dict[int, int] = {}  # global ref ordinal → function ordinal that records it
    for _, lines in funcs:
        made: dict[str, int] = {}
        for line in lines:
            m = re.search(r"%r(\d+) = vm\.call @module:(\d+)\(\)", line, re.I)
            if m:
                made[m.group(1)] = int(m.group(2))
            m = re.search(r"vm\.global\.store\.ref %r(\d+), \.refs\[(\d+)\] : !hal\.command_buffer", line, re.I)
            if m and m.group(1) in made:
                builder[int(m.group(2))] = made[m.group(1)]
    i = names.index(f"{function}$async")
    total = count[i]
    for line in funcs[i][1]:
        m = re.search(r"vm\.global\.load\.ref \.refs\[(\d+)\] : !hal\.command_buffer", line)
        if m and int(m.group(1)) in builder:
            total += count[builder[int(m.group(1))]]
    return total


__all__ = ["dispatches_per_call", "iree_tool", "vm_functions"]
