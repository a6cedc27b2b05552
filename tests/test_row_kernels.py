"""msd's row kernels (passes/row_kernels.py) and the quantizers that absorb them.

- the row ops' eager implementations are the model's own arithmetic, bit for bit;
- each standalone kernel through IREE against float64 (RMSNorm, the residual add and RMSNorm, SwiGLU,
  GeGLU; rows of 1, 7 and 33; lengths that take chunks of 32 and of 4 lanes);
- the activation quantizer with each prologue (a row kernel's, a decode attention's combination of its
  splits) through IREE: its codes and scales reconstruct the float64 row within the slice bound, and
  add_rms_norm's sum is the f32 sum exactly;
- a model (add_rms_norm → int8 linear) through ``msd.compile``: one quantizer dispatch with the norm as
  its prologue, no row kernel left, the output within the method's float64 bound.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from iree.compiler.tools.binaries import find_tool
from torch import nn

import msd
from helpers import F32_EPS, error_bound, mlp, slice_error
from msd.compiler import ops  # noqa: F401 - registers torch.ops.msd.*
from msd.compiler.models.llama import MLP, RMSNorm
from msd.compiler.pipeline.targets import resolve
from msd.passes.attention_kernels import AttentionSpec, CombineSpec
from msd.passes.decompose_activations.cpu_kernel import SLICE_RADIX
from msd.passes.decompose_activations.quantize_kernel import QuantizeSpec
from msd.passes.row_kernels import QkvSpec, RowSpec

EPS = 1e-5


def _run(tmp: Path, executables: list[str], func: str, name: str) -> object:
    """Compile ``executables`` and the function ``func`` for this CPU; the module's function ``name``."""
    import iree.runtime as rt

    (tmp / "m.mlir").write_text("module {\n" + "\n".join(executables) + "\n" + func + "\n}\n")
    vmfb = tmp / "m.vmfb"
    proc = subprocess.run([find_tool("iree-compile"), str(tmp / "m.mlir"), *resolve("llvm-cpu").flags, "-o", str(vmfb)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ctx = rt.SystemContext(config=rt.Config("local-task"))
    ctx.add_vm_module(rt.VmModule.copy_buffer(ctx.instance, vmfb.read_bytes()))
    return ctx.modules.module[name]


def _dispatch_func(symbol: str, inputs: dict[str, str], outputs: list[str], rows: str = "%m") -> str:
    """``util.func @f`` taking ``inputs`` (memref-style types, ``?`` the rows) and returning the dispatch
    of ``symbol``'s ``outputs``; the rows are the first input's dim 0 (or the constant ``rows``)."""
    ts = {k: f"tensor<{t}>" for k, t in inputs.items()}
    first = next(iter(ts))
    outs = [f"tensor<{t}>" for t in outputs]
    dims = "".join("{%m}" if "?" in t else "" for t in [inputs[first]])
    args = ", ".join(f"%{k}: {t}" for k, t in ts.items())
    operands = ", ".join(f"%{k}" for k in ts)
    arg_types = ", ".join(t + ("{%m}" if "?" in t else "") for t in ts.values())
    head = (f"  %c0 = arith.constant 0 : index\n  %m = tensor.dim %{first}, %c0 : {ts[first]}\n" if dims
            else f"  %m = arith.constant {rows} : index\n")
    return (f"util.func public @f({args}) -> ({', '.join(outs)}) {{\n{head}"
            f"  %r:{len(outs)} = flow.dispatch @{symbol}::@{symbol}[%m]({operands}, %m) : ({arg_types}, index) -> "
            f"({', '.join(o + ('{%m}' if '?' in o else '') for o in outs)})\n"
            f"  util.return {', '.join(f'%r#{j}' for j in range(len(outs)))} : {', '.join(outs)}\n}}")


def _results(out: object) -> list[np.ndarray]:
    return [np.asarray(v) for v in (out if isinstance(out, list | tuple) else [out])]


def _rms64(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * w.astype(np.float64)


def _glu64(gu: np.ndarray, activation: str) -> np.ndarray:
    g, u = np.split(gu.astype(np.float64), 2, axis=-1)
    t = torch.from_numpy(g)
    a = torch.nn.functional.silu(t) if activation == "silu" else torch.nn.functional.gelu(t, approximate="tanh")
    return a.numpy() * u


def test_row_ops_are_the_models_arithmetic() -> None:
    """Eager torch: the ops compute exactly what RMSNorm and the MLP's activation compute."""
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(2, 5, 64, generator=g), torch.randn(2, 5, 64, generator=g)
    norm = RMSNorm(torch.rand(64, generator=g) + 0.5, EPS)
    assert torch.equal(norm.kernel(x)[1], norm(x))
    h, y = norm.kernel(x, r)
    assert torch.equal(h, x + r) and torch.equal(y, norm(x + r))
    gu = torch.randn(3, 96, generator=g)
    for act, f in (("silu", torch.nn.functional.silu),
                   ("gelu_tanh", lambda t: torch.nn.functional.gelu(t, approximate="tanh"))):
        assert torch.equal(torch.ops.msd.glu(gu, act), f(gu[:, :48]) * gu[:, 48:])
    mlp_ = MLP(nn.Linear(8, 8, bias=False), None, nn.Identity())  # a stacked gate|up of 4 + 4
    z = torch.randn(2, 8, generator=g)
    assert torch.equal(mlp_(z, kernels=True), mlp_(z))


@pytest.mark.parametrize("k", [96, 12], ids=["chunks-of-32", "chunks-of-4"])
def test_standalone_row_kernels_match_float64(k: int, tmp_path: Path) -> None:
    specs = [RowSpec("rms_norm", k, EPS), RowSpec("add_rms_norm", k, EPS), RowSpec("glu", k, activation="silu"),
             RowSpec("glu", k, activation="gelu_tanh")]
    rng = np.random.default_rng(k)
    w = (rng.random(k) + 0.5).astype(np.float32)
    for i, spec in enumerate(specs):
        outputs = list(spec.outputs().values())
        f = _run(tmp_path, [spec.executable()], _dispatch_func(spec.symbol, spec.inputs(), outputs), "f")
        for m in (1, 7, 33):
            x = (rng.standard_normal((m, 2 * k if spec.kind == "glu" else k)) * 3).astype(np.float32)
            r = rng.standard_normal((m, k)).astype(np.float32)
            args = {"rms_norm": (x, w), "add_rms_norm": (x, r, w), "glu": (x,)}[spec.kind]
            got = _results(f(*args))
            if spec.kind == "add_rms_norm":
                np.testing.assert_array_equal(got[0], x + r)  # the residual stream, exactly
                want = _rms64(x + r, w)
            else:
                want = _rms64(x, w) if spec.kind == "rms_norm" else _glu64(x, spec.activation)
            np.testing.assert_allclose(got[-1], want, rtol=2e-6, atol=2e-6 * np.abs(want).max(),
                                       err_msg=f"{spec.symbol} M={m} (case {i})")


def _dequantized(a: np.ndarray, s: np.ndarray, spec: QuantizeSpec) -> np.ndarray:
    """The row the codes and scales stand for: ``s · Σ_p c_p / 254^p``."""
    c = a.astype(np.float64)
    t = sum(c[:, p] / float(SLICE_RADIX) ** p for p in range(spec.slices))
    m = t.shape[0]
    scale = np.repeat(s.astype(np.float64), spec.group if spec.scale_per_group else spec.k, axis=1)
    return (t * scale).reshape(m, spec.k)


@pytest.mark.parametrize("slices", [1, 2])
def test_quantizer_prologues_reconstruct_the_row(slices: int, tmp_path: Path) -> None:
    """Codes · scales within the slice bound of the float64 row (plus f32 rounding of the row itself)."""
    rng = np.random.default_rng(slices)
    k = 96
    w = (rng.random(k) + 0.5).astype(np.float32)
    cases = [(RowSpec("add_rms_norm", k, EPS), True, 128), (RowSpec("glu", k, activation="silu"), False, 0),
             (RowSpec("rms_norm", k, EPS), True, 0)]
    for spec, per_group, bias in cases:
        q = QuantizeSpec(k, 32, slices, per_group, True, bias, prologue=spec)
        f = _run(tmp_path, [q.executable()], _dispatch_func(q.symbol, q.inputs(), list(q.results().values())), "f")
        for m in (1, 7):
            x = (rng.standard_normal((m, 2 * k if spec.kind == "glu" else k)) * 3).astype(np.float32)
            r = rng.standard_normal((m, k)).astype(np.float32)
            got = _results(f(*{"rms_norm": (x, w), "add_rms_norm": (x, r, w), "glu": (x,)}[spec.kind]))
            if spec.kind == "add_rms_norm":
                np.testing.assert_array_equal(got[-1], x + r)  # the sum h: the last result
                row = _rms64(x + r, w)
            else:
                row = _rms64(x, w) if spec.kind == "rms_norm" else _glu64(x, spec.activation)
            amax = np.abs(row.reshape(m, -1, 32)).max(-1) if per_group else np.abs(row).max(-1, keepdims=True)
            bound = np.repeat(slice_error(torch.from_numpy(amax), slices).numpy(), 32 if per_group else k, axis=1)
            err = np.abs(_dequantized(got[0], got[1], q) - row)
            assert (err <= bound * 1.001 + 4e-6 * np.abs(row).max()).all(), f"{q.symbol} M={m}: {err.max()}"
            np.testing.assert_allclose(got[2], row.reshape(m, -1, 32).sum(-1), rtol=1e-5,
                                       atol=1e-5 * np.abs(row).max())  # group sums


def test_quantizer_combines_a_decode_attentions_splits(tmp_path: Path) -> None:
    """The combination prologue: each row (a sequence) is Σ_s w_s·acc_s / Σ_s w_s·l_s over the splits,
    w_s = exp(m_s − max m), head by head; an empty split (m = −inf) weighs nothing."""
    att = AttentionSpec(2, 3, 2, 32, 1)
    spec = CombineSpec(att.batch, att.kv_heads, att.group, att.head_dim, att.splits)
    assert CombineSpec.from_symbol(att.combine_symbol) == spec
    q = QuantizeSpec(spec.k, 32, 2, True, False, 128, prologue=spec)
    f = _run(tmp_path, [q.executable()], _dispatch_func(q.symbol, q.inputs(), list(q.results().values()),
                                                         rows=str(att.batch)), "f")
    rng = np.random.default_rng(0)
    b, h, s, g, d = att.batch, att.kv_heads, att.splits, att.group, att.head_dim
    pa = rng.standard_normal((b, h, s, g, d)).astype(np.float32)
    pm = np.stack([rng.standard_normal((b, h, s, g)) * 4, rng.random((b, h, s, g)) * 8 + 1], -1).astype(np.float32)
    pm[0, 1, s - 1, 0, 0] = -np.inf  # an empty split
    pm[0, 1, s - 1, 0, 1] = 0.0
    a, sc, code_sums = _results(f(pa, pm))
    np.testing.assert_array_equal(code_sums, -128 * a.astype(np.int32).reshape(b, 2, -1, 32).sum(-1))
    m = pm[..., 0].astype(np.float64)
    wgt = np.exp(m - m.max(2, keepdims=True))  # [b, h, s, g]
    num = (wgt[..., None] * pa).sum(2)
    den = (wgt * pm[..., 1]).sum(2)
    row = (num / den[..., None]).reshape(b, -1)  # [b, h·g·d]: head h, query g, lane d
    amax = np.abs(row.reshape(b, -1, 32)).max(-1)
    bound = np.repeat(slice_error(torch.from_numpy(amax), 2).numpy(), 32, axis=1)
    assert (np.abs(_dequantized(a, sc, q) - row) <= bound * 1.001 + 1e-6 * np.abs(row).max()).all()


class NormThenLinear(nn.Module):
    def __init__(self, linear: nn.Module, weight: torch.Tensor) -> None:
        super().__init__()
        self.linear = linear
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, n = torch.ops.msd.add_rms_norm(x, r, self.weight, EPS)
        return h, self.linear(n)


def test_a_norm_feeding_a_quantized_linear_is_one_dispatch() -> None:
    quantized = msd.quantize(mlp(128, 40, seed=3), weights="int8", group_size=32)
    model = NormThenLinear(quantized[0], torch.rand(128, generator=torch.Generator().manual_seed(1)) + 0.5)
    x = torch.randn(7, 128, generator=torch.Generator().manual_seed(2))
    r = torch.randn(7, 128, generator=torch.Generator().manual_seed(3))
    rows = torch.export.Dim("rows", min=1, max=64)
    dyn = ({0: rows}, {0: rows})
    text = msd.compile(model, (x, r), slices=2, cpu_kernel="auto", dynamic_shapes=dyn, emit="msd")
    assert "flow.dispatch @msd_row_" not in text  # absorbed
    assert "_add_rms_norm_k128_" in text.split("flow.dispatch @msd_quantize_", 1)[1].split("::", 1)[0]
    cm = msd.compile(model, (x, r), slices=2, cpu_kernel="auto", dynamic_shapes=dyn)
    for m in (1, 7, 33):
        xm, rm = torch.randn(m, 128), torch.randn(m, 128)
        h, y = cm(xm, rm)
        assert torch.equal(h, xm + rm)
        n64 = torch.from_numpy(_rms64((xm + rm).numpy(), model.weight.numpy()))
        ref, bound = error_bound(nn.Sequential(model.linear), n64, 2)
        w = model.linear.dequantized_weight().double().abs()
        bound = bound + 8 * F32_EPS * (n64.abs() @ w.T)  # the norm itself in f32
        assert ((y.double() - ref).abs() <= bound).all(), f"M={m}: {(y.double() - ref).abs().max()}"


@pytest.mark.parametrize("kv_dtype", ["f32", "f16"])
def test_rope_qkv_kernel_is_the_ops_arithmetic(kv_dtype: str, tmp_path: Path) -> None:
    """The standalone RoPE row kernel (a prompt's tokens; decode steps take it into the attention kernel)
    computes what ``torch.ops.msd.rope_qkv`` computes: the same f32 operations, up to the rounding of a
    multiply-add the CPU fuses (an f32 ulp; one f16 ulp after the cache's rounding); v exactly."""
    b, h, kv, d, scale = 2, 4, 2, 32, 0.125
    spec = QkvSpec(b, h, kv, d, scale, f16=kv_dtype == "f16")
    t = {k: f"tensor<{v}>" for k, v in spec.types().items()}
    func = (f"util.func public @f(%x: {t['x']}, %cos: {t['cos']}, %sin: {t['sin']}) -> "
            f"({t['q']}, {t['k']}, {t['v']}) {{\n"
            f"  %c0 = arith.constant 0 : index\n  %c2 = arith.constant 2 : index\n"
            f"  %m = tensor.dim %x, %c0 : {t['x']}\n  %s = tensor.dim %cos, %c2 : {t['cos']}\n"
            f"  %r:3 = flow.dispatch @{spec.symbol}::@{spec.symbol}[%m](%x, %cos, %sin, %m, %s) : "
            f"({t['x']}{{%m}}, {t['cos']}{{%s}}, {t['sin']}{{%s}}, index, index) -> "
            f"({t['q']}{{%s}}, {t['k']}{{%s}}, {t['v']}{{%s}})\n"
            f"  util.return %r#0, %r#1, %r#2 : {t['q']}, {t['k']}, {t['v']}\n}}")
    f = _run(tmp_path, [spec.executable()], func, "f")
    g = torch.Generator().manual_seed(0)
    for s in (1, 5):
        qkv = torch.randn(b, s, (h + 2 * kv) * d, generator=g)
        ang = torch.rand(b, 1, s, d, generator=g) * 6.0
        cos, sin = torch.cos(ang), torch.sin(ang)
        want = torch.ops.msd.rope_qkv(qkv, cos, sin, h, kv, scale, kv_dtype)
        got = _results(f(qkv.reshape(b * s, -1).numpy(), cos.numpy(), sin.numpy()))
        for name, w, x in zip("qkv", want, got):
            w = w.float().numpy()
            if name == "v":
                np.testing.assert_array_equal(x.astype(np.float32), w, err_msg=f"v S={s}")
            else:
                rtol = 1e-3 if x.dtype == np.float16 else 1e-6
                np.testing.assert_allclose(x.astype(np.float32), w, rtol=rtol, atol=rtol * np.abs(w).max(),
                                           err_msg=f"{name} S={s}")


def test_a_stacked_llama_decodes_in_nine_dispatches_per_layer(tmp_path: Path) -> None:
    """A Llama whose q, k, v (and gate, up) load as one linear: the step with msd's kernels (row ops, the
    RoPE row op) computes the plain step's values in eager torch (to f32 rounding), and its compiled
    decode step (f16 cache) makes 9 dispatches per layer — norm+quantize, q|k|v, RoPE+attention,
    combine+quantize, o, add+norm+quantize, gate|up, activation+quantize, down — plus the embedding,
    the RoPE tables and the head; its logits and new cache entries match eager torch."""
    gguf = pytest.importorskip("gguf")
    from test_gguf import write_tiny_gguf

    from msd.compiler.llm.generate import CachedStep
    from msd.compiler.models import gguf as G
    from msd.compiler.tools.dispatches import dispatches_per_call

    q4 = gguf.GGMLQuantizationType.Q4_1
    same = dict.fromkeys(("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"), q4)
    m = G.load_gguf(write_tiny_gguf(tmp_path / "s.gguf", layer_types=[same, same], seed=5))
    assert hasattr(m.blocks[0].attn, "qkv_proj")
    tokens = torch.tensor([[5, 200, 17, 262, 42, 99]])
    with torch.no_grad():
        for kv in ("float", "f16"):
            ref, *cache = m.step(tokens, kv_cache=kv, last_only=False)
            got, *cache_k = m.step(tokens, kv_cache=kv, last_only=False, kernels=True)
            torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
            for a, b in zip(cache, cache_k):
                torch.testing.assert_close(a.float(), b.float(), rtol=1e-6, atol=1e-6)
            step = (torch.tensor([[7]]), *cache)
            torch.testing.assert_close(m.step(*step, kv_cache=kv, kernels=True)[0], m.step(*step, kv_cache=kv)[0],
                                       rtol=1e-6, atol=1e-6)
    past = m.empty_cache(1, "f16", length=5)
    held = torch.export.Dim("T", min=1, max=127)
    fns = {"decode": (CachedStep(m, "f16", kernels=True), (torch.zeros(1, 1, dtype=torch.long), *past),
                      (None, tuple({0: held} for _ in past)))}
    cm = msd.compile_functions(fns, slices=2)
    n = dispatches_per_call(cm.vmfb, "decode")
    assert n is not None and n <= 9 * m.cfg.n_layers + 6, n
    decode = cm.function("decode")
    with torch.no_grad():
        want = m.step(*step, kv_cache="f16")
    got = decode(step[0], *cache)
    logits = torch.as_tensor(np.asarray(got[0]))
    assert float((logits - want[0]).abs().max()) <= 2e-3 * float(want[0].abs().max())
    for g, w in zip(got[1:], want[1:]):
        torch.testing.assert_close(torch.as_tensor(np.asarray(g)).float(), w.float(), rtol=2e-3, atol=2e-3)
