"""Every error msd raises on purpose derives from :class:`MsdError`.

    try:
        art = msd.runtime.load("out/")
    except msd.MsdError as e:      # any of the classes below
        print(e)                   # names the file / option / input and what to change

Each class also derives from the builtin exception it used to be (``ValueError`` for bad input,
``RuntimeError`` for a failing tool), so older ``except ValueError`` code keeps working.  This module
needs neither torch nor the compiler: the runtime raises these too.
"""

from __future__ import annotations


class MsdError(Exception):
    """The root of msd's errors: the message says what is wrong and what the user can change."""


class OptionError(MsdError, ValueError, TypeError):
    """An option or argument msd does not accept (a value out of range or of the wrong type, an unknown
    name, a pairing of options that contradict each other); a ``ValueError`` and a ``TypeError``."""


class TargetError(OptionError):
    """A compile target (backend, CPU, GPU architecture) that msd or the installed IREE cannot
    compile for."""


class InputError(MsdError, TypeError, ValueError):
    """An input a compiled function cannot take: the wrong count, dtype or shape, or a dynamic size
    outside its compiled range (a ``TypeError`` and a ``ValueError``, as numpy and torch would raise)."""


class ExportError(MsdError, ValueError):
    """The model could not be captured with ``torch.export``, or uses a tensor type msd cannot carry."""


class NormalizeError(MsdError, ValueError):
    """A quantized front end's dequantize op (torchao, PT2E) that msd cannot rewrite exactly."""


class CompileError(MsdError, RuntimeError):
    """IREE rejected the program; the message carries IREE's own diagnostics."""


class ArtifactError(MsdError, RuntimeError):
    """A saved artifact that cannot be trusted or loaded (a missing, modified or out-of-folder file, a
    manifest that breaks the schema), or a call it cannot take."""


class DeviceError(ArtifactError):
    """The IREE driver a module needs cannot open a device on this machine (no such GPU here)."""


class GGUFError(MsdError, ValueError):
    """A GGUF file that cannot be read as written: truncated, corrupted, or inconsistent with itself."""


class UnsupportedGGUFError(GGUFError):
    """A well-formed GGUF file that uses a tensor type, architecture or tokenizer msd does not handle."""


__all__ = ["ArtifactError", "CompileError", "DeviceError", "ExportError", "GGUFError", "InputError", "MsdError",
           "NormalizeError", "OptionError", "TargetError", "UnsupportedGGUFError"]
