// torch >= 2.x treats a named PrivateUse1 backend as the current
// accelerator: pin_memory(), is_pinned() and DataLoader pinning go through
// its hooks. lazyinit holds no memory of its own, so pinning is delegated
// to CUDA where it is present (else to the CPU allocator), and importing
// lazyinit changes nothing for CPU/CUDA code.
#include <lazyinit/compat.h>
#include <lazyinit/registration.h>

#if LAZYINIT_TORCH_AT_LEAST(2, 9)
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <c10/core/CPUAllocator.h>

namespace lazyinit {
namespace {

bool has_cuda() {
  return at::detail::getCUDAHooks().hasCUDA();
}

struct LazyHooks final : public at::PrivateUse1HooksInterface {
  void init() const override {}
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return true; }
  c10::DeviceIndex deviceCount() const override { return 1; }
  c10::DeviceIndex getCurrentDevice() const override { return 0; }
  void setCurrentDevice(c10::DeviceIndex) const override {}
  c10::DeviceIndex exchangeDevice(c10::DeviceIndex) const override { return 0; }
  c10::DeviceIndex maybeExchangeDevice(c10::DeviceIndex) const override { return 0; }
  bool isPinnedPtr(const void* data) const override {
    return has_cuda() && at::detail::getCUDAHooks().isPinnedPtr(data);
  }
  at::Allocator* getPinnedMemoryAllocator() const override {
    return has_cuda() ? at::detail::getCUDAHooks().getPinnedMemoryAllocator()
                      : c10::GetCPUAllocator();
  }
  const at::Generator& getDefaultGenerator(c10::DeviceIndex) const override {
    // Recording draws nothing; replay uses the target device's generator.
    return at::detail::getDefaultCPUGenerator();
  }
  at::Device getDeviceFromPtr(void*) const override {
    return at::Device(c10::DeviceType::PrivateUse1, 0);
  }
};

}  // namespace

void register_privateuse1_hooks() {
  static LazyHooks hooks;
  if (!at::isPrivateUse1HooksRegistered()) {
    at::RegisterPrivateUse1HooksInterface(&hooks);
  }
}

}  // namespace lazyinit
#else
namespace lazyinit {
void register_privateuse1_hooks() {}  // torch 1.x has no such hooks
}  // namespace lazyinit
#endif
