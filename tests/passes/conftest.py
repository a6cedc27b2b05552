"""Unit tests of msd.passes on small hand-written IR: ``parse`` reads a module in an iree.compiler
context that stays active for the test; ``ir_ops`` lists a module's ops by name, in order;
``ir_returned`` gives the values its function returns."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from iree.compiler import ir


@pytest.fixture
def parse() -> Iterator[Callable[[str], ir.Module]]:
    """``parse(text)``: the module, kept alive (with its context) until the test ends -- a value of a
    freed module would crash the bindings."""
    alive: list[ir.Module] = []

    def parse(text: str) -> ir.Module:
        alive.append(ir.Module.parse(text))
        return alive[-1]

    with ir.Context(), ir.Location.unknown():
        yield parse
        alive.clear()


def ops(module: ir.Module, name: str) -> list[ir.Operation]:
    found: list[ir.Operation] = []

    def visit(op: ir.Operation) -> ir.WalkResult:
        if op.name == name:
            found.append(op.operation)
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    return found


def returned(module: ir.Module) -> list[ir.Value]:
    """The values the (single) function returns."""
    (ret,) = ops(module, "func.return")
    return list(ret.operands)


@pytest.fixture
def ir_ops() -> Callable[[ir.Module, str], list[ir.Operation]]:
    return ops


@pytest.fixture
def ir_returned() -> Callable[[ir.Module], list[ir.Value]]:
    return returned
