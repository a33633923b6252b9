// Whole-module materialization with few allocations per device and dtype
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
// buffer per (device, dtype) on the CPU, a few growing ones on a GPU
// (allocation_parts()): each storage's value is computed in its own
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

// On a GPU, memory for many tensors is allocated in growing parts, not at
// once: cudaMalloc's time grows with the size (on an H200 about 0.1 ms plus
// 0.09 ms a GiB: 1.3 ms for a 7B model in bf16), and no kernel can start
// before its memory exists. The first part is small, so that kernels start
// early; each later one is allocated while the GPU fills those before it.
// Given the sizes of items in the order they are filled on `device`,
// returns the end (one past the last index) of each part; the last end is
// sizes.size() (no part for no items). On the CPU all items are one part:
// pages are mapped as they are first written anyway.
std::vector<size_t> allocation_parts(const std::vector<int64_t>& sizes, c10::Device device);

// Bytes a slice of `nbytes` takes in a flat buffer (rounded up to the CUDA
// caching allocator's 512-byte blocks).
int64_t flat_slice_bytes(int64_t nbytes);

// A flat tensor of `numel` elements of `dtype` over bytes [offset, ...) of
// the byte tensor `buffer`, in a c10::Storage of its own that keeps
// `buffer` alive (not resizable).
at::Tensor flat_slice(
    const at::Tensor& buffer, int64_t offset, int64_t numel, caffe2::TypeMeta dtype);

// Contiguous `t` as a new tensor of `shape` (same number of elements) over
// the same storage, made without dispatching: view() costs a dispatcher
// call and autograd's view bookkeeping, a good part of a small shard's cost.
// For lazyinit's own buffers only (no autograd history to keep).
at::Tensor contiguous_alias(const at::Tensor& t, c10::IntArrayRef shape);

}  // namespace lazyinit
