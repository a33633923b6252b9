#include <lazyinit/record/kernel_check.h>

#include <lazyinit/core/device.h>
#include <lazyinit/core/lazy_tensor_impl.h>
#include <lazyinit/core/tensor_args.h>
#include <lazyinit/record/early.h>
#include <lazyinit/record/layout.h>
#include <lazyinit/replay/replay.h>
#include <lazyinit/rng/chain.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/as_strided.h>
#include <ATen/ops/empty_strided.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <exception>
#include <string>

namespace lazyinit {
namespace {

// A checked lazy argument's value is computed at the call (an early value,
// kept for materialization); beyond this, its check is left to replay.
constexpr int64_t kMaxCheckedStorageBytes = int64_t{16} << 20;
// Stand-ins the kernel reads whole (out-of-place ops copy self); written
// stand-ins are uninitialized memory the kernel touches only where it
// writes, and are not counted.
constexpr int64_t kMaxReadStandInBytes = int64_t{256} << 20;

bool contains(const std::vector<size_t>& v, size_t i) {
  return std::find(v.begin(), v.end(), i) != v.end();
}

// The real value of a checked argument, or an undefined tensor where it is
// too large to compute at the call.
at::Tensor checked_value(const at::Tensor& t) {
  auto* impl = get_pending_impl(t);
  if (impl == nullptr) {
    return t;
  }
  LazyStorage& storage = *impl->lazy_storage();
  if (storage.nbytes > kMaxCheckedStorageBytes || !default_device().is_cpu()) {
    return at::Tensor();  // too large, or its random draws would be CUDA's
  }
  // Computed where early values are (the default device), leaving no trace
  // (ProbeScope: materialization still decides the device of the random
  // nodes it reads); checked on the CPU with the other arguments. A value
  // that cannot be computed now (random nodes already built on another
  // device) is checked with a stand-in, and at replay.
  at::Tensor base;
  try {
    base = probe_value(storage);
  } catch (const c10::Error&) {
    return at::Tensor();
  }
  const at::Tensor value = at::as_strided(
      typed_view(base, impl->dtype()), impl->sizes(), impl->strides(), impl->storage_offset());
  return value.device().is_cpu() ? value : value.to(at::kCPU);
}

// The call on real CPU tensors (see kernel_check.h); false where it cannot
// be built.
bool real_call(
    const OpInfo& info, const std::vector<c10::IValue>& args, std::vector<c10::IValue>& stack) {
  const std::vector<size_t> written = written_args_of(info, args);
  stack = args;
  copy_tensor_lists(stack);
  bool ok = true;
  int64_t read_bytes = 0;
  for_each_tensor(args, [&](size_t i, int64_t e, const at::Tensor& t) {
    if (!ok) {
      return;
    }
    const bool is_lazy = get_pending_impl(t) != nullptr;
    if (!is_lazy && !t.device().is_cpu()) {
      ok = false;
      return;
    }
    at::Tensor real;
    if (contains(info.value_checked_args, i)) {
      real = checked_value(t);
      ok = real.defined();
    } else if (is_lazy || contains(written, i)) {
      // Uninitialized: the checks read no values of these arguments (and a
      // written real tensor is not the caller's).
      real = at::empty_strided(t.sizes(), t.strides(), t.options().device(at::kCPU));
      if (!contains(written, i)) {
        read_bytes += Geometry::of(real).extent() * static_cast<int64_t>(real.dtype().itemsize());
      }
    } else {
      real = t;
    }
    if (ok) {
      set_tensor(stack, i, e, real);
    }
  });
  for (size_t i : info.device_args) {
    if (stack[i].isDevice()) {
      stack[i] = c10::IValue(c10::Device(c10::kCPU));
    }
  }
  if (info.generator_arg >= 0 && stack[info.generator_arg].isGenerator()) {
    stack[info.generator_arg] = c10::IValue(at::detail::createCPUGenerator(0));
  }
  return ok && read_bytes <= kMaxReadStandInBytes;
}

// The error the CPU kernel raises on `stack`, if any (a missing kernel for
// a dtype aside). Its draws are thrown away: the default CPU generator is
// put back.
std::exception_ptr kernel_error(const c10::OperatorHandle& op, std::vector<c10::IValue>& stack) {
  const std::exception_ptr error = run_cpu_call(op, stack, /*may_draw=*/true);
  if (is_c10_error(error, is_missing_kernel_error)) {
    return nullptr;  // eager on another device may have it
  }
  return error;
}

}  // namespace

void check_on_cpu_kernel(
    const c10::OperatorHandle& op, const OpInfo& info, const std::vector<c10::IValue>& args) {
  bool has_checked = false;
  for (size_t i : info.value_checked_args) {
    for_each_tensor({args[i]}, [&](size_t, int64_t, const at::Tensor&) { has_checked = true; });
  }
  std::vector<c10::IValue> stack;
  if (!has_checked || !real_call(info, args, stack)) {
    return;
  }
  const std::exception_ptr error = kernel_error(op, stack);
  if (!error) {
    return;
  }
  bool writes_lazy = false;
  for (size_t w : written_args_of(info, args)) {
    writes_lazy =
        writes_lazy || (args[w].isTensor() && get_pending_impl(args[w].toTensor()) != nullptr);
  }
  if (writes_lazy) {
    // Eager may write part of the tensor before its check fails
    // (index_fill_ of indices [0, 5] on 3 rows fills row 0 first): the call
    // runs early on the real values, keeps what it wrote, and raises
    // eager's error (run_early).
    torch::jit::Stack real = args;
    run_early(op, &real, "its CPU kernel rejects the values of its arguments");
  }
  std::rethrow_exception(error);  // eager's error, with eager's exception type
}

}  // namespace lazyinit
