// RUN: msd-opt %s --msd-attention-kernels | FileCheck %s
// RUN: msd-opt %s --msd-attention-kernels | FileCheck %s --check-prefix=I8
// RUN: msd-opt %s --msd-attention-kernels | FileCheck %s --check-prefix=RAGGED
// RUN: msd-opt %s --msd-attention-kernels | FileCheck %s --check-prefix=WINDOW
// RUN: msd-opt %s --msd-attention-kernels --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// --msd-attention-kernels: the custom op torch.ops.msd.decode_attention (as the FX importer writes it,
// on the torch dialect) becomes two dispatches of msd's kernels: the attention over splits of the
// cached keys (workgroups per head and split, each writing its accumulator, running max and sum; the
// operands as builtin tensors, the cached tokens T as the workload and dynamic dim, the layer index a
// constant), then their combination.  The executables are added once for the two layers that share
// their shape; 2 KV heads get 4 splits (8 workgroups).

// A step whose q, new key and new value come from torch.msd.rope_qkv (the token's stacked q|k|v row,
// RoPE, q's scale, k and v as f16): the attention kernel takes the row and the RoPE tables itself (the
// rope_qkv op goes), rotates the heads (a pair-swapping shuffle), writes the new entries from its first
// split, and the cache outputs read them from there.  (Its executables come first in the output.)
// CHECK:       stream.executable private @msd_decode_attention_b1_h2_g2_d32_l2_s4_f16_rope3e3504f3 {
// CHECK:         vector.shuffle {{.*}} [1, 0, 3, 2,
// CHECK:         arith.truncf {{.*}} : vector<32xf32> to vector<32xf16>
// CHECK:         scf.if
// CHECK:           vector.transfer_write {{.*}} : vector<32xf16>, memref<1x2x1x32xf16>
// CHECK:       stream.executable private @msd_decode_attention_b1_h2_g3_d32_l2_s4_combine
// CHECK:         math.exp
// CHECK:       stream.executable private @msd_decode_attention_b1_h2_g3_d32_l2_s4
// CHECK:         stream.executable.export public @msd_decode_attention_b1_h2_g3_d32_l2_s4
// CHECK-NEXT:      arith.constant 8 : index
// CHECK:         func.func @msd_decode_attention_b1_h2_g3_d32_l2_s4(
// CHECK:           scf.for
// CHECK:             memref.prefetch
// CHECK:             math.exp
// CHECK-NOT:   stream.executable private @msd_decode_attention
// CHECK-LABEL: func.func @decode(
// CHECK-NOT:     torch.operator
// CHECK:         %[[KC:.*]] = torch_c.to_builtin_tensor %arg1 : !torch.vtensor<[?,2,1,2,32],f32> -> tensor<?x2x1x2x32xf32>
// CHECK:         %[[T:.*]] = tensor.dim %[[KC]], %c0
// CHECK:         %[[L0:.*]] = arith.constant 0 : index
// CHECK:         %[[P:.*]]:2 = flow.dispatch @msd_decode_attention_b1_h2_g3_d32_l2_s4::@msd_decode_attention_b1_h2_g3_d32_l2_s4[%[[T]]]({{.*}}, %[[T]], %[[L0]]) : (tensor<1x2x3x32xf32>, tensor<?x2x1x2x32xf32>{%[[T]]}, tensor<?x2x1x2x32xf32>{%[[T]]}, tensor<1x2x1x32xf32>, tensor<1x2x1x32xf32>, index, index) -> (tensor<1x2x4x3x32xf32>, tensor<1x2x4x3x2xf32>)
// CHECK:         %[[O:.*]] = flow.dispatch @msd_decode_attention_b1_h2_g3_d32_l2_s4_combine::@msd_decode_attention_b1_h2_g3_d32_l2_s4_combine[%[[T]]](%[[P]]#0, %[[P]]#1) : (tensor<1x2x4x3x32xf32>, tensor<1x2x4x3x2xf32>) -> tensor<1x2x3x32xf32>
// CHECK:         torch_c.from_builtin_tensor %[[O]]
// CHECK:         %[[L1:.*]] = arith.constant 1 : index
// CHECK:         flow.dispatch @msd_decode_attention_b1_h2_g3_d32_l2_s4::@msd_decode_attention_b1_h2_g3_d32_l2_s4[{{.*}}]({{.*}}, %[[L1]])
// CHECK:         flow.dispatch @msd_decode_attention_b1_h2_g3_d32_l2_s4_combine

// CHECK-LABEL: func.func @decode_rope(
// CHECK-NOT:     torch.operator
// CHECK:         %[[ROW:.*]] = tensor.collapse_shape %{{.*}} {{\[\[}}0, 1], [2]] : tensor<1x1x256xf32> into tensor<1x256xf32>
// CHECK:         %[[A:.*]]:4 = flow.dispatch @msd_decode_attention_b1_h2_g2_d32_l2_s4_f16_rope3e3504f3::{{.*}}(%[[ROW]], {{.*}}) : (tensor<1x256xf32>, tensor<1x32xf32>, tensor<1x32xf32>, tensor<?x2x1x2x32xf16>{%{{.*}}}, tensor<?x2x1x2x32xf16>{%{{.*}}}, index, index) -> (tensor<1x2x4x2x32xf32>, tensor<1x2x4x2x2xf32>, tensor<1x2x1x32xf16>, tensor<1x2x1x32xf16>)
// CHECK:         flow.dispatch @msd_decode_attention_b1_h2_g2_d32_l2_s4_f16_rope3e3504f3_combine::{{.*}}(%[[A]]#0, %[[A]]#1)
// CHECK:         %[[K:.*]] = torch_c.from_builtin_tensor %[[A]]#2
// CHECK:         %[[V:.*]] = torch_c.from_builtin_tensor %[[A]]#3
// CHECK:         return %{{.*}}, %[[K]], %[[V]]

// REPORT: rewritten: torch.msd.decode_attention at {{.*}}: msd_decode_attention_b1_h2_g3_d32_l2_s4 (layer 0)
// REPORT: rewritten: torch.msd.decode_attention at {{.*}}: msd_decode_attention_b1_h2_g3_d32_l2_s4 (layer 1)
// REPORT: rewritten: torch.msd.decode_attention_int8 at {{.*}}: msd_decode_attention_b1_h2_g3_d32_l2_s4_i8 (layer 1)
// REPORT: rewritten: torch.msd.decode_attention_ragged at {{.*}}: msd_decode_attention_b2_h2_g3_d32_l2_s2_r (layer 1)
// REPORT: rewritten: torch.msd.decode_attention at {{.*}}: msd_decode_attention_b1_h2_g3_d32_l2_s4_w20_f16 (layer 0)
// REPORT: rewritten: torch.msd.prefill_attention at {{.*}}: msd_prefill_attention_b1_h2_g3_d32_w20

func.func @decode(%q: !torch.vtensor<[1,2,3,32],f32>, %kc: !torch.vtensor<[?,2,1,2,32],f32>,
                  %vc: !torch.vtensor<[?,2,1,2,32],f32>, %k: !torch.vtensor<[1,2,1,32],f32>,
                  %v: !torch.vtensor<[1,2,1,32],f32>) -> !torch.vtensor<[1,2,3,32],f32> {
  %int0 = torch.constant.int 0
  %int1 = torch.constant.int 1
  %0 = torch.operator "torch.msd.decode_attention"(%q, %kc, %vc, %k, %v, %int0) : (!torch.vtensor<[1,2,3,32],f32>, !torch.vtensor<[?,2,1,2,32],f32>, !torch.vtensor<[?,2,1,2,32],f32>, !torch.vtensor<[1,2,1,32],f32>, !torch.vtensor<[1,2,1,32],f32>, !torch.int) -> !torch.vtensor<[1,2,3,32],f32>
  %1 = torch.operator "torch.msd.decode_attention"(%0, %kc, %vc, %k, %v, %int1) : (!torch.vtensor<[1,2,3,32],f32>, !torch.vtensor<[?,2,1,2,32],f32>, !torch.vtensor<[?,2,1,2,32],f32>, !torch.vtensor<[1,2,1,32],f32>, !torch.vtensor<[1,2,1,32],f32>, !torch.int) -> !torch.vtensor<[1,2,3,32],f32>
  return %1 : !torch.vtensor<[1,2,3,32],f32>
}

// The int8 cache: codes and one f32 scale per (token, layer, sequence, head); the kernel converts the
// codes and multiplies them by their scale as it loads a row.  (Its executables come first: each is
// added at the top of the module.)

// I8-LABEL: stream.executable private @msd_decode_attention_b1_h2_g3_d32_l2_s4_i8
// I8:           arith.sitofp %{{.*}} : vector<32xi8> to vector<32xf32>
// I8-LABEL: func.func @decode_int8(
// I8:         flow.dispatch @msd_decode_attention_b1_h2_g3_d32_l2_s4_i8::@msd_decode_attention_b1_h2_g3_d32_l2_s4_i8[%[[T:.*]]]({{.*}}) : (tensor<1x2x3x32xf32>, tensor<?x2x1x2x32xi8>{%[[T]]}, tensor<?x2x1x2xf32>{%[[T]]}, tensor<?x2x1x2x32xi8>{%[[T]]}, tensor<?x2x1x2xf32>{%[[T]]}, tensor<1x2x1x32xi8>, tensor<1x2x1xf32>, tensor<1x2x1x32xi8>, tensor<1x2x1xf32>, index, index)
// I8:         flow.dispatch @msd_decode_attention_b1_h2_g3_d32_l2_s4_i8_combine

func.func @decode_int8(%q: !torch.vtensor<[1,2,3,32],f32>, %kc: !torch.vtensor<[?,2,1,2,32],si8>,
                       %ks: !torch.vtensor<[?,2,1,2],f32>, %vc: !torch.vtensor<[?,2,1,2,32],si8>,
                       %vs: !torch.vtensor<[?,2,1,2],f32>, %k: !torch.vtensor<[1,2,1,32],si8>,
                       %kns: !torch.vtensor<[1,2,1],f32>, %v: !torch.vtensor<[1,2,1,32],si8>,
                       %vns: !torch.vtensor<[1,2,1],f32>) -> !torch.vtensor<[1,2,3,32],f32> {
  %int1 = torch.constant.int 1
  %0 = torch.operator "torch.msd.decode_attention_int8"(%q, %kc, %ks, %vc, %vs, %k, %kns, %v, %vns, %int1) : (!torch.vtensor<[1,2,3,32],f32>, !torch.vtensor<[?,2,1,2,32],si8>, !torch.vtensor<[?,2,1,2],f32>, !torch.vtensor<[?,2,1,2,32],si8>, !torch.vtensor<[?,2,1,2],f32>, !torch.vtensor<[1,2,1,32],si8>, !torch.vtensor<[1,2,1],f32>, !torch.vtensor<[1,2,1,32],si8>, !torch.vtensor<[1,2,1],f32>, !torch.int) -> !torch.vtensor<[1,2,3,32],f32>
  return %0 : !torch.vtensor<[1,2,3,32],f32>
}

// Sequences of their own lengths (a batched decode step): an i64 operand [B]; each workgroup loads
// its sequence's length and bounds its keys by it (never by more than the T rows of the view).

// RAGGED-LABEL: stream.executable private @msd_decode_attention_b2_h2_g3_d32_l2_s2_r {
// RAGGED:         func.func @msd_decode_attention_b2_h2_g3_d32_l2_s2_r({{.*}}, %[[T:.*]]: index, %{{.*}}: index)
// RAGGED:         %[[LEN:.*]] = memref.load %{{.*}}[%{{.*}}] : memref<2xi64>
// RAGGED:         %[[LI:.*]] = arith.index_cast %[[LEN]] : i64 to index
// RAGGED:         %[[TB:.*]] = arith.minui %[[LI]], %[[T]] : index
// RAGGED:         arith.divui %[[TB]], %c16 : index
// RAGGED-LABEL: func.func @decode_ragged(
// RAGGED:         %[[L:.*]] = torch_c.to_builtin_tensor %arg5 : !torch.vtensor<[2],si64> -> tensor<2xi64>
// RAGGED:         flow.dispatch @msd_decode_attention_b2_h2_g3_d32_l2_s2_r::@msd_decode_attention_b2_h2_g3_d32_l2_s2_r[%[[T:.*]]]({{.*}}, %[[L]], %[[T]], {{.*}}) : (tensor<2x2x3x32xf32>, tensor<?x2x2x2x32xf32>{%[[T]]}, tensor<?x2x2x2x32xf32>{%[[T]]}, tensor<2x2x1x32xf32>, tensor<2x2x1x32xf32>, tensor<2xi64>, index, index)

func.func @decode_ragged(%q: !torch.vtensor<[2,2,3,32],f32>, %kc: !torch.vtensor<[?,2,2,2,32],f32>,
                         %vc: !torch.vtensor<[?,2,2,2,32],f32>, %k: !torch.vtensor<[2,2,1,32],f32>,
                         %v: !torch.vtensor<[2,2,1,32],f32>, %len: !torch.vtensor<[2],si64>) -> !torch.vtensor<[2,2,3,32],f32> {
  %int1 = torch.constant.int 1
  %0 = torch.operator "torch.msd.decode_attention_ragged"(%q, %kc, %vc, %k, %v, %len, %int1) : (!torch.vtensor<[2,2,3,32],f32>, !torch.vtensor<[?,2,2,2,32],f32>, !torch.vtensor<[?,2,2,2,32],f32>, !torch.vtensor<[2,2,1,32],f32>, !torch.vtensor<[2,2,1,32],f32>, !torch.vtensor<[2],si64>, !torch.int) -> !torch.vtensor<[2,2,3,32],f32>
  return %0 : !torch.vtensor<[2,2,3,32],f32>
}

// A sliding-window layer (a trailing constant window: Gemma 3's local layers) over an f16 cache: a
// kernel of its own that starts at the block holding key max(0, T + 1 - window), masks that block's
// earlier rows, and widens each f16 row to f32 as it loads it; the prefill kernel takes the window too.

// WINDOW-LABEL: stream.executable private @msd_prefill_attention_b1_h2_g3_d32_w20
// WINDOW:         %[[CW:.*]] = arith.constant 20 : index
// WINDOW:         arith.select
// WINDOW:         scf.for %{{.*}} = %[[START:.*]] to
// WINDOW-LABEL: stream.executable private @msd_decode_attention_b1_h2_g3_d32_l2_s4_w20_f16 {
// WINDOW:         %[[W:.*]] = arith.constant 20 : index
// WINDOW:         %[[T1:.*]] = arith.addi %{{.*}}, %c1 : index
// WINDOW:         %[[BIG:.*]] = arith.cmpi ugt, %[[T1]], %[[W]] : index
// WINDOW:         %[[D:.*]] = arith.subi %[[T1]], %[[W]] : index
// WINDOW:         %[[LO:.*]] = arith.select %[[BIG]], %[[D]], %c0 : index
// WINDOW:         arith.divui %[[LO]], %c16 : index
// WINDOW:         scf.for
// WINDOW:           arith.extf %{{.*}} : vector<32xf16> to vector<32xf32>
// WINDOW:           arith.cmpi uge, %{{.*}}, %[[LO]] : index
// WINDOW-LABEL: func.func @decode_window_f16(
// WINDOW:         flow.dispatch @msd_decode_attention_b1_h2_g3_d32_l2_s4_w20_f16::@msd_decode_attention_b1_h2_g3_d32_l2_s4_w20_f16[%[[T:.*]]]({{.*}}) : (tensor<1x2x3x32xf32>, tensor<?x2x1x2x32xf16>{%[[T]]}, tensor<?x2x1x2x32xf16>{%[[T]]}, tensor<1x2x1x32xf16>, tensor<1x2x1x32xf16>, index, index)
// WINDOW-LABEL: func.func @prefill_window(
// WINDOW:         flow.dispatch @msd_prefill_attention_b1_h2_g3_d32_w20::@msd_prefill_attention_b1_h2_g3_d32_w20

func.func @decode_window_f16(%q: !torch.vtensor<[1,2,3,32],f32>, %kc: !torch.vtensor<[?,2,1,2,32],f16>,
                             %vc: !torch.vtensor<[?,2,1,2,32],f16>, %k: !torch.vtensor<[1,2,1,32],f16>,
                             %v: !torch.vtensor<[1,2,1,32],f16>) -> !torch.vtensor<[1,2,3,32],f32> {
  %int0 = torch.constant.int 0
  %int20 = torch.constant.int 20
  %0 = torch.operator "torch.msd.decode_attention"(%q, %kc, %vc, %k, %v, %int0, %int20) : (!torch.vtensor<[1,2,3,32],f32>, !torch.vtensor<[?,2,1,2,32],f16>, !torch.vtensor<[?,2,1,2,32],f16>, !torch.vtensor<[1,2,1,32],f16>, !torch.vtensor<[1,2,1,32],f16>, !torch.int, !torch.int) -> !torch.vtensor<[1,2,3,32],f32>
  return %0 : !torch.vtensor<[1,2,3,32],f32>
}

func.func @prefill_window(%q: !torch.vtensor<[1,2,3,?,32],f32>, %k: !torch.vtensor<[1,2,?,32],f32>,
                          %v: !torch.vtensor<[1,2,?,32],f32>) -> !torch.vtensor<[1,2,3,?,32],f32> {
  %int20 = torch.constant.int 20
  %0 = torch.operator "torch.msd.prefill_attention"(%q, %k, %v, %int20) : (!torch.vtensor<[1,2,3,?,32],f32>, !torch.vtensor<[1,2,?,32],f32>, !torch.vtensor<[1,2,?,32],f32>, !torch.int) -> !torch.vtensor<[1,2,3,?,32],f32>
  return %0 : !torch.vtensor<[1,2,3,?,32],f32>
}

func.func @decode_rope(%qkv: !torch.vtensor<[1,1,256],f32>, %cos: !torch.vtensor<[1,1,1,32],f32>,
                       %sin: !torch.vtensor<[1,1,1,32],f32>, %kc: !torch.vtensor<[?,2,1,2,32],f16>,
                       %vc: !torch.vtensor<[?,2,1,2,32],f16>)
    -> (!torch.vtensor<[1,2,2,32],f32>, !torch.vtensor<[1,2,1,32],f16>, !torch.vtensor<[1,2,1,32],f16>) {
  %int0 = torch.constant.int 0
  %int1 = torch.constant.int 1
  %int2 = torch.constant.int 2
  %int3 = torch.constant.int 3
  %int4 = torch.constant.int 4
  %scale = torch.constant.float 0.17677669529663687
  %f16 = torch.constant.str "f16"
  %r:3 = torch.operator "torch.msd.rope_qkv"(%qkv, %cos, %sin, %int4, %int2, %scale, %f16) : (!torch.vtensor<[1,1,256],f32>, !torch.vtensor<[1,1,1,32],f32>, !torch.vtensor<[1,1,1,32],f32>, !torch.int, !torch.int, !torch.float, !torch.str) -> (!torch.vtensor<[1,4,1,32],f32>, !torch.vtensor<[1,2,1,32],f16>, !torch.vtensor<[1,2,1,32],f16>)
  %groups = torch.prim.ListConstruct %int2, %int2 : (!torch.int, !torch.int) -> !torch.list<int>
  %q5 = torch.aten.unflatten.int %r#0, %int1, %groups : !torch.vtensor<[1,4,1,32],f32>, !torch.int, !torch.list<int> -> !torch.vtensor<[1,2,2,1,32],f32>
  %q = torch.aten.squeeze.dim %q5, %int3 : !torch.vtensor<[1,2,2,1,32],f32>, !torch.int -> !torch.vtensor<[1,2,2,32],f32>
  %0 = torch.operator "torch.msd.decode_attention"(%q, %kc, %vc, %r#1, %r#2, %int0, %int0) : (!torch.vtensor<[1,2,2,32],f32>, !torch.vtensor<[?,2,1,2,32],f16>, !torch.vtensor<[?,2,1,2,32],f16>, !torch.vtensor<[1,2,1,32],f16>, !torch.vtensor<[1,2,1,32],f16>, !torch.int, !torch.int) -> !torch.vtensor<[1,2,2,32],f32>
  return %0, %r#1, %r#2 : !torch.vtensor<[1,2,2,32],f32>, !torch.vtensor<[1,2,1,32],f16>, !torch.vtensor<[1,2,1,32],f16>
}
