#include <lazyinit/shard/shard_replay.h>

#include <lazyinit/replay/flat_materialize.h>

#include <lazyinit/core/device.h>
#include <lazyinit/core/lazy_tensor_impl.h>
#include <lazyinit/replay/replay.h>

#include <ATen/ops/as_strided.h>
#include <ATen/ops/empty.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>

#include <map>
#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <utility>

namespace lazyinit {
namespace {

constexpr size_t kKeptReasons = 16;

std::map<std::pair<std::string, c10::DeviceType>, RegionFill>& fill_table() {
  static std::map<std::pair<std::string, c10::DeviceType>, RegionFill> table;
  return table;
}

std::unordered_map<std::string, DrawCount>& count_table() {
  static std::unordered_map<std::string, DrawCount> table;
  return table;
}

ShardStats& counters() {
  static ShardStats stats;
  return stats;
}

std::unordered_set<int64_t>& fell_back_ids() {
  static std::unordered_set<int64_t> ids;
  return ids;
}

// Makes chain.states[index] known (rng_ensure_state: draws counted where
// known, scratch runs otherwise, which are counted here).
void ensure_state_by_draws(RngChain& chain, int64_t index) {
  Replayer cpu{c10::Device(c10::kCPU)};
  counters().rng_scratch_runs += rng_ensure_state(chain, index, cpu);
}

const std::string& op_name(const Node& node) {
  return node.op->schema().name();
}

void note_fallback(const LazyStorage& storage, const std::string& why) {
  auto& stats = counters();
  ++stats.fallbacks;
  fell_back_ids().insert(storage.id);
  stats.fallback_reasons.push_back("storage " + std::to_string(storage.id) + ": " + why);
  if (stats.fallback_reasons.size() > kKeptReasons) {
    stats.fallback_reasons.erase(stats.fallback_reasons.begin());
  }
}

at::Tensor contiguous_copy(const at::Tensor& piece, c10::Device device) {
  at::Tensor out = at::empty(piece.sizes(), piece.options().device(device));
  out.copy_(piece);
  return out;
}

thread_local int g_deferral_scopes = 0;
thread_local bool g_window_open = false;
void (*g_deferred_flush)(bool) = nullptr;
WholeFillQueuer g_whole_fill_queuer = nullptr;
ConstantFillQueuer g_constant_fill_queuer = nullptr;

}  // namespace

DeferredFillScope::DeferredFillScope() {
  ++g_deferral_scopes;
}

// The normal path flushes before the scope ends; what is still queued here
// was left by an exception. It is launched all the same: whole-module
// materialization has already handed the queued storages to their tensors.
// A launch failing now (flushing may throw) drops the rest instead, as a
// destructor must not throw.
DeferredFillScope::~DeferredFillScope() {
  if (--g_deferral_scopes == 0) {
    try {
      flush_deferred_fills();
    } catch (...) {
      flush_deferred_fills(/*drop=*/true);
    }
  }
}

DeferralWindow::DeferralWindow(bool open) : previous_(g_window_open) {
  g_window_open = open;
}

DeferralWindow::~DeferralWindow() {
  g_window_open = previous_;
}

bool fills_may_defer() {
  return g_deferral_scopes > 0 && g_window_open;
}

void flush_deferred_fills(bool drop) {
  if (g_deferred_flush != nullptr) {
    g_deferred_flush(drop);
  }
}

void register_deferred_flush(void (*flush)(bool drop)) {
  g_deferred_flush = flush;
}

void register_whole_fill_queuer(WholeFillQueuer queuer) {
  g_whole_fill_queuer = queuer;
}

bool queue_whole_fill(Node& node, const at::Tensor& out) {
  return g_whole_fill_queuer != nullptr && fills_may_defer() && g_whole_fill_queuer(node, out);
}

void register_constant_fill_queuer(ConstantFillQueuer queuer) {
  g_constant_fill_queuer = queuer;
}

bool queue_constant_fill(const at::Tensor& out, const c10::Scalar& value) {
  return g_constant_fill_queuer != nullptr && fills_may_defer() &&
         g_constant_fill_queuer(out, value);
}

void register_region_fill(const std::string& op, c10::DeviceType device, RegionFill fill) {
  fill_table()[{op, device}] = std::move(fill);
}

const RegionFill* find_region_fill(const std::string& op, c10::DeviceType device) {
  auto it = fill_table().find({op, device});
  return it == fill_table().end() ? nullptr : &it->second;
}

void register_draw_count(const std::string& op, DrawCount count) {
  count_table()[op] = std::move(count);
}

int64_t draw_count(const Node& node) {
  if (node.is_constant()) {
    return -1;
  }
  auto it = count_table().find(op_name(node));
  return it == count_table().end() ? -1 : it->second(node);
}

ShardStats shard_stats() {
  std::lock_guard<std::recursive_mutex> lock(graph_mutex());
  return counters();
}

void reset_shard_stats() {
  std::lock_guard<std::recursive_mutex> lock(graph_mutex());
  counters() = ShardStats();
  fell_back_ids().clear();
}

void count_skipped_draws(int64_t n) {
  counters().draws_skipped += n;
}

GenState cpu_state_before(Node& node) {
  TORCH_INTERNAL_ASSERT(node.is_random());
  std::lock_guard<std::recursive_mutex> lock(graph_mutex());
  RngChain& chain = *node.chain;
  ensure_state_by_draws(chain, node.rng_index);
  return *chain.states[node.rng_index];
}

bool storage_fell_back(int64_t storage_id) {
  std::lock_guard<std::recursive_mutex> lock(graph_mutex());
  return fell_back_ids().count(storage_id) > 0;
}

namespace {

// The piece from a replay of only the storage spans it covers; undefined
// with `why` set where the span replay declines (whole: `why` cleared, the
// piece needs every element anyway).
at::Tensor pushed_down_shard(
    LazyStorage& storage,
    const Geometry& geometry,
    const LocalPiece& piece,
    c10::Device device,
    const at::Tensor& dest,
    std::string* why) {
  bool in_order = true;
  std::vector<Span> spans = storage_spans(geometry, piece, &in_order);
  const int64_t lo = spans.empty() ? 0 : spans.front().begin;
  const bool whole = spans.size() == 1 && lo == 0 && spans.front().end == storage.numel();
  at::Tensor buffer;
  // In order, the buffer is the result: its last write may be queued (the
  // caller flushes before reading it). Out of order it is copied below.
  if (!replay_spans(
          storage, storage.version, std::move(spans), device, &buffer, why,
          in_order ? dest : at::Tensor(), /*may_defer=*/in_order)) {
    if (whole) {
      why->clear();  // the piece needs every element anyway: not a fallback
    }
    return {};
  }
  ++(whole ? counters().whole : counters().pushed_down);
  if (in_order) {
    return contiguous_alias(buffer, piece.shape());
  }
  // The buffer holds storage [lo, hi): view the piece's box in it.
  int64_t box_offset = geometry.offset - lo;
  for (size_t d = 0; d < piece.box_start.size(); ++d) {
    box_offset += piece.box_start[d] * geometry.strides[d];
  }
  at::Tensor box = at::as_strided(buffer, piece.box_sizes, geometry.strides, box_offset);
  if (piece.flat) {
    box = box.reshape({-1}).narrow(0, piece.flat_start, piece.flat_end - piece.flat_start);
  }
  return contiguous_copy(box, device);
}

// The piece sliced from a replay of the whole storage. Values are not
// kept: keeping them would hold full tensors in memory, which sharding
// exists to avoid.
at::Tensor sliced_from_whole(
    const LazyStoragePtr& storage,
    const LazyTensorImpl& impl,
    const LocalPiece& piece,
    c10::Device device) {
  const Geometry geometry = impl.geometry();
  // Storages without a cached value now (this one and those its tape reads)
  // get none from this replay either.
  std::vector<LazyStoragePtr> uncached;
  if (!storage->cached.defined()) {
    uncached.push_back(storage);
  }
  for (const auto& entry : storage->tape) {
    for (const auto& slot : entry.node->tensors) {
      if (slot.ref.kind == TensorRef::Kind::kLazy && !slot.ref.storage->cached.defined()) {
        uncached.push_back(slot.ref.storage);
      }
    }
  }
  // Generator positions by counting draws where possible, so the replay
  // below runs no earlier random node into scratch.
  for (const auto& entry : storage->tape) {
    if (entry.node->is_random() && entry.node->chain->generator.device().is_cpu()) {
      ensure_state_by_draws(*entry.node->chain, entry.node->rng_index);
    }
  }
  Replayer replayer(device);
  at::Tensor base = replayer.value(*storage, storage->version);
  at::Tensor full = view_of(base, impl.dtype(), geometry);
  at::Tensor out = contiguous_copy(piece.slice(full), device);
  for (auto& s : uncached) {
    if (s->state == StorageState::kLazy) {
      s->cached = at::Tensor();
      s->cached_version = -1;
    }
  }
  return out;
}

at::Tensor compute_shard(
    const at::Tensor& t, const LocalPiece& piece, c10::Device device, const at::Tensor& dest) {
  auto* impl = get_pending_impl(t);
  if (impl == nullptr) {
    return contiguous_copy(piece.slice(t), device);
  }
  LazyStoragePtr storage = impl->lazy_storage();
  storage->check_usable();
  ++counters().shards;
  if (piece.numel() == 0) {
    ++counters().pushed_down;  // an empty piece (a rank past the last chunk)
    return at::empty(piece.shape(), at::TensorOptions().dtype(impl->dtype()).device(device));
  }
  // The caller holds a GeneratorStateGuard: replay leaves the generators
  // as they were.
  std::string why;
  if (impl->dtype() != storage->dtype) {
    why = "the tensor reinterprets its storage (view(dtype))";
  } else {
    at::Tensor out = pushed_down_shard(*storage, impl->geometry(), piece, device, dest, &why);
    if (out.defined()) {
      return out;
    }
  }
  if (why.empty()) {
    ++counters().whole;
  } else {
    note_fallback(*storage, why);
  }
  return sliced_from_whole(storage, *impl, piece, device);
}

// `piece` of `t` into `dest` (its size) if defined. The caller holds the
// graph lock and a GeneratorStateGuard.
at::Tensor shard_into(
    const at::Tensor& t, const LocalPiece& piece, c10::Device device, const at::Tensor& dest) {
  at::Tensor out = compute_shard(t, piece, device, dest);
  if (!dest.defined() || piece.numel() == 0 || out.data_ptr() == dest.data_ptr()) {
    return out;  // computed in dest, already shaped
  }
  flush_deferred_fills();  // `out` may be waiting for a queued fill
  at::Tensor shaped = contiguous_alias(dest, piece.shape());
  shaped.copy_(out);  // computed elsewhere (a fallback, a reordered box)
  return shaped;
}

}  // namespace

at::Tensor materialize_shard(
    const at::Tensor& t,
    const std::vector<Placement>& placements,
    c10::Device device,
    const at::Tensor& dest) {
  check_target_device(device, "a shard ");
  std::lock_guard<std::recursive_mutex> lock(graph_mutex());
  GeneratorStateGuard generators;
  return shard_into(t, local_piece(t.sizes(), placements), device, dest);
}

std::vector<at::Tensor> materialize_shards(
    const std::vector<at::Tensor>& tensors,
    const std::vector<std::vector<Placement>>& placements,
    c10::Device device) {
  TORCH_CHECK(tensors.size() == placements.size(), "lazyinit: one placement per tensor expected");
  check_target_device(device, "a shard ");
  std::lock_guard<std::recursive_mutex> lock(graph_mutex());
  // Byte offsets of each piece in its dtype's buffer.
  std::map<c10::ScalarType, int64_t> totals;
  std::vector<LocalPiece> pieces;
  pieces.reserve(tensors.size());
  std::vector<int64_t> offsets(tensors.size(), -1);
  for (size_t i = 0; i < tensors.size(); ++i) {
    pieces.push_back(local_piece(tensors[i].sizes(), placements[i]));
    const int64_t numel = pieces.back().numel();
    if (numel > 0) {
      int64_t& total = totals[tensors[i].scalar_type()];
      offsets[i] = total;
      total += flat_slice_bytes(numel * static_cast<int64_t>(tensors[i].dtype().itemsize()));
    }
  }
  // Each dtype's buffer is allocated where its first piece comes: a GPU
  // then fills the pieces before it during that cudaMalloc (a model's few
  // float32 buffers, after its bfloat16 parameters, cost no idle time).
  std::map<c10::ScalarType, at::Tensor> buffers;
  std::vector<at::Tensor> out;
  out.reserve(tensors.size());
  GeneratorStateGuard generators;  // one for all: restoring costs a copy
  DeferredFillScope deferred;      // fills launched batched
  for (size_t i = 0; i < tensors.size(); ++i) {
    at::Tensor dest;
    if (offsets[i] >= 0) {
      const c10::ScalarType dtype = tensors[i].scalar_type();
      at::Tensor& buffer = buffers[dtype];
      if (!buffer.defined()) {
        buffer = at::empty({totals.at(dtype)}, at::TensorOptions().dtype(at::kByte).device(device));
      }
      dest = flat_slice(buffer, offsets[i], pieces[i].numel(), tensors[i].dtype());
    }
    out.push_back(shard_into(tensors[i], pieces[i], device, dest));
  }
  flush_deferred_fills();
  return out;
}

}  // namespace lazyinit
