// Real random factories (torch.randperm(n), torch.rand(k) on the CPU) may
// run while lazy random ops are pending, e.g. nn.init.sparse_ on a tensor
// made with device="lazy". Eager construction would have drawn the lazy
// ops' numbers first, so the generator is caught up before such a call.
// The hook sits on BackendSelect, where factories pick their backend; it
// then does what PyTorch's own BackendSelect kernel does.
#include <lazyinit/compat.h>
#include <lazyinit/device.h>
#include <lazyinit/registration.h>
#include <lazyinit/rng.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/TensorOptions.h>
#include <torch/library.h>

#include <memory>

namespace lazyinit {
namespace {

template <typename T>
c10::optional<T> optional_arg(const c10::IValue& v);

template <>
c10::optional<c10::ScalarType> optional_arg(const c10::IValue& v) {
  return v.isNone() ? c10::nullopt : c10::optional<c10::ScalarType>(v.toScalarType());
}
template <>
c10::optional<c10::Layout> optional_arg(const c10::IValue& v) {
  return v.isNone() ? c10::nullopt : c10::optional<c10::Layout>(v.toLayout());
}
template <>
c10::optional<c10::Device> optional_arg(const c10::IValue& v) {
  return v.isNone() ? c10::nullopt : c10::optional<c10::Device>(v.toDevice());
}

void random_factory_backend_select(
    const c10::OperatorHandle& op,
    c10::DispatchKeySet ks,
    torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const auto& arguments = schema.arguments();
  auto args = torch::jit::last(*stack, arguments.size());
  c10::optional<c10::ScalarType> dtype;
  c10::optional<c10::Layout> layout;
  c10::optional<c10::Device> device;
  c10::optional<at::Generator> generator;
  for (size_t i = 0; i < arguments.size(); ++i) {
    const auto& name = arguments[i].name();
    if (name == "dtype") {
      dtype = optional_arg<c10::ScalarType>(args[i]);
    } else if (name == "layout") {
      layout = optional_arg<c10::Layout>(args[i]);
    } else if (name == "device") {
      device = optional_arg<c10::Device>(args[i]);
    } else if (name == "generator") {
      if (args[i].isGenerator()) {
        generator = args[i].toGenerator();
      }
    }
  }
  const bool lazy = device.has_value() && is_lazy_device(*device);
  if (!lazy && (!device.has_value() || device->is_cpu()) &&
      (!generator.has_value() || generator->device().is_cpu())) {
    rng_catch_up_default(generator);
  }
  const auto after_backend_select =
      c10::DispatchKeySet(c10::DispatchKeySet::FULL_AFTER, c10::DispatchKey::BackendSelect);
  op.redispatchBoxed(
      c10::DispatchKeySet(c10::computeDispatchKey(dtype, layout, device)) |
          (ks & after_backend_select),
      stack);
}

}  // namespace

void register_rng_hooks() {
  static std::unique_ptr<torch::Library> lib;
  if (lib) {
    return;
  }
  compat::SilenceWarnings quiet;  // replacing PyTorch's kernels is intended
  lib = std::make_unique<torch::Library>(
      torch::Library::IMPL, "aten", c10::DispatchKey::BackendSelect, __FILE__, __LINE__);
  auto& dispatcher = c10::Dispatcher::singleton();
  for (const auto& name : dispatcher.getAllOpNames()) {
    if (name.name != "aten::rand" && name.name != "aten::randn" &&
        name.name != "aten::randint" && name.name != "aten::randperm" &&
        name.name != "aten::normal") {
      continue;
    }
    auto op = dispatcher.findOp(name);
    if (!op.has_value() || !op->hasKernelForDispatchKey(c10::DispatchKey::BackendSelect)) {
      continue;
    }
    std::string local = name.name.substr(6);
    if (!name.overload_name.empty()) {
      local += "." + name.overload_name;
    }
    lib->impl(
        local.c_str(),
        torch::CppFunction::makeFromBoxedFunction<&random_factory_backend_select>());
  }
}

}  // namespace lazyinit
