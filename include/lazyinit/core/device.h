// Which device type and dispatch key mean "lazy" in this process, and the
// device that values are computed on when they are needed early.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/DispatchKey.h>

namespace lazyinit {

// DeviceType::Lazy and its dispatch key, on every supported torch
// (docs/architecture.md, "Which key", says why not PrivateUse1).
constexpr c10::DeviceType lazy_device_type() {
  return c10::DeviceType::Lazy;
}
constexpr c10::DispatchKey lazy_dispatch_key() {
  return c10::DispatchKey::Lazy;
}
c10::Device lazy_device();
bool is_lazy_device(const c10::Device& device);

// Device for early materialization and the default target of materialize()
// for storages created now (LazyInitContext(default_device=...)). CPU unless set.
c10::Device default_device();
void set_default_device(c10::Device device);

// Whether a LazyInitContext is active in this thread: model construction is
// running, and what it materializes is part of it.
bool in_context();
void set_in_context(bool active);

}  // namespace lazyinit
