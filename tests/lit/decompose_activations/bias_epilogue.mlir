// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// What the rewritten matmul's result feeds, and what it accumulates into.
// - A zero-filled init is read as its scalar, and a single-use elementwise consumer of the result
//   (the bias add of nn.Linear) is merged into the epilogue: one generic reads the i32
//   accumulators, amax, the weight scale and the bias; no separate bias generic is left.
// - An init that is a live tensor (y = acc + x.W) is the epilogue's `outs`, and the epilogue body
//   adds the `out` block argument to the product.

// REPORT: msd-decompose-activations: 2 rewritten, 0 skipped

#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0, 0)>
#bias = affine_map<(d0, d1) -> (d1)>

// --- 1. zero-filled init, then a separate bias-add generic (nn.Linear with bias).
// CHECK-LABEL: func.func @bias_add(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32x1xf32>, %[[B:[^:]+]]: tensor<32xf32>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to f32
// CHECK:         %[[AMAX:.*]] = linalg.generic {{.*}} ins(%[[X]] : tensor<4x64xf32>)
// CHECK:         %[[SL:.*]] = linalg.generic {{.*}} outs(%{{.*}} : tensor<2x4x64xi8>)
// CHECK:         %[[ST:.*]] = tensor.collapse_shape %[[SL]]
// CHECK:         %[[ACC:.*]] = linalg.matmul {{.*}}ins(%[[ST]], %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK:         %[[E:.*]] = tensor.expand_shape %[[ACC]]
// CHECK:         %[[Y:.*]] = linalg.generic {{.*}} ins(%[[E]], %[[E]], %[[AMAX]], %[[S]], %[[B]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<32x1xf32>, tensor<32xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK:         ^bb0(%{{[^:]+}}: i32, %{{[^:]+}}: i32, %{{[^:]+}}: f32, %{{[^:]+}}: f32, %[[BIAS:[^:]+]]: f32, %{{[^:]+}}: f32):
// CHECK:           arith.sitofp %{{.*}} : i32 to f32
// CHECK:           %[[R:.*]] = arith.addf %{{.*}}, %[[BIAS]] : f32
// CHECK-NEXT:      linalg.yield %[[R]] : f32
// CHECK-NOT:     linalg.generic
// CHECK:         return %[[Y]]
// CHECK-NOT:     linalg.matmul {{.*}}xf32>
func.func @bias_add(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>, %b: tensor<32xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<32x64xi8>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %0, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<32x64xf32>
  %et = tensor.empty() : tensor<64x32xf32>
  %wt = linalg.transpose ins(%w : tensor<32x64xf32>) outs(%et : tensor<64x32xf32>) permutation = [1, 0]
  %ey = tensor.empty() : tensor<4x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: rewritten: linalg.matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8>
  %y = linalg.matmul ins(%x, %wt : tensor<4x64xf32>, tensor<64x32xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  %yb = linalg.generic {indexing_maps = [#id, #bias, #id], iterator_types = ["parallel", "parallel"]}
      ins(%y, %b : tensor<4x32xf32>, tensor<32xf32>) outs(%ey : tensor<4x32xf32>) {
  ^bb0(%in: f32, %bi: f32, %out: f32):
    %0 = arith.addf %in, %bi : f32
    linalg.yield %0 : f32
  } -> tensor<4x32xf32>
  return %yb : tensor<4x32xf32>
}

// --- 2. init is a live tensor (y = acc + x·W): the epilogue writes into %acc and adds `out`.
// CHECK-LABEL: func.func @accumulate_into_init(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32x1xf32>, %[[INIT:[^:]+]]: tensor<4x32xf32>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to f32
// CHECK:         %[[AMAX:.*]] = linalg.generic {{.*}} ins(%[[X]] : tensor<4x64xf32>)
// CHECK:         %[[ACC:.*]] = linalg.matmul {{.*}}ins(%{{.*}}, %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK:         %[[E:.*]] = tensor.expand_shape %[[ACC]]
// CHECK:         %[[Y:.*]] = linalg.generic {{.*}} ins(%[[E]], %[[E]], %[[AMAX]], %[[S]] : {{.*}}) outs(%[[INIT]] : tensor<4x32xf32>)
// CHECK:         ^bb0(%{{[^:]+}}: i32, %{{[^:]+}}: i32, %{{[^:]+}}: f32, %{{[^:]+}}: f32, %[[OUT:[^:]+]]: f32):
// CHECK:           %[[R:.*]] = arith.addf %[[OUT]], %{{.*}} : f32
// CHECK-NEXT:      linalg.yield %[[R]] : f32
// CHECK:         return %[[Y]]
// CHECK-NOT:     linalg.matmul {{.*}}xf32>
func.func @accumulate_into_init(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>, %acc: tensor<4x32xf32>) -> tensor<4x32xf32> {
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<32x64xi8>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %0, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<32x64xf32>
  %et = tensor.empty() : tensor<64x32xf32>
  %wt = linalg.transpose ins(%w : tensor<32x64xf32>) outs(%et : tensor<64x32xf32>) permutation = [1, 0]
  // REPORT-DAG: rewritten: linalg.matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8>
  %y = linalg.matmul ins(%x, %wt : tensor<4x64xf32>, tensor<64x32xf32>) outs(%acc : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}
