// Random values of regions of a tensor as PyTorch's CUDA kernels write
// them into the whole tensor (src/shard/cuda/region_fill.cu): the CUDA half of
// materialize-on-shard. Built with LAZYINIT_CUDA_KERNELS.
#pragma once

#include <lazyinit/rng/philox.h>
#include <lazyinit/shard/placement.h>

#include <ATen/core/Tensor.h>
#include <c10/core/Scalar.h>

#include <cstdint>
#include <vector>

namespace lazyinit {

enum class PhiloxFill { kNormal, kUniform };

// A span of the whole tensor's elements written into `out` (contiguous,
// 1-D, on a CUDA device), run after run (span_out() makes one).
using PhiloxPiece = SpanOut;

// Writes into each piece what `normal_(a, b)` (kNormal: mean, std) or
// `uniform_(a, b)` (kUniform: from, to) writes at those positions of a
// contiguous tensor of `numel` elements of the pieces' dtype, starting from
// Philox state `start`, on a device whose distribution-kernel grid limit is
// `grid_limit` (set_philox_grid_limits). All pieces share one device and
// dtype. The generator is not moved. It is philox_batch_fill of
// philox_jobs(pieces, ...).
void philox_region_fill(
    const std::vector<PhiloxPiece>& pieces,
    PhiloxFill kind,
    const PhiloxState& start,
    int64_t numel,
    int64_t grid_limit,
    double a,
    double b);

// One region fill of a batch: a span of the node's tensor of `total`
// elements (a Shard(1)'s rows: a span of rows), written into `out` (a
// contiguous 1-D CUDA tensor, kept alive until launched).
struct PhiloxJob : SpanOut {
  PhiloxState start;
  int64_t total = 0;
  int64_t grid_limit = 0;
  double a = 0.0;
  double b = 1.0;
};

// The jobs that write `pieces` (sorted by begin, disjoint; arguments as
// philox_region_fill's): one a piece, except that runs of short pieces of
// one length, equally spaced in the tensor and adjacent in one output
// buffer (the rows of a Shard(1)), become one job of rows. A piece of rows
// is one job where its rows are short, else one job a row.
std::vector<PhiloxJob> philox_jobs(
    const std::vector<PhiloxPiece>& pieces,
    const PhiloxState& start,
    int64_t numel,
    int64_t grid_limit,
    double a,
    double b);

// Runs `jobs` (all of one kind) as few kernels: one per device and dtype
// for up to a kernel parameter block's worth of jobs (128 on CUDA >= 12.1).
// Long runs are generated as PyTorch's kernel does, one Philox call per 4
// elements (2 for double) and thread; short ones (whose neighbours under
// the same call belong to other pieces or ranks) one call per element.
void philox_batch_fill(const std::vector<PhiloxJob>& jobs, PhiloxFill kind);

// A constant fill of a batch: `out` (contiguous, 1-D, on a CUDA device)
// set to `value`, converted as fill_ converts it.
struct ConstantJob {
  at::Tensor out;
  c10::Scalar value;
};

// Runs `jobs` as one kernel per device and dtype for up to 128 of them:
// a module's norm weights and biases are many small fills.
void constant_batch_fill(const std::vector<ConstantJob>& jobs);

}  // namespace lazyinit
