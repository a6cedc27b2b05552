"""Torch-free runtime: load a saved artifact and call it with numpy arrays (or torch tensors).

    import msd.runtime
    art = msd.runtime.load("out/")        # checks versions, target/device and file hashes
    y = art.main(x)                      # or art(x); art.main.signature shows what it takes
"""

from .artifact import Artifact, Function, load
from .module import ArtifactError, Module, TensorSpec, enable_amx

__all__ = ["Artifact", "ArtifactError", "Function", "Module", "TensorSpec", "enable_amx", "load"]
