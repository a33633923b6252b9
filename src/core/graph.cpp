#include <lazyinit/core/graph.h>

#include <lazyinit/core/lazy_tensor_impl.h>
#include <lazyinit/rng/chain.h>

#include <c10/util/Exception.h>

#include <atomic>

namespace lazyinit {
namespace {

std::atomic<int64_t> g_live_nodes{0};
std::atomic<int64_t> g_next_storage_id{0};

}  // namespace

Geometry Geometry::of(const at::Tensor& t) {
  Geometry g;
  g.sizes = t.sizes().vec();
  g.strides = t.strides().vec();
  g.offset = t.storage_offset();
  return g;
}

int64_t Geometry::numel() const {
  int64_t n = 1;
  for (int64_t size : sizes) {
    n *= size;
  }
  return n;
}

int64_t Geometry::extent() const {
  int64_t last = offset;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] == 0) {
      return 0;
    }
    last += (sizes[i] - 1) * strides[i];
  }
  return last + 1;
}

bool contiguous_range(const Geometry& g, int64_t* begin, int64_t* numel) {
  *begin = g.offset;
  *numel = g.numel();
  int64_t expected = 1;
  for (int64_t d = static_cast<int64_t>(g.sizes.size()) - 1; d >= 0; --d) {
    if (g.sizes[d] != 1 && g.strides[d] != expected) {
      return *numel == 0;
    }
    expected *= g.sizes[d];
  }
  return true;
}

Node::Node() {
  ++g_live_nodes;
}

Node::~Node() {
  --g_live_nodes;
}

int64_t live_node_count() {
  return g_live_nodes.load();
}

namespace {
// Allocated once and never freed, so that a forked child can replace it:
// the parent's holder does not exist in the child, and a recursive mutex
// locked by another thread id cannot be unlocked there.
std::recursive_mutex*& graph_mutex_slot() {
  static std::recursive_mutex* mutex = new std::recursive_mutex();
  return mutex;
}
}  // namespace

std::recursive_mutex& graph_mutex() {
  return *graph_mutex_slot();
}

void prepare_fork() {
  // Held across fork(), so that no other thread is inside the graph (or a
  // queue) when the child is made.
  lock_graph().release();
  rng_prepare_fork();
}

void after_fork_in_parent() {
  rng_after_fork(/*child=*/false);
  graph_mutex().unlock();
}

void after_fork_in_child() {
  rng_after_fork(/*child=*/true);
  graph_mutex_slot() = new std::recursive_mutex();  // the old one stays locked
}

namespace {
std::atomic<BlockingLockHook> g_blocking_lock_hook{nullptr};
std::atomic<LocationHook> g_location_hook{nullptr};
}  // namespace

void set_location_hook(LocationHook hook) {
  g_location_hook.store(hook);
}

std::string recording_location() {
  auto hook = g_location_hook.load();
  return hook != nullptr ? hook() : std::string();
}

void set_blocking_lock_hook(BlockingLockHook hook) {
  g_blocking_lock_hook.store(hook);
}

std::unique_lock<std::recursive_mutex> lock_graph() {
  std::unique_lock<std::recursive_mutex> lock(graph_mutex(), std::try_to_lock);
  if (lock.owns_lock()) {
    return lock;
  }
  if (auto hook = g_blocking_lock_hook.load()) {
    hook(graph_mutex());  // returns with the mutex locked
    return std::unique_lock<std::recursive_mutex>(graph_mutex(), std::adopt_lock);
  }
  lock.lock();
  return lock;
}

LazyStorage::LazyStorage(int64_t nbytes_, caffe2::TypeMeta dtype_, c10::Device home_device_)
    : id(g_next_storage_id++), nbytes(nbytes_), dtype(dtype_), home_device(home_device_) {}

LazyStorage::~LazyStorage() {
  // Random nodes that die unreplayed still drew numbers in eager mode: their
  // chains must still count their draws (rng_node_released; O(1) here, the
  // bookkeeping runs later under the graph lock).
  if (state != StorageState::kLazy) {
    return;
  }
  for (auto& entry : tape) {
    if (entry.node->is_random() && entry.node.use_count() == 1) {
      rng_node_released(entry.node);
    }
  }
}

void LazyStorage::add_impl(LazyTensorImpl* impl) {
  // Drop expired entries now and then so the list stays short.
  if (impls.size() >= 8 && (impls.size() & (impls.size() - 1)) == 0) {
    std::vector<c10::weak_intrusive_ptr<c10::TensorImpl>> alive;
    for (auto& w : impls) {
      if (!w.expired()) {
        alive.push_back(w);
      }
    }
    impls = std::move(alive);
  }
  impls.emplace_back(c10::intrusive_ptr<c10::TensorImpl>::unsafe_reclaim_from_nonowning(
      static_cast<c10::TensorImpl*>(impl)));
}

void LazyStorage::append(NodePtr node) {
  freeze_for_readers();
  tape.push_back(Entry{std::move(node), 0});
  ++version;
  cached = at::Tensor();
  cached_version = -1;
}

void LazyStorage::freeze_for_readers() {
  std::vector<std::shared_ptr<Node>> readers;
  for (auto& w : current_readers) {
    if (auto n = w.lock()) {
      readers.push_back(std::move(n));
    }
  }
  current_readers.clear();
  if (readers.empty()) {
    return;
  }
  auto frozen = c10::make_intrusive<LazyStorage>(nbytes, dtype, home_device);
  frozen->creation_geometry = creation_geometry;
  frozen->tape = tape;
  frozen->version = version;
  frozen->early = early;
  for (auto& reader : readers) {
    for (auto& slot : reader->tensors) {
      if (slot.ref.kind == TensorRef::Kind::kLazy && slot.ref.storage.get() == this &&
          slot.ref.version == version) {
        slot.ref.storage = frozen;
      }
    }
  }
}

void LazyStorage::check_usable() const {
  TORCH_CHECK(
      state != StorageState::kDiscarded,
      "lazyinit: this lazy tensor's recorded graph was freed by "
      "lazyinit.discard(); it has no value any more. Build the model again "
      "(or materialize it before discarding).");
}

namespace {
thread_local bool g_probing = false;
}  // namespace

ProbeScope::ProbeScope() : was_(g_probing) {
  g_probing = true;
}

ProbeScope::~ProbeScope() {
  g_probing = was_;
}

bool probing() {
  return g_probing;
}

}  // namespace lazyinit
