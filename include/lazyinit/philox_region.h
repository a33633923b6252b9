// Random values of regions of a tensor as PyTorch's CUDA kernels write
// them into the whole tensor (src/region_fill_cuda.cu): the CUDA half of
// materialize-on-shard. Built with LAZYINIT_CUDA_KERNELS.
#pragma once

#include <lazyinit/philox.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace lazyinit {

enum class PhiloxFill { kNormal, kUniform };

// Elements [begin, begin + out.numel()) of the whole tensor, written into
// `out` (contiguous, 1-D, on a CUDA device).
struct PhiloxPiece {
  int64_t begin = 0;
  at::Tensor out;
};

// Writes into each piece what `normal_(a, b)` (kNormal: mean, std) or
// `uniform_(a, b)` (kUniform: from, to) writes at those positions of a
// contiguous tensor of `numel` elements of the pieces' dtype, starting from
// Philox state `start`, on a device whose distribution-kernel grid limit is
// `grid_limit` (set_philox_grid_limits). All pieces share one device and
// dtype. The generator is not moved. Long pieces are generated one Philox
// call per 4 elements (2 for double), like PyTorch's kernel; short ones,
// whose neighbours under the same call belong to other pieces or ranks, one
// call per element, all in one launch.
void philox_region_fill(
    const std::vector<PhiloxPiece>& pieces,
    PhiloxFill kind,
    const PhiloxState& start,
    int64_t numel,
    int64_t grid_limit,
    double a,
    double b);

// One region fill of a batch: what philox_region_fill({{begin, out}}, kind,
// start, numel, grid_limit, a, b) would write.
struct PhiloxJob {
  int64_t begin = 0;
  at::Tensor out;  // contiguous 1-D CUDA tensor; kept alive until launched
  PhiloxState start;
  int64_t numel = 0;
  int64_t grid_limit = 0;
  double a = 0.0;
  double b = 1.0;
};

// Runs `jobs` (all of one kind) as few kernels: one per device and dtype
// for up to a kernel parameter block's worth of jobs (128 on CUDA >= 12.1).
// Each job gives the values philox_region_fill gives it alone.
void philox_batch_fill(const std::vector<PhiloxJob>& jobs, PhiloxFill kind);

}  // namespace lazyinit
