// Real random ops (torch.randperm(n) inside nn.init.sparse_ on a lazy
// tensor, an in-place normal_ on a real tensor) may run while lazy random
// ops are pending. Eager construction would have drawn the lazy ops'
// numbers first, so the generator they draw from is caught up before such
// a call. The hooks sit on BackendSelect: factories pick their backend
// there (the hook then does what PyTorch's own kernel does), and every
// other op passes through it.
#include <lazyinit/core/compat.h>
#include <lazyinit/core/device.h>
#include <lazyinit/record/op_info.h>
#include <lazyinit/registration.h>
#include <lazyinit/rng/chain.h>

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
    const c10::OperatorHandle& op, c10::DispatchKeySet ks, torch::jit::Stack* stack) {
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

// Every other random op (normal_, uniform_, bernoulli_, random_,
// multinomial, ... on existing tensors): BackendSelect runs for every op
// (it is in the default included key set), so a kernel there sees the call
// before the backend does. On a real tensor, the generator it draws from is
// caught up first: eager construction would have drawn the pending lazy
// ops' numbers before this call. Lazy tensors pass through (they record).
void random_op_backend_select(
    const c10::OperatorHandle& op, c10::DispatchKeySet ks, torch::jit::Stack* stack) {
  if (rng_any_chain_recorded()) {
    const auto& arguments = op.schema().arguments();
    auto args = torch::jit::last(*stack, arguments.size());
    c10::optional<at::Generator> generator;
    bool real_cpu = false;
    bool lazy = false;
    for (size_t i = 0; i < arguments.size(); ++i) {
      const auto& v = args[i];
      if (v.isGenerator()) {
        generator = v.toGenerator();
      } else if (v.isTensor() && v.toTensor().defined()) {
        const auto& t = v.toTensor();
        lazy = lazy || is_lazy_device(t.device());
        real_cpu = real_cpu || t.device().is_cpu();
      }
    }
    const bool cpu_generator = generator.has_value() ? generator->device().is_cpu() : real_cpu;
    if (!lazy && cpu_generator) {
      rng_catch_up_default(generator);
    }
  }
  const auto after_backend_select =
      c10::DispatchKeySet(c10::DispatchKeySet::FULL_AFTER, c10::DispatchKey::BackendSelect);
  op.redispatchBoxed(ks & after_backend_select, stack);
}

bool is_composite_implicit(const c10::OperatorHandle& op) {
  return op.hasKernelForDispatchKey(c10::DispatchKey::CompositeImplicitAutograd);
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
    if (name.name.rfind("aten::", 0) != 0) {
      continue;
    }
    auto op = dispatcher.findOp(name);
    if (!op.has_value() || !op->hasSchema() || !is_random_op(op->schema())) {
      continue;
    }
    std::string local = name.name.substr(6);
    if (!name.overload_name.empty()) {
      local += "." + name.overload_name;
    }
    if (op->hasKernelForDispatchKey(c10::DispatchKey::BackendSelect)) {
      // A factory: PyTorch's own kernel picks the backend; ours does too.
      lib->impl(
          local.c_str(),
          torch::CppFunction::makeFromBoxedFunction<&random_factory_backend_select>());
    } else if (!is_composite_implicit(*op)) {
      lib->impl(
          local.c_str(), torch::CppFunction::makeFromBoxedFunction<&random_op_backend_select>());
    }
  }
}

}  // namespace lazyinit
