"""The ``msd`` command: compile models, and run, inspect or time saved artifacts.

    msd compile my_models:build -o out/ [--target llvm-cpu] [--slices 2]
    msd compile model.gguf -o llm/ [--max-ctx 2048] [--batch 4]
    msd run out/ --input x.npy [--output y.npy]
    msd inspect out/
    msd bench out/ [--shape 1x4096] [--reps 50]
    msd generate model.gguf "prompt" [--max-new-tokens 64] [--slices 2] [--max-ctx 512]
    msd generate llm/ "prompt"             # a compiled .gguf artifact: no torch, no compiler
    msd generate llm/ "one" "two" "three"  # several prompts, decoded together (compiled with --batch)

``compile`` takes a Python entry point ``module:function`` that returns ``(model, example_inputs)``
or ``(model, example_inputs, dynamic_shapes)``.  ``run``, ``inspect`` and ``bench`` need only the
runtime (no torch, no compiler).  Every command takes ``--json`` for scripts and exits non-zero
with a one-line reason on failure: 1 for a failure, 2 for arguments refused when parsed, 130 after
Ctrl-C (``msd <command>: interrupted``; an interrupted compile leaves no output folder behind).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import signal
import statistics
import sys
import time
import traceback
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from msd.cost.model import fmt_time


class CliError(Exception):
    """A failure the user can act on: printed as one line, exit status 1."""


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.json:
        print(text, file=sys.stderr, flush=True)


MANIFEST = "msd.json"  # msd.runtime.artifact.MANIFEST_FILE (not imported: the parser needs no runtime)


# ----------------------------------------------------------------------------- argument types
def _int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=``: an integer in ``low..high`` (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            wanted = f"at least {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {value}")
        return value

    return parse


def _shape(text: str) -> tuple[int, ...]:
    """An argparse ``type=``: a shape such as ``16x4096`` (every dimension at least 1)."""
    parts = text.lower().split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape such as 16x4096") from None
    if any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"{text!r}: every dimension must be at least 1")
    return dims


class _Parser(argparse.ArgumentParser):
    """argparse, with a refused argument reported on one line (exit status 2) instead of usage + error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ----------------------------------------------------------------------------- compile
def _progress(args: argparse.Namespace, start: float) -> Callable[[str], None]:
    def progress(stage: str) -> None:
        _say(args, f"[{time.perf_counter() - start:6.1f}s] {stage}…")

    return progress


def _compile_gguf(args: argparse.Namespace) -> dict:
    """``msd compile model.gguf -o DIR``: prefill + decode, the tokenizer and the generation settings
    in one artifact that ``msd generate DIR`` (or ``msd.runtime.generate``) runs without torch."""
    from msd.compiler.llm.generate import DEFAULT_MAX_CTX, compile_generator

    start = time.perf_counter()
    max_ctx = args.max_ctx or DEFAULT_MAX_CTX
    gen = compile_generator(args.entry, slices=args.slices, max_ctx=max_ctx, target=args.target,
                            progress=_progress(args, start), kv_cache=args.kv_cache, batch=args.batch or 1)
    folder = gen.save(args.output)
    report = gen.compiled.report
    _say(args, f"[{time.perf_counter() - start:6.1f}s] saved {folder} (run it: msd generate {folder} \"prompt\")")
    _say(args, report.format())
    return {"artifact": str(folder), "seconds": round(time.perf_counter() - start, 3),
            "rewritten": len(report.rewritten), "skipped": len(report.skipped), "max_ctx": max_ctx,
            "batch": gen.slots}


def _check_output(out: str) -> None:
    """Refuse ``-o OUT`` before the compile when the artifact could not be written there, or would
    clobber a folder that is not an msd artifact."""
    path = Path(out)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise CliError(f"-o {out}: exists and is not a folder")
        if (path / MANIFEST).is_file():  # an msd artifact: overwritten
            pass
        elif any(path.iterdir()):
            raise CliError(f"-o {out}: a folder with other files in it and no {MANIFEST} (not an msd artifact);"
                           " msd writes into a new or empty folder, or over an earlier artifact")
        if not os.access(path, os.W_OK | os.X_OK):
            raise CliError(f"-o {out}: the folder is not writable")
        return
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CliError(f"-o {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"-o {out}: cannot create it, {parent} is not writable")


def _check_target(target: str) -> None:
    from msd.compiler.pipeline.targets import resolve  # needs the compiler, not torch

    resolve(target)  # TargetError names what is wrong


@contextlib.contextmanager
def _removed_if_unfinished(out: str) -> Iterator[None]:
    """Remove the output folder when the command does not finish (Ctrl-C, a failure while saving) and
    the folder did not exist before it: no partial artifact is left behind."""
    path = Path(out)
    existed = path.exists()
    try:
        yield
    except BaseException:
        if not existed and path.is_dir():
            previous = _ignore_sigint()
            try:
                shutil.rmtree(path, ignore_errors=True)
            finally:
                _restore_sigint(previous)
        raise


def _ignore_sigint():
    try:
        return signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        return None


def _restore_sigint(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


def _load_entry(entry: str) -> tuple:
    """Import ``module:function`` from the current folder and call it."""
    module_name, _, func_name = entry.partition(":")
    if not module_name or not func_name:
        raise CliError(f"entry point {entry!r} must be 'module:function'")
    sys.path.insert(0, str(Path.cwd()))
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as e:
        raise CliError(f"cannot load entry point {entry!r}: {e}") from None
    except Exception as e:  # an error in the module itself (a syntax error, a failing top-level statement)
        raise CliError(f"cannot load entry point {entry!r}: {_raised(e)}") from None
    if not callable(func):
        raise CliError(f"entry point {entry!r} is not a function (it is a {type(func).__name__})")
    try:
        return func()
    except Exception as e:
        raise CliError(f"entry point {entry!r} raised {_raised(e)}") from None


def _raised(e: BaseException) -> str:
    """``Type: message (at file:line)``, the line being the innermost frame of the traceback."""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    if isinstance(e, SyntaxError) and e.filename:
        where = f" (at {e.filename}:{e.lineno})"
        return f"SyntaxError: {e.msg}{where}"
    return f"{type(e).__name__}: {e}{where}"


def cmd_compile(args: argparse.Namespace) -> dict:
    # everything that can be checked is checked before the long work
    gguf = args.entry.endswith(".gguf")
    if gguf and not Path(args.entry).is_file():
        raise CliError(f"no such GGUF file: {args.entry}")
    if not gguf and (args.max_ctx is not None or args.kv_cache is not None or args.batch is not None):
        raise CliError("--max-ctx, --kv-cache and --batch apply to .gguf models only")
    _check_output(args.output)
    _check_target(args.target)
    with _removed_if_unfinished(args.output):
        if gguf:
            args.kv_cache = args.kv_cache or "float"
            return _compile_gguf(args)
        return _compile_entry(args)


def _compile_entry(args: argparse.Namespace) -> dict:
    from msd.compiler.pipeline.options import CompileOptions

    # the option pairings msd.compile refuses (--hardware without --decide cost, …), before the entry point runs
    options = CompileOptions.from_kwargs(_compile_options(args))
    options.cost_target(args.target)
    built = _load_entry(args.entry)
    if not isinstance(built, tuple) or len(built) not in (2, 3):
        got = type(built).__name__
        raise CliError(f"{args.entry} must return (model, example_inputs[, dynamic_shapes]), got {got}")
    model, inputs, *dynamic = built
    import msd

    start = time.perf_counter()
    cm = msd.compile(model, inputs, target=args.target, dynamic_shapes=dynamic[0] if dynamic else None,
                     progress=_progress(args, start), **_compile_options(args))
    folder = cm.save(args.output)
    _say(args, f"[{time.perf_counter() - start:6.1f}s] saved {folder}")
    _say(args, cm.report.format())
    return {"artifact": str(folder), "seconds": round(time.perf_counter() - start, 3),
            "rewritten": len(cm.report.rewritten), "skipped": len(cm.report.skipped)}


# ----------------------------------------------------------------------------- run / inspect / bench
def _load(args: argparse.Namespace):
    import msd.runtime

    return msd.runtime.load(args.artifact, device=args.device)


def _function(art, name: str | None):
    if name is None:
        if len(art.functions) != 1:
            raise CliError(f"the artifact has several functions ({', '.join(art.functions)}): pick one with --function")
        return next(iter(art.functions.values()))
    if name not in art.functions:
        raise CliError(f"no function {name!r} (the artifact has: {', '.join(art.functions)})")
    return art.functions[name]


def cmd_run(args: argparse.Namespace) -> dict:
    fn = _function(_load(args), args.function)
    if len(args.input) != len(fn.inputs):
        raise CliError(f"{fn.signature} takes {len(fn.inputs)} input(s), got {len(args.input)} --input file(s)")
    if args.output and len(args.output) != len(fn.outputs):
        raise CliError(f"{fn.signature} has {len(fn.outputs)} output(s), got {len(args.output)} --output path(s)")
    for path in args.output:
        if not Path(path).absolute().parent.is_dir():
            raise CliError(f"--output {path}: the folder {Path(path).absolute().parent} does not exist")
    inputs = []
    for path in args.input:
        try:
            inputs.append(np.load(path))
        except OSError as e:
            raise CliError(f"cannot read --input {path}: {e.strerror or e}") from None
        except ValueError as e:
            raise CliError(f"cannot read --input {path} as a .npy array: {e}") from None
        if not isinstance(inputs[-1], np.ndarray):  # an .npz archive
            raise CliError(f"--input {path} is not a single .npy array")
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    if args.output:
        if len(args.output) != len(outs):
            raise CliError(f"{len(outs)} output(s) but {len(args.output)} --output path(s)")
        for path, o in zip(args.output, outs):
            np.save(path, o)
    for i, o in enumerate(outs):
        _say(args, f"output {i}: {o.dtype}{list(o.shape)}  min {o.min():.4g}  max {o.max():.4g}")
    return {"outputs": [{"dtype": str(o.dtype), "shape": list(o.shape)} for o in outs]}


def cmd_inspect(args: argparse.Namespace) -> dict:
    art = _load(args)
    m = art.manifest
    if not args.json:
        t = m["target"]
        print(f"artifact {art.folder}: msd {m['msd_version']}, IREE {m['iree_version']}, target {t['name']}"
              f" (driver {t['driver']}), slices={m['slices']}")
        for fn in art.functions.values():
            print(f"  {fn.signature}")
        for name, f in m["files"].items():
            print(f"  {name}: {f['bytes']} bytes, sha256 {f['sha256'][:16]}…")
        decide = m.get("decide") or {}
        if any(d.get("hardware") for d in m["decisions"]):
            bits = f", min_bits={decide['min_bits']}" if decide.get("min_bits") else ""
            print(f"  decisions by the cost model for {decide.get('hardware')}{bits} (predicted times):")
            for line in _decision_table(m["decisions"]):
                print(f"    {line}")
        for i, d in enumerate(m["decisions"], 1):
            verdict = "rewritten" if d["rewritten"] else "skipped"
            print(f"  [{i}] {verdict}: {d['op']} at {d['location']}: {d['reason']}")
    return m


def _decision_table(decisions: list[dict]) -> list[str]:
    """One row per matmul: shape, format, decision, slices, predicted baseline and MSD times."""
    head = ["#", "op", "shape", "format", "decision", "slices", "baseline", "MSD", "MSD speedup"]
    rows = []
    for i, d in enumerate(decisions, 1):
        base, msd_s = d.get("baseline_s"), d.get("msd_s")
        speedup = f"{base / msd_s:.2f}x" if base and msd_s else "-"
        rows.append([str(i), d["op"], d.get("shape") or "-", d.get("format") or "-",
                     "rewrite" if d["rewritten"] else "keep baseline", str(d.get("slices") or "-"),
                     *("-" if t is None else fmt_time(t) for t in (base, msd_s)), speedup])
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [head, *rows]]


def _shape_for(spec, override: tuple[int, ...] | None) -> tuple[int, ...]:
    if override:
        return override
    dims = spec.dims or (None,) * len(spec.shape)
    return tuple(s if s is not None else max(1, (d[1] if d else 1)) for s, d in zip(spec.shape, dims))


def cmd_bench(args: argparse.Namespace) -> dict:
    from msd.runtime.module import DTYPES

    fn = _function(_load(args), args.function)
    rng = np.random.default_rng(0)
    shapes = args.shape or [None] * len(fn.inputs)
    if len(shapes) != len(fn.inputs):
        raise CliError(f"{len(fn.inputs)} input(s) but {len(shapes)} --shape value(s)")
    inputs = [rng.standard_normal(_shape_for(s, o)).astype(DTYPES[s.dtype]) for s, o in zip(fn.inputs, shapes)]
    for _ in range(3):
        fn(*inputs)
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        fn(*inputs)
        times.append(time.perf_counter() - t0)
    result = {"function": fn.name, "shapes": [list(a.shape) for a in inputs], "reps": args.reps,
              "median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times)}
    _say(args, f"{fn.name}{result['shapes']}: median {result['median_ms']:.3f} ms, min {result['min_ms']:.3f} ms"
               f" over {args.reps} calls")
    return result


# ----------------------------------------------------------------------------- generate
def cmd_generate(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    fixed = [f"--{name.replace('_', '-')}" for name in ("slices", "max_ctx", "kv_cache", "batch")
             if getattr(args, name) is not None]
    if Path(args.gguf).is_dir() and fixed:
        raise CliError(f"{args.gguf} is a compiled artifact{_baked(Path(args.gguf))}: {', '.join(fixed)} "
                       f"{'is' if len(fixed) == 1 else 'are'} fixed when compiling (msd compile model.gguf -o DIR"
                       " --slices N --max-ctx N --kv-cache float|int8 --batch N)")
    if Path(args.gguf).is_file() and args.device is not None:
        raise CliError("--device applies to artifact folders (a .gguf file is compiled for and run on this CPU)")
    args.slices = 2 if args.slices is None else args.slices
    args.kv_cache = args.kv_cache or "float"
    if Path(args.gguf).is_dir():  # a saved artifact: torch-free
        from msd.runtime.generate import TextGenerator

        gen = TextGenerator.load(args.gguf, args.device)
        _say(args, f"[{time.perf_counter() - start:6.1f}s] loaded {args.gguf}")
        slices = gen.artifact.manifest.get("slices")
    elif Path(args.gguf).is_file():
        from msd.compiler.llm.generate import compile_generator

        ctx = {"max_ctx": args.max_ctx} if args.max_ctx else {}  # default: compile_generator's (2048)
        batch = args.batch if args.batch is not None else min(len(args.prompt), 8) if len(args.prompt) > 1 else 1
        gen = compile_generator(args.gguf, slices=args.slices, progress=_progress(args, start), kv_cache=args.kv_cache,
                                batch=batch, **ctx)
        _say(args, f"[{time.perf_counter() - start:6.1f}s] compiled prefill + decode")
        slices = args.slices
    else:
        raise CliError(f"no such GGUF file or artifact folder: {args.gguf}")

    def stream(piece: str) -> None:
        if not args.json:
            print(piece, end="", flush=True)

    if len(args.prompt) > 1:
        texts = gen.generate_batch(args.prompt, args.max_new_tokens, chat=not args.no_chat)
        if not args.json:
            for i, text in enumerate(texts):
                print(f"[{i + 1}] {text}")
        st = gen.last_stats
        _say(args, f"{len(texts)} prompts, {gen.slots} decoded together: prefill {st.prefill_tokens} tokens at"
                   f" {st.prefill_tok_s:.1f} tok/s, decode {st.decode_tokens} tokens at {st.decode_tok_s:.1f} tok/s"
                   f" (slices={slices})")
        return {"texts": texts, "batch": gen.slots, "prefill_tokens": st.prefill_tokens, "prefill_s": st.prefill_s,
                "decode_tokens": st.decode_tokens, "decode_s": st.decode_s, "slices": slices}
    text = gen.generate(args.prompt[0], args.max_new_tokens, chat=not args.no_chat, callback=stream)
    if not args.json:
        print()
    st = gen.last_stats
    _say(args, f"prefill {st.prefill_tokens} tokens at {st.prefill_tokens / max(st.prefill_s, 1e-9):.1f} tok/s,"
               f" decode {st.decode_tokens} tokens at {st.decode_tok_s:.1f} tok/s (slices={slices})")
    return {"text": text, "prefill_tokens": st.prefill_tokens, "prefill_s": st.prefill_s,
            "decode_tokens": st.decode_tokens, "decode_s": st.decode_s, "slices": slices}


def _baked(folder: Path) -> str:
    """`` (slices=2, max_ctx=2048, kv_cache=float)``: the settings an artifact was compiled with ("" if unreadable)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        settings = manifest.get("metadata", {}).get("generation", {})
        baked = {"slices": manifest.get("slices"), "max_ctx": settings.get("max_ctx"),
                 "kv_cache": settings.get("kv_cache"), "batch": settings.get("batch")}
    except (OSError, ValueError, AttributeError):
        return ""
    shown = ", ".join(f"{k}={v}" for k, v in baked.items() if v is not None)
    return f" ({shown})" if shown else ""


# ----------------------------------------------------------------------------- main
def _add_compile_options(c: argparse.ArgumentParser) -> None:
    """One flag per field of msd.compile's options (``CompileOptions``): name, default, allowed values and
    help come from the dataclass, not from here."""
    from msd.compiler.pipeline.options import CompileOptions

    for spec in CompileOptions.specs():
        flag = f"--{spec.cli}"
        if spec.type is int and spec.choices:  # a range of integers (--slices): one message for out-of-range
            c.add_argument(flag, type=_int_range(min(spec.choices), max(spec.choices)), default=spec.default,
                           help=spec.help)
        elif spec.choices:
            c.add_argument(flag, default=spec.default, choices=spec.choices, help=spec.help)
        elif int in typing.get_args(spec.type) or spec.type is int:
            c.add_argument(flag, type=_int_range(1), default=spec.default, help=spec.help)
        else:
            c.add_argument(flag, default=spec.default, help=spec.help)


def _compile_options(args: argparse.Namespace) -> dict[str, Any]:
    from msd.compiler.pipeline.options import CompileOptions

    return {spec.name: getattr(args, spec.name) for spec in CompileOptions.specs()}


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="msd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="compile a model (Python entry point or .gguf file) into an artifact folder")
    c.add_argument("entry", help="module:function returning (model, example_inputs[, dynamic_shapes]), or a .gguf"
                                 " Llama file (prefill + decode + tokenizer; run it with 'msd generate DIR')")
    c.add_argument("-o", "--output", required=True, help="artifact folder to write")
    c.add_argument("--target", default="llvm-cpu", help="llvm-cpu[:cpu] | cuda[:sm_XX] | rocm[:gfxXXX] | vulkan-spirv")
    _add_compile_options(c)
    c.add_argument("--max-ctx", type=_int_range(3), default=None,
                   help=".gguf only: KV-cache capacity in tokens, prompt + new (default 2048); decode cost follows the"
                        " text, not this")
    c.add_argument("--kv-cache", default=None, choices=("float", "f16", "int8"),
                   help=".gguf only: KV cache in f32 (default), f16 (half the bytes), or int8 with a scale per head"
                        " and token (MSD attention)")
    c.add_argument("--batch", type=_int_range(1, 1024), default=None,
                   help=".gguf only: also compile a decode step of N sequences at once (default 1: none); 'msd"
                        " generate DIR p1 p2 ...' then decodes up to N prompts together")
    c.set_defaults(func=cmd_compile)

    for name, func, text in (("run", cmd_run, "run an artifact on .npy inputs"),
                             ("inspect", cmd_inspect, "show an artifact's manifest: signature, decisions, files"),
                             ("bench", cmd_bench, "time an artifact on random inputs")):
        s = sub.add_parser(name, help=text)
        s.add_argument("artifact", help="artifact folder (written by msd compile / CompiledModule.save)")
        s.add_argument("--device", default=None, help="IREE driver, default: the one the target needs")
        s.add_argument("--function", default=None, help="function to call (default: the only one)")
        s.set_defaults(func=func)
        if name == "run":
            s.add_argument("--input", action="append", default=[], help=".npy file, one per input, in order")
            s.add_argument("--output", action="append", default=[], help=".npy file to write, one per output")
        if name == "bench":
            s.add_argument("--shape", action="append", type=_shape,
                           help="input shape like 16x4096 (one per input; default: static dims, dynamic dims at"
                                " their minimum)")
            s.add_argument("--reps", type=_int_range(1), default=50, help="timed calls (default 50)")
    g = sub.add_parser("generate", help="generate text greedily from a GGUF Llama model (compiled on the fly) or"
                                        " from an artifact folder written by 'msd compile model.gguf'")
    g.add_argument("gguf", help="a .gguf Llama file (Q8_0, Q4_0/1, Q5_0/1, Q4_K, Q5_K, Q6_K, F16, F32 "
                                        "tensors), or an artifact folder")
    g.add_argument("prompt", nargs="+", help="one prompt, or several: replies printed in order, [1] [2] ...")
    g.add_argument("--max-new-tokens", type=_int_range(1), default=64, help="at most this many tokens (default 64)")
    g.add_argument("--slices", type=_int_range(0, 3), default=None,
                   help=".gguf files: activation slices 1-3 (default 2); 0 = IREE's own lowering")
    g.add_argument("--max-ctx", type=_int_range(3), default=None,
                   help=".gguf files: KV-cache capacity in tokens, prompt + new (default 2048); decode cost follows"
                        " the text")
    g.add_argument("--no-chat", action="store_true", help="do not wrap the prompt in the chat template")
    g.add_argument("--kv-cache", default=None, choices=("float", "f16", "int8"),
                   help=".gguf files: KV cache in f32 (default), f16 (half the bytes), or int8 with a scale per head"
                        " and token (MSD attention)")
    g.add_argument("--batch", type=_int_range(1, 1024), default=None,
                   help=".gguf files: sequences decoded together (default: the number of prompts, at most 8)")
    g.add_argument("--device", default=None, help="artifact folders: IREE driver (default: the target's)")
    g.set_defaults(func=cmd_generate)
    for s in sub.choices.values():
        s.add_argument("--json", action="store_true", help="print a JSON result on stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result: Any = args.func(args)
        if args.json:
            print(json.dumps(result, indent=2))
    except KeyboardInterrupt:
        return _interrupted(args)
    except CliError as e:
        print(f"msd {args.command}: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # the library's own errors carry precise messages
        print(f"msd {args.command}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def _interrupted(args: argparse.Namespace) -> int:
    """Ctrl-C: one line, status 130.  An IREE compile abandoned by the interrupt may still be running in a
    worker thread (msd.compiler.pipeline.iree_session); the process then leaves with os._exit, since tearing the
    interpreter and LLVM down under it could crash.  msd has no temporary folder yet at that point (it
    makes one after IREE's compile), and the output folder was removed by cmd_compile."""
    previous = _ignore_sigint()  # a second Ctrl-C does not interrupt the way out
    try:
        if args.command == "generate" and not args.json:
            print(flush=True)  # end the streamed text's line
        print(f"msd {args.command}: interrupted", file=sys.stderr, flush=True)
        session = sys.modules.get("msd.compiler.pipeline.iree_session")
        if session is not None and session.busy():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(INTERRUPTED)
    finally:
        _restore_sigint(previous)
    return INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
