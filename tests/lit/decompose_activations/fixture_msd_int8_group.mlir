// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// msd.quantize(weights="int8", group_size=32): symmetric int8, one f32 scale per (channel, group of 32 along K).
//
// Captured from a real export, not written by hand: the linalg IR that msd.compile emits after
// IREE's input phase (weights stay util.global parameters), with torch 2.13.0+cpu, torchao 0.18.0,
// iree-base-compiler 3.13.0, msd 0.1.0, by running in /work/main:
//
//   import torch; from torch import nn; import msd
//   torch.manual_seed(0)
//   model = msd.quantize(nn.Sequential(nn.Linear(64, 32)), weights="int8", group_size=32)
//   x = torch.randn(4, 64)
//   print(msd.compile(model, (x,), emit="linalg"))
//
// Edits to the captured text: the `@main` ABI wrapper (fence plumbing around @main$async) and blank
// lines were dropped, and the REPORT line was put above the matmul. Nothing else was changed.

// REPORT: msd-decompose-activations: 1 rewritten, 0 skipped

// CHECK-DAG:   util.global private @__param_0_qweight = #stream.parameter.named<"model"::"0.qweight"> : tensor<32x64xi8>
// CHECK-DAG:   util.global private @__param_0_weight_scale = #stream.parameter.named<"model"::"0.weight_scale"> : tensor<32x2xf32>
// CHECK-LABEL: util.func public @main$async(
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[X:[^ :]+]] = hal.tensor.import {{.*}} -> tensor<4x64xf32>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[B:[^ :]+]] = util.global.load @__param_0_bias : tensor<32xf32>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[Q:[^ :]+]] = util.global.load @__param_0_qweight : tensor<32x64xi8>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[S:[^ :]+]] = util.global.load @__param_0_weight_scale : tensor<32x2xf32>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[S3:[^ :]+]] = tensor.expand_shape %[[S]] {{.*}} : tensor<32x2xf32> into tensor<32x2x1xf32>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[XG:[^ :]+]] = tensor.expand_shape %[[X]] {{.*}} : tensor<4x64xf32> into tensor<4x2x32xf32>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[QG:[^ :]+]] = tensor.expand_shape %[[Q]] {{.*}} : tensor<32x64xi8> into tensor<32x2x32xi8>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[QT:[^ :]+]] = linalg.transpose ins(%[[QG]] : tensor<32x2x32xi8>) outs(%{{.*}} : tensor<2x32x32xi8>) permutation = [1, 0, 2]
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[AMAX:[^ :]+]] = linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "reduction"]{{.*}} ins(%[[XG]] : tensor<4x2x32xf32>) outs(%{{.*}} : tensor<2x4xf32>)
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[SL:[^ :]+]] = linalg.generic {{.*}} ins(%[[XG]], %[[AMAX]] : tensor<4x2x32xf32>, tensor<2x4xf32>) outs(%{{.*}} : tensor<2x2x4x32xi8>)
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[ST:[^ :]+]] = tensor.collapse_shape %[[SL]] {{.*}} : tensor<2x2x4x32xi8> into tensor<2x8x32xi8>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[ACC:[^ :]+]] = linalg.batch_matmul {{.*}}ins(%[[ST]], %[[QT]] : tensor<2x8x32xi8>, tensor<2x32x32xi8>) outs(%{{.*}} : tensor<2x8x32xi32>)
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[E:[^ :]+]] = tensor.expand_shape %[[ACC]] {{.*}} : tensor<2x8x32xi32> into tensor<2x2x4x32xi32>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[Y:[^ :]+]] = linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "reduction"]{{.*}} ins(%[[E]], %[[E]], %[[AMAX]], %[[S3]] : tensor<2x2x4x32xi32>, tensor<2x2x4x32xi32>, tensor<2x4xf32>, tensor<32x2x1xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[YB:[^ :]+]] = linalg.generic {{.*}} ins(%[[Y]], %[[B]] : tensor<4x32xf32>, tensor<32xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         hal.tensor.barrier join(%[[YB]] : tensor<4x32xf32>)
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         util.return

#map = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
#map1 = affine_map<(d0, d1, d2) -> (d0, d1, 0)>
#map2 = affine_map<(d0, d1) -> (d0, d1)>
#map3 = affine_map<(d0, d1) -> (d1)>
module {
  util.global private @__param_0_weight_scale = #stream.parameter.named<"model"::"0.weight_scale"> : tensor<32x2xf32>
  util.global private @__param_0_qweight = #stream.parameter.named<"model"::"0.qweight"> : tensor<32x64xi8>
  util.global private @__param_0_bias = #stream.parameter.named<"model"::"0.bias"> : tensor<32xf32>
  util.func public @main$async(%arg0: !hal.buffer_view, %arg1: !hal.fence, %arg2: !hal.fence) -> !hal.buffer_view attributes {inlining_policy = #util.inline.never, iree.abi.model = "coarse-fences", iree.abi.stub} {
    %cst = arith.constant 0.000000e+00 : f32
    %0 = hal.tensor.import wait(%arg1) => %arg0 : !hal.buffer_view -> tensor<4x64xf32>
    %__param_0_bias = util.global.load @__param_0_bias : tensor<32xf32>
    %__param_0_qweight = util.global.load @__param_0_qweight : tensor<32x64xi8>
    %expanded = tensor.expand_shape %__param_0_qweight [[0], [1, 2]] output_shape [32, 2, 32] : tensor<32x64xi8> into tensor<32x2x32xi8>
    %1 = tensor.empty() : tensor<32x2x32xf32>
    %2 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel", "parallel"]} ins(%expanded : tensor<32x2x32xi8>) outs(%1 : tensor<32x2x32xf32>) {
    ^bb0(%in: i8, %out: f32):
      %11 = arith.sitofp %in : i8 to f32
      linalg.yield %11 : f32
    } -> tensor<32x2x32xf32>
    %__param_0_weight_scale = util.global.load @__param_0_weight_scale : tensor<32x2xf32>
    %expanded_0 = tensor.expand_shape %__param_0_weight_scale [[0], [1, 2]] output_shape [32, 2, 1] : tensor<32x2xf32> into tensor<32x2x1xf32>
    %3 = linalg.generic {indexing_maps = [#map, #map1, #map], iterator_types = ["parallel", "parallel", "parallel"]} ins(%2, %expanded_0 : tensor<32x2x32xf32>, tensor<32x2x1xf32>) outs(%1 : tensor<32x2x32xf32>) {
    ^bb0(%in: f32, %in_1: f32, %out: f32):
      %11 = arith.mulf %in, %in_1 : f32
      linalg.yield %11 : f32
    } -> tensor<32x2x32xf32>
    %collapsed = tensor.collapse_shape %3 [[0], [1, 2]] : tensor<32x2x32xf32> into tensor<32x64xf32>
    %4 = tensor.empty() : tensor<64x32xf32>
    %transposed = linalg.transpose ins(%collapsed : tensor<32x64xf32>) outs(%4 : tensor<64x32xf32>) permutation = [1, 0] 
    %5 = tensor.empty() : tensor<4x32xf32>
    %6 = linalg.fill ins(%cst : f32) outs(%5 : tensor<4x32xf32>) -> tensor<4x32xf32>
    // REPORT: rewritten: linalg.matmul at {{.*}}fixture_msd_int8_group.mlir:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8>, K in groups of 32 (activation scale per group){{$}}
    %7 = linalg.matmul ins(%0, %transposed : tensor<4x64xf32>, tensor<64x32xf32>) outs(%6 : tensor<4x32xf32>) -> tensor<4x32xf32>
    %8 = linalg.generic {indexing_maps = [#map2, #map3, #map2], iterator_types = ["parallel", "parallel"]} ins(%7, %__param_0_bias : tensor<4x32xf32>, tensor<32xf32>) outs(%5 : tensor<4x32xf32>) {
    ^bb0(%in: f32, %in_1: f32, %out: f32):
      %11 = arith.addf %in, %in_1 : f32
      linalg.yield %11 : f32
    } -> tensor<4x32xf32>
    %9 = hal.tensor.barrier join(%8 : tensor<4x32xf32>) => %arg2 : !hal.fence
    %10 = hal.tensor.export %9 : tensor<4x32xf32> -> !hal.buffer_view
    util.return %10 : !hal.buffer_view
  }
}
