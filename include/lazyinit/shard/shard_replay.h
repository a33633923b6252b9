// Materialize-on-shard: the local piece of a lazy tensor, computed by
// replaying its storage's tape only over the storage spans the piece covers
// (docs/architecture.md, "Materialize-on-shard"). The lazy tensor stays lazy.
//
// A tape is pushed down to the spans when every node is element-local:
// a creation that fills a constant, random fills that a registered region
// generator reproduces exactly, and whitelisted element-wise in-place ops on
// contiguous ranges of the storage. Anything else (orthogonal_'s QR, reads of
// other lazy storages, transposed writes, unknown ops) falls back to
// replaying the whole storage and slicing it, counted in ShardStats.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <lazyinit/core/graph.h>
#include <lazyinit/rng/chain.h>
#include <lazyinit/shard/placement.h>

#include <functional>
#include <string>
#include <vector>

namespace lazyinit {

// A span of a random node's elements (row-major in the view it writes) and
// the contiguous 1-D tensor that receives them, run after run.
using RegionRequest = SpanOut;

// `requests` with every multi-row request cut into one request a row, each
// writing a narrow() of its output: for generators that take one range at
// a time (the CPU ones, whose stream is walked in order anyway).
void split_rows(std::vector<RegionRequest>& requests);

// Fills `requests` (sorted by begin, disjoint) with exactly the values
// `node` writes at those positions when run whole on the target device.
// `numel` is the size of the view the node writes (contiguous), or of the
// output for random factories (torch.randn). The generator position is the
// fill's business: CPU fills ask cpu_state_before(node); a CUDA fill would
// compute the node's Philox offset. Returns false when it cannot reproduce
// this call exactly (the caller then falls back).
using RegionFill =
    std::function<bool(Node& node, int64_t numel, std::vector<RegionRequest>& requests)>;

// Deferred launches. Kernel launches, not the kernels, bound a rank's
// shards on a GPU (hundreds of tensors, each a few microseconds of CPU to
// plan and launch): region generators may queue their work instead and
// launch it batched (the CUDA one: up to 128 fills a kernel). They may only
// when nothing reads or writes the outputs before the queue is flushed:
// inside a DeferredFillScope (materialize_shards), and only within a
// DeferralWindow, which span replay opens for the last write of a tape
// (nothing of that storage runs after it). Whoever reads an output that
// may be pending calls flush_deferred_fills() first, and so does the owner
// of the scope before it ends; a scope that ends with work still queued
// (an exception unwinding it) launches it too.
class DeferredFillScope {
 public:
  DeferredFillScope();
  ~DeferredFillScope();
  DeferredFillScope(const DeferredFillScope&) = delete;
  DeferredFillScope& operator=(const DeferredFillScope&) = delete;
};

class DeferralWindow {
 public:
  explicit DeferralWindow(bool open);
  ~DeferralWindow();
  DeferralWindow(const DeferralWindow&) = delete;
  DeferralWindow& operator=(const DeferralWindow&) = delete;

 private:
  bool previous_;
};

// Whether a region generator called now may queue its work.
bool fills_may_defer();
// Launches (or, with `drop`, discards) what region generators queued.
void flush_deferred_fills(bool drop = false);
// Called by a region generator that queues work: how to flush its queue.
void register_deferred_flush(void (*flush)(bool drop));

// Whole-storage replay may queue a storage's last write the same way
// (materialize_flat opens the scope): a region generator's replacement for
// running random node `node` over all of `out` (the storage's flat value).
// It queues the fill and does the generator bookkeeping the run would do;
// false where it cannot (the node then runs as usual).
using WholeFillQueuer = bool (*)(Node& node, const at::Tensor& out);
void register_whole_fill_queuer(WholeFillQueuer queuer);
// Queues `node` through the registered queuer if fills_may_defer().
bool queue_whole_fill(Node& node, const at::Tensor& out);

// Constant fills (a creation's ones / zeros / full, when nothing of the
// storage runs after it) may be queued the same way: `out` (contiguous,
// 1-D) set to `value`. False where the registered queuer cannot (not a GPU
// tensor, too large, a dtype it lacks) or fills_may_defer() is false; the
// caller then fills it itself.
using ConstantFillQueuer = bool (*)(const at::Tensor& out, const c10::Scalar& value);
void register_constant_fill_queuer(ConstantFillQueuer queuer);
bool queue_constant_fill(const at::Tensor& out, const c10::Scalar& value);

// Number of generator draws (32-bit outputs of mt19937) `node` consumes
// when run whole, where it is known without running it; -1 otherwise.
using DrawCount = std::function<int64_t(const Node& node)>;

// Region generators by operator name ("aten::normal_") and target device
// type. The CPU ones (src/shard/cpu/region_fill.cpp) emulate PyTorch's CPU
// kernels; a CUDA one (Philox for an index range) plugs in the same way.
void register_region_fill(const std::string& op, c10::DeviceType device, RegionFill fill);
const RegionFill* find_region_fill(const std::string& op, c10::DeviceType device);
void register_draw_count(const std::string& op, DrawCount count);
int64_t draw_count(const Node& node);

// The CPU generator state before random node `node`, made known by counting
// the draws of earlier nodes of its chain (no memory), or by running them
// into scratch where their draw count is unknown.
GenState cpu_state_before(Node& node);

// Process-wide counters (lazyinit.shard_stats()).
struct ShardStats {
  int64_t shards = 0;                         // materialize_shard calls on lazy tensors
  int64_t pushed_down = 0;                    // of those, replayed over the spans only
  int64_t fallbacks = 0;                      // of those, whole storage replayed + sliced
  int64_t whole = 0;                          // of those, pieces covering their whole storage
                                              // (Replicate): replayed whole, not a fallback
  int64_t rng_scratch_runs = 0;               // random nodes run whole into scratch to
                                              // learn the generator state after them
  int64_t draws_skipped = 0;                  // mt19937 outputs discarded to reach a position
  std::vector<std::string> fallback_reasons;  // the latest few, newest last
};
ShardStats shard_stats();
void reset_shard_stats();
// Whether a shard of this storage has fallen back to whole replay.
bool storage_fell_back(int64_t storage_id);
// Adds to ShardStats::draws_skipped (called by discard_draws).
void count_skipped_draws(int64_t n);

// The local piece of `t` under `placements`, as a new contiguous tensor on
// `device`. For a lazy tensor, nothing is materialized and the generators
// are left as they were; for a real one, the piece is copied. With `dest`
// (a flat tensor of the piece's numel and t's dtype on `device`), the piece
// is computed in it and returned as a view of it.
at::Tensor materialize_shard(
    const at::Tensor& t,
    const std::vector<Placement>& placements,
    c10::Device device,
    const at::Tensor& dest = {});

// materialize_shard for many tensors (a module's, for one rank), with one
// allocation per dtype: each piece gets a storage of its own over a slice
// of it (flat.h).
std::vector<at::Tensor> materialize_shards(
    const std::vector<at::Tensor>& tensors,
    const std::vector<std::vector<Placement>>& placements,
    c10::Device device);

// Replays `storage` at `version` over `spans` (sorted, disjoint storage
// element ranges) into one buffer holding the spans' elements concatenated.
// Returns false, with the reason, when the tape is not element-local (see
// the top of this file); nothing observable has changed then. With `dest`
// (flat, the spans' total size), the buffer is dest. `may_defer`: the
// caller reads the buffer only after flush_deferred_fills(), so the tape's
// last write may be queued (DeferralWindow).
bool replay_spans(
    LazyStorage& storage,
    int64_t version,
    std::vector<Span> spans,
    c10::Device device,
    at::Tensor* out,
    std::string* why,
    const at::Tensor& dest = {},
    bool may_defer = false);

// Runs `node` (a random op) whole from generator state `state` on `self`
// through a private generator, leaving the state after the call in `state`.
void run_random_node(Node& node, GenState& state, const at::Tensor& self);

// The mt19937 engine advanced by `n` outputs.
void discard_draws(at::mt19937& engine, int64_t n);

}  // namespace lazyinit
