"""Front end: ATen patterns that IREE 3.13's torch input pipeline cannot lower, rewritten into ones it can.

Hugging Face transformers' masking utilities (``transformers.masking_utils``, used by BERT, Llama,
Qwen2, Gemma 3, …) build their boolean masks with ops that export fine but that IREE's torch → linalg
conversion refuses:

- a boolean constant made by a factory op (``mask.new_ones((), dtype=torch.bool)``): torch-mlir folds
  it into ``torch.vtensor.literal dense<true> : tensor<i1>``, which fails to legalize;
- ``&``, ``|``, ``^`` on boolean tensors (``aten.__and__.Tensor`` …), which fail to legalize;

their packed-sequence check calls ``aten.diff`` (no lowering: torch's decomposition replaces it);
and their rotary embeddings run under ``@torch.no_grad()``, which ``torch.export`` keeps as a
``wrap_with_set_grad_enabled`` higher-order op that the FX importer does not know.

:func:`importable` rewrites them in an :class:`~torch.export.ExportedProgram`: grad-mode regions are
inlined (``run_decompositions({})``, which decomposes nothing else: a compiled model only infers);
boolean factories make int8 and compare ``!= 0``; boolean operators become ``logical_and`` /
``logical_or`` / ``logical_xor``.  Values are unchanged; the user's model is not touched.
"""

from __future__ import annotations

import torch
from torch._decomp import core_aten_decompositions
from torch.export import ExportedProgram

aten = torch.ops.aten

# ops IREE 3.13 cannot lower, replaced by torch's own decompositions into core ATen (transformers'
# packed-sequence check: ``position_ids.diff()``)
DECOMPOSED = (aten.diff.default,)
# factory ops that can make a boolean tensor (dtype as a keyword argument)
FACTORIES = (aten.ones.default, aten.new_ones.default, aten.zeros.default, aten.new_zeros.default,
             aten.full.default, aten.new_full.default, aten.scalar_tensor.default)
# boolean operators and the logical ops they become
OPERATORS = {aten.__and__.Tensor: aten.logical_and.default, aten.__or__.Tensor: aten.logical_or.default,
             aten.__xor__.Tensor: aten.logical_xor.default, aten.bitwise_and.Tensor: aten.logical_and.default,
             aten.bitwise_or.Tensor: aten.logical_or.default, aten.bitwise_xor.Tensor: aten.logical_xor.default}


def _is_bool(node: torch.fx.Node) -> bool:
    return getattr(node.meta.get("val"), "dtype", None) == torch.bool


def importable(program: ExportedProgram) -> ExportedProgram:
    """``program`` with the boolean factories and operators of the module docstring rewritten in its
    graph (in place); returned for chaining."""
    targets = {n.target for n in program.graph.nodes if n.op == "call_function"}
    core = core_aten_decompositions()
    table = {op: core[op] for op in DECOMPOSED if op in targets}
    if table or torch.ops.higher_order.wrap_with_set_grad_enabled in targets:
        program = program.run_decompositions(table)
    graph = program.graph
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_function" or not _is_bool(node):
            continue
        if node.target in OPERATORS:
            node.target = OPERATORS[node.target]
            changed = True
        elif node.target in FACTORIES and node.kwargs.get("dtype") == torch.bool:
            val = node.meta["val"]
            node.kwargs = {**node.kwargs, "dtype": torch.int8}
            if isinstance(node.args[-1], bool) and node.target is not aten.scalar_tensor.default:
                node.args = (*node.args[:-1], int(node.args[-1]))  # full's fill value
            elif node.target is aten.scalar_tensor.default:
                node.args = (int(node.args[0]), *node.args[1:])
            with val.fake_mode:
                node.meta["val"] = torch.empty_like(val, dtype=torch.int8)
            with graph.inserting_after(node):
                ne = graph.call_function(aten.ne.Scalar, (node, 0))
            ne.meta = {**node.meta, "val": val}
            node.replace_all_uses_with(ne, delete_user_cb=lambda user, ne=ne: user is not ne)
            changed = True
    if changed:
        program.graph_module.recompile()
    return program


__all__ = ["importable"]
