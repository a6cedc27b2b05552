// RUN: msd-opt %s --msd-decompose-activations | FileCheck %s

// Regression: the epilogue fusion used to merge the epilogue (i32 -> f32 recombination, scales)
// into its sole elementwise consumer even when that consumer sat inside an scf.for body, so the
// loop-invariant epilogue ran on every iteration. Now only a consumer in the epilogue's own block
// is merged: the epilogue generic (the one reading the i32 accumulator) stays before the loop,
// and the loop body only adds its f32 result to the iteration argument.

#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0, 0)>

// CHECK-LABEL: func.func @consumer_in_loop(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32x1xf32>, %[[INIT:[^:]+]]: tensor<4x32xf32>
// CHECK:         %[[ACC:.*]] = linalg.matmul {{.*}}ins(%{{.*}}, %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK:         %[[E:.*]] = tensor.expand_shape %[[ACC]]
// CHECK-NOT:     scf.for
// CHECK:         %[[EP:.*]] = linalg.generic {{.*}} ins(%[[E]], %[[E]], %{{.*}}, %[[S]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<32x1xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK-NEXT:    ^bb0(%{{[^:]+}}: i32, %{{[^:]+}}: i32,
// CHECK:           linalg.yield
// CHECK-NEXT:    } -> tensor<4x32xf32>
// CHECK-NEXT:    %[[R:.*]] = scf.for %{{.*}} iter_args(%[[IT:[^ ]+]] = %[[INIT]]) -> (tensor<4x32xf32>) {
// CHECK-NOT:       {{i32|expanded|linalg.matmul}}
// CHECK:           %[[A:.*]] = linalg.generic {{.*}} ins(%[[EP]], %[[IT]] : tensor<4x32xf32>, tensor<4x32xf32>)
// CHECK-NOT:       {{i32|expanded|linalg.matmul}}
// CHECK:           arith.addf
// CHECK-NOT:       {{i32|expanded|linalg.matmul}}
// CHECK:           scf.yield %[[A]] : tensor<4x32xf32>
// CHECK:         return %[[R]] : tensor<4x32xf32>
func.func @consumer_in_loop(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>, %init: tensor<4x32xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c8 = arith.constant 8 : index
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
  %y = linalg.matmul indexing_maps = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>, affine_map<(m, n, k) -> (m, n)>]
      ins(%x, %w : tensor<4x64xf32>, tensor<32x64xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  %r = scf.for %i = %c0 to %c8 step %c1 iter_args(%acc = %init) -> (tensor<4x32xf32>) {
    %a = linalg.generic {indexing_maps = [#id, #id, #id], iterator_types = ["parallel", "parallel"]}
        ins(%y, %acc : tensor<4x32xf32>, tensor<4x32xf32>) outs(%ey : tensor<4x32xf32>) {
    ^bb0(%in: f32, %in2: f32, %out: f32):
      %0 = arith.addf %in, %in2 : f32
      linalg.yield %0 : f32
    } -> tensor<4x32xf32>
    scf.yield %a : tensor<4x32xf32>
  }
  return %r : tensor<4x32xf32>
}
