// A device guard for the lazy device. It has one device and no streams;
// nothing here may throw (DeviceGuardImplInterface's contract), since
// DeviceGuard and torch.accelerator call it from many places.
#include <lazyinit/core/device.h>
#include <lazyinit/registration.h>

#include <c10/core/impl/DeviceGuardImplInterface.h>

namespace lazyinit {
namespace {

class LazyGuardImpl final : public c10::impl::DeviceGuardImplInterface {
 public:
  c10::DeviceType type() const override { return lazy_device_type(); }
  c10::Device exchangeDevice(c10::Device) const override {
    return c10::Device(lazy_device_type(), 0);
  }
  c10::Device getDevice() const override { return c10::Device(lazy_device_type(), 0); }
  void setDevice(c10::Device) const override {}
  void uncheckedSetDevice(c10::Device) const noexcept override {}
  c10::Stream getStream(c10::Device) const noexcept override {
    return c10::Stream(c10::Stream::DEFAULT, c10::Device(lazy_device_type(), 0));
  }
  c10::Stream exchangeStream(c10::Stream) const noexcept override {
    return c10::Stream(c10::Stream::DEFAULT, c10::Device(lazy_device_type(), 0));
  }
  c10::DeviceIndex deviceCount() const noexcept override { return 1; }
};

}  // namespace

void register_device_guard() {
  static LazyGuardImpl impl;
  // Replaces LTC's guard on torch 1.13: it asks a TorchScript backend that
  // is not running for its devices.
  static c10::impl::DeviceGuardImplRegistrar registrar(lazy_device_type(), &impl);
}

}  // namespace lazyinit
