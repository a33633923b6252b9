#include <lazyinit/core/device.h>

#include <c10/core/DispatchKeySet.h>
#include <c10/util/Exception.h>

namespace lazyinit {
namespace {

// Per thread, like LazyInitContext: contexts in different threads may name
// different default devices.
c10::Device& default_device_slot() {
  thread_local c10::Device device(c10::DeviceType::CPU);
  return device;
}

thread_local bool g_in_context = false;

}  // namespace

c10::Device lazy_device() {
  return c10::Device(lazy_device_type());
}

bool is_lazy_device(const c10::Device& device) {
  return device.type() == lazy_device_type();
}

c10::Device default_device() {
  return default_device_slot();
}

void set_default_device(c10::Device device) {
  TORCH_CHECK(
      !is_lazy_device(device),
      "lazyinit: the default device is where lazy tensors get their values "
      "(e.g. \"cpu\" or \"cuda\"); it cannot be the lazy device itself.");
  default_device_slot() = device;
}

bool in_context() {
  return g_in_context;
}

void set_in_context(bool active) {
  g_in_context = active;
}

}  // namespace lazyinit
