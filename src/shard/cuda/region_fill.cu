// Random values of regions of a tensor, exactly as PyTorch's CUDA kernels
// write them into the whole tensor (docs/architecture.md, "Materialize-on-shard").
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
//
// The draws are computed as curand computes them, without its state object:
// curand_init(seed, t, o) sets the Philox counter to (o / 4, t) and, like
// every curand4 call after it, computes one block ahead (curand_init even
// computes two). A thread of a shard runs only a few iterations, so those
// extra blocks would cost as much as the values: philox_draw computes just
// the block each iteration needs, and the distributions apply curand's own
// transforms (_curand_box_muller, _curand_uniform4, ...) to it.
#include <lazyinit/shard/philox_region.h>

#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>

#include <curand_kernel.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <type_traits>
#include <utility>

namespace lazyinit {
namespace {

constexpr int kThreads = 256;

// Philox block n of subsequence `thread`: the counter curand_init(seed,
// thread, 4 * n) sets (skipahead_sequence adds the thread to its high half,
// skipahead n to its low half). Threads of PyTorch's launches are below 2^32.
__device__ __forceinline__ uint4 philox_block(uint64_t seed, uint32_t thread, uint64_t n) {
  return curand_Philox4x32_10(
      make_uint4(static_cast<uint32_t>(n), static_cast<uint32_t>(n >> 32), thread, 0u),
      make_uint2(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)));
}

// What the first curand4 returns after curand_init(seed, thread, 4 * n +
// rem). PyTorch's offsets are multiples of 4 (rem 0); others straddle two
// blocks.
__device__ __forceinline__ uint4
philox_draw(uint64_t seed, uint32_t thread, uint64_t n, uint32_t rem) {
  const uint4 a = philox_block(seed, thread, n);
  if (rem == 0) {
    return a;
  }
  const uint4 b = philox_block(seed, thread, n + 1);
  switch (rem) {
    case 1:
      return make_uint4(a.y, a.z, a.w, b.x);
    case 2:
      return make_uint4(a.z, a.w, b.x, b.y);
    default:
      return make_uint4(a.w, b.x, b.y, b.z);
  }
}

// curand_normal4, curand_uniform4, curand_normal2_double and
// curand_uniform2_double of a Philox state, as functions of its draw, by
// pairs of values: pair h is values 2h and 2h + 1 of the call (a float4
// call has two pairs, a double2 call one). A piece's edge needs only some
// values of a call: each pair is computed only where it is stored.
struct Normal4 {
  __device__ float2 pair(uint4 x, int h) const {
    return h == 0 ? _curand_box_muller(x.x, x.y) : _curand_box_muller(x.z, x.w);
  }
};
struct Uniform4 {
  __device__ float2 pair(uint4 x, int h) const {  // _curand_uniform4, by halves
    return h == 0 ? make_float2(_curand_uniform(x.x), _curand_uniform(x.y))
                  : make_float2(_curand_uniform(x.z), _curand_uniform(x.w));
  }
};
struct Normal2Double {
  __device__ double2 pair(uint4 x, int) const {
    return _curand_box_muller_double(x.x, x.y, x.z, x.w);
  }
};
struct Uniform2Double {
  __device__ double2 pair(uint4 x, int) const {
    return make_double2(_curand_uniform_double_hq(x.x, x.y), _curand_uniform_double_hq(x.z, x.w));
  }
};

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

template <typename Job>
struct JobTable {
  Job jobs[kBatchJobs];
  int32_t count;
};

// Batch kernels run a grid of (blocks, jobs): block row y runs job y's work
// items, blockIdx.x * kThreads + threadIdx.x and on by the row's width.
// Every thread of a block reads the same job, and finds it without a
// search. Positions in a tensor are below 2^31 (philox_batch_fill's callers
// split larger tensors, as PyTorch does): 32-bit arithmetic.

struct BatchJob {
  char* out;
  uint64_t seed;
  uint64_t block0;  // offset / 4: the Philox block of iteration 0
  double a;         // normal: mean, uniform: from (exact in their kernel types)
  double b;         // normal: std, uniform: to
  double c;         // uniform: to - from in opmath
  uint32_t rem;     // offset % 4
  uint32_t items;   // pair mode: S threads; element mode: the elements
  uint32_t begin;   // elements [begin, end) of the node's tensor
  uint32_t end;
  uint32_t stride;       // S of the node's whole launch
  int32_t first_iter;    // pair mode: begin / (unroll * stride)
  int32_t last_iter;     // pair mode: (end - 1) / (unroll * stride)
  int32_t element_mode;  // one Philox call an element (short pieces)
  uint32_t row_len;      // element mode, rows: elements a row (0: one run)
  uint32_t row_gap;      // row_step - row_len
};

// A job's transform of a draw, its parameters converted once per job.
template <typename scalar_t, typename acc_t>
struct NormalOf {
  struct Bound {
    acc_t mean;
    acc_t std;
    __device__ scalar_t operator()(acc_t rand) const {
      return static_cast<scalar_t>(rand * std + mean);  // transformation::normal
    }
  };
  __device__ Bound operator()(const BatchJob& job) const {
    return Bound{static_cast<acc_t>(job.a), static_cast<acc_t>(job.b)};
  }
};

template <typename scalar_t, typename opmath_t>
struct UniformOf {
  struct Bound {
    scalar_t from;
    scalar_t to;
    opmath_t range;
    __device__ scalar_t operator()(opmath_t rand) const {
      auto value = static_cast<scalar_t>(rand * range + from);
      return value == to ? from : value;
    }
  };
  __device__ Bound operator()(const BatchJob& job) const {
    return Bound{
        static_cast<scalar_t>(job.a), static_cast<scalar_t>(job.b), static_cast<opmath_t>(job.c)};
  }
};

// Pair mode: item t is thread t of the node's whole launch, which runs the
// iterations whose lanes reach [begin, end) as PyTorch's grid-stride loop
// does, one Philox block an iteration (the draw of curand_init(seed, t,
// offset + 4 * iteration)). Element mode: item p is element begin + p (with
// rows: plus the gaps between the rows before it), with a block of its own.
// Work item `item` of `job`.
template <typename scalar_t, typename acc_t, int kUnroll, typename dist_t, typename value_t>
__device__ __forceinline__ void run_item(
    const BatchJob& job, uint32_t item, const dist_t& dist, const value_t& value_of) {
  static_assert(kUnroll % 2 == 0, "values come in pairs");
  scalar_t* out = reinterpret_cast<scalar_t*>(job.out);
  const uint32_t s = job.stride;
  if (job.element_mode) {
    const uint32_t li = job.begin + item + (job.row_len > 0 ? item / job.row_len * job.row_gap : 0);
    const uint32_t q = li / s;
    const uint32_t lane = q % kUnroll;
    const auto v = dist.pair(
        philox_draw(job.seed, li - q * s, job.block0 + q / kUnroll, job.rem),
        static_cast<int>(lane / 2));
    out[item] = value_of(static_cast<acc_t>(lane % 2 == 0 ? v.x : v.y));
    return;
  }
  const uint32_t thread = item;       // < s
  const uint32_t step = kUnroll * s;  // elements an iteration
  const uint32_t begin = job.begin;
  const uint32_t end = job.end;
  // This thread's iterations with a lane in [begin, end): at the edges,
  // some threads have none. Lane 0 of iteration i is element i * step +
  // thread (below 2^32: the last iteration starts below end).
  int32_t first = job.first_iter;
  if (first * step + thread + (kUnroll - 1) * s < begin) {
    ++first;
  }
  int32_t last = job.last_iter;
  if (last * step + thread >= end) {
    --last;
  }
  uint32_t lane0 = first * step + thread;
  for (int32_t iter = first; iter <= last; ++iter, lane0 += step) {
    const uint4 draw = philox_draw(job.seed, thread, job.block0 + iter, job.rem);
    if (lane0 >= begin && lane0 + (kUnroll - 1) * s < end) {
      // Every lane in the piece: the iterations between the edges.
      scalar_t* o = out + (lane0 - begin);
#pragma unroll
      for (int h = 0; h < kUnroll / 2; ++h) {
        const auto v = dist.pair(draw, h);
        o[2 * h * s] = value_of(static_cast<acc_t>(v.x));
        o[(2 * h + 1) * s] = value_of(static_cast<acc_t>(v.y));
      }
      continue;
    }
#pragma unroll
    for (int h = 0; h < kUnroll / 2; ++h) {
      const uint32_t li = lane0 + 2 * h * s;
      const bool first_in = li >= begin && li < end;
      const bool second_in = li + s >= begin && li + s < end;
      if (first_in || second_in) {
        const auto v = dist.pair(draw, h);
        if (first_in) {
          out[li - begin] = value_of(static_cast<acc_t>(v.x));
        }
        if (second_in) {
          out[li + s - begin] = value_of(static_cast<acc_t>(v.y));
        }
      }
    }
  }
}

// Pair mode: item t is thread t of the node's whole launch, which runs the
// iterations whose lanes reach [begin, end) as PyTorch's grid-stride loop
// does, one Philox block an iteration (the draw of curand_init(seed, t,
// offset + 4 * iteration)). Element mode: item p is element begin + p (with
// rows: plus the gaps between the rows before it), with a block of its own.
template <typename scalar_t, typename acc_t, int kUnroll, typename dist_t, typename transform_t>
__global__ void batch_kernel(
    const LAZYINIT_GRID_CONSTANT JobTable<BatchJob> table, dist_t dist, transform_t transform) {
  const BatchJob& job = table.jobs[blockIdx.y];
  const auto value_of = transform(job);
  for (uint32_t item = blockIdx.x * blockDim.x + threadIdx.x; item < job.items;
       item += gridDim.x * blockDim.x) {
    run_item<scalar_t, acc_t, kUnroll>(job, item, dist, value_of);
  }
}

struct FillJob {
  char* out;
  uint64_t bits;   // the value, as the first sizeof(scalar_t) bytes
  uint32_t items;  // elements
};

template <typename scalar_t>
__global__ void fill_kernel(const LAZYINIT_GRID_CONSTANT JobTable<FillJob> table) {
  const FillJob& job = table.jobs[blockIdx.y];
  scalar_t value;
  memcpy(&value, &job.bits, sizeof(scalar_t));
  scalar_t* out = reinterpret_cast<scalar_t*>(job.out);
  for (uint32_t item = blockIdx.x * blockDim.x + threadIdx.x; item < job.items;
       item += gridDim.x * blockDim.x) {
    out[item] = value;
  }
}

// Blocks of a job's row: enough for PyTorch's largest launch (a pair-mode
// job has one item per thread of it: SMs * 2048 threads); longer element-
// mode jobs loop, rather than leave most blocks of the other rows empty.
constexpr int64_t kMaxJobBlocks = 4096;

// Launches `items` kBatchJobs at a time: `describe(item, job)` sets a job
// of the table and returns its work items; `launch(table, grid)` runs the
// kernel on it, one row of blocks a job, as wide as the largest job needs.
template <typename Job, typename Item, typename Describe, typename Launch>
void launch_in_batches(const std::vector<const Item*>& items, Describe describe, Launch launch) {
  for (size_t first = 0; first < items.size(); first += kBatchJobs) {
    JobTable<Job> table{};
    const size_t count = std::min<size_t>(kBatchJobs, items.size() - first);
    table.count = static_cast<int32_t>(count);
    int64_t most = 0;
    for (size_t i = 0; i < count; ++i) {
      most = std::max(most, describe(*items[first + i], table.jobs[i]));
    }
    const dim3 grid(
        static_cast<unsigned>(std::max<int64_t>(
            1, std::min<int64_t>((most + kThreads - 1) / kThreads, kMaxJobBlocks))),
        static_cast<unsigned>(count));
    launch(table, grid);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// Launches `jobs` (one device and dtype). `describe` sets a job's a, b, c.
template <
    typename scalar_t,
    typename acc_t,
    int kUnroll,
    typename dist_t,
    typename transform_t,
    typename describe_t>
void launch_batch(
    const std::vector<const PhiloxJob*>& jobs,
    dist_t dist,
    transform_t transform,
    describe_t describe) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  launch_in_batches<BatchJob>(
      jobs,
      [&](const PhiloxJob& job, BatchJob& d) {
        // philox_batch_fill checked that positions fit 31 bits
        const auto n = static_cast<uint32_t>(job.out.numel());
        const auto s = static_cast<uint32_t>(philox_launch_threads(job.total, job.grid_limit));
        d.out = static_cast<char*>(job.out.data_ptr());
        d.seed = job.start.seed;
        d.block0 = job.start.offset / 4;
        d.rem = static_cast<uint32_t>(job.start.offset % 4);
        d.begin = static_cast<uint32_t>(job.begin);
        d.end = d.begin + n;
        d.stride = s;
        d.first_iter = static_cast<int32_t>(d.begin / (kUnroll * s));
        d.last_iter = static_cast<int32_t>((d.end - 1) / (kUnroll * s));
        d.element_mode = job.rows > 1 || philox_short_piece(n, kUnroll, s);
        d.row_len = job.rows > 1 ? n / static_cast<uint32_t>(job.rows) : 0;
        d.row_gap = job.rows > 1 ? static_cast<uint32_t>(job.row_step) - d.row_len : 0;
        d.items = d.element_mode ? n : s;  // pair mode: the launch's threads
        describe(job, d);
        return static_cast<int64_t>(d.items);
      },
      [&](const JobTable<BatchJob>& table, dim3 grid) {
        batch_kernel<scalar_t, acc_t, kUnroll>
            <<<grid, kThreads, 0, stream>>>(table, dist, transform);
      });
}

// The draw and value transforms of a kind of fill, for one dtype.
template <typename scalar_t>
void launch_philox(const std::vector<const PhiloxJob*>& jobs, PhiloxFill kind) {
  constexpr bool kDouble = std::is_same<scalar_t, double>::value;
  constexpr int kUnroll = kDouble ? 2 : 4;
  if (kind == PhiloxFill::kNormal) {
    using acc_t = at::acc_type<scalar_t, true>;
    using dist_t = std::conditional_t<kDouble, Normal2Double, Normal4>;
    launch_batch<scalar_t, acc_t, kUnroll>(
        jobs, dist_t{}, NormalOf<scalar_t, acc_t>{}, [](const PhiloxJob& job, BatchJob& d) {
          d.a = static_cast<double>(static_cast<acc_t>(job.a));
          d.b = static_cast<double>(static_cast<acc_t>(job.b));
        });
  } else {
    using opmath_t = at::opmath_type<scalar_t>;
    using dist_t = std::conditional_t<kDouble, Uniform2Double, Uniform4>;
    launch_batch<scalar_t, opmath_t, kUnroll>(
        jobs, dist_t{}, UniformOf<scalar_t, opmath_t>{}, [](const PhiloxJob& job, BatchJob& d) {
          const auto from = static_cast<scalar_t>(job.a);
          const auto to = static_cast<scalar_t>(job.b);
          d.a = static_cast<double>(from);
          d.b = static_cast<double>(to);
          d.c = static_cast<double>(static_cast<opmath_t>(to - from));
        });
  }
}

template <typename scalar_t>
void launch_fills(const std::vector<const ConstantJob*>& jobs) {
  static_assert(sizeof(scalar_t) <= sizeof(uint64_t), "a value must fit the job's bits");
  const auto stream = at::cuda::getCurrentCUDAStream();
  launch_in_batches<FillJob>(
      jobs,
      [](const ConstantJob& job, FillJob& d) {
        d.out = static_cast<char*>(job.out.data_ptr());
        d.items = static_cast<uint32_t>(job.out.numel());
        const scalar_t value = job.value.to<scalar_t>();  // as fill_ converts it
        memcpy(&d.bits, &value, sizeof(scalar_t));
        return static_cast<int64_t>(d.items);
      },
      [&](const JobTable<FillJob>& table, dim3 grid) {
        fill_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(table);
      });
}

// Non-empty jobs grouped by (device, dtype) of their outputs, each checked
// by `check(job)` first.
template <typename Job, typename Check>
std::map<std::pair<int, at::ScalarType>, std::vector<const Job*>> by_device_and_dtype(
    const std::vector<Job>& jobs, Check check) {
  std::map<std::pair<int, at::ScalarType>, std::vector<const Job*>> groups;
  for (const auto& job : jobs) {
    check(job);
    if (job.out.numel() > 0) {
      groups[{job.out.device().index(), job.out.scalar_type()}].push_back(&job);
    }
  }
  return groups;
}

}  // namespace

void constant_batch_fill(const std::vector<ConstantJob>& jobs) {
  const auto groups = by_device_and_dtype(jobs, [](const ConstantJob& job) {
    TORCH_CHECK(
        job.out.is_cuda() && job.out.is_contiguous() && job.out.dim() == 1,
        "lazyinit: constant_batch_fill writes contiguous 1-D CUDA tensors");
    TORCH_CHECK(
        job.out.numel() <= std::numeric_limits<int32_t>::max(),
        "lazyinit: constant_batch_fill writes tensors below 2^31 elements");
  });
  for (const auto& group : groups) {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(group.first.first));
    AT_DISPATCH_ALL_TYPES_AND3(
        at::kHalf, at::kBFloat16, at::kBool, group.first.second, "constant_batch_fill",
        [&] { launch_fills<scalar_t>(group.second); });
  }
}

void philox_batch_fill(const std::vector<PhiloxJob>& jobs, PhiloxFill kind) {
  const auto groups = by_device_and_dtype(jobs, [](const PhiloxJob& job) {
    const at::Tensor& out = job.out;
    TORCH_CHECK(
        out.is_cuda() && out.is_contiguous() && out.dim() == 1,
        "lazyinit: philox_batch_fill writes contiguous 1-D CUDA tensors");
    TORCH_CHECK(
        job.rows >= 1 && out.numel() % job.rows == 0,
        "lazyinit: a job's output must hold whole rows");
    const int64_t row_len = out.numel() / job.rows;
    TORCH_CHECK(job.rows == 1 || job.row_step >= row_len, "lazyinit: rows overlap");
    TORCH_CHECK(
        job.begin >= 0 && job.begin + (job.rows - 1) * job.row_step + row_len <= job.total,
        "lazyinit: region out of range");
    TORCH_CHECK(
        job.total <= std::numeric_limits<int32_t>::max(),
        "lazyinit: philox_batch_fill covers tensors below 2^31 elements (PyTorch "
        "splits larger ones)");
    TORCH_CHECK(job.grid_limit > 0, "lazyinit: philox_batch_fill needs the device's grid limit");
  });
  for (const auto& group : groups) {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(group.first.first));
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, group.first.second, "philox_batch_fill",
        [&] { launch_philox<scalar_t>(group.second, kind); });
  }
}

}  // namespace lazyinit
