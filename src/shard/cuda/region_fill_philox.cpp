// CUDA region generators for materialize-on-shard: the values a shard of a
// normal_ / uniform_ / randn / rand node would hold in eager's whole CUDA
// tensor, computed for the shard's element ranges alone by the Philox region
// kernel (src/shard/cuda/region_fill.cu) from the node's position in eager's
// Philox stream (src/rng/philox.cpp). The queue of deferred launches also takes
// small constant fills (a module's norm weights). Built with
// LAZYINIT_CUDA_KERNELS.
#include <lazyinit/rng/philox.h>
#include <lazyinit/shard/philox_region.h>
#include <lazyinit/shard/shard_replay.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

namespace lazyinit {
namespace {

// Fills queued while a replay allows it (fills_may_defer): launched
// batched, once this many are waiting (so the GPU starts while the CPU
// plans the rest) and when the queue is flushed. The first launches come
// sooner (kFirstFlushAt, then doubling): until then the GPU waits.
constexpr size_t kFlushAt = 48;
constexpr size_t kFirstFlushAt = 8;
// A fill of more jobs than this (pieces that are not rows) is launched at
// once, in kernels of its own.
constexpr size_t kMaxQueuedJobs = 8;
// Constant fills above this many elements run fill_'s own (vectorized)
// kernel: the batch fill kernel looks up its job for every element.
constexpr int64_t kMaxQueuedConstantNumel = int64_t{1} << 20;

struct Queue {
  std::vector<PhiloxJob> normal;
  std::vector<PhiloxJob> uniform;
  std::vector<ConstantJob> constant;
  size_t early_flushes = 0;  // launches since the queue was last flushed by its owner
  size_t size() const { return normal.size() + uniform.size() + constant.size(); }
  size_t flush_at() const {
    return std::min(kFlushAt, kFirstFlushAt << std::min<size_t>(early_flushes, 3));
  }
};

Queue& queue() {
  thread_local Queue q;
  return q;
}

void launch_queue(bool drop) {
  Queue& q = queue();
  if (q.size() == 0) {
    return;
  }
  // Emptied first: a launch that throws leaves nothing half-queued.
  std::vector<PhiloxJob> normal = std::move(q.normal);
  std::vector<PhiloxJob> uniform = std::move(q.uniform);
  std::vector<ConstantJob> constant = std::move(q.constant);
  q.normal.clear();
  q.uniform.clear();
  q.constant.clear();
  if (drop) {
    return;
  }
  philox_batch_fill(normal, PhiloxFill::kNormal);
  philox_batch_fill(uniform, PhiloxFill::kUniform);
  constant_batch_fill(constant);
}

// The owner's flush (the end of a replay, or before reading a result).
void flush_queue(bool drop) {
  queue().early_flushes = 0;
  launch_queue(drop);
}

void flush_if_full() {
  Queue& q = queue();
  if (q.size() >= q.flush_at()) {
    ++q.early_flushes;
    launch_queue(/*drop=*/false);
  }
}

// Queues `job`; launches the queue once it holds kFlushAt jobs.
void enqueue(PhiloxFill kind, PhiloxJob job) {
  Queue& q = queue();
  (kind == PhiloxFill::kNormal ? q.normal : q.uniform).push_back(std::move(job));
  flush_if_full();
}

// A creation's ones / zeros / full (queue_constant_fill): small ones only,
// as whole fills; larger fills are bandwidth-bound kernels of their own.
bool queue_constant(const at::Tensor& out, const c10::Scalar& value) {
  switch (out.scalar_type()) {  // constant_batch_fill's dtypes
    case at::kFloat:
    case at::kDouble:
    case at::kHalf:
    case at::kBFloat16:
    case at::kBool:
    case at::kByte:
    case at::kChar:
    case at::kShort:
    case at::kInt:
    case at::kLong:
      break;
    default:
      return false;
  }
  if (!out.is_cuda() || !out.is_contiguous() || out.dim() != 1 ||
      out.numel() > kMaxQueuedConstantNumel || value.isComplex()) {
    return false;
  }
  queue().constant.push_back(ConstantJob{out, value});
  flush_if_full();
  return true;
}

bool is_floating(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// `a`, `b`: (mean, std) or (from, to); factories (randn / rand) take the
// defaults, in-place fills their arguments 1 and 2.
bool fill_with_philox(
    Node& node,
    int64_t numel,
    std::vector<RegionRequest>& requests,
    PhiloxFill kind,
    bool factory) {
  if (requests.empty()) {
    return true;
  }
  const c10::Device device = requests.front().out.device();
  TORCH_INTERNAL_ASSERT(device.is_cuda() && device.has_index());
  const int64_t grid = philox_grid_limit(device.index());
  // Larger tensors are split into 32-bit pieces, each taking its own offset.
  if (grid <= 0 || numel > std::numeric_limits<int32_t>::max() ||
      !is_floating(requests.front().out.scalar_type())) {
    return false;
  }
  double a = 0.0;
  double b = 1.0;
  if (!factory) {
    if (node.args.size() < 3 || !node.args[1].isDouble() || !node.args[2].isDouble()) {
      return false;
    }
    a = node.args[1].toDouble();
    b = node.args[2].toDouble();
  }
  auto start = philox_state_before(node, device.index());
  if (!start) {
    return false;
  }
  std::vector<PhiloxPiece> pieces;
  pieces.reserve(requests.size());
  for (auto& r : requests) {
    pieces.push_back(r);
  }
  std::vector<PhiloxJob> jobs = philox_jobs(pieces, *start, numel, grid, a, b);
  if (fills_may_defer() && jobs.size() <= kMaxQueuedJobs) {
    for (auto& job : jobs) {
      enqueue(kind, std::move(job));
    }
  } else {
    philox_batch_fill(jobs, kind);
  }
  return true;
}

// A whole-storage normal_ / uniform_ (the last write of a storage that
// materialize_flat replays) queued as a region fill of all of it.
bool queue_whole(Node& node, const at::Tensor& out) {
  const auto& name = node.op->schema().operator_name();
  if (!name.overload_name.empty() || node.self_slot < 0 || !out.is_cuda() ||
      !out.device().has_index() || !out.is_contiguous() || out.dim() != 1 || node.args.size() < 3 ||
      !node.args[1].isDouble() || !node.args[2].isDouble()) {
    return false;
  }
  PhiloxFill kind;
  if (name.name == "aten::normal_") {
    kind = PhiloxFill::kNormal;
  } else if (name.name == "aten::uniform_") {
    kind = PhiloxFill::kUniform;
  } else {
    return false;
  }
  // It writes the whole storage, in order, in the storage's dtype.
  const TensorRef& self = node.tensors[node.self_slot].ref;
  int64_t begin = 0;
  int64_t numel = 0;
  if (!contiguous_range(self.geometry, &begin, &numel) || begin != 0 || numel != out.numel() ||
      self.dtype != out.dtype() || !is_floating(out.scalar_type()) ||
      numel > std::numeric_limits<int32_t>::max()) {  // PyTorch splits those
    return false;
  }
  const int device = out.device().index();
  const int64_t grid = philox_grid_limit(device);
  if (grid <= 0) {
    return false;
  }
  auto start = philox_take_run(node, device);
  if (!start) {
    return false;
  }
  enqueue(
      kind, PhiloxJob{
                {span_out(0, out)},
                *start,
                numel,
                grid,
                node.args[1].toDouble(),
                node.args[2].toDouble()});
  return true;
}

struct RegisterPhiloxFills {
  RegisterPhiloxFills() {
    register_deferred_flush(&flush_queue);
    register_whole_fill_queuer(&queue_whole);
    register_constant_fill_queuer(&queue_constant);
    constexpr auto cuda = c10::DeviceType::CUDA;
    register_region_fill(
        "aten::normal_", cuda, [](Node& node, int64_t n, std::vector<RegionRequest>& r) {
          return fill_with_philox(node, n, r, PhiloxFill::kNormal, /*factory=*/false);
        });
    register_region_fill(
        "aten::uniform_", cuda, [](Node& node, int64_t n, std::vector<RegionRequest>& r) {
          return fill_with_philox(node, n, r, PhiloxFill::kUniform, /*factory=*/false);
        });
    register_region_fill(
        "aten::randn", cuda, [](Node& node, int64_t n, std::vector<RegionRequest>& r) {
          return fill_with_philox(node, n, r, PhiloxFill::kNormal, /*factory=*/true);
        });
    register_region_fill(
        "aten::rand", cuda, [](Node& node, int64_t n, std::vector<RegionRequest>& r) {
          return fill_with_philox(node, n, r, PhiloxFill::kUniform, /*factory=*/true);
        });
  }
};
const RegisterPhiloxFills register_philox_fills;

// `pieces` with each run of short single-row pieces of one length, equally
// spaced in the tensor and back to back in one output buffer (a Shard(1)'s
// rows where the placement gave them one a span) turned into one piece of
// rows.
std::vector<PhiloxPiece> merge_rows(
    const std::vector<PhiloxPiece>& pieces, int64_t unroll, int64_t threads) {
  std::vector<PhiloxPiece> out;
  out.reserve(pieces.size());
  for (size_t i = 0; i < pieces.size();) {
    const PhiloxPiece& head = pieces[i];
    const int64_t len = head.out.numel();
    size_t end = i + 1;
    if (head.rows == 1 && philox_short_piece(len, unroll, threads) && end < pieces.size()) {
      const int64_t step = pieces[end].begin - head.begin;
      while (end < pieces.size() && step >= len && pieces[end].rows == 1 &&
             pieces[end].begin - pieces[end - 1].begin == step && pieces[end].out.numel() == len &&
             pieces[end].out.scalar_type() == head.out.scalar_type() &&
             pieces[end].out.storage().is_alias_of(head.out.storage()) &&
             pieces[end].out.storage_offset() == pieces[end - 1].out.storage_offset() + len) {
        ++end;
      }
    }
    const int64_t rows = static_cast<int64_t>(end - i);
    if (rows == 1) {
      out.push_back(head);
    } else {
      out.push_back(span_out(
          head.begin, head.out.as_strided({rows * len}, {1}), rows,
          pieces[i + 1].begin - head.begin));
    }
    i = end;
  }
  return out;
}

}  // namespace

std::vector<PhiloxJob> philox_jobs(
    const std::vector<PhiloxPiece>& pieces,
    const PhiloxState& start,
    int64_t numel,
    int64_t grid_limit,
    double a,
    double b) {
  std::vector<PhiloxJob> jobs;
  if (pieces.empty()) {
    return jobs;
  }
  // The stride S of the whole tensor's launch, as the kernel computes it:
  // rows are generated one Philox call an element, which only short pieces
  // would be anyway (philox_short_piece).
  const int64_t threads = philox_launch_threads(numel, grid_limit);
  const int64_t unroll = philox_unroll(pieces.front().out.scalar_type());
  for (const PhiloxPiece& piece : merge_rows(pieces, unroll, threads)) {
    const int64_t len = piece.out.numel() / piece.rows;
    if (piece.rows == 1 || philox_short_piece(len, unroll, threads)) {
      jobs.push_back(PhiloxJob{{piece}, start, numel, grid_limit, a, b});
      continue;
    }
    // Long rows: PyTorch's four elements a Philox call, a job a row.
    for (int64_t r = 0; r < piece.rows; ++r) {
      jobs.push_back(PhiloxJob{
          {span_out(piece.begin + r * piece.row_step, piece.out.narrow(0, r * len, len))},
          start,
          numel,
          grid_limit,
          a,
          b});
    }
  }
  return jobs;
}

void philox_region_fill(
    const std::vector<PhiloxPiece>& pieces,
    PhiloxFill kind,
    const PhiloxState& start,
    int64_t numel,
    int64_t grid_limit,
    double a,
    double b) {
  for (const auto& piece : pieces) {
    TORCH_CHECK(
        piece.out.is_cuda() && piece.out.is_contiguous() && piece.out.dim() == 1 &&
            piece.out.device() == pieces.front().out.device() &&
            piece.out.scalar_type() == pieces.front().out.scalar_type(),
        "lazyinit: philox_region_fill writes contiguous 1-D CUDA tensors of one "
        "device and dtype");
    TORCH_CHECK(
        piece.rows >= 1 && piece.out.numel() % piece.rows == 0 &&
            (piece.rows == 1 || piece.row_step >= piece.out.numel() / piece.rows),
        "lazyinit: a piece of rows holds whole, non-overlapping rows");
  }
  philox_batch_fill(philox_jobs(pieces, start, numel, grid_limit, a, b), kind);
}

}  // namespace lazyinit
