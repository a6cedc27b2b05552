// RUN: msd-opt %s --msd-decompose-activations="slices=2 cpu-kernel=avx512-vnni" \
// RUN:   --pass-pipeline='builtin.module(canonicalize,cse)' | FileCheck %s

// The activation quantizer absorbs the kernel that made its rows.  When a linear's f32 activation is a
// row kernel's result (--msd-row-kernels: here a residual add and RMSNorm) or a decode attention's
// combination of its splits (--msd-attention-kernels), through reshapes only, the quantizer is emitted
// with that kernel as its prologue: one dispatch, placed where the producer was, reads the producer's
// inputs, computes the row chunk by chunk and quantizes it.  add_rms_norm's sum (the residual stream)
// is then read from the quantizer's extra result; the producer's dispatch is left without users (and
// goes with the canonicalization that follows the pass).

// CHECK:       stream.executable private @msd_quantize_k128_g128_p2_wb128_combine_b1_h2_g2_d32_s4
// CHECK:         math.exp
// CHECK:         arith.divf {{.*}} : vector<32xf32>
// CHECK:         llvm.call_intrinsic "llvm.roundeven.v32f32"
// CHECK:       stream.executable private @msd_quantize_k64_g64_p2_wb128_add_rms_norm_k64_e3727c5ac
// CHECK:         math.rsqrt
// CHECK:         llvm.call_intrinsic "llvm.roundeven.v32f32"
// CHECK-LABEL: util.func public @norm_then_linear
// CHECK-SAME:      (%[[X:.*]]: tensor<?x64xf32>, %[[R:.*]]: tensor<?x64xf32>, %[[W:.*]]: tensor<64xf32>,
// CHECK:         %[[M:.*]] = tensor.dim %[[X]]
// CHECK:         %[[Q:.*]]:4 = flow.dispatch @msd_quantize_k64_g64_p2_wb128_add_rms_norm_k64_e3727c5ac::@msd_quantize_k64_g64_p2_wb128_add_rms_norm_k64_e3727c5ac[%[[M]]](%[[X]], %[[R]], %[[W]], %[[M]]) : (tensor<?x64xf32>{%[[M]]}, tensor<?x64xf32>{%[[M]]}, tensor<64xf32>, index) -> (tensor<?x2x64xi8>{%[[M]]}, tensor<?x1xf32>{%[[M]]}, tensor<?x2x1xi32>{%[[M]]}, tensor<?x64xf32>{%[[M]]})
// CHECK-NOT:     flow.dispatch @msd_row_
// CHECK:         %[[Y:.*]] = flow.dispatch @msd_linear_avx512_vnni_n24_k64_g64_p2_r4_c2_w1::{{.*}}(%[[Q]]#0, %[[Q]]#1,
// CHECK:         util.return %[[Q]]#3, %[[Y]]

// CHECK-LABEL: util.func public @attention_then_linear
// CHECK:         %[[A:.*]]:2 = flow.dispatch @msd_decode_attention_b1_h2_g2_d32_l2_s4::
// CHECK:         %[[QA:.*]]:3 = flow.dispatch @msd_quantize_k128_g128_p2_wb128_combine_b1_h2_g2_d32_s4::{{.*}}(%[[A]]#0, %[[A]]#1, %{{.*}}) : (tensor<1x2x4x2x32xf32>, tensor<1x2x4x2x2xf32>, index) -> (tensor<?x2x128xi8>{%{{.*}}}, tensor<?x1xf32>{%{{.*}}}, tensor<?x2x1xi32>{%{{.*}}})
// CHECK-NOT:     _combine::
// CHECK:         flow.dispatch @msd_linear_avx512_vnni_n24_k128_g128_p2_r4_c2_w1::{{.*}}(%[[QA]]#0, %[[QA]]#1,

// CHECK-LABEL: util.func public @norm_read_elsewhere
// CHECK:         flow.dispatch @msd_quantize_k64_g64_p2_wb128_add_rms_norm_k64_e3727c5ac::
// CHECK:         %[[N:.*]]:2 = flow.dispatch @msd_row_add_rms_norm_k64_e3727c5ac::
// CHECK:         util.return %{{.*}}, %{{.*}}, %[[N]]#1

#w = affine_map<(m, n, k) -> (n, k)>
#x = affine_map<(m, n, k) -> (m, k)>
#y = affine_map<(m, n, k) -> (m, n)>

// (h, y) = add_rms_norm(x, r, w); out = y · Wᵀ with W = s[n] · q[n, k] (int8 per channel).
util.func public @norm_then_linear(%x: tensor<?x64xf32>, %r: tensor<?x64xf32>, %w: tensor<64xf32>,
                                   %q0: tensor<24x64xi8>, %s0: tensor<24xf32>) -> (tensor<?x64xf32>, tensor<?x24xf32>) {
  %c0 = arith.constant 0 : index
  %m = tensor.dim %x, %c0 : tensor<?x64xf32>
  %n:2 = flow.dispatch @msd_row_add_rms_norm_k64_e3727c5ac::@msd_row_add_rms_norm_k64_e3727c5ac[%m](%x, %r, %w, %m)
      : (tensor<?x64xf32>{%m}, tensor<?x64xf32>{%m}, tensor<64xf32>, index) -> (tensor<?x64xf32>{%m}, tensor<?x64xf32>{%m})
  %e0 = tensor.empty() : tensor<24x64xf32>
  %w0 = linalg.generic {indexing_maps = [affine_map<(n, k) -> (n, k)>, affine_map<(n, k) -> (n)>, affine_map<(n, k) -> (n, k)>],
                       iterator_types = ["parallel", "parallel"]}
      ins(%q0, %s0 : tensor<24x64xi8>, tensor<24xf32>) outs(%e0 : tensor<24x64xf32>) {
  ^bb0(%c: i8, %sc: f32, %o: f32):
    %f = arith.sitofp %c : i8 to f32
    %t = arith.mulf %f, %sc : f32
    linalg.yield %t : f32
  } -> tensor<24x64xf32>
  %zero0 = arith.constant 0.0 : f32
  %y00 = tensor.empty(%m) : tensor<?x24xf32>
  %yf0 = linalg.fill ins(%zero0 : f32) outs(%y00 : tensor<?x24xf32>) -> tensor<?x24xf32>
  %y0 = linalg.matmul indexing_maps = [#x, #w, #y] ins(%n#1, %w0 : tensor<?x64xf32>, tensor<24x64xf32>)
                     outs(%yf0 : tensor<?x24xf32>) -> tensor<?x24xf32>
  util.return %n#0, %y0 : tensor<?x64xf32>, tensor<?x24xf32>
}

// One decode step's attention (its splits' accumulators and statistics), combined, as rows [1, 128]
// (2 KV heads × 2 query heads each × 32): the combination becomes the quantizer's prologue.
util.func public @attention_then_linear(%qh: tensor<1x2x2x32xf32>, %kc: tensor<?x2x1x2x32xf32>, %vc: tensor<?x2x1x2x32xf32>,
                                        %kn: tensor<1x2x1x32xf32>, %vn: tensor<1x2x1x32xf32>,
                                        %q1: tensor<24x128xi8>, %s1: tensor<24xf32>) -> tensor<1x24xf32> {
  %c0 = arith.constant 0 : index
  %tk = tensor.dim %kc, %c0 : tensor<?x2x1x2x32xf32>
  %p:2 = flow.dispatch @msd_decode_attention_b1_h2_g2_d32_l2_s4::@msd_decode_attention_b1_h2_g2_d32_l2_s4[%tk](%qh, %kc, %vc, %kn, %vn, %tk, %c0)
      : (tensor<1x2x2x32xf32>, tensor<?x2x1x2x32xf32>{%tk}, tensor<?x2x1x2x32xf32>{%tk}, tensor<1x2x1x32xf32>, tensor<1x2x1x32xf32>, index, index)
      -> (tensor<1x2x4x2x32xf32>, tensor<1x2x4x2x2xf32>)
  %att = flow.dispatch @msd_decode_attention_b1_h2_g2_d32_l2_s4_combine::@msd_decode_attention_b1_h2_g2_d32_l2_s4_combine[%tk](%p#0, %p#1)
      : (tensor<1x2x4x2x32xf32>, tensor<1x2x4x2x2xf32>) -> tensor<1x2x2x32xf32>
  %rows = tensor.collapse_shape %att [[0], [1, 2, 3]] : tensor<1x2x2x32xf32> into tensor<1x128xf32>
  %e1 = tensor.empty() : tensor<24x128xf32>
  %w1 = linalg.generic {indexing_maps = [affine_map<(n, k) -> (n, k)>, affine_map<(n, k) -> (n)>, affine_map<(n, k) -> (n, k)>],
                       iterator_types = ["parallel", "parallel"]}
      ins(%q1, %s1 : tensor<24x128xi8>, tensor<24xf32>) outs(%e1 : tensor<24x128xf32>) {
  ^bb0(%c: i8, %sc: f32, %o: f32):
    %f = arith.sitofp %c : i8 to f32
    %t = arith.mulf %f, %sc : f32
    linalg.yield %t : f32
  } -> tensor<24x128xf32>
  %zero1 = arith.constant 0.0 : f32
  %y01 = tensor.empty() : tensor<1x24xf32>
  %yf1 = linalg.fill ins(%zero1 : f32) outs(%y01 : tensor<1x24xf32>) -> tensor<1x24xf32>
  %y1 = linalg.matmul indexing_maps = [#x, #w, #y] ins(%rows, %w1 : tensor<1x128xf32>, tensor<24x128xf32>)
                     outs(%yf1 : tensor<1x24xf32>) -> tensor<1x24xf32>
  util.return %y1 : tensor<1x24xf32>
}

// The norm is also returned: its dispatch stays for that reader (the quantizer recomputes the row).
util.func public @norm_read_elsewhere(%x: tensor<?x64xf32>, %r: tensor<?x64xf32>, %w: tensor<64xf32>,
                                      %q2: tensor<24x64xi8>, %s2: tensor<24xf32>)
    -> (tensor<?x64xf32>, tensor<?x24xf32>, tensor<?x64xf32>) {
  %c0 = arith.constant 0 : index
  %m = tensor.dim %x, %c0 : tensor<?x64xf32>
  %n:2 = flow.dispatch @msd_row_add_rms_norm_k64_e3727c5ac::@msd_row_add_rms_norm_k64_e3727c5ac[%m](%x, %r, %w, %m)
      : (tensor<?x64xf32>{%m}, tensor<?x64xf32>{%m}, tensor<64xf32>, index) -> (tensor<?x64xf32>{%m}, tensor<?x64xf32>{%m})
  %e2 = tensor.empty() : tensor<24x64xf32>
  %w2 = linalg.generic {indexing_maps = [affine_map<(n, k) -> (n, k)>, affine_map<(n, k) -> (n)>, affine_map<(n, k) -> (n, k)>],
                       iterator_types = ["parallel", "parallel"]}
      ins(%q2, %s2 : tensor<24x64xi8>, tensor<24xf32>) outs(%e2 : tensor<24x64xf32>) {
  ^bb0(%c: i8, %sc: f32, %o: f32):
    %f = arith.sitofp %c : i8 to f32
    %t = arith.mulf %f, %sc : f32
    linalg.yield %t : f32
  } -> tensor<24x64xf32>
  %zero2 = arith.constant 0.0 : f32
  %y02 = tensor.empty(%m) : tensor<?x24xf32>
  %yf2 = linalg.fill ins(%zero2 : f32) outs(%y02 : tensor<?x24xf32>) -> tensor<?x24xf32>
  %y2 = linalg.matmul indexing_maps = [#x, #w, #y] ins(%n#1, %w2 : tensor<?x64xf32>, tensor<24x64xf32>)
                     outs(%yf2 : tensor<?x24xf32>) -> tensor<?x24xf32>
  util.return %n#0, %y2, %n#1 : tensor<?x64xf32>, tensor<?x24xf32>, tensor<?x64xf32>
}
