"""Load and call a compiled msd artifact (``.vmfb`` + ``.irpa`` parameter archive) — no torch.

    from msd.runtime import Module
    m = Module.load("out/module.vmfb", "out/model.irpa")
    y = m(x)                      # numpy in, numpy out
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import iree.runtime as rt
import ml_dtypes
import numpy as np

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


class ArtifactError(RuntimeError):
    """A compiled artifact that cannot be loaded, or a call it cannot take."""


@dataclass(frozen=True)
class TensorSpec:
    """Shape (None = dynamic) and element type name of one function input."""

    shape: tuple[int | None, ...]
    dtype: str

    def check(self, index: int, a: np.ndarray) -> None:
        want = DTYPES[self.dtype]
        if a.dtype != want:
            raise TypeError(f"input {index}: dtype {a.dtype} does not match the compiled {self.dtype}")
        if len(a.shape) != len(self.shape) or any(
            s is not None and s != d for s, d in zip(self.shape, a.shape)
        ):
            shown = "x".join("?" if s is None else str(s) for s in self.shape)
            raise ValueError(
                f"input {index}: shape {tuple(a.shape)} does not match the compiled [{shown}]"
            )

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, d: dict) -> TensorSpec:
        return cls(tuple(d["shape"]), d["dtype"])


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
    ) -> None:
        self.inputs = list(inputs) if inputs is not None else None
        try:
            self._config = rt.Config(driver)
        except (ValueError, RuntimeError) as e:
            raise ArtifactError(f"cannot open IREE driver '{driver}': {e}") from None
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
        except (ValueError, RuntimeError) as e:
            raise ArtifactError(f"not a valid IREE module (.vmfb): {e}") from None
        modules.append(vm)
        try:
            loaded = rt.load_vm_modules(*modules, config=self._config)
        except (ValueError, RuntimeError) as e:
            raise ArtifactError(f"cannot load the module: {e}") from None
        try:
            self._fn = loaded[-1][function]
        except (KeyError, AttributeError):
            raise ArtifactError(f"the module has no function '{function}'") from None

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

    def __call__(self, *args: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        arrays = [np.ascontiguousarray(a) for a in args]
        if self.inputs is not None:
            if len(arrays) != len(self.inputs):
                raise TypeError(f"expected {len(self.inputs)} input(s), got {len(arrays)}")
            for i, (spec, a) in enumerate(zip(self.inputs, arrays)):
                spec.check(i, a)
        result = self._fn(*arrays)
        if isinstance(result, (tuple, list)):
            return tuple(r.to_host() for r in result)
        return result.to_host()
