"""The ``msd`` command: compile models, and run, inspect or time saved artifacts.

    msd compile my_models:build -o out/ [--target llvm-cpu] [--slices 2]
    msd compile model.gguf -o llm/ [--max-ctx 2048]
    msd run out/ --input x.npy [--output y.npy]
    msd inspect out/
    msd bench out/ [--shape 1x4096] [--reps 50]
    msd generate model.gguf "prompt" [--max-new-tokens 64] [--slices 2] [--max-ctx 512]
    msd generate llm/ "prompt"             # a compiled .gguf artifact: no torch, no compiler

``compile`` takes a Python entry point ``module:function`` that returns ``(model, example_inputs)``
or ``(model, example_inputs, dynamic_shapes)``.  ``run``, ``inspect`` and ``bench`` need only the
runtime (no torch, no compiler).  Every command takes ``--json`` for scripts and exits non-zero
with a one-line reason on failure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


class CliError(Exception):
    """A failure the user can act on: printed as one line, exit status 1."""


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.json:
        print(text, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- compile
def _progress(args: argparse.Namespace, start: float) -> Callable[[str], None]:
    def progress(stage: str) -> None:
        _say(args, f"[{time.perf_counter() - start:6.1f}s] {stage}…")

    return progress


def _compile_gguf(args: argparse.Namespace) -> dict:
    """``msd compile model.gguf -o DIR``: prefill + decode, the tokenizer and the generation settings
    in one artifact that ``msd generate DIR`` (or ``msd.runtime.generate``) runs without torch."""
    from msd.compiler import gguf as G
    from msd.compiler.generate import _stop_ids, compile_generator
    from msd.runtime.generate import METADATA_KEY, TOKENIZER_FILE

    start = time.perf_counter()
    max_ctx = args.max_ctx or G.DEFAULT_MAX_CTX
    gen = compile_generator(args.entry, slices=args.slices, max_ctx=max_ctx, target=args.target,
                            progress=_progress(args, start), kv_cache=args.kv_cache)
    entries = gen.model.cache_entries(1, args.kv_cache)
    marker = "\x00USER\x00"
    template = G.chat_prompt(marker).replace("{", "{{").replace("}", "}}").replace(marker, "{user}")
    settings = {"max_ctx": max_ctx, "kv_cache": args.kv_cache,
                # one token's entry of each cache tensor (the host cache is [max_ctx, *shape])
                "cache": [{"shape": list(shape), "dtype": str(dt).removeprefix("torch.")} for shape, dt in entries],
                "stop_ids": sorted(_stop_ids(args.entry, gen.tokenizer)), "chat_template": template,
                "source": Path(args.entry).name}
    folder = gen.compiled.save(args.output, extra_files={TOKENIZER_FILE: gen.tokenizer.to_str().encode()},
                               metadata={METADATA_KEY: settings})
    report = gen.compiled.report
    _say(args, f"[{time.perf_counter() - start:6.1f}s] saved {folder} (run it: msd generate {folder} \"prompt\")")
    _say(args, report.format())
    return {"artifact": str(folder), "seconds": round(time.perf_counter() - start, 3),
            "rewritten": len(report.rewritten), "skipped": len(report.skipped), "max_ctx": max_ctx}


def cmd_compile(args: argparse.Namespace) -> dict:
    if args.entry.endswith(".gguf"):
        if not Path(args.entry).is_file():
            raise CliError(f"no such GGUF file: {args.entry}")
        return _compile_gguf(args)
    if args.max_ctx is not None or args.kv_cache != "float":
        raise CliError("--max-ctx and --kv-cache apply to .gguf models only")
    module_name, _, func_name = args.entry.partition(":")
    if not func_name:
        raise CliError(f"entry point {args.entry!r} must be 'module:function'")
    sys.path.insert(0, str(Path.cwd()))
    try:
        built = getattr(importlib.import_module(module_name), func_name)()
    except (ImportError, AttributeError) as e:
        raise CliError(f"cannot load entry point {args.entry!r}: {e}") from None
    if not isinstance(built, tuple) or len(built) not in (2, 3):
        got = type(built).__name__
        raise CliError(f"{args.entry} must return (model, example_inputs[, dynamic_shapes]), got {got}")
    model, inputs, *dynamic = built
    import msd

    start = time.perf_counter()
    cm = msd.compile(model, inputs, target=args.target, slices=args.slices, act_scale=args.act_scale,
                     act_format=args.act_format, mx_scale=args.mx_scale, mx_lowering=args.mx_lowering,
                     decide=args.decide, min_bits=args.min_bits, hardware=args.hardware,
                     dynamic_shapes=dynamic[0] if dynamic else None, progress=_progress(args, start))
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
    try:
        inputs = [np.load(p) for p in args.input]
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read an input .npy: {e}") from None
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


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e6:.3g} us" if s < 1e-3 else f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def _decision_table(decisions: list[dict]) -> list[str]:
    """One row per matmul: shape, format, decision, slices, predicted baseline and MSD times."""
    head = ["#", "op", "shape", "format", "decision", "slices", "baseline", "MSD", "MSD speedup"]
    rows = []
    for i, d in enumerate(decisions, 1):
        base, msd_s = d.get("baseline_s"), d.get("msd_s")
        speedup = f"{base / msd_s:.2f}x" if base and msd_s else "-"
        rows.append([str(i), d["op"], d.get("shape") or "-", d.get("format") or "-",
                     "rewrite" if d["rewritten"] else "keep baseline", str(d.get("slices") or "-"),
                     _fmt_s(base), _fmt_s(msd_s), speedup])
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [head, *rows]]


def _shape_for(spec, override: str | None) -> tuple[int, ...]:
    if override:
        return tuple(int(v) for v in override.lower().split("x"))
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
    if Path(args.gguf).is_dir():  # a saved artifact: torch-free
        from msd.runtime.generate import TextGenerator

        gen = TextGenerator.load(args.gguf, args.device)
        _say(args, f"[{time.perf_counter() - start:6.1f}s] loaded {args.gguf}")
        slices = gen.artifact.manifest.get("slices")
    elif Path(args.gguf).is_file():
        from msd.compiler.generate import compile_generator

        gen = compile_generator(args.gguf, slices=args.slices, max_ctx=args.max_ctx, progress=_progress(args, start),
                                kv_cache=args.kv_cache)
        _say(args, f"[{time.perf_counter() - start:6.1f}s] compiled prefill + decode")
        slices = args.slices
    else:
        raise CliError(f"no such GGUF file or artifact folder: {args.gguf}")

    def stream(piece: str) -> None:
        if not args.json:
            print(piece, end="", flush=True)

    text = gen.generate(args.prompt, args.max_new_tokens, chat=not args.no_chat, callback=stream)
    if not args.json:
        print()
    st = gen.last_stats
    _say(args, f"prefill {st.prefill_tokens} tokens at {st.prefill_tokens / max(st.prefill_s, 1e-9):.1f} tok/s,"
               f" decode {st.decode_tokens} tokens at {st.decode_tok_s:.1f} tok/s (slices={slices})")
    return {"text": text, "prefill_tokens": st.prefill_tokens, "prefill_s": st.prefill_s,
            "decode_tokens": st.decode_tokens, "decode_s": st.decode_s, "slices": slices}


# ----------------------------------------------------------------------------- main
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="compile a model (Python entry point or .gguf file) into an artifact folder")
    c.add_argument("entry", help="module:function returning (model, example_inputs[, dynamic_shapes]), or a .gguf"
                                 " Llama file (prefill + decode + tokenizer; run it with 'msd generate DIR')")
    c.add_argument("-o", "--output", required=True, help="artifact folder to write")
    c.add_argument("--target", default="llvm-cpu", help="llvm-cpu[:cpu] | cuda[:sm_XX] | rocm[:gfxXXX] | vulkan-spirv")
    c.add_argument("--slices", type=int, default=2, help="activation slices 1-3; 0 = IREE's own lowering")
    c.add_argument("--act-scale", default="group", choices=("row", "group"), help="for group-wise weights")
    c.add_argument("--act-format", default="int8", choices=("int8", "mxfp4", "mxfp8"),
                   help="activation slices: int8 (default), or MX slices per 32-block (MXFP4 weights)")
    c.add_argument("--mx-scale", default="ocp", choices=("ocp", "noclip"), help="MX block-exponent rule")
    c.add_argument("--mx-lowering", default="auto", choices=("auto", "int8", "scaled"),
                   help="MXFP4 slices as exact int8 emulation or block-scaled FP4 (auto: scaled on rocm:gfx950)")
    c.add_argument("--decide", default="always", choices=("always", "cost"),
                   help="cost: a cost model of the target keeps IREE's lowering where MSD is not predicted faster")
    c.add_argument("--min-bits", type=int, default=None, help="accuracy request instead of --slices (8, 16, 24)")
    c.add_argument("--hardware", default=None, help="hardware profile for --decide cost (see msd.targets)")
    c.add_argument("--max-ctx", type=int, default=None,
                   help=".gguf only: KV-cache capacity in tokens, prompt + new (default 2048); decode cost follows the"
                        " text, not this")
    c.add_argument("--kv-cache", default="float", choices=("float", "int8"),
                   help=".gguf only: KV cache in f32, or int8 with a scale per head and token (MSD attention)")
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
            s.add_argument("--shape", action="append", help="input shape like 16x4096 (one per input; default:"
                                                             " static dims, dynamic dims at their minimum)")
            s.add_argument("--reps", type=int, default=50)
    g = sub.add_parser("generate", help="generate text greedily from a GGUF Llama model (compiled on the fly) or"
                                        " from an artifact folder written by 'msd compile model.gguf'")
    g.add_argument("gguf", help="a .gguf file (Q8_0 / Q4_0 / Q4_1 / F16 / F32 tensors), or an artifact folder")
    g.add_argument("prompt")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--slices", type=int, default=2)
    g.add_argument("--max-ctx", type=int, default=2048,
                   help="KV-cache capacity in tokens, prompt + new (default 2048); decode cost follows the text")
    g.add_argument("--no-chat", action="store_true", help="do not wrap the prompt in the chat template")
    g.add_argument("--kv-cache", default="float", choices=("float", "int8"),
                   help="KV cache in f32, or int8 with a scale per head and token (MSD attention)")
    g.add_argument("--device", default=None, help="artifact folders: IREE driver (default: the target's)")
    g.set_defaults(func=cmd_generate)
    for s in sub.choices.values():
        s.add_argument("--json", action="store_true", help="print a JSON result on stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result: Any = args.func(args)
    except CliError as e:
        print(f"msd {args.command}: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # the library's own errors carry precise messages
        print(f"msd {args.command}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
