// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// 3-D activations. nn.Linear on a [B,S,K] input lowers (IREE input phase) to a batch_matmul whose
// weight is the 2-D dequantized weight broadcast along the batch by a linalg.generic: the batch dim
// does not touch the weight, so it folds into M and a single 2-D i8 matmul results. A weight that
// really has its own batch dim keeps a batch dim: one i8 batch_matmul.

// REPORT: msd-decompose-activations: 3 rewritten, 0 skipped

// Slice index is constant 0/1 in the accumulator maps; batch stays in front when shared.
// CHECK-DAG: #[[A0:map[0-9]*]] = affine_map<(d0, d1, d2) -> (0, d0, d1, d2)>
// CHECK-DAG: #[[A1:map[0-9]*]] = affine_map<(d0, d1, d2) -> (1, d0, d1, d2)>
// CHECK-DAG: #[[B0:map[0-9]*]] = affine_map<(d0, d1, d2) -> (d0, 0, d1, d2)>
// CHECK-DAG: #[[B1:map[0-9]*]] = affine_map<(d0, d1, d2) -> (d0, 1, d1, d2)>

#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0, 0)>
#id3 = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
#row3 = affine_map<(d0, d1, d2) -> (d0, d1, 0)>
#bcast = affine_map<(d0, d1, d2) -> (d1, d2)>
#bcast_t = affine_map<(d0, d1, d2) -> (d2, d1)>

// --- 1. the torch shape (/tmp/spike/3d.mlir without the HAL wrapper): x[2,3,64], weight [32,64]
// int8 -> sitofp -> x scale[32,1] -> transpose -> broadcast generic to [2,64,32] -> batch_matmul.
// CHECK-LABEL: func.func @torch_linear_3d(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<2x3x64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32x1xf32>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to f32
// CHECK-NOT:     linalg.batch_matmul
// CHECK:         %[[AMAX:.*]] = linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "reduction"]{{.*}} ins(%[[X]] : tensor<2x3x64xf32>) outs(%{{.*}} : tensor<2x3xf32>)
// CHECK:         %[[SL:.*]] = linalg.generic {{.*}} ins(%[[X]], %[[AMAX]] : tensor<2x3x64xf32>, tensor<2x3xf32>) outs(%{{.*}} : tensor<2x2x3x64xi8>)
// CHECK:           linalg.index 0 : index
// CHECK:           arith.fptosi %{{.*}} : f32 to i8
// CHECK:         %[[ST:.*]] = tensor.collapse_shape %[[SL]] {{\[}}[0, 1, 2], [3]] : tensor<2x2x3x64xi8> into tensor<12x64xi8>
// CHECK-NOT:     linalg.batch_matmul
// CHECK:         %[[ACC:.*]] = linalg.matmul {{.*}}ins(%[[ST]], %[[Q]] : tensor<12x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<12x32xi32>)
// CHECK:         %[[E:.*]] = tensor.expand_shape %[[ACC]] {{\[}}[0, 1, 2], [3]] output_shape [2, 2, 3, 32] : tensor<12x32xi32> into tensor<2x2x3x32xi32>
// CHECK:         %[[Y:.*]] = linalg.generic {indexing_maps = [#[[A0]], #[[A1]], {{.*}}]{{.*}} ins(%[[E]], %[[E]], %[[AMAX]], %[[S]] : tensor<2x2x3x32xi32>, tensor<2x2x3x32xi32>, tensor<2x3xf32>, tensor<32x1xf32>) outs(%{{.*}} : tensor<2x3x32xf32>)
// CHECK:         return %[[Y]]
// CHECK-NOT:     linalg.batch_matmul
func.func @torch_linear_3d(%x: tensor<2x3x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>) -> tensor<2x3x32xf32> {
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
  %eb = tensor.empty() : tensor<2x64x32xf32>
  %wb = linalg.generic {indexing_maps = [#bcast, #id3], iterator_types = ["parallel", "parallel", "parallel"]}
      ins(%wt : tensor<64x32xf32>) outs(%eb : tensor<2x64x32xf32>) {
  ^bb0(%in: f32, %out: f32):
    linalg.yield %in : f32
  } -> tensor<2x64x32xf32>
  %ey = tensor.empty() : tensor<2x3x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<2x3x32xf32>) -> tensor<2x3x32xf32>
  // REPORT-DAG: rewritten: linalg.batch_matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8>
  %y = linalg.batch_matmul ins(%x, %wb : tensor<2x3x64xf32>, tensor<2x64x32xf32>) outs(%z : tensor<2x3x32xf32>) -> tensor<2x3x32xf32>
  return %y : tensor<2x3x32xf32>
}

// --- 2. the same with a dynamic batch; the broadcast generic also does the transpose.
// CHECK-LABEL: func.func @dynamic_batch(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<?x3x64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to f32
// CHECK:         %[[AMAX:.*]] = linalg.generic {{.*}} ins(%[[X]] : tensor<?x3x64xf32>) outs(%{{.*}} : tensor<?x3xf32>)
// CHECK:         %[[SE:.*]] = tensor.empty(%[[B:.*]]) : tensor<2x?x3x64xi8>
// CHECK:         %[[SL:.*]] = linalg.generic {{.*}} outs(%[[SE]] : tensor<2x?x3x64xi8>)
// CHECK:         %[[ST:.*]] = tensor.collapse_shape %[[SL]] {{\[}}[0, 1, 2], [3]] : tensor<2x?x3x64xi8> into tensor<?x64xi8>
// CHECK:         %[[ACC:.*]] = linalg.matmul {{.*}}ins(%[[ST]], %[[Q]] : tensor<?x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<?x32xi32>)
// CHECK:         tensor.expand_shape %[[ACC]] {{\[}}[0, 1, 2], [3]] output_shape [2, %[[B]], 3, 32] : tensor<?x32xi32> into tensor<2x?x3x32xi32>
// CHECK:         linalg.generic {{.*}} outs(%{{.*}} : tensor<?x3x32xf32>)
// CHECK-NOT:     linalg.batch_matmul
func.func @dynamic_batch(%x: tensor<?x3x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>) -> tensor<?x3x32xf32> {
  %cst = arith.constant 0.0 : f32
  %c0 = arith.constant 0 : index
  %b = tensor.dim %x, %c0 : tensor<?x3x64xf32>
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<32x64xi8>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %0, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<32x64xf32>
  %eb = tensor.empty(%b) : tensor<?x64x32xf32>
  %wb = linalg.generic {indexing_maps = [#bcast_t, #id3], iterator_types = ["parallel", "parallel", "parallel"]}
      ins(%w : tensor<32x64xf32>) outs(%eb : tensor<?x64x32xf32>) {
  ^bb0(%in: f32, %out: f32):
    linalg.yield %in : f32
  } -> tensor<?x64x32xf32>
  %ey = tensor.empty(%b) : tensor<?x3x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<?x3x32xf32>) -> tensor<?x3x32xf32>
  // REPORT-DAG: rewritten: linalg.batch_matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8>
  %y = linalg.batch_matmul ins(%x, %wb : tensor<?x3x64xf32>, tensor<?x64x32xf32>) outs(%z : tensor<?x3x32xf32>) -> tensor<?x3x32xf32>
  return %y : tensor<?x3x32xf32>
}

// --- 3. a true batched weight: one int8 [32,64] matrix (and scale) per batch entry. The batch
// dim is shared by activation and weight, so it stays a batch dim: slices stack as [B,P,M,K]
// and an i8 linalg.batch_matmul runs against the [2,32,64] int8 tensor.
// CHECK-LABEL: func.func @per_batch_weight(
// CHECK-SAME:    %[[X:[^:]+]]: tensor<2x3x64xf32>, %[[Q:[^:]+]]: tensor<2x32x64xi8>, %[[S:[^:]+]]: tensor<2x32x1xf32>
// CHECK-NOT:     arith.sitofp %{{.*}} : i8 to f32
// CHECK:         %[[AMAX:.*]] = linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "reduction"]{{.*}} ins(%[[X]] : tensor<2x3x64xf32>) outs(%{{.*}} : tensor<2x3xf32>)
// CHECK:         %[[SL:.*]] = linalg.generic {{.*}} ins(%[[X]], %[[AMAX]] : tensor<2x3x64xf32>, tensor<2x3xf32>) outs(%{{.*}} : tensor<2x2x3x64xi8>)
// CHECK:           linalg.index 1 : index
// CHECK:         %[[ST:.*]] = tensor.collapse_shape %[[SL]] {{\[}}[0], [1, 2], [3]] : tensor<2x2x3x64xi8> into tensor<2x6x64xi8>
// CHECK:         %[[ACC:.*]] = linalg.batch_matmul {{.*}}ins(%[[ST]], %[[Q]] : tensor<2x6x64xi8>, tensor<2x32x64xi8>) outs(%{{.*}} : tensor<2x6x32xi32>)
// CHECK:         %[[E:.*]] = tensor.expand_shape %[[ACC]] {{\[}}[0], [1, 2], [3]] output_shape [2, 2, 3, 32] : tensor<2x6x32xi32> into tensor<2x2x3x32xi32>
// CHECK:         %[[Y:.*]] = linalg.generic {indexing_maps = [#[[B0]], #[[B1]], {{.*}}]{{.*}} ins(%[[E]], %[[E]], %[[AMAX]], %[[S]] : tensor<2x2x3x32xi32>, tensor<2x2x3x32xi32>, tensor<2x3xf32>, tensor<2x32x1xf32>) outs(%{{.*}} : tensor<2x3x32xf32>)
// CHECK:         return %[[Y]]
// CHECK-NOT:     linalg.batch_matmul {{.*}}xf32>
func.func @per_batch_weight(%x: tensor<2x3x64xf32>, %q: tensor<2x32x64xi8>, %s: tensor<2x32x1xf32>) -> tensor<2x3x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<2x32x64xf32>
  %w = linalg.generic {indexing_maps = [#id3, #row3, #id3], iterator_types = ["parallel", "parallel", "parallel"]}
      ins(%q, %s : tensor<2x32x64xi8>, tensor<2x32x1xf32>) outs(%e : tensor<2x32x64xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %0 = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %0, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<2x32x64xf32>
  %et = tensor.empty() : tensor<2x64x32xf32>
  %wt = linalg.transpose ins(%w : tensor<2x32x64xf32>) outs(%et : tensor<2x64x32xf32>) permutation = [0, 2, 1]
  %ey = tensor.empty() : tensor<2x3x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<2x3x32xf32>) -> tensor<2x3x32xf32>
  // REPORT-DAG: rewritten: linalg.batch_matmul at {{.*}}:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<2x32x64xi8>
  %y = linalg.batch_matmul ins(%x, %wt : tensor<2x3x64xf32>, tensor<2x64x32xf32>) outs(%z : tensor<2x3x32xf32>) -> tensor<2x3x32xf32>
  return %y : tensor<2x3x32xf32>
}
