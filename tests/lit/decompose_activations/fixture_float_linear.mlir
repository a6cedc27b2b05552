// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// Negative fixture: a plain float nn.Linear (no quantization). Its weight is an f32 parameter, so
// the pass must leave the matmul alone and say why.
//
// Captured from a real export, not written by hand: the linalg IR that msd.compile emits after
// IREE's input phase (weights stay util.global parameters), with torch 2.13.0+cpu, torchao 0.18.0,
// iree-base-compiler 3.13.0, msd 0.1.0, by running in /work/main:
//
//   import torch; from torch import nn; import msd
//   torch.manual_seed(0)
//   model = nn.Sequential(nn.Linear(64, 32)).eval()
//   x = torch.randn(4, 64)
//   print(msd.compile(model, (x,), emit="linalg"))
//
// Edits to the captured text: the `@main` ABI wrapper (fence plumbing around @main$async) and blank
// lines were dropped, and the REPORT line was put above the matmul. Nothing else was changed.

// REPORT: msd-decompose-activations: 0 rewritten, 1 skipped

// CHECK-DAG:   util.global private @__param_0_weight = #stream.parameter.named<"model"::"0.weight"> : tensor<32x64xf32>
// CHECK-LABEL: util.func public @main$async(
// CHECK-NOT:     xi8>
// CHECK:         %[[X:[^ :]+]] = hal.tensor.import {{.*}} -> tensor<4x64xf32>
// CHECK-NOT:     xi8>
// CHECK:         %[[W:[^ :]+]] = util.global.load @__param_0_weight : tensor<32x64xf32>
// CHECK-NOT:     xi8>
// CHECK:         %[[WT:[^ :]+]] = linalg.transpose ins(%[[W]] : tensor<32x64xf32>) outs(%{{.*}} : tensor<64x32xf32>) permutation = [1, 0]
// CHECK-NOT:     xi8>
// CHECK:         %[[Y:[^ :]+]] = linalg.matmul ins(%[[X]], %[[WT]] : tensor<4x64xf32>, tensor<64x32xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK-NOT:     {{xi8>|xi32>}}
// CHECK:         util.return

#map = affine_map<(d0, d1) -> (d0, d1)>
#map1 = affine_map<(d0, d1) -> (d1)>
module {
  util.global private @__param_0_bias = #stream.parameter.named<"model"::"0.bias"> : tensor<32xf32>
  util.global private @__param_0_weight = #stream.parameter.named<"model"::"0.weight"> : tensor<32x64xf32>
  util.func public @main$async(%arg0: !hal.buffer_view, %arg1: !hal.fence, %arg2: !hal.fence) -> !hal.buffer_view attributes {inlining_policy = #util.inline.never, iree.abi.model = "coarse-fences", iree.abi.stub} {
    %cst = arith.constant 0.000000e+00 : f32
    %0 = hal.tensor.import wait(%arg1) => %arg0 : !hal.buffer_view -> tensor<4x64xf32>
    %__param_0_weight = util.global.load @__param_0_weight : tensor<32x64xf32>
    %__param_0_bias = util.global.load @__param_0_bias : tensor<32xf32>
    %1 = tensor.empty() : tensor<64x32xf32>
    %transposed = linalg.transpose ins(%__param_0_weight : tensor<32x64xf32>) outs(%1 : tensor<64x32xf32>) permutation = [1, 0] 
    %2 = tensor.empty() : tensor<4x32xf32>
    %3 = linalg.fill ins(%cst : f32) outs(%2 : tensor<4x32xf32>) -> tensor<4x32xf32>
    // REPORT: skipped: linalg.matmul at {{.*}}fixture_float_linear.mlir:[[# @LINE + 1]]: no operand is dequantized from an integer tensor (float weights){{$}}
    %4 = linalg.matmul ins(%0, %transposed : tensor<4x64xf32>, tensor<64x32xf32>) outs(%3 : tensor<4x32xf32>) -> tensor<4x32xf32>
    %5 = linalg.generic {indexing_maps = [#map, #map1, #map], iterator_types = ["parallel", "parallel"]} ins(%4, %__param_0_bias : tensor<4x32xf32>, tensor<32xf32>) outs(%2 : tensor<4x32xf32>) {
    ^bb0(%in: f32, %in_0: f32, %out: f32):
      %8 = arith.addf %in, %in_0 : f32
      linalg.yield %8 : f32
    } -> tensor<4x32xf32>
    %6 = hal.tensor.barrier join(%5 : tensor<4x32xf32>) => %arg2 : !hal.fence
    %7 = hal.tensor.export %6 : tensor<4x32xf32> -> !hal.buffer_view
    util.return %7 : !hal.buffer_view
  }
}
