"""Self-describing artifacts: a folder with ``module.vmfb``, ``model.irpa`` and ``msd.json``.

``msd.json`` records the format version, the msd and IREE versions that built it, the target and
its runtime driver, each function's inputs and outputs (names, dtypes, shapes, dynamic dims with
their bounds), the pass's per-matmul decisions and the sha256 of every file.  :func:`load` checks
all of it before anything runs; nothing here needs torch (torch tensors are accepted and returned
when torch happens to be installed).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from .module import ArtifactError, Module, TensorSpec

FORMAT = "msd-artifact"
FORMAT_VERSION = 1
MODULE_FILE = "module.vmfb"
PARAMETERS_FILE = "model.irpa"
MANIFEST_FILE = "msd.json"
DEVICES_FOR = {"llvm-cpu": ("local-task", "local-sync"), "cuda": ("cuda",), "rocm": ("hip",),
               "vulkan-spirv": ("vulkan",)}  # runtime drivers that can run each backend; first = default
DEVICES = ("local-task", "local-sync", "cuda", "hip", "vulkan")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def write_manifest(folder: Path, *, target: dict[str, str], slices: int,
                   functions: dict[str, dict[str, list[TensorSpec]]], decisions: Sequence[dict],
                   msd_version: str, extra_files: Sequence[str] = (), metadata: dict | None = None,
                   decide: dict | None = None) -> Path:
    """Write ``msd.json`` for the files already in ``folder``.

    ``extra_files``: more files of the artifact (a tokenizer, …), hashed and checked like the module;
    ``metadata``: what a caller needs to use the functions (e.g. generation settings), kept verbatim.
    ``decide``: how the pass decided per matmul (``{"policy": "always" | "cost", "hardware", "min_bits"}``);
    with "cost", each decision also has its shape, format, slices and predicted times.
    """
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "msd_version": msd_version,
        "iree_version": _version("iree-base-compiler"),
        "target": target,
        "slices": slices,
        "functions": {name: {k: [s.to_json() for s in specs] for k, specs in f.items()}
                      for name, f in functions.items()},
        "decide": decide or {"policy": "always", "hardware": None, "min_bits": None},
        "decisions": list(decisions),
        "files": {name: {"sha256": _sha256(folder / name), "bytes": (folder / name).stat().st_size}
                  for name in (MODULE_FILE, PARAMETERS_FILE, *extra_files)},
    }
    if metadata:
        manifest["metadata"] = metadata
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

    def __call__(self, *args: Any) -> Any:
        torch_in = any(type(a).__module__.startswith("torch") for a in args)
        result = self._module(*[_to_numpy(a) for a in args])
        if not torch_in:
            return result
        if isinstance(result, tuple):
            return tuple(_to_torch(r) for r in result)
        return _to_torch(result)

    def __repr__(self) -> str:
        return f"<msd function {self.signature}>"


class Artifact:
    """A loaded artifact folder; ``artifact.main(x)`` (or ``artifact(x)``) runs its function."""

    def __init__(self, folder: Path, manifest: dict, functions: dict[str, Function], device: str) -> None:
        self.folder, self.manifest, self.functions, self.device = folder, manifest, functions, device

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
            raise TypeError(f"the artifact has several functions ({', '.join(self.functions)}): call one by name")
        return next(iter(self.functions.values()))(*args)


def load(path: str | os.PathLike, device: str | None = None, *, verify: bool = True) -> Artifact:
    """Load an artifact folder saved by ``CompiledModule.save``.

    ``device``: an IREE runtime driver (``local-task``, ``cuda``, ``hip``, ``vulkan``); by default
    the one the target needs.  ``verify``: check every file's sha256 against the manifest.
    """
    folder = Path(path)
    mpath = folder / MANIFEST_FILE
    if not mpath.is_file():
        raise ArtifactError(f"{folder} is not an msd artifact: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath} is not valid JSON: {e}") from None
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("format_version"), int):
        raise ArtifactError(f"{mpath} is not an msd artifact manifest")
    if manifest["format_version"] > FORMAT_VERSION:
        raise ArtifactError(
            f"artifact format {manifest['format_version']} is newer than this msd runtime understands"
            f" ({FORMAT_VERSION}): upgrade msd"
        )
    built, have = manifest.get("iree_version", "unknown"), _version("iree-base-runtime")
    if built.split(".")[:2] != have.split(".")[:2]:
        raise ArtifactError(f"artifact built with IREE {built}, but iree-base-runtime {have} is installed:"
                            " module bytecode is only compatible within one IREE release")
    for name, info in manifest.get("files", {}).items():
        f = folder / name
        if not f.is_file():
            raise ArtifactError(f"artifact file missing: {f}")
        if f.stat().st_size != info["bytes"] or (verify and _sha256(f) != info["sha256"]):
            raise ArtifactError(f"{f} was modified after the artifact was saved (sha256 mismatch)")
    target = manifest["target"]
    allowed = DEVICES_FOR[target["backend"]]
    device = device or allowed[0]
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
            module = Module.load(folder / MODULE_FILE, folder / PARAMETERS_FILE, driver=device,
                                 function=fname, inputs=inputs)
        functions[fname] = Function(module.bind(fname, inputs), fname, inputs, outputs)
    return Artifact(folder, manifest, functions, device)


def _to_numpy(a: Any) -> np.ndarray:
    if type(a).__module__.startswith("torch"):
        t = a.detach().cpu().contiguous()
        if str(t.dtype) == "torch.bfloat16":
            import torch

            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    return np.asarray(a)


def _to_torch(a: np.ndarray) -> Any:
    import torch

    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))
