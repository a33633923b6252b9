// The exactness contract for random ops (docs/architecture.md, "RNG").
//
// Eager construction draws from a generator op by op. Recording draws
// nothing, so each random node remembers its index in a chain: the run of
// random ops recorded since the generator was last seen in a known state.
// The generator state before node k is found by replaying nodes 0..k-1 (for
// real, or into scratch tensors of the same geometry when materialized out
// of order); states are cached, so each node's draws run at most twice.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/MT19937RNGEngine.h>
#include <ATen/core/Tensor.h>

#include <lazyinit/core/graph.h>
#include <lazyinit/rng/philox.h>

#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

namespace lazyinit {

// A CPU generator's complete state (mt19937 engine and the cached normal
// samples), copied without allocating: get_state() builds a tensor and costs
// microseconds, which recording pays for every random op.
struct GenState {
  GenState() = default;
  // From an engine, without the default constructor's seeding (a loop over
  // the 624-word state, paid per recorded random op otherwise).
  explicit GenState(const at::mt19937& from) : engine(from) {}

  at::mt19937 engine;
  c10::optional<float> next_float;
  c10::optional<double> next_double;
  bool defined = false;

  static GenState of(at::Generator& gen);
  void apply(at::Generator& gen) const;
  bool operator==(const GenState& other) const;
};

struct RngChain {
  explicit RngChain(at::Generator generator);

  at::Generator generator;
  // states[k]: generator state before node k (null while unknown). Held
  // by pointer: a GenState is 2.5 KB and default-constructing one seeds an
  // mt19937, too slow to do per recorded op.
  std::vector<std::unique_ptr<GenState>> states;
  std::vector<std::weak_ptr<Node>> nodes;
  // Nodes whose owner died before replay, kept to replay their draws.
  std::unordered_map<int64_t, NodePtr> dead;
  // Dead nodes whose draws are countable without them (rng_node_released):
  // CPU draws, and the size a CUDA Philox increment follows from (-1: none).
  struct DeadDraws {
    int64_t cpu_draws = -1;
    int64_t fill_numel = -1;
    caffe2::TypeMeta fill_dtype;
  };
  std::unordered_map<int64_t, DeadDraws> dead_draws;
  // State the generator is left in while the chain is pending: recording a
  // node advances it by one draw, so a reseed, even to the same seed, shows.
  GenState tagged_state;
  int64_t unknown = 0;       // nodes whose state after is not known yet
  int64_t dead_unknown = 0;  // of those, nodes whose owner died unreplayed
  bool applied = false;      // the generator was set to the final state
  // Where eager's CUDA generators stand for these nodes (philox.h).
  PhiloxOrigin cuda;
  // Nodes run on the CPU: built there, as eagerly, they draw nothing from
  // the CUDA generators (the converse of PhiloxStream::replayed).
  std::vector<bool> cpu_built;
  bool built_on_cpu(int64_t index) const {
    return index < static_cast<int64_t>(cpu_built.size()) && cpu_built[index];
  }

  int64_t size() const { return static_cast<int64_t>(nodes.size()); }
  // The last k <= index whose state is known (states[0] always is).
  int64_t last_known(int64_t index) const {
    while (!states[index]) {
      --index;
    }
    return index;
  }
  // Node `index`, alive or kept for its draws; null once freed.
  NodePtr node_at(int64_t index) const {
    if (auto node = nodes[index].lock()) {
      return node;
    }
    auto it = dead.find(index);
    return it == dead.end() ? nullptr : it->second;
  }
};

// Whether any random op was ever recorded in this process (a fast check for
// the hooks on real random ops, which have nothing to catch up before).
bool rng_any_chain_recorded();

// Returns the chain a random node recorded now belongs to and appends it.
void rng_record(const NodePtr& node, const c10::optional<at::Generator>& explicit_gen);

// Runs `call` with the generator in the state before `node`, then records
// the state after it. Replays earlier nodes into scratch where needed.
class Replayer;
void rng_run(Node& node, Replayer& replayer, const std::function<void()>& call);

// Catches the chain up to its end and puts the generator where eager would
// be, before a random op runs for real during recording.
void rng_catch_up(const c10::optional<at::Generator>& explicit_gen, Replayer& replayer);

// After materialization: where every pending random node of the current
// chains has been replayed (or died), leave the generator where eager would.
void rng_settle();

// Saves the states of the generators that have lazy random nodes (and the
// default CPU generator) before a replay and restores them after, so a
// partial materialization leaves them as recording left them. CUDA
// generators are saved when replay first moves them
// (note_cuda_generator_touched).
class GeneratorStateGuard {
 public:
  GeneratorStateGuard();
  ~GeneratorStateGuard();
  GeneratorStateGuard(const GeneratorStateGuard&) = delete;
  GeneratorStateGuard& operator=(const GeneratorStateGuard&) = delete;

  void save_cuda(int device, at::Generator gen, PhiloxState state);
  static GeneratorStateGuard* innermost();

 private:
  std::vector<std::pair<at::Generator, GenState>> saved_;
  std::vector<std::pair<int, std::pair<at::Generator, PhiloxState>>> saved_cuda_;
  GeneratorStateGuard* outer_;
};

// Before a generator (the default CPU one unless given) is read or used for
// real while lazy random nodes are pending: replays their draws into
// scratch and leaves the generator where eager construction would have it.
void rng_catch_up_default(const c10::optional<at::Generator>& explicit_gen = c10::nullopt);

// A random node's last owner (its storage) died or was discarded before it
// was replayed: eager drew its numbers all the same. Cheap for the caller
// (a destructor): the node is queued, and the chain's bookkeeping runs
// under the graph lock before the next use of any chain
// (rng_drain_released). A node whose draws are countable (draw_count, and
// philox_fill_size for CUDA) is then freed and only its counts kept
// (RngChain::dead_draws); catching up skips its draws instead of running it.
void rng_node_released(const NodePtr& node);
void rng_drain_released();
// The queue's lock across fork() (graph.h, prepare_fork).
void rng_prepare_fork();
void rng_after_fork(bool child);

// torch.initial_seed() as eager would report it: the seed of the chain's
// start while the generator carries recording's marker.
uint64_t rng_initial_seed();

// How many generators have a chain (tests: chains of generators nobody
// holds are dropped).
int64_t rng_chain_count();

// Random nodes whose kernel ran (replayed whole, into scratch to find a
// generator position, or over a piece by a region generator), process-wide:
// shows which random inits were computed and which were only counted
// (an init a checkpoint overwrote must never run).
void count_random_run();
int64_t random_runs();

// While alive, real random ops in this thread do not catch the generators
// up (rng_catch_up does nothing): for calls lazyinit makes for its own
// purposes, such as kernels run on stand-ins, whose draws are thrown away.
class CatchUpSuppressed {
 public:
  CatchUpSuppressed();
  ~CatchUpSuppressed();
  CatchUpSuppressed(const CatchUpSuppressed&) = delete;
  CatchUpSuppressed& operator=(const CatchUpSuppressed&) = delete;
};

// Output element count and dtype of a random factory node (torch.randn /
// torch.rand: `size`, `dtype` arguments; the recorder pins the dtype).
// False when they are not known from the arguments (named tensors).
bool random_factory_output(const Node& node, int64_t* numel, caffe2::TypeMeta* dtype);

// For region replay (src/shard/shard_replay.cpp), which advances generators by
// counting draws instead of running nodes into scratch buffers.
// Records the state after chain node `node` (a no-op when already known).
void rng_record_state_after(RngChain& chain, Node& node, GenState state);
// Makes states[index] known: skipping the draws of earlier nodes where
// their count is known (one jump for a run of them), running the others
// into scratch. Returns how many ran into scratch.
int64_t rng_ensure_state(RngChain& chain, int64_t index, Replayer& replayer);

}  // namespace lazyinit
