// Random values of regions of a tensor, exactly as PyTorch's CUDA kernels
// write them into the whole tensor (DESIGN.md, "RNG", shards).
//
// PyTorch's distribution kernels (ATen/native/cuda/DistributionTemplates.h,
// distribution_elementwise_grid_stride_kernel) run a grid-stride loop: with
// S = 256 threads * grid blocks and `unroll` values a Philox call (4 for
// float/half/bfloat16, 2 for double), element li is written by thread
// t = li % S, at loop iteration (li / S) / unroll, from component
// (li / S) % unroll of the Philox output of curand_init(seed, t, offset)
// after that many calls. Each call takes 4 of the counter, so that state is
// curand_init(seed, t, offset + 4 * iter): every element is computable on
// its own. tests/python/test_shard_cuda.py compares with eager full tensors.
#include <lazyinit/philox_region.h>

#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>

#include <curand_kernel.h>

#include <algorithm>
#include <map>
#include <utility>

namespace lazyinit {
namespace {

constexpr int kThreads = 256;

struct Launch {
  uint64_t seed;
  uint64_t offset;
  int64_t stride;  // S: threads of the whole tensor's launch
};

// One Philox call a (thread t, iteration) pair of the whole tensor's launch,
// for the pairs with a lane in [begin, end): writes those lanes to
// out[li - begin]. Pair p is iteration first_iter + p / S, thread p % S.
template <typename scalar_t, typename acc_t, int kUnroll, typename dist_t, typename transform_t>
__global__ void pair_kernel(
    scalar_t* out, int64_t begin, int64_t end, int64_t first_iter, int64_t pairs,
    Launch launch, dist_t dist, transform_t transform) {
  const int64_t s = launch.stride;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < pairs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t iter = first_iter + p / s;
    const int64_t thread = p % s;
    const int64_t lane0 = iter * kUnroll * s + thread;  // element of lane 0
    const int64_t lo = begin > lane0 ? (begin - lane0 + s - 1) / s : 0;
    int64_t hi = end - 1 >= lane0 ? (end - 1 - lane0) / s : -1;
    hi = hi < kUnroll - 1 ? hi : kUnroll - 1;
    if (lo > hi) {
      continue;
    }
    curandStatePhilox4_32_10_t state;
    curand_init(launch.seed, thread, launch.offset + 4 * static_cast<uint64_t>(iter), &state);
    auto rand = dist(&state);
#pragma unroll
    for (int lane = 0; lane < kUnroll; ++lane) {
      if (lane >= lo && lane <= hi) {
        out[lane0 + lane * s - begin] = transform(static_cast<acc_t>((&rand.x)[lane]));
      }
    }
  }
}

// Up to this many short pieces travel in the kernel's parameters; more in a
// device buffer (whose upload from pageable memory synchronizes).
constexpr int kInlinePieces = 8;

// For R pieces: cum[0..R] (prefix sums of their lengths), then their
// begins, then their output addresses.
struct PieceTable {
  const int64_t* device = nullptr;  // the table in device memory, or
  int64_t inline_table[3 * kInlinePieces + 1] = {};  // here when R is small
};

// One Philox call an element, for many short pieces in one launch.
template <typename scalar_t, typename acc_t, int kUnroll, typename dist_t, typename transform_t>
__global__ void element_kernel(
    PieceTable pieces_table, int64_t pieces, Launch launch, dist_t dist, transform_t transform) {
  const int64_t* table =
      pieces_table.device != nullptr ? pieces_table.device : pieces_table.inline_table;
  const int64_t* cum = table;
  const int64_t* begins = table + pieces + 1;
  const int64_t* outs = begins + pieces;
  const int64_t total = cum[pieces];
  const int64_t s = launch.stride;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // The piece holding k: the last r with cum[r] <= k.
    int64_t lo = 0;
    int64_t hi = pieces - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (cum[mid] <= k) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    const int64_t j = k - cum[lo];
    const int64_t li = begins[lo] + j;
    const int64_t q = li / s;
    curandStatePhilox4_32_10_t state;
    curand_init(launch.seed, li % s, launch.offset + 4 * static_cast<uint64_t>(q / kUnroll), &state);
    auto rand = dist(&state);
    reinterpret_cast<scalar_t*>(outs[lo])[j] =
        transform(static_cast<acc_t>((&rand.x)[static_cast<int>(q % kUnroll)]));
  }
}

int64_t blocks_for(int64_t work) {
  return std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, 65535));
}

template <typename scalar_t, typename acc_t, int kUnroll, typename dist_t, typename transform_t>
void launch_pieces(
    const std::vector<PhiloxPiece>& pieces, const Launch& launch, dist_t dist,
    transform_t transform) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t s = launch.stride;
  std::vector<const PhiloxPiece*> short_pieces;
  int64_t short_total = 0;
  for (const auto& piece : pieces) {
    const int64_t n = piece.out.numel();
    if (n == 0) {
      continue;
    }
    // Pairs cost about n / unroll + 2 S calls, elements n.
    if (n / kUnroll + 2 * s >= n) {
      short_pieces.push_back(&piece);
      short_total += n;
      continue;
    }
    const int64_t begin = piece.begin;
    const int64_t end = begin + n;
    const int64_t first_iter = begin / (kUnroll * s);
    const int64_t pairs = ((end - 1) / (kUnroll * s) - first_iter + 1) * s;
    pair_kernel<scalar_t, acc_t, kUnroll><<<blocks_for(pairs), kThreads, 0, stream>>>(
        piece.out.data_ptr<scalar_t>(), begin, end, first_iter, pairs, launch, dist, transform);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (short_pieces.empty()) {
    return;
  }
  const int64_t r = static_cast<int64_t>(short_pieces.size());
  PieceTable table;
  at::Tensor host;
  int64_t* t = table.inline_table;
  if (r > kInlinePieces) {
    host = at::empty({3 * r + 1}, at::TensorOptions().dtype(at::kLong));
    t = host.data_ptr<int64_t>();
  }
  t[0] = 0;
  for (int64_t i = 0; i < r; ++i) {
    const PhiloxPiece& piece = *short_pieces[i];
    t[i + 1] = t[i] + piece.out.numel();
    t[r + 1 + i] = piece.begin;
    t[2 * r + 1 + i] = reinterpret_cast<int64_t>(piece.out.data_ptr<scalar_t>());
  }
  at::Tensor device_table;  // lives until the launch is queued
  if (host.defined()) {
    device_table = host.to(pieces.front().out.device());
    table.device = device_table.data_ptr<int64_t>();
  }
  element_kernel<scalar_t, acc_t, kUnroll><<<blocks_for(short_total), kThreads, 0, stream>>>(
      table, r, launch, dist, transform);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Batches: many fills (of one kind and dtype) in one launch, their
// descriptions in the kernel's parameters (no upload, no allocation). With
// __grid_constant__ (CUDA >= 12.1 allows 32 KiB of parameters) a thread
// indexes them in place; without it they would be copied per thread.
#if defined(CUDART_VERSION) && CUDART_VERSION >= 12010
constexpr int kBatchJobs = 128;
#define LAZYINIT_GRID_CONSTANT __grid_constant__
#else
constexpr int kBatchJobs = 16;
#define LAZYINIT_GRID_CONSTANT
#endif

struct BatchJob {
  char* out;
  int64_t begin;       // elements [begin, end) of the node's tensor
  int64_t end;
  int64_t first_iter;  // pair mode: begin / (unroll * stride)
  int64_t stride;      // S of the node's whole launch
  uint64_t seed;
  uint64_t offset;
  double a;  // normal: mean, uniform: from (exact in their kernel types)
  double b;  // normal: std, uniform: to
  double c;  // uniform: to - from in opmath
  int64_t element_mode;  // one Philox call an element (short pieces)
};

struct BatchTable {
  int64_t work_start[kBatchJobs + 1];  // prefix sums of the jobs' work items
  BatchJob jobs[kBatchJobs];
  int32_t count;
};

template <typename scalar_t, typename acc_t>
struct NormalOf {
  __device__ scalar_t operator()(const BatchJob& job, acc_t rand) const {
    const auto mean = static_cast<acc_t>(job.a);
    const auto std = static_cast<acc_t>(job.b);
    return static_cast<scalar_t>(rand * std + mean);  // transformation::normal
  }
};

template <typename scalar_t, typename opmath_t>
struct UniformOf {
  __device__ scalar_t operator()(const BatchJob& job, opmath_t rand) const {
    const auto from = static_cast<scalar_t>(job.a);
    const auto to = static_cast<scalar_t>(job.b);
    const auto range = static_cast<opmath_t>(job.c);
    auto value = static_cast<scalar_t>(rand * range + from);
    return value == to ? from : value;
  }
};

// Work item w belongs to the job whose prefix range holds it. Pair mode:
// item t is thread t of the node's whole launch, which runs the
// iterations whose lanes reach [begin, end) as PyTorch's grid-stride loop
// does: one curand_init, then one draw an iteration (each draw advances the
// state by 4, as curand_init(seed, t, offset + 4 * iteration) would).
// Element mode: item p is element begin + p, with a Philox call of its own.
template <typename scalar_t, typename acc_t, int kUnroll, typename dist_t, typename transform_t>
__global__ void batch_kernel(
    const LAZYINIT_GRID_CONSTANT BatchTable table, dist_t dist, transform_t transform) {
  const int64_t total = table.work_start[table.count];
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < total;
       w += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int lo = 0;
    int hi = table.count - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (table.work_start[mid] <= w) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    const BatchJob& job = table.jobs[lo];
    const int64_t p = w - table.work_start[lo];
    scalar_t* out = reinterpret_cast<scalar_t*>(job.out);
    const int64_t s = job.stride;
    curandStatePhilox4_32_10_t state;
    if (job.element_mode) {
      const int64_t li = job.begin + p;
      const int64_t q = li / s;
      curand_init(job.seed, li % s, job.offset + 4 * static_cast<uint64_t>(q / kUnroll), &state);
      auto rand = dist(&state);
      out[p] = transform(job, static_cast<acc_t>((&rand.x)[static_cast<int>(q % kUnroll)]));
      continue;
    }
    const int64_t thread = p;  // < s
    const int64_t last_iter = (job.end - 1) / (kUnroll * s);
    curand_init(job.seed, thread, job.offset + 4 * static_cast<uint64_t>(job.first_iter), &state);
    for (int64_t iter = job.first_iter; iter <= last_iter; ++iter) {
      auto rand = dist(&state);
      const int64_t lane0 = iter * kUnroll * s + thread;
#pragma unroll
      for (int lane = 0; lane < kUnroll; ++lane) {
        const int64_t li = lane0 + lane * s;
        if (li >= job.begin && li < job.end) {
          out[li - job.begin] = transform(job, static_cast<acc_t>((&rand.x)[lane]));
        }
      }
    }
  }
}

// Launches `jobs` (one device and dtype) kBatchJobs at a time. `describe`
// sets a job's a, b, c.
template <typename scalar_t, typename acc_t, int kUnroll, typename dist_t, typename transform_t,
          typename describe_t>
void launch_batch(
    const std::vector<const PhiloxJob*>& jobs, dist_t dist, transform_t transform,
    describe_t describe) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  for (size_t first = 0; first < jobs.size(); first += kBatchJobs) {
    BatchTable table{};
    const size_t count = std::min<size_t>(kBatchJobs, jobs.size() - first);
    table.count = static_cast<int32_t>(count);
    table.work_start[0] = 0;
    for (size_t i = 0; i < count; ++i) {
      const PhiloxJob& job = *jobs[first + i];
      const int64_t n = job.out.numel();
      const int64_t grid =
          std::min<int64_t>(job.grid_limit, (job.numel + kThreads - 1) / kThreads);
      const int64_t s = static_cast<int64_t>(kThreads) * grid;
      BatchJob& d = table.jobs[i];
      d.out = static_cast<char*>(job.out.data_ptr());
      d.begin = job.begin;
      d.end = job.begin + n;
      d.stride = s;
      d.seed = job.start.seed;
      d.offset = job.start.offset;
      d.first_iter = d.begin / (kUnroll * s);
      // Pairs cost about n / unroll + 2 S calls, elements n (launch_pieces).
      d.element_mode = n / kUnroll + 2 * s >= n;
      const int64_t work = d.element_mode ? n : s;  // pair mode: the launch's threads
      describe(job, d);
      table.work_start[i + 1] = table.work_start[i] + work;
    }
    batch_kernel<scalar_t, acc_t, kUnroll><<<blocks_for(table.work_start[count]), kThreads, 0,
                                               stream>>>(table, dist, transform);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

void philox_region_fill(
    const std::vector<PhiloxPiece>& pieces,
    PhiloxFill kind,
    const PhiloxState& start,
    int64_t numel,
    int64_t grid_limit,
    double a,
    double b) {
  if (pieces.empty()) {
    return;
  }
  const at::Tensor& first = pieces.front().out;
  for (const auto& piece : pieces) {
    TORCH_CHECK(piece.out.is_cuda() && piece.out.is_contiguous() && piece.out.dim() == 1 &&
                    piece.out.device() == first.device() &&
                    piece.out.scalar_type() == first.scalar_type(),
                "lazyinit: philox_region_fill writes contiguous 1-D CUDA tensors of one "
                "device and dtype");
    TORCH_CHECK(piece.begin >= 0 && piece.begin + piece.out.numel() <= numel,
                "lazyinit: region out of range");
  }
  TORCH_CHECK(grid_limit > 0, "lazyinit: philox_region_fill needs the device's grid limit");
  c10::cuda::CUDAGuard guard(first.device());
  // The launch grid of the whole tensor, as calc_execution_policy has it.
  const int64_t grid = std::min<int64_t>(grid_limit, (numel + kThreads - 1) / kThreads);
  const Launch launch{start.seed, start.offset, static_cast<int64_t>(kThreads) * grid};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "philox_region_fill", [&] {
    if (kind == PhiloxFill::kNormal) {
      using acc_t = at::acc_type<scalar_t, true>;
      const auto mean = static_cast<acc_t>(a);
      const auto std = static_cast<acc_t>(b);
      auto transform = [mean, std] __device__(acc_t rand) {
        return static_cast<scalar_t>(rand * std + mean);  // transformation::normal
      };
      if constexpr (std::is_same<scalar_t, double>::value) {
        launch_pieces<scalar_t, acc_t, 2>(pieces, launch,
            [] __device__(curandStatePhilox4_32_10_t* s) { return curand_normal2_double(s); },
            transform);
      } else {
        launch_pieces<scalar_t, acc_t, 4>(pieces, launch,
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
        launch_pieces<scalar_t, opmath_t, 2>(pieces, launch,
            [] __device__(curandStatePhilox4_32_10_t* s) { return curand_uniform2_double(s); },
            transform);
      } else {
        launch_pieces<scalar_t, opmath_t, 4>(pieces, launch,
            [] __device__(curandStatePhilox4_32_10_t* s) { return curand_uniform4(s); },
            transform);
      }
    }
  });
}

void philox_batch_fill(const std::vector<PhiloxJob>& jobs, PhiloxFill kind) {
  std::map<std::pair<int, at::ScalarType>, std::vector<const PhiloxJob*>> groups;
  for (const auto& job : jobs) {
    const at::Tensor& out = job.out;
    TORCH_CHECK(out.is_cuda() && out.is_contiguous() && out.dim() == 1,
                "lazyinit: philox_batch_fill writes contiguous 1-D CUDA tensors");
    TORCH_CHECK(job.begin >= 0 && job.begin + out.numel() <= job.numel,
                "lazyinit: region out of range");
    TORCH_CHECK(job.grid_limit > 0, "lazyinit: philox_batch_fill needs the device's grid limit");
    if (out.numel() > 0) {
      groups[{out.device().index(), out.scalar_type()}].push_back(&job);
    }
  }
  for (const auto& group : groups) {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(group.first.first));
    const auto& members = group.second;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, group.first.second, "philox_batch_fill", [&] {
      if (kind == PhiloxFill::kNormal) {
        using acc_t = at::acc_type<scalar_t, true>;
        auto describe = [](const PhiloxJob& job, BatchJob& d) {
          d.a = static_cast<double>(static_cast<acc_t>(job.a));
          d.b = static_cast<double>(static_cast<acc_t>(job.b));
        };
        if constexpr (std::is_same<scalar_t, double>::value) {
          launch_batch<scalar_t, acc_t, 2>(members,
              [] __device__(curandStatePhilox4_32_10_t* s) { return curand_normal2_double(s); },
              NormalOf<scalar_t, acc_t>{}, describe);
        } else {
          launch_batch<scalar_t, acc_t, 4>(members,
              [] __device__(curandStatePhilox4_32_10_t* s) { return curand_normal4(s); },
              NormalOf<scalar_t, acc_t>{}, describe);
        }
      } else {
        using opmath_t = at::opmath_type<scalar_t>;
        auto describe = [](const PhiloxJob& job, BatchJob& d) {
          const auto from = static_cast<scalar_t>(job.a);
          const auto to = static_cast<scalar_t>(job.b);
          d.a = static_cast<double>(from);
          d.b = static_cast<double>(to);
          d.c = static_cast<double>(static_cast<opmath_t>(to - from));
        };
        if constexpr (std::is_same<scalar_t, double>::value) {
          launch_batch<scalar_t, opmath_t, 2>(members,
              [] __device__(curandStatePhilox4_32_10_t* s) { return curand_uniform2_double(s); },
              UniformOf<scalar_t, opmath_t>{}, describe);
        } else {
          launch_batch<scalar_t, opmath_t, 4>(members,
              [] __device__(curandStatePhilox4_32_10_t* s) { return curand_uniform4(s); },
              UniformOf<scalar_t, opmath_t>{}, describe);
        }
      }
    });
  }
}

}  // namespace lazyinit
