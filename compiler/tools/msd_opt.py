"""``msd-opt``: an mlir-opt-style driver for msd's passes (and any upstream/IREE pass).

    msd-opt in.mlir --msd-decompose-activations="slices=2" [--pass-pipeline=...] [--msd-report]

Reads a file (or stdin with ``-``/no file), runs the named passes in command-line order and prints
the result.  ``--pass-pipeline=PIPE`` runs a textual MLIR/IREE pipeline at that point (for example
``--pass-pipeline='builtin.module(canonicalize,cse)'``).  ``--msd-report`` (alias ``--debug``)
prints on stderr what each msd pass rewrote and why it left other ops alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

from iree.compiler import ir, passmanager

from msd.passes import PASSES, PassOptionError, parse_options, run_pass

USAGE = "usage: msd-opt [FILE|-] [--msd-<pass>[=\"opt=val ...\"]] [--pass-pipeline=P] [--msd-report] [-o OUT]"


class UsageError(Exception):
    pass


def _parse_args(argv: list[str]) -> tuple[str, list[tuple[str, object]], bool, str | None]:
    source, steps, report, out = "-", [], False, None
    it = iter(argv)
    for arg in it:
        if arg in ("-h", "--help"):
            lines = [USAGE, "passes:"]
            lines += [f"  --{p.name}  {p.summary}; options: "
                      + ", ".join(f"{k} (default {d})" for k, (_, d) in p.options.items())
                      for p in PASSES.values()]
            print("\n".join(lines))
            raise SystemExit(0)
        if arg in ("--msd-report", "--debug"):
            report = True
        elif arg == "-o":
            out = next(it, None)
            if out is None:
                raise UsageError("-o needs a file name")
        elif arg.startswith("--pass-pipeline="):
            steps.append(("pipeline", arg.split("=", 1)[1]))
        elif arg.startswith("--"):
            name, _, opts = arg[2:].partition("=")
            if name not in PASSES:
                raise UsageError(f"unknown pass '--{name}' (known: {', '.join('--' + p for p in PASSES)})")
            steps.append((name, parse_options(name, opts.strip("\"'"))))
        elif source == "-":
            source = arg
        else:
            raise UsageError(f"more than one input file: {source!r} and {arg!r}")
    return source, steps, report, out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        source, steps, want_report, out = _parse_args(argv)
    except (UsageError, PassOptionError) as e:
        print(f"msd-opt: error: {e}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as e:
        print(f"msd-opt: error: cannot read {source}: {e.strerror}", file=sys.stderr)
        return 2
    name = "<stdin>" if source == "-" else source
    with ir.Context() as ctx, ir.Location.unknown():
        ctx.allow_unregistered_dialects = False
        try:
            module = ir.Module.parse(text)
        except ir.MLIRError as e:
            print(f"msd-opt: error: cannot parse {name}:\n{_diagnostics(e, name)}", file=sys.stderr)
            return 1
        for step, opts in steps:
            try:
                if step == "pipeline":
                    try:
                        pm = passmanager.PassManager.parse(str(opts))
                    except ValueError as e:
                        print(f"msd-opt: error: bad --pass-pipeline {opts!r}: {e}", file=sys.stderr)
                        return 2
                    pm.run(module.operation)
                else:
                    report = run_pass(module.operation, step, **opts)
                    if want_report:
                        text = report.format().replace(" -:", f" {Path(name).name}:")
                        print(text, file=sys.stderr)
            except ir.MLIRError as e:
                print(f"msd-opt: error: {step} failed:\n{_diagnostics(e, name)}", file=sys.stderr)
                return 1
            except PassOptionError as e:
                print(f"msd-opt: error: {e}", file=sys.stderr)
                return 2
        if not module.operation.verify():
            print("msd-opt: error: result does not verify", file=sys.stderr)
            return 1
        result = str(module)
    if out:
        Path(out).write_text(result)
    else:
        sys.stdout.write(result)
    return 0


def _diagnostics(e: ir.MLIRError, source: str) -> str:
    """One line per error, with the parser's anonymous buffer name replaced by the file name."""
    anonymous, named = 'loc("-"', f'loc("{source}"'
    lines = [f"  {str(d.location).replace(anonymous, named)}: {d.message}" for d in e.error_diagnostics]
    return "\n".join(lines) or f"  {e}"


if __name__ == "__main__":
    raise SystemExit(main())
