// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// A reduction dim of dynamic size (P·V over a KV cache of dynamic length) cannot be checked against
// the int32 bound at compile time: the rewrite asserts K <= 132104 (= (2^31 - 1) / (127 * 128)) at
// run time, before the int8 matmul, so a larger K fails loudly instead of overflowing. Group-wise
// scales with a dynamic K stay refused (the group split needs a static K).

// REPORT: msd-decompose-activations: 1 rewritten, 1 skipped

#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0, 0)>
#grp = affine_map<(d0, d1) -> (d0, d1 floordiv 32)>
#mm = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>, affine_map<(m, n, k) -> (m, n)>]

// CHECK-LABEL: func.func @dynamic_k(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x?xf32>, %[[Q:[^:]+]]: tensor<32x?xi8>
// CHECK:         %[[K:.*]] = tensor.dim %[[X]], %{{.*}} : tensor<4x?xf32>
// CHECK:         %[[OK:.*]] = arith.cmpi ule, %[[K]], %{{.*}} : index
// CHECK:         cf.assert %[[OK]], "msd: reduction size above 132104 could overflow the int32 accumulator of an int8 matmul"
// CHECK:         linalg.matmul {{.*}}ins(%{{.*}}, %[[Q]] : tensor<8x?xi8>, tensor<32x?xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK-NOT:     {{linalg.matmul .*xf32>}}
// CHECK:         return
func.func @dynamic_k(%x: tensor<4x?xf32>, %q: tensor<32x?xi8>, %s: tensor<32x1xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %c1 = arith.constant 1 : index
  %k = tensor.dim %q, %c1 : tensor<32x?xi8>
  %e = tensor.empty(%k) : tensor<32x?xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<32x?xi8>, tensor<32x1xf32>) outs(%e : tensor<32x?xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %0, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<32x?xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: rewritten: linalg.matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x?xi8>; dynamic K, checked against the int32 bound at run time
  %y = linalg.matmul indexing_maps = #mm ins(%x, %w : tensor<4x?xf32>, tensor<32x?xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}

// CHECK-LABEL: func.func @dynamic_k_with_groups(
// CHECK-NOT:     cf.assert
// CHECK:         linalg.matmul {{.*}}tensor<4x?xf32>, tensor<32x?xf32>
func.func @dynamic_k_with_groups(%x: tensor<4x?xf32>, %q: tensor<32x?xi8>, %s: tensor<32x?xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %c1 = arith.constant 1 : index
  %k = tensor.dim %q, %c1 : tensor<32x?xi8>
  %e = tensor.empty(%k) : tensor<32x?xf32>
  %w = linalg.generic {indexing_maps = [#id, #grp, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<32x?xi8>, tensor<32x?xf32>) outs(%e : tensor<32x?xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %0, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<32x?xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: skipped: linalg.matmul at {{.*}}:[[# @LINE + 1]]: group-wise scales with a dynamic reduction size
  %y = linalg.matmul indexing_maps = #mm ins(%x, %w : tensor<4x?xf32>, tensor<32x?xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}
