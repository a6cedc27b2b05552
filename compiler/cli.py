"""The ``msd`` command: compile models, and run, inspect or time saved artifacts.

    msd compile my_models:build -o out/ [--target llvm-cpu] [--slices 2]
    msd run out/ --input x.npy [--output y.npy]
    msd inspect out/
    msd bench out/ [--shape 1x4096] [--reps 50]
    msd generate model.gguf "prompt" [--max-new-tokens 64] [--slices 2] [--max-ctx 512]

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
from pathlib import Path
from typing import Any

import numpy as np


class CliError(Exception):
    """A failure the user can act on: printed as one line, exit status 1."""


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.json:
        print(text, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- compile
def cmd_compile(args: argparse.Namespace) -> dict:
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
    last = [start]

    def progress(stage: str) -> None:
        now = time.perf_counter()
        _say(args, f"[{now - start:6.1f}s] {stage}…")
        last[0] = now

    cm = msd.compile(model, inputs, target=args.target, slices=args.slices, act_scale=args.act_scale,
                     dynamic_shapes=dynamic[0] if dynamic else None, progress=progress)
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
        for d in m["decisions"]:
            print(f"  {'rewritten' if d['rewritten'] else 'skipped'}: {d['op']} at {d['location']}: {d['reason']}")
    return m


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
    from msd.compiler.generate import compile_generator

    if not Path(args.gguf).is_file():
        raise CliError(f"no such GGUF file: {args.gguf}")
    start = time.perf_counter()
    gen = compile_generator(args.gguf, slices=args.slices, max_ctx=args.max_ctx,
                            progress=lambda stage: _say(args, f"[{time.perf_counter() - start:6.1f}s] {stage}…"))
    _say(args, f"[{time.perf_counter() - start:6.1f}s] compiled prefill + decode")

    def stream(piece: str) -> None:
        if not args.json:
            print(piece, end="", flush=True)

    text = gen.generate(args.prompt, args.max_new_tokens, chat=not args.no_chat, callback=stream)
    if not args.json:
        print()
    st = gen.last_stats
    _say(args, f"prefill {st.prefill_tokens} tokens at {st.prefill_tokens / max(st.prefill_s, 1e-9):.1f} tok/s,"
               f" decode {st.decode_tokens} tokens at {st.decode_tok_s:.1f} tok/s (slices={args.slices})")
    return {"text": text, "prefill_tokens": st.prefill_tokens, "prefill_s": st.prefill_s,
            "decode_tokens": st.decode_tokens, "decode_s": st.decode_s, "slices": args.slices}


# ----------------------------------------------------------------------------- main
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="compile a model from a Python entry point into an artifact folder")
    c.add_argument("entry", help="module:function returning (model, example_inputs[, dynamic_shapes])")
    c.add_argument("-o", "--output", required=True, help="artifact folder to write")
    c.add_argument("--target", default="llvm-cpu", help="llvm-cpu[:cpu] | cuda[:sm_XX] | rocm[:gfxXXX] | vulkan-spirv")
    c.add_argument("--slices", type=int, default=2, help="activation slices 1-3; 0 = IREE's own lowering")
    c.add_argument("--act-scale", default="group", choices=("row", "group"), help="for group-wise weights")
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
    g = sub.add_parser("generate", help="compile a GGUF Llama model (prefill + decode) and generate text greedily")
    g.add_argument("gguf", help="a .gguf file (Q8_0 / Q4_0 / Q4_1 / F16 / F32 tensors)")
    g.add_argument("prompt")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--slices", type=int, default=2)
    g.add_argument("--max-ctx", type=int, default=512, help="static KV-cache length (prompt + new tokens)")
    g.add_argument("--no-chat", action="store_true", help="do not wrap the prompt in the chat template")
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
