// RUN: msd-opt %s --msd-decompose-activations="slices=2 gpu-kernel=sm_80" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=3 gpu-kernel=sm_90 gpu-kernel-shape=4x2x4 act-scale=row" | FileCheck %s --check-prefix=SM90
// RUN: msd-opt %s --msd-decompose-activations="slices=2 gpu-kernel=sm_80" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// gpu-kernel: a contraction with int8 slices becomes one dispatch of a tensor-core kernel msd writes in
// PTX (passes/decompose_activations/cuda_kernel.py), carried by a hal.executable.source whose object
// holds the PTX text.  The f32 activation is quantized by a second PTX kernel, one workgroup of 128
// threads per row (cuda_quantize.py: codes [M, 2, K] signed, scales, group sums), the weight
// relaid into mma.sync's B-fragment lane order ([tile, step, lane, 8 bytes], N padded from 24 to 32),
// the scales and offsets into [tile, group, 8]; M goes to the kernel as an i32 push constant, and the
// grid is (tiles / 4, ceil(M / 16), 1) of one warp each (K's 2 steps are too few to share out: _w1; 4
// tiles per warp: _t4).  gpu-kernel-shape=4x2x4 (SM90) asks for 2 tiles per warp.  A batch matmul whose
// batch dim the weight shares is not covered: it keeps the int8-matmul form and the report says why.

// CHECK:       #executable_target_cuda_nvptx_fb = #hal.executable.target<"cuda", "cuda-nvptx-fb">
// CHECK:       #[[MAP:.*]] = affine_map<()[s0] -> (s0 ceildiv 16)>
// CHECK:       hal.executable.source private @msd_cuda_quantize_sm_80_k64_g32_p2_sg_off
// CHECK-SAME:    data = "// msd: MSD activation quantizer
// CHECK-SAME:    red.shared.max.u32
// CHECK:         hal.executable.export public @msd_cuda_quantize_sm_80_k64_g32_p2_sg_off ordinal(0)
// CHECK:         } <workgroup_size = [128 : index, 1 : index, 1 : index]>
// CHECK:       hal.executable.source private @msd_mma_linear_sm_80_n24_k64_g32_p2_sg_off_t4_w1
// CHECK-SAME:    #executable_target_cuda_nvptx_fb
// CHECK-SAME:    data = "// msd: fused MSD linear
// CHECK-SAME:    .target sm_80
// CHECK-SAME:    .visible .entry msd_mma_linear_sm_80_n24_k64_g32_p2_sg_off_t4_w1(
// CHECK-SAME:    mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32
// CHECK:         hal.executable.export public @msd_mma_linear_sm_80_n24_k64_g32_p2_sg_off_t4_w1 ordinal(0)
// CHECK:           %[[X:.*]] = arith.constant 1 : index
// CHECK:           affine.apply #[[MAP]]()
// CHECK:           hal.return %[[X]]
// CHECK:         } <workgroup_size = [32 : index, 1 : index, 1 : index]>
// CHECK-LABEL: util.func public @group_uint8_min
// CHECK:         %[[Q:.*]]:3 = flow.dispatch @msd_cuda_quantize_sm_80_k64_g32_p2_sg_off::@msd_cuda_quantize_sm_80_k64_g32_p2_sg_off[%{{.*}}](%{{.*}}, %{{.*}}) : (tensor<?x64xf32>{%{{.*}}}, i32) -> (tensor<?x2x64xi8>{%{{.*}}}, tensor<?x2xf32>{%{{.*}}}, tensor<?x2xf32>{%{{.*}}})
// CHECK:         linalg.transpose ins({{.*}} : tensor<4x8x2x2x4x4xi8>) outs({{.*}} : tensor<4x2x8x4x2x4xi8>) permutation = [0, 2, 1, 4, 3, 5]
// CHECK:         %[[M:.*]] = arith.index_cast %{{.*}} : index to i32
// CHECK:         flow.dispatch @msd_mma_linear_sm_80_n24_k64_g32_p2_sg_off_t4_w1::@msd_mma_linear_sm_80_n24_k64_g32_p2_sg_off_t4_w1[%{{.*}}](%[[Q]]#0, %[[Q]]#1, %[[Q]]#2, {{.*}}, %[[M]])
// CHECK-SAME:      msd.operand_roles = ["a", "s", "xs", "w", "scale", "off"]
// CHECK-SAME:      (tensor<?x2x64xi8>{%{{.*}}}, tensor<?x2xf32>{%{{.*}}}, tensor<?x2xf32>{%{{.*}}}, tensor<4x2x32x8xi8>, tensor<4x2x8xf32>, tensor<4x2x8xf32>, i32) -> tensor<?x24xf32>
// CHECK-NOT:     linalg.matmul
// CHECK:         util.return
// CHECK-LABEL: util.func public @shared_batch
// CHECK:         linalg.batch_matmul

// SM90:        hal.executable.source private @msd_mma_linear_sm_90_n24_k64_g32_p3_off_t2_w1
// SM90-SAME:     .version 7.8
// SM90-SAME:     .target sm_90
// SM90:        flow.dispatch @msd_mma_linear_sm_90_n24_k64_g32_p3_off_t2_w1
// SM90-SAME:     (tensor<?x3x64xi8>{%{{.*}}}, tensor<?x1xf32>{%{{.*}}}, tensor<?x2xf32>{%{{.*}}}, tensor<4x2x32x8xi8>

// REPORT: rewritten: {{.*}}2 int8 slice(s) x tensor<24x64xi8> in one fused tensor-core (mma.sync int8, sm_80) kernel dispatch
// REPORT: rewritten: {{.*}}fused kernel not used: a batch dim shared by weight and activation
#w = affine_map<(m, n, k) -> (n, k)>
#g = affine_map<(m, n, k) -> (n, k floordiv 32)>
#x = affine_map<(m, n, k) -> (m, k)>
#y = affine_map<(m, n, k) -> (m, n)>

// y = x · Wᵀ, W[n, k] = scale[n, k/32] · q[n, k] + min[n, k/32], q unsigned 8-bit codes (read by uitofp).
util.func public @group_uint8_min(%x: tensor<4x64xf32>, %qs: tensor<24x64xi8>, %s: tensor<24x2xf32>,
                                  %mn: tensor<24x2xf32>) -> tensor<4x24xf32> {
  %e = tensor.empty() : tensor<24x64xf32>
  %w = linalg.generic {indexing_maps = [affine_map<(n, k) -> (n, k)>, affine_map<(n, k) -> (n, k floordiv 32)>,
                                        affine_map<(n, k) -> (n, k floordiv 32)>, affine_map<(n, k) -> (n, k)>],
                       iterator_types = ["parallel", "parallel"]}
      ins(%qs, %s, %mn : tensor<24x64xi8>, tensor<24x2xf32>, tensor<24x2xf32>) outs(%e : tensor<24x64xf32>) {
  ^bb0(%c: i8, %sc: f32, %m: f32, %o: f32):
    %f = arith.uitofp %c : i8 to f32
    %t = arith.mulf %f, %sc : f32
    %r = arith.addf %t, %m : f32
    linalg.yield %r : f32
  } -> tensor<24x64xf32>
  %zero = arith.constant 0.0 : f32
  %y0 = tensor.empty() : tensor<4x24xf32>
  %yf = linalg.fill ins(%zero : f32) outs(%y0 : tensor<4x24xf32>) -> tensor<4x24xf32>
  %y = linalg.matmul indexing_maps = [#x, #w, #y] ins(%x, %w : tensor<4x64xf32>, tensor<24x64xf32>)
                     outs(%yf : tensor<4x24xf32>) -> tensor<4x24xf32>
  util.return %y : tensor<4x24xf32>
}

// A per-head weight (the batch dim b is in x, W and y): not the kernel's [N, K] form.
util.func public @shared_batch(%x: tensor<2x4x64xf32>, %q: tensor<2x64x24xi8>, %s: tensor<2x24xf32>) -> tensor<2x4x24xf32> {
  %e = tensor.empty() : tensor<2x64x24xf32>
  %w = linalg.generic {indexing_maps = [affine_map<(b, k, n) -> (b, k, n)>, affine_map<(b, k, n) -> (b, n)>,
                                        affine_map<(b, k, n) -> (b, k, n)>],
                       iterator_types = ["parallel", "parallel", "parallel"]}
      ins(%q, %s : tensor<2x64x24xi8>, tensor<2x24xf32>) outs(%e : tensor<2x64x24xf32>) {
  ^bb0(%c: i8, %sc: f32, %o: f32):
    %f = arith.sitofp %c : i8 to f32
    %r = arith.mulf %f, %sc : f32
    linalg.yield %r : f32
  } -> tensor<2x64x24xf32>
  %zero = arith.constant 0.0 : f32
  %y0 = tensor.empty() : tensor<2x4x24xf32>
  %yf = linalg.fill ins(%zero : f32) outs(%y0 : tensor<2x4x24xf32>) -> tensor<2x4x24xf32>
  %y = linalg.batch_matmul ins(%x, %w : tensor<2x4x64xf32>, tensor<2x64x24xf32>)
                           outs(%yf : tensor<2x4x24xf32>) -> tensor<2x4x24xf32>
  util.return %y : tensor<2x4x24xf32>
}
