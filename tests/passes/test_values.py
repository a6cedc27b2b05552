"""The value-range analysis (msd.passes.analysis.values) on hand-written elementwise IR."""

from __future__ import annotations

import pytest
from mlir_text import elementwise as generic_of
from mlir_text import empty, function, nibble_halves

from msd.passes.analysis.values import unsigned_range, value_set


def elementwise(body: str, in_type: str = "i8", out_type: str = "i8") -> str:
    """A function returning ``generic(x)`` with ``body`` over ``%v`` (the element of ``%x``), yielding ``%r``."""
    src, dst = f"tensor<4x8x{in_type}>", f"tensor<4x8x{out_type}>"
    return function(f"%x: {src}", "%y", dst, empty("%e", dst), generic_of("%y", "%x", src, dst, body))


def result(parse, ir_returned, text: str):
    (v,) = ir_returned(parse(text))
    return v


def test_a_function_argument_is_unbounded(parse, ir_returned) -> None:
    v = result(parse, ir_returned, "func.func @f(%x: tensor<4xi8>) -> tensor<4xi8> { return %x : tensor<4xi8> }")
    assert value_set(v) is None
    assert unsigned_range(v) == (0, 255)


@pytest.mark.parametrize(("body", "expected"), [
    ("%m = arith.constant 15 : i8\n %r = arith.andi %v, %m : i8", set(range(16))),  # low nibble
    ("%s = arith.constant 4 : i8\n %r = arith.shrui %v, %s : i8", set(range(16))),  # high nibble
    ("%m = arith.constant 15 : i8\n %r = arith.andi %m, %v : i8", set(range(16))),  # the mask on either side
    ("%m = arith.constant -16 : i8\n %r = arith.andi %v, %m : i8",  # 0xF0: signed values of 0x00, 0x10, ..., 0xF0
     {(16 * i) - 256 if 16 * i > 127 else 16 * i for i in range(16)}),
])
def test_nibble_unpack_bounds_the_codes(parse, ir_returned, body: str, expected: set[int]) -> None:
    v = result(parse, ir_returned, elementwise(body))
    assert value_set(v) == expected
    assert unsigned_range(v) == (min(x & 255 for x in expected), max(x & 255 for x in expected))


def test_unsigned_range_of_a_high_nibble_mask(parse, ir_returned) -> None:
    v = result(parse, ir_returned, elementwise("%m = arith.constant -16 : i8\n %r = arith.andi %v, %m : i8"))
    assert unsigned_range(v) == (0, 240)


def test_unpacked_halves_concatenated(parse, ir_returned) -> None:
    text = function("%p: tensor<4x8xi8>", "%q", "tensor<4x16xi8>",
                    nibble_halves("%p", "tensor<4x8xi8>", "tensor<4x16xi8>"))
    v = result(parse, ir_returned, text)
    assert value_set(v) == set(range(16))
    assert unsigned_range(v) == (0, 15)


def test_extsi_and_extui_read_the_same_bits_differently(parse, ir_returned) -> None:
    neg = "%m = arith.constant -3 : i8\n %a = arith.andi %v, %m : i8\n"  # any byte with bits 0xFD: sign bit set
    signed = result(parse, ir_returned, elementwise(neg + "%r = arith.extsi %a : i8 to i32", out_type="i32"))
    unsigned = result(parse, ir_returned, elementwise(neg + "%r = arith.extui %a : i8 to i32", out_type="i32"))
    assert min(value_set(signed)) == -128 and max(value_set(signed)) == 125
    assert min(value_set(unsigned)) == 0 and max(value_set(unsigned)) == 253
    assert unsigned_range(unsigned) == (0, 253)


def test_arithmetic_on_bounded_sets(parse, ir_returned) -> None:
    body = """%m = arith.constant 3 : i8
    %a = arith.andi %v, %m : i8
    %w = arith.extsi %a : i8 to i32
    %c2 = arith.constant 2 : i32
    %t = arith.muli %w, %c2 : i32
    %c1 = arith.constant 1 : i32
    %r = arith.subi %t, %c1 : i32"""
    v = result(parse, ir_returned, elementwise(body, out_type="i32"))
    assert value_set(v) == {-1, 1, 3, 5}


def test_select_and_float_round_trip(parse, ir_returned) -> None:
    """torch-mlir negates an int tensor as sitofp → negf → fptosi: exact for small sets."""
    body = """%m = arith.constant 1 : i8
    %a = arith.andi %v, %m : i8
    %f = arith.sitofp %a : i8 to f32
    %n = arith.negf %f : f32
    %b = arith.fptosi %n : f32 to i8
    %z = arith.constant 0 : i8
    %c = arith.cmpi eq, %a, %z : i8
    %six = arith.constant 6 : i8
    %r = arith.select %c, %six, %b : i8"""
    v = result(parse, ir_returned, elementwise(body))
    # select's operands are taken as independent: a superset ({6} or -{0, 1}), never fewer values
    assert value_set(v) == {6, 0, -1}
    assert unsigned_range(v) == (0, 255)


def test_splat_constant_and_reshape(parse, ir_returned) -> None:
    text = """
func.func @f() -> tensor<2x4xi8> {
  %c = arith.constant dense<-5> : tensor<8xi8>
  %r = tensor.expand_shape %c [[0, 1]] output_shape [2, 4] : tensor<8xi8> into tensor<2x4xi8>
  return %r : tensor<2x4xi8>
}"""
    v = result(parse, ir_returned, text)
    assert value_set(v) == {-5}
    assert unsigned_range(v) == (251, 251)


def test_an_op_it_does_not_model_is_unbounded(parse, ir_returned) -> None:
    body = "%s = arith.constant 1 : i8\n %r = arith.divsi %v, %s : i8"
    v = result(parse, ir_returned, elementwise(body))
    assert value_set(v) is None and unsigned_range(v) == (0, 255)
