#include <lazyinit/replay/replay.h>
#include <lazyinit/shard/shard_replay.h>

#include <lazyinit/core/device.h>
#include <lazyinit/core/lazy_tensor_impl.h>
#include <lazyinit/core/tensor_args.h>
#include <lazyinit/record/capture.h>
#include <lazyinit/record/op_info.h>
#include <lazyinit/rng/chain.h>
#include <lazyinit/rng/philox.h>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/as_strided.h>
#include <ATen/ops/empty.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <string>

namespace lazyinit {
namespace {

// Marks a storage as being replayed, so nodes that read it at the version
// being built use the buffer under construction instead of replaying it
// again (e.g. `x[0, 0] = -x[0, 0]`).
class InProgress {
 public:
  InProgress(LazyStorage& storage, const at::Tensor& base)
      : storage_(storage),
        saved_(storage.in_progress),
        saved_version_(storage.in_progress_version) {
    storage_.in_progress = base;
  }
  ~InProgress() {
    storage_.in_progress = saved_;
    storage_.in_progress_version = saved_version_;
  }
  InProgress(const InProgress&) = delete;
  InProgress& operator=(const InProgress&) = delete;

 private:
  LazyStorage& storage_;
  at::Tensor saved_;
  int64_t saved_version_;
};

at::Tensor on_device(const at::Tensor& t, c10::Device device) {
  return t.device() == device ? t : t.to(device);
}

at::Tensor flat_view(const at::Tensor& t, int64_t numel) {
  return at::as_strided(t, {numel}, {1}, 0);
}

// Whether `node` is an `empty` factory (creation_fill's unspecified
// value): a destination buffer can stand for its result as it is.
bool is_empty_factory(const Node& node) {
  const auto fill = creation_fill(node);
  return fill.has_value() && !fill->has_value();
}

// The value a storage's creation fills it with, when it is a constant
// fill (ones, zeros, full) of the whole storage in the storage's dtype.
c10::optional<c10::Scalar> constant_creation(const LazyStorage& storage) {
  const Node& node = *storage.tape.front().node;
  if (node.is_constant()) {
    return c10::nullopt;
  }
  auto fill = creation_fill(node);
  if (!fill.has_value() || !fill->has_value() || !creation_covers_storage(storage)) {
    return c10::nullopt;
  }
  return **fill;
}

}  // namespace

// Value a constant-filling creation op writes, or nullopt for other ops.
// `empty` gives an undefined value, like the kernel.
c10::optional<c10::optional<c10::Scalar>> creation_fill(const Node& node) {
  switch (op_info(*node.op).creation) {
    case OpInfo::Creation::kNone:
      return c10::nullopt;
    case OpInfo::Creation::kEmpty:
      return c10::optional<c10::Scalar>();
    case OpInfo::Creation::kZeros:
      return c10::optional<c10::Scalar>(c10::Scalar(0));
    case OpInfo::Creation::kOnes:
      return c10::optional<c10::Scalar>(c10::Scalar(1));
    case OpInfo::Creation::kFull:
      break;
  }
  const auto& args = node.op->schema().arguments();
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i].name() == "fill_value" && node.args[i].isScalar()) {
      return c10::optional<c10::Scalar>(node.args[i].toScalar());
    }
  }
  return c10::nullopt;
}

bool creation_covers_storage(const LazyStorage& storage) {
  const auto& entry = storage.tape.front();
  int64_t begin = 0;
  int64_t numel = 0;
  return entry.element < 0 && entry.output == 0 &&
         contiguous_range(storage.creation_geometry, &begin, &numel) && begin == 0 &&
         numel == storage.numel();
}

bool overwrites_storage(const LazyStorage& storage, const Node& node) {
  if (node.is_constant() || node.self_slot < 0 || !op_info(*node.op).overwrites_self) {
    return false;
  }
  for (size_t i = 0; i < node.tensors.size(); ++i) {
    if (static_cast<int64_t>(i) != node.self_slot &&
        node.tensors[i].ref.kind == TensorRef::Kind::kSelf) {
      return false;
    }
  }
  int64_t begin = 0;
  int64_t numel = 0;
  return contiguous_range(node.tensors[node.self_slot].ref.geometry, &begin, &numel) &&
         begin == 0 && numel == storage.numel();
}

void check_target_device(c10::Device device, const char* what) {
  TORCH_CHECK(
      !is_lazy_device(device) && device.type() != c10::DeviceType::Meta,
      "lazyinit: cannot materialize ", what, "onto '", device.str(),
      "': pick a device that holds data, such as \"cpu\" or \"cuda\".");
  if (device.is_cpu()) {
    return;
  }
  TORCH_CHECK(
      c10::impl::hasDeviceGuardImpl(device.type()), "lazyinit: cannot materialize ", what, "onto '",
      device.str(),
      "': this build of "
      "torch has no ",
      c10::DeviceTypeName(device.type()),
      " support. Use "
      "device=\"cpu\" or a torch built with it.");
  const auto count = c10::impl::getDeviceGuardImpl(device.type())->deviceCount();
  TORCH_CHECK(
      count > 0 && (!device.has_index() || device.index() < count), "lazyinit: cannot materialize ",
      what, "onto '", device.str(), "': ", count, " device(s) of that type are available.");
}

namespace {

// A dead node may be skipped unless it is random with an unknown position
// in its chain: later random nodes need the state after it. On CUDA that
// position is usually computable without drawing (philox.h); on the CPU it
// is found by counting draws where the ops' counts are known (nn.init's
// uniform_ / normal_: an init overwritten by a checkpoint's copy_ is never
// computed), which costs at most what running the node would: earlier
// nodes without a count run into scratch either way.
bool can_skip(Node& node, Replayer& replayer) {
  if (!node.is_random()) {
    return true;
  }
  const c10::Device device = replayer.device();
  if (device.is_cuda()) {
    return philox_state_after_known(node, device.index());
  }
  RngChain& chain = *node.chain;
  if (chain.states[node.rng_index + 1] == nullptr && chain.generator.device().is_cpu() &&
      draw_count(node) >= 0) {
    rng_ensure_state(chain, node.rng_index + 1, replayer);
  }
  return chain.states[node.rng_index + 1] != nullptr;
}

// Whether the tape up to `version` reads a registered checkpoint mapping
// and runs no random op (a tensor loaded from a checkpoint, in any dtype).
bool reads_mapping_only(const LazyStorage& storage, int64_t version) {
  bool mapped = false;
  for (int64_t k = 0; k <= version; ++k) {
    const Node& node = *storage.tape[k].node;
    if (node.is_random()) {
      return false;
    }
    for (const auto& slot : node.tensors) {
      mapped =
          mapped || (slot.ref.kind == TensorRef::Kind::kReal && is_mapped_source(slot.ref.real));
    }
  }
  return mapped;
}

// The source `node` copies where it is a plain copy of a contiguous view
// of a checkpoint's mapping over the whole storage (the creating _to_copy
// or clone of transformers' loads, or load_checkpoint's copy_ over an
// init) with the source's dtype and layout; null where it is not.
const at::Tensor* mapped_copy_source(const LazyStorage& storage, const Node& node) {
  if (node.is_constant() || node.is_random()) {
    return nullptr;
  }
  const OpInfo& info = op_info(*node.op);
  const bool creates = node.self_slot < 0 && node.tensors.size() == 1 && info.plain_copy;
  const bool copies = info.is_copy && node.self_slot == 0 && node.tensors.size() == 2;
  if (!creates && !copies) {
    return nullptr;
  }
  const TensorRef& src = node.tensors[creates ? 0 : 1].ref;
  if (src.kind != TensorRef::Kind::kReal || !is_mapped_source(src.real)) {
    return nullptr;
  }
  Geometry same_layout = Geometry::of(src.real);
  same_layout.offset = 0;
  const Geometry& written = creates ? storage.creation_geometry : node.tensors[0].ref.geometry;
  if (src.real.dtype() != storage.dtype || src.real.numel() != storage.numel() ||
      !src.real.is_contiguous() || written != same_layout) {
    return nullptr;
  }
  return &src.real;
}

// Such a copy's value as a private mapping of the same file bytes, read on
// first touch like eager's mapped checkpoints instead of copied here.
at::Tensor mapped_copy_value(const LazyStorage& storage, const Node& node) {
  const at::Tensor* source = mapped_copy_source(storage, node);
  return source != nullptr ? map_source_privately(*source) : at::Tensor();
}

// One buffer reused for draw-only runs: allocating (and page-faulting) a
// fresh one per node doubled the memory traffic of out-of-order replays.
at::Tensor& scratch_bytes() {
  static at::Tensor bytes;
  return bytes;
}

at::Tensor scratch_tensor(int64_t numel, caffe2::TypeMeta dtype, c10::Device device) {
  const int64_t nbytes = numel * static_cast<int64_t>(dtype.itemsize());
  at::Tensor& bytes = scratch_bytes();
  if (!bytes.defined() || bytes.device() != device || bytes.numel() < nbytes) {
    bytes = at::Tensor();  // free the old one first
    bytes = at::empty({nbytes}, at::TensorOptions().dtype(at::kByte).device(device));
  }
  auto options = at::TensorOptions().dtype(dtype).device(device);
  return at::empty({0}, options).set_(bytes.storage(), 0, {numel}, {1});
}

}  // namespace

c10::Device Replayer::normalize(c10::Device device) {
  // "cuda" means the current CUDA device: name it, so generator positions
  // are kept per device.
  if (device.is_cuda() && !device.has_index() && c10::impl::hasDeviceGuardImpl(device.type())) {
    return c10::Device(
        device.type(), c10::impl::getDeviceGuardImpl(device.type())->getDevice().index());
  }
  return device;
}

void release_scratch() {
  scratch_bytes() = at::Tensor();
}

at::Tensor Replayer::resolve(const TensorRef& ref, const at::Tensor& self_base) {
  switch (ref.kind) {
    case TensorRef::Kind::kSelf: {
      TORCH_INTERNAL_ASSERT(self_base.defined());
      return view_of(self_base, ref.dtype, ref.geometry);
    }
    case TensorRef::Kind::kLazy:
      return view_of(value(*ref.storage, ref.version), ref.dtype, ref.geometry);
    case TensorRef::Kind::kReal:
      TORCH_CHECK(
          (ref.version < 0 || ref.real._version() == static_cast<uint32_t>(ref.version)) &&
              (!ref.real.has_storage() || ref.real.storage().data() == ref.real_data),
          "lazyinit: a real tensor that was used while recording lazy "
          "tensors has been modified in place since, so replaying would give "
          "other values than eager construction. Materialize the lazy "
          "tensors before modifying it, or pass a copy (t.clone()).");
      return ref.real;
  }
  TORCH_INTERNAL_ASSERT(false, "unknown TensorRef kind");
}

std::vector<c10::IValue> Replayer::prepare(Node& node, const at::Tensor& self_base, bool scratch) {
  std::vector<c10::IValue> stack = node.args;
  copy_tensor_lists(stack);
  at::Tensor base = self_base;
  if (scratch && node.self_slot >= 0) {
    // Values do not matter for a draw-only run, only the geometry the
    // kernel sees (it picks its code path, and so its draws, by it).
    base = scratch_tensor(node.self_numel, node.self_dtype, device_);
  }
  for (const auto& slot : node.tensors) {
    set_tensor(stack, slot.arg, slot.element, resolve(slot.ref, base));
  }
  for (size_t i : node.device_args) {
    stack[i] = c10::IValue(device_);
  }
  return stack;
}

void Replayer::invoke(Node& node, std::vector<c10::IValue>& stack) {
  at::NoGradGuard no_grad;
  DefaultDtypeGuard dtype(node.default_dtype);
  try {
    if (node.is_random()) {
      count_random_run();
      rng_run(node, *this, [&] { node.op->callBoxed(&stack); });
    } else {
      node.op->callBoxed(&stack);
    }
  } catch (c10::Error& e) {
    // An error that depends on values (eager raised it at the call, where
    // the values were known): keep its type, say which recorded call it is.
    std::string where = node.recorded_at.empty() ? "" : " (recorded at " + node.recorded_at + ")";
    e.add_context(
        "lazyinit: raised while materializing, by the recorded call " +
        c10::toString(node.op->schema().operator_name()) + where +
        "; eager construction raises it at that call.");
    throw;
  }
}

std::vector<c10::IValue> Replayer::run(Node& node, const at::Tensor& self_base) {
  auto stack = prepare(node, self_base, /*scratch=*/false);
  // Real operands from a checkpoint's mapping: their pages are requested
  // at once, and unmapped from the process after the read.
  std::vector<at::Tensor> mapped;
  for (const auto& slot : node.tensors) {
    if (slot.ref.kind == TensorRef::Kind::kReal && is_mapped_source(slot.ref.real)) {
      mapped.push_back(slot.ref.real);
      prefetch_source(slot.ref.real);
    }
  }
  invoke(node, stack);
  for (const auto& t : mapped) {
    release_source(t);
  }
  return stack;
}

void Replayer::run_scratch(Node& node) {
  auto stack = prepare(node, at::Tensor(), /*scratch=*/true);
  invoke(node, stack);
}

at::Tensor Replayer::run_creation(LazyStorage& storage) {
  const auto& entry = storage.tape.front();
  Node& node = *entry.node;
  if (node.is_constant()) {
    return on_device(node.constant, device_);
  }
  auto outputs = prepare(node, at::Tensor(), /*scratch=*/false);
  std::vector<at::Tensor> inputs;
  for_each_tensor(outputs, [&](size_t, int64_t, const at::Tensor& t) { inputs.push_back(t); });
  invoke(node, outputs);
  TORCH_INTERNAL_ASSERT(entry.output < static_cast<int64_t>(outputs.size()));
  const auto& out_value = outputs[entry.output];
  at::Tensor out =
      entry.element < 0 ? out_value.toTensor() : out_value.toTensorList().get(entry.element);
  // A kernel may return memory of an input although its schema promises a
  // new tensor (_unsafe_view, as matmul of 3-D tensors ends with): the
  // buffer is then another storage's value (its cache, a constant, a real
  // tensor), and this storage's later writes must not reach it.
  const bool aliases_input =
      out.has_storage() && std::any_of(inputs.begin(), inputs.end(), [&](const at::Tensor& in) {
        return in.has_storage() && in.storage().is_alias_of(out.storage());
      });
  const auto& g = storage.creation_geometry;
  if (!aliases_input && Geometry::of(out) == g &&
      static_cast<int64_t>(out.storage().nbytes()) >= storage.nbytes) {
    return flat_view(out, storage.numel());
  }
  // The real kernel laid its result out differently from the Meta kernel:
  // copy it into the layout the lazy views were recorded against.
  auto flat = at::empty({storage.numel()}, out.options());
  at::as_strided(flat, g.sizes, g.strides, g.offset).copy_(out);
  return flat;
}

bool may_map_checkpoint_bytes(const LazyStorage& storage, c10::Device device) {
  return device.is_cpu() && storage.version >= 0 && storage.state == StorageState::kLazy &&
         mapped_copy_source(storage, *storage.tape[storage.version].node) != nullptr;
}

namespace {

// `value` (a storage's flat value at some version) into `dest` (its flat
// value at the latest): an out= write or resize_ may have grown the storage
// since, and eager's grown part is whatever the later writes leave there.
at::Tensor copy_into_prefix(const at::Tensor& dest, const at::Tensor& value) {
  if (value.numel() == dest.numel()) {
    return dest.copy_(value);
  }
  TORCH_INTERNAL_ASSERT(value.numel() < dest.numel() && value.dim() == 1);
  dest.narrow(0, 0, value.numel()).copy_(value);
  return dest;
}

// A replayed write that resized its out= argument grew the StorageImpl
// under `base` (resize_ reallocates the same storage), while `base` still
// has the size it was made with: the value is the whole storage.
at::Tensor whole_storage(const at::Tensor& base, int64_t numel) {
  const int64_t held =
      static_cast<int64_t>(base.storage().nbytes()) / static_cast<int64_t>(base.itemsize()) -
      base.storage_offset();
  const int64_t n = std::min(numel, held);
  return n > base.numel() ? base.as_strided({n}, {1}, base.storage_offset()) : base;
}

}  // namespace

at::Tensor Replayer::value(
    LazyStorage& storage, int64_t version, const at::Tensor& dest, bool may_defer) {
  storage.check_usable();
  TORCH_INTERNAL_ASSERT(version >= 0 && version <= storage.version);
  if (at::Tensor ready = ready_value(storage, version, dest); ready.defined()) {
    return ready;
  }
  TORCH_INTERNAL_ASSERT(
      storage.state == StorageState::kLazy,
      "lazyinit: a materialized storage was asked for an older version");
  if (!early_ && reads_mapping_only(storage, version)) {
    if (at::Tensor read = checkpoint_value(storage, version, dest); read.defined()) {
      return read;
    }
  }
  ReplayStart from = replay_start(storage, version, dest);
  const at::Tensor base = first_value(storage, version, from, dest, may_defer);
  {
    InProgress guard(storage, base);
    for (int64_t k = from.start + 1; k <= version; ++k) {
      storage.in_progress_version = k - 1;
      Node& node = *storage.tape[k].node;
      if (may_defer && k == version && node.is_random()) {
        DeferralWindow window(true);  // nothing of this storage runs after it
        if (queue_whole_fill(node, base)) {
          count_random_run();
          continue;
        }
      }
      run(node, base);
    }
  }
  if (early_ && !probing()) {
    storage.early = true;
  }
  return keep(storage, version, whole_storage(base, storage.numel()));
}

at::Tensor Replayer::keep(LazyStorage& storage, int64_t version, const at::Tensor& value) {
  if (probing()) {
    return value;
  }
  ++storage.replay_count;
  if (version == storage.version) {
    storage.cached = value;
    storage.cached_version = version;
  }
  return value;
}

at::Tensor Replayer::ready_value(LazyStorage& storage, int64_t version, const at::Tensor& dest) {
  at::Tensor ready;
  if (storage.in_progress.defined() && storage.in_progress_version == version) {
    ready = storage.in_progress;
  } else if (storage.cached.defined() && storage.cached_version == version) {
    flush_deferred_fills();  // the cached value may await a queued fill
    ready = on_device(storage.cached, device_);
  } else {
    return {};
  }
  return dest.defined() ? copy_into_prefix(dest, ready) : ready;
}

// A tensor loaded from a checkpoint: replayed as one span of the whole
// storage, which reads the file a chunk at a time into the value (the peak
// holds the value and one chunk of the file, not the source pages of the
// whole tensor as well). Undefined where the span replay declines.
at::Tensor Replayer::checkpoint_value(
    LazyStorage& storage, int64_t version, const at::Tensor& dest) {
  if (!dest.defined() && device_.is_cpu() && version == 0) {
    at::Tensor out = mapped_copy_value(storage, *storage.tape[0].node);
    if (out.defined()) {
      if (probing()) {
        return out;
      }
      // Version 0's value is cached even under later versions: a mapping
      // is cheap to hold and later versions replay from it.
      ++storage.replay_count;
      storage.cached = out;
      storage.cached_version = version;
      return out;
    }
  }
  at::Tensor out;
  std::string why;
  if (!replay_spans(storage, version, {Span{0, storage.numel()}}, device_, &out, &why, dest)) {
    return {};
  }
  if (dest.defined() && !out.is_same(dest)) {
    out = dest.copy_(out);
  }
  return keep(storage, version, out);
}

Replayer::ReplayStart Replayer::replay_start(
    LazyStorage& storage, int64_t version, const at::Tensor& dest) {
  // The newest constant or cached value at or before `version`.
  ReplayStart from;
  for (int64_t k = version; k >= 0; --k) {
    if (storage.tape[k].node->is_constant()) {
      from.start = k;
      from.base = storage.tape[k].node->constant;
      break;
    }
    if (storage.cached.defined() && storage.cached_version == k) {
      flush_deferred_fills();
      from.start = k;
      from.base = storage.cached;
      break;
    }
  }
  // Skip everything before the last node that overwrites the whole storage.
  for (int64_t k = version; k > from.start; --k) {
    if (!overwrites_storage(storage, *storage.tape[k].node)) {
      continue;
    }
    bool dead_prefix = true;
    for (int64_t j = from.base.defined() ? from.start + 1 : 0; j < k && dead_prefix; ++j) {
      dead_prefix = storage.tape[j].node->is_constant() || can_skip(*storage.tape[j].node, *this);
    }
    if (dead_prefix) {
      from.start = k - 1;
      from.fresh = true;
      // A constant or cached value found above is not written: replay
      // starts over from this node, into a new buffer.
      from.base = k == version && !dest.defined() && device_.is_cpu()
                      ? mapped_copy_value(storage, *storage.tape[k].node)
                      : at::Tensor();
      if (from.base.defined()) {
        from.start = k;  // the copy is done
      } else {
        from.base = dest.defined() ? dest
                                   : at::empty(
                                         {storage.numel()},
                                         at::TensorOptions().dtype(storage.dtype).device(device_));
      }
    }
    break;
  }
  return from;
}

at::Tensor Replayer::first_value(
    LazyStorage& storage,
    int64_t version,
    const ReplayStart& from,
    const at::Tensor& dest,
    bool may_defer) {
  if (from.base.defined()) {
    at::Tensor base = on_device(from.base, device_);
    if (dest.defined() && !from.fresh) {
      return copy_into_prefix(dest, base);
    }
    if (from.start < version && !from.fresh) {
      return base.clone();  // constants and caches are read-only
    }
    return base;
  }
  if (dest.defined() && is_empty_factory(*storage.tape.front().node)) {
    return dest;
  }
  if (const auto value =
          dest.defined() ? constant_creation(storage) : c10::optional<c10::Scalar>()) {
    // ones / zeros / full: one fill of dest (queued where nothing runs
    // after it), not a new tensor copied into dest.
    DeferralWindow window(may_defer && version == 0);
    if (!queue_constant_fill(dest, *value)) {
      dest.fill_(*value);
    }
    return dest;
  }
  const at::Tensor created = run_creation(storage);
  return dest.defined() ? copy_into_prefix(dest, created) : created;
}

void materialize_storage(LazyStorage& storage, c10::Device device, const at::Tensor& dest) {
  storage.check_usable();
  if (storage.state == StorageState::kMaterialized) {
    return;
  }
  check_target_device(device);
  Replayer replayer(device);
  // With dest, nothing reads the value before the caller flushes: its last
  // write may be queued where the caller opened a DeferredFillScope.
  at::Tensor base = replayer.value(storage, storage.version, dest, /*may_defer=*/dest.defined());
  // Readers that have not been replayed yet keep reading this version
  // through a frozen copy of the tape, not through the real tensor, which
  // the user may modify from now on.
  storage.freeze_for_readers();
  storage.cached = at::Tensor();
  storage.tape.clear();
  if (!dest.defined() && (base.storage().use_count() > 1 || base.use_count() > 1)) {
    // still shared with a constant somewhere (a reader's frozen tape holds
    // an early value as the very tensor replay returned)
    base = base.clone();
  }
  for (auto& weak : storage.impls) {
    auto locked = weak.lock();
    auto* impl = static_cast<LazyTensorImpl*>(locked.get());
    if (impl == nullptr || impl->lazy_storage().get() != &storage) {
      continue;
    }
    impl->become(
        view_of(base, impl->dtype(), impl->geometry()), storage.early, storage.replay_count);
  }
  storage.impls.clear();
  storage.state = StorageState::kMaterialized;
  storage.cached = base;
  storage.cached_version = storage.version;
}

void materialize_storage_empty(LazyStorage& storage, c10::Device device) {
  storage.check_usable();
  if (storage.state == StorageState::kMaterialized) {
    return;
  }
  check_target_device(device);
  at::Tensor base =
      at::empty({storage.numel()}, at::TensorOptions().dtype(storage.dtype).device(device));
  // Readers not replayed yet keep the recorded values (frozen tape); eager
  // drew the numbers of this storage's random ops all the same.
  storage.freeze_for_readers();
  for (auto& entry : storage.tape) {
    if (entry.node->is_random() && entry.node.use_count() == 1) {
      rng_node_released(entry.node);
    }
  }
  storage.tape.clear();
  storage.cached = at::Tensor();
  for (auto& weak : storage.impls) {
    auto locked = weak.lock();
    auto* impl = static_cast<LazyTensorImpl*>(locked.get());
    if (impl == nullptr || impl->lazy_storage().get() != &storage) {
      continue;
    }
    impl->become(view_of(base, impl->dtype(), impl->geometry()), /*early=*/false, 0);
  }
  storage.impls.clear();
  storage.state = StorageState::kMaterialized;
  storage.cached = base;
  storage.cached_version = storage.version;
}

at::Tensor probe_value(LazyStorage& storage) {
  // Released nodes are taken in first: inside the probe they stay queued,
  // so a chain snapshot covers every change the probe makes.
  rng_drain_released();
  GeneratorStateGuard guard;
  ProbeScope probe;
  Replayer replayer(default_device(), /*early=*/true);
  return replayer.value(storage, storage.version);
}

at::Tensor early_value(LazyStorage& storage) {
  GeneratorStateGuard guard;
  Replayer replayer(default_device(), /*early=*/true);
  at::Tensor value = replayer.value(storage, storage.version);
  storage.early = true;
  return value;
}

void materialize_tensor(const at::Tensor& t, c10::optional<c10::Device> device, bool settle) {
  std::lock_guard<std::recursive_mutex> lock(graph_mutex());
  auto* impl = get_pending_impl(t);
  if (impl == nullptr) {
    return;
  }
  LazyStoragePtr storage = impl->lazy_storage();
  {
    GeneratorStateGuard guard;
    materialize_storage(*storage, device.value_or(storage->home_device));
  }
  if (settle) {
    rng_settle();
  }
}

void finish_materialization() {
  std::lock_guard<std::recursive_mutex> lock(graph_mutex());
  rng_settle();
  release_scratch();
}

}  // namespace lazyinit
