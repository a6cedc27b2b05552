"""Capture and import: ``torch.export`` → torch-dialect MLIR, with weights as named parameters.

Every parameter and buffer of the model becomes a ``util.global`` backed by
``#stream.parameter.named<"model"::"<torch fqn>">``; the tensors themselves go to a parameter
archive (``.irpa``), never into the IR.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from iree.compiler import ir
from iree.compiler.extras.fx_importer import FxImporter, FxImporterHooks

from msd.errors import ExportError, OptionError
from msd.runtime.module import PARAMETER_SCOPE, TensorSpec

# torch dtype → (builtin MLIR element type, runtime dtype name)
ELEMENT_TYPES: dict[torch.dtype, str] = {
    torch.float32: "f32",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.float64: "f64",
    torch.int8: "i8",
    torch.uint8: "i8",
    torch.int16: "i16",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.bool: "i1",
}
RUNTIME_DTYPES = {**ELEMENT_TYPES, torch.uint8: "ui8"}



def element_type(dtype: torch.dtype) -> str:
    try:
        return ELEMENT_TYPES[dtype]
    except KeyError:
        raise ExportError(f"tensors of dtype {dtype} are not supported") from None


class ParameterHooks(FxImporterHooks):
    """Turns each parameter/buffer input into a load of a named IREE parameter.

    Programs imported together share a parameter only when it has the same torch name *and* the same
    bytes (dtype, shape and contents); a same-named tensor with other contents (a second model's
    ``weight``) is kept as its own parameter under ``name#2``, ``name#3``, …"""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}  # archive key -> tensor
        self._symbols: dict[str, str] = {}  # archive key -> util.global symbol
        self._module: ir.Operation | None = None

    def prepare_module(self, module_op: ir.Operation) -> None:
        self._module = module_op

    def resolve_input(self, gni, value, info):  # noqa: ANN001 (FxImporter's signature)
        name = info.input_spec.target
        if name is None or not isinstance(value, torch.Tensor):
            return None
        et = element_type(value.dtype)
        shape = "x".join(str(d) for d in value.shape)
        ttype = f"tensor<{shape + 'x' if shape else ''}{et}>"
        key = self._key_for(name, value)
        if key not in self._symbols:
            self.tensors[key] = value.detach().cpu().contiguous()
            self._symbols[key] = sym = self._new_symbol(key)
            ref = f'#stream.parameter.named<"{PARAMETER_SCOPE}"::"{key}">'
            glob = ir.Operation.parse(f"util.global private @{sym} = {ref} : {ttype}")
            ir.InsertionPoint.at_block_begin(self._module.regions[0].blocks[0]).insert(glob)
        load = ir.Operation.create(
            "util.global.load", results=[ir.Type.parse(ttype)],
            attributes={"global": ir.FlatSymbolRefAttr.get(self._symbols[key])},
        )
        return ir.Operation.create(
            "torch_c.from_builtin_tensor", results=[info.ir_type], operands=[load.result]
        ).result

    def _key_for(self, name: str, value: torch.Tensor) -> str:
        """The archive key of ``value``: ``name`` unless that key holds other bytes already."""
        if '"' in name or "\\" in name:
            raise ExportError(f"parameter name {name!r} contains a quote or backslash")
        key, n = name, 1
        while key in self.tensors:
            if same_bytes(self.tensors[key], value):
                return key
            n += 1
            key = f"{name}#{n}"
        return key

    def _new_symbol(self, key: str) -> str:
        base = "__param_" + "".join(c if c.isalnum() else "_" for c in key)
        used = set(self._symbols.values())
        sym, n = base, 1
        while sym in used:  # "a.b" and "a_b" sanitize alike
            n += 1
            sym = f"{base}_{n}"
        return sym


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors have the same dtype, shape and bytes (NaNs and -0.0 compared as bits)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    b = b.detach().cpu().contiguous()
    if a.data_ptr() == b.data_ptr():
        return True
    return bool(np.array_equal(raw_bytes(a), raw_bytes(b)))


def raw_bytes(t: torch.Tensor) -> np.ndarray:
    """The tensor's bytes as a flat uint8 array (no copy for a contiguous CPU tensor)."""
    flat = t.reshape(-1)
    if t.dtype in (torch.bfloat16, torch.bool):
        flat = flat.view(torch.uint8) if t.dtype == torch.bool else flat.view(torch.int16)
    return flat.numpy().view(np.uint8)


def export(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], dynamic_shapes=None):
    """``torch.export`` with errors that name what went wrong."""
    if not isinstance(model, torch.nn.Module):
        raise OptionError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    for i, x in enumerate(example_inputs):
        if not isinstance(x, torch.Tensor):
            raise OptionError(f"example input {i} must be a torch.Tensor, got {type(x).__name__}")
        element_type(x.dtype)
    try:
        return torch.export.export(model.eval(), example_inputs, dynamic_shapes=dynamic_shapes)
    except Exception as e:  # torch.export raises many exception types
        raise ExportError(f"torch.export could not capture the model: {type(e).__name__}: {e}") from e


def _spec(program: torch.export.ExportedProgram, name: str, val) -> TensorSpec:
    shape, dims = [], []
    for d in val.shape:
        if isinstance(d, int):
            shape.append(int(d))
            dims.append(None)
            continue
        shape.append(None)
        sym = d.node.expr
        rng = program.range_constraints.get(sym)
        lo = int(rng.lower) if rng is not None and rng.lower.is_finite else 0
        hi = int(rng.upper) if rng is not None and rng.upper.is_finite else None
        dims.append((str(sym), lo, hi))
    return TensorSpec(tuple(shape), RUNTIME_DTYPES[val.dtype], name, tuple(dims))


def input_specs(program: torch.export.ExportedProgram) -> list[TensorSpec]:
    """Names, shapes (None where dynamic, with bounds) and dtypes of the user inputs."""
    user_inputs = set(program.graph_signature.user_inputs)
    return [_spec(program, n.name, n.meta["val"]) for n in program.graph.nodes
            if n.op == "placeholder" and n.name in user_inputs]


def output_specs(program: torch.export.ExportedProgram) -> list[TensorSpec]:
    """The same for the user outputs."""
    out = next(n for n in program.graph.nodes if n.op == "output")
    names = list(program.graph_signature.user_outputs)
    vals = [a.meta["val"] for a in out.args[0] if hasattr(a, "meta")]
    return [_spec(program, names[i] if i < len(names) else f"output_{i}", v) for i, v in enumerate(vals)]


def import_program(
    program: torch.export.ExportedProgram, context: ir.Context, func_name: str = "main"
) -> tuple[ir.Operation, ParameterHooks]:
    """Import into ``context`` (the IREE session's own); return the module and its parameters."""
    return import_programs({func_name: program}, context)


def import_programs(
    programs: dict[str, torch.export.ExportedProgram], context: ir.Context
) -> tuple[ir.Operation, ParameterHooks]:
    """Import several programs as functions of one module; weights with the same torch name are
    one parameter shared by all of them."""
    hooks = ParameterHooks()
    importer = FxImporter(context=context, hooks=hooks)
    for name, program in programs.items():
        importer.import_program(program, func_name=name)
    return importer.module_op, hooks
