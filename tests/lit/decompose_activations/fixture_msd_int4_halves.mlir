// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// msd.quantize(weights="int4", group_size=32, packing="halves"): asymmetric unsigned 4-bit codes,
// two per byte (each 32-block: first 16 in the low nibbles, last 16 in the high nibbles), an f32
// scale and an i8 zero point per group.
//
// Captured from a real export, not written by hand: the linalg IR that msd.compile emits after
// IREE's input phase (weights stay util.global parameters), with torch 2.13.0+cpu, torchao 0.18.0,
// iree-base-compiler 3.13.0, msd 0.1.0, by running in /work/main:
//
//   import torch; from torch import nn; import msd
//   torch.manual_seed(0)
//   model = msd.quantize(nn.Sequential(nn.Linear(64, 32)), weights="int4", group_size=32, packing="halves")
//   x = torch.randn(4, 64)
//   print(msd.compile(model, (x,), emit="linalg"))
//
// Edits to the captured text: the `@main` ABI wrapper (fence plumbing around @main$async) and blank
// lines were dropped, and the REPORT line was put above the matmul. Nothing else was changed.

// REPORT: msd-decompose-activations: 1 rewritten, 0 skipped

// CHECK-DAG:   util.global private @__param_0_qweight = #stream.parameter.named<"model"::"0.qweight"> : tensor<32x32xi8>
// CHECK-DAG:   util.global private @__param_0_weight_zero_point = #stream.parameter.named<"model"::"0.weight_zero_point"> : tensor<32x2xi8>
// CHECK-DAG:   util.global private @__param_0_weight_scale = #stream.parameter.named<"model"::"0.weight_scale"> : tensor<32x2xf32>
// CHECK-LABEL: util.func public @main$async(
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[X:[^ :]+]] = hal.tensor.import {{.*}} -> tensor<4x64xf32>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[P:[^ :]+]] = util.global.load @__param_0_qweight : tensor<32x32xi8>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[LO:[^ :]+]] = linalg.generic {{.*}} ins(%[[P]] : tensor<32x32xi8>) outs(%{{.*}} : tensor<32x32xi8>)
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:           arith.andi %{{.*}}, %c15_i8 : i8
// CHECK:         %[[HI:[^ :]+]] = linalg.generic {{.*}} ins(%[[P]] : tensor<32x32xi8>) outs(%{{.*}} : tensor<32x32xi8>)
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:           arith.shrui %{{.*}}, %c4_i8 : i8
// CHECK:         %[[LO3:[^ :]+]] = tensor.expand_shape %[[LO]] {{.*}} : tensor<32x32xi8> into tensor<32x2x16xi8>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[HI3:[^ :]+]] = tensor.expand_shape %[[HI]] {{.*}} : tensor<32x32xi8> into tensor<32x2x16xi8>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[CAT:[^ :]+]] = tensor.concat dim(2) %[[LO3]], %[[HI3]] : (tensor<32x2x16xi8>, tensor<32x2x16xi8>) -> tensor<32x2x32xi8>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[ZP:[^ :]+]] = util.global.load @__param_0_weight_zero_point : tensor<32x2xi8>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[S:[^ :]+]] = util.global.load @__param_0_weight_scale : tensor<32x2xf32>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[S3:[^ :]+]] = tensor.expand_shape %[[S]] {{.*}} : tensor<32x2xf32> into tensor<32x2x1xf32>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[QS:[^ :]+]] = linalg.generic {{.*}} ins(%[[CAT]] : tensor<32x2x32xi8>) outs(%{{.*}} : tensor<32x2x32xi8>)
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:           arith.subi %{{.*}}, %c8_i8 : i8
// CHECK:         %[[XG:[^ :]+]] = tensor.expand_shape %[[X]] {{.*}} : tensor<4x64xf32> into tensor<4x2x32xf32>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[QT:[^ :]+]] = linalg.transpose ins(%[[QS]] : tensor<32x2x32xi8>) outs(%{{.*}} : tensor<2x32x32xi8>) permutation = [1, 0, 2]
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[AMAX:[^ :]+]]:2 = linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "reduction"]{{.*}} ins(%[[XG]] : tensor<4x2x32xf32>) outs(%{{.*}}, %{{.*}} : tensor<2x4xf32>, tensor<2x4xf32>)
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[SL:[^ :]+]] = linalg.generic {{.*}} ins(%[[XG]], %[[AMAX]]#0 : tensor<4x2x32xf32>, tensor<2x4xf32>) outs(%{{.*}} : tensor<2x2x4x32xi8>)
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[ST:[^ :]+]] = tensor.collapse_shape %[[SL]] {{.*}} : tensor<2x2x4x32xi8> into tensor<2x8x32xi8>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[ACC:[^ :]+]] = linalg.batch_matmul {{.*}}ins(%[[ST]], %[[QT]] : tensor<2x8x32xi8>, tensor<2x32x32xi8>) outs(%{{.*}} : tensor<2x8x32xi32>)
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[E:[^ :]+]] = tensor.expand_shape %[[ACC]] {{.*}} : tensor<2x8x32xi32> into tensor<2x2x4x32xi32>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[Y:[^ :]+]] = linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "reduction"]{{.*}} ins(%[[E]], %[[E]], %[[AMAX]]#0, %[[AMAX]]#1, %[[ZP]], %[[S3]] : tensor<2x2x4x32xi32>, tensor<2x2x4x32xi32>, tensor<2x4xf32>, tensor<2x4xf32>, tensor<32x2xi8>, tensor<32x2x1xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK-NEXT:    ^bb0(%{{[^:]+}}: i32, %{{[^:]+}}: i32, %{{[^:]+}}: f32, %[[RS:[^:]+]]: f32, %[[Z:[^:]+]]: i8, %[[SC:[^:]+]]: f32, %{{[^:]+}}: f32):
// CHECK:           %[[EIGHT:[^ :]+]] = arith.constant 8.000000e+00 : f32
// CHECK:           %[[ZF:[^ :]+]] = arith.uitofp %[[Z]] : i8 to f32
// CHECK:           %[[NZ:[^ :]+]] = arith.negf %[[ZF]] : f32
// CHECK:           %[[OFF:[^ :]+]] = arith.addf %[[EIGHT]], %[[NZ]] : f32
// CHECK:           %[[SOFF:[^ :]+]] = arith.mulf %[[SC]], %[[OFF]] : f32
// CHECK:           arith.mulf %[[SOFF]], %[[RS]] : f32
// CHECK:         %[[YB:[^ :]+]] = linalg.generic {{.*}} ins(%[[Y]], %{{.*}} : tensor<4x32xf32>, tensor<32xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         hal.tensor.barrier join(%[[YB]] : tensor<4x32xf32>)
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         util.return

#map = affine_map<(d0, d1) -> (d0, d1)>
#map1 = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
#map2 = affine_map<(d0, d1, d2) -> (d0, d1, 0)>
#map3 = affine_map<(d0, d1) -> (d1)>
module {
  util.global private @__param_0_weight_scale = #stream.parameter.named<"model"::"0.weight_scale"> : tensor<32x2xf32>
  util.global private @__param_0_weight_zero_point = #stream.parameter.named<"model"::"0.weight_zero_point"> : tensor<32x2xi8>
  util.global private @__param_0_qweight = #stream.parameter.named<"model"::"0.qweight"> : tensor<32x32xi8>
  util.global private @__param_0_bias = #stream.parameter.named<"model"::"0.bias"> : tensor<32xf32>
  util.func public @main$async(%arg0: !hal.buffer_view, %arg1: !hal.fence, %arg2: !hal.fence) -> !hal.buffer_view attributes {inlining_policy = #util.inline.never, iree.abi.model = "coarse-fences", iree.abi.stub} {
    %cst = arith.constant 0.000000e+00 : f32
    %c15_i8 = arith.constant 15 : i8
    %c4_i8 = arith.constant 4 : i8
    %0 = hal.tensor.import wait(%arg1) => %arg0 : !hal.buffer_view -> tensor<4x64xf32>
    %__param_0_bias = util.global.load @__param_0_bias : tensor<32xf32>
    %__param_0_qweight = util.global.load @__param_0_qweight : tensor<32x32xi8>
    %1 = tensor.empty() : tensor<32x32xi8>
    %2 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%__param_0_qweight : tensor<32x32xi8>) outs(%1 : tensor<32x32xi8>) {
    ^bb0(%in: i8, %out: i8):
      %17 = arith.andi %in, %c15_i8 : i8
      linalg.yield %17 : i8
    } -> tensor<32x32xi8>
    %3 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%__param_0_qweight : tensor<32x32xi8>) outs(%1 : tensor<32x32xi8>) {
    ^bb0(%in: i8, %out: i8):
      %17 = arith.shrui %in, %c4_i8 : i8
      linalg.yield %17 : i8
    } -> tensor<32x32xi8>
    %expanded = tensor.expand_shape %2 [[0], [1, 2]] output_shape [32, 2, 16] : tensor<32x32xi8> into tensor<32x2x16xi8>
    %expanded_0 = tensor.expand_shape %3 [[0], [1, 2]] output_shape [32, 2, 16] : tensor<32x32xi8> into tensor<32x2x16xi8>
    %concat = tensor.concat dim(2) %expanded, %expanded_0 : (tensor<32x2x16xi8>, tensor<32x2x16xi8>) -> tensor<32x2x32xi8>
    %4 = tensor.empty() : tensor<32x2x32xf32>
    %5 = linalg.generic {indexing_maps = [#map1, #map1], iterator_types = ["parallel", "parallel", "parallel"]} ins(%concat : tensor<32x2x32xi8>) outs(%4 : tensor<32x2x32xf32>) {
    ^bb0(%in: i8, %out: f32):
      %17 = arith.uitofp %in : i8 to f32
      linalg.yield %17 : f32
    } -> tensor<32x2x32xf32>
    %__param_0_weight_zero_point = util.global.load @__param_0_weight_zero_point : tensor<32x2xi8>
    %6 = tensor.empty() : tensor<32x2xf32>
    %7 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%__param_0_weight_zero_point : tensor<32x2xi8>) outs(%6 : tensor<32x2xf32>) {
    ^bb0(%in: i8, %out: f32):
      %17 = arith.uitofp %in : i8 to f32
      linalg.yield %17 : f32
    } -> tensor<32x2xf32>
    %expanded_1 = tensor.expand_shape %7 [[0], [1, 2]] output_shape [32, 2, 1] : tensor<32x2xf32> into tensor<32x2x1xf32>
    %8 = linalg.generic {indexing_maps = [#map1, #map2, #map1], iterator_types = ["parallel", "parallel", "parallel"]} ins(%5, %expanded_1 : tensor<32x2x32xf32>, tensor<32x2x1xf32>) outs(%4 : tensor<32x2x32xf32>) {
    ^bb0(%in: f32, %in_3: f32, %out: f32):
      %17 = arith.subf %in, %in_3 : f32
      linalg.yield %17 : f32
    } -> tensor<32x2x32xf32>
    %__param_0_weight_scale = util.global.load @__param_0_weight_scale : tensor<32x2xf32>
    %expanded_2 = tensor.expand_shape %__param_0_weight_scale [[0], [1, 2]] output_shape [32, 2, 1] : tensor<32x2xf32> into tensor<32x2x1xf32>
    %9 = linalg.generic {indexing_maps = [#map1, #map2, #map1], iterator_types = ["parallel", "parallel", "parallel"]} ins(%8, %expanded_2 : tensor<32x2x32xf32>, tensor<32x2x1xf32>) outs(%4 : tensor<32x2x32xf32>) {
    ^bb0(%in: f32, %in_3: f32, %out: f32):
      %17 = arith.mulf %in, %in_3 : f32
      linalg.yield %17 : f32
    } -> tensor<32x2x32xf32>
    %collapsed = tensor.collapse_shape %9 [[0], [1, 2]] : tensor<32x2x32xf32> into tensor<32x64xf32>
    %10 = tensor.empty() : tensor<64x32xf32>
    %transposed = linalg.transpose ins(%collapsed : tensor<32x64xf32>) outs(%10 : tensor<64x32xf32>) permutation = [1, 0] 
    %11 = tensor.empty() : tensor<4x32xf32>
    %12 = linalg.fill ins(%cst : f32) outs(%11 : tensor<4x32xf32>) -> tensor<4x32xf32>
    // REPORT: rewritten: linalg.matmul at {{.*}}fixture_msd_int4_halves.mlir:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x2x32xi8> (unsigned weight as q-8), K in groups of 32 (activation scale per group) with zero-point/offset term{{$}}
    %13 = linalg.matmul ins(%0, %transposed : tensor<4x64xf32>, tensor<64x32xf32>) outs(%12 : tensor<4x32xf32>) -> tensor<4x32xf32>
    %14 = linalg.generic {indexing_maps = [#map, #map3, #map], iterator_types = ["parallel", "parallel"]} ins(%13, %__param_0_bias : tensor<4x32xf32>, tensor<32xf32>) outs(%11 : tensor<4x32xf32>) {
    ^bb0(%in: f32, %in_3: f32, %out: f32):
      %17 = arith.addf %in, %in_3 : f32
      linalg.yield %17 : f32
    } -> tensor<4x32xf32>
    %15 = hal.tensor.barrier join(%14 : tensor<4x32xf32>) => %arg2 : !hal.fence
    %16 = hal.tensor.export %15 : tensor<4x32xf32> -> !hal.buffer_view
    util.return %16 : !hal.buffer_view
  }
}
