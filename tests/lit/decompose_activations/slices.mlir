// RUN: msd-opt %s --msd-decompose-activations="slices=1" --msd-report 2>&1 | FileCheck %s --check-prefix=S1
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 | FileCheck %s --check-prefix=S2
// RUN: msd-opt %s --msd-decompose-activations="slices=3" --msd-report 2>&1 | FileCheck %s --check-prefix=S3

// The slice count P decides: the stacked activation tensor<P x M x K x i8>, the i8 matmul's
// [P*M, K] x [N, K] -> [P*M, N] shape, how many digits the slice generic rounds out (one
// roundeven per slice, residuals scaled by 254 between them) and how many i32 accumulator
// operands the epilogue combines (one per slice, at constant slice index 0..P-1).
// The report (stderr) comes before the IR (stdout) in each run.

// S1: msd-decompose-activations: 1 rewritten, 0 skipped
// S1: rewritten: linalg.matmul at {{.*}}: 1 int8 slice(s) x tensor<32x64xi8>
// S2: msd-decompose-activations: 1 rewritten, 0 skipped
// S2: rewritten: linalg.matmul at {{.*}}: 2 int8 slice(s) x tensor<32x64xi8>
// S3: msd-decompose-activations: 1 rewritten, 0 skipped
// S3: rewritten: linalg.matmul at {{.*}}: 3 int8 slice(s) x tensor<32x64xi8>

// S1-DAG: #[[P0:map[0-9]*]] = affine_map<(d0, d1) -> (0, d0, d1)>
// S2-DAG: #[[P0:map[0-9]*]] = affine_map<(d0, d1) -> (0, d0, d1)>
// S2-DAG: #[[P1:map[0-9]*]] = affine_map<(d0, d1) -> (1, d0, d1)>
// S3-DAG: #[[P0:map[0-9]*]] = affine_map<(d0, d1) -> (0, d0, d1)>
// S3-DAG: #[[P1:map[0-9]*]] = affine_map<(d0, d1) -> (1, d0, d1)>
// S3-DAG: #[[P2:map[0-9]*]] = affine_map<(d0, d1) -> (2, d0, d1)>

// ---- P = 1: plain dynamic per-row W8A8, no residual, no slice index.
// S1-LABEL: func.func @linear(
// S1-SAME:    %[[X:[^:]+]]: tensor<4x64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32x1xf32>
// S1-NOT:     arith.sitofp %{{.*}} : i8 to f32
// S1-NOT:     2.540000e+02
// S1:         %[[AMAX:.*]] = linalg.generic {{.*}} ins(%[[X]] : tensor<4x64xf32>) outs(%{{.*}} : tensor<4xf32>)
// S1:         %[[SL:.*]] = linalg.generic {{.*}} ins(%[[X]], %[[AMAX]] : tensor<4x64xf32>, tensor<4xf32>) outs(%{{.*}} : tensor<1x4x64xi8>)
// S1-NOT:       linalg.index
// S1:           math.roundeven
// S1-NOT:       math.roundeven
// S1:           arith.fptosi %{{.*}} : f32 to i8
// S1:         %[[ST:.*]] = tensor.collapse_shape %[[SL]] {{\[}}[0, 1], [2]] : tensor<1x4x64xi8> into tensor<4x64xi8>
// S1:         %[[ACC:.*]] = linalg.matmul {{.*}}ins(%[[ST]], %[[Q]] : tensor<4x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<4x32xi32>)
// S1:         %[[E:.*]] = tensor.expand_shape %[[ACC]] {{.*}} : tensor<4x32xi32> into tensor<1x4x32xi32>
// S1:         %[[Y:.*]] = linalg.generic {indexing_maps = [#[[P0]], #{{[^,]*}}, #{{[^,]*}}, #{{[^,]*}}]{{.*}} ins(%[[E]], %[[AMAX]], %[[S]] : tensor<1x4x32xi32>, tensor<4xf32>, tensor<32x1xf32>)
// S1-NEXT:    ^bb0(%{{.*}}: i32, %{{.*}}: f32, %{{.*}}: f32, %{{.*}}: f32):
// S1:           arith.sitofp %{{.*}} : i32 to f32
// S1-NOT:       arith.sitofp
// S1:           linalg.yield
// S1:         return %[[Y]]

// ---- P = 2 (the default).
// S2-LABEL: func.func @linear(
// S2-SAME:    %[[X:[^:]+]]: tensor<4x64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32x1xf32>
// S2-NOT:     arith.sitofp %{{.*}} : i8 to f32
// S2:         %[[AMAX:.*]] = linalg.generic {{.*}} ins(%[[X]] : tensor<4x64xf32>) outs(%{{.*}} : tensor<4xf32>)
// S2:         %[[SL:.*]] = linalg.generic {{.*}} ins(%[[X]], %[[AMAX]] : tensor<4x64xf32>, tensor<4xf32>) outs(%{{.*}} : tensor<2x4x64xi8>)
// S2:           linalg.index 0 : index
// S2-COUNT-2:   math.roundeven
// S2-NOT:       math.roundeven
// S2:           arith.fptosi %{{.*}} : f32 to i8
// S2:         %[[ST:.*]] = tensor.collapse_shape %[[SL]] {{\[}}[0, 1], [2]] : tensor<2x4x64xi8> into tensor<8x64xi8>
// S2:         %[[ACC:.*]] = linalg.matmul {{.*}}ins(%[[ST]], %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// S2:         %[[E:.*]] = tensor.expand_shape %[[ACC]] {{.*}} : tensor<8x32xi32> into tensor<2x4x32xi32>
// S2:         %[[Y:.*]] = linalg.generic {indexing_maps = [#[[P0]], #[[P1]], #{{[^,]*}}, #{{[^,]*}}, #{{[^,]*}}]{{.*}} ins(%[[E]], %[[E]], %[[AMAX]], %[[S]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<32x1xf32>)
// S2-NEXT:    ^bb0(%{{.*}}: i32, %{{.*}}: i32, %{{.*}}: f32, %{{.*}}: f32, %{{.*}}: f32):
// S2-COUNT-2:   arith.sitofp %{{.*}} : i32 to f32
// S2-NOT:       arith.sitofp
// S2:           linalg.yield
// S2:         return %[[Y]]

// ---- P = 3.
// S3-LABEL: func.func @linear(
// S3-SAME:    %[[X:[^:]+]]: tensor<4x64xf32>, %[[Q:[^:]+]]: tensor<32x64xi8>, %[[S:[^:]+]]: tensor<32x1xf32>
// S3-NOT:     arith.sitofp %{{.*}} : i8 to f32
// S3:         %[[AMAX:.*]] = linalg.generic {{.*}} ins(%[[X]] : tensor<4x64xf32>) outs(%{{.*}} : tensor<4xf32>)
// S3:         %[[SL:.*]] = linalg.generic {{.*}} ins(%[[X]], %[[AMAX]] : tensor<4x64xf32>, tensor<4xf32>) outs(%{{.*}} : tensor<3x4x64xi8>)
// S3:           linalg.index 0 : index
// S3-COUNT-3:   math.roundeven
// S3-NOT:       math.roundeven
// S3:           arith.fptosi %{{.*}} : f32 to i8
// S3:         %[[ST:.*]] = tensor.collapse_shape %[[SL]] {{\[}}[0, 1], [2]] : tensor<3x4x64xi8> into tensor<12x64xi8>
// S3:         %[[ACC:.*]] = linalg.matmul {{.*}}ins(%[[ST]], %[[Q]] : tensor<12x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<12x32xi32>)
// S3:         %[[E:.*]] = tensor.expand_shape %[[ACC]] {{.*}} : tensor<12x32xi32> into tensor<3x4x32xi32>
// S3:         %[[Y:.*]] = linalg.generic {indexing_maps = [#[[P0]], #[[P1]], #[[P2]], #{{[^,]*}}, #{{[^,]*}}, #{{[^,]*}}]{{.*}} ins(%[[E]], %[[E]], %[[E]], %[[AMAX]], %[[S]] : tensor<3x4x32xi32>, tensor<3x4x32xi32>, tensor<3x4x32xi32>, tensor<4xf32>, tensor<32x1xf32>)
// S3-NEXT:    ^bb0(%{{.*}}: i32, %{{.*}}: i32, %{{.*}}: i32, %{{.*}}: f32, %{{.*}}: f32, %{{.*}}: f32):
// S3-COUNT-3:   arith.sitofp %{{.*}} : i32 to f32
// S3-NOT:       arith.sitofp
// S3:           linalg.yield
// S3:         return %[[Y]]
#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0, 0)>
func.func @linear(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>) -> tensor<4x32xf32> {
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
  %y = linalg.matmul ins(%x, %wt : tensor<4x64xf32>, tensor<64x32xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}
