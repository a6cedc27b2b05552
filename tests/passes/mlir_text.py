"""Builders of the hand-written MLIR text the pass tests parse: a function around some lines, and the
``linalg.generic`` ops they keep writing (an elementwise op, the two nibbles of packed int4 bytes, a
dequantization). Every op is over all-parallel loops; each helper gives lines indented for a function body."""

from __future__ import annotations

from collections.abc import Sequence

ID2 = "affine_map<(d0, d1) -> (d0, d1)>"
ROW = "affine_map<(d0, d1) -> (d0)>"
ID3 = "affine_map<(d0, d1, d2) -> (d0, d1, d2)>"
GROUP = "affine_map<(d0, d1, d2) -> (d0, d1)>"


def element(tensor_type: str) -> str:
    """``tensor<16x64xi8>`` → ``i8``."""
    return tensor_type.removesuffix(">").rsplit("x", 1)[-1]


def function(params: str, result: str, result_type: str, *lines: str) -> str:
    """``func.func @f(params) -> result_type`` running ``lines`` and returning ``result``."""
    body = "\n".join(lines)
    return f"""
func.func @f({params}) -> {result_type} {{
{body}
  return {result} : {result_type}
}}"""


def generic(name: str, ins: Sequence[tuple[str, str]], out: tuple[str, str], maps: Sequence[str],
            args: Sequence[str], ops: str | Sequence[str], yielded: str = "%r") -> str:
    """``name = linalg.generic`` reading ``ins`` (value, tensor type) into ``out`` (init, tensor type) at
    ``maps``, its block arguments named ``args`` (one per input, then the output's), running ``ops`` and
    yielding ``yielded``."""
    iterators = ", ".join(['"parallel"'] * out[1].count("x"))
    types = [t for _, t in ins] + [out[1]]
    block = ", ".join(f"{a}: {element(t)}" for a, t in zip(args, types, strict=True))
    body = ops if isinstance(ops, str) else "\n    ".join(ops)
    return f"""  {name} = linalg.generic {{indexing_maps = [{", ".join(maps)}], iterator_types = [{iterators}]}}
      ins({", ".join(v for v, _ in ins)} : {", ".join(t for _, t in ins)}) outs({out[0]} : {out[1]}) {{
  ^bb0({block}):
    {body}
    linalg.yield {yielded} : {element(out[1])}
  }} -> {out[1]}"""


def empty(name: str, tensor_type: str) -> str:
    return f"  {name} = tensor.empty() : {tensor_type}"


def elementwise(name: str, src: str, src_type: str, dst_type: str, ops: str | Sequence[str], *,
                init: str = "%e", args: tuple[str, str] = ("%v", "%o"), yielded: str = "%r") -> str:
    """``name = generic(src)`` of a 2-D ``src``, element by element, into ``init``: ``ops`` over the element
    ``args[0]``."""
    return generic(name, [(src, src_type)], (init, dst_type), [ID2, ID2], args, ops, yielded)


def nibble_halves(packed: str, packed_type: str, unpacked_type: str, *, init: str = "%e") -> str:
    """``%q``: the low nibbles (``andi 15``) of the 2-D bytes ``packed`` then their high ones (``shrui 4``),
    concatenated along dim 1 into ``unpacked_type``."""
    return "\n".join([
        "  %c15 = arith.constant 15 : i8",
        "  %c4 = arith.constant 4 : i8",
        empty(init, packed_type),
        elementwise("%lo", packed, packed_type, packed_type, "%r = arith.andi %v, %c15 : i8", init=init),
        elementwise("%hi", packed, packed_type, packed_type, "%r = arith.shrui %v, %c4 : i8", init=init),
        f"  %q = tensor.concat dim(1) %lo, %hi : ({packed_type}, {packed_type}) -> {unpacked_type}",
    ])


def dequant_generic(name: str, q: tuple[str, str], scale: tuple[str, str], out: tuple[str, str],
                    maps: Sequence[str], *, convert: str = "sitofp", zero: tuple[str, str] | None = None) -> str:
    """``name = convert(q) · scale`` -- or ``(convert(q) - zero) · scale`` -- each operand a (value, tensor
    type), read at ``maps`` (``q``, ``scale``, ``zero`` if any, the output)."""
    q_el, f_el = element(q[1]), element(out[1])
    ins = [q, scale] + ([zero] if zero else [])
    args = ["%a", "%b"] + (["%c"] if zero else []) + ["%o"]
    ops = [f"%f = arith.{convert} %a : {q_el} to {f_el}"]
    if zero:
        ops.append(f"%d = arith.subf %f, %c : {f_el}")
    ops.append(f"%r = arith.mulf {'%d' if zero else '%f'}, %b : {f_el}")
    return generic(name, ins, out, maps, args, ops)
