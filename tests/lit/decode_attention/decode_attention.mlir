// RUN: msd-opt %s --msd-decode-attention | FileCheck %s
// RUN: msd-opt %s --msd-decode-attention --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// --msd-decode-attention: the custom op torch.ops.msd.decode_attention (as the FX importer writes it,
// on the torch dialect) becomes one dispatch of msd's attention kernel: the operands as builtin
// tensors, the cached tokens T as the dispatch's workload and dynamic dim, the layer index as a
// constant; the kernel's executable is added once for the two layers that share its shape.

// CHECK:       stream.executable private @msd_decode_attention_b1_h2_g3_d32_l2
// CHECK:         func.func @msd_decode_attention_b1_h2_g3_d32_l2(
// CHECK:           scf.for
// CHECK:             memref.prefetch
// CHECK:             math.exp
// CHECK-NOT:   stream.executable private @msd_decode_attention
// CHECK-LABEL: func.func @decode(
// CHECK-NOT:     torch.operator
// CHECK:         %[[KC:.*]] = torch_c.to_builtin_tensor %arg1 : !torch.vtensor<[?,2,1,2,32],f32> -> tensor<?x2x1x2x32xf32>
// CHECK:         %[[T:.*]] = tensor.dim %[[KC]], %c0
// CHECK:         %[[L0:.*]] = arith.constant 0 : index
// CHECK:         flow.dispatch @msd_decode_attention_b1_h2_g3_d32_l2::@msd_decode_attention_b1_h2_g3_d32_l2[%[[T]]]({{.*}}, %[[T]], %[[L0]]) : (tensor<1x2x3x32xf32>, tensor<?x2x1x2x32xf32>{%[[T]]}, tensor<?x2x1x2x32xf32>{%[[T]]}, tensor<1x2x1x32xf32>, tensor<1x2x1x32xf32>, index, index) -> tensor<1x2x3x32xf32>
// CHECK:         torch_c.from_builtin_tensor
// CHECK:         %[[L1:.*]] = arith.constant 1 : index
// CHECK:         flow.dispatch @msd_decode_attention_b1_h2_g3_d32_l2::@msd_decode_attention_b1_h2_g3_d32_l2[{{.*}}]({{.*}}, %[[L1]])

// REPORT: rewritten: torch.msd.decode_attention at {{.*}}: msd_decode_attention_b1_h2_g3_d32_l2 (layer 0)
// REPORT: rewritten: torch.msd.decode_attention at {{.*}}: msd_decode_attention_b1_h2_g3_d32_l2 (layer 1)

func.func @decode(%q: !torch.vtensor<[1,2,3,32],f32>, %kc: !torch.vtensor<[?,2,1,2,32],f32>,
                  %vc: !torch.vtensor<[?,2,1,2,32],f32>, %k: !torch.vtensor<[1,2,1,32],f32>,
                  %v: !torch.vtensor<[1,2,1,32],f32>) -> !torch.vtensor<[1,2,3,32],f32> {
  %int0 = torch.constant.int 0
  %int1 = torch.constant.int 1
  %0 = torch.operator "torch.msd.decode_attention"(%q, %kc, %vc, %k, %v, %int0) : (!torch.vtensor<[1,2,3,32],f32>, !torch.vtensor<[?,2,1,2,32],f32>, !torch.vtensor<[?,2,1,2,32],f32>, !torch.vtensor<[1,2,1,32],f32>, !torch.vtensor<[1,2,1,32],f32>, !torch.int) -> !torch.vtensor<[1,2,3,32],f32>
  %1 = torch.operator "torch.msd.decode_attention"(%0, %kc, %vc, %k, %v, %int1) : (!torch.vtensor<[1,2,3,32],f32>, !torch.vtensor<[?,2,1,2,32],f32>, !torch.vtensor<[?,2,1,2,32],f32>, !torch.vtensor<[1,2,1,32],f32>, !torch.vtensor<[1,2,1,32],f32>, !torch.int) -> !torch.vtensor<[1,2,3,32],f32>
  return %1 : !torch.vtensor<[1,2,3,32],f32>
}
