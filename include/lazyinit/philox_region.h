// Random values of a region of a tensor as PyTorch's CUDA kernels write
// them into the whole tensor (src/region_fill_cuda.cu): the CUDA half of
// materialize-on-shard. Built only with -DLAZYINIT_CUDA_KERNELS=ON.
#pragma once

#include <lazyinit/philox.h>

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace lazyinit {

enum class PhiloxFill { kNormal, kUniform };

// Writes into `out` (contiguous, 1-D, on a CUDA device) elements
// [begin, begin + out.numel()) of what `normal_(a, b)` (kNormal: mean, std) or
// `uniform_(a, b)` (kUniform: from, to) writes into a contiguous tensor of
// `numel` elements of out's dtype, starting from Philox state `start`, on a
// device whose distribution-kernel grid limit is `grid_limit`
// (set_philox_grid_limits). The generator is not moved.
void philox_region_fill(
    const at::Tensor& out,
    PhiloxFill kind,
    const PhiloxState& start,
    int64_t numel,
    int64_t begin,
    int64_t grid_limit,
    double a,
    double b);

}  // namespace lazyinit
