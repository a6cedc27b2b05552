// RUN: msd-opt %s --msd-decompose-activations="slices=2 cpu-kernel=avx512-vnni" --msd-prepack-parameters | FileCheck %s
// RUN: msd-opt %s --msd-decompose-activations="slices=2 cpu-kernel=avx512-vnni" --msd-prepack-parameters --msd-report 2>&1 >/dev/null | FileCheck %s --check-prefix=REPORT

// --msd-prepack-parameters: the weight-side operands of a kernel dispatch (tiled codes, per-channel
// scale) read only parameters, so they become parameters themselves, computed at
// compile time by a pack function.  Two entry points that read the same weight share one pack
// function and one set of packed parameters; a bf16 parameter reaches the pack function as its bits
// (i16) and is bitcast there.  A weight passed as a function argument cannot be packed ahead of time:
// its dispatch is left as it is and the report says why.

// CHECK:       module attributes {msd.pack_calls = "[{\22function\22: \22__msd_pack_0\22, \22inputs\22: [\22fc.weight\22, \22fc.scale\22], \22outputs\22: [\22msd.pack.fc.weight.w\22, \22msd.pack.fc.weight.scale\22]}]"}
// CHECK-DAG:   util.global private @[[W:.*]] = #stream.parameter.named<"model"::"msd.pack.fc.weight.w"> : tensor<2x1x8x64xi8>
// CHECK-DAG:   util.global private @[[S:.*]] = #stream.parameter.named<"model"::"msd.pack.fc.weight.scale"> : tensor<2x1x16xf32>
// CHECK-LABEL: util.func public @prefill
// CHECK-NOT:     linalg.transpose
// CHECK-DAG:     %[[WV:.*]] = util.global.load @[[W]]
// CHECK-DAG:     %[[SV:.*]] = util.global.load @[[S]]
// CHECK:         flow.dispatch @msd_linear_avx512_vnni_n24_k64_g64_p2_r4_c2_w1_i4{{.*}}(%{{.*}}, %{{.*}}, %{{.*}}, %[[WV]], %[[SV]], %{{.*}})
// CHECK-LABEL: util.func public @decode
// CHECK-DAG:     util.global.load @[[W]]
// CHECK-DAG:     util.global.load @[[S]]
// CHECK-LABEL: util.func public @argument_weight
// CHECK:         linalg.transpose
// CHECK:         flow.dispatch
// CHECK-LABEL: util.func public @__msd_pack_0(
// CHECK-SAME:    %{{.*}}: tensor<24x64xi8>, %[[BITS:.*]]: tensor<24xi16>) -> (tensor<2x1x8x64xi8>, tensor<2x1x16xf32>) attributes {msd.pack}
// CHECK:         arith.bitcast %[[BITS]] : tensor<24xi16> to tensor<24xbf16>
// CHECK:         linalg.transpose
// CHECK:         util.return
// CHECK-NOT:   @__msd_pack_1

// REPORT: msd-prepack-parameters: 2 rewritten, 1 skipped
// REPORT: rewritten: {{.*}}w, scale packed at compile time from fc.weight, fc.scale (parameters msd.pack.fc.weight.w, msd.pack.fc.weight.scale)
// REPORT: rewritten: {{.*}}w, scale packed at compile time from fc.weight, fc.scale (parameters msd.pack.fc.weight.w, msd.pack.fc.weight.scale)
// REPORT: skipped: {{.*}}nothing packed: no operand reads only parameters (w: it reads a function argument; scale: it reads a function argument){{$}}

util.global private @q = #stream.parameter.named<"model"::"fc.weight"> : tensor<24x64xi8>
util.global private @s = #stream.parameter.named<"model"::"fc.scale"> : tensor<24xbf16>

// y = x · Wᵀ, W[n, k] = scale[n] · ((q[n, k] & 15) - 8): 4-bit codes in [-8, 7], which the kernel reads as nibbles
util.func public @prefill(%x: tensor<?x64xf32>) -> tensor<?x24xf32> {
  %c0 = arith.constant 0 : index
  %m = tensor.dim %x, %c0 : tensor<?x64xf32>
  %q = util.global.load @q : tensor<24x64xi8>
  %s = util.global.load @s : tensor<24xbf16>
  %e8 = tensor.empty() : tensor<24x64xi8>
  %q4 = linalg.generic {indexing_maps = [affine_map<(n, k) -> (n, k)>, affine_map<(n, k) -> (n, k)>],
                        iterator_types = ["parallel", "parallel"]} ins(%q : tensor<24x64xi8>) outs(%e8 : tensor<24x64xi8>) {
  ^bb0(%c: i8, %o: i8):
    %mask = arith.constant 15 : i8
    %eight = arith.constant 8 : i8
    %c4 = arith.andi %c, %mask : i8
    %centred = arith.subi %c4, %eight : i8
    linalg.yield %centred : i8
  } -> tensor<24x64xi8>
  %e = tensor.empty() : tensor<24x64xf32>
  %w = linalg.generic {indexing_maps = [affine_map<(n, k) -> (n, k)>, affine_map<(n, k) -> (n)>,
                                        affine_map<(n, k) -> (n, k)>],
                       iterator_types = ["parallel", "parallel"]}
      ins(%q4, %s : tensor<24x64xi8>, tensor<24xbf16>) outs(%e : tensor<24x64xf32>) {
  ^bb0(%c: i8, %sc: bf16, %o: f32):
    %f = arith.sitofp %c : i8 to f32
    %sf = arith.extf %sc : bf16 to f32
    %r = arith.mulf %f, %sf : f32
    linalg.yield %r : f32
  } -> tensor<24x64xf32>
  %zero = arith.constant 0.0 : f32
  %y0 = tensor.empty(%m) : tensor<?x24xf32>
  %yf = linalg.fill ins(%zero : f32) outs(%y0 : tensor<?x24xf32>) -> tensor<?x24xf32>
  %y = linalg.matmul indexing_maps = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>,
                                      affine_map<(m, n, k) -> (m, n)>]
                     ins(%x, %w : tensor<?x64xf32>, tensor<24x64xf32>) outs(%yf : tensor<?x24xf32>) -> tensor<?x24xf32>
  util.return %y : tensor<?x24xf32>
}

// The same weight, one row (a decode step)
util.func public @decode(%x: tensor<1x64xf32>) -> tensor<1x24xf32> {
  %q = util.global.load @q : tensor<24x64xi8>
  %s = util.global.load @s : tensor<24xbf16>
  %e8 = tensor.empty() : tensor<24x64xi8>
  %q4 = linalg.generic {indexing_maps = [affine_map<(n, k) -> (n, k)>, affine_map<(n, k) -> (n, k)>],
                        iterator_types = ["parallel", "parallel"]} ins(%q : tensor<24x64xi8>) outs(%e8 : tensor<24x64xi8>) {
  ^bb0(%c: i8, %o: i8):
    %mask = arith.constant 15 : i8
    %eight = arith.constant 8 : i8
    %c4 = arith.andi %c, %mask : i8
    %centred = arith.subi %c4, %eight : i8
    linalg.yield %centred : i8
  } -> tensor<24x64xi8>
  %e = tensor.empty() : tensor<24x64xf32>
  %w = linalg.generic {indexing_maps = [affine_map<(n, k) -> (n, k)>, affine_map<(n, k) -> (n)>,
                                        affine_map<(n, k) -> (n, k)>],
                       iterator_types = ["parallel", "parallel"]}
      ins(%q4, %s : tensor<24x64xi8>, tensor<24xbf16>) outs(%e : tensor<24x64xf32>) {
  ^bb0(%c: i8, %sc: bf16, %o: f32):
    %f = arith.sitofp %c : i8 to f32
    %sf = arith.extf %sc : bf16 to f32
    %r = arith.mulf %f, %sf : f32
    linalg.yield %r : f32
  } -> tensor<24x64xf32>
  %zero = arith.constant 0.0 : f32
  %y0 = tensor.empty() : tensor<1x24xf32>
  %yf = linalg.fill ins(%zero : f32) outs(%y0 : tensor<1x24xf32>) -> tensor<1x24xf32>
  %y = linalg.matmul indexing_maps = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>,
                                      affine_map<(m, n, k) -> (m, n)>]
                     ins(%x, %w : tensor<1x64xf32>, tensor<24x64xf32>) outs(%yf : tensor<1x24xf32>) -> tensor<1x24xf32>
  util.return %y : tensor<1x24xf32>
}

// The weight is an argument: nothing to compute ahead of time
util.func public @argument_weight(%x: tensor<1x64xf32>, %q: tensor<24x64xi8>, %s: tensor<24xbf16>) -> tensor<1x24xf32> {
  %e8 = tensor.empty() : tensor<24x64xi8>
  %q4 = linalg.generic {indexing_maps = [affine_map<(n, k) -> (n, k)>, affine_map<(n, k) -> (n, k)>],
                        iterator_types = ["parallel", "parallel"]} ins(%q : tensor<24x64xi8>) outs(%e8 : tensor<24x64xi8>) {
  ^bb0(%c: i8, %o: i8):
    %mask = arith.constant 15 : i8
    %eight = arith.constant 8 : i8
    %c4 = arith.andi %c, %mask : i8
    %centred = arith.subi %c4, %eight : i8
    linalg.yield %centred : i8
  } -> tensor<24x64xi8>
  %e = tensor.empty() : tensor<24x64xf32>
  %w = linalg.generic {indexing_maps = [affine_map<(n, k) -> (n, k)>, affine_map<(n, k) -> (n)>,
                                        affine_map<(n, k) -> (n, k)>],
                       iterator_types = ["parallel", "parallel"]}
      ins(%q4, %s : tensor<24x64xi8>, tensor<24xbf16>) outs(%e : tensor<24x64xf32>) {
  ^bb0(%c: i8, %sc: bf16, %o: f32):
    %f = arith.sitofp %c : i8 to f32
    %sf = arith.extf %sc : bf16 to f32
    %r = arith.mulf %f, %sf : f32
    linalg.yield %r : f32
  } -> tensor<24x64xf32>
  %zero = arith.constant 0.0 : f32
  %y0 = tensor.empty() : tensor<1x24xf32>
  %yf = linalg.fill ins(%zero : f32) outs(%y0 : tensor<1x24xf32>) -> tensor<1x24xf32>
  %y = linalg.matmul indexing_maps = [affine_map<(m, n, k) -> (m, k)>, affine_map<(m, n, k) -> (n, k)>,
                                      affine_map<(m, n, k) -> (m, n)>]
                     ins(%x, %w : tensor<1x64xf32>, tensor<24x64xf32>) outs(%yf : tensor<1x24xf32>) -> tensor<1x24xf32>
  util.return %y : tensor<1x24xf32>
}
