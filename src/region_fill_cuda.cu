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
//
// The draws are computed as curand computes them, without its state object:
// curand_init(seed, t, o) sets the Philox counter to (o / 4, t) and, like
// every curand4 call after it, computes one block ahead (curand_init even
// computes two). A thread of a shard runs only a few iterations, so those
// extra blocks would cost as much as the values: philox_draw computes just
// the block each iteration needs, and the distributions apply curand's own
// transforms (_curand_box_muller, _curand_uniform4, ...) to it.
#include <lazyinit/philox_region.h>

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
#include <map>
#include <utility>

namespace lazyinit {
namespace {

constexpr int kThreads = 256;

// Philox block n of subsequence `thread`: the counter curand_init(seed,
// thread, 4 * n) sets (skipahead_sequence adds the thread to its high half,
// skipahead n to its low half).
__device__ __forceinline__ uint4 philox_block(uint64_t seed, uint64_t thread, uint64_t n) {
  return curand_Philox4x32_10(
      make_uint4(static_cast<uint32_t>(n), static_cast<uint32_t>(n >> 32),
                 static_cast<uint32_t>(thread), static_cast<uint32_t>(thread >> 32)),
      make_uint2(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)));
}

// What the first curand4 returns after curand_init(seed, thread, offset).
// PyTorch's offsets are multiples of 4; others straddle two blocks.
__device__ __forceinline__ uint4 philox_draw(uint64_t seed, uint64_t thread, uint64_t offset) {
  const uint64_t n = offset / 4;
  const uint4 a = philox_block(seed, thread, n);
  switch (offset % 4) {
    case 0:
      return a;
    case 1: {
      const uint4 b = philox_block(seed, thread, n + 1);
      return make_uint4(a.y, a.z, a.w, b.x);
    }
    case 2: {
      const uint4 b = philox_block(seed, thread, n + 1);
      return make_uint4(a.z, a.w, b.x, b.y);
    }
    default: {
      const uint4 b = philox_block(seed, thread, n + 1);
      return make_uint4(a.w, b.x, b.y, b.z);
    }
  }
}

// curand_normal4, curand_uniform4, curand_normal2_double and
// curand_uniform2_double of a Philox state, as functions of its draw.
struct Normal4 {
  __device__ float4 operator()(uint4 x) const {
    const float2 lo = _curand_box_muller(x.x, x.y);
    const float2 hi = _curand_box_muller(x.z, x.w);
    return make_float4(lo.x, lo.y, hi.x, hi.y);
  }
};
struct Uniform4 {
  __device__ float4 operator()(uint4 x) const { return _curand_uniform4(x); }
};
struct Normal2Double {
  __device__ double2 operator()(uint4 x) const {
    return _curand_box_muller_double(x.x, x.y, x.z, x.w);
  }
};
struct Uniform2Double {
  __device__ double2 operator()(uint4 x) const {
    return make_double2(_curand_uniform_double_hq(x.x, x.y), _curand_uniform_double_hq(x.z, x.w));
  }
};

// The job whose work items hold item w: the last j < count with
// work_start[j] <= w (work_start: prefix sums of the jobs' items).
__device__ __forceinline__ int job_of(const int64_t* work_start, int count, int64_t w) {
  int lo = 0;
  int hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (work_start[mid] <= w) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

int64_t blocks_for(int64_t work) {
  return std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, 65535));
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
  int64_t last_iter;   // pair mode: (end - 1) / (unroll * stride)
  int64_t stride;      // S of the node's whole launch
  uint64_t seed;
  uint64_t offset;
  double a;  // normal: mean, uniform: from (exact in their kernel types)
  double b;  // normal: std, uniform: to
  double c;  // uniform: to - from in opmath
  int64_t element_mode;  // one Philox call an element (short pieces)
  int64_t row_len;       // element mode, rows: elements a row (0: one run)
  int64_t row_gap;       // row_step - row_len
};

struct BatchTable {
  int64_t work_start[kBatchJobs + 1];  // prefix sums of the jobs' work items
  BatchJob jobs[kBatchJobs];
  int32_t count;
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
    return Bound{static_cast<scalar_t>(job.a), static_cast<scalar_t>(job.b),
                 static_cast<opmath_t>(job.c)};
  }
};

// Work item w belongs to the job whose prefix range holds it. Pair mode:
// item t is thread t of the node's whole launch, which runs the
// iterations whose lanes reach [begin, end) as PyTorch's grid-stride loop
// does, one Philox block an iteration (the draw of curand_init(seed, t,
// offset + 4 * iteration)). Element mode: item p is element begin + p (with
// rows: plus the gaps between the rows before it), with a block of its own.
template <typename scalar_t, typename acc_t, int kUnroll, typename dist_t, typename transform_t>
__global__ void batch_kernel(
    const LAZYINIT_GRID_CONSTANT BatchTable table, dist_t dist, transform_t transform) {
  const int64_t total = table.work_start[table.count];
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < total;
       w += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int j = job_of(table.work_start, table.count, w);
    const BatchJob& job = table.jobs[j];
    const int64_t p = w - table.work_start[j];
    scalar_t* out = reinterpret_cast<scalar_t*>(job.out);
    const int64_t s = job.stride;
    if (job.element_mode) {
      const int64_t li = job.begin + p + (job.row_len > 0 ? p / job.row_len * job.row_gap : 0);
      const int64_t q = li / s;
      const auto rand =
          dist(philox_draw(job.seed, li % s, job.offset + 4 * static_cast<uint64_t>(q / kUnroll)));
      out[p] = transform(job)(static_cast<acc_t>((&rand.x)[static_cast<int>(q % kUnroll)]));
      continue;
    }
    const int64_t thread = p;  // < s
    const int64_t step = kUnroll * s;  // elements an iteration
    // This thread's iterations with a lane in [begin, end): at the edges,
    // some threads have none.
    int64_t first = job.first_iter;
    if (first * step + thread + (kUnroll - 1) * s < job.begin) {
      ++first;
    }
    int64_t last = job.last_iter;
    if (last * step + thread >= job.end) {
      --last;
    }
    const auto value_of = transform(job);
    int64_t lane0 = first * step + thread;  // element of lane 0
    for (int64_t iter = first; iter <= last; ++iter, lane0 += step) {
      const auto rand =
          dist(philox_draw(job.seed, thread, job.offset + 4 * static_cast<uint64_t>(iter)));
      if (lane0 >= job.begin && lane0 + (kUnroll - 1) * s < job.end) {
        // Every lane in the piece: the iterations between the edges.
        scalar_t* o = out + (lane0 - job.begin);
#pragma unroll
        for (int lane = 0; lane < kUnroll; ++lane) {
          o[lane * s] = value_of(static_cast<acc_t>((&rand.x)[lane]));
        }
        continue;
      }
#pragma unroll
      for (int lane = 0; lane < kUnroll; ++lane) {
        const int64_t li = lane0 + lane * s;
        if (li >= job.begin && li < job.end) {
          out[li - job.begin] = value_of(static_cast<acc_t>((&rand.x)[lane]));
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
      const int64_t s = philox_launch_threads(job.numel, job.grid_limit);
      BatchJob& d = table.jobs[i];
      d.out = static_cast<char*>(job.out.data_ptr());
      d.begin = job.begin;
      d.end = job.begin + n;
      d.stride = s;
      d.seed = job.start.seed;
      d.offset = job.start.offset;
      d.first_iter = d.begin / (kUnroll * s);
      d.last_iter = (d.end - 1) / (kUnroll * s);
      // Pairs cost about n / unroll + 2 S calls, elements n.
      d.element_mode = job.rows > 1 || n / kUnroll + 2 * s >= n;
      d.row_len = job.rows > 1 ? n / job.rows : 0;
      d.row_gap = job.rows > 1 ? job.row_step - d.row_len : 0;
      const int64_t work = d.element_mode ? n : s;  // pair mode: the launch's threads
      describe(job, d);
      table.work_start[i + 1] = table.work_start[i] + work;
    }
    batch_kernel<scalar_t, acc_t, kUnroll><<<blocks_for(table.work_start[count]), kThreads, 0,
                                               stream>>>(table, dist, transform);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

struct FillJob {
  char* out;
  uint64_t bits;  // the value, as the first sizeof(scalar_t) bytes
};

struct FillTable {
  int64_t work_start[kBatchJobs + 1];  // prefix sums of the jobs' sizes
  FillJob jobs[kBatchJobs];
  int32_t count;
};

template <typename scalar_t>
__global__ void fill_kernel(const LAZYINIT_GRID_CONSTANT FillTable table) {
  const int64_t total = table.work_start[table.count];
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < total;
       w += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int j = job_of(table.work_start, table.count, w);
    const FillJob& job = table.jobs[j];
    scalar_t value;
    memcpy(&value, &job.bits, sizeof(scalar_t));
    reinterpret_cast<scalar_t*>(job.out)[w - table.work_start[j]] = value;
  }
}

template <typename scalar_t>
void launch_fills(const std::vector<const ConstantJob*>& jobs) {
  static_assert(sizeof(scalar_t) <= sizeof(uint64_t), "a value must fit the job's bits");
  const auto stream = at::cuda::getCurrentCUDAStream();
  for (size_t first = 0; first < jobs.size(); first += kBatchJobs) {
    FillTable table{};
    const size_t count = std::min<size_t>(kBatchJobs, jobs.size() - first);
    table.count = static_cast<int32_t>(count);
    for (size_t i = 0; i < count; ++i) {
      const ConstantJob& job = *jobs[first + i];
      table.jobs[i].out = static_cast<char*>(job.out.data_ptr());
      const scalar_t value = job.value.to<scalar_t>();  // as fill_ converts it
      memcpy(&table.jobs[i].bits, &value, sizeof(scalar_t));
      table.work_start[i + 1] = table.work_start[i] + job.out.numel();
    }
    fill_kernel<scalar_t><<<blocks_for(table.work_start[count]), kThreads, 0, stream>>>(table);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

void constant_batch_fill(const std::vector<ConstantJob>& jobs) {
  std::map<std::pair<int, at::ScalarType>, std::vector<const ConstantJob*>> groups;
  for (const auto& job : jobs) {
    const at::Tensor& out = job.out;
    TORCH_CHECK(out.is_cuda() && out.is_contiguous() && out.dim() == 1,
                "lazyinit: constant_batch_fill writes contiguous 1-D CUDA tensors");
    if (out.numel() > 0) {
      groups[{out.device().index(), out.scalar_type()}].push_back(&job);
    }
  }
  for (const auto& group : groups) {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(group.first.first));
    AT_DISPATCH_ALL_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, group.first.second,
                               "constant_batch_fill",
                               [&] { launch_fills<scalar_t>(group.second); });
  }
}

void philox_batch_fill(const std::vector<PhiloxJob>& jobs, PhiloxFill kind) {
  std::map<std::pair<int, at::ScalarType>, std::vector<const PhiloxJob*>> groups;
  for (const auto& job : jobs) {
    const at::Tensor& out = job.out;
    TORCH_CHECK(out.is_cuda() && out.is_contiguous() && out.dim() == 1,
                "lazyinit: philox_batch_fill writes contiguous 1-D CUDA tensors");
    TORCH_CHECK(job.rows >= 1 && out.numel() % job.rows == 0,
                "lazyinit: a job's output must hold whole rows");
    const int64_t row_len = out.numel() / job.rows;
    TORCH_CHECK(job.rows == 1 || job.row_step >= row_len, "lazyinit: rows overlap");
    TORCH_CHECK(job.begin >= 0 && job.begin + (job.rows - 1) * job.row_step + row_len <= job.numel,
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
              Normal2Double{},
              NormalOf<scalar_t, acc_t>{}, describe);
        } else {
          launch_batch<scalar_t, acc_t, 4>(members,
              Normal4{},
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
              Uniform2Double{},
              UniformOf<scalar_t, opmath_t>{}, describe);
        } else {
          launch_batch<scalar_t, opmath_t, 4>(members,
              Uniform4{},
              UniformOf<scalar_t, opmath_t>{}, describe);
        }
      }
    });
  }
}

}  // namespace lazyinit
