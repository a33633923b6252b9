#include <lazyinit/rng/chain.h>

#include <lazyinit/replay/replay.h>
#include <lazyinit/rng/philox.h>
#include <lazyinit/shard/shard_replay.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/function_schema.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

namespace lazyinit {
namespace {

// "lazyinit" in ASCII: the seed_ field of a generator marked by recording.
constexpr uint64_t kMarkerSeed = 0x6c617a79696e6974ULL;

// Replays set the generator themselves; catching up from inside one (a
// replayed random factory passes the BackendSelect hook) must do nothing.
thread_local int g_replay_depth = 0;

struct ReplayDepth {
  ReplayDepth() { ++g_replay_depth; }
  ~ReplayDepth() { --g_replay_depth; }
};

// The innermost GeneratorStateGuard alive in this thread (null if none): a
// chain settled inside one would be undone when it restores the generators.
thread_local GeneratorStateGuard* g_innermost_guard = nullptr;

GenState get_state(at::Generator& gen) {
  return GenState::of(gen);
}

void set_state(at::Generator& gen, const GenState& state) {
  state.apply(gen);
}

bool same_state(const GenState& a, const GenState& b) {
  return a.defined && b.defined && a == b;
}

at::Generator generator_for(const c10::optional<at::Generator>& explicit_gen) {
  if (explicit_gen.has_value() && explicit_gen->defined()) {
    return *explicit_gen;
  }
  return at::detail::getDefaultCPUGenerator();
}

// The chain currently being extended, per generator.
std::unordered_map<c10::GeneratorImpl*, std::shared_ptr<RngChain>>& current_chains() {
  static std::unordered_map<c10::GeneratorImpl*, std::shared_ptr<RngChain>> chains;
  return chains;
}

// Drops the chains of generators that only their chain still holds (an
// explicit torch.Generator the user let go, once no pending node names it
// in its arguments): nobody can draw from or read such a generator again,
// so it needs no saving, restoring or settling. Without this, every
// generator ever drawn from lazily stayed alive, and each materialization's
// GeneratorStateGuard copied all their states (after 5,000 dropped
// generators a 4-element materialize took 116 ms instead of 0.05 ms).
// Nodes that still need a dropped chain hold it themselves (Node::chain).
void drop_unreachable_chains() {
  auto& chains = current_chains();
  for (auto it = chains.begin(); it != chains.end();) {
    if (c10::raw::intrusive_ptr::use_count(it->first) == 1) {
      it = chains.erase(it);
    } else {
      ++it;
    }
  }
}

// Records the state after node `index`, which may be freed (dead_draws).
void record_state_at(RngChain& chain, int64_t index, GenState state) {
  auto& slot = chain.states[index + 1];
  if (slot) {
    return;
  }
  slot = std::make_unique<GenState>(std::move(state));
  --chain.unknown;
  NodePtr node = chain.node_at(index);
  if (node == nullptr || node->owner_dead) {
    --chain.dead_unknown;
  }
}

void record_state_after(RngChain& chain, Node& node, GenState state) {
  record_state_at(chain, node.rng_index, std::move(state));
}

// Makes states[index] known. The draws of nodes whose consumption is known
// without running them (draw_count: uniform_, normal_, rand, randn on the
// CPU) are skipped, several nodes at once with one mt19937 jump; the others
// run into scratch buffers of their geometry (their path, and so their
// draws, depends on it). Only states[index] and the states after scratch
// runs are stored: a state is 2.5 KiB, a jump well under a millisecond.
int64_t ensure_state(RngChain& chain, int64_t index, Replayer& replayer) {
  rng_drain_released();
  int64_t i = chain.last_known(index);
  if (i == index) {
    return 0;
  }
  int64_t scratch_runs = 0;
  GenState state = *chain.states[i];
  int64_t skip = 0;         // draws not yet applied to `state`
  int64_t last_index = -1;  // the last node skipped since `state`
  for (; i < index; ++i) {
    if (chain.states[i + 1]) {
      state = *chain.states[i + 1];
      skip = 0;
      continue;
    }
    if (philox_replayed(chain, i)) {
      last_index = i;  // built on CUDA: no CPU draws
      continue;
    }
    NodePtr node = chain.node_at(i);
    if (node == nullptr) {
      auto dead = chain.dead_draws.find(i);
      TORCH_CHECK(
          dead != chain.dead_draws.end(),
          "lazyinit: the CPU generator's position after random tensors that "
          "were materialized on CUDA is unknown, so eager's CPU values cannot "
          "be reproduced. Materialize every random tensor of one model on one "
          "device type (all on CUDA, or all on the CPU).");
      skip += dead->second.cpu_draws;
      last_index = i;
      continue;
    }
    const int64_t draws = draw_count(*node);
    if (draws >= 0) {
      skip += draws;
      last_index = i;
      continue;
    }
    discard_draws(state.engine, skip);
    skip = 0;
    count_random_run();
    auto stack = replayer.prepare(*node, at::Tensor(), /*scratch=*/true);
    at::NoGradGuard no_grad;
    set_state(chain.generator, state);
    node->op->callBoxed(&stack);
    state = get_state(chain.generator);
    record_state_after(chain, *node, state);
    chain.dead.erase(i);
    ++scratch_runs;
    last_index = -1;
  }
  if (last_index >= 0) {
    discard_draws(state.engine, skip);
    record_state_at(chain, last_index, std::move(state));
  }
  return scratch_runs;
}

// ensure_state for the chain's end, where only the chain's own generator
// is to move: a node run into scratch replays its lazy inputs, and those may
// draw from other generators (randint_like(a) of an `a` drawn from an
// explicit generator). Every generator is put back as it was; the caller
// then sets the chain's own to the state found.
void ensure_state_leaving_other_generators(RngChain& chain, Replayer& replayer) {
  GeneratorStateGuard others;
  ensure_state(chain, chain.size(), replayer);
}

void check_cpu(const RngChain& chain, const Replayer& replayer) {
  TORCH_CHECK(
      replayer.device().is_cpu() && chain.generator.device().is_cpu(),
      "lazyinit: exact replay of random ops recorded with the CPU generator "
      "is implemented for CPU targets; materialize on \"cpu\" (CUDA targets "
      "need the CUDA replay support).");
}

}  // namespace

CatchUpSuppressed::CatchUpSuppressed() {
  ++g_replay_depth;
}

CatchUpSuppressed::~CatchUpSuppressed() {
  --g_replay_depth;
}

GenState GenState::of(at::Generator& gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  auto* impl = at::check_generator<at::CPUGeneratorImpl>(gen);
  GenState state(impl->engine());
  state.next_float = impl->next_float_normal_sample();
  state.next_double = impl->next_double_normal_sample();
  state.defined = true;
  return state;
}

void GenState::apply(at::Generator& gen) const {
  TORCH_INTERNAL_ASSERT(defined);
  std::lock_guard<std::mutex> lock(gen.mutex());
  auto* impl = at::check_generator<at::CPUGeneratorImpl>(gen);
  impl->set_engine(engine);
  impl->set_next_float_normal_sample(next_float);
  impl->set_next_double_normal_sample(next_double);
}

bool GenState::operator==(const GenState& other) const {
  const auto a = engine.data();
  const auto b = other.engine.data();
  return a.seed_ == b.seed_ && a.left_ == b.left_ && a.seeded_ == b.seeded_ && a.next_ == b.next_ &&
         a.state_ == b.state_ && next_float == other.next_float && next_double == other.next_double;
}

RngChain::RngChain(at::Generator gen) : generator(std::move(gen)) {}

void rng_record_state_after(RngChain& chain, Node& node, GenState state) {
  record_state_after(chain, node, std::move(state));
  chain.dead.erase(node.rng_index);
}

namespace {
std::atomic<int64_t> g_random_runs{0};
}  // namespace

void count_random_run() {
  ++g_random_runs;
}

int64_t random_runs() {
  return g_random_runs.load();
}

int64_t rng_ensure_state(RngChain& chain, int64_t index, Replayer& replayer) {
  return ensure_state(chain, index, replayer);
}

bool random_factory_output(const Node& node, int64_t* numel, caffe2::TypeMeta* dtype) {
  const auto& args = node.op->schema().arguments();
  bool have_size = false;
  *dtype = node.default_dtype;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i].name() == "size" && node.args[i].isIntList()) {
      *numel = 1;
      for (int64_t s : node.args[i].toIntVector()) {
        *numel *= s;
      }
      have_size = true;
    } else if (args[i].name() == "dtype" && node.args[i].isInt()) {
      *dtype = c10::scalarTypeToTypeMeta(static_cast<c10::ScalarType>(node.args[i].toInt()));
    } else if (args[i].name() == "names" && !node.args[i].isNone()) {
      return false;
    }
  }
  // rand(size, out=t): the values have t's dtype, not the default one
  for (const auto& slot : node.tensors) {
    if (args[slot.arg].name() == "out") {
      *dtype = slot.ref.dtype;
    }
  }
  return have_size;
}

namespace {
std::atomic<bool> g_any_chain_recorded{false};
}  // namespace

bool rng_any_chain_recorded() {
  return g_any_chain_recorded.load(std::memory_order_relaxed);
}

void rng_record(const NodePtr& node, const c10::optional<at::Generator>& explicit_gen) {
  g_any_chain_recorded.store(true, std::memory_order_relaxed);
  at::Generator gen = generator_for(explicit_gen);
  TORCH_CHECK(
      gen.device().is_cpu(), "lazyinit: recording random ops that draw from a ", gen.device().str(),
      " generator is not supported yet; use the default generator or a CPU "
      "torch.Generator.");
  auto& chain = current_chains()[gen.unsafeGetGeneratorImpl()];
  GenState state = get_state(gen);
  if (!chain || chain->applied || !same_state(state, chain->tagged_state)) {
    // First random op since the generator was seeded, set or used: a new
    // chain starts at its current state.
    std::shared_ptr<RngChain> previous = std::move(chain);
    chain = std::make_shared<RngChain>(gen);
    chain->states.push_back(std::make_unique<GenState>(state));
    if (gen.unsafeGetGeneratorImpl() ==
        at::detail::getDefaultCPUGenerator().unsafeGetGeneratorImpl()) {
      // Recording's marker still in the seed field: no reseed since the
      // previous chain, only CPU draws, which eager's CUDA stream ignores.
      const bool continued =
          previous && !previous->applied &&
          state.engine.data().seed_ == previous->tagged_state.engine.data().seed_;
      const uint64_t seed = continued ? previous->cuda.seed : state.engine.seed();
      philox_chain_started(*chain, previous, continued, seed);
    }
  }
  node->chain = chain;
  node->rng_index = chain->size();
  chain->nodes.push_back(node);
  chain->states.emplace_back();
  ++chain->unknown;
  {
    // Mark the generator so that a reseed (even to the same seed) or a real
    // draw before the next recorded op is seen and starts a new chain: one
    // draw, and a marker in the engine's seed_ field, which no draw reads or
    // writes (so no sequence of real draws can reach the marked state).
    // The tagged state is built here rather than read back (GenState::of):
    // each copy of the 2.5 KiB engine costs, and recording is on the
    // model's construction path.
    std::lock_guard<std::mutex> lock(gen.mutex());
    auto* impl = at::check_generator<at::CPUGeneratorImpl>(gen);
    impl->random();
    GenState& tagged = chain->tagged_state;
    tagged.engine = impl->engine();
    auto data = tagged.engine.data();
    data.seed_ = kMarkerSeed ^ static_cast<uint64_t>(chain->size());
    tagged.engine.set_data(data);
    impl->set_engine(tagged.engine);
    tagged.next_float = impl->next_float_normal_sample();
    tagged.next_double = impl->next_double_normal_sample();
    tagged.defined = true;
  }
}

uint64_t rng_initial_seed() {
  auto lock = lock_graph();
  rng_drain_released();
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  auto it = current_chains().find(gen.unsafeGetGeneratorImpl());
  if (it != current_chains().end() && !it->second->applied &&
      same_state(get_state(gen), it->second->tagged_state)) {
    return it->second->states.front()->engine.seed();
  }
  return gen.current_seed();
}

namespace {

// What a replay learns of a chain, put back when a probe's replay of one
// of its nodes ends (ProbeScope, core/graph.h): a known CPU state after a
// node means it was counted as drawn on the CPU, which a later CUDA
// materialization of the node refuses (philox.cpp).
class ChainSnapshot {
 public:
  explicit ChainSnapshot(RngChain& chain)
      : chain_(chain),
        unknown_(chain.unknown),
        dead_unknown_(chain.dead_unknown),
        dead_(chain.dead) {
    known_.reserve(chain.states.size());
    for (const auto& state : chain.states) {
      known_.push_back(state != nullptr);
    }
  }
  ChainSnapshot(const ChainSnapshot&) = delete;
  ChainSnapshot& operator=(const ChainSnapshot&) = delete;
  ~ChainSnapshot() {
    for (size_t k = 0; k < known_.size() && k < chain_.states.size(); ++k) {
      if (!known_[k]) {
        chain_.states[k].reset();
      }
    }
    chain_.unknown = unknown_;
    chain_.dead_unknown = dead_unknown_;
    chain_.dead = std::move(dead_);
  }

 private:
  RngChain& chain_;
  std::vector<bool> known_;
  int64_t unknown_;
  int64_t dead_unknown_;
  std::unordered_map<int64_t, NodePtr> dead_;
};

}  // namespace

void rng_run(Node& node, Replayer& replayer, const std::function<void()>& call) {
  ReplayDepth depth;
  if (replayer.device().is_cuda()) {
    philox_run(node, replayer, call);
    return;
  }
  RngChain& chain = *node.chain;
  check_cpu(chain, replayer);
  c10::optional<ChainSnapshot> snapshot;
  if (probing()) {
    snapshot.emplace(chain);  // a check's value: the device is not decided
  }
  ensure_state(chain, node.rng_index, replayer);
  set_state(chain.generator, *chain.states[node.rng_index]);
  call();
  record_state_after(chain, node, get_state(chain.generator));
  if (snapshot) {
    return;
  }
  if (chain.cpu_built.size() < chain.nodes.size()) {
    chain.cpu_built.resize(chain.nodes.size(), false);
  }
  chain.cpu_built[node.rng_index] = true;
}

void rng_catch_up(const c10::optional<at::Generator>& explicit_gen, Replayer& replayer) {
  if (g_replay_depth > 0) {
    return;
  }
  ReplayDepth depth;
  at::Generator gen = generator_for(explicit_gen);
  auto it = current_chains().find(gen.unsafeGetGeneratorImpl());
  if (it == current_chains().end()) {
    return;
  }
  RngChain& chain = *it->second;
  if (chain.applied || !same_state(get_state(gen), chain.tagged_state)) {
    return;  // the generator was set since; eager would draw from there too
  }
  check_cpu(chain, replayer);
  ensure_state_leaving_other_generators(chain, replayer);
  set_state(gen, *chain.states.back());
  chain.applied = true;
}

namespace {

// The index of the last known state that follows a node built on the CPU,
// or 0 (the chain's start) where none was.
int64_t last_cpu_built_end(const RngChain& chain) {
  for (int64_t i = static_cast<int64_t>(chain.cpu_built.size()) - 1; i >= 0; --i) {
    if (chain.cpu_built[i]) {
      TORCH_INTERNAL_ASSERT(chain.states[i + 1], "lazyinit: a CPU-built random node left no state");
      return i + 1;
    }
  }
  return 0;
}

// Where no random node of the chain awaits materialization any more (each
// was replayed or died), replays the dead ones' draws into scratch and
// leaves the generator where eager construction would.
void settle_chain(RngChain& chain) {
  if (chain.applied || !same_state(get_state(chain.generator), chain.tagged_state)) {
    return;  // the generator was set or used since
  }
  if (chain.unknown != chain.dead_unknown) {
    // Some node was not replayed on the CPU: if the others were on one
    // CUDA device, eager built those (and the dead ones after them) there,
    // drawing nothing from the CPU generator; the CPU position is the one
    // after the last node built on the CPU (each recorded its state), or
    // the chain's start.
    if (philox_settle(chain)) {
      set_state(chain.generator, *chain.states[last_cpu_built_end(chain)]);
      chain.applied = true;
    }
    return;
  }
  Replayer cpu{c10::Device(c10::kCPU)};
  ensure_state_leaving_other_generators(chain, cpu);
  set_state(chain.generator, *chain.states.back());
  chain.applied = true;
  release_scratch();
}

}  // namespace

int64_t rng_chain_count() {
  std::lock_guard<std::recursive_mutex> lock(graph_mutex());
  drop_unreachable_chains();
  return static_cast<int64_t>(current_chains().size());
}

void rng_settle() {
  rng_drain_released();
  drop_unreachable_chains();
  ReplayDepth depth;
  for (auto& kv : current_chains()) {
    settle_chain(*kv.second);
  }
}

namespace {

// Nodes released by rng_node_released, waiting for the graph lock. Never
// freed: a forked child replaces its mutex (rng_after_fork).
struct ReleasedNodes {
  std::unique_ptr<std::mutex> mutex = std::make_unique<std::mutex>();
  std::vector<NodePtr> nodes;
};

ReleasedNodes& released() {
  static ReleasedNodes* r = new ReleasedNodes();
  return *r;
}

}  // namespace

void rng_node_released(const NodePtr& node) {
  auto& r = released();
  std::lock_guard<std::mutex> lock(*r.mutex);
  r.nodes.push_back(node);
}

void rng_prepare_fork() {
  released().mutex->lock();
}

void rng_after_fork(bool child) {
  auto& r = released();
  if (child) {
    (void)r.mutex.release();  // locked by the parent's thread: left as is
    r.mutex = std::make_unique<std::mutex>();
  } else {
    r.mutex->unlock();
  }
}

void rng_drain_released() {
  if (probing()) {
    return;  // kept queued: a probe's chain snapshots put back only its own traces
  }
  std::vector<NodePtr> nodes;
  {
    auto& r = released();
    std::lock_guard<std::mutex> lock(*r.mutex);
    nodes.swap(r.nodes);
  }
  for (auto& node : nodes) {
    RngChain& chain = *node->chain;
    if (node->owner_dead || chain.states[node->rng_index + 1]) {
      continue;  // already counted, or its position after is known
    }
    node->owner_dead = true;
    ++chain.dead_unknown;
    RngChain::DeadDraws draws;
    draws.cpu_draws = draw_count(*node);
    if (!philox_fill_size(*node, &draws.fill_numel, &draws.fill_dtype)) {
      draws.fill_numel = -1;
    }
    // Without CUDA, only the CPU draws will ever be asked for.
    const bool cuda_countable = draws.fill_numel >= 0 || !cuda_may_be_used();
    if (draws.cpu_draws >= 0 && cuda_countable) {
      chain.dead_draws[node->rng_index] = draws;  // the node itself is freed
    } else {
      chain.dead[node->rng_index] = std::move(node);  // run into scratch if needed
    }
  }
}

GeneratorStateGuard* GeneratorStateGuard::innermost() {
  return g_innermost_guard;
}

void GeneratorStateGuard::save_cuda(int device, at::Generator gen, PhiloxState state) {
  // Every enclosing guard restores it too: an inner replay may be the first
  // to move it.
  if (outer_ != nullptr) {
    outer_->save_cuda(device, gen, state);
  }
  for (const auto& saved : saved_cuda_) {
    if (saved.first == device) {
      return;
    }
  }
  saved_cuda_.emplace_back(device, std::make_pair(std::move(gen), state));
}

GeneratorStateGuard::GeneratorStateGuard() : outer_(g_innermost_guard) {
  g_innermost_guard = this;
  drop_unreachable_chains();
  at::Generator cpu = at::detail::getDefaultCPUGenerator();
  saved_.emplace_back(cpu, get_state(cpu));
  for (auto& kv : current_chains()) {
    if (kv.first != cpu.unsafeGetGeneratorImpl()) {
      at::Generator gen = kv.second->generator;
      saved_.emplace_back(gen, get_state(gen));
    }
  }
}

GeneratorStateGuard::~GeneratorStateGuard() {
  for (auto& saved : saved_) {
    set_state(saved.first, saved.second);
  }
  for (auto& saved : saved_cuda_) {
    restore_cuda_generator(saved.second.first, saved.second.second);
  }
  g_innermost_guard = outer_;
}

void rng_catch_up_default(const c10::optional<at::Generator>& explicit_gen) {
  if (g_replay_depth > 0) {
    return;  // before the lock: a region fill's worker threads run here
  }
  auto lock = lock_graph();
  Replayer replayer{c10::Device(c10::kCPU)};
  rng_catch_up(explicit_gen, replayer);
}

}  // namespace lazyinit
