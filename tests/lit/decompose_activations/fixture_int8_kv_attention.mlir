// RUN: msd-opt %s --msd-decompose-activations="slices=2" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// Decode attention over an int8 KV cache (one f32 scale per head and token), the form
// msd.compiler.models.gguf writes for kv_cache="int8": grouped-query heads stacked along the rows
// ([kv_heads, group·S, ·]). Both contractions become int8 matmuls against the cached codes:
// - q·Kᵀ: the K scale varies along the tokens (N here): an epilogue factor;
// - P·V: the V scale varies along the tokens (K here): folded into P before the slices.
// The mask and the softmax stay in f32 between them.
//
// Captured from a real export, not written by hand: the linalg IR that msd.compile emits after
// IREE's input phase, with torch 2.13.0+cpu, iree-base-compiler 3.13.0, msd 0.1.0, by running:
//
//   import math, torch; from torch import nn; import msd
//   class Int8KVAttention(nn.Module):
//       def forward(self, q, k_codes, k_scales, v_codes, v_scales, mask):
//           k = k_codes.to(torch.float32) * k_scales.unsqueeze(-1)
//           v = v_codes.to(torch.float32) * v_scales.unsqueeze(-1)
//           scores = torch.matmul(q, k.transpose(1, 2)) / math.sqrt(q.shape[-1]) + mask
//           return torch.matmul(torch.softmax(scores, dim=-1), v)
//   torch.manual_seed(0)
//   H, G, T, D = 2, 2, 64, 32
//   args = (torch.randn(H, G, D), torch.randint(-127, 128, (H, T, D), dtype=torch.int8), torch.rand(H, T) / 100,
//           torch.randint(-127, 128, (H, T, D), dtype=torch.int8), torch.rand(H, T) / 100, torch.zeros(1, 1, T))
//   print(msd.compile(Int8KVAttention(), args, emit="linalg"))
//
// Edits to the captured text: the `@main` ABI wrapper and blank lines were dropped.

// REPORT: msd-decompose-activations: 2 rewritten, 0 skipped
// REPORT: rewritten: linalg.batch_matmul at {{.*}}: 2 int8 slice(s) x tensor<2x64x32xi8>
// REPORT: rewritten: linalg.batch_matmul at {{.*}}: 2 int8 slice(s) x tensor<2x64x32xi8>; per-K scale folded into the activation

// CHECK-LABEL: util.func public @main$async(
// CHECK:         %[[Q:[^ :]+]] = hal.tensor.import {{.*}} -> tensor<2x2x32xf32>
// CHECK:         %[[KC:[^ :]+]] = hal.tensor.import {{.*}} -> tensor<2x64x32xi8>
// CHECK:         %[[KS:[^ :]+]] = hal.tensor.import {{.*}} -> tensor<2x64xf32>
// CHECK:         %[[VC:[^ :]+]] = hal.tensor.import {{.*}} -> tensor<2x64x32xi8>
// CHECK:         %[[VS:[^ :]+]] = hal.tensor.import {{.*}} -> tensor<2x64xf32>
// CHECK-NOT:     tensor<2x64x32xf32>
// q·Kᵀ: slices of q (2 per row) against the int8 K codes, the K scale in the epilogue.
// CHECK:         linalg.batch_matmul{{.*}} ins(%{{.*}}, %[[KC]] : tensor<2x4x32xi8>, tensor<2x64x32xi8>) outs(%{{.*}} : tensor<2x4x64xi32>)
// CHECK:         linalg.generic {{.*}} ins({{.*}}%[[KS]]{{.*}}) outs(%{{.*}} : tensor<2x2x64xf32>)
// The softmax, in f32.
// CHECK:           math.exp
// CHECK:         %[[P:[^ :]+]] = linalg.generic {{.*}} outs(%{{.*}} : tensor<2x2x64xf32>)
// CHECK-NEXT:    ^bb0
// CHECK-NEXT:      arith.divf
// P · V scale (per token), then its slices against the int8 V codes.
// CHECK:         %[[PS:[^ :]+]] = linalg.generic {{.*}} ins(%[[P]], %[[VS]] : tensor<2x2x64xf32>, tensor<2x64xf32>) outs(%{{.*}} : tensor<2x2x64xf32>)
// CHECK-NEXT:    ^bb0
// CHECK-NEXT:      arith.mulf
// CHECK:         linalg.batch_matmul{{.*}} ins(%{{.*}}, %[[VC]] : tensor<2x4x64xi8>, tensor<2x64x32xi8>) outs(%{{.*}} : tensor<2x4x32xi32>)
// CHECK-NOT:     tensor<2x64x32xf32>
// CHECK:         util.return

#map = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
#map1 = affine_map<(d0, d1, d2) -> (d0, d1, 0)>
#map2 = affine_map<(d0, d1, d2) -> (0, 0, d2)>
#map3 = affine_map<(d0, d1, d2) -> (d0, d1)>
module {
  util.func public @main$async(%arg0: !hal.buffer_view, %arg1: !hal.buffer_view, %arg2: !hal.buffer_view, %arg3: !hal.buffer_view, %arg4: !hal.buffer_view, %arg5: !hal.buffer_view, %arg6: !hal.fence, %arg7: !hal.fence) -> !hal.buffer_view attributes {inlining_policy = #util.inline.never, iree.abi.model = "coarse-fences", iree.abi.stub} {
    %cst = arith.constant 0.000000e+00 : f32
    %c0_i64 = arith.constant 0 : i64
    %cst_0 = arith.constant 0xFF800000 : f32
    %cst_1 = arith.constant 5.65685415 : f32
    %0 = hal.tensor.import wait(%arg6) => %arg0 : !hal.buffer_view -> tensor<2x2x32xf32>
    %1 = hal.tensor.import wait(%arg6) => %arg1 : !hal.buffer_view -> tensor<2x64x32xi8>
    %2 = hal.tensor.import wait(%arg6) => %arg2 : !hal.buffer_view -> tensor<2x64xf32>
    %3 = hal.tensor.import wait(%arg6) => %arg3 : !hal.buffer_view -> tensor<2x64x32xi8>
    %4 = hal.tensor.import wait(%arg6) => %arg4 : !hal.buffer_view -> tensor<2x64xf32>
    %5 = hal.tensor.import wait(%arg6) => %arg5 : !hal.buffer_view -> tensor<1x1x64xf32>
    %6 = tensor.empty() : tensor<2x64x32xf32>
    %7 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel", "parallel"]} ins(%1 : tensor<2x64x32xi8>) outs(%6 : tensor<2x64x32xf32>) {
    ^bb0(%in: i8, %out: f32):
      %33 = arith.sitofp %in : i8 to f32
      linalg.yield %33 : f32
    } -> tensor<2x64x32xf32>
    %expanded = tensor.expand_shape %2 [[0], [1, 2]] output_shape [2, 64, 1] : tensor<2x64xf32> into tensor<2x64x1xf32>
    %8 = linalg.generic {indexing_maps = [#map, #map1, #map], iterator_types = ["parallel", "parallel", "parallel"]} ins(%7, %expanded : tensor<2x64x32xf32>, tensor<2x64x1xf32>) outs(%6 : tensor<2x64x32xf32>) {
    ^bb0(%in: f32, %in_4: f32, %out: f32):
      %33 = arith.mulf %in, %in_4 : f32
      linalg.yield %33 : f32
    } -> tensor<2x64x32xf32>
    %9 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel", "parallel"]} ins(%3 : tensor<2x64x32xi8>) outs(%6 : tensor<2x64x32xf32>) {
    ^bb0(%in: i8, %out: f32):
      %33 = arith.sitofp %in : i8 to f32
      linalg.yield %33 : f32
    } -> tensor<2x64x32xf32>
    %expanded_2 = tensor.expand_shape %4 [[0], [1, 2]] output_shape [2, 64, 1] : tensor<2x64xf32> into tensor<2x64x1xf32>
    %10 = linalg.generic {indexing_maps = [#map, #map1, #map], iterator_types = ["parallel", "parallel", "parallel"]} ins(%9, %expanded_2 : tensor<2x64x32xf32>, tensor<2x64x1xf32>) outs(%6 : tensor<2x64x32xf32>) {
    ^bb0(%in: f32, %in_4: f32, %out: f32):
      %33 = arith.mulf %in, %in_4 : f32
      linalg.yield %33 : f32
    } -> tensor<2x64x32xf32>
    %11 = tensor.empty() : tensor<2x32x64xf32>
    %transposed = linalg.transpose ins(%8 : tensor<2x64x32xf32>) outs(%11 : tensor<2x32x64xf32>) permutation = [0, 2, 1] 
    %12 = tensor.empty() : tensor<2x2x64xf32>
    %13 = linalg.fill ins(%cst : f32) outs(%12 : tensor<2x2x64xf32>) -> tensor<2x2x64xf32>
    %14 = linalg.batch_matmul ins(%0, %transposed : tensor<2x2x32xf32>, tensor<2x32x64xf32>) outs(%13 : tensor<2x2x64xf32>) -> tensor<2x2x64xf32>
    %15 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel", "parallel"]} ins(%14 : tensor<2x2x64xf32>) outs(%12 : tensor<2x2x64xf32>) {
    ^bb0(%in: f32, %out: f32):
      %33 = arith.divf %in, %cst_1 : f32
      linalg.yield %33 : f32
    } -> tensor<2x2x64xf32>
    %16 = linalg.generic {indexing_maps = [#map, #map2, #map], iterator_types = ["parallel", "parallel", "parallel"]} ins(%15, %5 : tensor<2x2x64xf32>, tensor<1x1x64xf32>) outs(%12 : tensor<2x2x64xf32>) {
    ^bb0(%in: f32, %in_4: f32, %out: f32):
      %33 = arith.addf %in, %in_4 : f32
      linalg.yield %33 : f32
    } -> tensor<2x2x64xf32>
    %17 = tensor.empty() : tensor<2x2xi64>
    %18 = linalg.fill ins(%c0_i64 : i64) outs(%17 : tensor<2x2xi64>) -> tensor<2x2xi64>
    %19 = tensor.empty() : tensor<2x2xf32>
    %20 = linalg.fill ins(%cst_0 : f32) outs(%19 : tensor<2x2xf32>) -> tensor<2x2xf32>
    %21:2 = linalg.generic {indexing_maps = [#map, #map3, #map3], iterator_types = ["parallel", "parallel", "reduction"]} ins(%16 : tensor<2x2x64xf32>) outs(%20, %18 : tensor<2x2xf32>, tensor<2x2xi64>) {
    ^bb0(%in: f32, %out: f32, %out_4: i64):
      %33 = linalg.index 2 : index
      %34 = arith.index_cast %33 : index to i64
      %35 = arith.maximumf %in, %out : f32
      %36 = arith.cmpf ogt, %in, %out : f32
      %37 = arith.select %36, %34, %out_4 : i64
      linalg.yield %35, %37 : f32, i64
    } -> (tensor<2x2xf32>, tensor<2x2xi64>)
    %expanded_3 = tensor.expand_shape %21#0 [[0], [1, 2]] output_shape [2, 2, 1] : tensor<2x2xf32> into tensor<2x2x1xf32>
    %22 = linalg.generic {indexing_maps = [#map, #map1, #map], iterator_types = ["parallel", "parallel", "parallel"]} ins(%16, %expanded_3 : tensor<2x2x64xf32>, tensor<2x2x1xf32>) outs(%12 : tensor<2x2x64xf32>) {
    ^bb0(%in: f32, %in_4: f32, %out: f32):
      %33 = arith.subf %in, %in_4 : f32
      linalg.yield %33 : f32
    } -> tensor<2x2x64xf32>
    %23 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel", "parallel"]} ins(%22 : tensor<2x2x64xf32>) outs(%12 : tensor<2x2x64xf32>) {
    ^bb0(%in: f32, %out: f32):
      %33 = math.exp %in : f32
      linalg.yield %33 : f32
    } -> tensor<2x2x64xf32>
    %24 = tensor.empty() : tensor<2x2x1xf32>
    %25 = linalg.fill ins(%cst : f32) outs(%24 : tensor<2x2x1xf32>) -> tensor<2x2x1xf32>
    %26 = linalg.generic {indexing_maps = [#map, #map1], iterator_types = ["parallel", "parallel", "reduction"]} ins(%23 : tensor<2x2x64xf32>) outs(%25 : tensor<2x2x1xf32>) {
    ^bb0(%in: f32, %out: f32):
      %33 = arith.addf %in, %out : f32
      linalg.yield %33 : f32
    } -> tensor<2x2x1xf32>
    %27 = linalg.generic {indexing_maps = [#map, #map1, #map], iterator_types = ["parallel", "parallel", "parallel"]} ins(%23, %26 : tensor<2x2x64xf32>, tensor<2x2x1xf32>) outs(%12 : tensor<2x2x64xf32>) {
    ^bb0(%in: f32, %in_4: f32, %out: f32):
      %33 = arith.divf %in, %in_4 : f32
      linalg.yield %33 : f32
    } -> tensor<2x2x64xf32>
    %28 = tensor.empty() : tensor<2x2x32xf32>
    %29 = linalg.fill ins(%cst : f32) outs(%28 : tensor<2x2x32xf32>) -> tensor<2x2x32xf32>
    %30 = linalg.batch_matmul ins(%27, %10 : tensor<2x2x64xf32>, tensor<2x64x32xf32>) outs(%29 : tensor<2x2x32xf32>) -> tensor<2x2x32xf32>
    %31 = hal.tensor.barrier join(%30 : tensor<2x2x32xf32>) => %arg7 : !hal.fence
    %32 = hal.tensor.export %31 : tensor<2x2x32xf32> -> !hal.buffer_view
    util.return %32 : !hal.buffer_view
  }
}
