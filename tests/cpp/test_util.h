// Helpers shared by the C++ tests.
#pragma once

#include <ATen/ATen.h>

#include <lazyinit/core/device.h>
#include <lazyinit/core/lazy_tensor_impl.h>
#include <lazyinit/replay/replay.h>

namespace lazyinit {
namespace testing {

inline at::TensorOptions lazy_options() {
  return at::TensorOptions().device(lazy_device());
}

inline bool is_pending(const at::Tensor& t) {
  return get_pending_impl(t) != nullptr;
}

inline void materialize(const at::Tensor& t) {
  materialize_tensor(t, c10::Device(c10::kCPU));
  finish_materialization();
}

}  // namespace testing
}  // namespace lazyinit
