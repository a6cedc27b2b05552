"""Torch-free runtime: load a compiled artifact and call it with numpy arrays."""

from .module import ArtifactError, Module, TensorSpec

__all__ = ["ArtifactError", "Module", "TensorSpec"]
