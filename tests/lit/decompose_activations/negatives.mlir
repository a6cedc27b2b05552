// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// Contractions the pass must leave exactly as they are, each with the reason in the report:
// the original float contraction and its dequantization chain survive, and no slice generic,
// reshape or i8 matmul appears. (msd-opt does not split input files; each case is a function.)
// A scale varying along K only is no longer refused: see k_scale_folding.mlir.

// REPORT: msd-decompose-activations: 0 rewritten, 5 skipped

#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0, 0)>
#colk = affine_map<(d0, d1) -> (0, d1)>

// --- the weight is a float tensor times a scale: nothing integer to keep.
// CHECK-LABEL: func.func @float_weight(
// CHECK:         %[[W:.*]] = linalg.generic
// CHECK-NOT:     {{math.roundeven|tensor.collapse_shape|tensor.expand_shape|linalg.matmul .*xi8>}}
// CHECK:         %[[Y:.*]] = linalg.matmul {{.*}}ins(%{{.*}}, %[[W]] : tensor<4x64xf32>, tensor<32x64xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK:         return %[[Y]]
// CHECK-NOT:     {{math.roundeven|tensor.collapse_shape|tensor.expand_shape|linalg.matmul .*xi8>}}
func.func @float_weight(%x: tensor<4x64xf32>, %w: tensor<32x64xf32>, %s: tensor<32x1xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %ws = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%w, %s : tensor<32x64xf32>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: f32, %sc: f32, %out: f32):
    %1 = arith.mulf %in, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<32x64xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: skipped: linalg.matmul at {{.*}}:[[# @LINE + 1]]: no operand is dequantized from an integer tensor (float weights)
  %y = linalg.matmul indexing_maps = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>, affine_map<(m, n, k) -> (m, n)>]
      ins(%x, %ws : tensor<4x64xf32>, tensor<32x64xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}

// --- an i32 weight (sitofp i32 -> f32) does not fit an i8 x i8 matmul.
// CHECK-LABEL: func.func @i32_weight(
// CHECK:         %[[W:.*]] = linalg.generic
// CHECK:           arith.sitofp %{{.*}} : i32 to f32
// CHECK-NOT:     {{math.roundeven|tensor.collapse_shape|tensor.expand_shape|linalg.matmul .*xi8>}}
// CHECK:         %[[Y:.*]] = linalg.matmul {{.*}}ins(%{{.*}}, %[[W]] : tensor<4x64xf32>, tensor<32x64xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK:         return %[[Y]]
// CHECK-NOT:     {{math.roundeven|tensor.collapse_shape|tensor.expand_shape|linalg.matmul .*xi8>}}
func.func @i32_weight(%x: tensor<4x64xf32>, %q: tensor<32x64xi32>, %s: tensor<32x1xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<32x64xi32>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i32, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i32 to f32
    %1 = arith.mulf %0, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<32x64xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: skipped: linalg.matmul at {{.*}}:[[# @LINE + 1]]: integer weight of type i32: only weights of 8 bits or fewer fit the int8 matmul
  %y = linalg.matmul indexing_maps = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>, affine_map<(m, n, k) -> (m, n)>]
      ins(%x, %w : tensor<4x64xf32>, tensor<32x64xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}

// --- math.absf applied to the converted weight: not an affine function of q.
// CHECK-LABEL: func.func @unknown_op(
// CHECK:         %[[W:.*]] = linalg.generic
// CHECK:           math.absf
// CHECK-NOT:     {{math.roundeven|tensor.collapse_shape|tensor.expand_shape|linalg.matmul .*xi8>}}
// CHECK:         %[[Y:.*]] = linalg.matmul {{.*}}ins(%{{.*}}, %[[W]] : tensor<4x64xf32>, tensor<32x64xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK:         return %[[Y]]
// CHECK-NOT:     {{math.roundeven|tensor.collapse_shape|tensor.expand_shape|linalg.matmul .*xi8>}}
func.func @unknown_op(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<32x64xi8>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = math.absf %0 : f32
    %2 = arith.mulf %1, %sc : f32
    linalg.yield %2 : f32
  } -> tensor<32x64xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: skipped: linalg.matmul at {{.*}}:[[# @LINE + 1]]: unknown op math.absf in the dequantization chain
  %y = linalg.matmul indexing_maps = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>, affine_map<(m, n, k) -> (m, n)>]
      ins(%x, %w : tensor<4x64xf32>, tensor<32x64xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}

// --- q*q: the weight enters the product non-linearly.
// CHECK-LABEL: func.func @nonlinear(
// CHECK:         %[[W:.*]] = linalg.generic
// CHECK:           arith.mulf %[[QF:.*]], %[[QF]] : f32
// CHECK-NOT:     {{math.roundeven|tensor.collapse_shape|tensor.expand_shape|linalg.matmul .*xi8>}}
// CHECK:         %[[Y:.*]] = linalg.matmul {{.*}}ins(%{{.*}}, %[[W]] : tensor<4x64xf32>, tensor<32x64xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK:         return %[[Y]]
// CHECK-NOT:     {{math.roundeven|tensor.collapse_shape|tensor.expand_shape|linalg.matmul .*xi8>}}
func.func @nonlinear(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<32x64xi8>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %0, %0 : f32
    %2 = arith.mulf %1, %sc : f32
    linalg.yield %2 : f32
  } -> tensor<32x64xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: skipped: linalg.matmul at {{.*}}:[[# @LINE + 1]]: weight appears non-linearly in the dequantization (q·q)
  %y = linalg.matmul indexing_maps = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>, affine_map<(m, n, k) -> (m, n)>]
      ins(%x, %w : tensor<4x64xf32>, tensor<32x64xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}

// --- a generic contraction over two reduction dims (K split as 8x8) that the weight reads inner-first
// (n, k2, k1): they cannot be merged into one K (tests/test_ir_forms.py has the forms that can).
// CHECK-LABEL: func.func @two_reductions(
// CHECK:         %[[W:.*]] = linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "parallel"]
// CHECK:           arith.sitofp %{{.*}} : i8 to f32
// CHECK-NOT:     {{math.roundeven|tensor.collapse_shape|tensor.expand_shape|linalg.matmul .*xi8>}}
// CHECK:         %[[Y:.*]] = linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "reduction", "reduction"]{{.*}} ins(%{{.*}}, %[[W]] : tensor<4x8x8xf32>, tensor<32x8x8xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK:         return %[[Y]]
// CHECK-NOT:     {{math.roundeven|tensor.collapse_shape|tensor.expand_shape|linalg.matmul .*xi8>}}
func.func @two_reductions(%x: tensor<4x8x8xf32>, %q: tensor<32x8x8xi8>, %s: tensor<32x1x1xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x8x8xf32>
  %w = linalg.generic {indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d1, d2)>, affine_map<(d0, d1, d2) -> (d0, 0, 0)>, affine_map<(d0, d1, d2) -> (d0, d1, d2)>], iterator_types = ["parallel", "parallel", "parallel"]}
      ins(%q, %s : tensor<32x8x8xi8>, tensor<32x1x1xf32>) outs(%e : tensor<32x8x8xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %0, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<32x8x8xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: skipped: linalg.generic at {{.*}}:[[# @LINE + 1]]: 2 reduction dims that cannot be merged into one: the weight does not read the two reduction dims next to each other (outer, inner)
  %y = linalg.generic {indexing_maps = [affine_map<(m, n, k1, k2) -> (m, k1, k2)>, affine_map<(m, n, k1, k2) -> (n, k2, k1)>, affine_map<(m, n, k1, k2) -> (m, n)>], iterator_types = ["parallel", "parallel", "reduction", "reduction"]}
      ins(%x, %w : tensor<4x8x8xf32>, tensor<32x8x8xf32>) outs(%z : tensor<4x32xf32>) {
  ^bb0(%a: f32, %b: f32, %acc: f32):
    %0 = arith.mulf %a, %b : f32
    %1 = arith.addf %acc, %0 : f32
    linalg.yield %1 : f32
  } -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}
