// RUN: msd-opt %s --msd-decompose-activations | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// Regression: an unsigned zero point converted as uitofp(extui(z)) (and uitofp of an integer
// constant) used to crash the pass with a Python AttributeError in _emit (its "unsigned" case
// assumed a Leaf argument, but got a nested Node / a Const). Now both are rewritten with a
// zero-point term, and the zero point keeps its unsigned reading: z in 0..255, i.e. the epilogue
// converts the i8 zero point with arith.uitofp (never sitofp, which would map 255 to -1), and a
// constant zero point 8 becomes the float 8.0. W = s·(q - z) gives y = s·(x·q) + (-z·s)·rowsum(x).

// REPORT: msd-decompose-activations: 2 rewritten, 0 skipped

#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0, 0)>

// --- 1. per-channel i8 zero point read as unsigned: uitofp(extui(z : i8 -> i32)).
// CHECK-LABEL: func.func @uint8_zero_point(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32x1xf32>, %[[Z:[^:]+]]: tensor<32x1xi8>
// CHECK-NOT:     arith.extui
// CHECK:         %[[RED:.*]]:2 = linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]{{.*}} ins(%[[X]] : tensor<4x64xf32>)
// CHECK:         %[[ACC:.*]] = linalg.matmul {{.*}}ins(%{{.*}}, %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK:         %[[E:.*]] = tensor.expand_shape %[[ACC]]
// CHECK:         %[[Y:.*]] = linalg.generic {{.*}} ins(%[[E]], %[[E]], %[[RED]]#0, %[[RED]]#1, %[[Z]], %[[S]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<4xf32>, tensor<32x1xi8>, tensor<32x1xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK-NEXT:    ^bb0(%{{[^:]+}}: i32, %{{[^:]+}}: i32, %{{[^:]+}}: f32, %[[RS:[^:]+]]: f32, %[[ZP:[^:]+]]: i8, %[[SC:[^:]+]]: f32, %{{[^:]+}}: f32):
// CHECK-NOT:       arith.sitofp %[[ZP]]
// CHECK:           %[[ZF:.*]] = arith.uitofp %[[ZP]] : i8 to f32
// CHECK-NEXT:      %[[NZ:.*]] = arith.negf %[[ZF]] : f32
// CHECK-NEXT:      %[[SZ:.*]] = arith.mulf %[[SC]], %[[NZ]] : f32
// CHECK-NEXT:      %{{.*}} = arith.mulf %[[SZ]], %[[RS]] : f32
// CHECK:           linalg.yield
// CHECK:         return %[[Y]]
// CHECK-NOT:     linalg.matmul {{.*}}xf32>
func.func @uint8_zero_point(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>, %z: tensor<32x1xi8>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %z, %s : tensor<32x64xi8>, tensor<32x1xi8>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %zp: i8, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %zi = arith.extui %zp : i8 to i32
    %zf = arith.uitofp %zi : i32 to f32
    %1 = arith.subf %0, %zf : f32
    %2 = arith.mulf %1, %sc : f32
    linalg.yield %2 : f32
  } -> tensor<32x64xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %f = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: rewritten: linalg.matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8> with zero-point/offset term
  %y = linalg.matmul indexing_maps = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>, affine_map<(m, n, k) -> (m, n)>]
      ins(%x, %w : tensor<4x64xf32>, tensor<32x64xf32>) outs(%f : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}

// --- 2. constant zero point uitofp(8 : i8): the epilogue uses the float constant 8.0.
// CHECK-LABEL: func.func @uint8_const_zero_point(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32x1xf32>
// CHECK:         %[[RED:.*]]:2 = linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]{{.*}} ins(%[[X]] : tensor<4x64xf32>)
// CHECK:         %[[ACC:.*]] = linalg.matmul {{.*}}ins(%{{.*}}, %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK:         %[[E:.*]] = tensor.expand_shape %[[ACC]]
// CHECK:         %[[Y:.*]] = linalg.generic {{.*}} ins(%[[E]], %[[E]], %[[RED]]#0, %[[RED]]#1, %[[S]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<4xf32>, tensor<32x1xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK-NEXT:    ^bb0(%{{[^:]+}}: i32, %{{[^:]+}}: i32, %{{[^:]+}}: f32, %[[RS:[^:]+]]: f32, %[[SC:[^:]+]]: f32, %{{[^:]+}}: f32):
// CHECK:           %[[ZF:.*]] = arith.constant 8.000000e+00 : f32
// CHECK-NEXT:      %[[NZ:.*]] = arith.negf %[[ZF]] : f32
// CHECK-NEXT:      %[[SZ:.*]] = arith.mulf %[[SC]], %[[NZ]] : f32
// CHECK-NEXT:      %{{.*}} = arith.mulf %[[SZ]], %[[RS]] : f32
// CHECK:           linalg.yield
// CHECK:         return %[[Y]]
// CHECK-NOT:     linalg.matmul {{.*}}xf32>
func.func @uint8_const_zero_point(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<32x64xi8>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %c8 = arith.constant 8 : i8
    %zf = arith.uitofp %c8 : i8 to f32
    %1 = arith.subf %0, %zf : f32
    %2 = arith.mulf %1, %sc : f32
    linalg.yield %2 : f32
  } -> tensor<32x64xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %f = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: rewritten: linalg.matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8> with zero-point/offset term
  %y = linalg.matmul indexing_maps = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>, affine_map<(m, n, k) -> (m, n)>]
      ins(%x, %w : tensor<4x64xf32>, tensor<32x64xf32>) outs(%f : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}
