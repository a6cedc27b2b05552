// RUN: msd-opt %s --msd-decompose-activations="slices=2 act-format=mxfp4" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2 act-format=mxfp4" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT
// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s --check-prefix=INT8
// RUN: msd-opt %s --msd-decompose-activations="slices=2 act-format=mxfp4 mx-scale=noclip" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=NOCLIP
// RUN: msd-opt %s --msd-decompose-activations="slices=2 act-format=mxfp4 mx-lowering=scaled" | FileCheck %s --check-prefix=SCALED
// RUN: msd-opt %s --msd-decompose-activations="slices=2 act-format=mxfp4 mx-lowering=scaled" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=SCALED-REPORT

// msd.quantize(weights="mxfp4"): OCP MXFP4 weights as checkpoints store them — uint8 blocks with two
// E2M1 codes per byte (element 2i in the low nibble) and a uint8 E8M0 scale per 32 elements along K.
// The torch forward decodes 2·E2M1 as int8 in [-12, 12] with integer ops and the scale as
// exp2(s - 128) (math.powf here): the pass takes the int8 decode as the weight and the scale tensor,
// which it cannot evaluate but which is constant along K, as an epilogue operand.
//
// Captured from a real export, not written by hand: the linalg IR that msd.compile emits after
// IREE's input phase (weights stay util.global parameters), with torch 2.13.0+cpu,
// iree-base-compiler 3.13.0, msd 0.1.0, by running in /work/main:
//
//   import torch; from torch import nn; import msd
//   torch.manual_seed(0)
//   model = msd.quantize(nn.Sequential(nn.Linear(64, 32)), weights="mxfp4")
//   x = torch.randn(4, 64)
//   print(msd.compile(model, (x,), emit="linalg"))
//
// Edits to the captured text: the `@main` ABI wrapper (fence plumbing around @main$async) and blank
// lines were dropped. Nothing else was changed.

// REPORT: msd-decompose-activations: 1 rewritten, 0 skipped
// REPORT: rewritten: linalg.matmul {{.*}}: 2 MXFP4 slice(s) (ocp scale rule, doubled E2M1 codes) x tensor<32x64xi8>, K in groups of 32
// NOCLIP: rewritten: linalg.matmul {{.*}}: 2 MXFP4 slice(s) (noclip scale rule

// CHECK-LABEL: util.func public @main$async(
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[X:[^ :]+]] = hal.tensor.import {{.*}} -> tensor<4x64xf32>
// The E8M0 scale: exp2(s - 128) stays a [32, 2] tensor read by the epilogue.
// CHECK:           arith.uitofp %{{.*}} : i8 to f32
// CHECK:           arith.subf
// CHECK:         %[[SCALE:[^ :]+]] = linalg.generic {{.*}} outs(%{{.*}} : tensor<32x2xf32>)
// CHECK-NEXT:      ^bb0
// CHECK-NEXT:        math.powf
// The int8 decode of the E2M1 codes: the weight of the integer matmul.
// CHECK:           arith.andi %{{.*}}, %c7_i32 : i32
// CHECK:         } -> tensor<32x64xi8>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[XG:[^ :]+]] = tensor.expand_shape %[[X]] {{.*}} into tensor<4x2x32xf32>
// Block maximum of x per (32-block, row) …
// CHECK:         %[[A1:[^ :]+]] = linalg.generic {{.*}} iterator_types = ["parallel", "parallel", "reduction"]} ins(%[[XG]] : tensor<4x2x32xf32>) outs(%{{.*}} : tensor<2x4xf32>)
// … then of the residual slice 1 leaves, with slice 1's exponent read from the float's bits.
// CHECK:         %[[A2:[^ :]+]] = linalg.generic {{.*}} iterator_types = ["parallel", "parallel", "reduction"]} ins(%[[XG]], %[[A1]] : tensor<4x2x32xf32>, tensor<2x4xf32>) outs(%{{.*}} : tensor<2x4xf32>)
// CHECK:           arith.bitcast %{{.*}} : f32 to i32
// CHECK:           arith.shrui %{{.*}}, %c23_i32 : i32
// CHECK:           math.roundeven
// CHECK:           math.copysign
// Both slices as doubled E2M1 codes, stacked [block, slice, row, 32] in int8.
// CHECK:         %[[S:[^ :]+]] = linalg.generic {{.*}} ins(%[[XG]], %[[A1]], %[[A2]] : tensor<4x2x32xf32>, tensor<2x4xf32>, tensor<2x4xf32>) outs(%{{.*}} : tensor<2x2x4x32xi8>)
// CHECK:           arith.fptosi %{{.*}} : f32 to i8
// CHECK:         %[[L:[^ :]+]] = tensor.collapse_shape %[[S]] {{.*}} into tensor<2x8x32xi8>
// One int8 x int8 -> int32 product per 32-block, both slices as rows.
// CHECK:         %[[ACC:[^ :]+]] = linalg.batch_matmul {{.*}} ins(%[[L]], %{{.*}} : tensor<2x8x32xi8>, tensor<2x32x32xi8>) outs(%{{.*}} : tensor<2x8x32xi32>)
// The epilogue: 2**(e_i - 1) per slice and block, the weight scale, summed over the blocks.
// CHECK:         %[[ACC4:[^ :]+]] = tensor.expand_shape %[[ACC]] {{.*}} into tensor<2x2x4x32xi32>
// CHECK:         linalg.generic {{.*}} iterator_types = ["parallel", "parallel", "reduction"]} ins(%[[ACC4]], %[[ACC4]], %[[A1]], %[[A2]], %[[SCALE]] : {{.*}}) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK-NOT:     linalg.matmul

// The block-scaled FP4 form (mx-lowering=scaled, what gfx950's scaled MFMA runs): the weight decode
// provably holds only twice E2M1 values and its scale is 2**(s - 128) of the stored bytes, so codes
// become f4E2M1FN, the bytes f8E8M0FNU, and one generic over (rows, n, kb, ki) multiplies them.
// SCALED-REPORT: rewritten: linalg.matmul {{.*}}: 2 MXFP4 slice(s) (ocp scale rule) x MXFP4 weight tensor<32x64xi8>, block-scaled FP4 matmul (scaling_extf)
// SCALED-LABEL:  util.func public @main$async(
// SCALED:          %[[B:[^ :]+]] = util.global.load @__param_0_scales : tensor<32x2xi8>
// SCALED:          %[[A4:[^ :]+]] = arith.trunci %{{.*}} : tensor<2x8x32xi8> to tensor<2x8x32xi4>
// SCALED-NEXT:     %[[A:[^ :]+]] = arith.bitcast %[[A4]] : tensor<2x8x32xi4> to tensor<2x8x32xf4E2M1FN>
// SCALED-NEXT:     %[[W4:[^ :]+]] = arith.trunci %{{.*}} : tensor<2x32x32xi8> to tensor<2x32x32xi4>
// SCALED-NEXT:     %[[W:[^ :]+]] = arith.bitcast %[[W4]] : tensor<2x32x32xi4> to tensor<2x32x32xf4E2M1FN>
// SCALED-NEXT:     %[[AS:[^ :]+]] = arith.bitcast %{{.*}} : tensor<2x8xi8> to tensor<2x8xf8E8M0FNU>
// SCALED-NEXT:     %[[WS:[^ :]+]] = arith.bitcast %{{.*}} : tensor<2x32xi8> to tensor<2x32xf8E8M0FNU>
// SCALED-NEXT:     linalg.generic {{.*}} iterator_types = ["parallel", "parallel", "reduction", "reduction"]} ins(%[[A]], %[[W]], %[[AS]], %[[WS]] : {{.*}}) outs(%{{.*}} : tensor<8x32xf32>)
// SCALED:            arith.scaling_extf %{{.*}}, %{{.*}} : f4E2M1FN, f8E8M0FNU to f32
// SCALED:            arith.scaling_extf %{{.*}}, %{{.*}} : f4E2M1FN, f8E8M0FNU to f32
// SCALED-NOT:      {{linalg.matmul|linalg.batch_matmul|math.powf}}

// With int8 slices (the default) the same weights take the group path: one activation scale per row
// and block, slices 1/254 apart.
// INT8:          linalg.batch_matmul {{.*}} ins(%{{.*}}, %{{.*}} : tensor<2x8x32xi8>, tensor<2x32x32xi8>) outs(%{{.*}} : tensor<2x8x32xi32>)
// INT8-NOT:      linalg.matmul

#map = affine_map<(d0, d1) -> (d0, d1)>
#map1 = affine_map<(d0) -> (d0)>
#map2 = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
#map3 = affine_map<(d0, d1, d2) -> (0, 0, d2)>
#map4 = affine_map<(d0, d1, d2) -> (d0, d1, 0)>
#map5 = affine_map<(d0, d1) -> ()>
#map6 = affine_map<(d0, d1) -> (d1)>
module {
  util.global private @__param_0_blocks = #stream.parameter.named<"model"::"0.blocks"> : tensor<32x32xi8>
  util.global private @__param_0_scales = #stream.parameter.named<"model"::"0.scales"> : tensor<32x2xi8>
  util.global private @__param_0_bias = #stream.parameter.named<"model"::"0.bias"> : tensor<32xf32>
  util.func public @main$async(%arg0: !hal.buffer_view, %arg1: !hal.fence, %arg2: !hal.fence) -> !hal.buffer_view attributes {inlining_policy = #util.inline.never, iree.abi.model = "coarse-fences", iree.abi.stub} {
    %c8_i64 = arith.constant 8 : i64
    %c3_i64 = arith.constant 3 : i64
    %c2_i64 = arith.constant 2 : i64
    %c1_i64 = arith.constant 1 : i64
    %c0_i64 = arith.constant 0 : i64
    %cst = arith.constant 0.000000e+00 : f32
    %cst_0 = arith.constant dense<4> : tensor<i64>
    %cst_1 = arith.constant dense<1> : tensor<i64>
    %cst_2 = arith.constant dense<2> : tensor<i64>
    %cst_3 = arith.constant 1.280000e+02 : f32
    %cst_4 = arith.constant 2.000000e+00 : f32
    %c15_i8 = arith.constant 15 : i8
    %c4_i8 = arith.constant 4 : i8
    %c7_i32 = arith.constant 7 : i32
    %c1_i32 = arith.constant 1 : i32
    %c2_i32 = arith.constant 2 : i32
    %0 = hal.tensor.import wait(%arg1) => %arg0 : !hal.buffer_view -> tensor<4x64xf32>
    %__param_0_bias = util.global.load @__param_0_bias : tensor<32xf32>
    %__param_0_scales = util.global.load @__param_0_scales : tensor<32x2xi8>
    %1 = tensor.empty() : tensor<32x2xf32>
    %2 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%__param_0_scales : tensor<32x2xi8>) outs(%1 : tensor<32x2xf32>) {
    ^bb0(%in: i8, %out: f32):
      %45 = arith.uitofp %in : i8 to f32
      linalg.yield %45 : f32
    } -> tensor<32x2xf32>
    %3 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%2 : tensor<32x2xf32>) outs(%1 : tensor<32x2xf32>) {
    ^bb0(%in: f32, %out: f32):
      %45 = arith.subf %in, %cst_3 : f32
      linalg.yield %45 : f32
    } -> tensor<32x2xf32>
    %4 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%3 : tensor<32x2xf32>) outs(%1 : tensor<32x2xf32>) {
    ^bb0(%in: f32, %out: f32):
      %45 = math.powf %cst_4, %in : f32
      linalg.yield %45 : f32
    } -> tensor<32x2xf32>
    %__param_0_blocks = util.global.load @__param_0_blocks : tensor<32x32xi8>
    %5 = tensor.empty() : tensor<32x32xi8>
    %6 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%__param_0_blocks : tensor<32x32xi8>) outs(%5 : tensor<32x32xi8>) {
    ^bb0(%in: i8, %out: i8):
      %45 = arith.andi %in, %c15_i8 : i8
      linalg.yield %45 : i8
    } -> tensor<32x32xi8>
    %7 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%__param_0_blocks : tensor<32x32xi8>) outs(%5 : tensor<32x32xi8>) {
    ^bb0(%in: i8, %out: i8):
      %45 = arith.shrui %in, %c4_i8 : i8
      linalg.yield %45 : i8
    } -> tensor<32x32xi8>
    %8 = tensor.empty() : tensor<2xi64>
    %9 = linalg.generic {indexing_maps = [#map1], iterator_types = ["parallel"]} outs(%8 : tensor<2xi64>) {
    ^bb0(%out: i64):
      %45 = linalg.index 0 : index
      %46 = arith.index_cast %45 : index to i64
      linalg.yield %46 : i64
    } -> tensor<2xi64>
    %expanded = tensor.expand_shape %9 [[0, 1, 2]] output_shape [1, 1, 2] : tensor<2xi64> into tensor<1x1x2xi64>
    %10 = tensor.empty() : tensor<1x1x2xi1>
    %11 = linalg.generic {indexing_maps = [#map2, #map2], iterator_types = ["parallel", "parallel", "parallel"]} ins(%expanded : tensor<1x1x2xi64>) outs(%10 : tensor<1x1x2xi1>) {
    ^bb0(%in: i64, %out: i1):
      %45 = arith.cmpi eq, %in, %c1_i64 : i64
      linalg.yield %45 : i1
    } -> tensor<1x1x2xi1>
    %expanded_5 = tensor.expand_shape %7 [[0], [1, 2]] output_shape [32, 32, 1] : tensor<32x32xi8> into tensor<32x32x1xi8>
    %expanded_6 = tensor.expand_shape %6 [[0], [1, 2]] output_shape [32, 32, 1] : tensor<32x32xi8> into tensor<32x32x1xi8>
    %12 = tensor.empty() : tensor<32x32x2xi8>
    %13 = linalg.generic {indexing_maps = [#map3, #map4, #map4, #map2], iterator_types = ["parallel", "parallel", "parallel"]} ins(%11, %expanded_5, %expanded_6 : tensor<1x1x2xi1>, tensor<32x32x1xi8>, tensor<32x32x1xi8>) outs(%12 : tensor<32x32x2xi8>) {
    ^bb0(%in: i1, %in_10: i8, %in_11: i8, %out: i8):
      %45 = arith.select %in, %in_10, %in_11 : i8
      linalg.yield %45 : i8
    } -> tensor<32x32x2xi8>
    %collapsed = tensor.collapse_shape %13 [[0], [1, 2]] : tensor<32x32x2xi8> into tensor<32x64xi8>
    %14 = tensor.empty() : tensor<32x64xi32>
    %15 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%collapsed : tensor<32x64xi8>) outs(%14 : tensor<32x64xi32>) {
    ^bb0(%in: i8, %out: i32):
      %45 = arith.extui %in : i8 to i32
      linalg.yield %45 : i32
    } -> tensor<32x64xi32>
    %16 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%15 : tensor<32x64xi32>) outs(%14 : tensor<32x64xi32>) {
    ^bb0(%in: i32, %out: i32):
      %45 = arith.andi %in, %c7_i32 : i32
      linalg.yield %45 : i32
    } -> tensor<32x64xi32>
    %17 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%16 : tensor<32x64xi32>) outs(%14 : tensor<32x64xi32>) {
    ^bb0(%in: i32, %out: i32):
      %45 = arith.shrsi %in, %c1_i32 : i32
      linalg.yield %45 : i32
    } -> tensor<32x64xi32>
    %18 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%16 : tensor<32x64xi32>) outs(%14 : tensor<32x64xi32>) {
    ^bb0(%in: i32, %out: i32):
      %45 = arith.andi %in, %c1_i32 : i32
      linalg.yield %45 : i32
    } -> tensor<32x64xi32>
    %19 = tensor.empty() : tensor<32x64xi1>
    %20 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%17 : tensor<32x64xi32>) outs(%19 : tensor<32x64xi1>) {
    ^bb0(%in: i32, %out: i1):
      %45 = arith.extsi %in : i32 to i64
      %46 = arith.cmpi eq, %45, %c0_i64 : i64
      linalg.yield %46 : i1
    } -> tensor<32x64xi1>
    %21 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%18 : tensor<32x64xi32>) outs(%14 : tensor<32x64xi32>) {
    ^bb0(%in: i32, %out: i32):
      %45 = arith.addi %in, %c2_i32 : i32
      linalg.yield %45 : i32
    } -> tensor<32x64xi32>
    %22 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%17 : tensor<32x64xi32>) outs(%19 : tensor<32x64xi1>) {
    ^bb0(%in: i32, %out: i1):
      %45 = arith.extsi %in : i32 to i64
      %46 = arith.cmpi eq, %45, %c3_i64 : i64
      linalg.yield %46 : i1
    } -> tensor<32x64xi1>
    %23 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%17 : tensor<32x64xi32>) outs(%19 : tensor<32x64xi1>) {
    ^bb0(%in: i32, %out: i1):
      %45 = arith.extsi %in : i32 to i64
      %46 = arith.cmpi eq, %45, %c2_i64 : i64
      linalg.yield %46 : i1
    } -> tensor<32x64xi1>
    %24 = tensor.empty() : tensor<32x64xi64>
    %25 = linalg.generic {indexing_maps = [#map, #map5, #map5, #map], iterator_types = ["parallel", "parallel"]} ins(%23, %cst_2, %cst_1 : tensor<32x64xi1>, tensor<i64>, tensor<i64>) outs(%24 : tensor<32x64xi64>) {
    ^bb0(%in: i1, %in_10: i64, %in_11: i64, %out: i64):
      %45 = arith.select %in, %in_10, %in_11 : i64
      linalg.yield %45 : i64
    } -> tensor<32x64xi64>
    %26 = linalg.generic {indexing_maps = [#map, #map5, #map, #map], iterator_types = ["parallel", "parallel"]} ins(%22, %cst_0, %25 : tensor<32x64xi1>, tensor<i64>, tensor<32x64xi64>) outs(%24 : tensor<32x64xi64>) {
    ^bb0(%in: i1, %in_10: i64, %in_11: i64, %out: i64):
      %45 = arith.select %in, %in_10, %in_11 : i64
      linalg.yield %45 : i64
    } -> tensor<32x64xi64>
    %27 = linalg.generic {indexing_maps = [#map, #map, #map], iterator_types = ["parallel", "parallel"]} ins(%21, %26 : tensor<32x64xi32>, tensor<32x64xi64>) outs(%24 : tensor<32x64xi64>) {
    ^bb0(%in: i32, %in_10: i64, %out: i64):
      %45 = arith.extsi %in : i32 to i64
      %46 = arith.muli %45, %in_10 : i64
      linalg.yield %46 : i64
    } -> tensor<32x64xi64>
    %28 = linalg.generic {indexing_maps = [#map, #map, #map, #map], iterator_types = ["parallel", "parallel"]} ins(%20, %18, %27 : tensor<32x64xi1>, tensor<32x64xi32>, tensor<32x64xi64>) outs(%24 : tensor<32x64xi64>) {
    ^bb0(%in: i1, %in_10: i32, %in_11: i64, %out: i64):
      %45 = arith.extsi %in_10 : i32 to i64
      %46 = arith.select %in, %45, %in_11 : i64
      linalg.yield %46 : i64
    } -> tensor<32x64xi64>
    %29 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%15 : tensor<32x64xi32>) outs(%19 : tensor<32x64xi1>) {
    ^bb0(%in: i32, %out: i1):
      %45 = arith.extsi %in : i32 to i64
      %46 = arith.cmpi sge, %45, %c8_i64 : i64
      linalg.yield %46 : i1
    } -> tensor<32x64xi1>
    %30 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%28 : tensor<32x64xi64>) outs(%24 : tensor<32x64xi64>) {
    ^bb0(%in: i64, %out: i64):
      %45 = arith.sitofp %in : i64 to f32
      %46 = arith.negf %45 : f32
      %47 = arith.fptosi %46 : f32 to i64
      linalg.yield %47 : i64
    } -> tensor<32x64xi64>
    %31 = linalg.generic {indexing_maps = [#map, #map, #map, #map], iterator_types = ["parallel", "parallel"]} ins(%29, %30, %28 : tensor<32x64xi1>, tensor<32x64xi64>, tensor<32x64xi64>) outs(%24 : tensor<32x64xi64>) {
    ^bb0(%in: i1, %in_10: i64, %in_11: i64, %out: i64):
      %45 = arith.select %in, %in_10, %in_11 : i64
      linalg.yield %45 : i64
    } -> tensor<32x64xi64>
    %32 = tensor.empty() : tensor<32x64xi8>
    %33 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%31 : tensor<32x64xi64>) outs(%32 : tensor<32x64xi8>) {
    ^bb0(%in: i64, %out: i8):
      %45 = arith.trunci %in : i64 to i8
      linalg.yield %45 : i8
    } -> tensor<32x64xi8>
    %34 = tensor.empty() : tensor<32x64xf32>
    %35 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%33 : tensor<32x64xi8>) outs(%34 : tensor<32x64xf32>) {
    ^bb0(%in: i8, %out: f32):
      %45 = arith.sitofp %in : i8 to f32
      linalg.yield %45 : f32
    } -> tensor<32x64xf32>
    %expanded_7 = tensor.expand_shape %35 [[0], [1, 2]] output_shape [32, 2, 32] : tensor<32x64xf32> into tensor<32x2x32xf32>
    %expanded_8 = tensor.expand_shape %4 [[0], [1, 2]] output_shape [32, 2, 1] : tensor<32x2xf32> into tensor<32x2x1xf32>
    %36 = tensor.empty() : tensor<32x2x32xf32>
    %37 = linalg.generic {indexing_maps = [#map2, #map4, #map2], iterator_types = ["parallel", "parallel", "parallel"]} ins(%expanded_7, %expanded_8 : tensor<32x2x32xf32>, tensor<32x2x1xf32>) outs(%36 : tensor<32x2x32xf32>) {
    ^bb0(%in: f32, %in_10: f32, %out: f32):
      %45 = arith.mulf %in, %in_10 : f32
      linalg.yield %45 : f32
    } -> tensor<32x2x32xf32>
    %collapsed_9 = tensor.collapse_shape %37 [[0], [1, 2]] : tensor<32x2x32xf32> into tensor<32x64xf32>
    %38 = tensor.empty() : tensor<64x32xf32>
    %transposed = linalg.transpose ins(%collapsed_9 : tensor<32x64xf32>) outs(%38 : tensor<64x32xf32>) permutation = [1, 0] 
    %39 = tensor.empty() : tensor<4x32xf32>
    %40 = linalg.fill ins(%cst : f32) outs(%39 : tensor<4x32xf32>) -> tensor<4x32xf32>
    %41 = linalg.matmul ins(%0, %transposed : tensor<4x64xf32>, tensor<64x32xf32>) outs(%40 : tensor<4x32xf32>) -> tensor<4x32xf32>
    %42 = linalg.generic {indexing_maps = [#map, #map6, #map], iterator_types = ["parallel", "parallel"]} ins(%41, %__param_0_bias : tensor<4x32xf32>, tensor<32xf32>) outs(%39 : tensor<4x32xf32>) {
    ^bb0(%in: f32, %in_10: f32, %out: f32):
      %45 = arith.addf %in, %in_10 : f32
      linalg.yield %45 : f32
    } -> tensor<4x32xf32>
    %43 = hal.tensor.barrier join(%42 : tensor<4x32xf32>) => %arg2 : !hal.fence
    %44 = hal.tensor.export %43 : tensor<4x32xf32> -> !hal.buffer_view
    util.return %44 : !hal.buffer_view
  }
}
