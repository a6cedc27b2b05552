// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// msd.quantize(weights="int8"): symmetric int8, one f32 scale per output channel.
//
// Captured from a real export, not written by hand: the linalg IR that msd.compile emits after
// IREE's input phase (weights stay util.global parameters), with torch 2.13.0+cpu, torchao 0.18.0,
// iree-base-compiler 3.13.0, msd 0.1.0, by running in /work/main:
//
//   import torch; from torch import nn; import msd
//   torch.manual_seed(0)
//   model = msd.quantize(nn.Sequential(nn.Linear(64, 32)), weights="int8")
//   x = torch.randn(4, 64)
//   print(msd.compile(model, (x,), emit="linalg"))
//
// Edits to the captured text: the `@main` ABI wrapper (fence plumbing around @main$async) and blank
// lines were dropped, and the REPORT line was put above the matmul. Nothing else was changed.

// REPORT: msd-decompose-activations: 1 rewritten, 0 skipped

// CHECK-DAG:   util.global private @__param_0_qweight = #stream.parameter.named<"model"::"0.qweight"> : tensor<32x64xi8>
// CHECK-DAG:   util.global private @__param_0_weight_scale = #stream.parameter.named<"model"::"0.weight_scale"> : tensor<32xf32>
// CHECK-LABEL: util.func public @main$async(
// CHECK-NOT:     {{tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[X:[^ :]+]] = hal.tensor.import {{.*}} -> tensor<4x64xf32>
// CHECK-DAG:     %[[B:[^ :]+]] = util.global.load @__param_0_bias : tensor<32xf32>
// CHECK-DAG:     %[[Q:[^ :]+]] = util.global.load @__param_0_qweight : tensor<32x64xi8>
// CHECK-DAG:     %[[S:[^ :]+]] = util.global.load @__param_0_weight_scale : tensor<32xf32>
// CHECK-NOT:     {{tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[AMAX:[^ :]+]] = linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]{{.*}} ins(%[[X]] : tensor<4x64xf32>) outs(%{{.*}} : tensor<4xf32>)
// CHECK-NOT:     {{tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[SL:[^ :]+]] = linalg.generic {{.*}} ins(%[[X]], %[[AMAX]] : tensor<4x64xf32>, tensor<4xf32>) outs(%{{.*}} : tensor<2x4x64xi8>)
// CHECK-NOT:     {{tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[ST:[^ :]+]] = tensor.collapse_shape %[[SL]] {{.*}} : tensor<2x4x64xi8> into tensor<8x64xi8>
// CHECK-NOT:     {{tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[ACC:[^ :]+]] = linalg.matmul {{.*}}ins(%[[ST]], %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK-NOT:     {{tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[E:[^ :]+]] = tensor.expand_shape %[[ACC]] {{.*}} : tensor<8x32xi32> into tensor<2x4x32xi32>
// CHECK-NOT:     {{tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[Y:[^ :]+]] = linalg.generic {{.*}} ins(%[[E]], %[[E]], %[[AMAX]], %[[S]], %[[B]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<32xf32>, tensor<32xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK-NOT:     {{tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         hal.tensor.barrier join(%[[Y]] : tensor<4x32xf32>)
// CHECK-NOT:     {{tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         util.return

#map = affine_map<(d0, d1) -> (d0, d1)>
#map1 = affine_map<(d0, d1) -> (d0, 0)>
#map2 = affine_map<(d0, d1) -> (d1)>
module {
  util.global private @__param_0_weight_scale = #stream.parameter.named<"model"::"0.weight_scale"> : tensor<32xf32>
  util.global private @__param_0_qweight = #stream.parameter.named<"model"::"0.qweight"> : tensor<32x64xi8>
  util.global private @__param_0_bias = #stream.parameter.named<"model"::"0.bias"> : tensor<32xf32>
  util.func public @main$async(%arg0: !hal.buffer_view, %arg1: !hal.fence, %arg2: !hal.fence) -> !hal.buffer_view attributes {inlining_policy = #util.inline.never, iree.abi.model = "coarse-fences", iree.abi.stub} {
    %cst = arith.constant 0.000000e+00 : f32
    %0 = hal.tensor.import wait(%arg1) => %arg0 : !hal.buffer_view -> tensor<4x64xf32>
    %__param_0_bias = util.global.load @__param_0_bias : tensor<32xf32>
    %__param_0_qweight = util.global.load @__param_0_qweight : tensor<32x64xi8>
    %1 = tensor.empty() : tensor<32x64xf32>
    %2 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%__param_0_qweight : tensor<32x64xi8>) outs(%1 : tensor<32x64xf32>) {
    ^bb0(%in: i8, %out: f32):
      %11 = arith.sitofp %in : i8 to f32
      linalg.yield %11 : f32
    } -> tensor<32x64xf32>
    %__param_0_weight_scale = util.global.load @__param_0_weight_scale : tensor<32xf32>
    %expanded = tensor.expand_shape %__param_0_weight_scale [[0, 1]] output_shape [32, 1] : tensor<32xf32> into tensor<32x1xf32>
    %3 = linalg.generic {indexing_maps = [#map, #map1, #map], iterator_types = ["parallel", "parallel"]} ins(%2, %expanded : tensor<32x64xf32>, tensor<32x1xf32>) outs(%1 : tensor<32x64xf32>) {
    ^bb0(%in: f32, %in_0: f32, %out: f32):
      %11 = arith.mulf %in, %in_0 : f32
      linalg.yield %11 : f32
    } -> tensor<32x64xf32>
    %4 = tensor.empty() : tensor<64x32xf32>
    %transposed = linalg.transpose ins(%3 : tensor<32x64xf32>) outs(%4 : tensor<64x32xf32>) permutation = [1, 0] 
    %5 = tensor.empty() : tensor<4x32xf32>
    %6 = linalg.fill ins(%cst : f32) outs(%5 : tensor<4x32xf32>) -> tensor<4x32xf32>
    // REPORT: rewritten: linalg.matmul at {{.*}}fixture_msd_int8_channel.mlir:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8>{{$}}
    %7 = linalg.matmul ins(%0, %transposed : tensor<4x64xf32>, tensor<64x32xf32>) outs(%6 : tensor<4x32xf32>) -> tensor<4x32xf32>
    %8 = linalg.generic {indexing_maps = [#map, #map2, #map], iterator_types = ["parallel", "parallel"]} ins(%7, %__param_0_bias : tensor<4x32xf32>, tensor<32xf32>) outs(%5 : tensor<4x32xf32>) {
    ^bb0(%in: f32, %in_0: f32, %out: f32):
      %11 = arith.addf %in, %in_0 : f32
      linalg.yield %11 : f32
    } -> tensor<4x32xf32>
    %9 = hal.tensor.barrier join(%8 : tensor<4x32xf32>) => %arg2 : !hal.fence
    %10 = hal.tensor.export %9 : tensor<4x32xf32> -> !hal.buffer_view
    util.return %10 : !hal.buffer_view
  }
}
