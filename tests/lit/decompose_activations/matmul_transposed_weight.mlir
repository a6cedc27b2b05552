// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// nn.Linear as torch-mlir lowers it: int8 weight [N,K] → sitofp → ×scale[N,1] → transpose → matmul.

// REPORT: msd-decompose-activations: 1 rewritten, 0 skipped
// REPORT: rewritten: linalg.matmul at {{.*}}: 2 int8 slice(s) x tensor<32x64xi8>

// CHECK-LABEL: func.func @linear(
// CHECK-SAME:    %[[X:.*]]: tensor<4x64xf32>, %[[Q:.*]]: tensor<32x64xi8>, %[[S:.*]]: tensor<32x1xf32>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to f32
// CHECK:         %[[AMAX:.*]] = linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]{{.*}} ins(%[[X]] : tensor<4x64xf32>)
// CHECK:           math.absf
// CHECK:           arith.maximumf
// CHECK:         %[[SL:.*]] = linalg.generic {{.*}} ins(%[[X]], %[[AMAX]] : tensor<4x64xf32>, tensor<4xf32>) outs(%{{.*}} : tensor<2x4x64xi8>)
// CHECK:           math.roundeven
// CHECK:           arith.fptosi %{{.*}} : f32 to i8
// CHECK:         %[[ST:.*]] = tensor.collapse_shape %[[SL]] {{\[}}[0, 1], [2]] : tensor<2x4x64xi8> into tensor<8x64xi8>
// CHECK:         %[[ACC:.*]] = linalg.matmul {{.*}} ins(%[[ST]], %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK:         %[[E:.*]] = tensor.expand_shape %[[ACC]]
// CHECK:         %[[Y:.*]] = linalg.generic {{.*}} ins(%[[E]], %[[E]], %[[AMAX]], %[[S]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<32x1xf32>)
// CHECK:           arith.sitofp %{{.*}} : i32 to f32
// CHECK:         return %[[Y]]
#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0, 0)>
func.func @linear(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %f = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q : tensor<32x64xi8>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    linalg.yield %0 : f32
  } -> tensor<32x64xf32>
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
  %y = linalg.matmul ins(%x, %wt : tensor<4x64xf32>, tensor<64x32xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}
