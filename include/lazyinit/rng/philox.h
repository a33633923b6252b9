// Exact CUDA replay of random nodes (docs/architecture.md, "RNG").
//
// Random nodes are recorded against the CPU generator's chain (rng.h). Eager
// construction on CUDA draws from the device's Philox generator instead: a
// (seed, offset) pair, where each random kernel advances the offset by an
// amount that depends on its element count, its dtype and the device's grid.
// For every chain and CUDA device we keep where eager's generator stood
// before each node; a node's position is known from the chain's start plus
// the increments of the nodes before it, which are computed without running
// them where the kernel is known (PyTorch's distribution_nullary_kernel), and
// measured by drawing into scratch otherwise.
#pragma once

#include <lazyinit/core/graph.h>

#include <ATen/core/Generator.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

namespace lazyinit {

class Replayer;

struct PhiloxState {
  uint64_t seed = 0;
  uint64_t offset = 0;
  bool operator==(const PhiloxState& other) const {
    return seed == other.seed && offset == other.offset;
  }
  bool operator!=(const PhiloxState& other) const { return !(*this == other); }
};

// The launch of PyTorch's distribution kernels (distribution_nullary_kernel)
// over `numel` elements on a device of grid limit `grid_limit`: 256 threads
// a block, min(grid_limit, ceil(numel / 256)) blocks. Element i is drawn by
// thread i % threads, in that thread's call i / (threads * unroll) of
// curand, each call giving `unroll` values. The offset increment, the
// region kernels' element-to-Philox mapping and the jobs' modes all derive
// from these two numbers.
constexpr int64_t kPhiloxBlockThreads = 256;

inline int64_t philox_launch_threads(int64_t numel, int64_t grid_limit) {
  return kPhiloxBlockThreads *
         std::min<int64_t>(grid_limit, (numel + kPhiloxBlockThreads - 1) / kPhiloxBlockThreads);
}

// Whether a piece of `n` elements of a tensor drawn by `threads` threads is
// cheaper drawn one Philox call an element: by PyTorch's pairing (one call
// for `unroll` elements `threads` apart), each thread of the piece costs
// about n / unroll calls plus two part-used ones at the piece's edges.
inline bool philox_short_piece(int64_t n, int64_t unroll, int64_t threads) {
  return n > 0 && n / unroll + 2 * threads >= n;
}

// Values a curand call gives: curand_normal2_double / curand_uniform2_double
// for double, the float4 forms (also used for half and bfloat16) otherwise.
inline int64_t philox_unroll(c10::ScalarType dtype) {
  return dtype == c10::ScalarType::Double ? 2 : 4;
}

// Positions of one chain's nodes in one CUDA device's Philox stream.
struct PhiloxStream {
  std::vector<c10::optional<PhiloxState>> states;  // before node k; [n]: after all
  std::vector<bool> replayed;                      // node k ran for real here
};

// Where a chain's CUDA stream starts: the end of the previous chain when no
// reseed came in between, else the generators as they were at its start.
struct PhiloxOrigin {
  std::shared_ptr<RngChain> previous;
  uint64_t seed = 0;                           // for devices whose generator did not exist yet
  std::unordered_map<int, PhiloxState> start;  // devices already initialized
  std::unordered_map<int, PhiloxStream> streams;
  int device = -1;     // the device nodes were replayed on
  bool mixed = false;  // replayed on several devices: no settling
};

// Called when recording starts a new chain on the default CPU generator.
// `previous` is the chain it replaces; `continued` says that no reseed came
// in between (recording's marker was still in the generator).
void philox_chain_started(
    RngChain& chain, const std::shared_ptr<RngChain>& previous, bool continued, uint64_t cpu_seed);

// Runs a random node on a CUDA replayer with the device's generator where
// eager construction would have it, and records where it leaves it.
void philox_run(Node& node, Replayer& replayer, const std::function<void()>& call);

// Whether node `index` of `chain` was replayed on some CUDA device: eager
// built that tensor there, drawing nothing from the CPU generator.
bool philox_replayed(const RngChain& chain, int64_t index);

// Whether the Philox state after `node` on `device` is known or computable
// without drawing (a dead node before a full overwrite may then be skipped).
bool philox_state_after_known(const Node& node, int device);
// The element count and dtype of a distribution fill or random factory
// node, whose Philox increment on any device follows from them; false for
// other random ops (their increment is measured by running them).
bool philox_fill_size(const Node& node, int64_t* numel, caffe2::TypeMeta* dtype);

// Once every live node of the chain has been replayed on one CUDA device,
// leaves that device's generator where eager construction would. Returns
// whether it did.
bool philox_settle(RngChain& chain);

// The offset increment eager's kernel adds for `node` on `device`, where it
// is known without running (nullopt otherwise). Exposed for tests.
c10::optional<uint64_t> philox_increment(const Node& node, int device);

// Where eager's generator on CUDA `device` stands before random `node`
// (computed, or learned by running earlier nodes into scratch, which moves
// that generator: callers hold a GeneratorStateGuard). nullopt when unknown.
c10::optional<PhiloxState> philox_state_before(Node& node, int device);

// For a node whose run is replaced by a queued region fill of its whole
// output: its start state, after doing what philox_run would have done
// (the state after it recorded, the node marked replayed on `device`, the
// generator left after it). nullopt, with nothing changed, where the
// increment is not known without running it.
c10::optional<PhiloxState> philox_take_run(Node& node, int device);

// The grid limit set_philox_grid_limits gave `device`, or -1.
int64_t philox_grid_limit(int device);

// Set from Python once torch has initialized CUDA (also with no limits,
// where the properties could not be read): the largest grid (blocks) of
// PyTorch's distribution kernels on each device, multiProcessorCount *
// (maxThreadsPerMultiProcessor / 256). Without it increments are measured.
// Until it is called, lazyinit makes no CUDA driver call.
void set_philox_grid_limits(const std::vector<int64_t>& limits);

// Whether this torch has CUDA support loaded (CUDA tensors may be asked
// for later), known without any driver call.
bool cuda_may_be_used();

// Puts a CUDA generator back where a GeneratorStateGuard found it.
void restore_cuda_generator(at::Generator& gen, const PhiloxState& state);

// Saves a CUDA generator's state in the innermost GeneratorStateGuard (once)
// before replay moves it.
void note_cuda_generator_touched(int device);

}  // namespace lazyinit
