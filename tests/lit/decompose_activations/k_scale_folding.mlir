// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// A scale that varies along K only (one per K element, e.g. the per-token V scale of an int8 KV cache
// in P·V, where K runs over tokens) is folded into the activation: sum_k x[k]·s[k]·q[k,n] =
// sum_k (x[k]·s[k])·q[k,n]. The fold is one elementwise multiply of x before the slices; a scale
// varying along N as well stays in the epilogue. A float tensor varying along K *and* N is a float
// weight, and a zero point varying along K cannot be folded: both are refused.

// REPORT: msd-decompose-activations: 3 rewritten, 2 skipped

#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0, 0)>
#colk = affine_map<(d0, d1) -> (0, d1)>
#mm = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>, affine_map<(m, n, k) -> (m, n)>]

// --- per-K scale only.
// CHECK-LABEL: func.func @per_k_scale(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<1x64xf32>
// CHECK:         %[[XS:.*]] = linalg.generic {{.*}} ins(%[[X]], %[[S]] : tensor<4x64xf32>, tensor<1x64xf32>) outs(%{{.*}} : tensor<4x64xf32>)
// CHECK-NEXT:    ^bb0
// CHECK-NEXT:      arith.mulf
// CHECK:         linalg.generic {{.*}} ins(%[[XS]] : tensor<4x64xf32>)
// CHECK:         linalg.matmul {{.*}}ins(%{{.*}}, %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK-NOT:     {{linalg.matmul .*xf32>}}
// CHECK:         return
func.func @per_k_scale(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<1x64xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #colk, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<32x64xi8>, tensor<1x64xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %0, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<32x64xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: rewritten: linalg.matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8>; per-K scale folded into the activation
  %y = linalg.matmul indexing_maps = #mm ins(%x, %w : tensor<4x64xf32>, tensor<32x64xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}

// --- per-K and per-N scales: the K part is folded, the N part stays in the epilogue.
// CHECK-LABEL: func.func @per_k_and_per_n_scale(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[SK:[^:]+]]: tensor<1x64xf32>, %[[SN:[^:]+]]: tensor<32x1xf32>
// CHECK:         linalg.generic {{.*}} ins(%[[X]], %[[SK]] : tensor<4x64xf32>, tensor<1x64xf32>)
// CHECK:         linalg.matmul {{.*}}ins(%{{.*}}, %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>)
// CHECK:         linalg.generic {{.*}} ins({{.*}}%[[SN]] : {{.*}}tensor<32x1xf32>)
// CHECK:         return
func.func @per_k_and_per_n_scale(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %sk: tensor<1x64xf32>, %sn: tensor<32x1xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #colk, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %sk, %sn : tensor<32x64xi8>, tensor<1x64xf32>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %a: f32, %b: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %0, %a : f32
    %2 = arith.mulf %1, %b : f32
    linalg.yield %2 : f32
  } -> tensor<32x64xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: rewritten: linalg.matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8>; per-K scale folded into the activation
  %y = linalg.matmul indexing_maps = #mm ins(%x, %w : tensor<4x64xf32>, tensor<32x64xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}

// --- attention P·V with an int8 V cache and one scale per token (K = tokens), batched over heads.
// CHECK-LABEL: func.func @pv_per_token_v_scale(
// CHECK:         linalg.batch_matmul {{.*}} : tensor<3x8x64xi8>, tensor<3x64x16xi8>) outs(%{{.*}} : tensor<3x8x16xi32>)
// CHECK:         return
func.func @pv_per_token_v_scale(%p: tensor<3x4x64xf32>, %v: tensor<3x64x16xi8>, %vs: tensor<3x64xf32>) -> tensor<3x4x16xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<3x64x16xf32>
  %w = linalg.generic {indexing_maps = [affine_map<(h, t, d) -> (h, t, d)>, affine_map<(h, t, d) -> (h, t)>, affine_map<(h, t, d) -> (h, t, d)>], iterator_types = ["parallel", "parallel", "parallel"]}
      ins(%v, %vs : tensor<3x64x16xi8>, tensor<3x64xf32>) outs(%e : tensor<3x64x16xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %0, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<3x64x16xf32>
  %ey = tensor.empty() : tensor<3x4x16xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<3x4x16xf32>) -> tensor<3x4x16xf32>
  // REPORT-DAG: rewritten: linalg.batch_matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<3x64x16xi8>; per-K scale folded into the activation
  %y = linalg.batch_matmul ins(%p, %w : tensor<3x4x64xf32>, tensor<3x64x16xf32>) outs(%z : tensor<3x4x16xf32>) -> tensor<3x4x16xf32>
  return %y : tensor<3x4x16xf32>
}

// --- a float tensor varying along K and N: a float weight, not a scale.
// CHECK-LABEL: func.func @float_times_int(
// CHECK-NOT:     math.roundeven
// CHECK:         linalg.matmul {{.*}}ins(%{{.*}}, %{{.*}} : tensor<4x64xf32>, tensor<32x64xf32>)
func.func @float_times_int(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %f: tensor<32x64xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #id, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %f : tensor<32x64xi8>, tensor<32x64xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %a: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %0, %a : f32
    linalg.yield %1 : f32
  } -> tensor<32x64xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: skipped: linalg.matmul at {{.*}}:[[# @LINE + 1]]: float tensor varying along the reduction dim and the output channels (argument tensor<32x64xf32>) in the weight chain: a float weight
  %y = linalg.matmul indexing_maps = #mm ins(%x, %w : tensor<4x64xf32>, tensor<32x64xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}

// --- a zero point varying along K: (q - z[k])·s cannot be folded into x.
// CHECK-LABEL: func.func @per_k_offset(
// CHECK-NOT:     math.roundeven
// CHECK:         linalg.matmul {{.*}}ins(%{{.*}}, %{{.*}} : tensor<4x64xf32>, tensor<32x64xf32>)
func.func @per_k_offset(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %zf: tensor<1x64xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #colk, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %zf : tensor<32x64xi8>, tensor<1x64xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %z: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.subf %0, %z : f32
    linalg.yield %1 : f32
  } -> tensor<32x64xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %zz = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: skipped: linalg.matmul at {{.*}}:[[# @LINE + 1]]: a zero point or offset varies along the reduction dim
  %y = linalg.matmul indexing_maps = #mm ins(%x, %w : tensor<4x64xf32>, tensor<32x64xf32>) outs(%zz : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}
