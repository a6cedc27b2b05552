// RUN: msd-opt %s --msd-decompose-activations --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// Regression: extui(extsi(z : i8 -> i16) -> i32) used to be rewritten as uitofp(z : i8), a silent
// wrong result: for z = -1 the source reads 65535, the rewrite read 255. Now the pass refuses it:
// an i8 value sign-extended to i16 and then read as unsigned i16 may wrap.

// REPORT: msd-decompose-activations: 0 rewritten, 1 skipped
// REPORT-NOT: rewritten:

#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0, 0)>
func.func @extui_of_extsi(%x: tensor<4x64xf32>, %q: tensor<32x64xi8>, %s: tensor<32x1xf32>, %z: tensor<32x1xi8>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x64xf32>
  %w = linalg.generic {indexing_maps = [#id, #row, #row, #id], iterator_types = ["parallel", "parallel"]}
      ins(%q, %z, %s : tensor<32x64xi8>, tensor<32x1xi8>, tensor<32x1xf32>) outs(%e : tensor<32x64xf32>) {
  ^bb0(%in: i8, %zp: i8, %sc: f32, %out: f32):
    %qi = arith.extsi %in : i8 to i32
    %z16 = arith.extsi %zp : i8 to i16
    %z32 = arith.extui %z16 : i16 to i32
    %d = arith.subi %qi, %z32 : i32
    %0 = arith.sitofp %d : i32 to f32
    %2 = arith.mulf %0, %sc : f32
    linalg.yield %2 : f32
  } -> tensor<32x64xf32>
  %ey = tensor.empty() : tensor<4x32xf32>
  %f = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  // REPORT: skipped: linalg.matmul at {{.*}}:[[# @LINE + 1]]: integer value in [-128, 127] read as unsigned i16 in the dequantization: may wrap
  %y = linalg.matmul indexing_maps = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>, affine_map<(m, n, k) -> (m, n)>]
      ins(%x, %w : tensor<4x64xf32>, tensor<32x64xf32>) outs(%f : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}
