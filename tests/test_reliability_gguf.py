"""GGUF reading as a strict front end: every bad file is refused with an :class:`msd.errors.GGUFError`
naming the file and the problem, never with a numpy / struct / tokenizers exception or an unbounded
allocation.  Specific bad inputs first, then property-based truncation and byte corruption of a tiny
valid llama file (written once per module with ``gguf.GGUFWriter``)."""

from __future__ import annotations

import os
import struct
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the tiny test files are written with the 'gguf' package")
pytest.importorskip("tokenizers", reason="the GGUF tokenizer needs the 'tokenizers' package")

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_gguf import write_tiny_gguf  # noqa: E402

from msd.compiler.models import gguf as G  # noqa: E402
from msd.compiler.models.gguf_file import GGML_TYPES, GGUFFile  # noqa: E402
from msd.compiler.models.llama import LlamaModel  # noqa: E402
from msd.errors import GGUFError, MsdError, UnsupportedGGUFError  # noqa: E402

# ----------------------------------------------------------------------------------------------
# A GGUF serializer of the test's own, so that a file can be rebuilt with one thing changed

_VTYPES = {"uint8": (0, "B"), "int8": (1, "b"), "uint16": (2, "H"), "int16": (3, "h"), "uint32": (4, "I"),
           "int32": (5, "i"), "float32": (6, "f"), "bool": (7, "?"), "string": (8, ""), "array": (9, ""),
           "uint64": (10, "Q"), "int64": (11, "q"), "float64": (12, "d")}
_TYPE_IDS = {name: i for i, (name, _, _) in GGML_TYPES.items()}

KV = tuple[str, str, Any]  # key, GGUF type name ("uint32", "array[string]"), value


@dataclass
class Tensor:
    name: str
    dims: list[int]  # GGUF order
    type_id: int
    data: bytes
    offset: int | None = None  # relative to the data section; None: the next aligned position


@dataclass
class Built:
    data: bytes
    ints: list[tuple[int, int, str]]  # (offset, width, what) of every count / length / type / dim / offset field


def _gstr(s: str | bytes, out: bytearray, ints: list, what: str) -> None:
    b = s.encode() if isinstance(s, str) else s
    ints.append((len(out), 8, f"length of {what}"))
    out += struct.pack("<Q", len(b)) + b


def _value(vtype: str, value: Any, out: bytearray, ints: list, what: str) -> None:
    if vtype.startswith("array["):
        item = vtype[6:-1]
        ints.append((len(out), 4, f"item type of {what}"))
        out += struct.pack("<I", _VTYPES[item.split("[")[0]][0])
        ints.append((len(out), 8, f"length of {what}"))
        out += struct.pack("<Q", len(value))
        for v in value:
            _value(item, v, out, ints, what)
    elif vtype == "string":
        _gstr(value, out, ints, what)
    else:
        out += struct.pack("<" + _VTYPES[vtype][1], value)


def build(kvs: list[KV], tensors: list[Tensor], *, version: int = 3, magic: bytes = b"GGUF",
          alignment: int = 32) -> Built:
    """Serialize a GGUF file: header, metadata, tensor table, padding, data (each tensor padded)."""
    out, ints = bytearray(magic + struct.pack("<I", version)), []
    ints += [(8, 8, "tensor count"), (16, 8, "kv count")]
    out += struct.pack("<QQ", len(tensors), len(kvs))
    for key, vtype, value in kvs:
        _gstr(key, out, ints, f"key {key}")
        ints.append((len(out), 4, f"value type of {key}"))
        out += struct.pack("<I", _VTYPES[vtype.split("[")[0]][0])
        _value(vtype, value, out, ints, key)
    pos = 0
    for t in tensors:
        _gstr(t.name, out, ints, f"name of {t.name}")
        ints.append((len(out), 4, f"n_dims of {t.name}"))
        out += struct.pack("<I", len(t.dims))
        for i, d in enumerate(t.dims):
            ints.append((len(out), 8, f"dim {i} of {t.name}"))
            out += struct.pack("<Q", d)
        ints.append((len(out), 4, f"type of {t.name}"))
        out += struct.pack("<I", t.type_id)
        ints.append((len(out), 8, f"offset of {t.name}"))
        out += struct.pack("<Q", pos if t.offset is None else t.offset)
        pos += -(-len(t.data) // alignment) * alignment
    out += bytes(-len(out) % alignment)
    for t in tensors:
        out += t.data + bytes(-len(t.data) % alignment)
    return Built(bytes(out), ints)


def parts(path: Path) -> tuple[list[KV], list[Tensor]]:
    """The metadata and tensors of a file, as :func:`build` takes them."""
    with GGUFFile(path) as f:
        kvs = [(k, f.field_types[k], v) for k, v in f.fields.items()]
        tensors = [Tensor(t.name, list(t.shape), t.type_id, t.data().tobytes()) for t in f.tensors]
    return kvs, tensors


def write(path: Path, data: bytes) -> Path:
    """``data`` into a fresh file at ``path`` (a new inode: no old memory map sees the change)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------------------------
# Fixtures


@dataclass
class Base:
    path: Path
    data: bytes
    kvs: list[KV]
    tensors: list[Tensor]
    ints: list[tuple[int, int, str]]
    tensor_info: tuple[int, int]  # byte range of the tensor table
    data_start: int
    last_end: int  # end of the last tensor's bytes (what follows is padding)
    work: Path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    d = tmp_path_factory.mktemp("gguf_reliability")
    path = write_tiny_gguf(d / "tiny.gguf", tied=False)
    kvs, tensors = parts(path)
    with GGUFFile(path) as f:
        info = (f.tensor_info_start, f.tensor_info_end)
        last_end = max(t.offset + t.nbytes for t in f.tensors)
        data_start = f.data_start
    built = build(kvs, tensors)
    return Base(path, path.read_bytes(), kvs, tensors, built.ints, info, data_start, last_end, d)


def variant(base: Base, name: str, *, kv: dict[str, tuple[str, Any] | None] | None = None,
            tensor: dict[str, dict[str, Any] | None] | None = None, **kw: Any) -> Path:
    """The base file rebuilt with metadata ``kv`` replaced (None: removed) and tensor fields changed."""
    kv = kv or {}
    kvs = [(k, *kv[k]) if k in kv else (k, t, v) for k, t, v in base.kvs if not (k in kv and kv[k] is None)]
    kvs += [(k, *v) for k, v in kv.items() if v is not None and k not in {x[0] for x in base.kvs}]
    tensors = []
    for t in base.tensors:
        change = (tensor or {}).get(t.name, {})
        if change is None:
            continue
        tensors.append(Tensor(**{**t.__dict__, **change}))
    return write(base.work / name, build(kvs, tensors, **kw).data)


def refused(fn: Any, path: Path, exc: type[Exception] = GGUFError) -> str:
    with pytest.raises(exc) as info:
        fn(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    return msg


# ----------------------------------------------------------------------------------------------
# The parser against the gguf package, and the serializer against GGUFWriter


def test_parser_matches_gguf_reader_and_serializer_round_trips(base) -> None:
    assert build(base.kvs, base.tensors).data == base.data
    r = gguf.GGUFReader(str(base.path))
    with GGUFFile(base.path) as f:
        assert f.version == 3 and f.alignment == 32 and f.data_start == r.data_offset
        for key, field in r.fields.items():
            if not key.startswith("GGUF."):
                ours, theirs = f.fields[key], field.contents()
                assert ours == theirs or np.float32(ours) == np.float32(theirs), key
        assert [t.name for t in f.tensors] == [t.name for t in r.tensors]
        for ours, theirs in zip(f.tensors, r.tensors):
            assert ours.ggml_type == theirs.tensor_type.name and ours.shape == tuple(int(d) for d in theirs.shape)
            assert ours.offset == theirs.data_offset and ours.nbytes == theirs.n_bytes
            assert ours.data().tobytes() == np.asarray(theirs.data).tobytes()
            assert not ours.data().flags.writeable
    with pytest.raises(GGUFError, match="closed"):
        f.tensors[0].data()


def test_version_2_reads_like_3(base) -> None:
    m = G.load_gguf(variant(base, "v2.gguf", version=2))
    assert m.cfg.n_layers == 2 and not m.tied


def test_no_file_descriptor_left_open(base) -> None:
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for _ in range(5):
        G.load_gguf(base.path)
        G.tokenizer_from_gguf(base.path)
        G.special_token_id(base.path, "eos")
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) == fds


# ----------------------------------------------------------------------------------------------
# Specific bad files


def test_truncated_file_names_file_and_tensor(base) -> None:
    cut = base.last_end - 100  # inside the last tensor's bytes
    path = write(base.work / "model.gguf", base.data[:cut])
    msg = refused(G.load_gguf, path)
    assert "is truncated" in msg and "'output.weight' needs bytes" in msg and f"the file has {cut} bytes" in msg
    assert "truncated" in refused(G.tokenizer_from_gguf, path)
    # cut inside the metadata: the item that runs past the end is named
    path = write(base.work / "model.gguf", base.data[:600])
    assert "is truncated: " in refused(G.load_gguf, path) and "tokenizer.ggml.tokens" in refused(G.load_gguf, path)
    assert "is truncated" in refused(G.load_gguf, write(base.work / "empty.gguf", b""))
    assert "is truncated" in refused(G.load_gguf, write(base.work / "gg.gguf", b"GG"))


def test_unreadable_path(base) -> None:
    assert "cannot read the file" in refused(G.load_gguf, base.work / "no-such.gguf")
    assert "cannot read the file" in refused(G.tokenizer_from_gguf, base.work)


def test_bad_magic(base) -> None:
    msg = refused(G.load_gguf, write(base.work / "magic.gguf", b"GGML" + base.data[4:]))
    assert "is not a GGUF file" in msg and "b'GGML'" in msg
    assert "not a GGUF file" in refused(G.load_gguf, write(base.work / "text.gguf", b"hello world"))


@pytest.mark.parametrize("version, exc, text", [
    (1, UnsupportedGGUFError, "GGUF version 1"),
    (4, GGUFError, "unknown GGUF version 4"),
    (0x03000000, UnsupportedGGUFError, "big-endian"),
])
def test_unsupported_version(base, version, exc, text) -> None:
    path = write(base.work / "version.gguf", base.data[:4] + struct.pack("<I", version) + base.data[8:])
    assert text in refused(G.load_gguf, path, exc)


def test_unknown_ggml_type_id(base) -> None:
    path = variant(base, "type.gguf", tensor={"blk.0.ffn_up.weight": {"type_id": 77}})
    assert "tensor 'blk.0.ffn_up.weight' has unknown GGML type id 77" in refused(G.load_gguf, path)


def test_known_but_unsupported_ggml_type(base) -> None:
    t = next(t for t in base.tensors if t.name == "blk.0.attn_q.weight")  # Q4_0: same bytes as IQ4_NL
    path = variant(base, "iq4.gguf", tensor={t.name: {"type_id": _TYPE_IDS["IQ4_NL"]}})
    assert "'blk.0.attn_q.weight' has GGML type IQ4_NL" in refused(G.load_gguf, path, UnsupportedGGUFError)


def test_tensor_offset_past_end(base) -> None:
    path = variant(base, "offset.gguf", tensor={"blk.1.ffn_down.weight": {"offset": 1 << 40}})
    msg = refused(G.load_gguf, path)
    assert "truncated or corrupted: tensor 'blk.1.ffn_down.weight' needs bytes" in msg


def test_tensor_table_checks(base) -> None:
    assert "not a multiple of the alignment 32" in refused(
        G.load_gguf, variant(base, "align.gguf", tensor={"output_norm.weight": {"offset": 4}}))
    second = base.tensors[1].name
    assert "overlaps" in refused(G.load_gguf, variant(base, "overlap.gguf", tensor={second: {"offset": 0}}))
    assert "appears twice" in refused(
        G.load_gguf, variant(base, "dup.gguf", tensor={second: {"name": base.tensors[0].name}}))
    assert "has 5 dimensions" in refused(
        G.load_gguf, variant(base, "dims.gguf", tensor={"output_norm.weight": {"dims": [64, 1, 1, 1, 1]}}))
    assert "not a multiple of its block size 32" in refused(
        G.load_gguf, variant(base, "row.gguf", tensor={"blk.0.attn_v.weight": {"dims": [16, 64]}}))
    assert "each must be positive" in refused(
        G.load_gguf, variant(base, "zero.gguf", tensor={"output_norm.weight": {"dims": [64, 0]}}))
    assert "invalid continuation byte" in refused(
        G.load_gguf, variant(base, "utf8.gguf", tensor={"output_norm.weight": {"name": b"out\xe9put"}}))


def test_duplicate_metadata_key(base) -> None:
    kvs = base.kvs + [("llama.block_count", "uint32", 2)]
    path = write(base.work / "dupkey.gguf", build(kvs, base.tensors).data)
    assert "metadata key 'llama.block_count' appears twice" in refused(G.load_gguf, path)


@pytest.mark.parametrize("key, value, text", [
    ("llama.block_count", ("string", "2"), "metadata key 'llama.block_count' has type string, expected an integer"),
    ("llama.embedding_length", ("float32", 64.0), "'llama.embedding_length' has type float32, expected an integer"),
    ("llama.rope.freq_base", ("string", "1e4"), "'llama.rope.freq_base' has type string, expected a number"),
    ("general.architecture", ("array[string]", ["llama"]), "has type array[string], expected a string"),
    ("general.alignment", ("uint32", 24), "general.alignment is 24"),
])
def test_metadata_value_of_wrong_type(base, key, value, text) -> None:
    assert text in refused(G.load_gguf, variant(base, "kv.gguf", kv={key: value}))


@pytest.mark.parametrize("kv, text", [
    ({"llama.attention.head_count": ("uint32", 0)}, "'llama.attention.head_count' is 0, expected a positive integer"),
    ({"llama.attention.head_count": ("uint32", 3), "llama.attention.head_count_kv": ("uint32", 1)},
     "llama.embedding_length=64 is not divisible by llama.attention.head_count=3"),
    ({"llama.attention.head_count_kv": ("uint32", 3)}, "head_count=4 is not a multiple of"),
    ({"llama.vocab_size": ("uint32", 300)}, "llama.vocab_size=300 but tensor 'token_embd.weight' has 263 rows"),
    ({"llama.block_count": ("uint64", 2**62)}, "llama.block_count=4611686018427387904 but the file holds only"),
    ({"llama.block_count": ("uint32", 3)}, "no tensor 'blk.2.attn_norm.weight'"),
    ({"llama.rope.freq_base": ("float32", float("nan"))}, "'llama.rope.freq_base' is nan"),
    ({"llama.attention.key_length": ("uint32", 15)}, "head dimension 15 is odd"),
    ({"llama.feed_forward_length": None}, "metadata has no 'llama.feed_forward_length'"),
])
def test_config_sanity(base, kv, text) -> None:
    assert text in refused(G.load_gguf, variant(base, "cfg.gguf", kv=kv))


def test_wrong_tensor_shape_vs_config(base) -> None:
    # same bytes, rows and columns swapped: [64, 32] (Q4_1) → [32, 64]
    path = variant(base, "shape.gguf", tensor={"blk.0.attn_k.weight": {"dims": [32, 64]}})
    msg = refused(G.load_gguf, path)
    assert "tensor 'blk.0.attn_k.weight' has dims [32, 64], expected [64, 32]" in msg
    path = variant(base, "ffn.gguf", kv={"llama.feed_forward_length": ("uint32", 128)})
    assert "tensor 'blk.0.ffn_gate.weight' has dims [64, 96], expected [64, 128]" in refused(G.load_gguf, path)


def test_missing_tensor(base) -> None:
    msg = refused(G.load_gguf, variant(base, "missing.gguf", tensor={"blk.1.ffn_down.weight": None}))
    assert "the file has no tensor 'blk.1.ffn_down.weight'" in msg
    msg = refused(G.load_gguf, variant(base, "noembd.gguf", tensor={"token_embd.weight": None}))
    assert "no tensor 'token_embd.weight'" in msg


def test_quantized_norm_is_refused(base) -> None:
    t = next(t for t in base.tensors if t.name == "output_norm.weight")
    q8 = gguf.quants.quantize(np.ones(64, np.float32), gguf.GGMLQuantizationType.Q8_0).tobytes()
    path = variant(base, "qnorm.gguf", tensor={t.name: {"type_id": _TYPE_IDS["Q8_0"], "data": q8}})
    assert "norm tensor 'output_norm.weight' has GGML type Q8_0" in refused(G.load_gguf, path, UnsupportedGGUFError)


@pytest.mark.parametrize("kv, text", [
    ({"tokenizer.ggml.tokens": ("array[int32]", [1, 2])}, "'tokenizer.ggml.tokens' has type array[int32]"),
    ({"tokenizer.ggml.merges": ("string", "h e")}, "'tokenizer.ggml.merges' has type string, expected an array"),
    ({"tokenizer.ggml.merges": ("array[string]", ["he"])}, "merges[0] = 'he' is not two tokens"),
    ({"tokenizer.ggml.merges": ("array[string]", ["h zz"])}, "uses 'zz', which is not in tokenizer.ggml.tokens"),
    ({"tokenizer.ggml.token_type": ("array[int32]", [1, 1])}, "token_type has 2 entries for 263 tokens"),
    ({"tokenizer.ggml.token_type": ("array[int32]", [9] * 263)}, "token_type[0] is 9"),
    ({"tokenizer.ggml.eos_token_id": ("uint32", 263)}, "'tokenizer.ggml.eos_token_id' is 263, outside the vocab"),
    ({"tokenizer.ggml.bos_token_id": ("int32", -1)}, "'tokenizer.ggml.bos_token_id' is -1"),
    ({"tokenizer.ggml.eos_token_id": ("string", "2")}, "'tokenizer.ggml.eos_token_id' has type string"),
    ({"tokenizer.ggml.tokens": ("array[string]", [])}, "tokenizer.ggml.tokens is empty"),
    ({"tokenizer.ggml.pre": ("string", "deepseek-llm")}, "tokenizer.ggml.pre='deepseek-llm' is not supported"),
    ({"tokenizer.ggml.model": ("string", "llama")}, "tokenizer.ggml.scores"),  # SentencePiece without scores
])
def test_tokenizer_checks(base, kv, text) -> None:
    path = variant(base, "tok.gguf", kv=kv)
    assert text in refused(G.tokenizer_from_gguf, path)


def test_special_token_id_checks(base) -> None:
    assert G.special_token_id(base.path, "eos") == 262 and G.special_token_id(base.path, "bos") is None
    path = variant(base, "eos.gguf", kv={"tokenizer.ggml.eos_token_id": ("uint32", 10**6)})
    assert "is 1000000, outside the vocabulary of 263 tokens" in refused(lambda p: G.special_token_id(p, "eos"), path)


def test_unpack_blocks_refuses_inconsistent_sizes() -> None:
    raw = np.zeros((2, 34), np.uint8)
    with pytest.raises(GGUFError, match=r"needs 102 bytes, got 68"):
        G.unpack_blocks("w", "Q8_0", raw, (3, 32))
    with pytest.raises(GGUFError, match=r"row length 48 is not a multiple of 32"):
        G.unpack_blocks("w", "Q4_0", raw, (2, 48))
    with pytest.raises(GGUFError, match=r"needs 16 bytes, got 68"):
        G.unpack_blocks("w", "F32", raw, (4,))
    with pytest.raises(GGUFError, match="positive sizes"):
        G.unpack_blocks("w", "F16", raw, (0, 34))
    with pytest.raises(UnsupportedGGUFError, match="GGML type Q2_K"):
        G.unpack_blocks("w", "Q2_K", raw, (2, 32))


# ----------------------------------------------------------------------------------------------
# Memory safety: absurd counts and lengths are refused before anything is allocated


def _header(n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


def _kv_head(key: str, vtype: int) -> bytes:
    return struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", vtype)


ABSURD = [
    ("kvs", _header(0, 2**60) + bytes(64), "the metadata count claims 1152921504606846976 entries"),
    ("tensors", _header(2**60, 0) + bytes(64), "the tensor count claims"),
    ("key", _header(0, 1) + struct.pack("<Q", 2**62) + bytes(64),
     "metadata key #0 at offset 24 is 4611686018427387904"),
    ("string", _header(0, 1) + _kv_head("a", 8) + struct.pack("<Q", 2**62) + b"x" * 64,
     "truncated: the value of metadata key 'a' needs bytes 45..4611686018427387948"),
    ("array", _header(0, 1) + _kv_head("a", 9) + struct.pack("<IQ", 10, 2**61) + bytes(64),
     "claims 2305843009213693952"),
    ("strings", _header(0, 1) + _kv_head("a", 9) + struct.pack("<IQ", 8, 2**60) + bytes(64),
     "claims 1152921504606846976"),
    ("string in array", _header(0, 1) + _kv_head("a", 9) + struct.pack("<IQQ", 8, 1, 2**62) + bytes(64),
     "value of metadata key 'a'[0] needs bytes"),
    ("nested", _header(0, 1) + _kv_head("a", 9) + struct.pack("<IQ", 9, 1) * 12 + bytes(64),
     "nests arrays more than 8"),
    ("tensor", _header(1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<IQQIQ", 2, 2**40, 2**40, 0, 0),
     "tensor 't' needs bytes 96..4835703278458516698824799"),
    ("value type", _header(0, 1) + _kv_head("a", 13) + bytes(8), "unknown value type id 13"),
    ("bool", _header(0, 1) + _kv_head("a", 7) + b"\x05", "is a bool stored as 5"),
]


@pytest.mark.parametrize("name, data, text", ABSURD, ids=[c[0] for c in ABSURD])
def test_absurd_sizes_are_refused_before_allocating(tmp_path, name, data, text) -> None:
    path = write(tmp_path / "absurd.gguf", data)
    tracemalloc.start()
    try:
        with pytest.raises(GGUFError) as info:
            GGUFFile(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert text in str(info.value) and str(path) in str(info.value)
    assert peak < 1 << 20, f"{name}: {peak} bytes allocated"


# ----------------------------------------------------------------------------------------------
# Properties: truncated or corrupted copies load or raise an MsdError, nothing else


def _try(fn: Any, path: Path) -> MsdError | None:
    try:
        out = fn(path)
    except MsdError as e:
        assert str(path) in str(e), f"{type(e).__name__} does not name the file: {e}"
        return e
    if isinstance(out, LlamaModel):  # a file that loads also runs
        with torch.no_grad():
            logits = out(torch.tensor([[1, 2, 3]]))
        assert logits.shape == (1, 3, out.cfg.vocab)
    return None


def _outcomes(path: Path) -> list[MsdError | None]:
    return [_try(G.load_gguf, path), _try(G.tokenizer_from_gguf, path),
            _try(lambda p: G.special_token_id(p, "eos"), path)]


def _corrupt(data: bytes, patches: list[tuple[int, bytes]]) -> bytes:
    out = bytearray(data)
    for pos, b in patches:
        out[pos:pos + len(b)] = b[:len(out) - pos]
    return bytes(out)


SETTINGS: dict[str, Any] = dict(deadline=None,
                                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@settings(max_examples=150, **SETTINGS)
@given(frac=st.floats(0.0, 1.0, exclude_max=True))
@example(frac=0.0)
@example(frac=0.999999)
def test_truncation_anywhere_is_a_named_truncation(base, frac) -> None:
    cut = int(frac * len(base.data))
    path = write(base.work / "cut.gguf", base.data[:cut])
    results = _outcomes(path)
    if cut >= base.last_end:  # only trailing padding was lost
        assert results == [None, None, None]
    else:
        assert all(isinstance(e, GGUFError) and "truncated" in str(e) for e in results), results


@settings(max_examples=100, **SETTINGS)
@given(cut=st.sampled_from([4, 7, 8, 15, 16, 23, 24, 25, 31, 32, 40]) | st.integers(0, 4096))
def test_truncation_in_the_header_and_metadata(base, cut) -> None:
    path = write(base.work / "cut.gguf", base.data[:cut])
    assert all(isinstance(e, GGUFError) and "truncated" in str(e) for e in _outcomes(path))


_patch = st.tuples(st.integers(0, 2**31), st.binary(min_size=1, max_size=8))


@settings(max_examples=600, **SETTINGS)
@given(patches=st.lists(_patch, min_size=1, max_size=4))
def test_corrupted_header_metadata_and_tensor_table(base, patches) -> None:
    end = base.tensor_info[1]
    path = write(base.work / "bad.gguf", _corrupt(base.data, [(p % end, b) for p, b in patches]))
    _outcomes(path)


@settings(max_examples=400, **SETTINGS)
@given(patches=st.lists(_patch, min_size=1, max_size=3))
def test_corrupted_tensor_table(base, patches) -> None:
    lo, hi = base.tensor_info
    path = write(base.work / "bad.gguf", _corrupt(base.data, [(lo + p % (hi - lo), b) for p, b in patches]))
    _outcomes(path)


_WIDE = (st.sampled_from([0, 1, 2, 3, 31, 32, 33, 63, 64, 255, 2**31 - 1, 2**32 - 1, 2**62, 2**64 - 1])
         | st.integers(0, 2**64 - 1))


@settings(max_examples=600, **SETTINGS)
@given(picks=st.lists(st.tuples(st.integers(0, 10**6), _WIDE), min_size=1, max_size=2))
def test_corrupted_counts_lengths_types_dims_and_offsets(base, picks) -> None:
    """Structured corruption: a count, string / array length, value or GGML type, dimension or offset
    of the base file replaced by an integer of the same width."""
    patches = []
    for i, value in picks:
        pos, width, _ = base.ints[i % len(base.ints)]
        patches.append((pos, (value % (1 << (8 * width))).to_bytes(width, "little")))
    path = write(base.work / "bad.gguf", _corrupt(base.data, patches))
    _outcomes(path)


@settings(max_examples=100, **SETTINGS)
@given(patches=st.lists(_patch, min_size=1, max_size=6))
def test_corrupted_anywhere(base, patches) -> None:
    path = write(base.work / "bad.gguf", _corrupt(base.data, [(p % len(base.data), b) for p, b in patches]))
    results = _outcomes(path)
    if all(p % len(base.data) >= base.data_start for p, _ in patches):  # only tensor bytes changed: still loads
        assert results == [None, None, None]
