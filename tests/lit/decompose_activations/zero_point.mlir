// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// Asymmetric weights: W = s·(q - z). The zero point never meets the weight; it becomes a
// rowsum term: y = s·(amax/127·Σ_p C_p/254^p) + (-z·s)·rowsum(x). The rowsum is the second
// output of the amax reduction (an arith.addf next to the maximumf), and the epilogue reads it
// together with the zero point, in the zero point's own type (f32 here, i32 below).

// REPORT: msd-decompose-activations: 2 rewritten, 1 skipped

#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0, 0)>

// --- 1. float zero point per output channel: (sitofp(q) - z) * s.
// CHECK-LABEL: func.func @float_zero_point(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32x1xf32>, %[[Z:[^:]+]]: tensor<32x1xf32>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to f32
// CHECK:         %[[RED:.*]]:2 = linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]{{.*}} ins(%[[X]] : tensor<4x64xf32>) outs(%{{.*}}, %{{.*}} : tensor<4xf32>, tensor<4xf32>)
// CHECK-NEXT:    ^bb0(%[[IN:[^:]+]]: f32, %[[AM:[^:]+]]: f32, %[[RS:[^:]+]]: f32):
// CHECK:           %[[ABS:.*]] = math.absf %[[IN]] : f32
// CHECK:           %[[MAX:.*]] = arith.maximumf %[[ABS]], %[[AM]] : f32
// CHECK:           %[[SUM:.*]] = arith.addf %[[IN]], %[[RS]] : f32
// CHECK:           linalg.yield %[[MAX]], %[[SUM]] : f32, f32
// CHECK:         %[[SL:.*]] = linalg.generic {{.*}} ins(%[[X]], %[[RED]]#0 : tensor<4x64xf32>, tensor<4xf32>) outs(%{{.*}} : tensor<2x4x64xi8>)
// CHECK:         %[[ST:.*]] = tensor.collapse_shape %[[SL]]
// CHECK:         %[[ACC:.*]] = linalg.matmul {{.*}}ins(%[[ST]], %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK:         %[[E:.*]] = tensor.expand_shape %[[ACC]]
// CHECK:         %[[Y:.*]] = linalg.generic {{.*}} ins(%[[E]], %[[E]], %[[RED]]#0, %[[RED]]#1, %[[Z]], %[[S]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<4xf32>, tensor<32x1xf32>, tensor<32x1xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK-NEXT:    ^bb0(%{{[^:]+}}: i32, %{{[^:]+}}: i32, %{{[^:]+}}: f32, %[[RS:[^:]+]]: f32, %[[ZP:[^:]+]]: f32, %{{[^:]+}}: f32, %{{[^:]+}}: f32):
// CHECK:           arith.negf %[[ZP]] : f32
// CHECK:           arith.mulf %{{.*}}, %[[RS]] : f32
// CHECK:           linalg.yield
// CHECK:         return %[[Y]]
// CHECK-NOT:     linalg.matmul {{.*}}xf32>
func.func @float_zero_point(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>, %z: tensor<32x1xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %z, %s : tensor<32x64xi8>, tensor<32x1xf32>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %zp: f32, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.subf %0, %zp : f32
    %2 = arith.mulf %1, %sc : f32
    linalg.yield %2 : f32
  } -> tensor<32x64xf32>
  %et = tensor.empty() : tensor<64x32xf32>
  %wt = linalg.transpose ins(%w : tensor<32x64xf32>) outs(%et : tensor<64x32xf32>) permutation = [1, 0]
  %ey = tensor.empty() : tensor<4x32xf32>
  %f = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: rewritten: linalg.matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8> with zero-point/offset term
  %y = linalg.matmul ins(%x, %wt : tensor<4x64xf32>, tensor<64x32xf32>) outs(%f : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}

// --- 2. integer zero point, subtracted in i32 before the conversion: sitofp(extsi(q) - z).
// The i32 zero point is converted in the epilogue (sitofp i32 -> f32 of a per-channel value).
// CHECK-LABEL: func.func @int_zero_point(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<4x64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32x1xf32>, %[[Z:[^:]+]]: tensor<32x1xi8>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to f32
// CHECK-NOT:     arith.extsi
// CHECK:         %[[RED:.*]]:2 = linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]{{.*}} ins(%[[X]] : tensor<4x64xf32>) outs(%{{.*}}, %{{.*}} : tensor<4xf32>, tensor<4xf32>)
// CHECK:           arith.maximumf
// CHECK:           arith.addf
// CHECK:         %[[SL:.*]] = linalg.generic {{.*}} ins(%[[X]], %[[RED]]#0 : tensor<4x64xf32>, tensor<4xf32>) outs(%{{.*}} : tensor<2x4x64xi8>)
// CHECK:         %[[ST:.*]] = tensor.collapse_shape %[[SL]]
// CHECK:         %[[ACC:.*]] = linalg.matmul {{.*}}ins(%[[ST]], %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK:         %[[E:.*]] = tensor.expand_shape %[[ACC]]
// CHECK:         %[[Y:.*]] = linalg.generic {{.*}} ins(%[[E]], %[[E]], %[[RED]]#0, %[[RED]]#1, %[[Z]], %[[S]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<4xf32>, tensor<32x1xi8>, tensor<32x1xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK-NEXT:    ^bb0(%{{[^:]+}}: i32, %{{[^:]+}}: i32, %{{[^:]+}}: f32, %[[RS:[^:]+]]: f32, %[[ZP:[^:]+]]: i8, %{{[^:]+}}: f32, %{{[^:]+}}: f32):
// CHECK:           %[[ZF:.*]] = arith.sitofp %[[ZP]] : i8 to f32
// CHECK:           arith.negf %[[ZF]] : f32
// CHECK:           arith.mulf %{{.*}}, %[[RS]] : f32
// CHECK:           linalg.yield
// CHECK:         return %[[Y]]
// CHECK-NOT:     linalg.matmul {{.*}}xf32>
func.func @int_zero_point(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>, %z: tensor<32x1xi8>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %z, %s : tensor<32x64xi8>, tensor<32x1xi8>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %zp: i8, %sc: f32, %out: f32):
    %0 = arith.extsi %in : i8 to i32
    %z32 = arith.extsi %zp : i8 to i32
    %1 = arith.subi %0, %z32 : i32
    %2 = arith.sitofp %1 : i32 to f32
    %3 = arith.mulf %2, %sc : f32
    linalg.yield %3 : f32
  } -> tensor<32x64xf32>
  %et = tensor.empty() : tensor<64x32xf32>
  %wt = linalg.transpose ins(%w : tensor<32x64xf32>) outs(%et : tensor<64x32xf32>) permutation = [1, 0]
  %ey = tensor.empty() : tensor<4x32xf32>
  %f = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: rewritten: linalg.matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8> with zero-point/offset term
  %y = linalg.matmul ins(%x, %wt : tensor<4x64xf32>, tensor<64x32xf32>) outs(%f : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}

// --- An i32 zero point of unknown range: extsi(q) - z may wrap in i32, so the pass refuses.
// CHECK-LABEL: func.func @int32_zero_point_may_wrap(
// CHECK:         linalg.matmul ins(%{{.*}}, %{{.*}} : tensor<4x64xf32>, tensor<64x32xf32>)
// CHECK-NOT:     xi32>)
func.func @int32_zero_point_may_wrap(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>, %z: tensor<32x1xi32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %z, %s : tensor<32x64xi8>, tensor<32x1xi32>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %zp: i32, %sc: f32, %out: f32):
    %0 = arith.extsi %in : i8 to i32
    %1 = arith.subi %0, %zp : i32
    %2 = arith.sitofp %1 : i32 to f32
    %3 = arith.mulf %2, %sc : f32
    linalg.yield %3 : f32
  } -> tensor<32x64xf32>
  %et = tensor.empty() : tensor<64x32xf32>
  %wt = linalg.transpose ins(%w : tensor<32x64xf32>) outs(%et : tensor<64x32xf32>) permutation = [1, 0]
  %ey = tensor.empty() : tensor<4x32xf32>
  %f = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: skipped: linalg.matmul at {{.*}}:[[# @LINE + 1]]: integer value in [{{.*}}] read as signed i32 in the dequantization: may wrap
  %y = linalg.matmul ins(%x, %wt : tensor<4x64xf32>, tensor<64x32xf32>) outs(%f : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}
