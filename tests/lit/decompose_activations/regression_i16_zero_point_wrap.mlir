// RUN: msd-opt %s --msd-decompose-activations --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// Regression: extsi(q : i8 -> i16) + z with a full-range i16 zero point used to be rewritten as
// the exact sum q + z, although the i16 addi wraps in the source for z near the i16 maximum
// (a silent wrong result). Now the pass refuses it: the sum, in [-32896, 32894], may wrap in i16.

// REPORT: msd-decompose-activations: 0 rewritten, 1 skipped
// REPORT-NOT: rewritten:

#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0, 0)>
func.func @i16_zero_point_wraps(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>, %z: tensor<32x1xi16>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %z, %s : tensor<32x64xi8>, tensor<32x1xi16>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %zp: i16, %sc: f32, %out: f32):
    %qi = arith.extsi %in : i8 to i16
    %d = arith.addi %qi, %zp : i16
    %0 = arith.sitofp %d : i16 to f32
    %2 = arith.mulf %0, %sc : f32
    linalg.yield %2 : f32
  } -> tensor<32x64xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %f = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT: skipped: linalg.matmul at {{.*}}:[[# @LINE + 1]]: integer value in [-32896, 32894] read as signed i16 in the dequantization: may wrap
  %y = linalg.matmul indexing_maps = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>, affine_map<(m, n, k) -> (m, n)>]
      ins(%x, %w : tensor<4x64xf32>, tensor<32x64xf32>) outs(%f : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}
