#include <lazyinit/record/capture.h>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/as_strided.h>
#include <ATen/ops/empty.h>
#include <c10/core/StorageImpl.h>
#include <c10/util/intrusive_ptr.h>

#include <algorithm>
#include <atomic>
#include <iterator>
#include <mutex>
#include <unordered_map>

namespace lazyinit {
namespace {

std::atomic<int64_t> g_copies{0};
std::atomic<int64_t> g_bytes{0};
std::atomic<int64_t> g_zero_copy{0};

// Registered storages by address, held weakly: an entry whose storage died
// (and whose address may be reused) does not count.
struct ImmutableRegistry {
  std::mutex mutex;
  std::unordered_map<const c10::StorageImpl*, c10::weak_intrusive_ptr<c10::StorageImpl>>
      storages;
  size_t swept_at = 64;  // size at which expired entries are dropped next
};

ImmutableRegistry& registry() {
  static ImmutableRegistry r;
  return r;
}

// Elements of the storage the view reaches, from element 0 (the offset
// included, so the copy keeps the view's storage offset and alignment).
int64_t reach(const at::Tensor& t) {
  int64_t last = t.storage_offset();
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) == 0) {
      return t.storage_offset();
    }
    last += (t.size(d) - 1) * t.stride(d);
  }
  return last + 1;
}

}  // namespace

void register_immutable_source(const at::Tensor& t) {
  if (!t.has_storage()) {
    return;
  }
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (r.storages.size() >= r.swept_at) {
    for (auto it = r.storages.begin(); it != r.storages.end();) {
      it = it->second.expired() ? r.storages.erase(it) : std::next(it);
    }
    r.swept_at = std::max<size_t>(64, 2 * r.storages.size());
  }
  const c10::StorageImpl* impl = t.storage().unsafeGetStorageImpl();
  r.storages.insert_or_assign(impl, t.storage().getWeakStorageImpl());
}

bool is_immutable_source(const at::Tensor& t) {
  if (!t.has_storage()) {
    return false;
  }
  const c10::StorageImpl* impl = t.storage().unsafeGetStorageImpl();
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  auto it = r.storages.find(impl);
  if (it == r.storages.end()) {
    return false;
  }
  auto alive = it->second.lock();
  return alive && alive.get() == impl;
}

CapturedSource capture_source(const at::Tensor& t) {
  if (is_immutable_source(t)) {
    ++g_zero_copy;
    return {t, false};
  }
  at::NoGradGuard no_grad;
  at::Tensor copy;
  if (!t.has_storage() || t.is_sparse()) {
    copy = t.clone();
  } else {
    // The same view over a private buffer: strides matter to the kernels
    // that read it (TensorIterator's order, expanded inputs), so not clone().
    const int64_t n = reach(t);
    at::Tensor buffer = at::empty({n}, t.options().memory_format(c10::nullopt));
    if (n > t.storage_offset()) {
      buffer.narrow(0, t.storage_offset(), n - t.storage_offset())
          .copy_(at::as_strided(t, {n - t.storage_offset()}, {1}, t.storage_offset()));
    }
    copy = at::as_strided(buffer, t.sizes(), t.strides(), t.storage_offset());
  }
  if (t.unsafeGetTensorImpl()->is_wrapped_number()) {
    // A Python scalar the dispatcher wrapped: type promotion treats it
    // apart from 0-dim tensors, so the copy must be one too.
    copy.unsafeGetTensorImpl()->set_wrapped_number(true);
  }
  ++g_copies;
  g_bytes += static_cast<int64_t>(copy.numel() * copy.element_size());
  return {copy, true};
}

CaptureStats capture_stats() {
  return {g_copies.load(), g_bytes.load(), g_zero_copy.load()};
}

}  // namespace lazyinit
