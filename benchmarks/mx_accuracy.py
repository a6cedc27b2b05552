"""Accuracy of MSD activation slices in OCP MX formats: MXFP4 x 1/2/3 slices versus one MXFP8 slice.

    .venv/bin/python benchmarks/mx_accuracy.py [--seed 0]      # writes docs/accuracy.md

Numpy only (``msd.compiler.quant.mx``).  Two parts:

1. Element level: 160 tokens x 4096 channels = 20480 blocks of 32 per distribution (Gaussian,
   Laplace, uniform, "LLM-like" = Gaussian with 8 outlier channels scaled by U(30, 100)); for each
   E8M0 scale rule (``ocp``: floor(log2 amax) - emax, elements may clip; ``noclip``:
   ceil(log2(amax / max_elem))) report effective bits -log2(||x - x^||2 / ||x||2) over the whole
   tensor, the median of the same per block, and the worst element error in units of the first
   slice's block scale 2**e1 and of the block max.
2. GEMM level: y = x W^T with real MXFP4 weights (W ~ N(0, 0.02^2), OCP rule; the reference uses
   the same dequantized weights in float64, so only activation quantization is measured), K = 4096,
   N = 512, M = 16.  MXFP4 x MXFP4 products run through ``block_dot_exact`` (int8 x int8 -> int32
   per block, exact) and are checked against the float64 product of the dequantized operands.
3. Compiled: the same GEMM through ``msd.quantize(weights="mxfp4")``-layout weights and
   ``msd.compile(..., act_format="mxfp4")`` on llvm-cpu (the pass's MXFP4 slices, exact emulation
   with int8 products), next to msd's default int8 slices; the deviation from the numpy numbers of
   part 2 shows the compiled module computes the same thing (needs torch and msd's compiler).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import ml_dtypes
import numpy as np

from msd.compiler.quant import mx

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "docs" / "accuracy.md"
TOKENS, CHANNELS = 160, 4096  # 20480 blocks of 32
OUTLIER_CHANNELS = 8
GEMM_M, GEMM_K, GEMM_N = 16, 4096, 512
PAPER_MXFP4_2 = 6.6
PAPER_MXFP8_1 = 5.24
# Derived worst-case block error in units of the first slice's 2**e (tests/test_mx.py docstring).
BOUNDS = {
    ("ocp", "MXFP4 x1"): "< 2", ("ocp", "MXFP4 x2"): "< 1/2", ("ocp", "MXFP4 x3"): "< 1/8",
    ("noclip", "MXFP4 x1"): "≤ 1", ("noclip", "MXFP4 x2"): "≤ 1/8", ("noclip", "MXFP4 x3"): "≤ 1/64",
    ("ocp", "MXFP8 x1"): "< 64", ("noclip", "MXFP8 x1"): "≤ 16",
}
METHODS = ("MXFP4 x1", "MXFP4 x2", "MXFP4 x3", "MXFP8 x1")


def llm_like(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Gaussian activations with a few outlier channels (same channels for every token) x U(30, 100)."""
    x = rng.standard_normal((rows, cols))
    ch = rng.choice(cols, OUTLIER_CHANNELS, replace=False)
    x[:, ch] *= rng.uniform(30, 100, OUTLIER_CHANNELS)
    return x


DISTRIBUTIONS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "Gaussian": lambda r, m, k: r.standard_normal((m, k)),
    "Laplace": lambda r, m, k: r.laplace(size=(m, k)),
    "uniform": lambda r, m, k: r.uniform(-1, 1, (m, k)),
    "LLM-like (8 outlier ch. x30-100)": llm_like,
}


def quantize(x: np.ndarray, method: str, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """(x^, first-slice exponents)."""
    if method.startswith("MXFP8"):
        codes, exps = mx.quantize_mxfp8(x, rule)
        return mx.dequantize_mxfp8(codes, exps), exps
    parts = mx.decompose_mxfp4(x, int(method[-1]), rule)
    return mx.reconstruct(parts), parts[0][1]


def bits(err_norm: float, ref_norm: float) -> float:
    return float("inf") if err_norm == 0 else float(-np.log2(err_norm / ref_norm))


def element_level(seed: int) -> list[dict]:
    rows = []
    for d_i, (dist, gen) in enumerate(DISTRIBUTIONS.items()):
        x = gen(np.random.default_rng([seed, d_i]), TOKENS, CHANNELS)
        xb = x.reshape(TOKENS, -1, mx.MX_BLOCK)
        amax = np.abs(xb).max(-1)
        for rule in mx.SCALE_RULES:
            for method in METHODS:
                xh, e1 = quantize(x, method, rule)
                err = (xh - x).reshape(xb.shape)
                per_block = -np.log2(np.linalg.norm(err, axis=-1) / np.linalg.norm(xb, axis=-1))
                rows.append(dict(
                    dist=dist, rule=rule, method=method,
                    bits=bits(np.linalg.norm(err), np.linalg.norm(x)),
                    median_block_bits=float(np.median(per_block)),
                    worst_scale=float((np.abs(err) / np.ldexp(1.0, e1.astype(np.int64))[..., None]).max()),
                    worst_amax=float((np.abs(err) / amax[..., None]).max()),
                ))
    return rows


def gemm_level(seed: int) -> list[dict]:
    rng = np.random.default_rng([seed, 99])
    w = rng.standard_normal((GEMM_N, GEMM_K)) * 0.02
    w_codes, w_exps = mx.quantize_mxfp4(w, "ocp")
    wq = mx.dequantize_mxfp4(w_codes, w_exps)
    rows = []
    for a_i, (dist, gen) in enumerate((("Gaussian", DISTRIBUTIONS["Gaussian"]),
                                        ("LLM-like", DISTRIBUTIONS["LLM-like (8 outlier ch. x30-100)"]))):
        x = gen(np.random.default_rng([seed, 100 + a_i]), GEMM_M, GEMM_K)
        ref = x @ wq.T

        def record(name: str, rule: str, y: np.ndarray, dist: str = dist, ref: np.ndarray = ref) -> None:
            rows.append(dict(acts=dist, method=name, rule=rule,
                             rel=float(np.linalg.norm(y - ref) / np.linalg.norm(ref)),
                             bits=bits(np.linalg.norm(y - ref), np.linalg.norm(ref)),
                             maxrel=float(np.abs(y - ref).max() / np.abs(ref).max())))

        for rule in mx.SCALE_RULES:
            for p in (1, 2, 3):
                parts = mx.decompose_mxfp4(x, p, rule)
                y = sum(mx.block_dot_exact(c, e, w_codes, w_exps) for c, e in parts)
                check = mx.reconstruct(parts) @ wq.T  # float64 GEMM on the dequantized operands
                assert np.allclose(y, check, rtol=1e-12, atol=1e-12 * np.abs(check).max()), "block_dot_exact"
                record(f"MXFP4 x{p} (int8 block dot)", rule, y)
            c8, e8 = mx.quantize_mxfp8(x, rule)
            record("MXFP8 x1 (E4M3)", rule, mx.dequantize_mxfp8(c8, e8) @ wq.T)
        record("bf16 activations (context)", "-", x.astype(ml_dtypes.bfloat16).astype(np.float64) @ wq.T)
    return rows


def compiled_level(seed: int) -> list[dict]:
    """Part 3: the GEMM of part 2 compiled by msd for llvm-cpu."""
    import torch

    import msd
    from msd.compiler.quant.quantize import MXFP4Linear

    rng = np.random.default_rng([seed, 99])
    w = rng.standard_normal((GEMM_N, GEMM_K)) * 0.02
    w_codes, w_exps = mx.quantize_mxfp4(w, "ocp")
    wq = mx.dequantize_mxfp4(w_codes, w_exps)
    layer = MXFP4Linear(torch.from_numpy(mx.pack_fp4(w_codes)), torch.from_numpy(mx.exps_to_e8m0(w_exps)), None)
    model = torch.nn.Sequential(layer)
    rows = []
    for a_i, dist in enumerate(("Gaussian", "LLM-like (8 outlier ch. x30-100)")):
        x = DISTRIBUTIONS[dist](np.random.default_rng([seed, 100 + a_i]), GEMM_M, GEMM_K).astype(np.float32)
        ref = x.astype(np.float64) @ wq.T
        xt = torch.from_numpy(x)
        variants = [(f"MXFP4 x{p}", "mxfp4", rule, p, low) for low in ("int8", "scaled") for rule in mx.SCALE_RULES
                    for p in (1, 2, 3)]
        variants += [("MXFP8 x1", "mxfp8", rule, 1, "scaled") for rule in mx.SCALE_RULES]
        variants += [(f"int8 x{p}", "int8", "-", p, "-") for p in (1, 2)]
        for name, fmt, rule, p, low in variants:
            cm = msd.compile(model, (xt,), slices=p, act_format=fmt, mx_scale=rule if fmt != "int8" else "ocp",
                             mx_lowering=low if low != "-" else "auto")
            assert len(cm.report.rewritten) == 1, cm.report
            assert (low == "scaled") == ("block-scaled" in cm.report.rewritten[0].reason), cm.report
            y = cm(xt).double().numpy()
            if fmt == "mxfp4":
                emu = mx.reconstruct(mx.decompose_mxfp4(x.astype(np.float64), p, rule)) @ wq.T
                dev = float(np.abs(y - emu).max() / np.abs(emu).max())
            elif fmt == "mxfp8":
                emu = mx.dequantize_mxfp8(*mx.quantize_mxfp8(x.astype(np.float64), rule)) @ wq.T
                dev = float(np.abs(y - emu).max() / np.abs(emu).max())
            else:
                dev = float("nan")
            rows.append(dict(acts=dist.split(" (")[0], method=name, rule=rule, lowering=low,
                             rel=float(np.linalg.norm(y - ref) / np.linalg.norm(ref)),
                             bits=bits(np.linalg.norm(y - ref), np.linalg.norm(ref)), dev=dev))
    return rows


def render_compiled(rows: list[dict]) -> str:
    out = ["", "## 4. Compiled by msd (llvm-cpu)", "",
           f"The GEMM of part 2 (M = {GEMM_M}, K = {GEMM_K}, N = {GEMM_N}, the same MXFP4 weights in the",
           "checkpoint layout of `msd.quantize(weights=\"mxfp4\")`) compiled with `msd.compile(...,",
           "act_format=\"mxfp4\", mx_scale=rule, slices=p)`: the pass decomposes the activation into p MXFP4",
           "slices per 32-block. Lowering `int8`: doubled E2M1 codes multiplied with int8 x int8 -> int32",
           "products per block (exact); `scaled`: the block-scaled FP4 matmul (`arith.scaling_extf`, what",
           "gfx950's `v_mfma_scale_f32_16x16x128_f8f6f4` runs), here compiled for the CPU, f32 accumulation",
           "over all of K. Error against the float64 GEMM, and the largest deviation from the numpy emulation",
           "of part 2 relative to its largest output. `MXFP8 x1`: `act_format=\"mxfp8\"`, one E4M3 slice per",
           "block against the MXFP4 weight as E4M3, block-scaled. msd's default int8 slices for comparison.",
           "",
           "| activations | method | rule | lowering | rel. error | eff. bits | deviation from numpy MX |",
           "|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        dev = "-" if r["dev"] != r["dev"] else f"{r['dev']:.1e}"
        out.append(f"| {r['acts']} | {r['method']} | {r['rule']} | {r['lowering']} | {r['rel']:.2e} |"
                   f" {_fmt_bits(r['bits'])} | {dev} |")
    return "\n".join(out) + "\n"


def _fmt_bits(b: float) -> str:
    return "exact" if b == float("inf") else f"{b:.2f}"


def render(seed: int, command: str, elem: list[dict], gemm: list[dict]) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    nblocks = TOKENS * CHANNELS // mx.MX_BLOCK
    out = [
        "# MX activation slices: accuracy of MXFP4 x 1/2/3 versus MXFP8",
        "",
        f"Produced by `{command}` on {now}, seed {seed}, numpy {np.__version__} (rewritten on every run;",
        "every number below comes from that run).",
        "",
        "Method (see `compiler/quant/mx.py`): MXFP4 = E2M1 elements {0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6}, one E8M0",
        "power-of-two scale per 32-element block along K; round to nearest, ties to even, saturating.",
        "MSD slice *i* quantizes the residual of slices < *i* with its own block scale. MXFP8 = E4M3",
        "elements (max 448). Scale rules: **ocp** `e = floor(log2 amax) − emax` (emax 2 for E2M1, 8 for",
        "E4M3; the OCP MX spec's rule, elements above 6 / 448 clip) and **noclip** `e = ceil(log2(amax /",
        "6))` (`/ 448` for E4M3; nothing clips).",
        "",
        "## 1. Element level",
        "",
        f"{TOKENS} tokens × {CHANNELS} channels = {nblocks} blocks of 32 per distribution. *eff. bits* =",
        "−log2(‖x − x̂‖₂ / ‖x‖₂) over the whole tensor; *median block* = the same per block, median;",
        "*worst / 2^e1* = max element error in units of the first slice's block scale (for MXFP8 its own",
        "E4M3 block scale, so not comparable across formats); *bound* = the derived worst case",
        "(tests/test_mx.py); *worst / amax* = max element error relative to its block's max |x|.",
        "",
        "| distribution | rule | activations | eff. bits | median block | worst / 2^e1 | bound | worst / amax |",
        "| --- | --- | --- | ---: | ---: | ---: | :---: | ---: |",
    ]
    for r in elem:
        out.append(f"| {r['dist']} | {r['rule']} | {r['method']} | {_fmt_bits(r['bits'])} | "
                   f"{r['median_block_bits']:.2f} | {r['worst_scale']:.4g} | {BOUNDS[(r['rule'], r['method'])]} | "
                   f"{r['worst_amax']:.3g} |")
    out += [
        "",
        "## 2. GEMM level (real MXFP4 weights)",
        "",
        f"y = x·Wᵀ, M = {GEMM_M}, K = {GEMM_K}, N = {GEMM_N}; W ~ N(0, 0.02²) quantized to MXFP4 with the",
        "ocp rule; the reference is float64 x times the *same* dequantized W, so the error is the",
        "activation quantization alone. MXFP4 activation slices meet the MXFP4 weight through",
        "`block_dot_exact` (2·E2M1 integers, int8 × int8 → int32 per block, × 2^(ex+ew−2)), checked",
        "against the float64 GEMM of the dequantized operands; MXFP8 activations use a float64 GEMM",
        "of the dequantized E4M3 values (E4M3 × E2M1 products are exact in float64 too). bf16",
        "activations are for context only. *rule* applies to the activations.",
        "",
        "| activations | method | rule | ‖Δy‖/‖y‖ | eff. bits | max|Δy| / max|y| |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in gemm:
        out.append(f"| {r['acts']} | {r['method']} | {r['rule']} | {r['rel']:.3e} | {_fmt_bits(r['bits'])} | "
                   f"{r['maxrel']:.3e} |")
    out += ["", "## 3. Against the paper's claims", ""] + claims(elem, gemm) + [""]
    return "\n".join(out)


def claims(elem: list[dict], gemm: list[dict]) -> list[str]:
    def get(dist: str, rule: str, method: str, key: str = "bits") -> float:
        return next(r[key] for r in elem if r["dist"].startswith(dist) and r["rule"] == rule and r["method"] == method)

    dists = [d.split(" ")[0] for d in DISTRIBUTIONS]
    two = {(d, r): get(d, r, "MXFP4 x2") for d in dists for r in mx.SCALE_RULES}
    fp8 = {(d, r): get(d, r, "MXFP8 x1") for d in dists for r in mx.SCALE_RULES}
    best_two = max(two.items(), key=lambda kv: kv[1])
    meets = [f"{d}/{r}" for (d, r), b in two.items() if b >= PAPER_MXFP4_2]
    fp8_g = fp8[("Gaussian", "ocp")]
    wins = [f"{d}/{r}" for (d, r) in two if two[(d, r)] > fp8[(d, r)]]
    lose = [f"{d}/{r}" for (d, r) in two if two[(d, r)] <= fp8[(d, r)]]
    worst2 = {r: max(get(d, r, "MXFP4 x2", "worst_scale") for d in dists) for r in mx.SCALE_RULES}
    worst3 = {r: max(get(d, r, "MXFP4 x3", "worst_scale") for d in dists) for r in mx.SCALE_RULES}
    gm = {(r["acts"], r["method"].split(" (")[0], r["rule"]): r["bits"] for r in gemm}
    median2 = {(d, r): get(d, r, "MXFP4 x2", "median_block_bits") for d in dists for r in mx.SCALE_RULES}
    fp8_match = min(fp8.items(), key=lambda kv: abs(kv[1] - PAPER_MXFP8_1))
    two_match = min(two.items(), key=lambda kv: abs(kv[1] - PAPER_MXFP4_2))
    e_g = get("Gaussian", "noclip", "MXFP4 x2")
    g_g = gm[("Gaussian", "MXFP4 x2", "noclip")]
    ranking_holds = all(gm[(a, "MXFP4 x2", r)] > gm[(a, "MXFP8 x1", r)] > gm[(a, "MXFP4 x1", r)]
                        for a in ("Gaussian", "LLM-like") for r in mx.SCALE_RULES)
    lines = [
        "- **Two MXFP4 slices ≈ 6.6 effective bits.** Measured: "
        + ", ".join(f"{d} {two[(d, 'ocp')]:.2f} / {two[(d, 'noclip')]:.2f}" for d in dists)
        + f" bits (ocp / noclip). Best case {best_two[1]:.3f} ({best_two[0][0]}, {best_two[0][1]}); "
        + (f"at or above 6.6 bits: {', '.join(meets)}. " if meets else "no case reaches 6.6 bits. ")
        + "So 6.6 is a best case, not typical: on Gaussian data two slices give "
        f"{two[('Gaussian', 'ocp')]:.2f}–{two[('Gaussian', 'noclip')]:.2f} bits. The scale rule matters "
        "most where block maxima sit just below a power of two (uniform data: amax/2^e mostly in 7–8 under "
        "the OCP rule, so several elements per block clip to 6 and leave residuals up to 2·2^e1 that "
        f"coarsen slice 2: {two[('uniform', 'ocp')]:.2f} vs {two[('uniform', 'noclip')]:.2f} bits). "
        f"On LLM-like data the median block keeps {median2[('LLM-like', 'ocp')]:.2f} / "
        f"{median2[('LLM-like', 'noclip')]:.2f} bits, but the whole-tensor figure drops because blocks "
        "holding an outlier channel carry most of ‖x‖ and their 31 ordinary elements fall below the "
        "outlier-sized slice-1 grid.",
        f"- **Error ≤ 1/64 of the block scale.** Does not hold for two slices under either rule. The "
        f"derived worst cases are 1/8 of 2^e1 (noclip) and just under 1/2 (ocp); measured worst "
        f"elements: {worst2['noclip']:.4g} (noclip) and {worst2['ocp']:.4g} (ocp) of 2^e1. 1/64 is "
        f"the *three*-slice no-clip bound (measured worst {worst3['noclip']:.4g}; ocp three-slice "
        f"{worst3['ocp']:.4g}, bound < 1/8). In units of the block max, 2 slices are < amax/24 (noclip) "
        "or < amax/8 (ocp). Each extra slice divides the worst case by 8 with the no-clip rule but only "
        "by 4 with the OCP rule. The paper's 1/64 may use another normalisation or an rms-style figure "
        "(2^-6.6 ≈ 1/97 is an rms ratio, not a worst case).",
        f"- **One MXFP8 (E4M3) slice ≈ 5.24 bits.** Measured on Gaussian: {fp8_g:.2f} (ocp) / "
        f"{fp8[('Gaussian', 'noclip')]:.2f} (noclip); across distributions "
        f"{min(fp8.values()):.2f}–{max(fp8.values()):.2f}. Closest to 5.24: {fp8_match[0][0]}/"
        f"{fp8_match[0][1]} at {fp8_match[1]:.3f}, so the paper's MXFP8 figure looks like a no-clip "
        "(or round-up) scale on Gaussian-like data; the OCP rule clips block maxima in (448, 512)·2^e "
        f"and costs {fp8[('Gaussian', 'noclip')] - fp8_g:.2f} bits on Gaussian, "
        f"{fp8[('uniform', 'noclip')] - fp8[('uniform', 'ocp')]:.2f} on uniform. (Closest case to the "
        f"2-slice 6.6: {two_match[0][0]}/{two_match[0][1]} at {two_match[1]:.3f} — a different "
        "distribution, so the two paper figures are not both reproduced by any single setting here.)",
        "- **Two MXFP4 slices beat one MXFP8 slice.** "
        + (f"Yes for {', '.join(wins)}" if wins else "In no case")
        + (f"; not for {', '.join(lose)}." if lose else ".")
        + f" Margin (same rule): {min(two[k] - fp8[k] for k in two):.2f}–{max(two[k] - fp8[k] for k in two):.2f} "
        "bits. (Same matrix-unit time only where FP4 runs at 2× the FP8 rate; with int8 emulation "
        "each slice is one int8 pass, so 2 MXFP4 slices cost twice one MXFP8 slice.)",
        f"- **GEMM level** (Gaussian activations, eff. bits of y): MXFP4 x2 "
        f"{gm[('Gaussian', 'MXFP4 x2', 'ocp')]:.2f} / {g_g:.2f}, MXFP8 x1 "
        f"{gm[('Gaussian', 'MXFP8 x1', 'ocp')]:.2f} / {gm[('Gaussian', 'MXFP8 x1', 'noclip')]:.2f} "
        f"(ocp / noclip); element-level MXFP4 x2 noclip was {e_g:.2f}, a difference of {g_g - e_g:+.2f} "
        "bits: with independent element errors a K-long reduction scales error and signal alike, so "
        "the GEMM keeps the element-level ratio. "
        + ("The ranking MXFP4 x2 > MXFP8 x1 > MXFP4 x1 holds at GEMM level for both activation sets and rules."
           if ranking_holds else "The element-level ranking MXFP4 x2 > MXFP8 x1 > MXFP4 x1 does not hold for "
           "every GEMM case; see the table."),
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", type=Path, default=OUTPUT)
    ap.add_argument("--no-compile", action="store_true", help="numpy parts only (no torch / msd compiler)")
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "benchmarks/mx_accuracy.py", *(sys.argv[1:] if argv is None else argv)])
    elem = element_level(args.seed)
    gemm = gemm_level(args.seed)
    text = render(args.seed, command, elem, gemm)
    if not args.no_compile:
        text += render_compiled(compiled_level(args.seed))
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
