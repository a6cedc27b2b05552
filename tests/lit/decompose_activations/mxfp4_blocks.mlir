// RUN: msd-opt %s --msd-decompose-activations="slices=2 act-format=mxfp4" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2 act-format=mxfp4" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT
// RUN: not msd-opt %s --msd-decompose-activations="act-format=fp6" 2>&1 | FileCheck %s --check-prefix=BADFMT
// RUN: not msd-opt %s --msd-decompose-activations="act-format=mxfp4 mx-scale=even" 2>&1 | FileCheck %s --check-prefix=BADRULE

// MXFP4 activation slices have one scale per 32-block of K. The pass splits K into those blocks
// when the weight has one scale per channel (K a static multiple of 32), takes weight groups of 32
// as they are, and leaves everything else untouched with the reason.

// REPORT: msd-decompose-activations: 2 rewritten, 2 skipped
// BADFMT: act-format=fp6 is not supported (choose int8, mxfp4, mxfp8)
// BADRULE: mx-scale=even is not supported (choose ocp or noclip)

#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0, 0)>
#grp32 = affine_map<(d0, d1) -> (d0, d1 floordiv 32)>
#grp64 = affine_map<(d0, d1) -> (d0, d1 floordiv 64)>
#mm = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>, affine_map<(m, n, k) -> (m, n)>]

// --- per-channel int8 weight, K = 64: split into two 32-blocks.
// CHECK-LABEL: func.func @per_channel_k64(
// CHECK:         tensor.expand_shape %{{.*}} into tensor<4x2x32xf32>
// CHECK:         linalg.batch_matmul {{.*}} : tensor<2x8x32xi8>, tensor<2x32x32xi8>) outs(%{{.*}} : tensor<2x8x32xi32>)
// CHECK-NOT:     linalg.matmul
// CHECK:         return
func.func @per_channel_k64(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<32x64xi8>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %f = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %f, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<32x64xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT-DAG: rewritten: linalg.matmul at {{.*}}:[[# @LINE + 1]]: 2 MXFP4 slice(s) (ocp scale rule, doubled E2M1 codes) x tensor<32x64xi8>, K in groups of 32
  %y = linalg.matmul indexing_maps = #mm ins(%x, %w : tensor<4x64xf32>, tensor<32x64xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}

// --- group-32 weight: the MX blocks.
// CHECK-LABEL: func.func @groups_of_32(
// CHECK:         linalg.batch_matmul {{.*}} : tensor<3x8x32xi8>, tensor<3x16x32xi8>) outs(%{{.*}} : tensor<3x8x16xi32>)
// CHECK-NOT:     linalg.matmul
// CHECK:         return
func.func @groups_of_32(%x: tensor<4x96xf32>, %q: tensor<16x96xi8>, %s: tensor<16x3xf32>) -> tensor<4x16xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<16x96xf32>
  %w = linalg.generic {indexing_maps = [#id, #grp32, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<16x96xi8>, tensor<16x3xf32>) outs(%e : tensor<16x96xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %f = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %f, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<16x96xf32>
  %ey = tensor.empty() : tensor<4x16xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x16xf32>) -> tensor<4x16xf32>
  // REPORT-DAG: rewritten: linalg.matmul at {{.*}}:[[# @LINE + 1]]: 2 MXFP4 slice(s)
  %y = linalg.matmul indexing_maps = #mm ins(%x, %w : tensor<4x96xf32>, tensor<16x96xf32>) outs(%z : tensor<4x16xf32>) -> tensor<4x16xf32>
  return %y : tensor<4x16xf32>
}

// --- group-64 weight: its scale would change inside an MX block.
// CHECK-LABEL: func.func @groups_of_64(
// CHECK-NOT:     {{math.roundeven|linalg.batch_matmul}}
// CHECK:         linalg.matmul {{.*}}ins(%{{.*}}, %{{.*}} : tensor<4x128xf32>, tensor<16x128xf32>)
// CHECK:         return
func.func @groups_of_64(%x: tensor<4x128xf32>, %q: tensor<16x128xi8>, %s: tensor<16x2xf32>) -> tensor<4x16xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<16x128xf32>
  %w = linalg.generic {indexing_maps = [#id, #grp64, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<16x128xi8>, tensor<16x2xf32>) outs(%e : tensor<16x128xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %f = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %f, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<16x128xf32>
  %ey = tensor.empty() : tensor<4x16xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x16xf32>) -> tensor<4x16xf32>
  // REPORT-DAG: skipped: linalg.matmul at {{.*}}:[[# @LINE + 1]]: act-format=mxfp4 needs weight groups of 32 along K (the MX block); the weight has groups of 64
  %y = linalg.matmul indexing_maps = #mm ins(%x, %w : tensor<4x128xf32>, tensor<16x128xf32>) outs(%z : tensor<4x16xf32>) -> tensor<4x16xf32>
  return %y : tensor<4x16xf32>
}

// --- K = 48: not a whole number of MX blocks.
// CHECK-LABEL: func.func @k48(
// CHECK-NOT:     {{math.roundeven|linalg.batch_matmul}}
// CHECK:         linalg.matmul {{.*}}ins(%{{.*}}, %{{.*}} : tensor<4x48xf32>, tensor<8x48xf32>)
// CHECK:         return
func.func @k48(%x: tensor<4x48xf32>, %q: tensor<8x48xi8>, %s: tensor<8x1xf32>) -> tensor<4x8xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<8x48xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<8x48xi8>, tensor<8x1xf32>) outs(%e : tensor<8x48xf32>) {
  ^bb0(%in: i8, %sc: f32, %out: f32):
    %f = arith.sitofp %in : i8 to f32
    %1 = arith.mulf %f, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<8x48xf32>
  %ey = tensor.empty() : tensor<4x8xf32>
  %z = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x8xf32>) -> tensor<4x8xf32>
  // REPORT-DAG: skipped: linalg.matmul at {{.*}}:[[# @LINE + 1]]: act-format=mxfp4 needs a static K that is a multiple of 32 (K = 48)
  %y = linalg.matmul indexing_maps = #mm ins(%x, %w : tensor<4x48xf32>, tensor<8x48xf32>) outs(%z : tensor<4x8xf32>) -> tensor<4x8xf32>
  return %y : tensor<4x8xf32>
}
