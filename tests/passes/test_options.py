"""DecomposeOptions: one frozen dataclass the registry, msd-opt's parser and run() all read."""

from __future__ import annotations

import dataclasses

import pytest

from msd.errors import OptionError
from msd.passes import PASSES, PassOptionError, parse_options, run_pass
from msd.passes.decompose_activations import NAME, DecomposeOptions


def test_the_registry_derives_from_the_dataclass() -> None:
    info = PASSES[NAME]
    fields = dataclasses.fields(DecomposeOptions)
    assert list(info.options) == [f.name.replace("_", "-") for f in fields]
    assert info.options["slices"] == (int, 2) and info.options["act-scale"] == (str, "group")
    assert all(spec.help for spec in info.specs)
    assert info.options_type is DecomposeOptions and info.run is not None


def test_parse_options_is_typed_with_defaults() -> None:
    opts = parse_options(NAME, "slices=3, act-scale=row min-bits=16")
    assert opts == dataclasses.asdict(DecomposeOptions(slices=3, act_scale="row", min_bits=16))
    assert DecomposeOptions.from_text("slices=3 act-scale=row min-bits=16") == DecomposeOptions(**opts)


@pytest.mark.parametrize(("text", "message"), [
    ("foo=1", "--msd-decompose-activations: unknown option 'foo=1' (options: slices, act-scale, act-format,"),
    ("slices", "unknown option 'slices'"),
    ("slices=two", "option slices='two' is not an integer"),
])
def test_bad_text(text: str, message: str) -> None:
    with pytest.raises(PassOptionError) as e:
        DecomposeOptions.from_text(text)
    assert message in str(e.value)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"slices": 7}, "msd-decompose-activations: slices=7 is not supported (choose 1, 2 or 3)"),
    ({"act_scale": "col"}, "act-scale=col is not supported (choose row or group)"),
    ({"act_format": "fp6"}, "act-format=fp6 is not supported (choose int8, mxfp4, mxfp8)"),
    ({"mx_scale": "even"}, "mx-scale=even is not supported (choose ocp or noclip)"),
    ({"mx_lowering": "fast"}, "mx-lowering=fast is not supported (choose int8 or scaled)"),
    ({"min_bits": -1}, "min-bits and dynamic-m must not be negative"),
    ({"min_bits": 8, "act_format": "mxfp4"}, "min-bits counts int8 slices; with act-format=mxfp4 give slices="),
    ({"min_bits": 32}, "min_bits=32 is more than 3 int8 slices give"),
    ({"target": "tpu"}, "no hardware profile for 'tpu'"),
    ({"dynamic_m": "512"}, "dynamic-m='512' is not an integer"),
])
def test_values_are_checked_on_creation(kwargs: dict, message: str) -> None:
    with pytest.raises(OptionError) as e:
        DecomposeOptions(**kwargs)
    assert message in str(e.value)


def test_min_bits_gives_the_slices() -> None:
    assert [DecomposeOptions(min_bits=b).requested_slices for b in (8, 16, 24)] == [1, 2, 3]
    assert DecomposeOptions(slices=3).requested_slices == 3


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DecomposeOptions().slices = 3  # type: ignore[misc]


def test_run_pass_checks_names_and_values(parse) -> None:
    module = parse("func.func @f(%x: tensor<4xf32>) -> tensor<4xf32> { return %x : tensor<4xf32> }")
    with pytest.raises(PassOptionError, match="unknown option"):
        run_pass(module.operation, NAME, slice=2)
    with pytest.raises(PassOptionError, match="slices=4 is not supported"):
        run_pass(module.operation, NAME, slices=4)
    with pytest.raises(PassOptionError, match="unknown pass"):
        run_pass(module.operation, "msd-nothing")
    assert run_pass(module.operation, NAME, slices=1, act_scale="row").decisions == []
