// RUN: echo 'func.func @broken( {' | not msd-opt - 2>&1 | FileCheck %s --check-prefix=PARSE
// RUN: not msd-opt %s --msd-bogus 2>&1 | FileCheck %s --check-prefix=UNKNOWN
// RUN: not msd-opt %s --msd-decompose-activations="slices=7" 2>&1 | FileCheck %s --check-prefix=SLICES
// RUN: not msd-opt %s --msd-decompose-activations="foo=1" 2>&1 | FileCheck %s --check-prefix=OPTION

// msd-opt's error handling: every bad input ends in a non-zero exit status and one
// "msd-opt: error: ..." message on stderr -- never a Python traceback, never partial IR on stdout.
// (lit's internal shell: `not` inverts the status; 2>&1 merges stderr into the pipe.)

// Malformed IR on stdin: the parser's diagnostic, located in "<stdin>".
// PARSE-NOT:   Traceback
// PARSE:       msd-opt: error: cannot parse <stdin>:
// PARSE-NEXT:  loc("<stdin>":1:{{[0-9]+}}): expected
// PARSE-NOT:   Traceback
// PARSE-NOT:   module

// A pass flag that is not registered: the known passes and the usage line.
// UNKNOWN-NOT:   Traceback
// UNKNOWN:       msd-opt: error: unknown pass '--msd-bogus' (known: --msd-decompose-activations, --msd-attention-kernels, --msd-row-kernels, --msd-prepack-parameters)
// UNKNOWN-NEXT:  usage: msd-opt
// UNKNOWN-NOT:   module

// An option value the pass does not support (slices must be 1, 2 or 3).
// SLICES-NOT:  Traceback
// SLICES:      msd-opt: error: {{.*}}slices=7 is not supported (choose 1, 2 or 3)
// SLICES-NOT:  Traceback
// SLICES-NOT:  module

// An option the pass does not have: the pass's options are listed.
// OPTION-NOT:   Traceback
// OPTION:       msd-opt: error: --msd-decompose-activations: unknown option 'foo=1' (options: slices, act-scale, act-format, mx-scale, mx-lowering{{.*}})
// OPTION-NEXT:  usage: msd-opt
// OPTION-NOT:   module

// Valid IR, so that only the command line is at fault in the runs on this file.
func.func @valid(%x: tensor<4xf32>) -> tensor<4xf32> {
  return %x : tensor<4xf32>
}
