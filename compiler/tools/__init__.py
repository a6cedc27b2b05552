"""``msd.compiler.tools``: the command lines: ``msd`` (``cli``: compile, run, inspect, bench, generate) and
``msd-opt`` (``msd_opt``: msd's passes on MLIR text, mlir-opt style)."""
