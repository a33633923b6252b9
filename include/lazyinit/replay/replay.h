// Replay: evaluates a lazy storage at a version on a device.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DefaultDtype.h>
#include <c10/core/Device.h>
#include <c10/core/Scalar.h>
#include <c10/util/Optional.h>

#include <lazyinit/core/graph.h>

#include <vector>

namespace lazyinit {

// Sets torch's default dtype for the duration of a replayed call.
class DefaultDtypeGuard {
 public:
  explicit DefaultDtypeGuard(caffe2::TypeMeta dtype) : saved_(c10::get_default_dtype()) {
    c10::set_default_dtype(dtype);
  }
  ~DefaultDtypeGuard() { c10::set_default_dtype(saved_); }
  DefaultDtypeGuard(const DefaultDtypeGuard&) = delete;
  DefaultDtypeGuard& operator=(const DefaultDtypeGuard&) = delete;

 private:
  caffe2::TypeMeta saved_;
};

// The value a constant-filling creation op (zeros, ones, full and their
// _like / new_ forms) writes; an empty optional inside for empty / empty_like
// (values unspecified, like the kernel's); nullopt for other ops.
c10::optional<c10::optional<c10::Scalar>> creation_fill(const Node& node);

// Whether the storage's creation (tape[0]) writes all of it, in order: its
// output 0, not an element of a returned list, over a contiguous range that
// is every element of the storage.
bool creation_covers_storage(const LazyStorage& storage);

// Whether `node` (a write to `storage`) overwrites the whole storage and
// reads none of it (OpInfo::overwrites_self over a contiguous range that is
// every element, no other argument in the same storage): everything
// recorded before it is dead (nn.Linear's kaiming_uniform_ followed by a
// model's own normal_ init, or a checkpoint's copy_).
bool overwrites_storage(const LazyStorage& storage, const Node& node);

class Replayer {
 public:
  // `early`: values are computed before materialization was asked for;
  // storages computed on the way are marked early (lazyinit.stats).
  explicit Replayer(c10::Device device, bool early = false)
      : device_(normalize(device)), early_(early) {}

  c10::Device device() const { return device_; }

  // Flat tensor over the whole storage holding its value at `version`.
  // The result may be shared with a cache: callers must not modify it.
  // With `dest` (a flat tensor of the storage's numel and dtype on this
  // device), the value is computed in it, and it is returned.
  // `may_defer`: the storage's last write may be queued (shard_replay.h,
  // DeferredFillScope): only for a value nobody reads before the flush.
  at::Tensor value(
      LazyStorage& storage, int64_t version, const at::Tensor& dest = {}, bool may_defer = false);
  // A real tensor for a node argument.
  at::Tensor resolve(const TensorRef& ref, const at::Tensor& self_base);
  // The node's boxed arguments with tensors resolved (scratch: written
  // tensors are fresh buffers of the same geometry).
  std::vector<c10::IValue> prepare(Node& node, const at::Tensor& self_base, bool scratch);
  // Calls the op, with the generator positioned for random nodes.
  void invoke(Node& node, std::vector<c10::IValue>& stack);
  // Runs `node` with its tensor arguments resolved; `self_base` stands for
  // kSelf (may be undefined for creation nodes). Returns the op's outputs.
  std::vector<c10::IValue> run(Node& node, const at::Tensor& self_base);
  // Like run(), but mutated arguments are scratch tensors: used to advance
  // a generator through a random node whose result is not wanted.
  void run_scratch(Node& node);

 private:
  // Where a replay up to some version starts: the value before node
  // `start + 1` is `base` (undefined: from the creation node on); `fresh`:
  // `base` is a new buffer that node `start + 1` overwrites whole.
  struct ReplayStart {
    int64_t start = 0;
    at::Tensor base;
    bool fresh = false;
  };

  static c10::Device normalize(c10::Device device);
  at::Tensor run_creation(LazyStorage& storage);
  // value()'s phases, in order: a value held already (in progress or
  // cached); a checkpoint's bytes read as one span; where the tape's
  // replay starts; the value before its first node.
  at::Tensor ready_value(LazyStorage& storage, int64_t version, const at::Tensor& dest);
  at::Tensor checkpoint_value(LazyStorage& storage, int64_t version, const at::Tensor& dest);
  ReplayStart replay_start(LazyStorage& storage, int64_t version, const at::Tensor& dest);
  at::Tensor first_value(
      LazyStorage& storage,
      int64_t version,
      const ReplayStart& from,
      const at::Tensor& dest,
      bool may_defer);
  // Counts a replay of `storage` and caches `value` if it is the latest.
  static at::Tensor keep(LazyStorage& storage, int64_t version, const at::Tensor& value);
  c10::Device device_;
  bool early_;
};

// Raises an actionable error unless `device` can hold materialized data;
// `what` ("" or "a shard ") names what was to be materialized.
void check_target_device(c10::Device device, const char* what = "");

// Materializes every impl of `storage` in place on `device`, into `dest`
// when given (see Replayer::value): its views then share dest's storage.
void materialize_storage(LazyStorage& storage, c10::Device device, const at::Tensor& dest = {});
// Whether `storage`'s value on `device` is likely a private mapping of a
// checkpoint's bytes (a plain copy of a mapped source, replay.cpp): such
// storages are left out of materialize_flat's buffers.
bool may_map_checkpoint_bytes(const LazyStorage& storage, c10::Device device);
// Turns every impl of `storage` into a real, uninitialized tensor on
// `device` without replaying anything (Module.to_empty): values are
// unspecified, as eager's to_empty leaves them; the draws of its random
// ops still count for the generators.
void materialize_storage_empty(LazyStorage& storage, c10::Device device);
// Computes the current value of `storage` on the default device and caches
// it (early materialization); the storage stays lazy.
at::Tensor early_value(LazyStorage& storage);
// The current value of `storage` on the default device, computed in a
// ProbeScope (core/graph.h): nothing is cached, counted or marked. May be
// shared with a cache: callers must not modify it.
at::Tensor probe_value(LazyStorage& storage);

// Materializes the tensor in place (all views of its storage). No-op for
// tensors that are not pending. `settle`: settle the generators afterwards
// (a whole module passes false for each tensor and calls
// finish_materialization() once: settling walks every random node).
void materialize_tensor(const at::Tensor& t, c10::optional<c10::Device> device, bool settle = true);
// Frees the buffer kept for draw-only replays.
void release_scratch();
// Settles generators once a batch of materializations is done.
void finish_materialization();

}  // namespace lazyinit
