"""Self-describing artifacts: a folder with ``module.vmfb``, ``model.irpa`` and ``msd.json``.

``msd.json`` records the format version, the msd and IREE versions that built it, the target and
its runtime driver, each function's inputs and outputs (names, dtypes, shapes, dynamic dims with
their bounds), the pass's per-matmul decisions and the sha256 of every file.  :func:`load` checks
all of it before anything runs; nothing here needs torch (torch tensors are accepted and returned
when torch happens to be installed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from msd.errors import ArtifactError, DeviceError, OptionError

from .manifest import (
    DEVICES,
    DEVICES_FOR,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    MODULE_FILE,
    PARAMETERS_FILE,
    artifact_file,
    build_manifest,
    parse_manifest,
    verify_files,
)
from .module import Module, TensorSpec

__all__ = ["DEVICES", "DEVICES_FOR", "FORMAT", "FORMAT_VERSION", "MANIFEST_FILE", "MODULE_FILE", "PARAMETERS_FILE",
           "Artifact", "Function", "load", "to_numpy", "to_torch", "write_manifest"]


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def write_manifest(folder: Path, *, target: dict[str, str], slices: int,
                   functions: dict[str, dict[str, list[TensorSpec]]], decisions: Sequence[dict],
                   msd_version: str, extra_files: Sequence[str] = (), metadata: dict | None = None,
                   decide: dict | None = None) -> Path:
    """Write ``msd.json`` for the files already in ``folder`` (schema: ``msd.runtime.manifest``).

    ``extra_files``: more files of the artifact (a tokenizer, …), hashed and checked like the module;
    ``metadata``: what a caller needs to use the functions (e.g. generation settings), checked against
    the schema too.  ``decide``: how the pass decided per matmul (``{"policy": "always" | "cost",
    "hardware", "min_bits"}``); with "cost", each decision also has its shape, format, slices and
    predicted times.
    """
    manifest = build_manifest(
        folder, msd_version=msd_version, iree_version=_version("iree-base-compiler"), target=target,
        slices=slices,
        functions={name: {k: [s.to_json() for s in specs] for k, specs in f.items()} for name, f in functions.items()},
        decide=decide or {"policy": "always", "hardware": None, "min_bits": None},
        decisions=decisions, files=(MODULE_FILE, PARAMETERS_FILE, *extra_files), metadata=metadata,
    )
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2))
    return path


class Function:
    """One function of a loaded artifact: call it with numpy arrays (or torch tensors)."""

    def __init__(self, module: Module, name: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
        self.name, self.inputs, self.outputs, self._module = name, inputs, outputs, module

    @property
    def signature(self) -> str:
        from .module import signature

        outs = ", ".join(s.describe() for s in self.outputs)
        return f"{signature(self.name, self.inputs)} -> ({outs})"

    @property
    def host_device(self) -> object | None:
        """The module's IREE device when it shares the host's memory (``Module.host_device``): a KV cache
        imported into it is read in place (``msd.runtime.generate.KVCache``)."""
        return self._module.host_device

    def __call__(self, *args: Any) -> Any:
        import iree.runtime as rt

        torch_in = any(type(a).__module__.startswith("torch") for a in args)
        # a device buffer view (KVCache.past on a host-sharing device) goes through as it is
        result = self._module(*[a if isinstance(a, rt.HalBufferView) else to_numpy(a) for a in args])
        if not torch_in:
            return result
        if isinstance(result, tuple):
            return tuple(to_torch(r) for r in result)
        return to_torch(result)

    def __repr__(self) -> str:
        return f"<msd function {self.signature}>"


class Artifact:
    """A loaded artifact folder; ``artifact.main(x)`` (or ``artifact(x)``) runs its function."""

    def __init__(self, folder: Path, manifest: dict, functions: dict[str, Function], device: str) -> None:
        self.folder, self.manifest, self.functions, self.device = folder, manifest, functions, device

    def file(self, name: str) -> Path:
        """The path of a file the manifest lists (and :func:`load` checked); any other name is refused."""
        return artifact_file(self.folder, self.manifest, name)

    @property
    def metadata(self) -> dict:
        """What the compiler recorded for using the functions (``{}`` when nothing)."""
        return self.manifest.get("metadata", {})

    def __getattr__(self, name: str) -> Function:
        functions = self.__dict__.get("functions", {})
        if name in functions:
            return functions[name]
        raise AttributeError(f"the artifact has no function {name!r} (it has: {', '.join(functions)})")

    def __call__(self, *args: Any) -> Any:
        if len(self.functions) != 1:
            raise OptionError(f"the artifact has several functions ({', '.join(self.functions)}): call one by name")
        return next(iter(self.functions.values()))(*args)


def load(path: str | os.PathLike, device: str | None = None, *, verify: bool = True,
         batch_caller: bool = True) -> Artifact:
    """Load an artifact folder saved by ``CompiledModule.save``.

    ``msd.json`` is checked against the format's schema before anything else is read, then every file
    it lists (plain names inside the folder only) against its size and sha256; only listed files are
    ever opened.  ``device``: an IREE runtime driver (``local-task``, ``cuda``, ``hip``, ``vulkan``); by
    default the one the target needs.  ``verify=False`` skips the sha256 (sizes are still checked).
    ``batch_caller=False``: calls leave the calling thread's scheduling policy alone
    (:func:`msd.runtime.module.batch_caller`).
    Every refusal is an :class:`~msd.errors.ArtifactError` naming the file and the problem.
    """
    folder = Path(path)
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise ArtifactError(f"{folder} {what}: an msd artifact is a folder with {MANIFEST_FILE}")
    if not (folder / MANIFEST_FILE).exists():
        raise ArtifactError(f"{folder} is not an msd artifact: {MANIFEST_FILE} is missing")
    manifest = parse_manifest(folder)
    built, have = manifest["iree_version"], _version("iree-base-runtime")
    if built.split(".")[:2] != have.split(".")[:2]:
        raise ArtifactError(f"artifact built with IREE {built}, but iree-base-runtime {have} is installed:"
                            " module bytecode is only compatible within one IREE release")
    verify_files(folder, manifest, hashes=verify)
    target = manifest["target"]
    allowed = DEVICES_FOR[target["backend"]]
    device = device or target["driver"]
    if device not in DEVICES:
        raise ArtifactError(f"unknown device {device!r} (known: {', '.join(DEVICES)})")
    if device not in allowed:
        raise ArtifactError(f"the artifact was compiled for {target['name']}, which runs on"
                            f" {' or '.join(allowed)}, not on '{device}'")
    functions, module = {}, None
    for fname, f in manifest["functions"].items():
        inputs = [TensorSpec.from_json(s) for s in f["inputs"]]
        outputs = [TensorSpec.from_json(s) for s in f["outputs"]]
        if module is None:  # load once; every function shares the weights
            try:
                module = Module.load(artifact_file(folder, manifest, MODULE_FILE),
                                     artifact_file(folder, manifest, PARAMETERS_FILE), driver=device,
                                     function=fname, inputs=inputs, batch_caller=batch_caller)
            except DeviceError as e:
                raise DeviceError(f"{folder} was compiled for {target['name']}, which needs a device of IREE's"
                                    f" '{device}' driver; this machine has none ({e})") from None
        functions[fname] = Function(module.bind(fname, inputs), fname, inputs, outputs)
    return Artifact(folder, manifest, functions, device)


def to_numpy(a: Any) -> np.ndarray:
    """A torch tensor (detached, on the CPU; bf16 through an int16 view, as numpy has no bf16 of its own) or
    anything array-like → numpy.  torch is not imported here unless a tensor is passed."""
    if type(a).__module__.startswith("torch"):
        t = a.detach().cpu().contiguous()
        if str(t.dtype) == "torch.bfloat16":
            import torch

            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    return np.asarray(a)


def to_torch(a: np.ndarray) -> Any:
    """numpy → a torch tensor sharing its memory when contiguous (``ml_dtypes.bfloat16`` → ``torch.bfloat16``);
    imports torch."""
    import torch

    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))
