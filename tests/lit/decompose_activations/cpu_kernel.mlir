// RUN: msd-opt %s --msd-decompose-activations="slices=2 cpu-kernel=avx512-vnni" | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=3 cpu-kernel=avx-vnni act-scale=row" | FileCheck %s --check-prefix=YMM
// RUN: msd-opt %s --msd-decompose-activations="slices=1 cpu-kernel=avx2" | FileCheck %s --check-prefix=AVX2
// RUN: msd-opt %s --msd-decompose-activations="slices=2 cpu-kernel=neon-dot" | FileCheck %s --check-prefix=ARM
// RUN: msd-opt %s --msd-decompose-activations="slices=2 cpu-kernel=neon-i8mm" | FileCheck %s --check-prefix=I8MM
// RUN: msd-opt %s --msd-decompose-activations="slices=2 cpu-kernel=avx512-vnni" --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT
// RUN: msd-opt %s --msd-decompose-activations="slices=2 cpu-kernel=amx-int8" | FileCheck %s --check-prefix=AMX

// cpu-kernel: a contraction with int8 slices becomes one fused kernel dispatch.  The kernel is a
// stream.executable named after its static shape (N=24, K=64, groups of 32, slices, scale per
// group, offset); the f32 activation is quantized by one dispatch of msd's quantize kernel (signed
// codes of every slice, scales per row and group, group sums for the offset, and -128·Σcodes per
// row, slice and group: the accumulators' start, as VNNI reads the weight codes +128 as its unsigned
// bytes), the weight relaid into 16-channel tiles (padded from 24 to 32 rows) and biased, and one
// epilogue.  No int8 matmul and no per-group partials are left.  A batch matmul whose batch dim the
// weight shares is not covered: it keeps the int8-matmul form and the report says why.

// CHECK:       stream.executable private @msd_quantize_k64_g32_p2_sg_off_wb128
// CHECK:         llvm.call_intrinsic "llvm.roundeven.v32f32"({{.*}}) : (vector<32xf32>) -> vector<32xf32>
// CHECK:       stream.executable private @msd_linear_avx512_vnni_n24_k64_g32_p2_sg_off_r4_c2_w1
// CHECK:       llvm.call_intrinsic "llvm.x86.avx512.vpdpbusd.512"
// CHECK-SAME:    (vector<16xi32>, vector<64xi8>, vector<64xi8>) -> vector<16xi32>
// CHECK:       vector.maskedstore
// CHECK-LABEL: util.func public @group_uint8_min
// CHECK:         %[[Q:.*]]:4 = flow.dispatch @msd_quantize_k64_g32_p2_sg_off_wb128::@msd_quantize_k64_g32_p2_sg_off_wb128[%{{.*}}]({{.*}}) : (tensor<?x64xf32>{%{{.*}}}, index) -> (tensor<?x2x64xi8>{%{{.*}}}, tensor<?x2xf32>{%{{.*}}}, tensor<?x2xf32>{%{{.*}}}, tensor<?x2x2xi32>{%{{.*}}})
// CHECK:         tensor.insert_slice {{.*}} into tensor<32x64xi8>
// CHECK:         linalg.transpose ins({{.*}} : tensor<2x16x2x8x4xi8>) outs({{.*}} : tensor<2x2x8x16x4xi8>) permutation = [0, 2, 3, 1, 4]
// CHECK:         flow.dispatch @msd_linear_avx512_vnni_n24_k64_g32_p2_sg_off_r4_c2_w1::@msd_linear_avx512_vnni_n24_k64_g32_p2_sg_off_r4_c2_w1[{{.*}}](%[[Q]]#0, %[[Q]]#1, %[[Q]]#2, %[[Q]]#3,
// CHECK-SAME:      (tensor<?x2x64xi8>{%{{.*}}}, tensor<?x2xf32>{%{{.*}}}, tensor<?x2xf32>{%{{.*}}}, tensor<?x2x2xi32>{%{{.*}}}, tensor<2x2x8x64xi8>, tensor<2x2x16xf32>, tensor<2x2x16xf32>, index) -> tensor<?x24xf32>
// CHECK-NOT:     linalg.matmul
// CHECK:         util.return
// CHECK-LABEL: util.func public @shared_batch
// CHECK:         linalg.batch_matmul

// YMM:         stream.executable private @msd_linear_avx_vnni_n24_k64_g32_p3_off_r2_c1_w3
// YMM:         llvm.call_intrinsic "llvm.x86.avx512.vpdpbusd.256"
// YMM-SAME:      (vector<8xi32>, vector<32xi8>, vector<32xi8>) -> vector<8xi32>
// YMM:         flow.dispatch @msd_quantize_k64_g32_p3_off_wb128
// YMM:         flow.dispatch @msd_linear_
// YMM-SAME:      (tensor<?x3x64xi8>{%{{.*}}}, tensor<?x1xf32>{%{{.*}}}, tensor<?x2xf32>{%{{.*}}}, tensor<?x3x2xi32>{%{{.*}}}, tensor<3x2x8x32xi8>

// AVX2 takes the signed codes: no accumulator-start operand; |w| × sign(w)·a, then pairs to i32.
// AVX2:         stream.executable private @msd_linear_avx2_n24_k64_g32_p1_sg_off_r2_c1_w3
// AVX2:         math.absi {{.*}} : vector<32xi8>
// AVX2:         llvm.call_intrinsic "llvm.x86.avx2.psign.b"
// AVX2:         llvm.call_intrinsic "llvm.x86.avx2.pmadd.ub.sw"
// AVX2:         llvm.call_intrinsic "llvm.x86.avx2.pmadd.wd"
// AVX2:         flow.dispatch @msd_quantize_k64_g32_p1_sg_off{{$|::}}
// AVX2:         flow.dispatch @msd_linear_
// AVX2-SAME:      (tensor<?x1x64xi8>{%{{.*}}}, tensor<?x2xf32>{%{{.*}}}, tensor<?x2xf32>{%{{.*}}}, tensor<3x2x8x32xi8>, tensor<3x2x8xf32>, tensor<3x2x8xf32>, index) -> tensor<?x24xf32>

// ARM:         stream.executable private @msd_linear_neon_dot_n24_k64_g32_p2_sg_off_r4_c2_w3
// ARM:         llvm.call_intrinsic "llvm.aarch64.neon.sdot.v4i32.v16i8"
// ARM-SAME:      (vector<4xi32>, vector<16xi8>, vector<16xi8>) -> vector<4xi32>
// ARM:         flow.dispatch @msd_linear_
// ARM-SAME:      tensor<6x2x8x16xi8>, tensor<6x2x4xf32>

// Arm int8 matrix multiply: (row, slice) units in pairs × 8 codes × channel pairs; a weight step of a
// 4-channel tile is 32 bytes (two channel pairs × 2 channels × 8 codes).
// I8MM:        stream.executable private @msd_linear_neon_i8mm_n24_k64_g32_p2_sg_off_r4_c2_w3
// I8MM:        llvm.call_intrinsic "llvm.aarch64.neon.smmla.v4i32.v16i8"
// I8MM-SAME:     (vector<4xi32>, vector<16xi8>, vector<16xi8>) -> vector<4xi32>
// I8MM:        vector.shuffle {{.*}} [0, 1, 4, 5] : vector<4xi32>, vector<4xi32>
// I8MM:        flow.dispatch @msd_linear_
// I8MM-SAME:     tensor<6x2x4x32xi8>, tensor<6x2x4xf32>

// REPORT: 2 rewritten, 0 skipped
// REPORT: rewritten: {{.*}}2 int8 slice(s) x tensor<24x64xi8> in one fused avx512-vnni kernel dispatch (unsigned weight as q-128), K in groups of 32
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

// amx-int8: the same operands; the kernel asks Linux for the tile state (an arch_prctl system call),
// configures the tiles, multiplies 16-row blocks on them (8-bit weight codes read in place, unsigned:
// tdpbsud), stores each group's i32 results for the f32 steps, and runs the rows left over on VNNI.
// Its stack buffers (tile configuration, stored results) lie on cache lines.
// AMX:       stream.executable private @msd_linear_amx_int8_n24_k64_g32_p2_sg_off_r4_c2_w1
// AMX:         llvm.inline_asm has_side_effects asm_dialect = att "syscall"
// AMX-COUNT-3: memref.alloca() alignment = 64
// AMX:         llvm.call_intrinsic "llvm.x86.ldtilecfg"
// AMX-COUNT-4:     llvm.call_intrinsic "llvm.x86.tdpbsud"
// AMX-COUNT-4:     llvm.call_intrinsic "llvm.x86.tilestored64"
// AMX:             llvm.call_intrinsic "llvm.x86.avx512.vpdpbusd.512"
// AMX:         llvm.call_intrinsic "llvm.x86.tilerelease"
