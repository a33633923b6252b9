// Memory overlap of a written lazy tensor (with another input of the same
// call, or with itself), checked at the call as eager checks it.
#pragma once

#include <lazyinit/record/op_info.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>

#include <vector>

namespace lazyinit {

// Eager's CPU and CUDA kernels refuse an in-place or out= write whose
// input partially overlaps the written tensor ("unsupported operation:
// some elements of the input tensor and the written-to tensor refer to a
// single memory location"); Meta tensors share no memory, so their kernels
// never see it. The same run checks a written tensor that overlaps itself
// (an expanded dimension: "more than one element of the written-to tensor
// refers to a single memory location"), which torch 2.14's Meta kernels
// let through. Where a written lazy tensor and another lazy argument of
// the call are dense views of one storage whose bytes intersect (the only
// case in which torch's check, at::get_overlap_status, can report a
// partial overlap), the op's CPU kernel runs on real CPU tensors with the
// same geometry over one buffer of that storage's size, and an overlap
// error it raises is raised here, with eager's exception type. Nothing
// else is taken from that run (its inputs are a fill pattern), except
// that where the kernel wrote part of the buffer before raising (eager
// leaves such a tensor half-written, and may have drawn), the call runs
// early on the real values and keeps what it wrote (run_early).
void check_overlap(
    const c10::OperatorHandle& op, const OpInfo& info, const std::vector<c10::IValue>& args);

}  // namespace lazyinit
