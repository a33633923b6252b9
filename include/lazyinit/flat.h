// Whole-module materialization with one allocation per device and dtype
// (the fast path of lazyinit.materialize(module, ...)).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace lazyinit {

// Materializes the lazy storages behind `tensors` (a module's parameters
// and buffers; real or already materialized ones are skipped) into one
// buffer per (device, dtype): each storage's value is computed in its own
// slice, aligned like the caching allocator's blocks, which its tensors then
// hold as a c10::Storage of their own (the buffer lives while any slice
// does). Values are the same as one storage at a time.
// `device`: the target, or each storage's home device when unset.
// `progress(bytes)` is called after each storage. Generators are not
// settled here (finish_materialization()).
void materialize_flat(
    const std::vector<at::Tensor>& tensors,
    c10::optional<c10::Device> device,
    const std::function<void(int64_t)>& progress);

}  // namespace lazyinit
