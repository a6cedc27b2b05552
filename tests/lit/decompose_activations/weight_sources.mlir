// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// Where the int8 weight comes from: a function argument, an inline dense constant, or (as the
// torch importer produces at IREE's input phase) a util.global parameter loaded in a util.func.
// The i8 matmul must read that very value; the global and its load stay as they are.

// REPORT: msd-decompose-activations: 3 rewritten, 0 skipped

#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0, 0)>
#vec = affine_map<(d0, d1) -> (d0)>

// --- 1. function argument.
// CHECK-LABEL: func.func @argument_weight(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32xf32>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to f32
// CHECK:         %[[AMAX:.*]] = linalg.generic {{.*}} ins(%[[X]] : tensor<4x64xf32>)
// CHECK:         %[[SL:.*]] = linalg.generic {{.*}} outs(%{{.*}} : tensor<2x4x64xi8>)
// CHECK:         %[[ST:.*]] = tensor.collapse_shape %[[SL]]
// CHECK:         linalg.matmul {{.*}}ins(%[[ST]], %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK:         linalg.generic {{.*}} ins(%{{.*}}, %{{.*}}, %[[AMAX]], %[[S]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<32xf32>)
// CHECK-NOT:     linalg.matmul {{.*}}xf32>
func.func @argument_weight(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #vec, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<32x64xi8>, tensor<32xf32>) outs(%e : tensor<32x64xf32>) {
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
  return %y : tensor<4x32xf32>
}

// --- 2. a small inline constant weight (4x8, explicit values): it is kept verbatim and fed to
// the i8 matmul; it is not converted to a float constant.
// CHECK-LABEL: func.func @constant_weight(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<2x8xf32>, %[[S:[^:]+]]: tensor<4xf32>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to f32
// CHECK-NOT:     dense<{{.*}}xf32>
// CHECK:         %[[CQ:.*]] = arith.constant dense<{{\[}}[1, -2, 3, -4, 5, -6, 7, -8], [127, -127, 0, 1, 2, 3, 4, 5], [-1, -1, -1, -1, 1, 1, 1, 1], [0, 10, 20, 30, 40, 50, 60, 70]]> : tensor<4x8xi8>
// CHECK-NOT:     dense<{{.*}}xf32>
// CHECK:         %[[AMAX:.*]] = linalg.generic {{.*}} ins(%[[X]] : tensor<2x8xf32>)
// CHECK:         %[[SL:.*]] = linalg.generic {{.*}} outs(%{{.*}} : tensor<2x2x8xi8>)
// CHECK:         %[[ST:.*]] = tensor.collapse_shape %[[SL]] {{\[}}[0, 1], [2]] : tensor<2x2x8xi8> into tensor<4x8xi8>
// CHECK:         linalg.matmul {{.*}}ins(%[[ST]], %[[CQ]] : tensor<4x8xi8>, tensor<4x8xi8>) outs(%{{.*}} : tensor<4x4xi32>)
// CHECK:         linalg.generic {{.*}} ins(%{{.*}}, %{{.*}}, %[[AMAX]], %[[S]] : tensor<2x2x4xi32>, tensor<2x2x4xi32>, tensor<2xf32>, tensor<4xf32>) outs(%{{.*}} : tensor<2x4xf32>)
// CHECK-NOT:     linalg.matmul {{.*}}xf32>
func.func @constant_weight(%x: tensor<2x8xf32>, %s: tensor<4xf32>) -> tensor<2x4xf32> {
  %cst = arith.constant 0.0 : f32
  %q = arith.constant dense<[[1, -2, 3, -4, 5, -6, 7, -8], [127, -127, 0, 1, 2, 3, 4, 5], [-1, -1, -1, -1, 1, 1, 1, 1], [0, 10, 20, 30, 40, 50, 60, 70]]> : tensor<4x8xi8>
  %e = tensor.empty() : tensor<4x8xf32>
  %w = linalg.generic {indexing_maps = [#id, #vec, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<4x8xi8>, tensor<4xf32>) outs(%e : tensor<4x8xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %0, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<4x8xf32>
  %ey = tensor.empty() : tensor<2x4xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<2x4xf32>) -> tensor<2x4xf32>
  // REPORT-DAG: rewritten: linalg.matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<4x8xi8>
  %y = linalg.matmul indexing_maps = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>, affine_map<(m, n, k) -> (m, n)>]
      ins(%x, %w : tensor<2x8xf32>, tensor<4x8xf32>) outs(%z : tensor<2x4xf32>) -> tensor<2x4xf32>
  return %y : tensor<2x4xf32>
}

// --- 3. util.global parameters + util.global.load inside a util.func (IREE input-phase form).
// CHECK:       util.global private @qw = #stream.parameter.named<"model"::"qw"> : tensor<32x64xi8>
// CHECK:       util.global private @sc = #stream.parameter.named<"model"::"sc"> : tensor<32x1xf32>
// CHECK-LABEL: util.func public @global_weight(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x64xf32>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to f32
// CHECK-DAG:     %[[Q:.*]] = util.global.load @qw : tensor<32x64xi8>
// CHECK-DAG:     %[[S:.*]] = util.global.load @sc : tensor<32x1xf32>
// CHECK:         %[[AMAX:.*]] = linalg.generic {{.*}} ins(%[[X]] : tensor<4x64xf32>)
// CHECK:         %[[SL:.*]] = linalg.generic {{.*}} outs(%{{.*}} : tensor<2x4x64xi8>)
// CHECK:         %[[ST:.*]] = tensor.collapse_shape %[[SL]]
// CHECK:         linalg.matmul {{.*}}ins(%[[ST]], %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK:         %[[Y:.*]] = linalg.generic {{.*}} ins(%{{.*}}, %{{.*}}, %[[AMAX]], %[[S]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<32x1xf32>)
// CHECK:         util.return %[[Y]] : tensor<4x32xf32>
// CHECK-NOT:     linalg.matmul {{.*}}xf32>
util.global private @qw = #stream.parameter.named<"model"::"qw"> : tensor<32x64xi8>
util.global private @sc = #stream.parameter.named<"model"::"sc"> : tensor<32x1xf32>
util.func public @global_weight(%x: tensor<4x64xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %q = util.global.load @qw : tensor<32x64xi8>
  %e = tensor.empty() : tensor<32x64xf32>
  %f = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q : tensor<32x64xi8>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    linalg.yield %0 : f32
  } -> tensor<32x64xf32>
  %s = util.global.load @sc : tensor<32x1xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%f, %s : tensor<32x64xf32>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: f32, %sc: f32, %out: f32):
    %0 = arith.mulf %in, %sc : f32
    linalg.yield %0 : f32
  } -> tensor<32x64xf32>
  %et = tensor.empty() : tensor<64x32xf32>
  %wt = linalg.transpose ins(%w : tensor<32x64xf32>) outs(%et : tensor<64x32xf32>) permutation = [1, 0]
  %ey = tensor.empty() : tensor<4x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: rewritten: linalg.matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8>
  %y = linalg.matmul ins(%x, %wt : tensor<4x64xf32>, tensor<64x32xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  util.return %y : tensor<4x32xf32>
}
