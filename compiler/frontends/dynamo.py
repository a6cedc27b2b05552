"""``torch.compile(model, backend="msd")``: msd as a TorchDynamo backend, for inference.

    import msd.compiler.frontends.dynamo  # registers the backend under the name "msd"
    fast = torch.compile(msd.quantize(model), backend="msd", options={"slices": 2, "target": "llvm-cpu"})
    with torch.no_grad():
        y = fast(x)

How it works.  Dynamo hands :func:`backend` one FX ``GraphModule`` per captured subgraph (several
when the model has graph breaks) together with example inputs.  Those inputs may be FakeTensors or
symbolic sizes (``SymInt``, after dynamo has made a dimension dynamic), so nothing is compiled
there: :func:`backend` returns a :class:`MsdGraph`, which compiles on its first real call and then
once per new *signature* (shapes and dtypes of the tensor inputs, values of the int inputs):

1. the graph's inputs are split into *weights* (the model's parameters and buffers, which dynamo
   lifts to graph inputs and tags ``_dynamo_static_input_type``) and *activations* (the rest);
2. a small ``nn.Module`` holds the weights as buffers, as they are (int8 stays int8), takes the
   activations as its inputs and calls the graph with the int inputs fixed to this call's values;
3. that module is captured with ``torch.export`` on the real activations and compiled by
   ``msd.compile`` — so the weights become named IREE parameters in the archive, never float
   constants in the IR or runtime inputs;
4. the compiled module runs on the activations; its results are returned as the tuple the graph
   returns (non-tensor results put back in place, tensors moved to the device the graph would
   have produced them on).

Each new signature is exported (cheap) before it is compiled (not cheap); a program already
compiled for the same weights and options — typically by the graph dynamo made before it turned a
dimension dynamic — is reused.  The weights are read once, at compile time.  Each call checks (by
identity and version counter) that the graph still receives the same weight tensors, unchanged; if
not (in-place update, ``load_state_dict``, another instance of the same module class sharing
dynamo's cache) that signature is compiled again.

Options (``torch.compile(..., options={...})`` reaches the backend as ``options=``):

- ``target`` (default ``"llvm-cpu"``), ``slices`` (2; 0 for IREE's own lowering), ``act_scale``,
  ``extra_flags``: passed to :func:`msd.compile`;
- ``grad``: what to do when a call needs autograd (grad mode on and some input or weight with
  ``requires_grad``): ``"error"`` (default) raises :class:`MsdBackendError` — msd computes no
  gradients, so its outputs would silently be detached; ``"eager"`` runs the graph in plain torch
  for that call instead, with a warning (once per graph);
- ``fallback``: ``False`` (default) raises :class:`MsdBackendError` when a subgraph cannot be
  exported or compiled; ``True`` runs that subgraph in plain torch with a warning;
- ``cache_size``: compiled signatures kept per graph (default 8, least recently used dropped).

``stats`` counts what happened (graphs received, msd compilations, a record of each
compilation with msd's pass report) — the tests use it; it is process-wide.

Limitations: inference only; each new input shape is a full msd compilation (every compiled
module has static shapes, even where dynamo marked a dimension dynamic); outputs are fresh tensors
(an output that aliases an input in eager mode does not here); graphs that change their inputs or
buffers in place are refused (``fallback=True`` runs them in torch); weights that are tensor
subclasses (torchao) under dynamo are untested; outputs of a non-CPU target come back through host
memory.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from msd.compiler.pipeline.importer import export
from msd.compiler.pipeline.options import CompileOptions
from msd.errors import MsdError, OptionError
from msd.passes.report import Report

NAME = "msd"
# msd.compile's MSD options (CompileOptions' fields, defaults and checks) and the backend's own
COMPILE_OPTIONS = ("target", "extra_flags", *(s.name for s in CompileOptions.specs()))  # passed to msd.compile
DEFAULT_OPTIONS: dict[str, Any] = {
    "target": "llvm-cpu",
    "extra_flags": (),
    **{s.name: s.default for s in CompileOptions.specs()},
    "grad": "error",
    "fallback": False,
    "cache_size": 8,
}
GRAD_POLICIES = ("error", "eager")


class MsdBackendError(MsdError, RuntimeError):
    """The msd dynamo backend cannot run this graph (needs autograd, or failed to compile)."""


# ------------------------------------------------------------------------------ bookkeeping
@dataclass(frozen=True)
class CompileRecord:
    """One msd compilation of one subgraph signature."""

    graph: str  # the GraphModule's name plus a per-process number
    signature: tuple  # ((shape, dtype) of each activation, int inputs)
    target: str
    slices: int
    report: Report  # what msd's pass rewrote (empty for slices=0)
    weights: dict[str, tuple[torch.dtype, tuple[int, ...]]]  # the program's parameters and buffers
    inputs: list[tuple[str, tuple[int | None, ...]]]  # the compiled module's runtime inputs (dtype, shape)


@dataclass
class Stats:
    """Process-wide counters of the backend (``reset()`` between measurements)."""

    graphs: int = 0  # GraphModules dynamo handed to the backend
    compiles: int = 0  # msd compilations (one per graph and signature)
    eager_runs: int = 0  # calls served by plain torch (grad="eager" or fallback=True)
    reused: int = 0  # signatures served by a module compiled for another graph of the same program
    records: deque[CompileRecord] = field(default_factory=lambda: deque(maxlen=64))

    @property
    def last(self) -> CompileRecord | None:
        return self.records[-1] if self.records else None

    def reset(self) -> None:
        self.graphs = self.compiles = self.eager_runs = self.reused = 0
        self.records.clear()


stats = Stats()
# Compiled modules by (exported program code, activation signature, weight tensors, options),
# across graphs: what makes a shape compiled before dynamo turned dynamic not compile again.  Weak:
# an entry lives as long as some graph's cache holds it.
_shared: weakref.WeakValueDictionary[tuple, _Entry] = weakref.WeakValueDictionary()
_graph_ids = iter(range(1 << 62))


# ------------------------------------------------------------------------------ the backend
def backend(gm: fx.GraphModule, example_inputs: Sequence[Any], *, options: dict | None = None,
            mode: str | None = None) -> Callable[..., Any]:
    """Dynamo backend entry point: returns a callable that runs ``gm`` compiled by msd.

    ``example_inputs`` are only looked at for their kinds (tensor or not); compilation happens on
    the first real call (see the module docstring).  ``mode`` is accepted and ignored.
    """
    del mode
    opts = _resolve_options(options)
    stats.graphs += 1
    return MsdGraph(gm, example_inputs, opts)


def _resolve_options(options: dict | None) -> dict[str, Any]:
    opts = dict(DEFAULT_OPTIONS)
    for key, value in (options or {}).items():
        if key not in DEFAULT_OPTIONS:
            raise OptionError(f"unknown msd backend option {key!r} (known: {', '.join(DEFAULT_OPTIONS)})")
        opts[key] = value
    if opts["grad"] not in GRAD_POLICIES:
        raise OptionError(f"grad={opts['grad']!r} is not supported (choose one of {', '.join(GRAD_POLICIES)})")
    if not isinstance(opts["cache_size"], int) or opts["cache_size"] < 1:
        raise OptionError(f"cache_size must be a positive int, got {opts['cache_size']!r}")
    CompileOptions.from_kwargs({s.name: opts[s.name] for s in CompileOptions.specs()})  # a bad value fails at once
    opts["extra_flags"] = tuple(opts["extra_flags"])
    return opts


def _is_weight(node: fx.Node, example: Any) -> bool:
    """Whether a placeholder is a parameter or buffer of the model (dynamo marks those static)."""
    if not isinstance(example, torch.Tensor):
        return False
    if (node.meta.get("tensor_dict") or {}).get("_dynamo_static_input_type") is not None:
        return True
    return isinstance(example, nn.Parameter) or getattr(example, "_dynamo_static_input_type", None) is not None


def _buffer_name(target: str, taken: set[str]) -> str:
    name = target
    for prefix in ("L_", "l_", "G_"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in name).strip("_") or "weight"
    if name[0].isdigit():
        name = "w_" + name
    base, n = name, 1
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


class _Entry:
    """A compiled signature: the module and the weight tensors it was built from."""

    def __init__(self, module: Callable | None, weights: Sequence[torch.Tensor],
                 layout: list[Any] | None) -> None:
        self.module = module  # None: run the graph in torch (fallback)
        self.refs = [weakref.ref(w) for w in weights]
        self.versions = [_version(w) for w in weights]
        self.layout = layout  # per output: None for a tensor from the module, else the constant

    def current(self, weights: Sequence[torch.Tensor]) -> bool:
        return all(r() is w and _version(w) == v for r, w, v in zip(self.refs, weights, self.versions))


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors have no version counter (and cannot be changed)
        return -1


class _Lifted(nn.Module):
    """The graph with its weights as buffers and its int inputs fixed: what ``torch.export`` sees."""

    def __init__(self, gm: fx.GraphModule, kinds: list[str], names: list[str | None],
                 weights: Sequence[torch.Tensor], constants: Sequence[Any]) -> None:
        super().__init__()
        self.graph_module = gm
        self._kinds = kinds
        self._names = names
        self._constants = list(constants)
        for name, w in zip([n for n in names if n is not None], weights):
            self.register_buffer(name, w.detach())
        # The output layout, filled when export traces forward.  A closure, not a list attribute:
        # export works on a copy of the module, and deepcopy shares functions but copies lists.
        seen: list[list[Any]] = []
        self._seen = lambda: seen
        self._record = seen.append

    def forward(self, *activations: torch.Tensor):
        acts, consts = iter(activations), iter(self._constants)
        args = []
        for kind, name in zip(self._kinds, self._names):
            if kind == "weight":
                args.append(getattr(self, name))
            elif kind == "tensor":
                args.append(next(acts))
            else:
                args.append(next(consts))
        outs = self.graph_module(*args)
        outs = tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)
        self._record([None if isinstance(o, torch.Tensor) else o for o in outs])
        return tuple(o for o in outs if isinstance(o, torch.Tensor))

    @property
    def layout(self) -> list[Any] | None:
        seen = self._seen()
        return seen[-1] if seen else None


class MsdGraph:
    """What :func:`backend` returns for one subgraph: compiles per signature, then runs msd."""

    def __init__(self, gm: fx.GraphModule, example_inputs: Sequence[Any], opts: dict[str, Any]) -> None:
        self.gm = gm
        self.opts = opts
        self.name = f"{type(gm).__name__}#{next(_graph_ids)}"
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(example_inputs):
            raise MsdBackendError(
                f"graph has {len(placeholders)} inputs but dynamo gave {len(example_inputs)} examples"
            )
        self.kinds: list[str] = []
        self.names: list[str | None] = []
        taken: set[str] = set()
        for node, ex in zip(placeholders, example_inputs):
            if _is_weight(node, ex):
                self.kinds.append("weight")
                self.names.append(_buffer_name(str(node.target), taken))
            else:
                self.kinds.append("tensor" if isinstance(ex, torch.Tensor) else "value")
                self.names.append(None)
        self.weight_idx = [i for i, k in enumerate(self.kinds) if k == "weight"]
        self.tensor_idx = [i for i, k in enumerate(self.kinds) if k == "tensor"]
        self.value_idx = [i for i, k in enumerate(self.kinds) if k == "value"]
        self.out_devices = _output_devices(gm)
        self.returns_list = _returns_list(gm)
        self.cache: OrderedDict[tuple, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    # -- calling
    def __call__(self, *args: Any) -> Any:
        if len(args) != len(self.kinds):
            raise MsdBackendError(f"{self.name}: expected {len(self.kinds)} inputs, got {len(args)}")
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            if self.opts["grad"] == "error":
                raise MsdBackendError(
                    "the msd backend is inference-only: this call needs autograd (grad mode is on and an input"
                    " or parameter requires grad). Run it under torch.no_grad() / torch.inference_mode(), call"
                    " model.requires_grad_(False), or pass options={'grad': 'eager'} to run such calls in torch"
                )
            self._warn_once("grad", "grad is required: running the graph in torch (no msd) for such calls")
            stats.eager_runs += 1
            return self.gm(*args)
        weights = [args[i] for i in self.weight_idx]
        acts = [args[i] for i in self.tensor_idx]
        values = tuple(args[i] for i in self.value_idx)
        sig = (tuple((tuple(a.shape), a.dtype, a.device.type) for a in acts), _hashable(values))
        key = (sig, tuple(id(w) for w in weights))
        entry = self.cache.get(key)
        if entry is None or not entry.current(weights):
            with self._lock:
                entry = self.cache.get(key)
                if entry is None or not entry.current(weights):
                    entry = self._compile(sig, weights, acts, values)
                    self.cache[key] = entry
                    while len(self.cache) > self.opts["cache_size"]:
                        self.cache.popitem(last=False)
        if key in self.cache:  # (another thread may have evicted it meanwhile)
            self.cache.move_to_end(key)
        if entry.module is None:
            stats.eager_runs += 1
            return self.gm(*args)
        out = entry.module(*acts)
        tensors = iter(out if isinstance(out, tuple) else (out,))
        results = []
        for i, const in enumerate(entry.layout):
            if const is None:
                t = next(tensors)
                dev = self.out_devices[i] if i < len(self.out_devices) else None
                results.append(t if dev is None or t.device == dev else t.to(dev))
            else:
                results.append(const)
        return results if self.returns_list else tuple(results)

    # -- compiling
    def _compile(self, sig: tuple, weights: list[torch.Tensor], acts: list[torch.Tensor],
                 values: tuple) -> _Entry:
        from msd.compiler.pipeline.driver import compile as msd_compile  # (the driver imports IREE)

        try:
            lifted = _Lifted(self.gm, self.kinds, self.names, weights, values)
            program = export(lifted, tuple(acts))
            layout = lifted.layout
            if layout is None:
                raise MsdBackendError("torch.export did not trace the graph")
            if all(c is not None for c in layout):  # nothing computed on tensors: nothing to compile
                return _Entry(None, weights, None)
            mutated = _mutated_inputs(program)
            if mutated:
                raise MsdBackendError(f"the graph changes {', '.join(mutated)} in place, which msd does not carry out")
            options = tuple((k, self.opts[k]) for k in COMPILE_OPTIONS)
            shared_key = (program.graph_module.code, sig[0], tuple(id(w) for w in weights), options)
            shared = _shared.get(shared_key)
            if shared is not None and shared.current(weights):
                # The same program was compiled for another graph of the same code (dynamo compiles
                # the frame again once it makes a dimension dynamic): reuse it.
                stats.reused += 1
                return _Entry(shared.module, weights, layout)
            module = msd_compile(program, tuple(acts), **dict(options))
        except Exception as e:  # export, normalize and IREE raise many types
            why = str(e) if isinstance(e, MsdBackendError) else f"{type(e).__name__}: {e}"
            if not self.opts["fallback"]:
                raise MsdBackendError(f"msd could not compile graph {self.name}: {why}") from e
            self._warn_once("fallback", f"msd could not compile graph {self.name} ({why}); running it in torch")
            return _Entry(None, weights, None)
        state = {**program.state_dict, **program.constants}
        stats.compiles += 1
        stats.records.append(CompileRecord(
            graph=self.name, signature=sig, target=self.opts["target"], slices=self.opts["slices"],
            report=module.report,
            weights={k: (v.dtype, tuple(v.shape)) for k, v in state.items() if isinstance(v, torch.Tensor)},
            inputs=[(spec.dtype, spec.shape) for spec in module.inputs],
        ))
        entry = _Entry(module, weights, layout)
        _shared[shared_key] = entry
        return entry

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(f"msd backend: {message}", RuntimeWarning, stacklevel=3)


def _mutated_inputs(program: torch.export.ExportedProgram) -> list[str]:
    """Inputs (user inputs, parameters, buffers) that the program writes to in place."""
    signature = program.graph_signature
    mutated = {*signature.buffers_to_mutate.values(), *signature.user_inputs_to_mutate.values(),
               *getattr(signature, "parameters_to_mutate", {}).values()}
    names = {spec.arg.name: spec.target or spec.arg.name for spec in signature.input_specs
             if hasattr(spec.arg, "name")}
    for node in program.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None or not schema.is_mutable:
            continue
        for i, arg in enumerate(schema.arguments):
            if arg.alias_info is None or not arg.alias_info.is_write:
                continue
            value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
            if isinstance(value, fx.Node) and value.op == "placeholder":
                mutated.add(names.get(value.name, value.name))
    return sorted(mutated)


def _hashable(values: tuple) -> tuple:
    out = []
    for v in values:
        try:
            hash(v)
            out.append(v)
        except TypeError:
            out.append(repr(v))
    return tuple(out)


def _output_node(gm: fx.GraphModule) -> fx.Node:
    return next(n for n in reversed(gm.graph.nodes) if n.op == "output")


def _returns_list(gm: fx.GraphModule) -> bool:
    return isinstance(_output_node(gm).args[0], list)


def _output_devices(gm: fx.GraphModule) -> list[torch.device | None]:
    """The device dynamo traced each output on (None where unknown)."""
    ret = _output_node(gm).args[0]
    ret = ret if isinstance(ret, (tuple, list)) else (ret,)
    devices: list[torch.device | None] = []
    for r in ret:
        val = r.meta.get("example_value", r.meta.get("val")) if isinstance(r, fx.Node) else None
        devices.append(val.device if isinstance(val, torch.Tensor) else None)
    return devices


def _register() -> None:
    from torch._dynamo.backends import registry

    # Skip when already known: registered by an earlier import, or being loaded right now through
    # the ``torch_dynamo_backends`` entry point (dynamo registers the loaded function itself).
    if NAME in registry._BACKENDS or NAME in registry._COMPILER_FNS:
        return
    torch._dynamo.register_backend(compiler_fn=backend, name=NAME)


_register()

__all__ = ["NAME", "CompileRecord", "MsdBackendError", "MsdGraph", "Stats", "backend", "stats"]
