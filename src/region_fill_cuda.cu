// Random values of a region of a tensor, exactly as PyTorch's CUDA kernels
// write them into the whole tensor (DESIGN.md, "RNG", shards).
//
// PyTorch's distribution kernels (ATen/native/cuda/DistributionTemplates.h,
// torch 2.11) run a grid-stride loop: with S = 256 threads * grid blocks and
// `unroll` values a Philox call (4 for float/half/bfloat16, 2 for double),
// element li is written by thread t = li % S, at loop iteration
// (li / S) / unroll, from component (li / S) % unroll of the Philox output of
// curand_init(seed, t, offset) after that many calls. Each Philox call takes
// 4 of the counter, so that state is curand_init(seed, t, offset + 4 * iter):
// every element is computable on its own, in O(1).
//
// NOT YET BUILT OR RUN ON A GPU: built only with -DLAZYINIT_CUDA_KERNELS=ON;
// tests/python/test_shard_cuda.py compares it with eager full tensors.
#include <lazyinit/philox_region.h>

#include <ATen/AccumulateType.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>

#include <curand_kernel.h>

namespace lazyinit {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t, int kUnroll, typename dist_t, typename transform_t>
__global__ void region_kernel(
    scalar_t* out,
    int64_t begin,
    int64_t count,
    uint64_t seed,
    uint64_t offset,
    int64_t stride,
    dist_t dist,
    transform_t transform) {
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < count;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t li = begin + k;
    const int64_t thread = li % stride;
    const int64_t q = li / stride;
    const int lane = static_cast<int>(q % kUnroll);
    const int64_t iter = q / kUnroll;
    curandStatePhilox4_32_10_t state;
    curand_init(seed, thread, offset + 4 * static_cast<uint64_t>(iter), &state);
    auto rand = dist(&state);
    out[k] = transform(static_cast<acc_t>((&rand.x)[lane]));
  }
}

template <typename scalar_t, typename acc_t, int kUnroll, typename dist_t, typename transform_t>
void launch(
    const at::Tensor& out,
    const PhiloxState& start,
    int64_t begin,
    int64_t stride,
    dist_t dist,
    transform_t transform) {
  const int64_t count = out.numel();
  if (count == 0) {
    return;
  }
  const int64_t blocks = std::min<int64_t>((count + kThreads - 1) / kThreads, 65535);
  region_kernel<scalar_t, acc_t, kUnroll><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      out.data_ptr<scalar_t>(), begin, count, start.seed, start.offset, stride, dist, transform);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void philox_region_fill(
    const at::Tensor& out,
    PhiloxFill kind,
    const PhiloxState& start,
    int64_t numel,
    int64_t begin,
    int64_t grid_limit,
    double a,
    double b) {
  TORCH_CHECK(out.is_cuda() && out.is_contiguous() && out.dim() == 1,
              "lazyinit: philox_region_fill writes a contiguous 1-D CUDA tensor");
  TORCH_CHECK(begin >= 0 && begin + out.numel() <= numel, "lazyinit: region out of range");
  c10::cuda::CUDAGuard guard(out.device());
  // The launch grid of the whole tensor, as calc_execution_policy has it.
  const int64_t grid = std::min<int64_t>(grid_limit, (numel + kThreads - 1) / kThreads);
  const int64_t stride = static_cast<int64_t>(kThreads) * grid;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "philox_region_fill", [&] {
    if (kind == PhiloxFill::kNormal) {
      using acc_t = at::acc_type<scalar_t, true>;
      const auto mean = static_cast<acc_t>(a);
      const auto std = static_cast<acc_t>(b);
      auto transform = [mean, std] __device__(acc_t rand) {
        return static_cast<scalar_t>(rand * std + mean);  // transformation::normal
      };
      if constexpr (std::is_same<scalar_t, double>::value) {
        launch<scalar_t, acc_t, 2>(out, start, begin, stride,
            [] __device__(curandStatePhilox4_32_10_t* s) { return curand_normal2_double(s); },
            transform);
      } else {
        launch<scalar_t, acc_t, 4>(out, start, begin, stride,
            [] __device__(curandStatePhilox4_32_10_t* s) { return curand_normal4(s); },
            transform);
      }
    } else {
      using opmath_t = at::opmath_type<scalar_t>;
      const auto from = static_cast<scalar_t>(a);
      const auto to = static_cast<scalar_t>(b);
      const auto range = static_cast<opmath_t>(to - from);
      // uniform_kernel: value computed before reversing (0, 1] to [0, 1)
      auto transform = [range, from, to] __device__(opmath_t rand) {
        auto value = static_cast<scalar_t>(rand * range + from);
        return value == to ? from : value;
      };
      if constexpr (std::is_same<scalar_t, double>::value) {
        launch<scalar_t, opmath_t, 2>(out, start, begin, stride,
            [] __device__(curandStatePhilox4_32_10_t* s) { return curand_uniform2_double(s); },
            transform);
      } else {
        launch<scalar_t, opmath_t, 4>(out, start, begin, stride,
            [] __device__(curandStatePhilox4_32_10_t* s) { return curand_uniform4(s); },
            transform);
      }
    }
  });
}

}  // namespace lazyinit
