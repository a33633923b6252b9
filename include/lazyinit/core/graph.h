// The recorded graph: nodes (one recorded op call each) and lazy storages
// (a tape of nodes that builds one buffer, shared by every view of it).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>
#include <c10/core/TensorImpl.h>
#include <c10/util/intrusive_ptr.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace lazyinit {

class LazyTensorImpl;
struct LazyStorage;
struct RngChain;
using LazyStoragePtr = c10::intrusive_ptr<LazyStorage>;

// Sizes, strides and storage offset (in elements) of a view of a storage.
struct Geometry {
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;
  int64_t offset = 0;

  static Geometry of(const at::Tensor& t);
  bool operator==(const Geometry& other) const {
    return sizes == other.sizes && strides == other.strides && offset == other.offset;
  }
  bool operator!=(const Geometry& other) const { return !(*this == other); }
  // Number of storage elements this view reaches (0 for empty views).
  int64_t extent() const;
  // Number of elements of the view.
  int64_t numel() const;
};

// If the view `g` is a contiguous run of storage elements (row-major, size-1
// dims ignored), its first element and length.
bool contiguous_range(const Geometry& g, int64_t* begin, int64_t* numel);

struct Node;
using NodePtr = std::shared_ptr<Node>;

enum class StorageState { kLazy, kMaterialized, kDiscarded };

// A buffer that exists only as a tape: tape[0] creates it, tape[k] is the
// k-th mutation. "Version k" is the value after tape[k].
struct LazyStorage : c10::intrusive_ptr_target {
  struct Entry {
    NodePtr node;
    // Creation nodes: which return (and list element) this storage is.
    int64_t output = 0;
    int64_t element = -1;
  };

  LazyStorage(int64_t nbytes, caffe2::TypeMeta dtype, c10::Device home_device);
  ~LazyStorage() override;

  int64_t id;
  int64_t nbytes;
  caffe2::TypeMeta dtype;
  c10::Device home_device;     // where materialize() puts it by default
  Geometry creation_geometry;  // geometry of the creating op's output

  std::vector<Entry> tape;
  int64_t version = -1;
  StorageState state = StorageState::kLazy;
  bool early = false;  // a value was computed before materialization
  int64_t replay_count = 0;

  // Value cache: flat tensor over the whole storage at `cached_version`.
  at::Tensor cached;
  int64_t cached_version = -1;

  // Replay in progress: the flat buffer being built and its version.
  at::Tensor in_progress;
  int64_t in_progress_version = -1;

  // Tensor impls that view this storage (they turn real on materialize).
  std::vector<c10::weak_intrusive_ptr<c10::TensorImpl>> impls;
  // Nodes of other storages that read the current version.
  std::vector<std::weak_ptr<Node>> current_readers;

  int64_t numel() const { return nbytes / static_cast<int64_t>(dtype.itemsize()); }
  void add_impl(LazyTensorImpl* impl);
  void append(NodePtr node);
  // Before the storage changes, readers of its current value are re-pointed
  // to a frozen copy of the tape prefix so they still see that value.
  void freeze_for_readers();
  void check_usable() const;
};

// Where a tensor argument of a node comes from.
struct TensorRef {
  enum class Kind {
    kSelf,  // the storage the node belongs to (mutation nodes only)
    kLazy,  // another lazy storage, at a given version
    kReal,  // a real tensor captured while recording
  };
  Kind kind = Kind::kReal;
  LazyStoragePtr storage;           // kLazy
  int64_t version = 0;              // kLazy: storage version; kReal: tensor version
  Geometry geometry;                // kSelf / kLazy
  caffe2::TypeMeta dtype;           // kSelf / kLazy: dtype of the view (view(dtype))
  at::Tensor real;                  // kReal: a copy made at record time (capture.h)
  const void* real_data = nullptr;  // kReal: its storage when recorded
  bool copied = false;              // kReal: `real` is lazyinit's copy of the source
};

// Position of a tensor argument inside the boxed argument list.
struct ArgSlot {
  size_t arg = 0;
  int64_t element = -1;  // index inside a Tensor[] / Tensor?[] argument
  TensorRef ref;
};

// One recorded op call, or a constant (a value computed early).
struct Node {
  Node();
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  c10::optional<c10::OperatorHandle> op;  // unset for constants
  std::vector<c10::IValue> args;          // tensors replaced by undefined
  std::vector<ArgSlot> tensors;           // what goes back into `args`
  std::vector<size_t> device_args;        // Device? arguments that said "lazy"
  int64_t self_slot = -1;                 // index into tensors: mutated arg
  int64_t self_numel = 0;                 // size of the written storage
  caffe2::TypeMeta self_dtype;

  // Random ops: position in the stream of the generator they draw from.
  std::shared_ptr<RngChain> chain;
  int64_t rng_index = -1;
  bool owner_dead = false;  // the storage that owns it died unreplayed

  at::Tensor constant;  // constants: flat value of the whole storage
  // Where the op was recorded ("model.py:12 in __init__"), for errors its
  // replay raises; empty for ops that cannot fail on values (fills).
  std::string recorded_at;
  // torch.get_default_dtype() when recorded: type promotion of Python
  // scalars (int_tensor + 0.5) depends on it at run time.
  caffe2::TypeMeta default_dtype;

  bool is_constant() const { return !op.has_value(); }
  bool is_random() const { return chain != nullptr; }
};
// Number of nodes alive in the process (tests check the graph is freed).
int64_t live_node_count();

// The caller's source location, for Node::recorded_at: the innermost
// Python frame outside torch and lazyinit, from a hook the Python module
// installs (empty without one, or without the GIL).
std::string recording_location();
using LocationHook = std::string (*)();
void set_location_hook(LocationHook hook);

// Guards the graph: recording and replay are serialized.
std::recursive_mutex& graph_mutex();

// Takes graph_mutex() for code the dispatcher or Python may enter with the
// GIL held (recording, early ops, Tensor.to, random factories, bindings).
// A thread holding the lock may need the GIL (Meta kernels written in
// Python), so a thread that holds the GIL must not block on the lock: while
// it waits, the hook installed by the Python module releases the GIL.
std::unique_lock<std::recursive_mutex> lock_graph();
using BlockingLockHook = void (*)(std::recursive_mutex&);
void set_blocking_lock_hook(BlockingLockHook hook);

// fork() while another thread records or replays: the parent takes the
// graph lock before forking (prepare_fork, waiting with the GIL released),
// and releases it after; the child gets fresh locks, since the threads that
// held them do not exist there. The Python module installs them with
// os.register_at_fork.
void prepare_fork();
void after_fork_in_parent();
void after_fork_in_child();

// While one is alive on a thread, replays on it leave no trace in the
// graph: values are not cached or counted, storages not marked early,
// random nodes not marked as built on the CPU. The recorder checks argument
// values at the call this way (record/kernel_check.cpp): the device the
// construction will be materialized on is not known yet, so computing them
// on the default device must not decide it.
class ProbeScope {
 public:
  ProbeScope();
  ~ProbeScope();
  ProbeScope(const ProbeScope&) = delete;
  ProbeScope& operator=(const ProbeScope&) = delete;

 private:
  bool was_;
};
bool probing();

}  // namespace lazyinit
