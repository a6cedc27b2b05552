// RUN: msd-opt %s --msd-row-kernels | FileCheck %s
// RUN: msd-opt %s --msd-row-kernels --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// --msd-row-kernels: msd's row ops (torch.ops.msd.rms_norm, add_rms_norm, glu as the FX importer writes
// them, on the torch dialect) become one dispatch each of a kernel msd writes, a workgroup per row: the
// operands as builtin tensors collapsed to rows [M, K] (M dynamic, the workload), the weight as it is,
// the results expanded back.  The kernel's name says its kind, row length and eps (f32 bits) or
// activation; an executable is added once per name.  add_rms_norm returns the sum x + r and its norm.

// The standalone kernels: the norm's sum of squares in vector lanes (the add's sum written as it goes),
// then the row scaled; SwiGLU's and GeGLU's activations.
// CHECK-LABEL: stream.executable private @msd_row_add_rms_norm_k64_e3727c5ac
// CHECK:         %[[H:.*]] = stream.binding.subspan %arg3
// CHECK:         %[[Y:.*]] = stream.binding.subspan %arg4
// CHECK:         scf.for {{.*}} iter_args
// CHECK:           arith.addf {{.*}} : vector<32xf32>
// CHECK:           vector.transfer_write {{.*}}, %[[H]][
// CHECK:           vector.fma
// CHECK:         vector.reduction <add>
// CHECK:         math.rsqrt
// CHECK:         scf.for
// CHECK:           vector.transfer_read %[[H]][
// CHECK:           vector.transfer_write {{.*}}, %[[Y]][
// CHECK:       stream.executable private @msd_row_rms_norm_k64_e3727c5ac

// CHECK-LABEL: func.func @block(
// CHECK-NOT:     torch.operator
// CHECK:         %[[X:.*]] = torch_c.to_builtin_tensor %arg0 : !torch.vtensor<[1,?,64],f32> -> tensor<1x?x64xf32>
// CHECK:         %[[W:.*]] = torch_c.to_builtin_tensor %arg1 : !torch.vtensor<[64],f32> -> tensor<64xf32>
// CHECK:         %[[XR:.*]] = tensor.collapse_shape %[[X]] {{\[\[}}0, 1], [2]] : tensor<1x?x64xf32> into tensor<?x64xf32>
// CHECK:         %[[M:.*]] = tensor.dim %[[XR]], %c0
// CHECK:         %[[N:.*]] = flow.dispatch @msd_row_rms_norm_k64_e3727c5ac::@msd_row_rms_norm_k64_e3727c5ac[%[[M]]](%[[XR]], %[[W]], %[[M]]) : (tensor<?x64xf32>{%[[M]]}, tensor<64xf32>, index) -> tensor<?x64xf32>{%[[M]]}
// CHECK:         tensor.expand_shape %[[N]] {{\[\[}}0, 1], [2]] output_shape [1, %{{.*}}, 64] : tensor<?x64xf32> into tensor<1x?x64xf32>
// CHECK:         %[[S:.*]]:2 = flow.dispatch @msd_row_add_rms_norm_k64_e3727c5ac::@msd_row_add_rms_norm_k64_e3727c5ac[%{{.*}}]({{.*}}) : (tensor<?x64xf32>{%{{.*}}}, tensor<?x64xf32>{%{{.*}}}, tensor<64xf32>, index) -> (tensor<?x64xf32>{%{{.*}}}, tensor<?x64xf32>{%{{.*}}})
// CHECK:         flow.dispatch @msd_row_glu_k96_gelu_tanh::@msd_row_glu_k96_gelu_tanh[%{{.*}}]({{.*}}) : (tensor<?x192xf32>{%{{.*}}}, index) -> tensor<?x96xf32>{%{{.*}}}

// REPORT: rewritten: torch.msd.rms_norm at {{.*}}: msd_row_rms_norm_k64_e3727c5ac
// REPORT: rewritten: torch.msd.add_rms_norm at {{.*}}: msd_row_add_rms_norm_k64_e3727c5ac
// REPORT: rewritten: torch.msd.glu at {{.*}}: msd_row_glu_k96_gelu_tanh
// REPORT: rewritten: torch.msd.glu at {{.*}}: msd_row_glu_k32_silu

func.func @block(%x: !torch.vtensor<[1,?,64],f32>, %w: !torch.vtensor<[64],f32>, %h: !torch.vtensor<[1,?,64],f32>,
                 %gu: !torch.vtensor<[1,?,192],f32>) -> (!torch.vtensor<[1,?,64],f32>, !torch.vtensor<[1,?,64],f32>, !torch.vtensor<[1,?,96],f32>) {
  %eps = torch.constant.float 9.9999997473787516E-6
  %gelu = torch.constant.str "gelu_tanh"
  %0 = torch.operator "torch.msd.rms_norm"(%x, %w, %eps) : (!torch.vtensor<[1,?,64],f32>, !torch.vtensor<[64],f32>, !torch.float) -> !torch.vtensor<[1,?,64],f32>
  %1:2 = torch.operator "torch.msd.add_rms_norm"(%0, %h, %w, %eps) : (!torch.vtensor<[1,?,64],f32>, !torch.vtensor<[1,?,64],f32>, !torch.vtensor<[64],f32>, !torch.float) -> (!torch.vtensor<[1,?,64],f32>, !torch.vtensor<[1,?,64],f32>)
  %2 = torch.operator "torch.msd.glu"(%gu, %gelu) : (!torch.vtensor<[1,?,192],f32>, !torch.str) -> !torch.vtensor<[1,?,96],f32>
  return %1#0, %1#1, %2 : !torch.vtensor<[1,?,64],f32>, !torch.vtensor<[1,?,64],f32>, !torch.vtensor<[1,?,96],f32>
}

// A 2-D row (the last token's) and a 1-D one: rows [1, K] and [B, K].
// CHECK-LABEL: func.func @shapes(
// CHECK:         tensor.expand_shape {{.*}} {{\[\[}}0, 1]] output_shape [1, 64] : tensor<64xf32> into tensor<1x64xf32>
// CHECK:         tensor.cast {{.*}} : tensor<1x64xf32> to tensor<?x64xf32>
// CHECK:         flow.dispatch @msd_row_glu_k32_silu
// CHECK:         tensor.cast {{.*}} : tensor<?x32xf32> to tensor<1x32xf32>
// CHECK:         tensor.collapse_shape {{.*}} {{\[\[}}0, 1]] : tensor<1x32xf32> into tensor<32xf32>
func.func @shapes(%gu: !torch.vtensor<[64],f32>) -> !torch.vtensor<[32],f32> {
  %silu = torch.constant.str "silu"
  %0 = torch.operator "torch.msd.glu"(%gu, %silu) : (!torch.vtensor<[64],f32>, !torch.str) -> !torch.vtensor<[32],f32>
  return %0 : !torch.vtensor<[32],f32>
}

// torch.ops.msd.rope_qkv: the stacked q|k|v rows of a projection [B, S, (H + 2·KV)·D] → q [B, H, S, D]
// (rotated, times the scale), k (rotated) and v [B, KV, S, D], one dispatch: the rows collapsed to
// [M = B·S, N] (M its workload and the rows' dynamic dim), the cos / sin tables [B, 1, S, D] and the results
// sized by the tokens S, then M and S as its two index operands.  The name carries B, H, KV, D and the
// scale's f32 bits; kv_dtype "f16" makes k and v f16.
// CHECK-LABEL: func.func @rope(
// CHECK:         %[[QKV:.*]] = torch_c.to_builtin_tensor %arg0 : !torch.vtensor<[1,?,32],f32> -> tensor<1x?x32xf32>
// CHECK:         %[[ROWS:.*]] = tensor.collapse_shape %[[QKV]] {{\[\[}}0, 1], [2]] : tensor<1x?x32xf32> into tensor<?x32xf32>
// CHECK:         %[[M:.*]] = tensor.dim %[[ROWS]], %c0
// CHECK:         %[[S:.*]] = tensor.dim %[[QKV]], %c1
// CHECK:         %[[COS:.*]] = tensor.cast {{.*}} : tensor<1x1x?x8xf32> to tensor<1x1x?x8xf32>
// CHECK:         %[[SIN:.*]] = tensor.cast {{.*}} : tensor<1x1x?x8xf32> to tensor<1x1x?x8xf32>
// CHECK:         %[[D:.*]]:3 = flow.dispatch @msd_row_rope_qkv_b1_h2_kv1_d8_s3eb504f3::@msd_row_rope_qkv_b1_h2_kv1_d8_s3eb504f3[%[[M]]](%[[ROWS]], %[[COS]], %[[SIN]], %[[M]], %[[S]]) : (tensor<?x32xf32>{%[[M]]}, tensor<1x1x?x8xf32>{%[[S]]}, tensor<1x1x?x8xf32>{%[[S]]}, index, index) -> (tensor<1x2x?x8xf32>{%[[S]]}, tensor<1x1x?x8xf32>{%[[S]]}, tensor<1x1x?x8xf32>{%[[S]]})
// CHECK:         torch_c.from_builtin_tensor %[[D]]#0 : tensor<1x2x?x8xf32> -> !torch.vtensor<[1,2,?,8],f32>
// CHECK:         torch_c.from_builtin_tensor %[[D]]#1 : tensor<1x1x?x8xf32> -> !torch.vtensor<[1,1,?,8],f32>
// CHECK:         torch_c.from_builtin_tensor %[[D]]#2 : tensor<1x1x?x8xf32> -> !torch.vtensor<[1,1,?,8],f32>
// REPORT: rewritten: torch.msd.rope_qkv at {{.*}}: msd_row_rope_qkv_b1_h2_kv1_d8_s3eb504f3
func.func @rope(%qkv: !torch.vtensor<[1,?,32],f32>, %cos: !torch.vtensor<[1,1,?,8],f32>, %sin: !torch.vtensor<[1,1,?,8],f32>) -> (!torch.vtensor<[1,2,?,8],f32>, !torch.vtensor<[1,1,?,8],f32>, !torch.vtensor<[1,1,?,8],f32>) {
  %h = torch.constant.int 2
  %kv = torch.constant.int 1
  %scale = torch.constant.float 0.35355339059327379
  %dt = torch.constant.str "f32"
  %0:3 = torch.operator "torch.msd.rope_qkv"(%qkv, %cos, %sin, %h, %kv, %scale, %dt) : (!torch.vtensor<[1,?,32],f32>, !torch.vtensor<[1,1,?,8],f32>, !torch.vtensor<[1,1,?,8],f32>, !torch.int, !torch.int, !torch.float, !torch.str) -> (!torch.vtensor<[1,2,?,8],f32>, !torch.vtensor<[1,1,?,8],f32>, !torch.vtensor<[1,1,?,8],f32>)
  return %0#0, %0#1, %0#2 : !torch.vtensor<[1,2,?,8],f32>, !torch.vtensor<[1,1,?,8],f32>, !torch.vtensor<[1,1,?,8],f32>
}

// Two sequences, an f16 cache: k and v f16.
// CHECK-LABEL: func.func @rope_f16(
// CHECK:         %[[D:.*]]:3 = flow.dispatch @msd_row_rope_qkv_b2_h2_kv1_d8_s3eb504f3_f16::{{.*}} -> (tensor<2x2x?x8xf32>{%{{.*}}}, tensor<2x1x?x8xf16>{%{{.*}}}, tensor<2x1x?x8xf16>{%{{.*}}})
// CHECK:         torch_c.from_builtin_tensor %[[D]]#1 : tensor<2x1x?x8xf16> -> !torch.vtensor<[2,1,?,8],f16>
func.func @rope_f16(%qkv: !torch.vtensor<[2,?,32],f32>, %cos: !torch.vtensor<[2,1,?,8],f32>, %sin: !torch.vtensor<[2,1,?,8],f32>) -> (!torch.vtensor<[2,2,?,8],f32>, !torch.vtensor<[2,1,?,8],f16>, !torch.vtensor<[2,1,?,8],f16>) {
  %h = torch.constant.int 2
  %kv = torch.constant.int 1
  %scale = torch.constant.float 0.35355339059327379
  %dt = torch.constant.str "f16"
  %0:3 = torch.operator "torch.msd.rope_qkv"(%qkv, %cos, %sin, %h, %kv, %scale, %dt) : (!torch.vtensor<[2,?,32],f32>, !torch.vtensor<[2,1,?,8],f32>, !torch.vtensor<[2,1,?,8],f32>, !torch.int, !torch.int, !torch.float, !torch.str) -> (!torch.vtensor<[2,2,?,8],f32>, !torch.vtensor<[2,1,?,8],f16>, !torch.vtensor<[2,1,?,8],f16>)
  return %0#0, %0#1, %0#2 : !torch.vtensor<[2,2,?,8],f32>, !torch.vtensor<[2,1,?,8],f16>, !torch.vtensor<[2,1,?,8],f16>
}
