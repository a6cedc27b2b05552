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
