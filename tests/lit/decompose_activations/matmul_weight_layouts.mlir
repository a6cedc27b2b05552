// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// The weight operand in each layout a float linalg.matmul can read it in. Every form has to end
// up as one i8 x i8 -> i32 matmul against the untouched int8 tensor, read in its stored layout.

// REPORT: msd-decompose-activations: 3 rewritten, 0 skipped

// Maps the rewritten matmuls and epilogues use (printed once, at the top of the module).
// CHECK-DAG: #[[MK:map[0-9]*]] = affine_map<(d0, d1, d2) -> (d0, d2)>
// CHECK-DAG: #[[NK:map[0-9]*]] = affine_map<(d0, d1, d2) -> (d1, d2)>
// CHECK-DAG: #[[MN:map[0-9]*]] = affine_map<(d0, d1, d2) -> (d0, d1)>
// CHECK-DAG: #[[P0T:map[0-9]*]] = affine_map<(d0, d1) -> (0, d1, d0)>
// CHECK-DAG: #[[P1T:map[0-9]*]] = affine_map<(d0, d1) -> (1, d1, d0)>

#id = affine_map<(d0, d1) -> (d0, d1)>
#col = affine_map<(d0, d1) -> (0, d1)>
#row = affine_map<(d0, d1) -> (d0, 0)>

// --- 1. weight stored [K,N]: default linalg.matmul on the dequantized [K,N] tensor, no transpose.
// CHECK-LABEL: func.func @weight_kn(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x64xf32>, %[[Q:[^:]+]]: tensor<64x32xi8>, %[[S:[^:]+]]: tensor<1x32xf32>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to f32
// CHECK-NOT:     linalg.matmul {{.*}}xf32>
// CHECK:         %[[AMAX:.*]] = linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]{{.*}} ins(%[[X]] : tensor<4x64xf32>) outs(%{{.*}} : tensor<4xf32>)
// CHECK:           math.absf
// CHECK:           arith.maximumf
// CHECK:         %[[SL:.*]] = linalg.generic {{.*}} ins(%[[X]], %[[AMAX]] : tensor<4x64xf32>, tensor<4xf32>) outs(%{{.*}} : tensor<2x4x64xi8>)
// CHECK:           arith.fptosi %{{.*}} : f32 to i8
// CHECK:         %[[ST:.*]] = tensor.collapse_shape %[[SL]] {{\[}}[0, 1], [2]] : tensor<2x4x64xi8> into tensor<8x64xi8>
// CHECK:         %[[ACC:.*]] = linalg.matmul ins(%[[ST]], %[[Q]] : tensor<8x64xi8>, tensor<64x32xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK:         %[[E:.*]] = tensor.expand_shape %[[ACC]] {{\[}}[0, 1], [2]] output_shape [2, 4, 32] : tensor<8x32xi32> into tensor<2x4x32xi32>
// CHECK:         %[[Y:.*]] = linalg.generic {{.*}} ins(%[[E]], %[[E]], %[[AMAX]], %[[S]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<1x32xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK:           arith.sitofp %{{.*}} : i32 to f32
// CHECK:           arith.sitofp %{{.*}} : i32 to f32
// CHECK:         return %[[Y]]
// CHECK-NOT:     linalg.matmul {{.*}}xf32>
func.func @weight_kn(%x: tensor<4x64xf32>, %q: tensor<64x32xi8>, %s: tensor<1x32xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<64x32xf32>
  %w = linalg.generic {indexing_maps = [#id, #col, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<64x32xi8>, tensor<1x32xf32>) outs(%e : tensor<64x32xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %0, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<64x32xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: rewritten: linalg.matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<64x32xi8>
  %y = linalg.matmul ins(%x, %w : tensor<4x64xf32>, tensor<64x32xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}

// --- 2. weight stored [N,K], read through explicit indexing_maps (no linalg.transpose anywhere).
// CHECK-LABEL: func.func @weight_nk_indexing_maps(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32x1xf32>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to f32
// CHECK-NOT:     linalg.matmul {{.*}}xf32>
// CHECK:         %[[AMAX:.*]] = linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]{{.*}} ins(%[[X]] : tensor<4x64xf32>)
// CHECK:         %[[SL:.*]] = linalg.generic {{.*}} ins(%[[X]], %[[AMAX]] : tensor<4x64xf32>, tensor<4xf32>) outs(%{{.*}} : tensor<2x4x64xi8>)
// CHECK:         %[[ST:.*]] = tensor.collapse_shape %[[SL]] {{\[}}[0, 1], [2]] : tensor<2x4x64xi8> into tensor<8x64xi8>
// CHECK:         %[[ACC:.*]] = linalg.matmul indexing_maps = [#[[MK]], #[[NK]], #[[MN]]] ins(%[[ST]], %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK:         %[[E:.*]] = tensor.expand_shape %[[ACC]]
// CHECK:         %[[Y:.*]] = linalg.generic {{.*}} ins(%[[E]], %[[E]], %[[AMAX]], %[[S]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<32x1xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK:         return %[[Y]]
// CHECK-NOT:     linalg.matmul {{.*}}xf32>
func.func @weight_nk_indexing_maps(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>) -> tensor<4x32xf32> {
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
  // REPORT-DAG: rewritten: linalg.matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8>
  %y = linalg.matmul indexing_maps = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>, affine_map<(m, n, k) -> (m, n)>]
      ins(%x, %w : tensor<4x64xf32>, tensor<32x64xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}

// --- 3. the dequantized weight is operand 0: y[N,M] = W[N,K] @ xT[K,M]. The activation is
// read transposed, and the epilogue writes the [N,M] result from the [P,M,N] accumulator.
// CHECK-LABEL: func.func @weight_lhs(
// CHECK-SAME:    %[[XT:[^:]+]]: tensor<64x4xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32x1xf32>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to f32
// CHECK-NOT:     linalg.matmul {{.*}}xf32>
// CHECK:         %[[AMAX:.*]] = linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]{{.*}} ins(%[[XT]] : tensor<64x4xf32>) outs(%{{.*}} : tensor<4xf32>)
// CHECK:         %[[SL:.*]] = linalg.generic {{.*}} ins(%[[XT]], %[[AMAX]] : tensor<64x4xf32>, tensor<4xf32>) outs(%{{.*}} : tensor<2x4x64xi8>)
// CHECK:         %[[ST:.*]] = tensor.collapse_shape %[[SL]] {{\[}}[0, 1], [2]] : tensor<2x4x64xi8> into tensor<8x64xi8>
// CHECK:         %[[ACC:.*]] = linalg.matmul indexing_maps = [#[[MK]], #[[NK]], #[[MN]]] ins(%[[ST]], %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK:         %[[E:.*]] = tensor.expand_shape %[[ACC]] {{.*}} into tensor<2x4x32xi32>
// CHECK:         %[[Y:.*]] = linalg.generic {indexing_maps = [#[[P0T]], #[[P1T]], {{.*}}]{{.*}} ins(%[[E]], %[[E]], %[[AMAX]], %[[S]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<32x1xf32>) outs(%{{.*}} : tensor<32x4xf32>)
// CHECK:         return %[[Y]]
// CHECK-NOT:     linalg.matmul {{.*}}xf32>
func.func @weight_lhs(%xt: tensor<64x4xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>) -> tensor<32x4xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<32x64xi8>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %0, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<32x64xf32>
  %ey = tensor.empty() : tensor<32x4xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<32x4xf32>) -> tensor<32x4xf32>
  // REPORT-DAG: rewritten: linalg.matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8>
  %y = linalg.matmul ins(%w, %xt : tensor<32x64xf32>, tensor<64x4xf32>) outs(%z : tensor<32x4xf32>) -> tensor<32x4xf32>
  return %y : tensor<32x4xf32>
}
