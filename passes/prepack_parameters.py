"""``--msd-prepack-parameters``: the weight-side operands of msd's kernel dispatches, computed at
compile time and stored as parameters.

A fused kernel (:mod:`.decompose_activations.emit_kernel`) reads the weight in its own layout: the
integer codes tiled for the vector width, the accumulator's start, the scale and offset per (channel,
group).  They are computed from the model's parameters by ordinary tensor ops.  Left in the module,
IREE hoists them into initializers that run when the module loads: every load then reads the
stored weight, writes a relaid copy and keeps both in memory.  This pass moves that computation out
of the module:

1. **match** — each operand of a kernel dispatch (``flow.dispatch`` of an ``msd_`` executable) whose
   value depends on nothing but parameter globals (``#stream.parameter.named``) and constants;
2. **plan** — per dispatch, the parameters it reads (in order) and a parameter key per operand
   (``msd.pack.<first parameter's key>.<operand role>``); a dispatch that reads the same parameters
   through the same computation as an earlier one (one weight used by two entry points) reuses its
   packed parameters;
3. **emit** — a public function ``__msd_pack_<i>(parameters...) -> (operands...)`` holding a copy of
   that computation (functions with the same body are shared), a ``util.global`` of each packed
   parameter in place of the operand, and the calls to make in the module attribute
   ``msd.pack_calls`` (JSON: ``[{"function", "inputs", "outputs"}]``).

:func:`split` then separates the two: the model's module, which only loads the packed parameters,
and the packer module (the pack functions), which the compiler driver builds for the host CPU and
runs on the stored tensors before it writes the parameter archive.  Parameters only the packing
read are then no longer part of the model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import ClassVar

from iree.compiler import ir, passmanager

from msd.errors import OptionError

from .decompose_activations.cpu_kernel import ACTIVATION_ROLES, ROLES_ATTR, SYMBOL_PREFIX
from .pass_options import PassOptions, option
from .report import Decision, Report

NAME = "msd-prepack-parameters"
SUMMARY = "compute the weight-side operands of msd kernel dispatches at compile time, as parameters"
CALLS_ATTR = "msd.pack_calls"
PACK_ATTR = "msd.pack"  # on a pack function

_PARAMETER = re.compile(r'^#stream\.parameter\.named<"((?:[^"\\]|\\.)*)"::"((?:[^"\\]|\\.)*)">')
# ops a packing computation may contain: side-effect free tensor computations
_PURE_DIALECTS = ("arith.", "math.", "linalg.", "tensor.")


@dataclass(frozen=True)
class PrepackOptions(PassOptions):
    pass_name: ClassVar[str] = NAME
    min_bytes: int = option(0, help="pack only operands at least this large (smaller ones stay in the module)")

    def validate(self) -> None:
        if self.min_bytes < 0:
            raise OptionError(f"{NAME}: min-bytes must not be negative")


@dataclass(frozen=True)
class PackCall:
    """One call of the packer: ``outputs = function(inputs)``, by parameter key."""

    function: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def to_json(self) -> dict:
        return {"function": self.function, "inputs": list(self.inputs), "outputs": list(self.outputs)}


# ================================================================================================ match
@dataclass
class _Slice:
    """What one dispatch operand is computed from: the ops (in program order) and the parameter loads."""

    ops: list[ir.Operation]
    loads: list[ir.Operation]  # util.global.load of parameters, first use first


def parameter_globals(module: ir.Operation) -> dict[str, tuple[str, str]]:
    """``util.global`` symbol → (scope, key) for every immutable global backed by a named parameter."""
    out = {}
    for op in module.regions[0].blocks[0].operations:
        if op.operation.name != "util.global" or "is_mutable" in op.attributes:
            continue
        if "initial_value" not in op.attributes:
            continue
        m = _PARAMETER.match(str(op.attributes["initial_value"]))
        if m:
            out[ir.StringAttr(op.attributes["sym_name"]).value] = (_unescape(m.group(1)), _unescape(m.group(2)))
    return out


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


class _Positions:
    """Each op's position in its block, computed once per block (the pass only adds ops to blocks, in
    front of dispatches, so the order of the ops already there never changes)."""

    def __init__(self) -> None:
        self._blocks: dict[ir.Operation, dict[ir.Operation, int]] = {}

    def of(self, block: ir.Block) -> dict[ir.Operation, int]:
        key = block.owner.operation
        if key not in self._blocks:
            self._blocks[key] = {o.operation: i for i, o in enumerate(block.operations)}
        return self._blocks[key]


def _operand_slice(value: ir.Value, block: ir.Block, params: dict[str, tuple[str, str]],
                   positions: _Positions) -> _Slice | str:
    """The computation of ``value`` when it reads only parameters and constants, else why not."""
    seen: set[ir.Operation] = set()
    ops: list[ir.Operation] = []
    loads: list[ir.Operation] = []
    work = [value]
    while work:
        v = work.pop()
        owner = v.owner
        if isinstance(owner, ir.Block):
            return "it reads a function argument"
        op = owner.operation
        if op in seen:
            continue
        seen.add(op)
        if op.parent is None or op.block != block:
            return f"it reads {op.name} from another block"
        name = op.name
        if name == "util.global.load":
            sym = ir.FlatSymbolRefAttr(op.attributes["global"]).value
            if sym not in params:
                return f"it reads the global @{sym}, which is not a parameter"
            et = ir.RankedTensorType(op.results[0].type).element_type
            if isinstance(et, ir.IntegerType) and et.width == 1:
                return f"it reads the boolean parameter {params[sym][1]!r} (no host array type for i1)"
            loads.append(op)
            continue
        if not name.startswith(_PURE_DIALECTS):
            return f"it is computed by {name}"
        ops.append(op)
        work.extend(op.operands)
        work.extend(_captured(op))
    order = positions.of(block)
    ops.sort(key=lambda o: order[o])
    loads.sort(key=lambda o: order[o])
    return _Slice(ops, loads)


def _captured(op: ir.Operation) -> list[ir.Value]:
    """Values used inside ``op``'s regions but defined outside it (a generic's body reads constants)."""
    inside: set[ir.Value] = set()
    used: list[ir.Value] = []

    def visit(o: ir.Operation) -> ir.WalkResult:
        for r in o.results:
            inside.add(r)
        for region in o.regions:
            for b in region.blocks:
                inside.update(b.arguments)
        if o != op:
            used.extend(o.operands)
        return ir.WalkResult.ADVANCE

    op.walk(visit, ir.WalkOrder.PRE_ORDER)
    return [v for v in used if v not in inside]


# ================================================================================================ plan
@dataclass
class _Packing:
    """Per dispatch: which operands are packed, from which parameters."""

    dispatch: ir.Operation
    operands: list[int]  # operand positions packed
    roles: list[str]
    slices: list[_Slice]
    inputs: list[str]  # parameter keys read, in argument order
    input_syms: list[str]


def _plan(dispatch: ir.Operation, block: ir.Block, params: dict[str, tuple[str, str]],
          min_bytes: int, positions: _Positions) -> _Packing | str:
    roles = [ir.StringAttr(a).value for a in dispatch.attributes[ROLES_ATTR]]
    at, slices, why = [], [], []
    for i, v in enumerate(_dispatch_arguments(dispatch)):
        if not isinstance(v.type, ir.RankedTensorType):
            continue
        s = _operand_slice(v, block, params, positions)
        role = roles[i] if i < len(roles) else f"operand{i}"
        if isinstance(s, str):
            if role not in ACTIVATION_ROLES:
                why.append(f"{role}: {s}")
            continue
        if not s.loads or _bytes(v.type) < min_bytes:
            continue  # constants only (IREE folds them), or too small to matter
        at.append(i)
        slices.append(s)
    if not at:
        return "no operand reads only parameters" + (f" ({'; '.join(why)})" if why else "")
    inputs, syms = [], []
    for s in slices:
        for load in s.loads:
            sym = ir.FlatSymbolRefAttr(load.attributes["global"]).value
            if sym not in syms:
                syms.append(sym)
                inputs.append(params[sym][1])
    names = [roles[i] if i < len(roles) else f"operand{i}" for i in at]
    return _Packing(dispatch, at, names, slices, inputs, syms)


def _dispatch_arguments(dispatch: ir.Operation) -> list[ir.Value]:
    """The dispatch's tensor arguments (its operand segment after the workload)."""
    sizes = list(ir.DenseI32ArrayAttr(dispatch.attributes["operandSegmentSizes"]))
    start = sizes[0]
    return list(dispatch.operands)[start:start + sizes[1]]


def _bytes(t: ir.Type) -> int:
    rt = ir.RankedTensorType(t)
    if not rt.has_static_shape:
        return 0
    n = 1
    for i in range(rt.rank):
        n *= rt.get_dim_size(i)
    et = rt.element_type
    width = et.width if isinstance(et, ir.IntegerType | ir.FloatType) else 32
    return n * max(width, 8) // 8


# ================================================================================================ emit
class _Emitter:
    def __init__(self, module: ir.Operation, params: dict[str, tuple[str, str]], positions: _Positions) -> None:
        self.positions = positions
        self.global_types: dict[str, ir.Type] = {}
        self.body = module.regions[0].blocks[0]
        self.params = params
        self.functions: dict[str, str] = {}  # body text → pack function name
        self.packed: dict[tuple[str, tuple[str, ...], int], tuple[str, str]] = {}  # → (global sym, key)
        self.keys: set[str] = {k for _, k in params.values()}
        self.calls: list[PackCall] = []

    def emit(self, p: _Packing) -> list[str]:
        """Rewrite one dispatch; return the keys of its packed operands."""
        fn = self._function(p)
        args = _dispatch_arguments(p.dispatch)
        types = [args[i].type for i in p.operands]
        outs, new = [], False
        for j, (pos, t) in enumerate(zip(p.operands, types)):
            ident = (fn, tuple(p.inputs), j)
            if ident not in self.packed:
                self.packed[ident] = self._global(f"msd.pack.{p.inputs[0]}.{p.roles[j]}", t)
                new = True
            sym, key = self.packed[ident]
            outs.append(key)
            with ir.InsertionPoint(p.dispatch):
                load = ir.Operation.create("util.global.load", results=[t],
                                           attributes={"global": ir.FlatSymbolRefAttr.get(sym)})
            p.dispatch.operands[_segment_start(p.dispatch) + pos] = load.result
        if new:
            self.calls.append(PackCall(fn, tuple(p.inputs), tuple(outs)))
        return outs

    def _global(self, key: str, t: ir.Type) -> tuple[str, str]:
        base, n = key, 1
        while key in self.keys:
            n += 1
            key = f"{base}#{n}"
        self.keys.add(key)
        sym = "__msd_packed_" + "".join(c if c.isalnum() else "_" for c in key)
        escaped = key.replace("\\", "\\\\").replace('"', '\\"')
        glob = ir.Operation.parse(f'util.global private @{sym} = #stream.parameter.named<"{self._scope()}"::'
                                  f'"{escaped}"> : {t}')
        ir.InsertionPoint.at_block_begin(self.body).insert(glob)
        return sym, key

    def _scope(self) -> str:
        return next(iter(self.params.values()))[0]

    def _function(self, p: _Packing) -> str:
        """The pack function for ``p`` (an existing one when the body is the same); its name."""
        in_types = [self._load_type(sym) for sym in p.input_syms]
        out_types = [_dispatch_arguments(p.dispatch)[i].type for i in p.operands]
        name = f"__msd_pack_{len(self.functions)}"
        # bfloat16 has no host array type: such an argument is its bits (i16), bitcast in the function
        arg_types = [_bits_type(t) for t in in_types]
        sig_in = ", ".join(f"%arg{i}: {t}" for i, t in enumerate(arg_types))
        sig_out = ", ".join(str(t) for t in out_types)
        placeholders = [f"%e{i} = tensor.empty() : {t}" for i, t in enumerate(out_types)]
        text = (f"util.func public @{name}({sig_in}) -> ({sig_out}) {{\n" + "\n".join(placeholders)
                + f"\nutil.return {', '.join(f'%e{i}' for i in range(len(out_types)))} : {sig_out}\n}}")
        fn = ir.Operation.parse(text)
        block = fn.regions[0].blocks[0]
        term = list(block.operations)[-1]
        mapping: dict[ir.Value, ir.Value] = {}
        args = []
        for arg, t, bits in zip(block.arguments, in_types, arg_types):
            if t != bits:
                with ir.InsertionPoint(term):
                    arg = ir.Operation.create("arith.bitcast", results=[t], operands=[arg]).result
            args.append(arg)
        for sym, arg in zip(p.input_syms, args):
            for s in p.slices:
                for load in s.loads:
                    if ir.FlatSymbolRefAttr(load.attributes["global"]).value == sym:
                        mapping[load.results[0]] = arg
        ops = _merged([s.ops for s in p.slices], self.positions.of(p.dispatch.block))
        for op in ops:
            clone = op.clone(ir.InsertionPoint(term))
            _remap(clone, mapping)
            for old, new in zip(op.results, clone.results):
                mapping[old] = new
        results = _dispatch_arguments(p.dispatch)
        for j, pos in enumerate(p.operands):
            term.operands[j] = mapping[results[pos]]
        for placeholder in list(block.operations)[:len(out_types)]:
            placeholder.erase()
        fn.attributes[PACK_ATTR] = ir.UnitAttr.get()
        scratch = ir.Module.create()  # simplified on its own, so that equal computations print equal
        ir.InsertionPoint(scratch.body).insert(fn)
        passmanager.PassManager.parse("builtin.module(canonicalize, cse)").run(scratch.operation)
        key = _body_text(fn, name)
        if key in self.functions:
            return self.functions[key]
        self.functions[key] = name
        fn.detach_from_parent()
        ir.InsertionPoint(self.body).insert(fn)
        return name

    def _load_type(self, sym: str) -> ir.Type:
        if not self.global_types:
            self.global_types = {
                ir.StringAttr(op.attributes["sym_name"]).value: ir.TypeAttr(op.attributes["type"]).value
                for op in self.body.operations if op.operation.name == "util.global"}
        return self.global_types[sym]



def _bits_type(t: ir.Type) -> ir.Type:
    rt = ir.RankedTensorType(t)
    if isinstance(rt.element_type, ir.BF16Type):
        return ir.RankedTensorType.get(rt.shape, ir.IntegerType.get_signless(16))
    return t


def _segment_start(dispatch: ir.Operation) -> int:
    return list(ir.DenseI32ArrayAttr(dispatch.attributes["operandSegmentSizes"]))[0]


def _merged(lists: list[list[ir.Operation]], order: dict[ir.Operation, int]) -> list[ir.Operation]:
    ops = {o for ops in lists for o in ops}
    return sorted(ops, key=lambda o: order[o])


def _remap(op: ir.Operation, mapping: dict[ir.Value, ir.Value]) -> None:
    def visit(o: ir.Operation) -> ir.WalkResult:
        for i, v in enumerate(o.operands):
            if v in mapping:
                o.operands[i] = mapping[v]
        return ir.WalkResult.ADVANCE

    op.walk(visit, ir.WalkOrder.PRE_ORDER)


def _body_text(fn: ir.Operation, name: str) -> str:
    return fn.get_asm().replace(f"@{name}(", "@__self(", 1)


# ================================================================================================ pass
def run(module: ir.Operation, options: PrepackOptions | None = None, /, **kwargs: object) -> Report:
    """Apply the pass to ``module`` in place; return one decision per kernel dispatch."""
    if options is None:
        options = PrepackOptions(**kwargs)
    elif kwargs:
        raise TypeError("run() takes options or keyword arguments, not both")
    report = Report(NAME)
    params = parameter_globals(module)
    dispatches: list[ir.Operation] = []

    def visit(o: ir.Operation) -> ir.WalkResult:
        # msd's kernels that read a weight say what each operand is (the linear kernels); the others
        # (activation quantizing, attention) read only values computed per call
        if o.name == "flow.dispatch" and _callee(o).startswith(SYMBOL_PREFIX) and ROLES_ATTR in o.attributes:
            dispatches.append(o)
        return ir.WalkResult.ADVANCE

    module.walk(visit, ir.WalkOrder.PRE_ORDER)
    if not dispatches:
        return report
    positions = _Positions()
    emitter = _Emitter(module, params, positions)
    for d in dispatches:
        where = _location(d)
        p = _plan(d, d.block, params, options.min_bytes, positions) if params else "the module has no parameters"
        if isinstance(p, str):
            report.decisions.append(Decision("flow.dispatch", where, False, f"{_callee(d)}: nothing packed: {p}"))
            continue
        keys = emitter.emit(p)
        report.decisions.append(Decision(
            "flow.dispatch", where, True,
            f"{_callee(d)}: {', '.join(p.roles)} packed at compile time from {', '.join(p.inputs)}"
            f" (parameters {', '.join(keys)})"))
    if emitter.calls:
        module.attributes[CALLS_ATTR] = ir.StringAttr.get(json.dumps([c.to_json() for c in emitter.calls]))
    passmanager.PassManager.parse("builtin.module(canonicalize, cse)").run(module)
    return report


def _callee(dispatch: ir.Operation) -> str:
    entry = ir.ArrayAttr(dispatch.attributes["entry_points"])[0]
    return str(entry).split("::")[-1].lstrip("@")


def _location(op: ir.Operation) -> str:
    text = str(op.location)
    m = re.search(r'"([^"]+)":(\d+)', text)
    return f"{m.group(1)}:{m.group(2)}" if m else text


# ================================================================================================ split
def pack_calls(module: ir.Operation) -> list[PackCall]:
    """The calls the pass recorded in ``module`` (none when it packed nothing)."""
    if CALLS_ATTR not in module.attributes:
        return []
    raw = json.loads(ir.StringAttr(module.attributes[CALLS_ATTR]).value)
    return [PackCall(c["function"], tuple(c["inputs"]), tuple(c["outputs"])) for c in raw]


def split(module: ir.Operation) -> tuple[ir.Operation | None, list[PackCall]]:
    """Separate the pack functions from ``module`` (in place: it keeps the model only, and no longer
    declares the parameters only packing read); return the packer module and the calls to make
    (None and [] when the pass packed nothing)."""
    calls = pack_calls(module)
    if not calls:
        return None, []
    packer = module.clone()
    for op in list(_top(module)):
        if PACK_ATTR in op.attributes:
            op.erase()
    del module.attributes[CALLS_ATTR]
    for op in list(_top(packer)):
        if op.name == "util.func" and PACK_ATTR not in op.attributes or op.name == "stream.executable":
            op.erase()
    del packer.attributes[CALLS_ATTR]
    for m in (module, packer):
        passmanager.PassManager.parse("builtin.module(symbol-dce)").run(m)
    return packer, calls


def _top(module: ir.Operation) -> list[ir.Operation]:
    return [op.operation for op in module.regions[0].blocks[0].operations]


def parameter_keys(module: ir.Operation) -> set[str]:
    """The keys of the parameters ``module`` declares."""
    return {k for _, k in parameter_globals(module).values()}


__all__ = ["CALLS_ATTR", "NAME", "ROLES_ATTR", "SUMMARY", "PackCall", "PrepackOptions", "pack_calls",
           "parameter_globals", "parameter_keys", "run", "split"]
