// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// Contractions not spelled linalg.matmul: a linalg.generic whose body is `out + a*b` (optionally
// with arith.extf of a and b) with one reduction dim, and linalg.contract. The i8 matmul the
// rewrite emits is the same named linalg.matmul in every case.

// REPORT: msd-decompose-activations: 4 rewritten, 0 skipped

#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0, 0)>
#mk = affine_map<(m, n, k) -> (m, k)>
#nk = affine_map<(m, n, k) -> (n, k)>
#mn = affine_map<(m, n, k) -> (m, n)>

// --- 1. linalg.generic, f32, weight read [N,K].
// CHECK-LABEL: func.func @generic_f32(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32x1xf32>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to f32
// CHECK-NOT:     iterator_types = ["parallel", "parallel", "reduction"]
// CHECK:         %[[AMAX:.*]] = linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]{{.*}} ins(%[[X]] : tensor<4x64xf32>)
// CHECK:         %[[SL:.*]] = linalg.generic {{.*}} ins(%[[X]], %[[AMAX]] : tensor<4x64xf32>, tensor<4xf32>) outs(%{{.*}} : tensor<2x4x64xi8>)
// CHECK:         %[[ST:.*]] = tensor.collapse_shape %[[SL]] {{\[}}[0, 1], [2]] : tensor<2x4x64xi8> into tensor<8x64xi8>
// CHECK:         %[[ACC:.*]] = linalg.matmul {{.*}}ins(%[[ST]], %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK:         %[[E:.*]] = tensor.expand_shape %[[ACC]]
// CHECK:         %[[Y:.*]] = linalg.generic {{.*}}iterator_types = ["parallel", "parallel"]{{.*}} ins(%[[E]], %[[E]], %[[AMAX]], %[[S]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<32x1xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK:         return %[[Y]]
// CHECK-NOT:     iterator_types = ["parallel", "parallel", "reduction"]
func.func @generic_f32(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<32x64xi8>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %0, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<32x64xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: rewritten: linalg.generic at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8>
  %y = linalg.generic {indexing_maps = [#mk, #nk, #mn], iterator_types = ["parallel", "parallel", "reduction"]}
      ins(%x, %w : tensor<4x64xf32>, tensor<32x64xf32>) outs(%z : tensor<4x32xf32>) {
  ^bb0(%a: f32, %b: f32, %acc: f32):
    %0 = arith.mulf %a, %b : f32
    %1 = arith.addf %acc, %0 : f32
    linalg.yield %1 : f32
  } -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}

// --- 2. linalg.generic on f16 operands widened inside the body (extf a, extf b), f32 result,
// `a*b + out` operand order.
// CHECK-LABEL: func.func @generic_f16_extf(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x64xf16>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32x1xf16>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to f16
// CHECK-NOT:     iterator_types = ["parallel", "parallel", "reduction"]
// CHECK:         %[[AMAX:.*]] = linalg.generic {{.*}} ins(%[[X]] : tensor<4x64xf16>) outs(%{{.*}} : tensor<4xf32>)
// CHECK:           arith.extf %{{.*}} : f16 to f32
// CHECK:         %[[SL:.*]] = linalg.generic {{.*}} ins(%[[X]], %[[AMAX]] : tensor<4x64xf16>, tensor<4xf32>) outs(%{{.*}} : tensor<2x4x64xi8>)
// CHECK:         linalg.matmul {{.*}}ins(%{{.*}}, %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK:         %[[Y:.*]] = linalg.generic {{.*}} ins(%{{.*}}, %{{.*}}, %[[AMAX]], %[[S]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<32x1xf16>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK:         return %[[Y]]
// CHECK-NOT:     iterator_types = ["parallel", "parallel", "reduction"]
func.func @generic_f16_extf(%x: tensor<4x64xf16>, %q: tensor<32x64xi8>, %s: tensor<32x1xf16>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf16>
  %w = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<32x64xi8>, tensor<32x1xf16>) outs(%e : tensor<32x64xf16>) {
  ^bb0(%in: i8, %sc: f16, %out: f16):
    %0 = arith.sitofp %in : i8 to f16
    %1 = arith.mulf %0, %sc : f16
    linalg.yield %1 : f16
  } -> tensor<32x64xf16>
  %ey = tensor.empty() : tensor<4x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: rewritten: linalg.generic at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8>
  %y = linalg.generic {indexing_maps = [#mk, #nk, #mn], iterator_types = ["parallel", "parallel", "reduction"]}
      ins(%x, %w : tensor<4x64xf16>, tensor<32x64xf16>) outs(%z : tensor<4x32xf32>) {
  ^bb0(%a: f16, %b: f16, %acc: f32):
    %a32 = arith.extf %a : f16 to f32
    %b32 = arith.extf %b : f16 to f32
    %0 = arith.mulf %a32, %b32 : f32
    %1 = arith.addf %0, %acc : f32
    linalg.yield %1 : f32
  } -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}

// --- 3. a matrix-vector generic (no M dim: x[K], W[N,K] -> y[N]). amax is a 0-d tensor and
// the P slices are the rows of the i8 matmul's LHS.
// CHECK-LABEL: func.func @generic_matvec(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32x1xf32>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to f32
// CHECK:         %[[AMAX:.*]] = linalg.generic {{.*}}iterator_types = ["reduction"]{{.*}} ins(%[[X]] : tensor<64xf32>) outs(%{{.*}} : tensor<f32>)
// CHECK:         %[[SL:.*]] = linalg.generic {{.*}} ins(%[[X]], %[[AMAX]] : tensor<64xf32>, tensor<f32>) outs(%{{.*}} : tensor<2x64xi8>)
// CHECK:         %[[ACC:.*]] = linalg.matmul {{.*}}ins(%[[SL]], %[[Q]] : tensor<2x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<2x32xi32>)
// CHECK:         %[[Y:.*]] = linalg.generic {{.*}}iterator_types = ["parallel"]{{.*}} ins(%[[ACC]], %[[ACC]], %[[AMAX]], %[[S]] : tensor<2x32xi32>, tensor<2x32xi32>, tensor<f32>, tensor<32x1xf32>) outs(%{{.*}} : tensor<32xf32>)
// CHECK:         return %[[Y]]
func.func @generic_matvec(%x: tensor<64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>) -> tensor<32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<32x64xi8>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %0, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<32x64xf32>
  %ey = tensor.empty() : tensor<32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<32xf32>) -> tensor<32xf32>
  // REPORT-DAG: rewritten: linalg.generic at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8>
  %y = linalg.generic {indexing_maps = [affine_map<(n, k) -> (k)>, affine_map<(n, k) -> (n, k)>, affine_map<(n, k) -> (n)>], iterator_types = ["parallel", "reduction"]}
      ins(%x, %w : tensor<64xf32>, tensor<32x64xf32>) outs(%z : tensor<32xf32>) {
  ^bb0(%a: f32, %b: f32, %acc: f32):
    %0 = arith.mulf %a, %b : f32
    %1 = arith.addf %acc, %0 : f32
    linalg.yield %1 : f32
  } -> tensor<32xf32>
  return %y : tensor<32xf32>
}

// --- 4. linalg.contract with explicit maps (weight [N,K]).
// CHECK-LABEL: func.func @contract(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32x1xf32>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to f32
// CHECK-NOT:     linalg.contract
// CHECK:         %[[AMAX:.*]] = linalg.generic {{.*}} ins(%[[X]] : tensor<4x64xf32>)
// CHECK:         %[[SL:.*]] = linalg.generic {{.*}} outs(%{{.*}} : tensor<2x4x64xi8>)
// CHECK:         %[[ST:.*]] = tensor.collapse_shape %[[SL]]
// CHECK:         linalg.matmul {{.*}}ins(%[[ST]], %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK:         %[[Y:.*]] = linalg.generic {{.*}} ins(%{{.*}}, %{{.*}}, %[[AMAX]], %[[S]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<32x1xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK:         return %[[Y]]
// CHECK-NOT:     linalg.contract
func.func @contract(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<32x64xi8>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %0, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<32x64xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: rewritten: linalg.contract at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8>
  %y = linalg.contract indexing_maps = [#mk, #nk, #mn]
      ins(%x, %w : tensor<4x64xf32>, tensor<32x64xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}
