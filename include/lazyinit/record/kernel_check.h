// Checks that eager's CPU kernels make and Meta kernels cannot: on the
// values of some arguments (indices in range, probabilities in [0, 1]),
// and on the dtypes of matrix products where a torch version's Meta kernel
// leaves them out. Run at the call, so that eager's error comes where
// eager raises it.
#pragma once

#include <lazyinit/record/op_info.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>

#include <vector>

namespace lazyinit {

// For an op whose OpInfo names kernel-checked arguments (value_checked_args)
// or marks it a matrix product (matmul_operands): runs the op's CPU kernel
// once on real tensors, the checked arguments with their real values (a
// lazy one computed as an early value, as printing it would) and every
// other lazy argument a stand-in of its geometry (zeros; written ones
// uninitialized; for matrix products every dimension above 1 shrunk to 1,
// since their Meta kernels checked the shapes). An error the kernel raises
// is raised here with eager's exception type; the run's results and draws
// are thrown away (the default CPU generator is put back, an explicit one
// is replaced by a scratch one). Skipped, leaving the error to replay
// (where it names the recorded call), when a checked lazy argument's
// storage exceeds 16 MiB, the unshrunk stand-ins exceed 256 MiB, a real
// argument is not on the CPU, or the CPU kernel does not implement the
// dtype (eager on another device may).
void check_on_cpu_kernel(
    const c10::OperatorHandle& op, const OpInfo& info, const std::vector<c10::IValue>& args);

}  // namespace lazyinit
