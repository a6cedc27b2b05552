"""``msd.compile``: torch model → torch MLIR → linalg → msd passes → IREE ``.vmfb``.

Stages, each of which ``emit=`` can stop after (returning MLIR text):

- ``"torch"``  — ``torch.export`` + FX importer (weights as named parameters);
- ``"linalg"`` — IREE's input phase (torch → linalg on tensors);
- ``"msd"``    — msd's passes (``--msd-decompose-activations``; skipped for ``slices=0``);
- ``"vmfb"``   — the rest of IREE; returns the module bytes.

Without ``emit`` the result is a :class:`CompiledModule`: the module plus its parameter archive,
callable with torch tensors.

Everything after the import runs in a worker process (:mod:`msd.compiler.pipeline.worker`), so that a crash in
IREE or LLVM becomes a :class:`CompileError` instead of ending the caller's process.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from iree.compiler import ir

from msd.compiler.frontends.importable import importable
from msd.compiler.frontends.thirdparty import normalize
from msd.compiler.ops import decompose_for
from msd.cost import profile_for
from msd.passes import Report
from msd.passes.decompose_activations import NAME as DECOMPOSE
from msd.runtime.artifact import MODULE_FILE, PARAMETERS_FILE, to_numpy, to_torch, write_manifest
from msd.runtime.module import Module, TensorSpec

from . import worker
from .importer import export, import_programs, input_specs, output_specs
from .iree_session import CompileError, IreeSession
from .options import CompileOptions
from .packing import write_parameters
from .targets import BACKENDS, Target
from .targets import resolve as resolve_target

STAGES = ("torch", "linalg", "msd", "vmfb")


TARGETS = BACKENDS  # target names; each takes an optional ":arch" (see compiler/pipeline/targets.py)
# f64 stays f64: IREE demotes it to f32 by default, which left the module expecting f32 buffers while
# the signature (and every caller) passes f64 -- each call then failed on the buffer length.
COMMON_FLAGS = ("--iree-input-type=torch", "--iree-input-demote-f64-to-f32=false")

POST_MSD_PIPELINE = "builtin.module(canonicalize, cse)"


def compile(  # noqa: A001 - the public name is msd.compile
    model: torch.nn.Module | torch.export.ExportedProgram,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    *,
    target: str = "llvm-cpu",
    emit: str | None = None,
    dynamic_shapes=None,
    extra_flags: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> CompiledModule | str | bytes:
    """Compile ``model`` (a module, or an already exported program) for ``target`` with MSD.

    Models quantized by torchao or PT2E are accepted as they are: their dequantize ops are
    rewritten to plain torch first (``msd.compiler.frontends.thirdparty.normalize``).

    ``slices``: 1, 2 or 3 int8 activation slices; 0 compiles IREE's own lowering of the same
    model (the baseline).  ``emit``: stop after a stage (see module docstring).
    ``act_scale``: for group-wise weights, one activation scale per row ("row") or per (row,
    group) ("group", default).  ``act_format``: "int8" slices (default) or "mxfp4" slices per
    32-block of K (MX weights), with the ``mx_scale`` block exponent rule ("ocp" or "noclip");
    ``mx_lowering``: "int8" (exact emulation with int8 products), "scaled" (block-scaled FP4
    matmul, for FP4 matrix units) or "auto" (default: "scaled" for rocm:gfx950, else "int8").
    ``dynamic_shapes``: as for ``torch.export.export``.
    ``progress``: called with the name of each stage as it starts (the CLI shows it).

    ``decide``: "always" (default) rewrites every matmul the pass can handle; "cost" lets the cost
    model of ``hardware`` (a profile of ``msd.cost``; default: the one for ``target``) keep IREE's
    own lowering for a matmul where MSD is not predicted faster (see docs/targets.md).
    ``min_bits``: the accuracy request in effective bits instead of ``slices``: the fewest slices
    that reach it (8 → 1, 16 → 2, 24 → 3).
    """
    return compile_functions({"main": (model, example_inputs, dynamic_shapes)}, target=target, emit=emit,
                             extra_flags=extra_flags, progress=progress, **options)


def compile_functions(
    functions: Mapping[str, tuple],
    *,
    target: str = "llvm-cpu",
    emit: str | None = None,
    extra_flags: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> CompiledModule | str | bytes:
    """Compile several entry points into one artifact, e.g. ``{"prefill": (model, (tokens,), dyn),
    "decode": (step_model, (token, cache))}``: each value is ``(model, example_inputs[,
    dynamic_shapes])``.  Weights with the same torch name and the same bytes are stored once and
    shared.  ``options``: the fields of :class:`~msd.compiler.pipeline.options.CompileOptions` (as
    for :func:`compile`)."""
    opts = CompileOptions.from_kwargs(options)
    step = progress or (lambda _stage: None)
    tgt = resolve_target(target)
    cost_target = opts.cost_target(target)
    slices = opts.effective_slices
    if emit is not None and emit not in STAGES:
        raise ValueError(f"emit={emit!r} is not a stage (choose one of {', '.join(STAGES)})")
    if not functions or not all(isinstance(n, str) and n.isidentifier() for n in functions):
        raise ValueError(f"function names must be Python identifiers, got {list(functions)}")
    if emit != "torch":
        worker.prewarm()  # IREE runs in a worker process (compiler/pipeline/worker.py): it starts while we export
    step("export")
    programs = {}
    for name, spec in functions.items():
        if not isinstance(spec, tuple) or len(spec) not in (2, 3):
            raise TypeError(f"functions[{name!r}] must be (model, example_inputs[, dynamic_shapes])")
        model, example_inputs, *dyn = spec
        if isinstance(model, torch.export.ExportedProgram):
            program = model
        else:
            program = export(model, example_inputs, dyn[0] if dyn else None)
        # torchao / PT2E dequantize ops → plain torch arithmetic on the untouched integer tensors.
        program = normalize(program)
        # boolean ops IREE's torch input pipeline cannot lower (transformers' masks) → ones it can
        program = importable(program)
        # msd's own ops (compiler/ops.py) have kernels on CPU targets only; elsewhere their reference
        programs[name] = program if tgt.backend == "llvm-cpu" else decompose_for(program)
    # This process only imports (torch → torch MLIR, in a context of IREE's); the flags go to the worker.
    session = IreeSession(())
    module, params = import_programs(programs, session.context)
    if emit == "torch":
        return _asm(module)
    if tgt.device_targets:  # a target IREE's flags cannot name (cuda:sm_90): spelled out in the module
        with session.context:
            module.attributes["hal.device.targets"] = ir.Attribute.parse(tgt.device_targets)
    step("import")
    flags = [*COMMON_FLAGS, *tgt.flags, *extra_flags]
    request = worker.Request(flags=flags, module=_bytecode(module), stop=emit or "vmfb")
    pass_options = opts.pass_options(tgt, cost_target)
    if pass_options is not None:
        request.pass_name = DECOMPOSE
        request.pass_options = {f.name: getattr(pass_options, f.name) for f in fields(pass_options)}
        request.post_pipeline = POST_MSD_PIPELINE
        request.packer_flags = list(resolve_target("llvm-cpu").flags)
        if cost_target:  # the profile as this process has it (PROFILES may have been extended)
            hw = profile_for(cost_target)
            request.profiles = {hw.name: hw}
            request.pass_options["target"] = hw.name
    result = worker.compile_module(
        request, step,
        lambda crash: worker.advice_for(crash, lambda: _asm(module), extra_flags, target))
    if emit in ("linalg", "msd"):
        return result["text"]
    report = result["report"] or Report(DECOMPOSE)
    vmfb = result["vmfb"]
    if emit == "vmfb":
        return vmfb
    workdir = Path(tempfile.mkdtemp(prefix="msd-"))
    try:  # until the CompiledModule owns it, an exception (or Ctrl-C) must not leave the folder behind
        step("weights")
        write_parameters(workdir / PARAMETERS_FILE, params.tensors, result.get("parameters"), result.get("packer"))
        (workdir / MODULE_FILE).write_bytes(vmfb)
        signatures = {name: (input_specs(p), output_specs(p)) for name, p in programs.items()}
        compiled = CompiledModule(workdir, tgt, signatures, report, slices, decide=opts.decide_record(target, tgt),
                                  attention=result.get("attention"), rows=result.get("rows"))
        weakref.finalize(compiled, shutil.rmtree, workdir, True)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return compiled


def _bytecode(module: ir.Operation) -> bytes:
    buffer = io.BytesIO()
    module.write_bytecode(buffer)
    return buffer.getvalue()


def _asm(module: ir.Operation) -> str:
    return module.get_asm(large_elements_limit=worker.LARGE_ELEMENTS_LIMIT)


class CompiledModule:
    """A compiled model: call it with torch tensors (``cm(x)``, or ``cm.prefill(x)`` when it has
    several functions); ``save`` writes the artifact to a folder."""

    def __init__(self, workdir: Path, target: Target, signatures: dict[str, tuple[list[TensorSpec], list[TensorSpec]]],
                 report: Report, slices: int, decide: dict | None = None, attention: Report | None = None,
                 rows: Report | None = None) -> None:
        self.workdir = workdir
        self.target = target
        self.signatures = signatures
        self.report = report
        # what --msd-attention-kernels did: one decision per msd attention op, the kernel it got
        self.attention = attention
        # what --msd-row-kernels did: one decision per msd row op (norms, activations, RoPE), its kernel
        self.rows = rows
        self.slices = slices
        self.decide = decide or {"policy": "always", "hardware": None, "min_bits": None}
        self._module: Module | None = None
        self._bound: dict[str, Module] = {}

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.signatures[self._only()][0]

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.signatures[self._only()][1]

    def _only(self) -> str:
        if len(self.signatures) != 1:
            raise TypeError(f"this module has several functions ({', '.join(self.signatures)}): call one by name")
        return next(iter(self.signatures))

    @property
    def vmfb(self) -> bytes:
        return (self.workdir / MODULE_FILE).read_bytes()

    @property
    def runs_here(self) -> bool:
        """Whether this machine has the target's device (a CPU target always runs)."""
        return self.target.backend == "llvm-cpu" or device_present(self.target.driver)

    def function(self, name: str) -> Module:
        """The runtime (numpy) callable of one function; the module is loaded once for all."""
        if name not in self.signatures:
            raise AttributeError(f"no function {name!r} (this module has: {', '.join(self.signatures)})")
        if self._module is None:
            if not self.runs_here:
                raise RuntimeError(
                    f"this artifact targets {self.target.name} (IREE driver '{self.target.driver}'), which this"
                    f" machine does not have; save() it and run it where that device is"
                )
            self._module = Module.load(self.workdir / MODULE_FILE, self.workdir / PARAMETERS_FILE,
                                       driver=self.target.driver, function=name,
                                       inputs=self.signatures[name][0])
        if name not in self._bound:
            self._bound[name] = self._module.bind(name, self.signatures[name][0])
        return self._bound[name]

    @property
    def runtime_module(self) -> Module:
        return self.function(self._only())

    def __getattr__(self, name: str):
        signatures = self.__dict__.get("signatures", {})
        if name in signatures:
            return lambda *args: self._call(name, args)
        raise AttributeError(name)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self._call(self._only(), args)

    def _call(self, name: str, args: tuple) -> torch.Tensor | tuple[torch.Tensor, ...]:
        inputs = self.signatures[name][0]
        if len(args) != len(inputs):
            raise TypeError(f"expected {len(inputs)} input tensor(s), got {len(args)}")
        arrays = []
        for i, a in enumerate(args):
            if not isinstance(a, torch.Tensor):
                raise TypeError(f"input {i} must be a torch.Tensor, got {type(a).__name__}")
            arrays.append(to_numpy(a))
        out = self.function(name)(*arrays)
        if isinstance(out, tuple):
            return tuple(to_torch(o) for o in out)
        return to_torch(out)

    def save(self, folder: str | Path, extra_files: dict[str, bytes] | None = None,
             metadata: dict | None = None) -> Path:
        """Write a self-describing artifact: ``module.vmfb``, ``model.irpa`` and ``msd.json``
        (versions, target, function signature with dynamic-dim bounds, per-matmul decisions,
        sha256 of each file).  Load it with ``msd.runtime.load(folder)`` — no torch needed.
        ``extra_files`` (name → bytes) are written beside them and hashed too; ``metadata`` is kept
        in the manifest (``Artifact.metadata``)."""
        import msd

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.workdir / MODULE_FILE, folder / MODULE_FILE)
        shutil.copyfile(self.workdir / PARAMETERS_FILE, folder / PARAMETERS_FILE)
        for name, data in (extra_files or {}).items():
            if Path(name).name != name or name in (MODULE_FILE, PARAMETERS_FILE, "msd.json"):
                raise ValueError(f"extra file name {name!r} must be a plain file name not used by the artifact")
            (folder / name).write_bytes(data)
        t = self.target
        write_manifest(
            folder,
            target={"name": t.name, "backend": t.backend, "arch": t.arch, "driver": t.driver},
            slices=self.slices,
            functions={name: {"inputs": ins, "outputs": outs} for name, (ins, outs) in self.signatures.items()},
            decisions=[d.to_json() for d in self.report.decisions],
            decide=self.decide,
            msd_version=msd.__version__,
            extra_files=tuple(extra_files or ()),
            metadata=metadata,
        )
        return folder


def device_present(driver: str) -> bool:
    """Whether this machine has a device for the IREE runtime driver (e.g. "cuda")."""
    import iree.runtime as rt

    try:
        return bool(rt.get_driver(driver).query_available_devices())
    except (RuntimeError, ValueError):
        return False


__all__ = ["STAGES", "TARGETS", "CompileError", "CompiledModule", "compile", "compile_functions"]
