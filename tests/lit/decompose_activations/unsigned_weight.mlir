// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// Unsigned 8-bit weights (uitofp, values 0..255): the i8 matmul reads signed bytes, so the pass
// subtracts 128 once (q - 128 fits int8; a weight-only op IREE hoists to load time for
// parameters) and adds 128·scale·rowsum(x) in the epilogue.

// CHECK-LABEL: func.func @unsigned_weight(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>
// CHECK-NOT:     arith.uitofp %{{.*}} : i8 to f32
// CHECK:         %[[QS:.*]] = linalg.generic {{.*}} ins(%[[Q]] : tensor<32x64xi8>) outs(%{{.*}} : tensor<32x64xi8>)
// CHECK:           arith.subi %{{.*}}, %c-128_i8 : i8
// CHECK:         %[[RED:.*]]:2 = linalg.generic {{.*}} ins(%[[X]] : tensor<4x64xf32>)
// CHECK:         linalg.matmul {{.*}}ins(%{{.*}}, %[[QS]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK:         linalg.generic {{.*}} ins(%{{.*}}, %{{.*}}, %[[RED]]#0, %[[RED]]#1, %{{.*}} : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<4xf32>, tensor<32x1xf32>)
// CHECK:           arith.constant 1.280000e+02 : f32
#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0, 0)>
// CHECK-NOT:     {{math.roundeven|tensor.collapse_shape|tensor.expand_shape|linalg.matmul .*xi8>}}
func.func @unsigned_weight(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<32x64xi8>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %0 = arith.uitofp %in : i8 to f32
    %1 = arith.mulf %0, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<32x64xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT: rewritten: linalg.matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8> (unsigned weight as q-128) with zero-point/offset term
  %y = linalg.matmul indexing_maps = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>, affine_map<(m, n, k) -> (m, n)>]
      ins(%x, %w : tensor<4x64xf32>, tensor<32x64xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}
