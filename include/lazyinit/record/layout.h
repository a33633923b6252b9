// What the CPU kernel says of a call before it is recorded: eager's
// value-independent errors, and result layouts as the CPU kernels give them.
//
// The recorder learns output geometry from Meta kernels, but a Meta kernel
// may lay out a result differently from the CPU kernel of the same op (on
// torch 1.13, abs/logical_not/angle/isinf of a transposed tensor come out
// contiguous from Meta and transposed from the CPU; torch.where with size-1
// or empty operands). Strides matter beyond metadata: random ops such as
// multinomial fill `empty_like(input)` in memory order, so a different
// layout gives different values downstream.
#pragma once

#include <lazyinit/record/op_info.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>

#include <exception>
#include <functional>
#include <vector>

namespace lazyinit {

// Runs the op's CPU kernel on small stand-ins of the arguments, once per
// call signature (the recorder calls it where the Meta result is not
// cached), for two things the Meta kernel may get wrong:
//
// - errors: where the CPU kernel has no code for a dtype (normal_ of an
//   int64 tensor, which the Meta kernel accepts), eager's error is raised
//   now, at the call, with eager's exception type. Errors that may come
//   from the stand-ins' values (ones, zeros) are not raised: the real
//   values decide at replay.
// - layouts: the strides (and dtype) of fresh results and of resized out=
//   tensors become those the CPU kernel gives. Sizes are mapped to small
//   ones by an increasing map (0 and 1 kept), strides chosen so that every
//   comparison a layout decision makes (stride against stride, stride
//   against stride * size) comes out as for the real inputs, and the
//   results' layouts are mapped back to the real sizes. Only where an
//   input is empty or has other strides than a contiguous tensor of its
//   sizes: otherwise Meta and CPU kernels agree.
//
// Where the stand-ins cannot be built or a layout cannot be mapped back,
// the Meta answer stays.
void check_on_cpu(
    const c10::OperatorHandle& op,
    const OpInfo& info,
    const std::vector<c10::IValue>& args,
    std::vector<c10::IValue>& meta_stack);

// Runs `op` on `stack` (real CPU tensors) to see what the CPU kernel does:
// without autograd and without catching up lazy draws; with `may_draw`,
// the default CPU generator is put back afterwards (the call's draws are
// thrown away). The arguments are held across the call: torch 1.13's
// boxed adapter reads multi-out returns through references to arguments it
// has dropped (early.cpp). Returns what the call threw, or null. The one
// runner of the recorder's CPU checks (layouts here, argument values in
// kernel_check.cpp, overlaps in overlap.cpp).
std::exception_ptr run_cpu_call(
    const c10::OperatorHandle& op, std::vector<c10::IValue>& stack, bool may_draw);

// Whether `error` is a c10::Error that `accept` accepts.
bool is_c10_error(
    const std::exception_ptr& error, const std::function<bool(const c10::Error&)>& accept);

// Whether a CPU kernel's error says it has no code for a dtype
// (AT_DISPATCH): eager raises it whatever the values, though eager on
// another device may not.
bool is_missing_kernel_error(const c10::Error& e);

}  // namespace lazyinit
