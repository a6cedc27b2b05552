"""Front ends: turn third-party quantized-weight graphs into plain torch arithmetic msd can compile.

Models quantized by torchao (``quantize_`` with int8 / intx weight-only configs) or by PT2E
(``quantized_decomposed.dequantize_*``) export to graphs with custom dequantize ops that IREE's
torch input pipeline cannot lower, and torchao's weights are tensor subclasses.  :func:`normalize`
rewrites such an :class:`~torch.export.ExportedProgram` into core ATen only:

- tensor-subclass parameters (``Int8Tensor``, ``IntxUnpackedToInt8Tensor``, …) are split into their
  plain inner tensors, which stay parameters of the program (``<layer>.parametrizations.weight.
  original0`` = int data, ``original1`` = scale, ``original2`` = zero point, in the subclass's
  ``tensor_data_names`` order);
- ``aten._weight_int8pack_mm`` (the CPU int8 weight-only kernel older torchao versions call)
  becomes the same dequantize followed by ``mm``;
- every dequantize op becomes ``q.to(f) [- zero_point.to(f)] * scale`` on the untouched integer
  tensor.  Group-wise quantization keeps the integer weight ``[N, K]`` as it is and reads it as
  ``[N, K/g, g]`` with scale and zero point ``[N, K/g, 1]``, then reshapes the product back.

Nothing is precomputed: the integer tensors remain graph inputs (parameters, buffers), never a
float weight.  Lifted tensor constants (plain tensor attributes of a module, e.g. PT2E's folded
``_frozen_param``) are turned into non-persistent buffers so that msd's importer makes them named
parameters instead of inlining their bytes into the IR.

``msd.compile`` takes a module; compile a normalized program with
``msd.compile(as_module(normalize(ep)), example_inputs, ...)`` (it is exported again, op for op;
pass the same ``dynamic_shapes`` again if the program has any).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import ExportGraphSignature, InputKind, InputSpec

from msd.errors import NormalizeError, OptionError

# Namespaces whose ops must not survive normalization (IREE cannot lower them).  ``mslk`` holds the
# CUDA kernels of torchao's packed int4 layouts (``Int4WeightOnlyConfig``, plain/preshuffled).
FOREIGN_NAMESPACES = ("torchao", "quantized_decomposed", "export", "mslk")
# ATen kernels that take an opaque packed int4 weight: the unpacking happens inside the kernel, so
# there is no integer tensor in the graph to match.  Refused with a clear message.
PACKED_INT4_KERNELS = (
    "aten._weight_int4pack_mm",
    "aten._weight_int4pack_mm_for_cpu",
    "aten._weight_int4pack_mm_with_scales_and_zeros",
    "aten._dyn_quant_matmul_4bit",
)



# --- the decompositions ---------------------------------------------------------------------


def _float_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype.is_floating_point else torch.float32


def _block_view(shape: Sequence[int], block_size: Sequence[int]) -> tuple[list[int], list[int]]:
    """(shape the data is read as, shape of the scale/zero point in that view).

    A dim with ``1 < block < size`` is split into ``[size/block, block]``, the scale taking 1 on the
    inner part; a dim whose block spans it all gets scale extent 1; ``block == 1`` keeps the dim
    (one scale per element along it).  This is torchao's ``block_size`` convention.
    """
    if len(block_size) != len(shape):
        raise NormalizeError(f"block_size {list(block_size)} does not match a tensor of shape {list(shape)}")
    data: list[int] = []
    qparams: list[int] = []
    for size, block in zip(shape, block_size):
        if 1 < block < size:
            if size % block:
                raise NormalizeError(f"dim of size {size} is not a multiple of the block size {block}")
            data += [size // block, block]
            qparams += [size // block, 1]
        else:
            data.append(size)
            qparams.append(1 if block != 1 else size)
    return data, qparams


def _dequantize_blocked(
    q: torch.Tensor,
    block_size: Sequence[int],
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    compute: torch.dtype,
    out: torch.dtype,
) -> torch.Tensor:
    shape = list(q.shape)
    data_shape, qparam_shape = _block_view(shape, block_size)
    grouped = data_shape != shape
    x = q.reshape(data_shape) if grouped else q
    w = x.to(compute)
    if zero_point is not None:
        w = w - zero_point.reshape(qparam_shape).to(compute)
    w = w * scale.reshape(qparam_shape)
    if grouped:
        w = w.reshape(shape)
    return w.to(out)


def _torchao_dequantize_affine(
    input: torch.Tensor,  # noqa: A002 - the op's own argument names
    block_size: Sequence[int],
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    input_dtype: torch.dtype,
    quant_min: int | float | None = None,
    quant_max: int | float | None = None,
    output_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    # torchao: input.to(output_dtype) - zero_point.to(output_dtype), times scale, cast back.
    return _dequantize_blocked(input, block_size, scale, zero_point, output_dtype, output_dtype)


def _qd_dequantize_per_tensor(
    input: torch.Tensor,  # noqa: A002
    scale: float | torch.Tensor,
    zero_point: int | torch.Tensor,
    quant_min: int | torch.Tensor,
    quant_max: int | torch.Tensor,
    dtype: torch.dtype,
    *,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    out = out_dtype or torch.float32
    w = input.to(out)
    if isinstance(zero_point, torch.Tensor):
        w = w - zero_point.reshape([]).to(out)
    elif zero_point != 0:
        w = w - zero_point
    if isinstance(scale, torch.Tensor):
        scale = scale.reshape([])
    return (w * scale).to(out)


def _qd_dequantize_per_channel(
    input: torch.Tensor,  # noqa: A002
    scales: torch.Tensor,
    zero_points: torch.Tensor | None,
    axis: int,
    quant_min: int,
    quant_max: int,
    dtype: torch.dtype,
    *,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    # PT2E: ((input - zero_points) * scales).to(out_dtype): the arithmetic is in the scales' type.
    axis = axis % input.dim()
    block = [1 if d == axis else s for d, s in enumerate(input.shape)]
    compute = _float_dtype(scales.dtype)
    return _dequantize_blocked(input, block, scales, zero_points, compute, out_dtype or torch.float32)


def _qd_dequantize_per_channel_group(
    input: torch.Tensor,  # noqa: A002
    scales: torch.Tensor,
    zero_points: torch.Tensor | None,
    quant_min: int,
    quant_max: int,
    dtype: torch.dtype,
    group_size: int = 128,
    output_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    if input.dim() != 2:
        raise NormalizeError(f"dequantize_per_channel_group expects a 2-D weight, got {input.dim()}-D")
    k = input.shape[-1]
    if group_size > k and scales.shape[-1] == 1:  # PT2E's own rule (GPTQ single column)
        group_size = k
    compute = _float_dtype(scales.dtype)
    return _dequantize_blocked(input, [1, group_size], scales, zero_points, compute, output_dtype)


def _aten_weight_int8pack_mm(x: torch.Tensor, mat2: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    # x [M, K] float, mat2 [N, K] int8, scales [N]: x @ (mat2 * scales[:, None]).T in x's dtype.
    w = _dequantize_blocked(mat2, [1, mat2.shape[1]], scales, None, x.dtype, x.dtype)
    return torch.mm(x, w.t())


def _ops(namespace: str, names: Sequence[str]) -> list[torch._ops.OpOverload]:
    ns = getattr(torch.ops, namespace)
    found = []
    for name in names:
        base, _, overload = name.partition(".")
        if not hasattr(ns, base):
            continue
        packet = getattr(ns, base)
        if overload in ("", "default") and "default" in packet.overloads():
            found.append(packet.default)
        elif overload and overload in packet.overloads():
            found.append(getattr(packet, overload))
    return found


def _register_quantized_decomposed() -> None:
    """PT2E's ops live in ``torch.ao.quantization.fx._decomposed`` and register on its import."""
    try:
        import torch.ao.quantization.fx._decomposed  # noqa: F401
    except ImportError:  # pragma: no cover - torch without torch.ao.quantization
        pass


def decomposition_table() -> dict[torch._ops.OpOverload, Callable[..., torch.Tensor]]:
    """The dequantize ops :func:`normalize` rewrites, each mapped to its plain-torch form."""
    _register_quantized_decomposed()
    table: dict[torch._ops.OpOverload, Callable[..., torch.Tensor]] = {}
    for op in _ops("torchao", ["dequantize_affine"]):
        table[op] = _torchao_dequantize_affine
    for op in _ops(
        "quantized_decomposed",
        ["dequantize_per_tensor", "dequantize_per_tensor.tensor", "dequantize_per_tensor.tensor2"],
    ):
        table[op] = _qd_dequantize_per_tensor
    for op in _ops("quantized_decomposed", ["dequantize_per_channel"]):
        table[op] = _qd_dequantize_per_channel
    for op in _ops("quantized_decomposed", ["dequantize_per_channel_group"]):
        table[op] = _qd_dequantize_per_channel_group
    for op in _ops("aten", ["_weight_int8pack_mm"]):
        table[op] = _aten_weight_int8pack_mm
    return table


# --- the program rewrite ---------------------------------------------------------------------


def normalize(program: ExportedProgram) -> ExportedProgram:
    """Return ``program`` with quantized weights as plain integer tensors and dequantization in ATen.

    Raises :class:`NormalizeError` if an op of torchao / ``quantized_decomposed`` / tensor-subclass
    access survives (an op this front end does not know, e.g. a packed int4 matmul kernel).
    """
    if not isinstance(program, ExportedProgram):
        raise OptionError(f"normalize expects a torch.export.ExportedProgram, got {type(program).__name__}")
    table = decomposition_table()
    plain = (torch.Tensor, torch.nn.Parameter)
    needed = any(_foreign(n.target) or n.target in table for n in program.graph.nodes) or any(
        type(t) not in plain for t in [*program.state_dict.values(), *program.constants.values()]
        if isinstance(t, torch.Tensor)
    )
    out = program.run_decompositions(table) if needed else program  # plain graphs: nothing to do
    out = _constants_to_buffers(out)
    leftovers = sorted({_op_name(n.target) for n in out.graph.nodes if _foreign(n.target)})
    if leftovers:
        raise NormalizeError(
            "msd's front end cannot rewrite these ops into plain torch: " + ", ".join(leftovers)
            + " (packed int4 kernels and quantized activations are not supported; weight-only"
            " dequantize ops are: " + ", ".join(sorted(_op_name(op) for op in decomposition_table())) + ")"
        )
    return out


def _op_name(op: torch._ops.OpOverload) -> str:
    return op.name().replace("::", ".")  # e.g. quantized_decomposed.dequantize_per_tensor.tensor


def _foreign(target: object) -> bool:
    if not isinstance(target, torch._ops.OpOverload):
        return False
    packet = ".".join(_op_name(target).split(".")[:2])  # namespace.op, without the overload
    return target.namespace in FOREIGN_NAMESPACES or packet in PACKED_INT4_KERNELS


def _constants_to_buffers(program: ExportedProgram) -> ExportedProgram:
    """Lifted tensor constants → non-persistent buffers (same tensor, same name), so msd's importer
    turns them into named parameters rather than inlining their bytes into the IR."""
    sig = program.graph_signature
    if not any(s.kind == InputKind.CONSTANT_TENSOR for s in sig.input_specs):
        return program
    specs = [
        InputSpec(InputKind.BUFFER, s.arg, s.target, persistent=False)
        if s.kind == InputKind.CONSTANT_TENSOR and isinstance(program.constants.get(s.target), torch.Tensor)
        else s
        for s in sig.input_specs
    ]
    return ExportedProgram(
        root=program.graph_module,
        graph=program.graph,
        graph_signature=ExportGraphSignature(input_specs=specs, output_specs=list(sig.output_specs)),
        state_dict=program.state_dict,
        range_constraints=program.range_constraints,
        module_call_graph=program.module_call_graph,
        example_inputs=program.example_inputs,
        constants=program.constants,
        verifiers=program.verifiers,
    )


def as_module(program: ExportedProgram) -> torch.nn.Module:
    """The program as a module ``msd.compile`` can take (it exports it again, op for op).

    ``ExportedProgram.module()`` forbids ``train()``/``eval()`` (the graph's mode is fixed at
    capture) but ``msd.compile`` calls ``eval()``; the program is already an inference graph, so
    the class's own methods are restored.  No guard submodule is added (``check_guards=False``).
    """
    module = program.module(check_guards=False)
    for name in ("train", "eval"):
        if name in module.__dict__:
            del module.__dict__[name]
    return module


__all__ = ["NormalizeError", "as_module", "decomposition_table", "normalize"]
