"""Folding elementwise consumers (bias add, ``truncf``, activations) into an epilogue generic."""

from __future__ import annotations

from iree.compiler import ir
from iree.compiler.dialects import linalg

from . import _ir


def fold_elementwise_consumers(producer: ir.Operation) -> ir.Operation:
    """Merge the chain of single-use elementwise consumers (bias add, truncf, activations…) of
    ``producer`` (an elementwise ``linalg.generic``) into it; return the final merged op."""
    while True:
        consumer = _sole_elementwise_user(producer)
        if consumer is None:
            return producer
        producer = _merge(producer, consumer)


def _sole_elementwise_user(op: ir.Operation) -> ir.Operation | None:
    uses = list(op.results[0].uses)
    if len(op.results) != 1 or len(uses) != 1:
        return None
    user = uses[0].owner
    user = user.operation if isinstance(user, ir.OpView) else user
    if user.name != "linalg.generic" or len(user.results) != 1 or user.block != op.block:
        return None
    if not _ir.is_elementwise(user):
        return None
    n_in = len(user.operands) - 1
    positions = [i for i, v in enumerate(user.operands) if v == op.results[0]]
    if len(positions) != 1 or positions[0] >= n_in:
        return None
    if not _ir.maps_of(user)[positions[0]].is_permutation:
        return None
    return user


def _merge(producer: ir.Operation, consumer: ir.Operation) -> ir.Operation:
    p_maps, c_maps = _ir.maps_of(producer), _ir.maps_of(consumer)
    p_in = len(producer.operands) - 1
    c_in = len(consumer.operands) - 1
    slot = [i for i, v in enumerate(consumer.operands) if v == producer.results[0]][0]
    out_perm = _ir.dim_positions(p_maps[-1])
    inv = ir.AffineMap.get(len(out_perm), 0, [ir.AffineDimExpr.get(out_perm.index(j)) for j in range(len(out_perm))])
    to_p = _ir.compose(inv, c_maps[slot])  # consumer space → producer space
    p_block, c_block = producer.regions[0].blocks[0], consumer.regions[0].blocks[0]
    p_out_used = len(list(p_block.arguments[p_in].uses)) > 0
    ins = [*producer.operands[:p_in], *([producer.operands[p_in]] if p_out_used else [])]
    maps = [_ir.compose(m, to_p) for m in p_maps[: p_in + (1 if p_out_used else 0)]]
    others = [i for i in range(c_in) if i != slot]
    ins += [consumer.operands[i] for i in others]
    maps += [c_maps[i] for i in others] + [c_maps[-1]]
    with ir.InsertionPoint(consumer), consumer.location:
        merged = linalg.GenericOp(
            [consumer.results[0].type], ins, [consumer.operands[c_in]],
            ir.ArrayAttr.get([ir.AffineMapAttr.get(m) for m in maps]), consumer.attributes["iterator_types"],
        )
        block = merged.regions[0].blocks.append(*[_ir.elem_type(v) for v in [*ins, consumer.operands[c_in]]])
        args = list(block.arguments)
        mapping = list(zip(list(p_block.arguments)[: len(ins) - len(others)], args))
        y = _clone_body(p_block, mapping, block)[0]
        mapping = [(c_block.arguments[slot], y)]
        mapping += [(c_block.arguments[i], args[len(ins) - len(others) + j]) for j, i in enumerate(others)]
        mapping.append((c_block.arguments[c_in], args[-1]))
        with ir.InsertionPoint(block):
            linalg.YieldOp(_clone_body(c_block, mapping, block))
    consumer.results[0].replace_all_uses_with(merged.results[0])
    consumer.erase()
    producer.erase()
    return merged.operation


def _clone_body(src: ir.Block, mapping: list[tuple[ir.Value, ir.Value]], dst: ir.Block) -> list[ir.Value]:
    """Clone ``src``'s ops (all but the terminator) into ``dst``; return the mapped yields."""

    def lookup(v: ir.Value) -> ir.Value:
        for old, new in mapping:
            if old == v:
                return new
        return v

    ops = list(src.operations)
    for op in ops[:-1]:
        new = op.operation.clone(ip=ir.InsertionPoint(dst)).operation
        for old, repl in mapping:
            new.replace_uses_of_with(old, repl)
        mapping.extend(zip(op.results, new.results))
    return [lookup(v) for v in ops[-1].operands]
