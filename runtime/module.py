"""Load and call a compiled msd artifact (``.vmfb`` + ``.irpa`` parameter archive) — no torch.

    from msd.runtime import Module
    m = Module.load("out/module.vmfb", "out/model.irpa")
    y = m(x)                      # numpy in, numpy out
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import iree.runtime as rt
import ml_dtypes
import numpy as np

from msd.errors import ArtifactError, DeviceError, InputError

PARAMETER_SCOPE = "model"  # the scope every msd parameter key lives in (#stream.parameter.named<"model"::…>)

DTYPES: dict[str, np.dtype] = {
    "f32": np.dtype(np.float32),
    "f16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "f64": np.dtype(np.float64),
    "i8": np.dtype(np.int8),
    "ui8": np.dtype(np.uint8),
    "i16": np.dtype(np.int16),
    "i32": np.dtype(np.int32),
    "i64": np.dtype(np.int64),
    "i1": np.dtype(np.bool_),
}



_ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 0x1023, 18  # linux/arch/x86/include/uapi/asm/prctl.h


@functools.cache
def enable_amx() -> bool:
    """Ask Linux for this process's use of Intel AMX tile data (``arch_prctl(ARCH_REQ_XCOMP_PERM,
    XFEATURE_XTILEDATA)``; without it a tile instruction faults).  msd's ``amx-int8`` kernels ask by
    themselves (and keep to AVX-512 VNNI where refused); this is for other code that uses the tiles (the
    benchmarks' AMX peak) and says whether the system grants them: False on other CPUs, systems and
    kernels (before Linux 5.16).  Process-wide, once."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        return False
    if "amx_tile" not in flags.split():
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(158, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0  # 158: SYS_arch_prctl on x86-64


@contextlib.contextmanager
def batch_caller(enabled: bool = True) -> Iterator[None]:
    """The calling thread under Linux's ``SCHED_BATCH`` policy for the block (then back to what it had),
    when it has the default one.

    Why: IREE 3.13's wait ends with the caller spinning until the worker that woke it has finished the
    wake-up callback; the kernel often runs the woken caller on that worker's core at once, and the
    caller then spins until the worker gets its core back (milliseconds, a scheduler time slice) while
    the other workers wait for that worker's share of the dispatch.  A ``SCHED_BATCH`` thread does not
    preempt on wake-up, so the worker finishes first.  Measured on 2 cores: calls of ~2.5 ms had a 90th
    percentile of 7.5 ms, 2.8 ms with this (``benchmarks/kernel.py --caller-policy other,batch``,
    ``docs/benchmarks.md``).  Cost: three system calls, 3 µs per call on that VM (timing ``with
    batch_caller(): pass``), against milliseconds for a decode step."""
    policy = getattr(os, "SCHED_BATCH", None)
    if not enabled or policy is None:
        yield
        return
    try:
        switched = os.sched_getscheduler(0) == os.SCHED_OTHER
        if switched:
            os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError:  # not permitted in this sandbox / container: the call runs as it is
        switched = False
    try:
        yield
    finally:
        if switched:
            with contextlib.suppress(OSError):  # (granted a moment ago: not expected to fail)
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


@dataclass(frozen=True)
class TensorSpec:
    """One function input or output: name, shape (None = dynamic), element type, and for each
    dynamic dim its symbol and inclusive bounds (``None`` where unbounded)."""

    shape: tuple[int | None, ...]
    dtype: str
    name: str = ""
    dims: tuple[tuple[str, int, int | None] | None, ...] = ()  # per dim: (symbol, min, max) if dynamic

    def describe(self) -> str:
        parts = []
        for i, s in enumerate(self.shape):
            dim = self.dims[i] if i < len(self.dims) else None
            if s is not None:
                parts.append(str(s))
            elif dim is not None:
                parts.append(f"{dim[0]}({dim[1]}..{'' if dim[2] is None else dim[2]})")
            else:
                parts.append("?")
        return f"{self.name or 'arg'}: {self.dtype}[{', '.join(parts)}]"

    def check(self, index: int, a: np.ndarray, signature: str = "") -> None:
        where = f"input {index}" + (f" ({self.name})" if self.name else "")
        hint = f"; expected {signature}" if signature else ""
        want = DTYPES[self.dtype]
        if a.dtype != want:
            raise InputError(f"{where}: dtype {a.dtype} does not match the compiled {self.dtype}{hint}")
        shown = "x".join("?" if s is None else str(s) for s in self.shape)
        if len(a.shape) != len(self.shape) or any(s is not None and s != d for s, d in zip(self.shape, a.shape)):
            raise InputError(f"{where}: shape {tuple(a.shape)} does not match the compiled [{shown}]{hint}")
        for i, dim in enumerate(self.dims):
            if dim is not None and (a.shape[i] < dim[1] or (dim[2] is not None and a.shape[i] > dim[2])):
                hi = "" if dim[2] is None else dim[2]
                raise InputError(
                    f"{where}: dim {i} = {a.shape[i]} is outside the compiled range of {dim[0]}"
                    f" [{dim[1]}..{hi}]{hint}"
                )

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "dims": [list(d) if d is not None else None for d in self.dims]}

    @classmethod
    def from_json(cls, d: dict) -> TensorSpec:
        dims = tuple(tuple(x) if x is not None else None for x in d.get("dims", []))
        return cls(tuple(d["shape"]), d["dtype"], d.get("name", ""), dims)


@dataclass(frozen=True)
class _Described:
    """A device buffer view's shape and dtype, as :meth:`TensorSpec.check` reads an array's."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @classmethod
    def of(cls, view: rt.HalBufferView) -> _Described:
        return cls(tuple(view.shape), _dtypes_by_element_type().get(int(view.element_type), np.dtype("V1")))


@functools.cache
def _dtypes_by_element_type() -> dict[int, np.dtype]:
    """HAL element type → the numpy dtype a compiled signature names (built once)."""
    from iree.runtime.array_interop import map_dtype_to_element_type

    out = {}
    for d in DTYPES.values():
        try:
            out.setdefault(int(map_dtype_to_element_type(np.dtype(d))), np.dtype(d))
        except (TypeError, ValueError, KeyError):
            pass
    return out


def signature(name: str, inputs: Sequence[TensorSpec]) -> str:
    return f"{name}({', '.join(s.describe() for s in inputs)})"


class Module:
    """A loaded artifact; call it with numpy arrays."""

    def __init__(
        self,
        vmfb: bytes,
        parameters: str | os.PathLike | None = None,
        *,
        driver: str = "local-task",
        function: str = "main",
        inputs: Sequence[TensorSpec] | None = None,
        batch_caller: bool = True,
    ) -> None:
        self.inputs = list(inputs) if inputs is not None else None
        self.function = function
        self.batch_caller = batch_caller  # each call under SCHED_BATCH (:func:`batch_caller`)
        try:
            self._config = rt.Config(driver)
            self.driver = driver
        except (ValueError, RuntimeError, IndexError, OSError) as e:
            raise DeviceError(f"cannot open IREE driver '{driver}': {e}") from None
        instance = self._config.vm_instance
        modules = []
        if parameters is not None:
            path = Path(parameters)
            if not path.is_file():
                raise ArtifactError(f"parameter archive not found: {path}")
            index = rt.ParameterIndex()
            try:
                index.load(str(path))
            except (ValueError, RuntimeError, IndexError, OSError) as e:
                raise ArtifactError(f"{path} is not a valid parameter archive: {e}") from None
            provider = index.create_provider(scope=PARAMETER_SCOPE)
            modules.append(rt.create_io_parameters_module(instance, provider))
            self._index = index  # keep the mapping alive
        modules.append(rt.create_hal_module(instance, self._config.device))
        try:
            vm = rt.VmModule.copy_buffer(instance, vmfb)
        except (ValueError, RuntimeError, IndexError, OSError) as e:
            raise ArtifactError(f"not a valid IREE module (.vmfb): {e}") from None
        modules.append(vm)
        try:
            loaded = rt.load_vm_modules(*modules, config=self._config)
        except (ValueError, RuntimeError, IndexError, OSError) as e:
            raise ArtifactError(f"cannot load the module: {e}") from None
        self._vm = loaded[-1]
        self._fn = self._lookup(function)

    def _lookup(self, function: str):
        try:
            return self._vm[function]
        except (KeyError, AttributeError):
            raise ArtifactError(f"the module has no function '{function}'") from None

    def bind(self, function: str, inputs: Sequence[TensorSpec] | None = None) -> Module:
        """Another function of the same loaded module (weights and their packing are shared)."""
        other = object.__new__(Module)
        other.__dict__.update(self.__dict__)
        other.function, other.inputs = function, list(inputs) if inputs is not None else None
        other._fn = self._lookup(function)
        return other

    @classmethod
    def load(
        cls,
        vmfb: str | os.PathLike,
        parameters: str | os.PathLike | None = None,
        **kwargs,
    ) -> Module:
        path = Path(vmfb)
        if not path.is_file():
            raise ArtifactError(f"module not found: {path}")
        return cls(path.read_bytes(), parameters, **kwargs)

    @property
    def host_device(self) -> object | None:
        """The IREE device when it shares the host's memory (the CPU drivers: a host buffer imported into it
        is read in place), else None."""
        return self._config.device if self.driver.startswith("local") else None

    def upload(self, a: np.ndarray) -> object:
        """``a`` copied into the device's memory once, for :meth:`invoke` (a GPU call then moves no input)."""
        return rt.asdevicearray(self._config.device, np.ascontiguousarray(a))

    def invoke(self, *args: object) -> object:
        """Call with device arrays (:meth:`upload`) and leave the result on the device: the call returns
        when the device is done (IREE's synchronous entry waits on the work it submitted).  No input
        checks; for timing the device's work without host copies."""
        with batch_caller(self.batch_caller):
            return self._fn(*args)

    def __call__(self, *args: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        # (np.ascontiguousarray would make a 0-d array 1-d: a scalar input then fails IREE's shape check);
        # a device buffer view (KVCache.past on a host-sharing device) is passed as it is
        arrays = [a if isinstance(a, rt.HalBufferView) or isinstance(a, np.ndarray) and a.flags.c_contiguous
                  else np.ascontiguousarray(a).reshape(np.shape(a)) for a in args]
        if self.inputs is not None:
            sig = signature(self.function, self.inputs)
            if len(arrays) != len(self.inputs):
                raise InputError(f"expected {len(self.inputs)} input(s), got {len(arrays)}; expected {sig}")
            for i, (spec, a) in enumerate(zip(self.inputs, arrays)):
                spec.check(i, _Described.of(a) if isinstance(a, rt.HalBufferView) else a, sig)
        try:
            with batch_caller(self.batch_caller):
                result = self._fn(*arrays)
        except (RuntimeError, ValueError, IndexError, TypeError) as e:  # the IREE runtime's own errors
            raise ArtifactError(f"the IREE runtime refused the call to {self.function}: {e}") from None
        # copied out: an array that only maps the result's device memory can be overwritten by a later
        # call once the result is released (measured: kept logits of earlier calls changed)
        if isinstance(result, (tuple, list)):
            return tuple(np.array(r.to_host()) for r in result)
        return np.array(result.to_host())
