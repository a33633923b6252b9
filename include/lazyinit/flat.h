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

// Bytes a slice of `nbytes` takes in a flat buffer (rounded up to the CUDA
// caching allocator's 512-byte blocks).
int64_t flat_slice_bytes(int64_t nbytes);

// A flat tensor of `numel` elements of `dtype` over bytes [offset, ...) of
// the byte tensor `buffer`, in a c10::Storage of its own that keeps
// `buffer` alive (not resizable).
at::Tensor flat_slice(const at::Tensor& buffer, int64_t offset, int64_t numel,
                      caffe2::TypeMeta dtype);

// Contiguous `t` as a new tensor of `shape` (same number of elements) over
// the same storage, made without dispatching: view() costs a dispatcher
// call and autograd's view bookkeeping, a good part of a small shard's cost.
// For lazyinit's own buffers only (no autograd history to keep).
at::Tensor contiguous_alias(const at::Tensor& t, c10::IntArrayRef shape);

}  // namespace lazyinit
