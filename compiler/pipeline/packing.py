"""The parameter archive of a compiled model, with the weights pre-packed for its kernels.

``--msd-prepack-parameters`` (msd.passes.prepack_parameters) moves the computation of every kernel's
weight-side operands (tiled codes, accumulator starts, scales and offsets per channel and group) out
of the model into pack functions; the compile worker builds those for this machine's CPU.  Here they
run, once per packed linear, on the model's own tensors, and the archive is written with what the
model's module reads: the tensors it still declares, and the packed ones.  Loading the artifact then
maps what the kernels read; nothing is relaid out when it loads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from iree.runtime import FileHandle, ParameterIndex

from msd.errors import CompileError
from msd.passes.prepack_parameters import PackCall
from msd.runtime.module import Module

from .importer import raw_bytes


def _argument(t: torch.Tensor) -> np.ndarray:
    """``t`` as the pack function's argument reads it: integers signless (numpy's signed types),
    bfloat16 as its bits (the pass declares such arguments i16 and bitcasts them)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy()
    if t.dtype == torch.bool:
        return t.view(torch.int8).numpy()
    a = t.numpy()
    if a.dtype.kind == "u":
        a = a.view(np.dtype(f"i{a.dtype.itemsize}"))
    return a


def packed(vmfb: bytes, calls: Iterable[PackCall],
           tensors: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, np.ndarray]]:
    """Run the packer ``vmfb`` (host CPU) for each of ``calls`` on ``tensors``; yield each packed array
    with its key as soon as it is computed."""
    calls = list(calls)
    if not calls:
        return
    module = Module(vmfb, None, function=calls[0].function)
    for call in calls:
        missing = [k for k in call.inputs if k not in tensors]
        if missing:
            raise CompileError(f"packing {', '.join(call.outputs)}: no tensor for parameter(s) {', '.join(missing)}")
        results = module.bind(call.function)(*[_argument(tensors[k]) for k in call.inputs])
        results = results if isinstance(results, tuple) else (results,)
        if len(results) != len(call.outputs):
            raise CompileError(f"{call.function} returned {len(results)} arrays for {len(call.outputs)} parameters")
        yield from zip(call.outputs, results)


def write_parameters(path: Path, tensors: Mapping[str, torch.Tensor], keys: Iterable[str] | None = None,
                     packer: dict | None = None) -> None:
    """Write the archive the compiled module reads: the ``tensors`` among ``keys`` (all of them when
    ``keys`` is None) and, with a ``packer`` (``{"vmfb", "calls"}`` from the compile worker), the
    packed parameters it computes from ``tensors``.

    Packed arrays go to a scratch file beside ``path`` as they are computed, and the archive copies
    them from there: the compile holds one packed weight in memory at a time, not all of them."""
    wanted = set(tensors) if keys is None else set(keys)
    index = ParameterIndex()
    for key, t in tensors.items():
        if key in wanted:
            index.add_buffer(key, raw_bytes(t))
    scratch = path.with_name(path.name + ".packing")
    provided = set(tensors)
    try:
        with open(scratch, "w+b") as f:
            offset = 0
            entries = []
            for key, a in packed(packer["vmfb"], packer["calls"], tensors) if packer else ():
                data = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
                f.write(memoryview(data))
                entries.append((key, data.nbytes, offset))
                offset += data.nbytes
                provided.add(key)
            f.flush()
            unknown = wanted - provided
            if unknown:
                raise CompileError(f"the module reads parameter(s) {', '.join(sorted(unknown))} that nothing provides")
            handle = FileHandle.wrap_fd(f.fileno(), True, False)
            for key, length, at in entries:
                index.add_from_file_handle(key, handle, length, at)
            index.create_archive_file(str(path))
    finally:
        scratch.unlink(missing_ok=True)


__all__ = ["packed", "write_parameters"]
