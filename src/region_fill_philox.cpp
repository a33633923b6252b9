// CUDA region generators for materialize-on-shard: the values a shard of a
// normal_ / uniform_ / randn / rand node would hold in eager's whole CUDA
// tensor, computed for the shard's element ranges alone by the Philox region
// kernel (src/region_fill_cuda.cu) from the node's position in eager's
// Philox stream (src/philox.cpp). Built with LAZYINIT_CUDA_KERNELS.
#include <lazyinit/philox.h>
#include <lazyinit/philox_region.h>
#include <lazyinit/shard_replay.h>

#include <c10/util/Exception.h>

#include <limits>

namespace lazyinit {
namespace {

// Fills queued while a replay allows it (fills_may_defer): launched
// batched, once this many are waiting (so the GPU starts while the CPU
// plans the rest) and when the queue is flushed.
constexpr size_t kFlushAt = 48;
constexpr size_t kMaxQueuedPieces = 8;
// Whole storages above this many elements run PyTorch's own kernel: at that
// size the launch is a small part of the kernel's time, and PyTorch's
// kernel (a fixed grid, one tensor) measured faster than the batch kernel
// on large tensors (7B Llama on an H100: 1.22x the normal_ floor against
// 1.46-1.55x).
constexpr int64_t kMaxQueuedWholeNumel = int64_t{1} << 20;

struct Queue {
  std::vector<PhiloxJob> normal;
  std::vector<PhiloxJob> uniform;
  size_t size() const { return normal.size() + uniform.size(); }
};

Queue& queue() {
  thread_local Queue q;
  return q;
}

void flush_queue(bool drop) {
  Queue& q = queue();
  if (q.size() == 0) {
    return;
  }
  // Emptied first: a launch that throws leaves nothing half-queued.
  std::vector<PhiloxJob> normal = std::move(q.normal);
  std::vector<PhiloxJob> uniform = std::move(q.uniform);
  q.normal.clear();
  q.uniform.clear();
  if (drop) {
    return;
  }
  philox_batch_fill(normal, PhiloxFill::kNormal);
  philox_batch_fill(uniform, PhiloxFill::kUniform);
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
  // Many pieces (a Shard(1): one a row) already go out in one launch.
  if (fills_may_defer() && requests.size() <= kMaxQueuedPieces) {
    Queue& q = queue();
    auto& jobs = kind == PhiloxFill::kNormal ? q.normal : q.uniform;
    for (auto& r : requests) {
      jobs.push_back(PhiloxJob{r.begin, r.out, *start, numel, grid, a, b});
    }
    if (q.size() >= kFlushAt) {
      flush_queue(/*drop=*/false);
    }
    return true;
  }
  std::vector<PhiloxPiece> pieces;
  pieces.reserve(requests.size());
  for (auto& r : requests) {
    pieces.push_back(PhiloxPiece{r.begin, r.out});
  }
  philox_region_fill(pieces, kind, *start, numel, grid, a, b);
  return true;
}

// A whole-storage normal_ / uniform_ (the last write of a storage that
// materialize_flat replays) queued as a region fill of all of it.
bool queue_whole(Node& node, const at::Tensor& out) {
  const auto& name = node.op->schema().operator_name();
  if (!name.overload_name.empty() || node.self_slot < 0 || !out.is_cuda() ||
      !out.device().has_index() || !out.is_contiguous() || out.dim() != 1 ||
      node.args.size() < 3 || !node.args[1].isDouble() || !node.args[2].isDouble()) {
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
  if (!contiguous_range(self.geometry, &begin, &numel) || begin != 0 ||
      numel != out.numel() || self.dtype != out.dtype() || !is_floating(out.scalar_type()) ||
      numel > kMaxQueuedWholeNumel) {
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
  Queue& q = queue();
  (kind == PhiloxFill::kNormal ? q.normal : q.uniform)
      .push_back(PhiloxJob{0, out, *start, numel, grid, node.args[1].toDouble(),
                           node.args[2].toDouble()});
  if (q.size() >= kFlushAt) {
    flush_queue(/*drop=*/false);
  }
  return true;
}

struct RegisterPhiloxFills {
  RegisterPhiloxFills() {
    register_deferred_flush(&flush_queue);
    register_whole_fill_queuer(&queue_whole);
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

}  // namespace
}  // namespace lazyinit
