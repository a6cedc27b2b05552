// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// torchao Int8WeightOnlyConfig: int8 per output channel; torchao's linear applies the scale after the
// matmul of x with the transposed int8 weight (sitofp of linalg.transpose of the int8 parameter).
//
// Captured from a real export, not written by hand: the linalg IR that msd.compile emits after
// IREE's input phase (weights stay util.global parameters), with torch 2.13.0+cpu, torchao 0.18.0,
// iree-base-compiler 3.13.0, msd 0.1.0, by running in /work/main:
//
//   import torch; from torch import nn; import msd; import torchao.quantization as tq
//   torch.manual_seed(0)
//   model = nn.Sequential(nn.Linear(64, 32))
//   tq.quantize_(model, tq.Int8WeightOnlyConfig(set_inductor_config=False))
//   model = model.eval()
//   x = torch.randn(4, 64)
//   print(msd.compile(model, (x,), emit="linalg"))
//
// Edits to the captured text: the `@main` ABI wrapper (fence plumbing around @main$async) and blank
// lines were dropped, and the REPORT line was put above the matmul. Nothing else was changed.

// REPORT: msd-decompose-activations: 1 rewritten, 0 skipped

// CHECK-DAG:   util.global private @__param_0_parametrizations_weight_original0 = #stream.parameter.named<"model"::"0.parametrizations.weight.original0"> : tensor<32x64xi8>
// CHECK-DAG:   util.global private @__param_0_parametrizations_weight_original1 = #stream.parameter.named<"model"::"0.parametrizations.weight.original1"> : tensor<32x1xf32>
// CHECK-LABEL: util.func public @main$async(
// CHECK-NOT:     {{tensor<64x32x(i8|f32)>|tensor<32x64xf32>}}
// CHECK:         %[[X:[^ :]+]] = hal.tensor.import {{.*}} -> tensor<4x64xf32>
// CHECK-NOT:     {{tensor<64x32x(i8|f32)>|tensor<32x64xf32>}}
// CHECK:         %[[Q:[^ :]+]] = util.global.load @__param_0_parametrizations_weight_original0 : tensor<32x64xi8>
// CHECK-NOT:     {{tensor<64x32x(i8|f32)>|tensor<32x64xf32>}}
// CHECK:         %[[AMAX:[^ :]+]] = linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]{{.*}} ins(%[[X]] : tensor<4x64xf32>) outs(%{{.*}} : tensor<4xf32>)
// CHECK-NOT:     {{tensor<64x32x(i8|f32)>|tensor<32x64xf32>}}
// CHECK:         %[[SL:[^ :]+]] = linalg.generic {{.*}} ins(%[[X]], %[[AMAX]] : tensor<4x64xf32>, tensor<4xf32>) outs(%{{.*}} : tensor<2x4x64xi8>)
// CHECK-NOT:     {{tensor<64x32x(i8|f32)>|tensor<32x64xf32>}}
// CHECK:         %[[ST:[^ :]+]] = tensor.collapse_shape %[[SL]] {{.*}} : tensor<2x4x64xi8> into tensor<8x64xi8>
// CHECK-NOT:     {{tensor<64x32x(i8|f32)>|tensor<32x64xf32>}}
// CHECK:         %[[ACC:[^ :]+]] = linalg.matmul {{.*}}ins(%[[ST]], %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK-NOT:     {{tensor<64x32x(i8|f32)>|tensor<32x64xf32>}}
// CHECK:         %[[E:[^ :]+]] = tensor.expand_shape %[[ACC]] {{.*}} : tensor<8x32xi32> into tensor<2x4x32xi32>
// CHECK-NOT:     {{tensor<64x32x(i8|f32)>|tensor<32x64xf32>}}
// CHECK:         %[[S:[^ :]+]] = util.global.load @__param_0_parametrizations_weight_original1 : tensor<32x1xf32>
// CHECK-NOT:     {{tensor<64x32x(i8|f32)>|tensor<32x64xf32>}}
// CHECK:         %[[S1:[^ :]+]] = tensor.collapse_shape %[[S]] {{.*}} : tensor<32x1xf32> into tensor<32xf32>
// CHECK-NOT:     {{tensor<64x32x(i8|f32)>|tensor<32x64xf32>}}
// CHECK:         %[[B:[^ :]+]] = util.global.load @__param_0_bias : tensor<32xf32>
// CHECK-NOT:     {{tensor<64x32x(i8|f32)>|tensor<32x64xf32>}}
// CHECK:         %[[Y:[^ :]+]] = linalg.generic {{.*}} ins(%[[E]], %[[E]], %[[AMAX]], %[[S1]], %[[B]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<32xf32>, tensor<32xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK-NOT:     {{tensor<64x32x(i8|f32)>|tensor<32x64xf32>}}
// CHECK:         hal.tensor.barrier join(%[[Y]] : tensor<4x32xf32>)
// CHECK-NOT:     {{tensor<64x32x(i8|f32)>|tensor<32x64xf32>}}
// CHECK:         util.return

#map = affine_map<(d0, d1) -> (d0, d1)>
#map1 = affine_map<(d0, d1) -> (d1)>
module {
  util.global private @__param_0_bias = #stream.parameter.named<"model"::"0.bias"> : tensor<32xf32>
  util.global private @__param_0_parametrizations_weight_original1 = #stream.parameter.named<"model"::"0.parametrizations.weight.original1"> : tensor<32x1xf32>
  util.global private @__param_0_parametrizations_weight_original0 = #stream.parameter.named<"model"::"0.parametrizations.weight.original0"> : tensor<32x64xi8>
  util.func public @main$async(%arg0: !hal.buffer_view, %arg1: !hal.fence, %arg2: !hal.fence) -> !hal.buffer_view attributes {inlining_policy = #util.inline.never, iree.abi.model = "coarse-fences", iree.abi.stub} {
    %cst = arith.constant 0.000000e+00 : f32
    %0 = hal.tensor.import wait(%arg1) => %arg0 : !hal.buffer_view -> tensor<4x64xf32>
    %__param_0_parametrizations_weight_original0 = util.global.load @__param_0_parametrizations_weight_original0 : tensor<32x64xi8>
    %1 = tensor.empty() : tensor<64x32xi8>
    %transposed = linalg.transpose ins(%__param_0_parametrizations_weight_original0 : tensor<32x64xi8>) outs(%1 : tensor<64x32xi8>) permutation = [1, 0] 
    %2 = tensor.empty() : tensor<64x32xf32>
    %3 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%transposed : tensor<64x32xi8>) outs(%2 : tensor<64x32xf32>) {
    ^bb0(%in: i8, %out: f32):
      %11 = arith.sitofp %in : i8 to f32
      linalg.yield %11 : f32
    } -> tensor<64x32xf32>
    %4 = tensor.empty() : tensor<4x32xf32>
    %5 = linalg.fill ins(%cst : f32) outs(%4 : tensor<4x32xf32>) -> tensor<4x32xf32>
    // REPORT: rewritten: linalg.matmul at {{.*}}fixture_torchao_int8.mlir:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8>{{$}}
    %6 = linalg.matmul ins(%0, %3 : tensor<4x64xf32>, tensor<64x32xf32>) outs(%5 : tensor<4x32xf32>) -> tensor<4x32xf32>
    %__param_0_parametrizations_weight_original1 = util.global.load @__param_0_parametrizations_weight_original1 : tensor<32x1xf32>
    %collapsed = tensor.collapse_shape %__param_0_parametrizations_weight_original1 [[0, 1]] : tensor<32x1xf32> into tensor<32xf32>
    %7 = linalg.generic {indexing_maps = [#map, #map1, #map], iterator_types = ["parallel", "parallel"]} ins(%6, %collapsed : tensor<4x32xf32>, tensor<32xf32>) outs(%4 : tensor<4x32xf32>) {
    ^bb0(%in: f32, %in_0: f32, %out: f32):
      %11 = arith.mulf %in, %in_0 : f32
      linalg.yield %11 : f32
    } -> tensor<4x32xf32>
    %__param_0_bias = util.global.load @__param_0_bias : tensor<32xf32>
    %8 = linalg.generic {indexing_maps = [#map, #map1, #map], iterator_types = ["parallel", "parallel"]} ins(%7, %__param_0_bias : tensor<4x32xf32>, tensor<32xf32>) outs(%4 : tensor<4x32xf32>) {
    ^bb0(%in: f32, %in_0: f32, %out: f32):
      %11 = arith.addf %in, %in_0 : f32
      linalg.yield %11 : f32
    } -> tensor<4x32xf32>
    %9 = hal.tensor.barrier join(%8 : tensor<4x32xf32>) => %arg2 : !hal.fence
    %10 = hal.tensor.export %9 : tensor<4x32xf32> -> !hal.buffer_view
    util.return %10 : !hal.buffer_view
  }
}
