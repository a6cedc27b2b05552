"""Scale check: compile a Llama-2-7B-shaped int4 model with msd for llvm-cpu; wall time and peak RSS per stage.

    python benchmarks/scale.py              # 32 layers (Llama-2-7B shapes) → docs/scale.md (several minutes)
    python benchmarks/scale.py --layers 2   # a quick validation run → a temp file
    python benchmarks/scale.py --skip-run   # compile only; do not load and call the artifact

The model is a stack of Llama-shaped blocks whose seven projections per layer (q, k, v, o 4096→4096;
gate, up 4096→11008; down 11008→4096) are ``GroupQuantizedLinear`` layers built straight from random
packed int4 bytes (group 128, f32 scale and uint8 zero point per group): no float weight exists at any
point of the compile.  Each block is RMSNorm → q/k/v → a per-head sigmoid gate of q·k on v (standing
in for softmax attention, see below) → o → residual → RMSNorm → SwiGLU MLP → residual.  Embedding,
rotary embedding, KV cache and lm_head are left out: the bar is about the 7·L big matmuls.

The compile runs the same sequence as ``msd.compiler.pipeline.driver.compile`` (export, normalize, IREE session,
import, IREE start→input, msd pass + canonicalize/cse, IREE input→end, VM bytecode, parameter archive),
one stage at a time, so that each stage's wall time and peak RSS can be measured on its own.

Peak RSS per stage: the kernel's high-water mark (``VmHWM``) is reset at the start of every stage by
writing ``5`` to ``/proc/self/clear_refs`` and read at its end; the process-lifetime peak is the
running maximum of those (plus the high-water mark of the short gaps between stages).  Writing
``clear_refs`` also resets ``getrusage().ru_maxrss``, so that is not used for the lifetime peak when the
reset works; where it does not, the table falls back to ``ru_maxrss`` (a lifetime peak only).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from iree.compiler import ir, passmanager
from torch import nn

from msd.compiler.frontends.thirdparty import normalize
from msd.compiler.pipeline.driver import COMMON_FLAGS, MODULE_FILE, PARAMETERS_FILE, POST_MSD_PIPELINE
from msd.compiler.pipeline.importer import export, import_program, input_specs
from msd.compiler.pipeline.iree_session import IreeSession
from msd.compiler.pipeline.packing import write_parameters
from msd.compiler.pipeline.targets import kernel_isas
from msd.compiler.pipeline.targets import resolve as resolve_target
from msd.compiler.pipeline.worker import compile_packer
from msd.compiler.quant.quantize import GroupQuantizedLinear
from msd.passes import Report, run_pass
from msd.passes.decompose_activations import NAME as DECOMPOSE
from msd.passes.prepack_parameters import NAME as PREPACK
from msd.passes.prepack_parameters import parameter_keys, split
from msd.runtime.module import Module, TensorSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "docs" / "scale.md"

# Llama-2-7B
HIDDEN = 4096
INTERMEDIATE = 11008
HEADS = 32
LAYERS = 32
GROUP = 128

BAR_BYTES = 8e9  # the bar: peak RSS of the compile under 8 GB (10^9 bytes; stricter than 8 GiB)
IR_LIMIT_BYTES = 10e6  # "the IR stays small": its full text (no elided constants) under 10 MB
DENSE_LIMIT_CHARS = 4096  # a dense<...> literal longer than this would be a large embedded constant
RUNTIME_FACTOR = 5.5  # loading peaks at ~4.9x the tensor bytes above the baseline (measured at 8 layers)
RUNTIME_FACTOR_PACKED = 1.6  # with the weights pre-packed for the fused kernel, loading maps the archive
LOAD_BAR = 1.3  # the bar for loading: peak RSS above start-up at most 1.3x the archive's bytes
RUNTIME_MARGIN = int(1.5e9)  # memory left to the machine's other jobs during the one-call check
RUNTIME_TIMEOUT_S = 1800
REL_TOL = 1e-2  # loose: MSD p=2 over many layers vs eager f32; a wrong build is at ~1


# ============================================================================= the model
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def random_int4_linear(n: int, k: int, g: torch.Generator) -> GroupQuantizedLinear:
    """A K→N int4 layer from random packed bytes: every byte is two valid 4-bit codes in [0, 15]."""
    qweight = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g)
    # Uniform codes in [0, 15] have std ≈ 4.61; zero points 7 or 8 keep the mean near 0, and the
    # scale ~ 1/(4.61·sqrt(K)) keeps each output ~ N(0, |x|²/K).
    scale = (torch.rand(n, k // GROUP, generator=g) * 0.5 + 0.75) / (4.61 * math.sqrt(k))
    zero = torch.randint(7, 9, (n, k // GROUP), dtype=torch.uint8, generator=g)
    return GroupQuantizedLinear(qweight, scale, zero, None, bits=4, group_size=GROUP, packing="pairs")


class Block(nn.Module):
    """A Llama-2 decoder block with the real projection shapes; attention simplified (see module doc).

    With one token and no KV cache, softmax attention over a single key is exactly ``v`` and would
    leave q and k dead (export drops them); a per-head ``sigmoid(q·k/sqrt(d))`` gate on ``v`` keeps all
    seven projections live at the cost of a few elementwise ops.
    """

    def __init__(self, hidden: int, intermediate: int, heads: int, g: torch.Generator) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm = RMSNorm(hidden)
        self.q_proj = random_int4_linear(hidden, hidden, g)
        self.k_proj = random_int4_linear(hidden, hidden, g)
        self.v_proj = random_int4_linear(hidden, hidden, g)
        self.o_proj = random_int4_linear(hidden, hidden, g)
        self.mlp_norm = RMSNorm(hidden)
        self.gate_proj = random_int4_linear(intermediate, hidden, g)
        self.up_proj = random_int4_linear(intermediate, hidden, g)
        self.down_proj = random_int4_linear(hidden, intermediate, g)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(h)
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        d = q.shape[-1] // self.heads
        score = (q * k).reshape(-1, self.heads, d).sum(-1, keepdim=True) * (1.0 / math.sqrt(d))
        attn = (torch.sigmoid(score) * v.reshape(-1, self.heads, d)).reshape(h.shape)
        h = h + self.o_proj(attn)
        x = self.mlp_norm(h)
        return h + self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaLike(nn.Module):
    def __init__(self, layers: int, hidden: int, intermediate: int, heads: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleList(Block(hidden, intermediate, heads, g) for _ in range(layers))
        self.norm = RMSNorm(hidden)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h)
        return self.norm(h)


def tensor_bytes(model: nn.Module) -> dict[str, int]:
    out = {"int4 packed weights": 0, "f32 group scales": 0, "uint8 zero points": 0, "f32 norm weights": 0}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        n = t.numel() * t.element_size()
        if name.endswith("qweight"):
            out["int4 packed weights"] += n
        elif name.endswith("weight_scale"):
            out["f32 group scales"] += n
        elif name.endswith("weight_zero_point"):
            out["uint8 zero points"] += n
        else:
            out["f32 norm weights"] += n
    return out


# ============================================================================= measurement
def proc_status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def try_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class ChildWatcher(threading.Thread):
    """Samples the peak RSS of this process's children (e.g. the ``iree-lld`` linker IREE spawns).

    ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is no use here: Linux charges a spawned child with the
    parent's RSS at the moment of its ``exec``, so it only repeats the parent's size.  Instead ``/proc``
    is scanned every few ms for descendants of this process, and the ``VmHWM`` of each one that has
    exec'd (its name differs from ours) is recorded; a process shorter-lived than the interval can be
    missed.  Scanning is on only during the IREE compile stages.
    """

    def __init__(self, interval: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.me = str(os.getpid())
        self.my_name = _status_fields(f"/proc/{self.me}/status").get("Name", "")
        self.peak = 0  # bytes, since the last take()
        self.names: set[str] = set()
        self._stop_event = threading.Event()
        self._scans = 0
        self.active = threading.Event()  # scan only during the stages that may spawn (IREE's phases)
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            if not self.active.is_set():
                self.active.wait(0.5)
                continue
            # Descendants are younger than this process: look only at higher pids, except now and then
            # (pid numbers wrap around).  That keeps a scan well under a millisecond.
            self._scans += 1
            full = self._scans % 200 == 0
            me = int(self.me)
            parents = {pid: _ppid(pid) for pid in os.listdir("/proc")
                       if pid.isdigit() and (full or int(pid) > me)}
            family = {self.me}
            grew = True
            while grew:  # descendants: IREE runs its linker through a shell
                new = {pid for pid, parent in parents.items() if parent in family} - family
                family |= new
                grew = bool(new)
            for pid in family - {self.me}:
                fields = _status_fields(f"/proc/{pid}/status")
                hwm = fields.get("VmHWM")
                if hwm and fields.get("Name", self.my_name) != self.my_name:
                    with self._lock:
                        self.peak = max(self.peak, int(hwm.split()[0]) * 1024)
                        self.names.add(fields["Name"])

    def take(self) -> int:
        with self._lock:
            peak, self.peak = self.peak, 0
        return peak

    def stop(self) -> None:
        self._stop_event.set()


def _ppid(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[1]
    except (OSError, IndexError):
        return ""


def _status_fields(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                out[key] = value.strip()
    except OSError:
        pass
    return out


@dataclass
class Row:
    name: str
    part: str  # "compile", "check" or "runtime"
    wall_s: float
    rss_before: int  # bytes
    rss_after: int
    stage_peak: int  # peak RSS during the stage (bytes); the lifetime peak when resets are unavailable
    running_peak: int  # process-lifetime peak after the stage
    peak_increase: int  # how much this stage raised the lifetime peak
    child_peak: int  # largest peak RSS of a child process (after its exec) seen during the stage
    note: str = ""


@dataclass
class Meter:
    rows: list[Row] = field(default_factory=list)
    can_reset: bool = False
    lifetime_peak: int = 0

    watcher: ChildWatcher | None = None

    def __post_init__(self) -> None:
        self.lifetime_peak = proc_status_kib("VmHWM") * 1024
        self.can_reset = try_reset_hwm()
        self.watcher = ChildWatcher()
        self.watcher.start()

    def _hwm(self) -> int:
        if self.can_reset:
            return proc_status_kib("VmHWM") * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    @contextmanager
    def stage(self, name: str, part: str = "compile", watch_children: bool = False) -> Iterator[Row]:
        self.lifetime_peak = max(self.lifetime_peak, self._hwm())  # the gap since the last stage
        if self.can_reset:
            try_reset_hwm()
        before = proc_status_kib("VmRSS") * 1024
        previous_peak = self.lifetime_peak
        print(f"[scale] {name} ...", file=sys.stderr, flush=True)
        row = Row(name, part, 0.0, before, 0, 0, 0, 0, 0)
        t0 = time.perf_counter()
        self.watcher.take()
        if watch_children:
            self.watcher.active.set()
        try:
            yield row
        finally:
            self.watcher.active.clear()
        row.wall_s = time.perf_counter() - t0
        row.stage_peak = self._hwm()
        self.lifetime_peak = max(self.lifetime_peak, row.stage_peak)
        row.rss_after = proc_status_kib("VmRSS") * 1024
        row.running_peak = self.lifetime_peak
        row.peak_increase = self.lifetime_peak - previous_peak
        row.child_peak = self.watcher.take()
        self.rows.append(row)
        print(f"[scale] {name}: {row.wall_s:.1f} s, stage peak {gb(row.stage_peak)} GB, "
              f"running peak {gb(row.running_peak)} GB, RSS now {gb(row.rss_after)} GB",
              file=sys.stderr, flush=True)

    def final_peak(self) -> int:
        self.lifetime_peak = max(self.lifetime_peak, self._hwm())
        return self.lifetime_peak


def gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


# ============================================================================= IR checks
DENSE_RE = re.compile(r"dense<")


@dataclass
class IrCheck:
    where: str
    text_bytes: int
    parameter_refs: int
    dense_literals: int
    largest_dense_chars: int
    dense_resources: int
    torch_ops: int  # occurrences of "torch." (the torch dialect) and "linalg." in the text
    linalg_ops: int

    @property
    def ok(self) -> bool:
        return (self.text_bytes < IR_LIMIT_BYTES and self.dense_resources == 0
                and self.largest_dense_chars <= DENSE_LIMIT_CHARS)


def check_ir(module: ir.Operation, where: str) -> IrCheck:
    """Print the module in full (no elided constants) and look for embedded weight data."""
    text = module.get_asm(large_elements_limit=None)
    largest = 0
    count = 0
    for m in DENSE_RE.finditer(text):
        count += 1
        end = text.find(">", m.end())
        largest = max(largest, (end if end >= 0 else len(text)) - m.start())
    return IrCheck(
        where=where,
        text_bytes=len(text.encode()),
        parameter_refs=text.count("#stream.parameter.named"),
        dense_literals=count,
        largest_dense_chars=largest,
        dense_resources=text.count("dense_resource<"),
        torch_ops=text.count("torch."),
        linalg_ops=text.count("linalg."),
    )


# ============================================================================= environment
def mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return math.nan


def pkg(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def load_avg() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def command_line() -> str:
    exe = Path(sys.executable)
    try:
        exe_s = str(exe.relative_to(REPO)) if exe.is_relative_to(REPO) else exe.name
    except ValueError:
        exe_s = exe.name
    script = Path(sys.argv[0]).resolve()
    script_s = str(script.relative_to(REPO)) if script.is_relative_to(REPO) else str(script)
    return shlex.join([exe_s, script_s, *sys.argv[1:]])


# ============================================================================= the run
@dataclass
class RunCheck:
    skipped: str = ""  # why the artifact was not loaded and called
    failed: str = ""  # the check process died or reported an error
    wall_s: float = math.nan  # the whole check process, start to exit
    load_s: float = math.nan
    first_call_s: float = math.nan
    second_call_s: float = math.nan
    rss_start: int = 0
    load_peak: int = 0
    rss_after_load: int = 0
    call_peak: int = 0
    rss_after_calls: int = 0
    finite: bool | None = None
    out_shape: tuple[int, ...] = ()
    out_absmax: float = math.nan
    ref_s: float = math.nan
    rel_err: float = math.nan
    mem_available: int = 0
    mem_estimate: int = 0


def run_artifact(workdir: Path) -> int:
    """The one-call check, in its own process: load the artifact, call it twice, print a JSON line.

    Its own process so that the compile's memory is gone, its RSS is its own, and an out-of-memory
    kill (it volunteers first, ``oom_score_adj`` 1000) cannot take the report with it.
    """
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    out: dict[str, object] = {}
    try_reset_hwm()
    out["rss_start"] = proc_status_kib("VmRSS") * 1024
    t0 = time.perf_counter()
    specs = [TensorSpec.from_json(d) for d in json.loads((workdir / "inputs.json").read_text())]
    module = Module.load(workdir / MODULE_FILE, workdir / PARAMETERS_FILE,
                         driver=resolve_target("llvm-cpu").driver, inputs=specs)
    out["load_s"] = time.perf_counter() - t0
    out["load_peak"] = proc_status_kib("VmHWM") * 1024
    out["rss_after_load"] = proc_status_kib("VmRSS") * 1024
    try_reset_hwm()
    x = np.load(workdir / "x.npy")
    t0 = time.perf_counter()
    y = module(x)
    out["first_call_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    y2 = module(x)
    out["second_call_s"] = time.perf_counter() - t0
    out["call_peak"] = proc_status_kib("VmHWM") * 1024
    out["rss_after_calls"] = proc_status_kib("VmRSS") * 1024
    out["finite"] = bool(np.isfinite(y).all() and np.isfinite(y2).all())
    out["out_shape"] = list(y.shape)
    out["out_absmax"] = float(np.abs(y).max())
    if (workdir / "ref.npy").exists():
        ref = np.load(workdir / "ref.npy")
        out["rel_err"] = float(np.abs(y.astype(np.float64) - ref).max() / np.abs(ref).max())
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--layers", type=int, default=LAYERS, help=f"decoder layers (default {LAYERS})")
    ap.add_argument("--hidden", type=int, default=HIDDEN, help=f"hidden size (default {HIDDEN})")
    ap.add_argument("--intermediate", type=int, default=INTERMEDIATE, help=f"MLP size (default {INTERMEDIATE})")
    ap.add_argument("--heads", type=int, default=HEADS, help=f"attention heads (default {HEADS})")
    ap.add_argument("--slices", type=int, default=2, help="MSD activation slices (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu-kernel", default="auto",
                    help="fused CPU kernel ISA (auto: the host's best; none: IREE's lowering of the int8 matmuls)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the .vmfb and .irpa go (a new temp dir under it; deleted at the end)")
    ap.add_argument("--output", type=Path, default=None,
                    help="markdown report (default: docs/scale.md for the full Llama-2-7B shape, else a temp file)")
    ap.add_argument("--skip-run", action="store_true", help="do not load and call the compiled artifact")
    ap.add_argument("--no-reference", action="store_true",
                    help="do not run the eager torch model (it dequantizes one layer at a time) for an error check")
    ap.add_argument("--run-artifact", type=Path, default=None, help=argparse.SUPPRESS)  # the check's process
    args = ap.parse_args(argv)
    if args.run_artifact is not None:
        return run_artifact(args.run_artifact)
    if args.hidden % GROUP or args.intermediate % GROUP or args.hidden % args.heads:
        ap.error(f"hidden and intermediate must be multiples of {GROUP}, hidden a multiple of heads")
    full_shape = (args.layers, args.hidden, args.intermediate, args.heads) == (LAYERS, HIDDEN, INTERMEDIATE, HEADS)
    output = args.output or (DEFAULT_OUTPUT if full_shape else
                             Path(tempfile.gettempdir()) / f"msd-scale-{args.layers}L.md")

    started = datetime.now(UTC)
    load_start = load_avg()
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    meter = Meter()
    tgt = resolve_target("llvm-cpu")
    isa = args.cpu_kernel if args.cpu_kernel != "auto" else (kernel_isas(tgt) or ("none",))[0]
    args.cpu_kernel = isa

    # --- the model: random packed int4 bytes, never a float weight -------------------------------
    with meter.stage("build model (random int4 bytes)"):
        model = LlamaLike(args.layers, args.hidden, args.intermediate, args.heads, args.seed).eval()
    sizes = tensor_bytes(model)
    weight_bytes = sum(sizes.values())
    n_linear = sum(isinstance(m, GroupQuantizedLinear) for m in model.modules())
    n_params = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, GroupQuantizedLinear))
    x = torch.randn(1, args.hidden, generator=torch.Generator().manual_seed(args.seed + 1))

    base = args.workdir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(base).free
    need = int(weight_bytes * 1.1) + 2**30
    if free < need:
        print(f"[scale] not enough disk at {base}: {free / 1e9:.1f} GB free, need ~{need / 1e9:.1f} GB",
              file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="msd-scale-", dir=base))
    print(f"[scale] {args.layers} layers, {n_linear} int4 linears, {weight_bytes / 1e9:.2f} GB of tensors; "
          f"workdir {workdir} ({free / 1e9:.0f} GB free)", file=sys.stderr, flush=True)

    ir_checks: list[IrCheck] = []
    run = RunCheck()
    archive_bytes = vmfb_bytes = 0
    try:
        # --- the compile, stage by stage, in driver.compile's order ---------------------------------
        with meter.stage("torch.export (msd.compiler.pipeline.importer.export)"):
            program = export(model, (x,))
        with meter.stage("frontends.normalize"):
            program = normalize(program)
        specs = input_specs(program)
        with meter.stage("IREE session (flags, dialects)"):
            session = IreeSession([*COMMON_FLAGS, *tgt.flags])
        with meter.stage("import (FX importer → torch MLIR, parameters)"):
            module, params = import_program(program, session.context)
        with meter.stage("IR check after import", "check"):
            ir_checks.append(check_ir(module, "after import (torch dialect)"))
        with meter.stage("IREE start→input (torch → linalg)", watch_children=True):
            session.load(module)
            session.run_phases("start", "input")
        report = Report(DECOMPOSE)
        packer = None
        with meter.stage(f"msd pass (slices={args.slices}, cpu_kernel={isa}) + canonicalize, cse"):
            if args.slices:
                with session.context, ir.Location.unknown():
                    report = run_pass(module, DECOMPOSE, slices=args.slices, act_scale="group", cpu_kernel=isa)
                    passmanager.PassManager.parse(POST_MSD_PIPELINE).run(module)
        with meter.stage("msd prepack pass + split off the weight packer"):
            with session.context, ir.Location.unknown():
                run_pass(module, PREPACK)
                packer_module, calls = split(module)
                keys = parameter_keys(module)
        if packer_module is not None:
            with meter.stage("weight packer compile (host CPU)", watch_children=True):
                packer = {"vmfb": compile_packer(packer_module, list(tgt.flags)), "calls": calls}
                del packer_module
        with meter.stage("IR check after msd pass", "check"):
            ir_checks.append(check_ir(module, "after the msd pass (linalg)"))
        with meter.stage("IREE input→end (codegen, llvm-cpu)", watch_children=True):
            session.run_phases("input", "end")
        with meter.stage("VM bytecode (vm_bytecode)", watch_children=True):
            vmfb = session.vm_bytecode()
        with meter.stage("weights packed + parameter archive write (.irpa)" if packer else
                         "parameter archive write (.irpa)"):
            write_parameters(workdir / PARAMETERS_FILE, params.tensors, keys, packer)
            (workdir / MODULE_FILE).write_bytes(vmfb)
        archive_bytes = (workdir / PARAMETERS_FILE).stat().st_size
        vmfb_bytes = len(vmfb)
        compile_peak = meter.final_peak()

        # --- the one-call check -------------------------------------------------------------------
        if args.skip_run:
            run.skipped = "skipped (--skip-run)"
        else:
            np.save(workdir / "x.npy", x.numpy())
            (workdir / "inputs.json").write_text(json.dumps([spec.to_json() for spec in specs]))
            if not args.no_reference:
                with meter.stage("eager torch reference (dequantizes one layer at a time)", "check"):
                    with torch.no_grad():
                        np.save(workdir / "ref.npy", model(x).to(torch.float64).numpy())
                run.ref_s = meter.rows[-1].wall_s
            with meter.stage("free the compile (model, program, session)", "check"):
                del module, params, session, program, model, vmfb, packer
                gc.collect()
            run.mem_available = mem_available()
            factor = RUNTIME_FACTOR_PACKED if args.cpu_kernel != "none" else RUNTIME_FACTOR
            run.mem_estimate = int(factor * weight_bytes) + 2**30
            if run.mem_estimate > run.mem_available - RUNTIME_MARGIN:
                run.skipped = (f"skipped: loading needs about {gb(run.mem_estimate)} GB ({factor}× the "
                               f"tensor bytes + 1 GiB, from smaller runs), and only {gb(run.mem_available)} GB is "
                               f"available (keeping {gb(RUNTIME_MARGIN)} GB for the machine's other jobs)")
            else:
                print(f"[scale] one-call check in a separate process (MemAvailable {gb(run.mem_available)} GB) ...",
                      file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                cmd = [sys.executable, str(Path(__file__).resolve()), "--run-artifact", str(workdir)]
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUNTIME_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc = None
                run.wall_s = time.perf_counter() - t0
                result = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")] if proc else []
                if proc is None:
                    run.failed = f"the check process did not finish in {RUNTIME_TIMEOUT_S} s and was killed"
                elif proc.returncode != 0 or not result:
                    why = (f"killed by signal {-proc.returncode} (SIGKILL: likely out of memory)"
                           if proc.returncode < 0 else f"exit status {proc.returncode}")
                    run.failed = f"the check process failed: {why}; stderr tail: {proc.stderr[-800:]!r}"
                else:
                    data = json.loads(result[-1][len("RESULT "):])
                    data["out_shape"] = tuple(data["out_shape"])
                    for key, value in data.items():
                        setattr(run, key, value)
                print(f"[scale] one-call check: {run.failed or 'done'} ({run.wall_s:.1f} s)",
                      file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    lifetime_peak = meter.final_peak()

    text = render(args, meter, ir_checks, report, run, sizes, n_linear, n_params, compile_peak, lifetime_peak,
                  archive_bytes, vmfb_bytes, started, load_start, time.perf_counter() - t_start, workdir)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(text)
    print(f"[scale] wrote {output}", file=sys.stderr)
    bar_ok = compile_peak < BAR_BYTES
    rewritten_ok = len(report.rewritten) == n_linear
    run_ok = run.finite is not False and not run.failed
    return 0 if bar_ok and rewritten_ok and all(c.ok for c in ir_checks) and run_ok else 1


# ============================================================================= the report
def render(args, meter: Meter, ir_checks: list[IrCheck], report: Report, run: RunCheck, sizes: dict[str, int],
           n_linear: int, n_params: int, compile_peak: int, lifetime_peak: int, archive_bytes: int,
           vmfb_bytes: int, started: datetime, load_start: str, total_s: float, workdir: Path) -> str:
    compile_rows = [r for r in meter.rows if r.part == "compile"]
    compile_s = sum(r.wall_s for r in compile_rows)
    compile_no_build_s = sum(r.wall_s for r in compile_rows[1:])
    child_peak = max((r.child_peak for r in meter.rows), default=0)
    export_rise = sum(r.peak_increase for r in compile_rows if r.name.startswith("torch.export"))
    ir_rise = sum(r.peak_increase for r in compile_rows[1:] if not r.name.startswith("torch.export"))
    bar_ok = compile_peak < BAR_BYTES
    rewritten_ok = len(report.rewritten) == n_linear
    weight_bytes = sum(sizes.values())
    peak_note = ("per-stage peak from `VmHWM` after resetting it (`/proc/self/clear_refs` = 5) at the stage's start"
                 if meter.can_reset else
                 "`/proc/self/clear_refs` was not writable: \"stage peak\" is `ru_maxrss`, the lifetime peak so far")

    lines = [
        "# Scale check: a Llama-2-7B-shaped int4 model through msd (llvm-cpu)",
        "",
        "Produced by `benchmarks/scale.py` (the file is rewritten on every run).",
        "",
        f"- Command: `{command_line()}` (from the repository root)",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; total run time {total_s:.0f} s",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), "
        f"{mem_total_gib():.1f} GiB RAM, Linux {platform.release()}",
        f"- Software: Python {platform.python_version()}, torch {torch.__version__}, "
        f"iree-base-compiler {pkg('iree-base-compiler')}, iree-base-runtime {pkg('iree-base-runtime')}, "
        f"msd {pkg('msd')}",
        f"- Load average (1/5/15 min) at start: {load_start}; at end: {load_avg()}",
        "",
        "## Model",
        "",
        f"- {args.layers} decoder layers, hidden {args.hidden}, MLP {args.intermediate}, {args.heads} heads; "
        f"input `x` f32 `[1, {args.hidden}]` (one decode token).",
        f"- {n_linear} `GroupQuantizedLinear` layers (7 per layer: q, k, v, o {args.hidden}→{args.hidden}; "
        f"gate, up {args.hidden}→{args.intermediate}; down {args.intermediate}→{args.hidden}), "
        f"{n_params / 1e9:.2f} G weights, built directly from random packed bytes (`torch.randint` into uint8 "
        f"`[N, K/2]`, two 4-bit codes per byte, pairs order), f32 scale and uint8 zero point per group of "
        f"{GROUP} along K. No float weight matrix is created while building or compiling "
        "(`torch.export` traces with fake tensors; the importer turns every tensor into a named parameter).",
        "- Tensors held by the model: " + ", ".join(f"{k} {v / 1e9:.3f} GB" for k, v in sizes.items())
        + f" — {weight_bytes / 1e9:.2f} GB in all.",
        "- Each block: RMSNorm → q, k, v → per-head `sigmoid(q·k / sqrt(d)) · v` → o → residual → RMSNorm → "
        "`down(silu(gate(x)) · up(x))` → residual; a final RMSNorm.",
        "- **Simplified, on purpose:** no softmax attention, no KV cache, no rotary embedding, no token "
        "embedding or lm_head (Llama-2-7B's 2 × 32000×4096 tables). With one token and no cache, softmax "
        "attention is exactly `v` and q, k would be dead code, so a per-head sigmoid gate keeps all seven "
        "projections live. The matmul shapes and counts are Llama-2-7B's.",
        "",
        "## Stages",
        "",
        f"The compile runs `msd.compiler.pipeline.driver.compile`'s sequence one step at a time (target `llvm-cpu`, "
        f"host CPU, data tiling; `slices={args.slices}`, `cpu_kernel={args.cpu_kernel}`). "
        f"RSS in GB (10^9 bytes); {peak_note}. "
        "\"Running peak\" is the process-lifetime peak after the stage; \"+peak\" how much the stage raised it. "
        "Rows marked *check* are not part of the compile; the one-call check runs in its own process (below).",
        "",
        "| stage | part | wall s | RSS before | RSS after | stage peak | running peak | +peak |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in meter.rows:
        part = r.part if r.part == "compile" else f"*{r.part}*"
        lines.append(f"| {r.name} | {part} | {r.wall_s:.1f} | {gb(r.rss_before)} | {gb(r.rss_after)} | "
                     f"{gb(r.stage_peak)} | {gb(r.running_peak)} | {gb(r.peak_increase)} |")
    lines += [
        "",
        "## Totals",
        "",
        f"- Compile wall time: **{compile_no_build_s:.1f} s** from `torch.export` to the written archive "
        f"({compile_s:.1f} s including building the model).",
        f"- Peak RSS of the compile (model build through archive write): **{gb(compile_peak)} GB** "
        f"({compile_peak / 2**30:.2f} GiB).",
        f"- Peak RSS of this process including the checks after the compile (eager reference): "
        f"{gb(lifetime_peak)} GB; the one-call check runs in its own process (below).",
        f"- Processes the compile spawned ({', '.join(sorted(meter.watcher.names)) or 'none seen'}; sampled from "
        f"`/proc` every {meter.watcher.interval * 1e3:.0f} ms during IREE's stages, not counted in the process "
        f"RSS above): largest peak RSS {gb(child_peak)} GB.",
        f"- No float weight was materialized: `torch.export` raised the peak by {gb(export_rise)} GB, while one "
        f"dequantized f32 {args.intermediate}×{args.hidden} weight alone is "
        f"{gb(4 * args.intermediate * args.hidden)} GB and all of them {gb(4 * n_params)} GB; every later compile "
        f"stage together raised it by {gb(ir_rise)} GB.",
        f"- Artifact: `module.vmfb` {vmfb_bytes / 1e6:.2f} MB, `model.irpa` {archive_bytes / 1e9:.2f} GB "
        f"(written to `{workdir.parent}`, deleted at the end).",
        "",
        "## The bar: compile peak RSS < 8 GB",
        "",
        f"- Compile peak RSS {gb(compile_peak)} GB vs 8 GB: **{'holds' if bar_ok else 'FAILS'}**"
        f" (headroom {gb(BAR_BYTES - compile_peak)} GB)."
        + (f" Adding the largest child process's peak on top (conservatively, as if simultaneous): "
           f"{gb(compile_peak + child_peak)} GB — "
           f"{'still under' if compile_peak + child_peak < BAR_BYTES else 'over'} 8 GB." if child_peak else ""),
        f"- Compile wall time: {compile_no_build_s:.1f} s ({compile_no_build_s / 60:.1f} min).",
        "",
        "## IR checks: weights are parameters only",
        "",
        "The module printed in full (`get_asm(large_elements_limit=None)`: nothing elided), then searched for "
        f"embedded data. Pass: text < {IR_LIMIT_BYTES / 1e6:.0f} MB, no `dense_resource<…>` blob, no `dense<…>` "
        f"literal longer than {DENSE_LIMIT_CHARS} characters.",
        "",
        "| IR | text size (bytes) | `torch.` / `linalg.` mentions | `#stream.parameter.named` refs "
        "| `dense<…>` literals | largest literal (chars) | `dense_resource` | verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for c in ir_checks:
        lines.append(f"| {c.where} | {c.text_bytes:,} | {c.torch_ops} / {c.linalg_ops} | {c.parameter_refs} | "
                     f"{c.dense_literals} | "
                     f"{c.largest_dense_chars} | {c.dense_resources} | {'ok' if c.ok else 'FAILS'} |")
    skipped = report.skipped
    lines += [
        "",
        "## Matmuls rewritten by the msd pass",
        "",
        f"- `--{DECOMPOSE}`: **{len(report.rewritten)} of {n_linear}** int4 linear layers rewritten "
        f"({len(skipped)} candidate(s) skipped) — {'all' if rewritten_ok else 'NOT all'} rewritten.",
    ]
    reasons: dict[str, int] = {}
    for d in report.rewritten:
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        lines.append(f"  - {n} × {reason}")
    for d in skipped[:10]:
        lines.append(f"  - skipped: {d.op} at {d.location}: {d.reason}")
    lines += ["", "## One call of the compiled artifact", ""]
    if not math.isnan(run.ref_s):
        lines.append(f"- Eager torch reference computed after the compile (f32; `GroupQuantizedLinear.forward` "
                     f"dequantizes one layer's weight at a time): {run.ref_s:.1f} s.")
    if run.skipped:
        lines.append(f"- Loading and calling the artifact: {run.skipped}.")
    elif run.failed:
        lines.append(f"- Loading and calling the artifact: **{run.failed}** (MemAvailable before it: "
                     f"{gb(run.mem_available)} GB; {run.wall_s:.1f} s).")
    else:
        check_peak = max(run.load_peak, run.call_peak)
        load_what = ("maps the archive; the kernels' weights were packed at compile time" if args.cpu_kernel != "none"
                     else "maps the archive, runs the initializers that relayout the weights")
        load_ratio = (check_peak - run.rss_start) / max(archive_bytes, 1)
        lines += [
            "- After the compile the torch model, exported program and compiler session are released; a separate "
            "process (so its RSS is its own and an out-of-memory kill would hit only it) loads the artifact with "
            "`msd.runtime.Module.load(module.vmfb, model.irpa)` (local-task driver) and calls it twice with the "
            f"same `x`. MemAvailable before it started: {gb(run.mem_available)} GB.",
            "",
            "| step | wall s | RSS before (GB) | peak RSS (GB) | RSS after (GB) |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| `Module.load` ({load_what}) | {run.load_s:.1f} "
            f"| {gb(run.rss_start)} | {gb(run.load_peak)} | {gb(run.rss_after_load)} |",
            f"| first call | {run.first_call_s:.3f} | {gb(run.rss_after_load)} | {gb(run.call_peak)} | "
            f"{gb(run.rss_after_calls)} |",
            f"| second call | {run.second_call_s:.3f} | | (with the first) | {gb(run.rss_after_calls)} |",
            "",
            f"- Peak RSS of the check process: {gb(check_peak)} GB, {gb(check_peak - run.rss_start)} GB above its "
            f"start-up RSS (Python + torch imports) = {(check_peak - run.rss_start) / max(weight_bytes, 1):.1f}× the "
            f"{gb(weight_bytes)} GB of tensors (the mapped archive's pages count in RSS); the whole process took "
            f"{run.wall_s:.1f} s including start-up.",
            f"- **The load bar:** peak RSS above start-up {gb(check_peak - run.rss_start)} GB = {load_ratio:.2f}× the "
            f"{gb(archive_bytes)} GB stored in `model.irpa` (≤ {LOAD_BAR}×: "
            f"**{'holds' if load_ratio <= LOAD_BAR else 'FAILS'}**).",
            f"- Output shape {list(run.out_shape)}, max |y| {run.out_absmax:.3g}, all finite: "
            f"**{'yes' if run.finite else 'NO'}**.",
        ]
        if not math.isnan(run.rel_err):
            verdict = "ok" if run.rel_err < REL_TOL else "FAILS"
            lines.append(f"- Against the eager torch model: max |y − ref| / max |ref| = {run.rel_err:.2e} "
                         f"({verdict}, tolerance {REL_TOL:g}).")
        else:
            lines.append("- No eager reference (`--no-reference`).")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
