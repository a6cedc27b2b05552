// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// torchao IntxWeightOnlyConfig(int4, PerGroup(32)): signed int4 values stored one per int8, an f32
// scale and an int8 zero point per group of 32 along K (symmetric mapping: the zero points are 0,
// but they are a parameter, so the pass keeps the zero-point term).
//
// Captured from a real export, not written by hand: the linalg IR that msd.compile emits after
// IREE's input phase (weights stay util.global parameters), with torch 2.13.0+cpu, torchao 0.18.0,
// iree-base-compiler 3.13.0, msd 0.1.0, by running in /work/main:
//
//   import torch; from torch import nn; import msd; import torchao.quantization as tq
//   torch.manual_seed(0)
//   model = nn.Sequential(nn.Linear(64, 32))
//   tq.quantize_(model, tq.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=tq.PerGroup(32)))
//   model = model.eval()
//   x = torch.randn(4, 64)
//   print(msd.compile(model, (x,), emit="linalg"))
//
// Edits to the captured text: the `@main` ABI wrapper (fence plumbing around @main$async) and blank
// lines were dropped, and the REPORT line was put above the matmul. Nothing else was changed.

// REPORT: msd-decompose-activations: 1 rewritten, 0 skipped

// CHECK-DAG:   util.global private @__param_0_parametrizations_weight_original0 = #stream.parameter.named<"model"::"0.parametrizations.weight.original0"> : tensor<32x64xi8>
// CHECK-DAG:   util.global private @__param_0_parametrizations_weight_original1 = #stream.parameter.named<"model"::"0.parametrizations.weight.original1"> : tensor<32x2xf32>
// CHECK-DAG:   util.global private @__param_0_parametrizations_weight_original2 = #stream.parameter.named<"model"::"0.parametrizations.weight.original2"> : tensor<32x2xi8>
// CHECK-LABEL: util.func public @main$async(
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[X:[^ :]+]] = hal.tensor.import {{.*}} -> tensor<4x64xf32>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[Q:[^ :]+]] = util.global.load @__param_0_parametrizations_weight_original0 : tensor<32x64xi8>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[ZP:[^ :]+]] = util.global.load @__param_0_parametrizations_weight_original2 : tensor<32x2xi8>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[ZP3:[^ :]+]] = tensor.expand_shape %[[ZP]] {{.*}} : tensor<32x2xi8> into tensor<32x2x1xi8>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[S:[^ :]+]] = util.global.load @__param_0_parametrizations_weight_original1 : tensor<32x2xf32>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[S3:[^ :]+]] = tensor.expand_shape %[[S]] {{.*}} : tensor<32x2xf32> into tensor<32x2x1xf32>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[B:[^ :]+]] = util.global.load @__param_0_bias : tensor<32xf32>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[XG:[^ :]+]] = tensor.expand_shape %[[X]] {{.*}} : tensor<4x64xf32> into tensor<4x2x32xf32>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[QG:[^ :]+]] = tensor.expand_shape %[[Q]] {{.*}} : tensor<32x64xi8> into tensor<32x2x32xi8>
// CHECK-NOT:     {{tensor<32x2x32xf32>|tensor<32x64xf32>|tensor<64x32xf32>}}
// CHECK:         %[[QT:[^ :]+]] = linalg.transpose ins(%[[QG]] : tensor<32x2x32xi8>) outs(%{{.*}} : tensor<2x32x32xi8>) permutation = [1, 0, 2]
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
// CHECK:         %[[Y:[^ :]+]] = linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "reduction"]{{.*}} ins(%[[E]], %[[E]], %[[AMAX]]#0, %[[AMAX]]#1, %[[ZP3]], %[[S3]] : tensor<2x2x4x32xi32>, tensor<2x2x4x32xi32>, tensor<2x4xf32>, tensor<2x4xf32>, tensor<32x2x1xi8>, tensor<32x2x1xf32>) outs(%{{.*}} : tensor<4x32xf32>)
// CHECK-NEXT:    ^bb0(%{{[^:]+}}: i32, %{{[^:]+}}: i32, %{{[^:]+}}: f32, %[[RS:[^:]+]]: f32, %[[Z:[^:]+]]: i8, %[[SC:[^:]+]]: f32, %{{[^:]+}}: f32):
// CHECK:           %[[ZF:[^ :]+]] = arith.sitofp %[[Z]] : i8 to f32
// CHECK:           %[[NZ:[^ :]+]] = arith.negf %[[ZF]] : f32
// CHECK:           %[[SNZ:[^ :]+]] = arith.mulf %[[SC]], %[[NZ]] : f32
// CHECK:           arith.mulf %[[SNZ]], %[[RS]] : f32
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
  util.global private @__param_0_bias = #stream.parameter.named<"model"::"0.bias"> : tensor<32xf32>
  util.global private @__param_0_parametrizations_weight_original1 = #stream.parameter.named<"model"::"0.parametrizations.weight.original1"> : tensor<32x2xf32>
  util.global private @__param_0_parametrizations_weight_original2 = #stream.parameter.named<"model"::"0.parametrizations.weight.original2"> : tensor<32x2xi8>
  util.global private @__param_0_parametrizations_weight_original0 = #stream.parameter.named<"model"::"0.parametrizations.weight.original0"> : tensor<32x64xi8>
  util.func public @main$async(%arg0: !hal.buffer_view, %arg1: !hal.fence, %arg2: !hal.fence) -> !hal.buffer_view attributes {inlining_policy = #util.inline.never, iree.abi.model = "coarse-fences", iree.abi.stub} {
    %cst = arith.constant 0.000000e+00 : f32
    %0 = hal.tensor.import wait(%arg1) => %arg0 : !hal.buffer_view -> tensor<4x64xf32>
    %__param_0_parametrizations_weight_original0 = util.global.load @__param_0_parametrizations_weight_original0 : tensor<32x64xi8>
    %expanded = tensor.expand_shape %__param_0_parametrizations_weight_original0 [[0], [1, 2]] output_shape [32, 2, 32] : tensor<32x64xi8> into tensor<32x2x32xi8>
    %1 = tensor.empty() : tensor<32x2x32xf32>
    %2 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel", "parallel"]} ins(%expanded : tensor<32x2x32xi8>) outs(%1 : tensor<32x2x32xf32>) {
    ^bb0(%in: i8, %out: f32):
      %14 = arith.sitofp %in : i8 to f32
      linalg.yield %14 : f32
    } -> tensor<32x2x32xf32>
    %__param_0_parametrizations_weight_original2 = util.global.load @__param_0_parametrizations_weight_original2 : tensor<32x2xi8>
    %expanded_0 = tensor.expand_shape %__param_0_parametrizations_weight_original2 [[0], [1, 2]] output_shape [32, 2, 1] : tensor<32x2xi8> into tensor<32x2x1xi8>
    %3 = tensor.empty() : tensor<32x2x1xf32>
    %4 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel", "parallel"]} ins(%expanded_0 : tensor<32x2x1xi8>) outs(%3 : tensor<32x2x1xf32>) {
    ^bb0(%in: i8, %out: f32):
      %14 = arith.sitofp %in : i8 to f32
      linalg.yield %14 : f32
    } -> tensor<32x2x1xf32>
    %5 = linalg.generic {indexing_maps = [#map, #map1, #map], iterator_types = ["parallel", "parallel", "parallel"]} ins(%2, %4 : tensor<32x2x32xf32>, tensor<32x2x1xf32>) outs(%1 : tensor<32x2x32xf32>) {
    ^bb0(%in: f32, %in_2: f32, %out: f32):
      %14 = arith.subf %in, %in_2 : f32
      linalg.yield %14 : f32
    } -> tensor<32x2x32xf32>
    %__param_0_parametrizations_weight_original1 = util.global.load @__param_0_parametrizations_weight_original1 : tensor<32x2xf32>
    %expanded_1 = tensor.expand_shape %__param_0_parametrizations_weight_original1 [[0], [1, 2]] output_shape [32, 2, 1] : tensor<32x2xf32> into tensor<32x2x1xf32>
    %6 = linalg.generic {indexing_maps = [#map, #map1, #map], iterator_types = ["parallel", "parallel", "parallel"]} ins(%5, %expanded_1 : tensor<32x2x32xf32>, tensor<32x2x1xf32>) outs(%1 : tensor<32x2x32xf32>) {
    ^bb0(%in: f32, %in_2: f32, %out: f32):
      %14 = arith.mulf %in, %in_2 : f32
      linalg.yield %14 : f32
    } -> tensor<32x2x32xf32>
    %collapsed = tensor.collapse_shape %6 [[0], [1, 2]] : tensor<32x2x32xf32> into tensor<32x64xf32>
    %__param_0_bias = util.global.load @__param_0_bias : tensor<32xf32>
    %7 = tensor.empty() : tensor<64x32xf32>
    %transposed = linalg.transpose ins(%collapsed : tensor<32x64xf32>) outs(%7 : tensor<64x32xf32>) permutation = [1, 0] 
    %8 = tensor.empty() : tensor<4x32xf32>
    %9 = linalg.fill ins(%cst : f32) outs(%8 : tensor<4x32xf32>) -> tensor<4x32xf32>
    // REPORT: rewritten: linalg.matmul at {{.*}}fixture_torchao_intx_int4_group32.mlir:[[# @LINE + 1]]: 2 int8 slice(s) x tensor<32x64xi8>, K in groups of 32 (activation scale per group) with zero-point/offset term{{$}}
    %10 = linalg.matmul ins(%0, %transposed : tensor<4x64xf32>, tensor<64x32xf32>) outs(%9 : tensor<4x32xf32>) -> tensor<4x32xf32>
    %11 = linalg.generic {indexing_maps = [#map2, #map3, #map2], iterator_types = ["parallel", "parallel"]} ins(%10, %__param_0_bias : tensor<4x32xf32>, tensor<32xf32>) outs(%8 : tensor<4x32xf32>) {
    ^bb0(%in: f32, %in_2: f32, %out: f32):
      %14 = arith.addf %in, %in_2 : f32
      linalg.yield %14 : f32
    } -> tensor<4x32xf32>
    %12 = hal.tensor.barrier join(%11 : tensor<4x32xf32>) => %arg2 : !hal.fence
    %13 = hal.tensor.export %12 : tensor<4x32xf32> -> !hal.buffer_view
    util.return %13 : !hal.buffer_view
  }
}
