// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// bf16 models: activation, scale and dequantized weight in bf16 (sitofp i8 -> bf16, mulf bf16).
// The rewrite computes in f32: the amax reduction and the slice generic widen the bf16
// activation with arith.extf, the epilogue widens the bf16 scale, and no bf16 matmul remains.
// With a bf16 result the epilogue narrows once at the end (truncf f32 -> bf16).

// REPORT: msd-decompose-activations: 2 rewritten, 0 skipped

#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0, 0)>

// --- 1. torch's shape (/tmp/spike/bf16.mlir without the HAL wrapper): bf16 x bf16 -> f32.
// CHECK-LABEL: func.func @bf16_to_f32(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x64xbf16>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32x1xbf16>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to bf16
// CHECK-NOT:     linalg.matmul {{.*}}bf16>
// CHECK:         %[[AMAX:.*]] = linalg.generic {{.*}} ins(%[[X]] : tensor<4x64xbf16>) outs(%{{.*}} : tensor<4xf32>)
// CHECK-NEXT:    ^bb0(%[[IN:[^:]+]]: bf16, %{{[^:]+}}: f32):
// CHECK-NEXT:      %[[XF:.*]] = arith.extf %[[IN]] : bf16 to f32
// CHECK-NEXT:      math.absf %[[XF]] : f32
// CHECK:         %[[SL:.*]] = linalg.generic {{.*}} ins(%[[X]], %[[AMAX]] : tensor<4x64xbf16>, tensor<4xf32>) outs(%{{.*}} : tensor<2x4x64xi8>)
// CHECK-NEXT:    ^bb0(%[[IN:[^:]+]]: bf16, %{{[^:]+}}: f32, %{{[^:]+}}: i8):
// CHECK:           %[[XF:.*]] = arith.extf %[[IN]] : bf16 to f32
// CHECK:           arith.divf %[[XF]], %{{.*}} : f32
// CHECK:           arith.fptosi %{{.*}} : f32 to i8
// CHECK:         %[[ST:.*]] = tensor.collapse_shape %[[SL]]
// CHECK:         %[[ACC:.*]] = linalg.matmul {{.*}}ins(%[[ST]], %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK:         %[[E:.*]] = tensor.expand_shape %[[ACC]]
// CHECK:         %[[Y:.*]] = linalg.generic {{.*}} ins(%[[E]], %[[E]], %[[AMAX]], %[[S]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<32x1xbf16>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK:           arith.extf %{{.*}} : bf16 to f32
// CHECK:         return %[[Y]]
// CHECK-NOT:     linalg.matmul {{.*}}bf16>
// CHECK-NOT:     arith.mulf %{{.*}} : bf16
func.func @bf16_to_f32(%x: tensor<4x64xbf16>, %q: tensor<32x64xi8>, %s: tensor<32x1xbf16>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xbf16>
  %f = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q : tensor<32x64xi8>) outs(%e : tensor<32x64xbf16>) {
  ^bb0(%in: i8, %out: bf16):
    %0 = arith.sitofp %in : i8 to bf16
    linalg.yield %0 : bf16
  } -> tensor<32x64xbf16>
  %w = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%f, %s : tensor<32x64xbf16>, tensor<32x1xbf16>) outs(%e : tensor<32x64xbf16>) {
  ^bb0(%in: bf16, %sc: bf16, %out: bf16):
    %0 = arith.mulf %in, %sc : bf16
    linalg.yield %0 : bf16
  } -> tensor<32x64xbf16>
  %et = tensor.empty() : tensor<64x32xbf16>
  %wt = linalg.transpose ins(%w : tensor<32x64xbf16>) outs(%et : tensor<64x32xbf16>) permutation = [1, 0]
  %ey = tensor.empty() : tensor<4x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: rewritten: linalg.matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8>
  %y = linalg.matmul ins(%x, %wt : tensor<4x64xbf16>, tensor<64x32xbf16>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}

// --- 2. bf16 x bf16 -> bf16: same f32 arithmetic, one truncf at the end of the epilogue.
// CHECK-LABEL: func.func @bf16_to_bf16(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x64xbf16>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32x1xbf16>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to bf16
// CHECK-NOT:     linalg.matmul {{.*}}bf16>
// CHECK:         %[[AMAX:.*]] = linalg.generic {{.*}} ins(%[[X]] : tensor<4x64xbf16>) outs(%{{.*}} : tensor<4xf32>)
// CHECK:           arith.extf %{{.*}} : bf16 to f32
// CHECK:         %[[SL:.*]] = linalg.generic {{.*}} ins(%[[X]], %[[AMAX]] : tensor<4x64xbf16>, tensor<4xf32>) outs(%{{.*}} : tensor<2x4x64xi8>)
// CHECK:           arith.extf %{{.*}} : bf16 to f32
// CHECK:         %[[ACC:.*]] = linalg.matmul {{.*}}ins(%{{.*}}, %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK:         %[[Y:.*]] = linalg.generic {{.*}} ins(%{{.*}}, %{{.*}}, %[[AMAX]], %[[S]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<32x1xbf16>) outs(%{{.*}} : tensor<4x32xbf16>)
// CHECK:           %[[R:.*]] = arith.truncf %{{.*}} : f32 to bf16
// CHECK-NEXT:      linalg.yield %[[R]] : bf16
// CHECK:         return %[[Y]]
// CHECK-NOT:     linalg.matmul {{.*}}bf16>
func.func @bf16_to_bf16(%x: tensor<4x64xbf16>, %q: tensor<32x64xi8>, %s: tensor<32x1xbf16>) -> tensor<4x32xbf16> {
  %cst = arith.constant 0.0 : bf16
  %e = tensor.empty() : tensor<32x64xbf16>
  %w = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<32x64xi8>, tensor<32x1xbf16>) outs(%e : tensor<32x64xbf16>) {
  ^bb0(%in: i8, %sc: bf16, %out: bf16):
    %0 = arith.sitofp %in : i8 to bf16
    %1 = arith.mulf %0, %sc : bf16
    linalg.yield %1 : bf16
  } -> tensor<32x64xbf16>
  %et = tensor.empty() : tensor<64x32xbf16>
  %wt = linalg.transpose ins(%w : tensor<32x64xbf16>) outs(%et : tensor<64x32xbf16>) permutation = [1, 0]
  %ey = tensor.empty() : tensor<4x32xbf16>
  %z = linalg.fill ins(%cst : bf16) outs(%ey : tensor<4x32xbf16>) -> tensor<4x32xbf16>
  // REPORT-DAG: rewritten: linalg.matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8>
  %y = linalg.matmul ins(%x, %wt : tensor<4x64xbf16>, tensor<64x32xbf16>) outs(%z : tensor<4x32xbf16>) -> tensor<4x32xbf16>
  return %y : tensor<4x32xbf16>
}
