// RUN: msd-opt %s --msd-decompose-activations | FileCheck %s

// Regression: the pass used to fold and erase IR that has nothing to do with contractions (the
// greedy driver ran with folding and dead-code elimination on the whole module): the dead
// tensor.empty was erased and `arith.addi %c1, %c2` was folded to `arith.constant 3`. Now a pass
// that rewrites nothing leaves the function as it was.

// CHECK-LABEL: func.func @unrelated(
// CHECK-SAME:    %{{[^:]+}}: tensor<4xf32>) -> i32
// CHECK-NEXT:    %[[C1:.*]] = arith.constant 1 : i32
// CHECK-NEXT:    %[[C2:.*]] = arith.constant 2 : i32
// CHECK-NEXT:    %{{.*}} = tensor.empty() : tensor<8xf32>
// CHECK-NEXT:    %[[S:.*]] = arith.addi %[[C1]], %[[C2]] : i32
// CHECK-NEXT:    return %[[S]] : i32
// CHECK-NOT:     arith.constant 3
func.func @unrelated(%x: tensor<4xf32>) -> i32 {
  %c1 = arith.constant 1 : i32
  %c2 = arith.constant 2 : i32
  %dead = tensor.empty() : tensor<8xf32>
  %s = arith.addi %c1, %c2 : i32
  return %s : i32
}
