// Early materialization: ops that cannot be recorded (no Meta kernel, or
// they need values: item(), nonzero(), writes into real tensors) run for
// real on the default device, on the current values of their lazy inputs.
// Their outputs come back as lazy tensors holding constants, so the model
// stays on the lazy device and construction carries on.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <string>

namespace lazyinit {

void run_early(const c10::OperatorHandle& op, torch::jit::Stack* stack, const std::string& reason);

}  // namespace lazyinit
