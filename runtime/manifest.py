"""The artifact format: one definition of ``msd.json`` that the writer and the loader share.

An artifact folder holds ``msd.json`` and the files it lists (``module.vmfb``, ``model.irpa``, and
for text generation ``tokenizer.json``), each with its size and sha256.  :data:`MANIFEST` is the
schema of ``msd.json``: every key, its type and allowed values.  :func:`check_manifest` applies it
before anything else is read, the writer applies it to what it is about to write, and the loader
resolves every file through :func:`artifact_file`, which refuses names that are not plain file names
in the folder.  A refusal is an :class:`~msd.errors.ArtifactError` naming the file and the key.

The schema language is small on purpose: :class:`Str`, :class:`Int`, :func:`Bool`, :func:`Float`,
:class:`Opt` (or null), :class:`List`, :class:`Record` (fixed keys; unknown keys are errors) and
:class:`Table` (a mapping with checked keys).  Nothing here needs torch or the compiler.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msd.errors import ArtifactError

FORMAT = "msd-artifact"
# 2: the schema below, checked strictly; generation settings with a ``{user}`` chat template
FORMAT_VERSION = 2
MANIFEST_FILE = "msd.json"
MODULE_FILE = "module.vmfb"
PARAMETERS_FILE = "model.irpa"
REQUIRED_FILES = (MODULE_FILE, PARAMETERS_FILE)
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few KiB; anything near this is not one
# runtime drivers that can run each backend; the first is the default
DEVICES_FOR = {"llvm-cpu": ("local-task", "local-sync"), "cuda": ("cuda",), "rocm": ("hip",),
               "vulkan-spirv": ("vulkan",), "npu": ("xrt",)}
DEVICES = tuple(dict.fromkeys(d for ds in DEVICES_FOR.values() for d in ds))
DTYPE_NAMES = ("f32", "f16", "bf16", "f64", "i8", "ui8", "i16", "i32", "i64", "i1")
# a plain file name: no separators, no "..", no leading dot, no control characters
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
SHA256 = re.compile(r"[0-9a-f]{64}")


# ----------------------------------------------------------------------------------------------
# The schema language


class Schema:
    """A check of one JSON value; ``check`` returns it unchanged or raises ``_Bad``."""

    def check(self, v: Any, at: str) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class _Bad(Exception):
    def __init__(self, at: str, problem: str) -> None:
        super().__init__(f"{at or 'the top level'}: {problem}")


def _kind(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(v), type(v).__name__)


@dataclass(frozen=True)
class Str(Schema):
    choices: tuple[str, ...] = ()
    pattern: re.Pattern | None = None
    max_len: int = 1 << 16

    def check(self, v: Any, at: str) -> Any:
        if not isinstance(v, str):
            raise _Bad(at, f"expected {self.describe()}, got {_kind(v)}")
        if self.choices and v not in self.choices:
            raise _Bad(at, f"{v!r} is not one of {', '.join(map(repr, self.choices))}")
        if len(v) > self.max_len or (self.pattern is not None and not self.pattern.fullmatch(v)):
            raise _Bad(at, f"{v[:80]!r} is not {self.describe()}")
        return v

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(map(repr, self.choices))
        return "a plain file name" if self.pattern is FILE_NAME else "a sha256 hex digest" \
            if self.pattern is SHA256 else "a string"


@dataclass(frozen=True)
class Int(Schema):
    lo: int | None = None
    hi: int | None = None

    def check(self, v: Any, at: str) -> Any:
        if not isinstance(v, int) or isinstance(v, bool):
            raise _Bad(at, f"expected {self.describe()}, got {_kind(v)}")
        if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
            raise _Bad(at, f"{v} is not {self.describe()}")
        return v

    def describe(self) -> str:
        lo, hi = self.lo, self.hi
        return "an integer" + (f" in [{lo}, {hi}]" if lo is not None and hi is not None else
                               f" >= {lo}" if lo is not None else f" <= {hi}" if hi is not None else "")


@dataclass(frozen=True)
class Scalar(Schema):
    """A value ``accepts`` says yes to (a boolean, a finite number)."""

    accepts: Callable[[Any], bool]
    description: str

    def check(self, v: Any, at: str) -> Any:
        if not self.accepts(v):
            raise _Bad(at, f"expected {self.description}, got {_kind(v)}")
        return v

    def describe(self) -> str:
        return self.description


def Bool() -> Scalar:  # noqa: N802 (reads like the other schema constructors)
    return Scalar(lambda v: isinstance(v, bool), "a boolean")


def Float() -> Scalar:  # noqa: N802
    return Scalar(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
                  "a finite number")


@dataclass(frozen=True)
class Opt(Schema):
    inner: Schema

    def check(self, v: Any, at: str) -> Any:
        return None if v is None else self.inner.check(v, at)

    def describe(self) -> str:
        return f"{self.inner.describe()} or null"


@dataclass(frozen=True)
class List(Schema):
    item: Schema
    max_len: int = 1 << 16
    length: int | None = None

    def check(self, v: Any, at: str) -> Any:
        if not isinstance(v, list):
            raise _Bad(at, f"expected a list, got {_kind(v)}")
        if len(v) > self.max_len or (self.length is not None and len(v) != self.length):
            want = self.length if self.length is not None else f"at most {self.max_len}"
            raise _Bad(at, f"has {len(v)} entries, expected {want}")
        for i, x in enumerate(v):
            self.item.check(x, f"{at}[{i}]")
        return v

    def describe(self) -> str:
        return f"a list of {self.item.describe()}"


@dataclass(frozen=True)
class Record(Schema):
    """An object with these keys (``optional`` may be absent); any other key is an error."""

    required: Mapping[str, Schema]
    optional: Mapping[str, Schema] = field(default_factory=dict)
    check_all: Callable[[dict, str], None] | None = None  # cross-key rules, after the keys

    def check(self, v: Any, at: str) -> Any:
        if not isinstance(v, dict):
            raise _Bad(at, f"expected an object, got {_kind(v)}")
        for key in v:
            if key not in self.required and key not in self.optional:
                raise _Bad(at, f"unknown key {key!r} (known: {', '.join([*self.required, *self.optional])})")
        for key, schema in self.required.items():
            if key not in v:
                raise _Bad(at, f"the key {key!r} is missing")
            schema.check(v[key], f"{at}.{key}" if at else key)
        for key, schema in self.optional.items():
            if key in v:
                schema.check(v[key], f"{at}.{key}" if at else key)
        if self.check_all is not None:
            self.check_all(v, at)
        return v

    def describe(self) -> str:
        return "an object"


@dataclass(frozen=True)
class Table(Schema):
    """A JSON object used as a mapping: every key passes ``key``, every value ``value``."""

    key: Str
    value: Schema
    min_len: int = 0
    max_len: int = 1024

    def check(self, v: Any, at: str) -> Any:
        if not isinstance(v, dict):
            raise _Bad(at, f"expected an object, got {_kind(v)}")
        if not self.min_len <= len(v) <= self.max_len:
            raise _Bad(at, f"has {len(v)} entries, expected {self.min_len} to {self.max_len}")
        for k, x in v.items():
            self.key.check(k, f"{at} key")
            self.value.check(x, f"{at}[{k!r}]")
        return v

    def describe(self) -> str:
        return "an object"


# ----------------------------------------------------------------------------------------------
# msd.json


def _tensor_rules(v: dict, at: str) -> None:
    dims, shape = v["dims"], v["shape"]
    if dims and len(dims) != len(shape):
        raise _Bad(at, f"has {len(dims)} dims entries for a rank-{len(shape)} shape")
    for i, s in enumerate(shape):
        d = dims[i] if dims else None
        if s is None and d is None:
            raise _Bad(at, f"dim {i} is dynamic but has no (symbol, min, max) entry")
        if s is not None and d is not None:
            raise _Bad(at, f"dim {i} is static ({s}) but has a dynamic entry")
    for i, d in enumerate(dims):
        if d is not None:
            if not isinstance(d[0], str) or not isinstance(d[1], int) or isinstance(d[1], bool) or d[1] < 0:
                raise _Bad(f"{at}.dims[{i}]", "expected [symbol, min >= 0, max or null]")
            if d[2] is not None and (not isinstance(d[2], int) or isinstance(d[2], bool) or d[2] < d[1]):
                raise _Bad(f"{at}.dims[{i}]", "the max must be an integer >= the min, or null")


class _DimEntry(Schema):
    def check(self, v: Any, at: str) -> Any:
        if v is not None and (not isinstance(v, list) or len(v) != 3):
            raise _Bad(at, f"expected null or [symbol, min, max], got {_kind(v)}")
        return v

    def describe(self) -> str:
        return "null or [symbol, min, max]"


TENSOR = Record({"name": Str(max_len=256), "shape": List(Opt(Int(0, 1 << 40)), max_len=8),
                 "dtype": Str(DTYPE_NAMES), "dims": List(_DimEntry(), max_len=8)}, check_all=_tensor_rules)
FUNCTION = Record({"inputs": List(TENSOR, max_len=4096), "outputs": List(TENSOR, max_len=4096)})
IDENTIFIER = Str(pattern=re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}"))


def _target_rules(v: dict, at: str) -> None:
    if v["driver"] not in DEVICES_FOR[v["backend"]]:
        raise _Bad(f"{at}.driver", f"{v['driver']!r} cannot run a {v['backend']} module"
                                   f" (it runs on {', '.join(DEVICES_FOR[v['backend']])})")


TARGET = Record({"name": Str(max_len=256), "backend": Str(tuple(DEVICES_FOR)), "arch": Str(max_len=256),
                 "driver": Str(DEVICES)}, check_all=_target_rules)
DECISION = Record(
    {"op": Str(max_len=256), "location": Str(max_len=4096), "rewritten": Bool(), "reason": Str()},
    {"shape": Str(max_len=256), "format": Str(max_len=256), "slices": Int(0, 3), "hardware": Str(max_len=256),
     "baseline_s": Opt(Float()), "msd_s": Opt(Float())},
)
DECIDE = Record({"policy": Str(("always", "cost")), "hardware": Opt(Str(max_len=256)), "min_bits": Opt(Int(1, 64))})
FILE = Record({"sha256": Str(pattern=SHA256), "bytes": Int(0)})


def _chat_template_rules(v: str, at: str) -> None:
    if v.count("{user}") != 1:
        raise _Bad(at, "must hold the marker {user} exactly once")


class _ChatTemplate(Str):
    def check(self, v: Any, at: str) -> Any:
        super().check(v, at)
        _chat_template_rules(v, at)
        return v


# ``metadata["generation"]``: how ``msd.runtime.generate.TextGenerator`` drives prefill and decode
GENERATION = Record({
    "max_ctx": Int(3, 1 << 24),
    "kv_cache": Str(("float", "f16", "int8")),
    # one token's entry of each cache tensor (the host cache is [max_ctx, *shape])
    "cache": List(Record({"shape": List(Int(1, 1 << 20), max_len=8), "dtype": Str(DTYPE_NAMES)}), max_len=64),
    "stop_ids": List(Int(0), max_len=64),
    "chat_template": _ChatTemplate(),
    "source": Str(max_len=4096),
}, {"batch": Int(2, 1024)})  # slots of the batched decode step "decode_batch" (absent: none)
METADATA = Record({}, {"generation": GENERATION})


def _manifest_rules(v: dict, at: str) -> None:
    for name in REQUIRED_FILES:
        if name not in v["files"]:
            raise _Bad("files", f"{name} is not listed (every file the loader reads must be listed and hashed)")
    if MANIFEST_FILE in v["files"]:
        raise _Bad("files", f"{MANIFEST_FILE} cannot list itself")
    if "generation" in v.get("metadata", {}):
        missing = {"prefill", "decode"} - set(v["functions"])
        if missing:
            raise _Bad("functions", f"a text-generation artifact needs {', '.join(sorted(missing))}")
        if "batch" in v["metadata"]["generation"] and "decode_batch" not in v["functions"]:
            raise _Bad("functions", "a text-generation artifact with a batch needs decode_batch")
        if "tokenizer.json" not in v["files"]:
            raise _Bad("files", "a text-generation artifact must list tokenizer.json")


MANIFEST = Record(
    {
        "format": Str((FORMAT,)),
        "format_version": Int(FORMAT_VERSION, FORMAT_VERSION),
        "msd_version": Str(max_len=64),
        "iree_version": Str(max_len=64),
        "target": TARGET,
        "slices": Int(0, 3),
        "functions": Table(IDENTIFIER, FUNCTION, min_len=1, max_len=64),
        "decide": DECIDE,
        "decisions": List(DECISION, max_len=1 << 16),
        "files": Table(Str(pattern=FILE_NAME), FILE, max_len=64),
    },
    {"metadata": METADATA},
    check_all=_manifest_rules,
)


def check(schema: Schema, value: Any, where: str) -> Any:
    """``value`` if it satisfies ``schema``; else an ArtifactError naming ``where`` and the key."""
    try:
        return schema.check(value, "")
    except _Bad as e:
        raise ArtifactError(f"{where}: {e}") from None


def parse_manifest(folder: Path) -> dict:
    """Read and check ``folder/msd.json``: the format and version first (to say "too new" or "too old"
    rather than a key error), then the whole schema."""
    path = folder / MANIFEST_FILE
    _regular_file_in(folder, MANIFEST_FILE)
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path} is {size} bytes: too large for an msd manifest")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ArtifactError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an msd artifact manifest (no \"format\": \"{FORMAT}\")")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ArtifactError(f"{path}: format_version must be an integer")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format {version} is newer than this msd runtime understands"
                            f" ({FORMAT_VERSION}): upgrade msd")
    if version < FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format {version} was written by an older msd (this one reads"
                            f" format {FORMAT_VERSION}): compile the model again")
    return check(MANIFEST, manifest, str(path))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _regular_file_in(folder: Path, name: str) -> Path:
    """``folder/name`` after checking that ``name`` is a plain file name and that the path is a regular
    file whose real location is inside ``folder`` (a symlink may point within the folder, not out)."""
    if not isinstance(name, str) or not FILE_NAME.fullmatch(name):
        raise ArtifactError(f"{folder}: {name!r} is not a plain file name inside the artifact folder")
    path = folder / name
    try:
        st = os.stat(path)  # follows symlinks: the file that would be read
    except FileNotFoundError:
        raise ArtifactError(f"artifact file missing: {path}") from None
    except OSError as e:
        raise ArtifactError(f"cannot read artifact file {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"{path} is not a regular file")
    real, root = os.path.realpath(path), os.path.realpath(folder)
    if os.path.commonpath([real, root]) != root:
        raise ArtifactError(f"{path} leads outside the artifact folder (to {real})")
    return path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def artifact_file(folder: Path, manifest: dict, name: str) -> Path:
    """The path of a file the manifest lists (checked by :func:`verify_files`); anything else is refused."""
    if name not in manifest["files"]:
        raise ArtifactError(f"{folder / MANIFEST_FILE} does not list {name}: msd reads only listed, hashed files")
    return _regular_file_in(folder, name)


def verify_files(folder: Path, manifest: dict, *, hashes: bool = True) -> None:
    """Every listed file exists in the folder with its recorded size (and sha256 when ``hashes``)."""
    for name, info in manifest["files"].items():
        path = _regular_file_in(folder, name)
        if path.stat().st_size != info["bytes"] or (hashes and sha256_of(path) != info["sha256"]):
            raise ArtifactError(f"{path} was modified after the artifact was saved (sha256 mismatch)")


def build_manifest(folder: Path, *, msd_version: str, iree_version: str, target: dict, slices: int,
                   functions: dict, decide: dict, decisions: Sequence[dict], files: Sequence[str],
                   metadata: dict | None) -> dict:
    """The manifest for the files already in ``folder``, checked against the schema (the writer cannot
    write what the loader would refuse)."""
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "msd_version": msd_version,
        "iree_version": iree_version, "target": target, "slices": slices, "functions": functions,
        "decide": decide, "decisions": list(decisions),
        "files": {name: {"sha256": sha256_of(folder / name), "bytes": (folder / name).stat().st_size}
                  for name in files},
    }
    if metadata:
        manifest["metadata"] = metadata
    # the same check the loader makes; a failure here is msd's own bug, said as such
    try:
        MANIFEST.check(json.loads(json.dumps(manifest)), "")
    except _Bad as e:
        raise ArtifactError(f"msd would write an invalid manifest ({e}): please report this") from None
    return manifest


__all__ = ["DEVICES", "DEVICES_FOR", "FORMAT", "FORMAT_VERSION", "GENERATION", "MANIFEST", "MANIFEST_FILE",
           "MODULE_FILE", "PARAMETERS_FILE", "artifact_file", "build_manifest", "check", "parse_manifest",
           "sha256_of", "verify_files"]
