// Result layouts as the CPU kernels give them.
//
// The recorder learns output geometry from Meta kernels, but a Meta kernel
// may lay out a result differently from the CPU kernel of the same op (on
// torch 1.13, abs/logical_not/angle/isinf of a transposed tensor come out
// contiguous from Meta and transposed from the CPU; torch.where with size-1
// or empty operands). Strides matter beyond metadata: random ops such as
// multinomial fill `empty_like(input)` in memory order, so a different
// layout gives different values downstream.
#pragma once

#include <lazyinit/op_info.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>

#include <vector>

namespace lazyinit {

// Replaces the strides of the fresh tensor results in `meta_stack` (the
// Meta kernel's outputs for `args`) with those the CPU kernel gives. The
// CPU kernel runs on small stand-ins of the inputs: sizes mapped to small
// ones by an increasing map (0 and 1 kept), strides chosen so that every
// comparison a layout decision makes (stride against stride, stride against
// stride * size) comes out as for the real inputs. Its results' layouts are
// then mapped back to the real sizes. Where the stand-ins cannot be built,
// the kernel fails on them, or a result's layout cannot be mapped back, the
// Meta kernel's answer stays. Only runs where an input is empty or has
// other strides than a contiguous tensor of its sizes: otherwise Meta and
// CPU kernels agree.
void use_cpu_layout(
    const c10::OperatorHandle& op,
    const OpInfo& info,
    const std::vector<c10::IValue>& args,
    std::vector<c10::IValue>& meta_stack);

}  // namespace lazyinit
