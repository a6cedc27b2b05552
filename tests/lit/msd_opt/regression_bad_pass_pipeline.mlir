// RUN: not msd-opt %s '--pass-pipeline=builtin.module(bogus)' 2>&1 | FileCheck %s

// Regression: a --pass-pipeline that does not parse used to end in a Python traceback
// (PassManager.parse raises ValueError, which main() did not catch). Now it is reported like every
// other bad command line: one "msd-opt: error: ..." line with the parser's message, a non-zero
// exit status, and no IR on stdout.

// CHECK-NOT:   Traceback
// CHECK:       msd-opt: error: bad --pass-pipeline 'builtin.module(bogus)': {{.*}}'bogus' does not refer to a registered pass or pass pipeline
// CHECK-NOT:   Traceback
// CHECK-NOT:   module

// Valid IR: only the command line is at fault.
func.func @valid(%x: tensor<4xf32>) -> tensor<4xf32> {
  return %x : tensor<4xf32>
}
