// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// PT2E quantized_decomposed.dequantize_per_tensor with Python-scalar scale and zero point (3): the
// export bakes both into the IR as f32 constants; int8 weight (tests/test_frontends.py PT2ELinear, one layer).
//
// Captured from a real export, not written by hand: the linalg IR that msd.compile emits after
// IREE's input phase (weights stay util.global parameters), with torch 2.13.0+cpu, torchao 0.18.0,
// iree-base-compiler 3.13.0, msd 0.1.0, by running in /work/main:
//
//   import sys, torch; from torch import nn; import msd
//   sys.path.insert(0, "tests")  # in /work/main: PT2ELinear is tests/test_frontends.py's
//   from test_frontends import PT2ELinear
//   torch.manual_seed(0)
//   model = nn.Sequential(PT2ELinear(nn.Linear(64, 32), "per_tensor")).eval()
//   x = torch.randn(4, 64)
//   print(msd.compile(model, (x,), emit="linalg"))
//
// Edits to the captured text: the `@main` ABI wrapper (fence plumbing around @main$async) and blank
// lines were dropped, and the REPORT line was put above the matmul. Nothing else was changed.

// REPORT: msd-decompose-activations: 1 rewritten, 0 skipped

// CHECK-DAG:   util.global private @__param_0_qweight = #stream.parameter.named<"model"::"0.qweight"> : tensor<32x64xi8>
// CHECK-LABEL: util.func public @main$async(
// CHECK-NOT:     {{tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[X:[^ :]+]] = hal.tensor.import {{.*}} -> tensor<4x64xf32>
// CHECK-NOT:     {{tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[Q:[^ :]+]] = util.global.load @__param_0_qweight : tensor<32x64xi8>
// CHECK-NOT:     {{tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[B:[^ :]+]] = util.global.load @__param_0_bias : tensor<32xf32>
// CHECK-NOT:     {{tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[RED:[^ :]+]]:2 = linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]{{.*}} ins(%[[X]] : tensor<4x64xf32>) outs(%{{.*}}, %{{.*}} : tensor<4xf32>, tensor<4xf32>)
// CHECK-NOT:     {{tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[SL:[^ :]+]] = linalg.generic {{.*}} ins(%[[X]], %[[RED]]#0 : tensor<4x64xf32>, tensor<4xf32>) outs(%{{.*}} : tensor<2x4x64xi8>)
// CHECK-NOT:     {{tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[ST:[^ :]+]] = tensor.collapse_shape %[[SL]] {{.*}} : tensor<2x4x64xi8> into tensor<8x64xi8>
// CHECK-NOT:     {{tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[ACC:[^ :]+]] = linalg.matmul {{.*}}ins(%[[ST]], %[[Q]] : tensor<8x64xi8>, tensor<32x64xi8>) outs(%{{.*}} : tensor<8x32xi32>)
// CHECK-NOT:     {{tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[E:[^ :]+]] = tensor.expand_shape %[[ACC]] {{.*}} : tensor<8x32xi32> into tensor<2x4x32xi32>
// CHECK-NOT:     {{tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[Y:[^ :]+]] = linalg.generic {{.*}} ins(%[[E]], %[[E]], %[[RED]]#0, %[[RED]]#1, %[[B]] : tensor<2x4x32xi32>, tensor<2x4x32xi32>, tensor<4xf32>, tensor<4xf32>, tensor<32xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK-NEXT:    ^bb0(%{{[^:]+}}: i32, %{{[^:]+}}: i32, %{{[^:]+}}: f32, %[[RS:[^:]+]]: f32, %{{[^:]+}}: f32, %{{[^:]+}}: f32):
// CHECK:           %[[SC1:[^ :]+]] = arith.constant 9.84095153E-4 : f32
// CHECK:           arith.mulf %[[SC1]], %{{.*}} : f32
// CHECK:           %[[SC2:[^ :]+]] = arith.constant 9.84095153E-4 : f32
// CHECK:           %[[ZC:[^ :]+]] = arith.constant 3.000000e+00 : f32
// CHECK:           %[[NZ:[^ :]+]] = arith.negf %[[ZC]] : f32
// CHECK:           %[[SNZ:[^ :]+]] = arith.mulf %[[SC2]], %[[NZ]] : f32
// CHECK:           arith.mulf %[[SNZ]], %[[RS]] : f32
// CHECK:         hal.tensor.barrier join(%[[Y]] : tensor<4x32xf32>)
// CHECK-NOT:     {{tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         util.return

#map = affine_map<(d0, d1) -> (d0, d1)>
#map1 = affine_map<(d0, d1) -> (d1)>
module {
  util.global private @__param_0_bias = #stream.parameter.named<"model"::"0.bias"> : tensor<32xf32>
  util.global private @__param_0_qweight = #stream.parameter.named<"model"::"0.qweight"> : tensor<32x64xi8>
  util.func public @main$async(%arg0: !hal.buffer_view, %arg1: !hal.fence, %arg2: !hal.fence) -> !hal.buffer_view attributes {inlining_policy = #util.inline.never, iree.abi.model = "coarse-fences", iree.abi.stub} {
    %cst = arith.constant 0.000000e+00 : f32
    %cst_0 = arith.constant 3.000000e+00 : f32
    %cst_1 = arith.constant 9.84095153E-4 : f32
    %0 = hal.tensor.import wait(%arg1) => %arg0 : !hal.buffer_view -> tensor<4x64xf32>
    %__param_0_qweight = util.global.load @__param_0_qweight : tensor<32x64xi8>
    %1 = tensor.empty() : tensor<32x64xf32>
    %2 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%__param_0_qweight : tensor<32x64xi8>) outs(%1 : tensor<32x64xf32>) {
    ^bb0(%in: i8, %out: f32):
      %12 = arith.sitofp %in : i8 to f32
      linalg.yield %12 : f32
    } -> tensor<32x64xf32>
    %3 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%2 : tensor<32x64xf32>) outs(%1 : tensor<32x64xf32>) {
    ^bb0(%in: f32, %out: f32):
      %12 = arith.subf %in, %cst_0 : f32
      linalg.yield %12 : f32
    } -> tensor<32x64xf32>
    %4 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%3 : tensor<32x64xf32>) outs(%1 : tensor<32x64xf32>) {
    ^bb0(%in: f32, %out: f32):
      %12 = arith.mulf %in, %cst_1 : f32
      linalg.yield %12 : f32
    } -> tensor<32x64xf32>
    %__param_0_bias = util.global.load @__param_0_bias : tensor<32xf32>
    %5 = tensor.empty() : tensor<64x32xf32>
    %transposed = linalg.transpose ins(%4 : tensor<32x64xf32>) outs(%5 : tensor<64x32xf32>) permutation = [1, 0] 
    %6 = tensor.empty() : tensor<4x32xf32>
    %7 = linalg.fill ins(%cst : f32) outs(%6 : tensor<4x32xf32>) -> tensor<4x32xf32>
    // REPORT: rewritten: linalg.matmul at {{.*}}fixture_pt2e_per_tensor.mlir:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8> with zero-point/offset term{{$}}
    %8 = linalg.matmul ins(%0, %transposed : tensor<4x64xf32>, tensor<64x32xf32>) outs(%7 : tensor<4x32xf32>) -> tensor<4x32xf32>
    %9 = linalg.generic {indexing_maps = [#map, #map1, #map], iterator_types = ["parallel", "parallel"]} ins(%8, %__param_0_bias : tensor<4x32xf32>, tensor<32xf32>) outs(%6 : tensor<4x32xf32>) {
    ^bb0(%in: f32, %in_2: f32, %out: f32):
      %12 = arith.addf %in, %in_2 : f32
      linalg.yield %12 : f32
    } -> tensor<4x32xf32>
    %10 = hal.tensor.barrier join(%9 : tensor<4x32xf32>) => %arg2 : !hal.fence
    %11 = hal.tensor.export %10 : tensor<4x32xf32> -> !hal.buffer_view
    util.return %11 : !hal.buffer_view
  }
}
