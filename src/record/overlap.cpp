#include <lazyinit/record/overlap.h>

#include <lazyinit/core/lazy_tensor_impl.h>
#include <lazyinit/core/tensor_args.h>
#include <lazyinit/record/early.h>
#include <lazyinit/record/layout.h>
#include <lazyinit/rng/chain.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <string>
#include <utility>

namespace lazyinit {
namespace {

// Whether a tensor of this geometry covers a dense block of memory (every
// element once, no gaps): torch's is_non_overlapping_and_dense.
bool dense(const Geometry& g) {
  return at::empty_strided(g.sizes, g.strides, at::TensorOptions().device(c10::kMeta))
      .is_non_overlapping_and_dense();
}

// Byte range [begin, end) a dense view covers in its storage.
std::pair<int64_t, int64_t> byte_range(const LazyTensorImpl& impl) {
  const Geometry g = impl.geometry();
  const auto itemsize = static_cast<int64_t>(impl.dtype().itemsize());
  return {g.offset * itemsize, (g.offset + impl.numel()) * itemsize};
}

// Whether torch's overlap check could call a and b partially overlapping.
bool may_overlap_partially(const LazyTensorImpl& a, const LazyTensorImpl& b) {
  if (&a == &b || a.lazy_storage().get() != b.lazy_storage().get() || a.numel() == 0 ||
      b.numel() == 0) {
    return false;
  }
  const auto ra = byte_range(a);
  const auto rb = byte_range(b);
  return ra.first < rb.second && rb.first < ra.second && dense(a.geometry()) && dense(b.geometry());
}

// Torch's two messages: "... refer to a single memory location" (partial
// overlap with an input), "... refers to a single memory location"
// (internal overlap of the written tensor).
bool is_overlap_error(const c10::Error& e) {
  const std::string msg = e.what_without_backtrace();
  return msg.find("refer to a single memory location") != std::string::npos ||
         msg.find("refers to a single memory location") != std::string::npos;
}

// Whether torch's has_internal_overlap says YES: some element of a written
// tensor of this geometry is another's (an expanded dimension). Meta
// kernels check it on torch 1.13, not on torch 2.14.
bool overlaps_itself(const LazyTensorImpl& impl) {
  const Geometry g = impl.geometry();
  for (size_t d = 0; d < g.sizes.size(); ++d) {
    if (g.strides[d] == 0 && g.sizes[d] > 1) {
      return true;
    }
  }
  return false;
}

// A byte that makes no special float (0x5A5A5A5A is about 1.5e16).
constexpr int64_t kPattern = 0x5A;

// The call with every lazy argument of `storage` as a CPU tensor of its
// geometry over one buffer of kPattern bytes (other lazy arguments: zeroed
// tensors of their own; a generator: a scratch one); false where an
// argument cannot be given so, or a real tensor would be written.
bool real_call(
    const OpInfo& info,
    const std::vector<c10::IValue>& args,
    const LazyStorage& storage,
    at::Tensor& buffer,
    std::vector<c10::IValue>& stack) {
  for (size_t w : written_args_of(info, args)) {
    if (!args[w].isTensor() || get_pending_impl(args[w].toTensor()) == nullptr) {
      return false;
    }
  }
  buffer = at::full({storage.nbytes}, kPattern, at::TensorOptions().dtype(at::kByte));
  stack = args;
  copy_tensor_lists(stack);
  if (info.generator_arg >= 0 && stack[info.generator_arg].isGenerator()) {
    stack[info.generator_arg] = c10::IValue(at::detail::createCPUGenerator(0));
  }
  bool ok = true;
  for_each_tensor(args, [&](size_t i, int64_t e, const at::Tensor& t) {
    auto* impl = get_pending_impl(t);
    if (impl == nullptr) {
      ok = ok && t.device().is_cpu();
      return;
    }
    const Geometry g = impl->geometry();
    const auto options = at::TensorOptions().dtype(impl->dtype());
    at::Tensor real;
    if (impl->lazy_storage().get() == &storage) {
      real = at::empty({0}, options).set_(buffer.storage(), g.offset, g.sizes, g.strides);
    } else {
      real = at::zeros(g.sizes, options);
    }
    set_tensor(stack, i, e, real);
  });
  return ok;
}

// The overlap error the CPU kernel raises on `stack`, if any. The default
// generator is put back: the draws are thrown away.
c10::optional<std::string> overlap_error_of(
    const c10::OperatorHandle& op, std::vector<c10::IValue>& stack) {
  c10::optional<std::string> message;
  is_c10_error(run_cpu_call(op, stack, /*may_draw=*/true), [&](const c10::Error& e) {
    if (is_overlap_error(e)) {
      message = e.what_without_backtrace();
    }
    return true;
  });
  return message;
}

}  // namespace

void check_overlap(
    const c10::OperatorHandle& op, const OpInfo& info, const std::vector<c10::IValue>& args) {
  LazyStorage* storage = nullptr;
  for (size_t w : written_args_of(info, args)) {
    const auto* written = args[w].isTensor() ? get_pending_impl(args[w].toTensor()) : nullptr;
    if (written == nullptr) {
      continue;
    }
    if (overlaps_itself(*written)) {
      storage = written->lazy_storage().get();
    }
    for_each_tensor(args, [&](size_t i, int64_t, const at::Tensor& t) {
      const auto* other = get_pending_impl(t);
      if (i != w && other != nullptr && may_overlap_partially(*written, *other)) {
        storage = written->lazy_storage().get();
      }
    });
  }
  std::vector<c10::IValue> stack;
  at::Tensor buffer;
  if (storage == nullptr || !real_call(info, args, *storage, buffer, stack)) {
    return;
  }
  const c10::optional<std::string> error = overlap_error_of(op, stack);
  if (!error) {
    return;
  }
  if (!at::equal(buffer, at::full_like(buffer, kPattern))) {
    // Eager writes (and draws) before its check here (torch.normal's out=
    // fills, then adds the mean) and leaves the tensor half-written: the
    // call runs early, for real, on the real values with the generator
    // where eager has it, and keeps what it wrote before raising eager's
    // error (run_early).
    torch::jit::Stack real = args;
    run_early(op, &real, "it writes part of its output before refusing an overlap");
  }
  TORCH_CHECK(false, *error);
}

}  // namespace lazyinit
