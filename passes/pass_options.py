"""A pass's options as one frozen dataclass: the only place their names, types, defaults, allowed values
and help are written.

    @dataclass(frozen=True)
    class MyOptions(PassOptions):
        pass_name: ClassVar[str] = "msd-my-pass"
        slices: int = option(2, choices=(1, 2, 3), help="activation slices")

    MyOptions(slices=2)                  # keyword arguments (Python spelling), validated on creation
    MyOptions.from_text("slices=2")      # msd-opt's --msd-my-pass="..." text (CLI spelling: dashes)

Creating one checks every value against its field's type and ``choices`` and then runs
:meth:`PassOptions.validate` (checks between fields): a bad value is an :class:`msd.errors.OptionError`
before any IR is touched.  The pass registry (``msd.passes.PASSES``) and ``msd-opt --help`` read the
fields through :meth:`PassOptions.specs`.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Self

from msd.errors import OptionError


class PassOptionError(OptionError):
    """A pass name or option that does not exist or does not parse."""


def either(values: Sequence[object]) -> str:
    """``"1, 2 or 3"``: how an error message lists the allowed values."""
    *head, last = [str(v) for v in values]
    return f"{', '.join(head)} or {last}" if head else last


def a_type(t: type) -> str:
    """``int`` → ``"an integer"``: a type as an error message names it."""
    names = {int: "an integer", str: "a string", float: "a number", bool: "a boolean"}
    if t in names:
        return names[t]
    args = [a for a in typing.get_args(t) if a is not type(None)]  # Optional[int] -> "an integer or None"
    if args:
        return " or ".join(a_type(a) for a in args) + (" or None" if type(None) in typing.get_args(t) else "")
    return f"a {getattr(t, '__name__', t)}"


def option(default: object, *, help: str, choices: Sequence[object] = (),
           listing: Callable[[Sequence[object]], str] = either) -> Any:
    """A field of a :class:`PassOptions`: its default, allowed values (none: any value of the type), help
    text, and how an error message lists the allowed values."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices), "listing": listing})


def same_option(options: type[PassOptions], name: str, **changes: Any) -> Any:
    """A field like ``options``'s field ``name`` (default, choices, help, listing), with ``changes``: how
    another options type (the compiler's) takes a pass option over without writing it again."""
    f = options.__dataclass_fields__[name]
    meta = {**f.metadata, **{k: v for k, v in changes.items() if k != "default"}}
    if "choices" in changes:
        meta["choices"] = tuple(changes["choices"])
    return field(default=changes.get("default", f.default), metadata=meta)


def cli_name(name: str) -> str:
    """``act_scale`` → ``act-scale`` (MLIR's pass-option spelling)."""
    return name.replace("_", "-")


@dataclass(frozen=True)
class OptionSpec:
    """One option as the registry and ``msd-opt --help`` show it."""

    name: str  # Python spelling (keyword argument)
    cli: str  # command-line spelling
    type: type
    default: object
    help: str
    choices: tuple[object, ...]


@dataclass(frozen=True)
class PassOptions:
    """Base of a pass's options (see the module docstring)."""

    pass_name: ClassVar[str] = ""
    python_spelling: ClassVar[bool] = False  # messages say act_scale='row' (an API's keywords), not act-scale=row

    def __post_init__(self) -> None:
        for spec in self.specs():
            value = getattr(self, spec.name)
            shown = f"{spec.name}={value!r}" if self.python_spelling else f"{spec.cli}={value}"
            where = f"{self.pass_name}: " if self.pass_name else ""
            if spec.choices and value not in spec.choices:
                listing = self.__dataclass_fields__[spec.name].metadata["listing"]
                raise OptionError(f"{where}{shown} is not supported (choose {listing(spec.choices)})")
            if not isinstance(value, spec.type):
                shown = f"{spec.name if self.python_spelling else spec.cli}={value!r}"
                raise OptionError(f"{where}{shown} is not {a_type(spec.type)}")
        self.validate()

    def validate(self) -> None:
        """Checks between fields (a subclass's); raise :class:`OptionError`."""

    @classmethod
    def specs(cls) -> list[OptionSpec]:
        hints = typing.get_type_hints(cls)
        return [OptionSpec(f.name, cli_name(f.name), hints[f.name], f.default, f.metadata["help"],
                           f.metadata["choices"]) for f in fields(cls) if f.default is not MISSING]

    @classmethod
    def parse_text(cls, text: str) -> dict[str, object]:
        """``"slices=2 act-scale=row"`` (or comma-separated) → every option by its Python name, typed,
        defaults filled in.  Unknown names and values that do not convert are a :class:`PassOptionError`;
        the values themselves are checked when the options are created."""
        name, specs = cls.pass_name, {s.cli: s for s in cls.specs()}
        values = {s.name: s.default for s in specs.values()}
        for item in text.replace(",", " ").split():
            key, sep, raw = item.partition("=")
            if not sep or key not in specs:
                raise PassOptionError(f"--{name}: unknown option '{item}' (options: {', '.join(specs) or 'none'})")
            spec = specs[key]
            try:
                values[spec.name] = spec.type(raw)
            except ValueError:
                raise PassOptionError(f"--{name}: option {key}={raw!r} is not {a_type(spec.type)}") from None
        return values

    @classmethod
    def from_text(cls, text: str) -> Self:
        """The options a ``--pass="a=1 b=2"`` text gives (see :meth:`parse_text`), validated."""
        return cls(**cls.parse_text(text))


__all__ = ["OptionSpec", "PassOptionError", "PassOptions", "a_type", "cli_name", "either", "option", "same_option"]
