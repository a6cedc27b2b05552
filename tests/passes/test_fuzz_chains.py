"""Nothing crashes the pass: random chains of the ops its weight tracer walks (integer and float
elementwise ``linalg.generic`` bodies, ``arith`` ops on whole tensors, transposes, reshapes into groups
and back, sub-byte and wide integer types, f16) in front of a matmul.  Every contraction gets a decision
(rewritten, or skipped with a reason), and the module the pass returns still verifies."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

MSD_OPT = str(Path(sys.executable).with_name("msd-opt"))
N, K, M, G = 16, 64, 3, 32
INT_TYPES = ["i1", "i2", "i4", "i8", "i16", "i32"]


class _Chain:
    def __init__(self, rng: random.Random, fn: int) -> None:
        self.rng, self.fn, self.lines, self.n = rng, fn, [], 0
        self.params: list[str] = [f"%x: tensor<{M}x{K}xf32>"]

    def fresh(self) -> str:
        self.n += 1
        return f"%v{self.n}"

    def arg(self, shape: str) -> str:
        name = f"%a{len(self.params)}"
        self.params.append(f"{name}: tensor<{shape}>")
        return name

    def generic(self, src: str, shape: list[int], et: str, out_et: str, body: list[str],
                extra: tuple[str, str, str] | None = None) -> str:
        """An elementwise generic over ``shape``: ``body`` lines compute ``%r`` from ``%in`` (and ``%e``
        from ``extra`` = (value, its type, its map))."""
        rank = len(shape)
        dims = ", ".join(f"d{i}" for i in range(rank))
        ident = f"affine_map<({dims}) -> ({dims})>"
        t = "x".join(map(str, shape))
        out = self.fresh()
        empty = self.fresh()
        self.lines.append(f"  {empty} = tensor.empty() : tensor<{t}x{out_et}>")
        ins, types, maps, bargs = [src], [f"tensor<{t}x{et}>"], [ident], [f"%in: {et}"]
        if extra is not None:
            ins.append(extra[0])
            types.append(extra[1])
            maps.append(extra[2])
            bargs.append(f"%e: {extra[1].rsplit('x', 1)[1].rstrip('>')}")
        maps.append(ident)
        iters = ", ".join(['"parallel"'] * rank)
        self.lines.append(f"  {out} = linalg.generic {{indexing_maps = [{', '.join(maps)}], "
                          f"iterator_types = [{iters}]}} ins({', '.join(ins)} : {', '.join(types)}) "
                          f"outs({empty} : tensor<{t}x{out_et}>) {{")
        self.lines.append(f"  ^bb0({', '.join(bargs)}, %o: {out_et}):")
        self.lines.extend(f"    {b}" for b in body)
        self.lines.append(f"    linalg.yield %r : {out_et}")
        self.lines.append(f"  }} -> tensor<{t}x{out_et}>")
        return out

    def build(self) -> str:
        rng = self.rng
        shape = [N, K]
        et = rng.choice([*INT_TYPES, "f32", "f16"])
        v = self.arg(f"{N}x{K}x{et}")
        for _ in range(rng.randint(1, 6)):
            t = "x".join(map(str, shape))
            step = rng.choice(["int", "float", "tensor_arith", "transpose", "regroup"])
            if step == "int" and et.startswith("i"):
                width = int(et[1:])
                op = rng.choice(["extsi", "extui", "trunci", "addi"])
                if op in ("extsi", "extui") and width < 32:
                    new = rng.choice([w for w in INT_TYPES if int(w[1:]) > width])
                    v = self.generic(v, shape, et, new, [f"%r = arith.{op} %in : {et} to {new}"])
                    et = new
                elif op == "trunci" and width > 1:
                    new = rng.choice([w for w in INT_TYPES if int(w[1:]) < width])
                    v = self.generic(v, shape, et, new, [f"%r = arith.trunci %in : {et} to {new}"])
                    et = new
                elif op == "addi":
                    c = rng.choice([0, 1] if width == 1 else list(range(max(-2, -(1 << (width - 1))),
                                                                         min(3, (1 << (width - 1)) - 1) + 1)))
                    v = self.generic(v, shape, et, et, [f"%c = arith.constant {c} : {et}",
                                                        f"%r = arith.addi %in, %c : {et}"])
            elif step == "float":
                if et.startswith("i"):
                    conv = rng.choice(["sitofp", "uitofp"])
                    v = self.generic(v, shape, et, "f32", [f"%r = arith.{conv} %in : {et} to f32"])
                    et = "f32"
                elif et == "f16":
                    v = self.generic(v, shape, et, "f32", ["%r = arith.extf %in : f16 to f32"])
                    et = "f32"
                else:
                    op = rng.choice(["mulf", "subf", "addf", "negf", "truncf"])
                    if op == "negf":
                        v = self.generic(v, shape, et, et, ["%r = arith.negf %in : f32"])
                    elif op == "truncf":
                        v = self.generic(v, shape, et, "f16", ["%r = arith.truncf %in : f32 to f16"])
                        et = "f16"
                    else:  # by a per-row, per-group or per-element tensor
                        rank = len(shape)
                        dims = ", ".join(f"d{i}" for i in range(rank))
                        kind = rng.choice(["row", "full"] + (["group"] if rank == 3 else []))
                        keep = {"row": [0], "full": list(range(rank)), "group": [0, 1]}[kind]
                        sh = "x".join(str(shape[i]) for i in keep)
                        amap = f"affine_map<({dims}) -> ({', '.join(f'd{i}' for i in keep)})>"
                        s = self.arg(f"{sh}xf32")
                        v = self.generic(v, shape, et, et, [f"%r = arith.{op} %in, %e : f32"],
                                         (s, f"tensor<{sh}xf32>", amap))
            elif step == "tensor_arith":
                out = self.fresh()
                if et.startswith("i") and et != "i1":
                    self.lines.append(f"  {out} = arith.sitofp {v} : tensor<{t}x{et}> to tensor<{t}xf32>")
                    et = "f32"
                elif et == "f32":
                    s = self.arg(f"{t}xf32")
                    self.lines.append(f"  {out} = arith.mulf {v}, {s} : tensor<{t}xf32>")
                else:
                    continue
                v = out
            elif step == "transpose" and len(shape) == 2:
                out, empty = self.fresh(), self.fresh()
                shape = shape[::-1]
                t2 = "x".join(map(str, shape))
                self.lines.append(f"  {empty} = tensor.empty() : tensor<{t2}x{et}>")
                self.lines.append(f"  {out} = linalg.transpose ins({v} : tensor<{t}x{et}>) outs({empty} : "
                                  f"tensor<{t2}x{et}>) permutation = [1, 0]")
                v = out
            elif step == "regroup":
                out = self.fresh()
                if len(shape) == 2 and shape[1] == K:
                    self.lines.append(f"  {out} = tensor.expand_shape {v} [[0], [1, 2]] output_shape "
                                      f"[{N}, {K // G}, {G}] : tensor<{t}x{et}> into tensor<{N}x{K // G}x{G}x{et}>")
                    shape = [N, K // G, G]
                elif len(shape) == 3:
                    self.lines.append(f"  {out} = tensor.collapse_shape {v} [[0], [1, 2]] : tensor<{t}x{et}> into"
                                      f" tensor<{N}x{K}x{et}>")
                    shape = [N, K]
                else:
                    continue
                v = out
        # to the matmul's weight: f32 [K, N]
        t = "x".join(map(str, shape))
        if len(shape) == 3:
            out = self.fresh()
            self.lines.append(f"  {out} = tensor.collapse_shape {v} [[0], [1, 2]] : tensor<{t}x{et}> into"
                              f" tensor<{N}x{K}x{et}>")
            v, shape, t = out, [N, K], f"{N}x{K}"
        if et.startswith("i"):
            v = self.generic(v, shape, et, "f32", [f"%r = arith.sitofp %in : {et} to f32"])
        elif et == "f16":
            v = self.generic(v, shape, et, "f32", ["%r = arith.extf %in : f16 to f32"])
        if shape == [N, K]:
            out, empty = self.fresh(), self.fresh()
            self.lines.append(f"  {empty} = tensor.empty() : tensor<{K}x{N}xf32>")
            self.lines.append(f"  {out} = linalg.transpose ins({v} : tensor<{N}x{K}xf32>) outs({empty} : "
                              f"tensor<{K}x{N}xf32>) permutation = [1, 0]")
            v = out
        y, e, z = self.fresh(), self.fresh(), self.fresh()
        self.lines += [f"  %zero{self.fn} = arith.constant 0.0 : f32",
                       f"  {e} = tensor.empty() : tensor<{M}x{N}xf32>",
                       f"  {z} = linalg.fill ins(%zero{self.fn} : f32) outs({e} : tensor<{M}x{N}xf32>) -> "
                       f"tensor<{M}x{N}xf32>",
                       f"  {y} = linalg.matmul ins(%x, {v} : tensor<{M}x{K}xf32>, tensor<{K}x{N}xf32>) outs({z} : "
                       f"tensor<{M}x{N}xf32>) -> tensor<{M}x{N}xf32>",
                       f"  return {y} : tensor<{M}x{N}xf32>"]
        return (f"func.func @f{self.fn}({', '.join(self.params)}) -> tensor<{M}x{N}xf32> {{\n"
                + "\n".join(self.lines) + "\n}\n")


def test_random_chains_never_crash_the_pass(tmp_path: Path) -> None:
    rng = random.Random(20261203)
    functions = [_Chain(rng, i).build() for i in range(120)]
    src = tmp_path / "fuzz.mlir"
    src.write_text("\n".join(functions))
    parsed = subprocess.run([MSD_OPT, str(src)], capture_output=True, text=True)
    assert parsed.returncode == 0, f"the generator wrote invalid IR: {parsed.stderr[-2000:]}"
    for kernel in ("none", "avx512-vnni"):
        run = subprocess.run([MSD_OPT, str(src), f"--msd-decompose-activations=slices=2 cpu-kernel={kernel}",
                              "--msd-report"], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        lines = [ln for ln in run.stderr.splitlines() if ln.startswith(("  rewritten:", "  skipped:"))]
        assert len(lines) == len(functions), run.stderr[-3000:]
        assert all(ln.split(": ", 2)[-1].strip() for ln in lines)  # every decision has a reason
        rewritten = sum(ln.startswith("  rewritten:") for ln in lines)
        assert 0 < rewritten < len(functions)  # the chains reach both outcomes
        # what the pass wrote is valid IR
        again = subprocess.run([MSD_OPT, "-"], input=run.stdout, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr[-2000:]
