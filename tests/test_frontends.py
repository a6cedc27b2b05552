"""Front ends (``msd.compiler.frontends.thirdparty``): torchao and PT2E quantized graphs → plain torch → IREE.

For each front end: the normalized program is pure ATen, keeps the integer weight as a program
input (never a float weight), equals the eager quantized model, and IREE's own lowering of it
(``slices=0``) agrees with eager within 1e-4 relative.  torchao tests skip only when torchao is
not installed; the PT2E ops come with torch (``torch.ao.quantization.fx._decomposed``).
"""

from __future__ import annotations

import pytest
import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)
import torch.nn.functional as F
from torch import nn
from torch.export.graph_signature import InputKind

import msd
from helpers import mlp
from msd.compiler.frontends.thirdparty import NormalizeError, as_module, decomposition_table, normalize

qd = torch.ops.quantized_decomposed

DIMS = (64, 128, 32)
REL_TOL = 1e-4


def _torchao():
    return pytest.importorskip("torchao.quantization", reason="torchao is not installed (pip install torchao==0.18.0)")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def _normalized(model: nn.Module, x: torch.Tensor) -> torch.export.ExportedProgram:
    program = normalize(torch.export.export(model, (x,)))  # models here are already in eval mode
    foreign = {
        str(n.target) for n in program.graph.nodes
        if n.op == "call_function" and getattr(n.target, "namespace", "aten") != "aten"
    }
    assert not foreign, f"non-ATen ops survived normalize: {foreign}"
    return program


def _integer_inputs(program: torch.export.ExportedProgram) -> dict[str, torch.Tensor]:
    """Parameters/buffers/constants of integer dtype that the graph actually reads."""
    used = {n.name for n in program.graph.nodes if n.op == "placeholder" and n.users}
    out = {}
    for spec in program.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT or spec.arg.name not in used:
            continue
        t = program.state_dict.get(spec.target, program.constants.get(spec.target))
        if isinstance(t, torch.Tensor) and not t.dtype.is_floating_point:
            out[spec.target] = t
    return out


def _check_baseline(model: nn.Module, x: torch.Tensor, program: torch.export.ExportedProgram) -> None:
    ref = model(x)
    assert torch.equal(program.module()(x), ref), "normalized program differs from the eager model"
    y = msd.compile(as_module(program), (x,), slices=0)(x)
    assert _rel(y, ref) < REL_TOL


# ------------------------------------------------------------------------------ PT2E-style models
class PT2ELinear(nn.Module):
    """A linear layer whose forward dequantizes an int8 buffer with a ``quantized_decomposed`` op."""

    def __init__(self, lin: nn.Linear, kind: str, group: int = 32) -> None:
        super().__init__()
        w = lin.weight.detach()
        n, k = w.shape
        self.kind, self.group = kind, group
        if kind == "per_channel":  # asymmetric, int64 zero points as PT2E's observers make them
            lo, hi = w.amin(1), w.amax(1)
            s = (hi - lo) / 255
            zp = torch.round(-128 - lo / s).clamp(-128, 127).to(torch.int64)
            q = torch.clamp(torch.round(w / s[:, None]) + zp[:, None], -128, 127)
        elif kind == "per_channel_group":  # int4 values in int8, one scale per group of K
            s = w.reshape(n, k // group, group).abs().amax(-1) / 7
            zp = torch.zeros(n, k // group, dtype=torch.int32)
            q = torch.clamp(torch.round(w / s.repeat_interleave(group, 1)), -8, 7)
        else:  # per_tensor / per_tensor_tensor
            s = w.abs().max() / 127
            zp = torch.tensor(3)
            q = torch.clamp(torch.round(w / s) + 3, -128, 127)
        self.register_buffer("qweight", q.to(torch.int8))
        self.register_buffer("scale", s.float())
        self.register_buffer("zero_point", zp)
        self.register_buffer("bias", lin.bias.detach().clone())
        self.s_float, self.zp_int = float(s.max()), int(zp.max())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "per_channel":
            w = qd.dequantize_per_channel(self.qweight, self.scale, self.zero_point, 0, -128, 127, torch.int8)
        elif self.kind == "per_channel_group":
            w = qd.dequantize_per_channel_group(
                self.qweight, self.scale, self.zero_point, -8, 7, torch.int8, self.group, torch.float32
            )
        elif self.kind == "per_tensor":
            w = qd.dequantize_per_tensor(self.qweight, self.s_float, self.zp_int, -128, 127, torch.int8)
        else:
            w = qd.dequantize_per_tensor.tensor(self.qweight, self.scale, self.zero_point, -128, 127, torch.int8)
        return F.linear(x, w, self.bias)


def pt2e_mlp(kind: str) -> nn.Module:
    f = mlp(*DIMS, act=nn.ReLU)
    return nn.Sequential(PT2ELinear(f[0], kind), nn.ReLU(), PT2ELinear(f[2], kind)).eval()


PT2E_KINDS = ("per_channel", "per_channel_group", "per_tensor", "per_tensor_tensor")


@pytest.mark.parametrize("kind", PT2E_KINDS)
def test_pt2e_ops_baseline(kind: str) -> None:
    model = pt2e_mlp(kind)
    x = torch.randn(4, DIMS[0])
    program = _normalized(model, x)
    ints = _integer_inputs(program)
    assert {"0.qweight", "2.qweight"} <= set(ints)
    assert all(ints[k].dtype == torch.int8 for k in ("0.qweight", "2.qweight"))
    _check_baseline(model, x, program)


def test_pt2e_group_reads_weight_as_groups() -> None:
    program = _normalized(pt2e_mlp("per_channel_group"), torch.randn(2, DIMS[0]))
    views = [n.args[1] for n in program.graph.nodes if n.target == torch.ops.aten.view.default]
    assert [128, 2, 32] in views and [128, 2, 1] in views and [128, 64] in views


def test_pt2e_lifted_constants_become_parameters() -> None:
    """Plain tensor attributes export as lifted constants; they must not be inlined into the IR."""

    class ConstWeight(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = torch.randn(32, 64)
            self.s = w.abs().amax(1) / 127
            self.q = torch.round(w / self.s[:, None]).to(torch.int8)

        def forward(self, x):
            return F.linear(x, qd.dequantize_per_channel(self.q, self.s, None, 0, -127, 127, torch.int8))

    model, x = ConstWeight().eval(), torch.randn(3, 64)
    ep = torch.export.export(model, (x,))
    assert any(s.kind == InputKind.CONSTANT_TENSOR for s in ep.graph_signature.input_specs)
    program = _normalized(model, x)
    assert not any(s.kind == InputKind.CONSTANT_TENSOR for s in program.graph_signature.input_specs)
    torch_ir = msd.compile(as_module(program), (x,), emit="torch")
    assert '"model"::"q"> : tensor<32x64xi8>' in torch_ir and "dense_resource" not in torch_ir
    _check_baseline(model, x, program)


def test_pt2e_convert_flow() -> None:
    """A real prepare_pt2e/convert_pt2e weight-only flow (int8 per channel, folded weights)."""
    _torchao()
    from torchao.quantization.pt2e.observer import PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer

    class LinearWeightsOnly(Quantizer):
        def annotate(self, gm):
            spec = QuantizationSpec(
                dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric,
                ch_axis=0, is_dynamic=False, observer_or_fake_quant_ctr=PerChannelMinMaxObserver,
            )
            for n in gm.graph.nodes:
                if n.target == torch.ops.aten.linear.default:
                    n.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={n.args[1]: spec}, _annotated=True
                    )
            return gm

        def validate(self, gm) -> None:
            pass

    x = torch.randn(4, DIMS[0])
    prepared = prepare_pt2e(torch.export.export(mlp(*DIMS, act=nn.ReLU).eval(), (x,)).module(), LinearWeightsOnly())
    prepared(x)
    model = convert_pt2e(prepared)
    assert "quantized_decomposed.dequantize_per_channel" in model.code
    program = _normalized(model, x)
    assert sorted(t.shape for t in _integer_inputs(program).values() if t.dtype == torch.int8) == [
        (32, 128), (128, 64)
    ]
    _check_baseline(model, x, program)


# ------------------------------------------------------------------------------ torchao
def _torchao_model(config_name: str) -> nn.Module:
    tq = _torchao()
    configs = {
        "int8_weight_only": lambda: tq.Int8WeightOnlyConfig(set_inductor_config=False),
        "int8_weight_only_group32": lambda: tq.Int8WeightOnlyConfig(
            granularity=tq.PerGroup(32), set_inductor_config=False
        ),
        "int4_weight_only_group32": lambda: tq.IntxWeightOnlyConfig(
            weight_dtype=torch.int4, granularity=tq.PerGroup(32)
        ),
        "int4_weight_only_group64_asym": lambda: tq.IntxWeightOnlyConfig(
            weight_dtype=torch.int4, granularity=tq.PerGroup(64), mapping_type=tq.MappingType.ASYMMETRIC
        ),
    }
    model = mlp(*DIMS, act=nn.ReLU)
    tq.quantize_(model, configs[config_name]())
    return model.eval()


TORCHAO_CONFIGS = (
    "int8_weight_only",
    "int8_weight_only_group32",
    "int4_weight_only_group32",
    "int4_weight_only_group64_asym",
)


@pytest.mark.parametrize("config", TORCHAO_CONFIGS)
def test_torchao_baseline(config: str) -> None:
    model = _torchao_model(config)
    x = torch.randn(4, DIMS[0])
    program = _normalized(model, x)
    qweights = {k: t for k, t in _integer_inputs(program).items() if t.shape in ((128, 64), (32, 128))}
    assert len(qweights) == 2 and all(t.dtype == torch.int8 for t in qweights.values())
    if config.startswith("int4"):  # torchao stores int4 unpacked, one value per int8
        assert all(t.min() >= -8 and t.max() <= 7 for t in qweights.values())
    _check_baseline(model, x, program)


def test_torchao_int4_dequant_is_grouped_in_linalg() -> None:
    model = _torchao_model("int4_weight_only_group32")
    x = torch.randn(4, DIMS[0])
    linalg = msd.compile(as_module(_normalized(model, x)), (x,), emit="linalg")
    assert "tensor<128x64xi8> into tensor<128x2x32xi8>" in linalg  # the int weight read as [N, K/g, g]
    assert "arith.sitofp" in linalg and "arith.subf" in linalg and "arith.mulf" in linalg


# ------------------------------------------------------------------------------ MSD on top
@pytest.mark.parametrize("front", ["pt2e:per_channel", "torchao:int4_weight_only_group32"])
def test_msd_rewrites_normalized_matmuls(front: str) -> None:
    source, name = front.split(":")
    model = pt2e_mlp(name) if source == "pt2e" else _torchao_model(name)
    x = torch.randn(4, DIMS[0])
    cm = msd.compile(as_module(_normalized(model, x)), (x,), slices=2)
    assert len(cm.report.rewritten) == 2, cm.report.format()
    assert _rel(cm(x), model(x)) < 1e-3


@pytest.mark.parametrize("front", ["pt2e:per_channel_group", "torchao:int8_weight_only"])
def test_compile_takes_quantized_models_as_they_are(front: str) -> None:
    """No manual step: msd.compile normalizes third-party dequantize ops itself."""
    source, name = front.split(":")
    model = pt2e_mlp(name) if source == "pt2e" else _torchao_model(name)
    x = torch.randn(3, DIMS[0])
    for subject in (model, torch.export.export(model, (x,))):
        cm = msd.compile(subject, (x,), slices=2)
        assert len(cm.report.rewritten) == 2, cm.report.format()
        assert _rel(cm(x), model(x)) < 1e-3


FRONTS = [f"pt2e:{k}" for k in PT2E_KINDS] + [f"torchao:{c}" for c in TORCHAO_CONFIGS]


@pytest.mark.parametrize("front", FRONTS)
def test_every_front_end_and_slice_count(front: str) -> None:
    """Every front end × slices 1/2/3: all matmuls rewritten, errors in their classes.

    Relative to the eager f32 model: slices=1 is W8A8-like (~1e-2), slices=2 ~16-bit (the §3 bound
    gives ≲ 1e-4 for these layers), slices=3 at f32 rounding (~1e-6).
    """
    source, name = front.split(":")
    model = pt2e_mlp(name) if source == "pt2e" else _torchao_model(name)
    x = torch.randn(4, DIMS[0], generator=torch.Generator().manual_seed(7))
    ref = model(x)
    err = {}
    for slices in (1, 2, 3):
        cm = msd.compile(model, (x,), slices=slices)
        assert len(cm.report.rewritten) == 2 and not cm.report.skipped, cm.report.format()
        err[slices] = _rel(cm(x), ref)
    assert 1e-3 < err[1] < 5e-2, err
    assert err[2] < 2e-4 and err[2] < err[1] / 50, err
    assert err[3] < 5e-6, err


# ------------------------------------------------------------------------------ the decompositions
def test_decompositions_match_the_ops() -> None:
    table = decomposition_table()
    torch.manual_seed(0)
    q = torch.randint(-128, 128, (8, 64), dtype=torch.int8)
    s, zp = torch.rand(8) + 0.1, torch.randint(-5, 5, (8,))
    gs, gzp = torch.rand(8, 4) + 0.1, torch.randint(-5, 5, (8, 4), dtype=torch.int32)
    cases = [
        (qd.dequantize_per_channel.default, (q, s, zp, 0, -128, 127, torch.int8)),
        (qd.dequantize_per_channel.default, (q.t().contiguous(), s, None, 1, -128, 127, torch.int8)),
        (qd.dequantize_per_channel_group.default, (q, gs, gzp, -128, 127, torch.int8, 16, torch.float32)),
        (qd.dequantize_per_channel_group.default, (q, gs, None, -128, 127, torch.int8, 16, torch.float32)),
        (qd.dequantize_per_tensor.default, (q, 0.02, -3, -128, 127, torch.int8)),
        (qd.dequantize_per_tensor.tensor, (q, torch.tensor(0.02), torch.tensor(-3), -128, 127, torch.int8)),
    ]
    for op, args in cases:
        assert torch.allclose(table[op](*args), op(*args), rtol=1e-6, atol=0), op


def test_torchao_dequantize_affine_matches() -> None:
    _torchao()
    from torchao.quantization.quant_primitives import dequantize_affine

    op = torch.ops.torchao.dequantize_affine.default
    fn = decomposition_table()[op]
    q = torch.randint(-8, 8, (8, 64), dtype=torch.int8)
    for block, shape in [([1, 16], (8, 4)), ([1, 64], (8, 1)), ([8, 64], (1, 1)), ([1, 64], (8,))]:
        scale, zp = torch.rand(shape) + 0.1, torch.randint(-3, 3, shape, dtype=torch.int8)
        for z in (zp, None):
            for out in (torch.float32, torch.bfloat16):
                want = dequantize_affine(q, block, scale.to(out), z, torch.int8, -8, 7, output_dtype=out)
                got = fn(q, block, scale.to(out), z, torch.int8, -8, 7, out)
                assert got.dtype == want.dtype and torch.equal(got, want), (block, shape, z is None, out)


def test_cpu_int8pack_kernel_becomes_dequantize_then_mm() -> None:
    """``aten._weight_int8pack_mm`` (older torchao int8 weight-only on CPU) has no IREE lowering."""

    class Int8Pack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("w", torch.randint(-127, 128, (32, 64), dtype=torch.int8))
            self.register_buffer("scales", torch.rand(32) / 100)

        def forward(self, x):
            return torch.ops.aten._weight_int8pack_mm(x, self.w, self.scales)

    model, x = Int8Pack().eval(), torch.randn(4, 64)
    program = normalize(torch.export.export(model, (x,)))
    assert torch.ops.aten._weight_int8pack_mm.default not in {n.target for n in program.graph.nodes}
    assert _integer_inputs(program)["w"].dtype == torch.int8
    assert _rel(program.module()(x), model(x)) < 1e-6
    assert _rel(msd.compile(as_module(program), (x,), slices=0)(x), model(x)) < REL_TOL


# ------------------------------------------------------------------------------ refusals
def test_packed_int4_kernel_is_refused() -> None:
    class Packed(nn.Module):
        def forward(self, x, w, scale_and_zeros):
            return torch.ops.aten._weight_int4pack_mm_for_cpu(x, w, 32, scale_and_zeros)

    args = (torch.randn(2, 64), torch.zeros(32, 32, dtype=torch.uint8), torch.zeros(2, 32, 2))
    with pytest.raises(NormalizeError, match="aten._weight_int4pack_mm_for_cpu"):
        normalize(torch.export.export(Packed(), args))


def test_unknown_quantized_op_is_refused() -> None:
    class ActQuant(nn.Module):
        def forward(self, x):
            q = qd.quantize_per_tensor(x, 0.1, 0, -128, 127, torch.int8)
            return qd.dequantize_per_tensor(q, 0.1, 0, -128, 127, torch.int8)

    ep = torch.export.export(ActQuant(), (torch.randn(2, 4),))
    with pytest.raises(NormalizeError, match="quantized_decomposed.quantize_per_tensor"):
        normalize(ep)


def test_normalize_rejects_non_programs() -> None:
    with pytest.raises(TypeError, match="ExportedProgram"):
        normalize(nn.Linear(2, 2))
