"""``msd.compiler.models.gguf_file``: a strict reader of the GGUF container (versions 2 and 3, little-endian).

``GGUFFile(path)`` parses the header, every metadata key/value and the tensor table, and checks them
before any tensor data is touched:

- every count, string length and array length is checked against the bytes left in the file before
  anything is allocated for it (a header claiming 2**60 entries is refused, not attempted);
- value type ids must be GGUF value types, tensor type ids known GGML types (an unknown id is named);
- tensors have 1..4 dimensions, all positive, a row length that is a multiple of the type's block
  size, an offset aligned to ``general.alignment``, bytes inside the file and no overlap with
  another tensor; duplicate tensor names and duplicate metadata keys are refused.

Every refusal is a :class:`msd.errors.GGUFError` (:class:`~msd.errors.UnsupportedGGUFError` for a
well-formed file msd does not read, e.g. version 1 or big-endian) whose message starts with the path.
Tensor bytes are then read on demand as read-only numpy views of a memory map (``np.memmap`` closes
its file descriptor once mapped; the mapping itself lives as long as the views do).

Layout (all little-endian): ``b"GGUF"``, u32 version, u64 tensor count, u64 KV count; per KV a
string key, u32 value type and the value; per tensor a string name, u32 n_dims, u64 dims (innermost
first), u32 GGML type, u64 offset relative to the data section; padding to the alignment; tensor data.
A string is a u64 byte length + UTF-8 bytes; an array a u32 item type + u64 count + the items.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msd.errors import GGUFError, UnsupportedGGUFError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_KEY_BYTES = 65535  # the spec's limit on metadata keys
MAX_NAME_BYTES = 64  # the spec's limit on tensor names (llama.cpp's GGML_MAX_NAME)
MAX_ARRAY_DEPTH = 8  # arrays of arrays nest at most this deep

# GGUF value types: id -> (name, struct format, size in bytes); string (8) and array (9) are separate
_SCALARS: dict[int, tuple[str, str, int]] = {
    0: ("uint8", "B", 1), 1: ("int8", "b", 1), 2: ("uint16", "H", 2), 3: ("int16", "h", 2),
    4: ("uint32", "I", 4), 5: ("int32", "i", 4), 6: ("float32", "f", 4), 7: ("bool", "B", 1),
    10: ("uint64", "Q", 8), 11: ("int64", "q", 8), 12: ("float64", "d", 8),
}
STRING, ARRAY = 8, 9
INT_TYPES = frozenset({"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64"})
FLOAT_TYPES = frozenset({"float32", "float64"})

# GGML tensor types: id -> (name, elements per block, bytes per block)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}

_KINDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "a bool"}
_REQUIRED: Any = object()


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One entry of the tensor table, already checked against the file."""

    name: str
    ggml_type: str  # "Q4_0", "F32", ...
    type_id: int
    shape: tuple[int, ...]  # GGUF order: row length (innermost) first
    offset: int  # absolute byte offset of the data in the file
    nbytes: int
    row_bytes: int  # bytes per row of ``shape[0]`` elements
    source: GGUFFile = field(repr=False, compare=False)

    @property
    def torch_shape(self) -> tuple[int, ...]:
        """``shape`` reversed: rows first, row length last."""
        return tuple(reversed(self.shape))

    def data(self) -> np.ndarray:
        """The raw bytes, a read-only uint8 view ``[rows, row_bytes]`` of the file."""
        return self.source._bytes(self.offset, self.nbytes).reshape(self.nbytes // self.row_bytes, self.row_bytes)


class _Cursor:
    """Bounds-checked little-endian reads from the mapped file; every read that would run past the
    end raises :class:`GGUFError` saying the file is truncated."""

    def __init__(self, path: str, buf: memoryview) -> None:
        self.path, self.buf, self.size, self.pos = path, buf, len(buf), 0

    def need(self, n: int, what: str) -> int:
        start = self.pos
        if n > self.size - start:
            raise GGUFError(f"{self.path} is truncated: {what} needs bytes {start}..{start + n - 1}"
                            f" but the file has {self.size} bytes")
        self.pos = start + n
        return start

    def unpack(self, fmt: str, n: int, what: str) -> Any:
        return struct.unpack_from("<" + fmt, self.buf, self.need(n, what))[0]

    def u32(self, what: str) -> int:
        return int(self.unpack("I", 4, what))

    def u64(self, what: str) -> int:
        return int(self.unpack("Q", 8, what))

    def fits(self, count: int, item_bytes: int, what: str) -> None:
        """Refuse ``count`` items of at least ``item_bytes`` each when the rest of the file cannot hold them."""
        left = self.size - self.pos
        if count > left // item_bytes:
            raise GGUFError(f"{self.path} is truncated or corrupted: {what} claims {count} entries of at least"
                            f" {item_bytes} bytes each, but only {left} bytes follow offset {self.pos}")

    def string(self, what: str, limit: int | None = None) -> str:
        n = self.u64(f"the length of {what}")
        if limit is not None and n > limit:
            raise GGUFError(f"{self.path}: {what} at offset {self.pos - 8} is {n} bytes long (at most {limit} allowed)")
        start = self.need(n, what)
        try:
            return str(self.buf[start:start + n], "utf-8")
        except UnicodeDecodeError as e:
            raise GGUFError(f"{self.path}: {what} at offset {start} is not valid UTF-8 ({e.reason})") from None


class GGUFFile:
    """A parsed and validated GGUF file.

    ``fields``: metadata key → Python value (int, float, bool, str, or list for arrays);
    ``field_types``: key → GGUF type name ("uint32", "string", "array[string]", "array[array[int32]]");
    ``tensors``: :class:`GGUFTensorInfo` in file order; ``version``, ``alignment``, ``data_start``
    (absolute offset of the data section), ``tensor_info_start`` / ``tensor_info_end`` (the byte range of
    the tensor table).  Usable as a context manager; :meth:`close` drops the memory map.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self.fields: dict[str, Any] = {}
        self.field_types: dict[str, str] = {}
        self.tensors: list[GGUFTensorInfo] = []
        self._by_name: dict[str, GGUFTensorInfo] = {}
        try:
            self.size = os.path.getsize(path)
            self._map: np.ndarray | None = (np.memmap(path, dtype=np.uint8, mode="r") if self.size
                                            else np.zeros(0, np.uint8))
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot read the file ({e.strerror or e})") from e
        buf = memoryview(self._map)
        try:
            self._parse(_Cursor(self.path, buf))
        finally:
            try:
                buf.release()
            except BufferError:  # a numpy view of it is still alive; it goes when that does
                pass

    # -- parsing ---------------------------------------------------------------------------------

    def _parse(self, c: _Cursor) -> None:
        p = self.path
        head = bytes(c.buf[:4])
        if head != MAGIC:
            if len(head) < 4 and MAGIC.startswith(head):
                c.need(4, "the magic number")
            raise GGUFError(f"{p} is not a GGUF file: it starts with {head!r}, not {MAGIC!r}")
        c.pos = 4
        version = c.u32("the version")
        if version not in VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            if version & 0xFFFF == 0 and swapped in (1, 2, 3):
                raise UnsupportedGGUFError(f"{p} is a big-endian GGUF file, which msd does not read")
            if version == 1:
                raise UnsupportedGGUFError(f"{p} is GGUF version 1, which msd does not read (versions 2 and 3)")
            raise GGUFError(f"{p} has unknown GGUF version {version} (msd reads versions 2 and 3)")
        self.version = version
        n_tensors = c.u64("the tensor count")
        n_kv = c.u64("the metadata count")
        c.fits(n_kv, 8 + 4 + 1, "the metadata count")  # key length, value type, smallest value
        for i in range(n_kv):
            at = c.pos
            key = c.string(f"metadata key #{i}", MAX_KEY_BYTES)
            if not key:
                raise GGUFError(f"{p}: metadata key #{i} at offset {at} is empty")
            if key in self.fields:
                raise GGUFError(f"{p}: metadata key {key!r} appears twice (again at offset {at})")
            vtype = c.u32(f"the value type of metadata key {key!r}")
            self.fields[key], self.field_types[key] = self._value(c, vtype, f"the value of metadata key {key!r}", 0)

        self.alignment = DEFAULT_ALIGNMENT
        if "general.alignment" in self.fields:
            align = self.fields["general.alignment"]
            if self.field_types["general.alignment"] not in INT_TYPES or align < 1 or align & (align - 1):
                raise GGUFError(f"{p}: general.alignment is {align!r} ({self.field_types['general.alignment']}),"
                                f" expected a power of two")
            self.alignment = align

        self.tensor_info_start = c.pos
        c.fits(n_tensors, 8 + 4 + 8 + 4 + 8, "the tensor count")  # name length, n_dims, one dim, type, offset
        seen: set[str] = set()
        raw = [self._tensor_info(c, i, seen) for i in range(n_tensors)]
        self.tensor_info_end = c.pos
        self.data_start = -(-c.pos // self.alignment) * self.alignment
        for name, dims, type_id, rel, nbytes, row_bytes in raw:
            if rel % self.alignment:
                raise GGUFError(f"{p}: tensor {name!r} has offset {rel}, not a multiple of the alignment"
                                f" {self.alignment}")
            start = self.data_start + rel
            if start + nbytes > self.size:
                raise GGUFError(f"{p} is truncated or corrupted: tensor {name!r} needs bytes {start}.."
                                f"{start + nbytes - 1} but the file has {self.size} bytes")
            t = GGUFTensorInfo(name, GGML_TYPES[type_id][0], type_id, dims, start, nbytes, row_bytes, self)
            self.tensors.append(t)
            self._by_name[name] = t
        prev: GGUFTensorInfo | None = None
        for t in sorted(self.tensors, key=lambda t: t.offset):
            if prev is not None and t.offset < prev.offset + prev.nbytes:
                raise GGUFError(f"{p}: tensor {t.name!r} (bytes {t.offset}..{t.offset + t.nbytes - 1}) overlaps"
                                f" tensor {prev.name!r} (bytes {prev.offset}..{prev.offset + prev.nbytes - 1})")
            prev = t

    def _value(self, c: _Cursor, vtype: int, what: str, depth: int) -> tuple[Any, str]:
        """One value of GGUF type ``vtype`` at the cursor → (Python value, type name)."""
        if vtype in _SCALARS:
            name, fmt, n = _SCALARS[vtype]
            v = c.unpack(fmt, n, what)
            if name == "bool":
                if v > 1:
                    raise GGUFError(f"{self.path}: {what} is a bool stored as {v} (expected 0 or 1)")
                v = bool(v)
            return v, name
        if vtype == STRING:
            return c.string(what), "string"
        if vtype != ARRAY:
            raise GGUFError(f"{self.path}: {what} has unknown value type id {vtype}")
        if depth >= MAX_ARRAY_DEPTH:
            raise GGUFError(f"{self.path}: {what} nests arrays more than {MAX_ARRAY_DEPTH} deep")
        itype = c.u32(f"the item type of {what}")
        count = c.u64(f"the length of {what}")
        if itype in _SCALARS:
            name, fmt, n = _SCALARS[itype]
            c.fits(count, n, what)
            start = c.need(count * n, what)
            dtype = np.dtype("<" + fmt)
            items = np.frombuffer(c.buf, dtype=dtype, count=count, offset=start)
            if name == "bool":
                if count and int(items.max()) > 1:
                    raise GGUFError(f"{self.path}: {what} holds a bool stored as {int(items.max())} (expected 0 or 1)")
                items = items.astype(bool)
            values = items.tolist()
            del items
            return values, f"array[{name}]"
        if itype == STRING:
            c.fits(count, 8, what)
            return self._strings(c, count, what), "array[string]"
        if itype == ARRAY:
            c.fits(count, 4 + 8, what)
            out, inner = [], "array"
            for i in range(count):
                v, inner = self._value(c, ARRAY, f"{what}[{i}]", depth + 1)
                out.append(v)
            return out, f"array[{inner}]"
        raise GGUFError(f"{self.path}: {what} is an array of unknown value type id {itype}")

    def _strings(self, c: _Cursor, count: int, what: str) -> list[str]:
        """``count`` strings at the cursor (the hot loop of a vocabulary: no per-item message building)."""
        buf, size, pos, out = c.buf, c.size, c.pos, []
        unpack = struct.Struct("<Q").unpack_from
        for i in range(count):
            n = unpack(buf, pos)[0] if size - pos >= 8 else size
            if n > size - pos - 8:
                c.pos = pos
                c.string(f"{what}[{i}]")  # raises the truncation error
            try:
                out.append(str(buf[pos + 8:pos + 8 + n], "utf-8"))
            except UnicodeDecodeError as e:
                raise GGUFError(f"{self.path}: {what}[{i}] at offset {pos + 8} is not valid UTF-8"
                                f" ({e.reason})") from None
            pos += 8 + n
        c.pos = pos
        return out

    def _tensor_info(self, c: _Cursor, i: int, seen: set[str]) -> tuple[str, tuple[int, ...], int, int, int, int]:
        """Entry ``i`` of the tensor table → (name, dims, type id, relative offset, bytes, bytes per row)."""
        p = self.path
        at = c.pos
        name = c.string(f"the name of tensor #{i}", MAX_NAME_BYTES)
        if not name:
            raise GGUFError(f"{p}: tensor #{i} at offset {at} has an empty name")
        if name in seen:
            raise GGUFError(f"{p}: tensor {name!r} appears twice in the tensor table (again at offset {at})")
        seen.add(name)
        n_dims = c.u32(f"the dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFError(f"{p}: tensor {name!r} has {n_dims} dimensions (expected 1 to {MAX_DIMS})")
        dims = tuple(c.u64(f"dimension {d} of tensor {name!r}") for d in range(n_dims))
        if any(d < 1 or d >= 2**63 for d in dims):
            raise GGUFError(f"{p}: tensor {name!r} has dimensions {list(dims)}; each must be positive")
        type_id = c.u32(f"the GGML type of tensor {name!r}")
        if type_id not in GGML_TYPES:
            raise GGUFError(f"{p}: tensor {name!r} has unknown GGML type id {type_id}")
        tname, block, block_bytes = GGML_TYPES[type_id]
        if dims[0] % block:
            raise GGUFError(f"{p}: tensor {name!r} of type {tname} has rows of {dims[0]} elements, not a multiple"
                            f" of its block size {block}")
        rel = c.u64(f"the data offset of tensor {name!r}")
        row_bytes = dims[0] // block * block_bytes
        return name, dims, type_id, rel, row_bytes * math.prod(dims[1:]), row_bytes

    # -- access ----------------------------------------------------------------------------------

    def _bytes(self, offset: int, nbytes: int) -> np.ndarray:
        if self._map is None:
            raise GGUFError(f"{self.path}: the file has been closed")
        return self._map[offset:offset + nbytes].view(np.ndarray)

    def tensor(self, name: str) -> GGUFTensorInfo | None:
        """The tensor called ``name``, or None."""
        return self._by_name.get(name)

    def _typed(self, key: str, kind: str, default: Any) -> Any:
        if key not in self.fields:
            if default is _REQUIRED:
                raise UnsupportedGGUFError(f"{self.path}: GGUF metadata has no {key!r}")
            return default
        value, vtype = self.fields[key], self.field_types[key]
        ok = {"int": vtype in INT_TYPES, "float": vtype in INT_TYPES or vtype in FLOAT_TYPES,
              "str": vtype == "string", "bool": vtype == "bool"}[kind]
        if not ok:
            raise GGUFError(f"{self.path}: metadata key {key!r} has type {vtype}, expected {_KINDS[kind]}")
        return float(value) if kind == "float" else value

    def get_int(self, key: str, default: Any = _REQUIRED) -> int:
        """Integer metadata ``key`` (any integer type); ``default`` when absent, else a missing key is an error."""
        return self._typed(key, "int", default)

    def get_float(self, key: str, default: Any = _REQUIRED) -> float:
        """Float metadata ``key`` (float or integer types) as a Python float."""
        return self._typed(key, "float", default)

    def get_str(self, key: str, default: Any = _REQUIRED) -> str:
        """String metadata ``key``."""
        return self._typed(key, "str", default)

    def get_bool(self, key: str, default: Any = _REQUIRED) -> bool:
        """Bool metadata ``key``."""
        return self._typed(key, "bool", default)

    def get_array(self, key: str, kind: str, default: Any = _REQUIRED) -> list[Any]:
        """Array metadata ``key`` whose items are of ``kind`` ("int", "float", "str" or "bool")."""
        if key not in self.fields:
            if default is _REQUIRED:
                raise UnsupportedGGUFError(f"{self.path}: GGUF metadata has no {key!r}")
            return default
        vtype = self.field_types[key]
        item = vtype[6:-1] if vtype.startswith("array[") else None
        ok = item is not None and {"int": item in INT_TYPES, "float": item in INT_TYPES or item in FLOAT_TYPES,
                                   "str": item == "string", "bool": item == "bool"}[kind]
        if not ok:
            raise GGUFError(f"{self.path}: metadata key {key!r} has type {vtype}, expected an array of"
                            f" {_KINDS[kind].split(' ', 1)[1]}s")
        return self.fields[key]

    def close(self) -> None:
        """Drop the memory map (views already returned by ``data()`` stay valid)."""
        self._map = None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"GGUFFile({self.path!r}, version={self.version}, {len(self.fields)} metadata keys,"
                f" {len(self.tensors)} tensors)")


def open_gguf(path: str | Path | GGUFFile) -> GGUFFile:
    """``path`` parsed as a :class:`GGUFFile` (an already parsed one is returned as is)."""
    return path if isinstance(path, GGUFFile) else GGUFFile(path)


__all__ = ["GGML_TYPES", "GGUFFile", "GGUFTensorInfo", "open_gguf"]
