// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// Dequantize -> matmul as other tools write it (tests/test_ir_forms.py also runs each through IREE
// against IREE's compile of the original): group quantization with two reduction dims (the groups,
// and the elements of a group) over an i4 weight [N, G, g]; signed i4 with an f16 scale and the
// activation argument reshaped into groups; an i2 weight read by uitofp; the dequantization as arith
// ops on whole tensors from a reshaped i8 argument.

// REPORT: msd-decompose-activations: 4 rewritten, 0 skipped

// The two reduction dims are merged (both operands collapsed), the i4 codes zero-extended to i8 and
// centred by 8 for the int8 matmul.
// CHECK-LABEL: func.func @two_reductions(
// CHECK:         tensor.collapse_shape %{{.*}} {{\[}}[0], [1], [2, 3]] : tensor<1x3x4x32xf32> into tensor<1x3x128xf32>
// CHECK-NOT:     tensor<64x128xf32>
// CHECK:         arith.extui %{{.*}} : i4 to i8
// CHECK-NOT:     arith.uitofp
// CHECK:         return
// REPORT-DAG: rewritten: {{.*}}(unsigned weight as q-8), K in groups of 32 {{.*}}; i4 weight zero-extended to i8; its two reduction dims (groups, within a group) merged into one
func.func @two_reductions(%x: tensor<1x3x4x32xf32>, %q8: tensor<64x4x32xi8>, %s: tensor<64x4xf32>, %zp: tensor<64x4xf32>)
    -> tensor<1x3x64xf32> {
  %cst = arith.constant 0.0 : f32
  %e4 = tensor.empty() : tensor<64x4x32xi4>
  %q = linalg.generic {indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d1, d2)>, affine_map<(d0, d1, d2) -> (d0, d1, d2)>], iterator_types = ["parallel", "parallel", "parallel"]}
      ins(%q8 : tensor<64x4x32xi8>) outs(%e4 : tensor<64x4x32xi4>) {
  ^bb0(%in: i8, %out: i4):
    %t = arith.trunci %in : i8 to i4
    linalg.yield %t : i4
  } -> tensor<64x4x32xi4>
  %e = tensor.empty() : tensor<64x4x32xf32>
  %w = linalg.generic {indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d1, d2)>, affine_map<(d0, d1, d2) -> (d0, d1)>, affine_map<(d0, d1, d2) -> (d0, d1)>, affine_map<(d0, d1, d2) -> (d0, d1, d2)>], iterator_types = ["parallel", "parallel", "parallel"]}
      ins(%q, %s, %zp : tensor<64x4x32xi4>, tensor<64x4xf32>, tensor<64x4xf32>) outs(%e : tensor<64x4x32xf32>) {
  ^bb0(%in: i4, %sc: f32, %z: f32, %out: f32):
    %0 = arith.extui %in : i4 to i32
    %1 = arith.uitofp %0 : i32 to f32
    %2 = arith.subf %1, %z : f32
    %3 = arith.mulf %2, %sc : f32
    linalg.yield %3 : f32
  } -> tensor<64x4x32xf32>
  %ey = tensor.empty() : tensor<1x3x64xf32>
  %y0 = linalg.fill ins(%cst : f32) outs(%ey : tensor<1x3x64xf32>) -> tensor<1x3x64xf32>
  %y = linalg.generic {indexing_maps = [affine_map<(d0, d1, d2, d3, d4) -> (d0, d1, d3, d4)>,
                                         affine_map<(d0, d1, d2, d3, d4) -> (d2, d3, d4)>,
                                         affine_map<(d0, d1, d2, d3, d4) -> (d0, d1, d2)>],
                        iterator_types = ["parallel", "parallel", "parallel", "reduction", "reduction"]}
      ins(%x, %w : tensor<1x3x4x32xf32>, tensor<64x4x32xf32>) outs(%y0 : tensor<1x3x64xf32>) {
  ^bb0(%a: f32, %b: f32, %o: f32):
    %0 = arith.mulf %a, %b : f32
    %1 = arith.addf %0, %o : f32
    linalg.yield %1 : f32
  } -> tensor<1x3x64xf32>
  return %y : tensor<1x3x64xf32>
}

// CHECK-LABEL: func.func @signed_f16_expanded(
// CHECK:         arith.extsi %{{.*}} : i4 to i8
// REPORT-DAG: rewritten: {{.*}}K in groups of 32 {{.*}}; i4 weight sign-extended to i8; its two reduction dims
func.func @signed_f16_expanded(%x: tensor<5x128xf32>, %q8: tensor<64x4x32xi8>, %s: tensor<64x4xf16>) -> tensor<5x64xf32> {
  %cst = arith.constant 0.0 : f32
  %xe = tensor.expand_shape %x [[0], [1, 2]] output_shape [5, 4, 32] : tensor<5x128xf32> into tensor<5x4x32xf32>
  %e4 = tensor.empty() : tensor<64x4x32xi4>
  %q = linalg.generic {indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d1, d2)>, affine_map<(d0, d1, d2) -> (d0, d1, d2)>], iterator_types = ["parallel", "parallel", "parallel"]}
      ins(%q8 : tensor<64x4x32xi8>) outs(%e4 : tensor<64x4x32xi4>) {
  ^bb0(%in: i8, %out: i4):
    %t = arith.trunci %in : i8 to i4
    linalg.yield %t : i4
  } -> tensor<64x4x32xi4>
  %e = tensor.empty() : tensor<64x4x32xf32>
  %w = linalg.generic {indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d1, d2)>, affine_map<(d0, d1, d2) -> (d0, d1)>, affine_map<(d0, d1, d2) -> (d0, d1, d2)>], iterator_types = ["parallel", "parallel", "parallel"]}
      ins(%q, %s : tensor<64x4x32xi4>, tensor<64x4xf16>) outs(%e : tensor<64x4x32xf32>) {
  ^bb0(%in: i4, %sc: f16, %out: f32):
    %0 = arith.extsi %in : i4 to i32
    %1 = arith.sitofp %0 : i32 to f32
    %2 = arith.extf %sc : f16 to f32
    %3 = arith.mulf %1, %2 : f32
    linalg.yield %3 : f32
  } -> tensor<64x4x32xf32>
  %ey = tensor.empty() : tensor<5x64xf32>
  %y0 = linalg.fill ins(%cst : f32) outs(%ey : tensor<5x64xf32>) -> tensor<5x64xf32>
  %y = linalg.generic {indexing_maps = [affine_map<(d0, d1, d2, d3) -> (d0, d2, d3)>,
                                         affine_map<(d0, d1, d2, d3) -> (d1, d2, d3)>,
                                         affine_map<(d0, d1, d2, d3) -> (d0, d1)>],
                        iterator_types = ["parallel", "parallel", "reduction", "reduction"]}
      ins(%xe, %w : tensor<5x4x32xf32>, tensor<64x4x32xf32>) outs(%y0 : tensor<5x64xf32>) {
  ^bb0(%a: f32, %b: f32, %o: f32):
    %0 = arith.mulf %a, %b : f32
    %1 = arith.addf %0, %o : f32
    linalg.yield %1 : f32
  } -> tensor<5x64xf32>
  return %y : tensor<5x64xf32>
}

// CHECK-LABEL: func.func @i2_unsigned(
// CHECK:         arith.extui %{{.*}} : i2 to i8
// REPORT-DAG: rewritten: {{.*}}(unsigned weight as q-2){{.*}}; i2 weight zero-extended to i8
func.func @i2_unsigned(%x: tensor<3x64xf32>, %q8: tensor<16x64xi8>, %s: tensor<16xf32>) -> tensor<3x16xf32> {
  %cst = arith.constant 0.0 : f32
  %e2 = tensor.empty() : tensor<16x64xi2>
  %q = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d0, d1)>],
                       iterator_types = ["parallel", "parallel"]}
      ins(%q8 : tensor<16x64xi8>) outs(%e2 : tensor<16x64xi2>) {
  ^bb0(%in: i8, %out: i2):
    %t = arith.trunci %in : i8 to i2
    linalg.yield %t : i2
  } -> tensor<16x64xi2>
  %e = tensor.empty() : tensor<16x64xf32>
  %w = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d0)>,
                                        affine_map<(d0, d1) -> (d0, d1)>], iterator_types = ["parallel", "parallel"]}
      ins(%q, %s : tensor<16x64xi2>, tensor<16xf32>) outs(%e : tensor<16x64xf32>) {
  ^bb0(%in: i2, %sc: f32, %out: f32):
    %0 = arith.uitofp %in : i2 to f32
    %1 = arith.mulf %0, %sc : f32
    linalg.yield %1 : f32
  } -> tensor<16x64xf32>
  %et = tensor.empty() : tensor<64x16xf32>
  %wt = linalg.transpose ins(%w : tensor<16x64xf32>) outs(%et : tensor<64x16xf32>) permutation = [1, 0]
  %ey = tensor.empty() : tensor<3x16xf32>
  %y0 = linalg.fill ins(%cst : f32) outs(%ey : tensor<3x16xf32>) -> tensor<3x16xf32>
  %y = linalg.matmul ins(%x, %wt : tensor<3x64xf32>, tensor<64x16xf32>) outs(%y0 : tensor<3x16xf32>) -> tensor<3x16xf32>
  return %y : tensor<3x16xf32>
}

// CHECK-LABEL: func.func @tensor_arith(
// CHECK-NOT:     arith.sitofp
// CHECK:         linalg.matmul {{.*}}tensor<32x64xi8>
// REPORT-DAG: rewritten: {{.*}}2 int8 slice(s) x tensor<32x64xi8>{{$}}
func.func @tensor_arith(%x: tensor<4x64xf32>, %q3: tensor<32x2x32xi8>, %s: tensor<32xf32>) -> tensor<4x32xf32> {
  %cst = arith.constant 0.0 : f32
  %q = tensor.collapse_shape %q3 [[0], [1, 2]] : tensor<32x2x32xi8> into tensor<32x64xi8>
  %qf = arith.sitofp %q : tensor<32x64xi8> to tensor<32x64xf32>
  %eb = tensor.empty() : tensor<32x64xf32>
  %sb = linalg.broadcast ins(%s : tensor<32xf32>) outs(%eb : tensor<32x64xf32>) dimensions = [1]
  %w = arith.mulf %qf, %sb : tensor<32x64xf32>
  %et = tensor.empty() : tensor<64x32xf32>
  %wt = linalg.transpose ins(%w : tensor<32x64xf32>) outs(%et : tensor<64x32xf32>) permutation = [1, 0]
  %ey = tensor.empty() : tensor<4x32xf32>
  %y0 = linalg.fill ins(%cst : f32) outs(%ey : tensor<4x32xf32>) -> tensor<4x32xf32>
  %y = linalg.matmul ins(%x, %wt : tensor<4x64xf32>, tensor<64x32xf32>) outs(%y0 : tensor<4x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}
