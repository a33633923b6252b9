// Registers the recorder on the dispatch key that "lazy" maps to.
//
// * A boxed fallback catches every op without a kernel for that key.
// * CompositeExplicitAutograd kernels would otherwise win over a fallback
//   and decompose ops (ones -> empty + fill_, randn -> empty + normal_);
//   the recorder is registered explicitly for those, so the tape holds the
//   op the model called and the Meta kernel still infers shapes.
// * Tensor.to(device) materializes in place (see to_kernel).
// * dropout takes the CPU's path, not the fused one (see dropout_kernel).
#include <lazyinit/core/compat.h>
#include <lazyinit/core/device.h>
#include <lazyinit/core/lazy_tensor_impl.h>
#include <lazyinit/record/recorder.h>
#include <lazyinit/registration.h>
#include <lazyinit/replay/replay.h>
#include <lazyinit/rng/chain.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/dropout.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/ones.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <memory>
#include <mutex>
#include <set>
#include <string>

namespace lazyinit {
namespace {

// Ops whose recording would give wrong values; they fail with a message.
const std::set<std::string>& unsupported_ops() {
  static const std::set<std::string> names = {
      "set_",  // rebinds storage: not a value of the tape
      "_cudnn_rnn_flatten_weight",
  };
  return names;
}

void recorder_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack* stack) {
  record_op(op, stack);
}

void unsupported_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack*) {
  TORCH_CHECK(
      false, "lazyinit: ", op.schema().operator_name(),
      " cannot be recorded on lazy tensors. Materialize the tensors it "
      "uses first (lazyinit.materialize(t) or t.to(\"cpu\")), or call it "
      "outside LazyInitContext.");
}

// Tensor.to(): to a real device, the tensor turns real in place (so
// Module.to() keeps every Parameter object and tie) and to() then sees a
// tensor already there; otherwise the usual composite implementation runs
// (returning self, or recording _to_copy).
void to_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const size_t num_args = schema.arguments().size();
  auto args = torch::jit::last(*stack, num_args);
  const at::Tensor& self = args[0].toTensor();
  c10::optional<c10::Device> target;
  const auto& overload = schema.overload_name();
  if (overload == "device") {
    target = args[1].toDevice();
  } else if (overload == "dtype_layout" && args[3].isDevice()) {
    target = args[3].toDevice();
  } else if (overload == "other") {
    target = args[1].toTensor().device();
  }
  if (target.has_value() && !is_lazy_device(*target) && get_pending_impl(self) != nullptr) {
    auto lock = lock_graph();  // Tensor.to() holds the GIL
    // The generator is not caught up here: a real random op that follows
    // (torchaudio's `w.copy_(w.cpu().normal_().to(w.device))`) catches it
    // up itself (rng_hooks.cpp), and catching up would count the pending
    // random tensors as drawn on the CPU before their device is chosen.
    materialize_tensor(self, *target);
    op.callBoxed(stack);
    return;
  }
  // The CPU entry of a CompositeImplicitAutograd op is its math kernel.
  op.redispatchBoxed(c10::DispatchKeySet(c10::DispatchKey::CPU), stack);
}

// The layout _dropout gives its mask: contiguous up to some torch 2.x
// (empty_like(input, LEGACY_CONTIGUOUS_MEMORY_FORMAT)), the input's own
// since (empty_like(input)); for a transposed input the Bernoulli draws land
// on other elements. Asked of torch once, on a transposed stand-in, with
// the default generator set to a known state and then put back.
at::MemoryFormat dropout_mask_format() {
  static const at::MemoryFormat format = [] {
    at::Generator global = at::detail::getDefaultCPUGenerator();
    const GenState saved = GenState::of(global);
    at::Generator known = at::make_generator<at::CPUGeneratorImpl>(/*seed=*/0);
    const at::Tensor input = at::ones({3, 16}, at::TensorOptions().dtype(at::kDouble)).t();
    GenState::of(known).apply(global);
    const at::Tensor got = at::dropout(input, 0.5, /*train=*/true);
    saved.apply(global);
    at::Tensor mask = at::empty_like(input, at::MemoryFormat::Contiguous);
    mask.bernoulli_(0.5, known);
    const bool contiguous = at::equal(got, input.mul(mask.div_(0.5)));
    return contiguous ? at::MemoryFormat::Contiguous : at::MemoryFormat::Preserve;
  }();
  return format;
}

// at::dropout (a CompositeImplicitAutograd op) takes the fused
// native_dropout when is_fused_kernel_acceptable(input, p) holds, which is
// true for Lazy tensors (is_lazy()), and
// _dropout on the CPU. The two lay out their masks and round differently,
// so lazy values would differ from eager CPU construction. Materialization
// targets the CPU: run the CPU path, _dropout (ATen/native/Dropout.cpp), op
// by op; each op is recorded, and autograd (which falls through to this
// kernel) sees them as it would see the composite.
void dropout_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack* stack) {
  auto args = torch::jit::last(*stack, 3);
  const at::Tensor input = args[0].toTensor();
  const double p = args[1].toDouble();
  const bool train = args[2].toBool();
  if (!train || !(p > 0 && p < 1) || input.numel() == 0) {
    // Not fused on any device: the math kernel is the CPU path already.
    op.redispatchBoxed(c10::DispatchKeySet(c10::DispatchKey::CPU), stack);
    return;
  }
  at::Tensor noise = at::empty_like(input, dropout_mask_format());
  noise.bernoulli_(1 - p);
  noise.div_(1 - p);
  at::Tensor result = input.mul(noise);
  torch::jit::drop(*stack, 3);
  stack->emplace_back(std::move(result));
}

void check_lazy_key_free() {
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow("aten::empty", "memory_format");
  TORCH_CHECK(
      !op.hasKernelForDispatchKey(c10::DispatchKey::Lazy),
      "lazyinit: the Lazy dispatch key is already taken, by torch._lazy's "
      "TorchScript backend (torch._lazy.ts_backend.init() was called). Both "
      "cannot own the \"lazy\" device in one process: import lazyinit in a "
      "process that does not use torch._lazy.");
}

bool is_composite_explicit(const c10::OperatorHandle& op) {
  return op.hasKernelForDispatchKey(c10::DispatchKey::CompositeExplicitAutograd) ||
         op.hasKernelForDispatchKey(c10::DispatchKey::CompositeExplicitAutogradNonFunctional);
}

std::string qualified(const c10::OperatorName& name) {
  return name.overload_name.empty() ? name.name : name.name + "." + name.overload_name;
}

// Tensor.to and dropout are CompositeImplicitAutograd ops given a kernel of
// our own. With a backend kernel and no autograd formula, torch 2.x runs
// them through its autograd fallback (VariableFallbackKernel.cpp), which
// reads every input's grad_fn: for a view whose base was written in place
// that raises (a chunk() output), where eager's composite raises nothing.
// Registered on AutogradLazy too, they sit where the composite would: the
// ops they call go through autograd themselves.
void register_composite_kernels(torch::Library& lib) {
  for (const char* overload : {"dtype_layout", "device", "dtype", "other"}) {
    lib.impl(
        (std::string("to.") + overload).c_str(),
        torch::CppFunction::makeFromBoxedFunction<&to_kernel>());
  }
  lib.impl("dropout", torch::CppFunction::makeFromBoxedFunction<&dropout_kernel>());
}

void register_kernels(torch::Library& lib, torch::Library& fallback, c10::DispatchKey key) {
  auto& dispatcher = c10::Dispatcher::singleton();
  register_composite_kernels(lib);
  for (const auto& name : dispatcher.getAllOpNames()) {
    if (name.name.rfind("aten::", 0) != 0) {
      continue;
    }
    auto op = dispatcher.findOp(name);
    if (!op.has_value() || op->hasKernelForDispatchKey(key)) {
      continue;
    }
    const std::string bare = name.name.substr(6);
    std::string local = qualified(c10::OperatorName(bare, name.overload_name));
    if (unsupported_ops().count(bare)) {
      lib.impl(local.c_str(), torch::CppFunction::makeFromBoxedFunction<&unsupported_kernel>());
    } else if (is_composite_explicit(*op)) {
      lib.impl(local.c_str(), torch::CppFunction::makeFromBoxedFunction<&recorder_kernel>());
    }
  }
  fallback.fallback(torch::CppFunction::makeFromBoxedFunction<&recorder_kernel>());
}

}  // namespace

void register_backend() {
  static std::once_flag once;
  static std::unique_ptr<torch::Library> lib;
  static std::unique_ptr<torch::Library> fallback;
  static std::unique_ptr<torch::Library> autograd;
  std::call_once(once, [] {
    // The Lazy key on every torch, not a PrivateUse1 backend renamed
    // "lazy" (torch >= 2.9 would parse "lazy" to it): a named PrivateUse1
    // backend becomes torch.accelerator's current accelerator, which moves
    // FSDP2's default mesh, torch.get_device_module() and pinning onto the
    // lazy device in every process that imports lazyinit, and it would
    // collide with out-of-tree PrivateUse1 backends.
    const c10::DispatchKey key = lazy_dispatch_key();
    check_lazy_key_free();
    lib = std::make_unique<torch::Library>(torch::Library::IMPL, "aten", key, __FILE__, __LINE__);
    fallback = std::make_unique<torch::Library>(torch::Library::IMPL, "_", key, __FILE__, __LINE__);
    register_kernels(*lib, *fallback, key);
    autograd = std::make_unique<torch::Library>(
        torch::Library::IMPL, "aten", c10::DispatchKey::AutogradLazy, __FILE__, __LINE__);
    register_composite_kernels(*autograd);
    register_device_guard();
    register_rng_hooks();
  });
}

}  // namespace lazyinit
