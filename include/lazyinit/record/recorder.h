// The recorder: turns an op call on lazy tensors into graph nodes.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

namespace lazyinit {

// The boxed kernel registered for the lazy dispatch key.
void record_op(const c10::OperatorHandle& op, torch::jit::Stack* stack);

}  // namespace lazyinit
