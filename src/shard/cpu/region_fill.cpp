// Region generators for PyTorch's CPU random kernels (torch 1.13's
// ATen/native/cpu/DistributionTemplates.h and DistributionKernels.cpp, whose
// behaviour tests/python/test_shard.py checks against eager per dtype):
//
// uniform_: cpu_serial_kernel draws one value per element, in memory order,
//   from uniform_real_distribution<scalar_t>: one 32-bit mt19937 output for
//   float / half / bfloat16, two (random64) for double.
// normal_ on a contiguous tensor of >= 16 elements (normal_fill): block k
//   of 16 elements takes uniforms 16k .. 16k + 15, and Box-Muller pairs
//   element j with j + 8; when numel % 16 != 0, 16 more uniforms are drawn
//   and the last 16 elements are recomputed from them. Where those 16 sit
//   in the stream differs by torch version and dtype: after all numel
//   uniforms (torch 1.13 for every dtype, and float/double later), or right
//   after the whole blocks (torch 2.14's bf16/fp16 kernel, which draws and
//   transforms a block at a time in float). A probe of the running torch
//   decides it per dtype (normal_tail()); an unrecognised layout falls back.
//   Smaller or non-contiguous tensors take a serial path through
//   normal_distribution<double>, which uses the generator's cached normal
//   sample; those are run whole (only when tiny) or fall back.
//
// The values themselves come from PyTorch's own kernel run on a piece of
// the same dtype positioned in the mt19937 stream, so the arithmetic
// (AVX2 or not) is the kernel's; only the position mapping is emulated.
#include <lazyinit/shard/shard_replay.h>

#include <lazyinit/core/tensor_args.h>
#include <lazyinit/rng/mt19937_jump.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <exception>
#include <functional>
#include <thread>

namespace lazyinit {
namespace {

// Mirrors n calls of operator() without tempering the outputs nobody
// reads: block by block for short skips, by the GF(2) jump-ahead for long
// ones (src/rng/mt19937_jump.cpp).
void advance_engine(at::mt19937& engine, int64_t n) {
  mt19937_discard(engine, n);
}

}  // namespace

void discard_draws(at::mt19937& engine, int64_t n) {
  if (n <= 0) {
    return;
  }
  count_skipped_draws(n);
  advance_engine(engine, n);
}

namespace {

// Runs `call` on a private CPU generator set to `state`, then stores the
// state after it: region replay never moves the user's generators.
void with_generator(GenState& state, const std::function<void(at::Generator&)>& call) {
  thread_local at::Generator gen = at::make_generator<at::CPUGeneratorImpl>();
  state.apply(gen);
  at::NoGradGuard no_grad;
  call(gen);
  state = GenState::of(gen);
}

}  // namespace

void run_random_node(Node& node, GenState& state, const at::Tensor& self) {
  std::vector<c10::IValue> stack = node.args;
  copy_tensor_lists(stack);
  const auto& slot = node.tensors[node.self_slot];
  set_tensor(stack, slot.arg, slot.element, self);
  with_generator(state, [&](at::Generator& gen) {
    const auto& args = node.op->schema().arguments();
    for (size_t i = 0; i < args.size(); ++i) {
      auto type = args[i].type();
      if (auto opt = type->cast<c10::OptionalType>()) {
        type = opt->getElementType();
      }
      if (type->kind() == c10::TypeKind::GeneratorType) {
        stack[i] = c10::IValue(gen);
      }
    }
    node.op->callBoxed(&stack);
  });
}

namespace {

// Elements generated per kernel call (a multiple of the 16-element
// Box-Muller block).
constexpr int64_t kChunk = int64_t{1} << 20;
constexpr int64_t kBlock = 16;

const TensorRef& self_ref(const Node& node) {
  return node.tensors[node.self_slot].ref;
}

// mt19937 outputs per uniform, or -1 for dtypes these kernels do not take.
int64_t draws_per_uniform(caffe2::TypeMeta dtype) {
  const auto t = dtype.toScalarType();
  if (t == at::kDouble) {
    return 2;
  }
  if (t == at::kFloat || t == at::kHalf || t == at::kBFloat16) {
    return 1;
  }
  return -1;
}

// Where normal_fill draws the uniforms of the recomputed last block when
// numel % 16 != 0 (see the top of this file).
enum class NormalTail { kAfterAll, kAfterBlocks, kUnknown };

// Runs the kernel once on 17 elements from a fixed state and recognises the
// layout by the generator's position afterwards and by the values: element
// 0 comes from the first block, elements 1..16 from the tail's uniforms.
NormalTail probe_normal_tail(at::ScalarType dtype) {
  constexpr int64_t n = kBlock + 1;
  const int64_t per = draws_per_uniform(caffe2::TypeMeta::fromScalarType(dtype));
  at::NoGradGuard no_grad;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(20261207);
  const GenState start = GenState::of(gen);
  const auto options = at::TensorOptions().dtype(dtype);
  at::Tensor whole = at::empty({n}, options);
  whole.normal_(0, 1, gen);
  const GenState after = GenState::of(gen);
  auto block_from = [&](int64_t uniforms) {
    GenState state = start;
    advance_engine(state.engine, uniforms * per);
    state.apply(gen);
    at::Tensor block = at::empty({kBlock}, options);
    block.normal_(0, 1, gen);
    return block;
  };
  const at::Tensor first = block_from(0);
  for (const auto layout : {NormalTail::kAfterAll, NormalTail::kAfterBlocks}) {
    const int64_t tail = layout == NormalTail::kAfterAll ? n : n / kBlock * kBlock;
    GenState expected = start;
    advance_engine(expected.engine, (tail + kBlock) * per);
    if (expected == after && whole[0].equal(first[0]) &&
        whole.narrow(0, 1, kBlock).equal(block_from(tail))) {
      return layout;
    }
  }
  return NormalTail::kUnknown;
}

NormalTail normal_tail(caffe2::TypeMeta dtype) {
  // Probed once per process, for the four dtypes the kernel takes.
  static const std::array<NormalTail, 4> layouts = {
      probe_normal_tail(at::kFloat), probe_normal_tail(at::kDouble), probe_normal_tail(at::kHalf),
      probe_normal_tail(at::kBFloat16)};
  switch (dtype.toScalarType()) {
    case at::kFloat:
      return layouts[0];
    case at::kDouble:
      return layouts[1];
    case at::kHalf:
      return layouts[2];
    case at::kBFloat16:
      return layouts[3];
    default:
      return NormalTail::kUnknown;
  }
}

// The uniform (element) index where the recomputed tail's draws start, or
// -1 when this torch's layout is not recognised.
int64_t normal_tail_start(caffe2::TypeMeta dtype, int64_t n) {
  switch (normal_tail(dtype)) {
    case NormalTail::kAfterAll:
      return n;
    case NormalTail::kAfterBlocks:
      return n / kBlock * kBlock;
    case NormalTail::kUnknown:
      break;
  }
  return -1;
}

// Draws of normal_fill over n >= 16 elements, or -1 if unknown.
int64_t normal_fill_draws(caffe2::TypeMeta dtype, int64_t n, int64_t per) {
  if (n % kBlock == 0) {
    return n * per;
  }
  const int64_t tail = normal_tail_start(dtype, n);
  return tail < 0 ? -1 : (tail + kBlock) * per;
}

// Fills a tensor from a generator state (advancing it) as the recorded op
// would fill its whole output: the node's own op for in-place fills, the
// kernel a random factory runs (randn: empty + normal_(0, 1)).
using Kernel = std::function<void(GenState& state, const at::Tensor& out)>;

Kernel node_kernel(Node& node) {
  return [&node](GenState& state, const at::Tensor& out) { run_random_node(node, state, out); };
}

Kernel factory_kernel(bool normal) {
  return [normal](GenState& state, const at::Tensor& out) {
    with_generator(state, [&](at::Generator& gen) {
      // What at::randn / at::rand run on the empty result (torch 1.13).
      if (normal) {
        out.normal_(0, 1, gen);
      } else {
        out.uniform_(0, 1, gen);
      }
    });
  };
}

// The last position a cursor reached in a stream, with the state there:
// a derived piece computed a chunk at a time asks the same node for
// successive ranges, and each then continues instead of skipping ahead from
// the node's start again. One entry, per thread.
struct CursorMemo {
  GenState start;
  int64_t position = 0;
  GenState state;
};

CursorMemo& cursor_memo() {
  thread_local CursorMemo memo;
  return memo;
}

// Generates from a position in the stream onwards, forward only.
class StreamCursor {
 public:
  StreamCursor(const GenState& start, Kernel kernel)
      : start_(start), state_(start), kernel_(std::move(kernel)) {}
  StreamCursor(const StreamCursor&) = delete;
  StreamCursor& operator=(const StreamCursor&) = delete;
  ~StreamCursor() {
    if (position_ > 0) {
      CursorMemo& memo = cursor_memo();
      memo.start = start_;
      memo.position = position_;
      memo.state = state_;
    }
  }

  void seek(int64_t position) {
    TORCH_INTERNAL_ASSERT(position >= position_, "region generator seeks backwards");
    const CursorMemo& memo = cursor_memo();
    if (memo.position > position_ && memo.position <= position && memo.start.defined &&
        memo.start == start_) {
      state_ = memo.state;
      position_ = memo.position;
    }
    discard_draws(state_.engine, position - position_);
    position_ = position;
  }
  // Fills `out`, which consumes `draws` outputs.
  void run(const at::Tensor& out, int64_t draws) {
    kernel_(state_, out);
    position_ += draws;
  }

 private:
  GenState start_;
  GenState state_;
  Kernel kernel_;
  int64_t position_ = 0;
};

// Elements [begin, end) of the stream generated straight into `out`.
struct Segment {
  int64_t begin;
  int64_t end;
  at::Tensor out;
};

// Pieces at least this large, in segments at least this long on average,
// are generated on several threads.
constexpr int64_t kParallelMin = int64_t{1} << 20;
constexpr int64_t kMinParallelSegment = int64_t{1} << 12;

// Cuts [begin, end) (each element `per` draws) of `out`'s elements into
// segments of whole Box-Muller blocks: kChunk-sized, or smaller so that
// every thread gets several (balanced work for a piece of a few chunks).
void cut_segments(
    int64_t begin,
    int64_t end,
    const at::Tensor& out,
    int64_t out_begin,
    int64_t total,
    std::vector<Segment>* segments) {
  const int64_t threads = at::get_num_threads();
  int64_t size = kChunk;
  if (threads > 1 && total >= kParallelMin) {
    size = std::min(kChunk, std::max(kBlock, total / (4 * threads) / kBlock * kBlock));
  }
  for (int64_t b = begin; b < end; b += size) {
    const int64_t e = std::min(end, b + size);
    segments->push_back({b, e, out.narrow(0, b - out_begin, e - b)});
  }
}

// Generates `segments` (ascending; element i takes draws [i * per, (i + 1)
// * per) of the stream from `start`). PyTorch's CPU kernels draw serially,
// so one thread fills at eager's speed. With several threads, each takes a
// run of consecutive segments and moves its own copy of the state to the
// run's first element (the GF(2) jump-ahead for long skips, about 1 ms), so
// a large piece fills up to that many times faster, with the same values.
void run_segments(
    const Kernel& kernel,
    StreamCursor& cursor,
    const GenState& start,
    int64_t per,
    const std::vector<Segment>& segments) {
  int64_t total = 0;
  for (const auto& s : segments) {
    total += s.end - s.begin;
  }
  // Threads pay off for long segments only: a kernel call per short row
  // (a Shard(1) piece of a narrow matrix) costs more than its values.
  if (at::get_num_threads() <= 1 || total < kParallelMin || segments.size() < 2 ||
      total / static_cast<int64_t>(segments.size()) < kMinParallelSegment) {
    for (const auto& s : segments) {
      cursor.seek(s.begin * per);
      cursor.run(s.out, (s.end - s.begin) * per);
    }
    return;
  }
  // Skipped draws as the serial path counts them (shard_stats): the gaps.
  int64_t skipped = segments.front().begin * per;
  for (size_t i = 1; i < segments.size(); ++i) {
    skipped += (segments[i].begin - segments[i - 1].end) * per;
  }
  count_skipped_draws(skipped);
  // Threads of its own: at::parallel_for compiled into this library
  // runs serially where torch's OpenMP is not this library's, and the pool
  // torch ships its own OpenMP runtime with (pip wheels) is not reachable.
  // Each thread takes a contiguous run of segments and the caller's
  // thread-local state (grad mode, dispatch keys), as the serial path has.
  // Workers must not take the graph's lock (the caller holds it).
  const int64_t threads =
      std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(segments.size()));
  const at::ThreadLocalState caller_state;
  auto work = [&](int64_t t) {
    at::ThreadLocalStateGuard guard(caller_state);
    // Private generators: nothing to catch up, and the caller holds the
    // graph's lock that catching up would wait for.
    CatchUpSuppressed private_generators;
    const int64_t first = static_cast<int64_t>(segments.size()) * t / threads;
    const int64_t last = static_cast<int64_t>(segments.size()) * (t + 1) / threads;
    GenState state = start;
    int64_t position = 0;
    for (int64_t i = first; i < last; ++i) {
      advance_engine(state.engine, segments[i].begin * per - position);
      kernel(state, segments[i].out);
      position = segments[i].end * per;
    }
  };
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(threads));
  for (int64_t t = 1; t < threads; ++t) {
    pool.emplace_back([&, t] {
      try {
        work(t);
      } catch (...) {
        errors[static_cast<size_t>(t)] = std::current_exception();
      }
    });
  }
  try {
    work(0);
  } catch (...) {
    errors[0] = std::current_exception();
  }
  for (auto& thread : pool) {
    thread.join();
  }
  for (const auto& error : errors) {
    if (error) {
      std::rethrow_exception(error);
    }
  }
}

int64_t uniform_draws(const Node& node) {
  const TensorRef& self = self_ref(node);
  const int64_t per = draws_per_uniform(self.dtype);
  if (per < 0) {
    return -1;
  }
  return self.geometry.numel() * per;
}

int64_t normal_draws(const Node& node) {
  const TensorRef& self = self_ref(node);
  const int64_t per = draws_per_uniform(self.dtype);
  int64_t begin = 0;
  int64_t n = 0;
  const bool contiguous = contiguous_range(self.geometry, &begin, &n);
  if (per < 0) {
    return -1;
  }
  if (n == 0) {
    return 0;
  }
  if (!contiguous || n < kBlock) {
    return -1;  // the serial path: depends on the cached normal sample
  }
  return normal_fill_draws(self.dtype, n, per);
}

// One draw (or two) per element, wherever the range sits: numel is unused.
bool fill_uniform_with(
    Kernel kernel, const GenState& start, int64_t /*numel*/, std::vector<RegionRequest>& requests) {
  split_rows(requests);
  const int64_t per = draws_per_uniform(requests.front().out.dtype());
  if (per < 0) {
    return false;
  }
  int64_t total = 0;
  for (const auto& r : requests) {
    total += r.end - r.begin;
  }
  std::vector<Segment> segments;
  for (auto& r : requests) {
    cut_segments(r.begin, r.end, r.out, r.begin, total, &segments);
  }
  StreamCursor cursor(start, kernel);
  run_segments(kernel, cursor, start, per, segments);
  return true;
}

// A normal fill under 16 elements runs the serial kernel: run it whole (at
// most 15 elements) and cut.
void fill_normal_serial(StreamCursor& cursor, int64_t n, std::vector<RegionRequest>& requests) {
  at::Tensor whole = at::empty({n}, requests.front().out.options());
  cursor.run(whole, 0);
  for (auto& r : requests) {
    r.out.copy_(whole.narrow(0, r.begin, r.end - r.begin));
  }
}

// The 16-element blocks of the normal kernel that requests cover in part,
// through one buffer kept for a next request that starts in the same
// block. Partial blocks are generated before the whole blocks between them
// (run_segments), and a cursor only moves forwards: they have a cursor of
// their own.
class PartialBlocks {
 public:
  PartialBlocks(Kernel kernel, const GenState& start, int64_t per, const at::TensorOptions& options)
      : cursor_(start, kernel), per_(per), block_(at::empty({kBlock}, options)) {}

  const at::Tensor& at(int64_t begin) {
    if (begin != begin_) {
      cursor_.seek(begin * per_);
      cursor_.run(block_, kBlock * per_);
      begin_ = begin;
    }
    return block_;
  }

 private:
  StreamCursor cursor_;
  int64_t per_;
  at::Tensor block_;
  int64_t begin_ = -1;
};

// The requests' elements before `tail_start`: partial blocks at a
// request's ends are copied from `blocks` now; whole blocks inside it are
// cut into `segments`, generated straight into the output (no scratch: a
// scratch buffer per chunk fragmented the heap by ~30%).
void cut_normal_blocks(
    std::vector<RegionRequest>& requests,
    int64_t tail_start,
    PartialBlocks& blocks,
    std::vector<Segment>* segments) {
  int64_t total = 0;
  for (const auto& r : requests) {
    total += r.end - r.begin;
  }
  for (auto& r : requests) {
    const int64_t main_end = std::min(r.end, tail_start);
    if (r.begin >= main_end) {
      continue;
    }
    // Whole blocks: [first_whole, last_whole); never past n, as main_end
    // <= n - n % 16.
    const int64_t first_whole = (r.begin + kBlock - 1) / kBlock * kBlock;
    const int64_t last_whole = std::max(first_whole, main_end / kBlock * kBlock);
    const int64_t head_end = std::min(main_end, first_whole);
    if (r.begin < head_end) {
      const int64_t first = r.begin / kBlock * kBlock;
      r.out.narrow(0, 0, head_end - r.begin)
          .copy_(blocks.at(first).narrow(0, r.begin - first, head_end - r.begin));
    }
    if (first_whole < last_whole) {
      cut_segments(first_whole, last_whole, r.out, r.begin, total, segments);
    }
    if (last_whole < main_end && head_end < main_end) {
      const int64_t from = std::max(last_whole, head_end);
      r.out.narrow(0, from - r.begin, main_end - from)
          .copy_(blocks.at(last_whole).narrow(0, from - last_whole, main_end - from));
    }
  }
}

// The last 16 elements of a fill whose size is not a multiple of 16: the
// kernel generates them from draw `tail_draws_from` on.
void fill_normal_tail(
    StreamCursor& cursor,
    int64_t per,
    int64_t tail_start,
    int64_t tail_draws_from,
    std::vector<RegionRequest>& requests) {
  at::Tensor tail;
  for (auto& r : requests) {
    const int64_t b = std::max(r.begin, tail_start);
    if (b >= r.end) {
      continue;
    }
    if (!tail.defined()) {
      tail = at::empty({kBlock}, r.out.options());
      cursor.seek(tail_draws_from * per);
      cursor.run(tail, kBlock * per);
    }
    r.out.narrow(0, b - r.begin, r.end - b).copy_(tail.narrow(0, b - tail_start, r.end - b));
  }
}

bool fill_normal_with(
    Kernel kernel, const GenState& start, int64_t n, std::vector<RegionRequest>& requests) {
  split_rows(requests);
  const int64_t per = draws_per_uniform(requests.front().out.dtype());
  if (per < 0) {
    return false;
  }
  StreamCursor cursor(start, kernel);
  if (n < kBlock) {
    fill_normal_serial(cursor, n, requests);
    return true;
  }
  const int64_t tail_start = n % kBlock != 0 ? n - kBlock : n;
  const int64_t tail_draws_from =
      n % kBlock != 0 ? normal_tail_start(requests.front().out.dtype(), n) : n;
  if (tail_draws_from < 0) {
    return false;  // this torch's tail layout is not one we know
  }
  PartialBlocks blocks(kernel, start, per, requests.front().out.options());
  std::vector<Segment> segments;
  cut_normal_blocks(requests, tail_start, blocks, &segments);
  run_segments(kernel, cursor, start, per, segments);
  if (tail_start < n) {
    fill_normal_tail(cursor, per, tail_start, tail_draws_from, requests);
  }
  return true;
}

int64_t rand_draws(const Node& node) {
  int64_t n = 0;
  caffe2::TypeMeta dtype;
  if (!random_factory_output(node, &n, &dtype)) {
    return -1;
  }
  const int64_t per = draws_per_uniform(dtype);
  return per < 0 ? -1 : n * per;
}

int64_t randn_draws(const Node& node) {
  int64_t n = 0;
  caffe2::TypeMeta dtype;
  if (!random_factory_output(node, &n, &dtype)) {
    return -1;
  }
  const int64_t per = draws_per_uniform(dtype);
  if (per < 0 || (n > 0 && n < kBlock)) {
    return -1;  // the serial path: depends on the cached normal sample
  }
  return n == 0 ? 0 : normal_fill_draws(dtype, n, per);
}

struct RegisterCpuFills {
  RegisterCpuFills() {
    register_draw_count("aten::uniform_", uniform_draws);
    register_draw_count("aten::normal_", normal_draws);
    register_draw_count("aten::rand", rand_draws);
    register_draw_count("aten::randn", randn_draws);
    constexpr auto cpu = c10::DeviceType::CPU;
    register_region_fill(
        "aten::uniform_", cpu, [](Node& node, int64_t n, std::vector<RegionRequest>& r) {
          return fill_uniform_with(node_kernel(node), cpu_state_before(node), n, r);
        });
    register_region_fill(
        "aten::normal_", cpu, [](Node& node, int64_t n, std::vector<RegionRequest>& r) {
          return fill_normal_with(node_kernel(node), cpu_state_before(node), n, r);
        });
    register_region_fill(
        "aten::rand", cpu, [](Node& node, int64_t n, std::vector<RegionRequest>& r) {
          return fill_uniform_with(factory_kernel(false), cpu_state_before(node), n, r);
        });
    register_region_fill(
        "aten::randn", cpu, [](Node& node, int64_t n, std::vector<RegionRequest>& r) {
          return fill_normal_with(factory_kernel(true), cpu_state_before(node), n, r);
        });
  }
};
const RegisterCpuFills register_cpu_fills;

}  // namespace
}  // namespace lazyinit
