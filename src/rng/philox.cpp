#include <lazyinit/rng/philox.h>
#include <lazyinit/shard/philox_region.h>

#include <lazyinit/core/compat.h>
#include <lazyinit/core/tensor_args.h>
#include <lazyinit/record/op_info.h>
#include <lazyinit/replay/replay.h>
#include <lazyinit/rng/chain.h>

#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <mutex>
#include <string>

namespace lazyinit {
namespace {

// PyTorch's distribution kernels (ATen/native/cuda/DistributionTemplates.h)
// add 4 to the offset per grid-stride iteration of their launch
// (philox_launch_threads, philox_unroll).
constexpr uint64_t kOffsetPerCall = 4;

std::vector<int64_t>& grid_limits() {
  static std::vector<int64_t> limits;
  return limits;
}

// Set once torch has initialized CUDA (set_philox_grid_limits). Until then
// lazyinit never calls into the CUDA driver: eager CPU work does not, and a
// driver call racing a fork() in another thread can hang the child.
std::atomic<bool> g_torch_cuda_initialized{false};

at::Generator cuda_generator(int device) {
  return at::globalContext().defaultGenerator(
      c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device)));
}

PhiloxState read_state(at::Generator& gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  return PhiloxState{gen.current_seed(), compat::generator_offset(gen)};
}

void write_state(at::Generator& gen, const PhiloxState& state) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_current_seed(state.seed);  // also resets the offset
  compat::set_generator_offset(gen, state.offset);
}

int cuda_device_count() {
  if (!g_torch_cuda_initialized.load() || !at::globalContext().hasCUDA() ||
      !c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA)) {
    return 0;
  }
  return static_cast<int>(c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->deviceCount());
}

bool is_floating(caffe2::TypeMeta dtype) {
  const auto t = dtype.toScalarType();
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

c10::optional<uint64_t> increment_for(int64_t numel, caffe2::TypeMeta dtype, int device) {
  if (!is_floating(dtype) || numel > std::numeric_limits<int32_t>::max()) {
    return c10::nullopt;  // other kernels, or split into 32-bit pieces
  }
  if (numel == 0) {
    return uint64_t{0};  // the kernel returns before taking an offset
  }
  const auto& limits = grid_limits();
  if (device < 0 || device >= static_cast<int>(limits.size()) || limits[device] <= 0) {
    return c10::nullopt;
  }
  const uint64_t threads = static_cast<uint64_t>(philox_launch_threads(numel, limits[device]));
  const uint64_t unroll = static_cast<uint64_t>(philox_unroll(dtype.toScalarType()));
  const uint64_t calls = (static_cast<uint64_t>(numel) - 1) / (threads * unroll) + 1;
  return calls * kOffsetPerCall;
}

PhiloxStream& stream_of(RngChain& chain, int device) {
  PhiloxStream& stream = chain.cuda.streams[device];
  const size_t n = chain.nodes.size();
  if (stream.states.size() < n + 1) {
    stream.states.resize(n + 1);
    stream.replayed.resize(n, false);
  }
  return stream;
}

// The state before node `index` of `chain` on `device`. With `replayer`
// unset, only what is computable without drawing.
c10::optional<PhiloxState> state_before(
    RngChain& chain, int device, int64_t index, Replayer* replayer) {
  PhiloxStream& stream = stream_of(chain, device);
  if (!stream.states[0]) {
    const PhiloxOrigin& origin = chain.cuda;
    if (origin.previous) {
      RngChain& previous = *origin.previous;
      auto end = state_before(previous, device, previous.size(), replayer);
      if (!end) {
        return c10::nullopt;
      }
      stream_of(chain, device).states[0] = end;
    } else {
      auto it = origin.start.find(device);
      stream.states[0] = it != origin.start.end() ? it->second : PhiloxState{origin.seed, 0};
    }
  }
  PhiloxStream& s = stream_of(chain, device);
  int64_t known = index;
  while (!s.states[known]) {
    --known;
  }
  for (int64_t i = known; i < index; ++i) {
    if (s.states[i + 1]) {
      continue;
    }
    NodePtr node = chain.node_at(i);
    c10::optional<uint64_t> inc;
    if (chain.built_on_cpu(i)) {
      inc = 0;  // built on the CPU, as eagerly: no CUDA draws
    } else if (node) {
      inc = philox_increment(*node, device);
    } else if (auto dead = chain.dead_draws.find(i);
               dead != chain.dead_draws.end() && dead->second.fill_numel >= 0) {
      inc = increment_for(dead->second.fill_numel, dead->second.fill_dtype, device);
    }
    if (inc) {
      s.states[i + 1] = PhiloxState{s.states[i]->seed, s.states[i]->offset + *inc};
      continue;
    }
    if (replayer == nullptr) {
      return c10::nullopt;
    }
    TORCH_CHECK(
        node != nullptr,
        "lazyinit: the random tensors recorded in one run were materialized "
        "partly on the CPU and partly on CUDA, so the CUDA generator's "
        "position is lost. Materialize all of them on one device type.");
    // Draw into scratch to learn where the kernel leaves the generator.
    auto stack = replayer->prepare(*node, at::Tensor(), /*scratch=*/true);
    at::NoGradGuard no_grad;
    at::Generator gen = cuda_generator(device);
    note_cuda_generator_touched(device);
    write_state(gen, *s.states[i]);
    node->op->callBoxed(&stack);
    s.states[i + 1] = read_state(gen);
  }
  return s.states[index];
}

void check_cuda_chain(const RngChain& chain) {
  TORCH_CHECK(
      compat::kGeneratorHasOffset,
      "lazyinit: exact replay of random ops on CUDA needs torch >= 2.1.");
  TORCH_CHECK(
      chain.generator.unsafeGetGeneratorImpl() ==
          at::detail::getDefaultCPUGenerator().unsafeGetGeneratorImpl(),
      "lazyinit: a random op recorded with an explicit CPU torch.Generator "
      "cannot be replayed on CUDA (eager PyTorch refuses a CPU generator for "
      "a CUDA tensor too). Materialize it on \"cpu\", or record it without "
      "generator=.");
}

}  // namespace

void note_cuda_generator_touched(int device) {
  GeneratorStateGuard* guard = GeneratorStateGuard::innermost();
  if (guard != nullptr) {
    at::Generator gen = cuda_generator(device);
    guard->save_cuda(device, gen, read_state(gen));
  }
}

void restore_cuda_generator(at::Generator& gen, const PhiloxState& state) {
  write_state(gen, state);
}

void set_philox_grid_limits(const std::vector<int64_t>& limits) {
  std::lock_guard<std::recursive_mutex> lock(graph_mutex());
  grid_limits() = limits;
  g_torch_cuda_initialized.store(true);
}

bool cuda_may_be_used() {
  // A registration made when torch's CUDA library loads: no driver call.
  return c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA);
}

bool philox_fill_size(const Node& node, int64_t* numel, caffe2::TypeMeta* dtype) {
  if (node.is_constant()) {
    return false;
  }
  const auto& name = node.op->schema().operator_name();
  if ((name.name == "aten::randn" || name.name == "aten::rand") &&
      (name.overload_name.empty() || name.overload_name == "generator") &&
      random_factory_output(node, numel, dtype)) {
    // empty(size) followed by normal_ / uniform_ of the whole result
    return is_floating(*dtype);
  }
  if (op_info(*node.op).distribution_fill && node.self_slot >= 0) {
    const TensorRef& self = node.tensors[node.self_slot].ref;
    *numel = self.geometry.numel();
    *dtype = self.dtype;
    return is_floating(*dtype);
  }
  return false;
}

c10::optional<uint64_t> philox_increment(const Node& node, int device) {
  int64_t numel = 0;
  caffe2::TypeMeta dtype;
  if (!philox_fill_size(node, &numel, &dtype)) {
    return c10::nullopt;
  }
  return increment_for(numel, dtype, device);
}

void philox_chain_started(
    RngChain& chain, const std::shared_ptr<RngChain>& previous, bool continued, uint64_t cpu_seed) {
  if (!compat::kGeneratorHasOffset) {
    return;
  }
  if (previous && continued) {
    // Only the CPU side changed (a real CPU draw, say): eager's CUDA stream
    // goes on from where the previous chain leaves it.
    chain.cuda.previous = previous;
    return;
  }
  chain.cuda.seed = cpu_seed;
  const int count = cuda_device_count();
  for (int d = 0; d < count; ++d) {
    // A generator that does not exist yet will be seeded by the pending
    // torch.manual_seed, which also gave the CPU generator its seed.
    if (at::detail::getCUDAHooks().hasPrimaryContext(static_cast<c10::DeviceIndex>(d)) ||
        d < static_cast<int>(grid_limits().size())) {
      at::Generator gen = cuda_generator(d);
      chain.cuda.start[d] = read_state(gen);
    }
  }
}

namespace {

// Records that `node` ran on `device` from `before` and left the generator
// at `after` (checked against the position computed for it, if any).
void record_run(
    RngChain& chain,
    const Node& node,
    int device,
    const PhiloxState& before,
    const PhiloxState& after) {
  PhiloxStream& stream = stream_of(chain, device);
  auto& slot = stream.states[node.rng_index + 1];
  TORCH_CHECK(
      !slot || *slot == after, "lazyinit: internal error: ", node.op->schema().name(),
      " moved the CUDA "
      "generator's offset from ",
      before.offset, " to ", after.offset, ", but ", slot->offset,
      " was computed for it; values of later random "
      "tensors would differ from eager. Please report this with your torch "
      "version and GPU.");
  slot = after;
  stream.replayed[node.rng_index] = true;
  if (chain.cuda.device < 0) {
    chain.cuda.device = device;
  } else if (chain.cuda.device != device) {
    chain.cuda.mixed = true;
  }
}

}  // namespace

bool philox_replayed(const RngChain& chain, int64_t index) {
  for (const auto& kv : chain.cuda.streams) {
    const auto& replayed = kv.second.replayed;
    if (index < static_cast<int64_t>(replayed.size()) && replayed[index]) {
      return true;
    }
  }
  return false;
}

namespace {

// A CPU position after `node` was computed counting its CPU draws (a later
// random tensor materialized on the CPU, or the CPU generator read): built
// on CUDA now, it would leave those values matching no eager run.
void check_not_counted_on_cpu(const RngChain& chain, const Node& node) {
  TORCH_CHECK(
      philox_replayed(chain, node.rng_index) || chain.last_known(chain.size()) <= node.rng_index,
      "lazyinit: ", node.op->schema().name(),
      " is materialized on CUDA after "
      "random tensors recorded after it were materialized on the CPU (or the "
      "CPU generator was read), which counted it as drawn on the CPU. "
      "Materialize the random tensors of one construction on one device type, "
      "or this one on the CPU.");
}

}  // namespace

void philox_run(Node& node, Replayer& replayer, const std::function<void()>& call) {
  RngChain& chain = *node.chain;
  check_cuda_chain(chain);
  check_not_counted_on_cpu(chain, node);
  const int device = replayer.device().index();
  auto before = state_before(chain, device, node.rng_index, &replayer);
  TORCH_INTERNAL_ASSERT(before.has_value());
  at::Generator gen = cuda_generator(device);
  note_cuda_generator_touched(device);
  write_state(gen, *before);
  call();
  record_run(chain, node, device, *before, read_state(gen));
}

c10::optional<PhiloxState> philox_state_before(Node& node, int device) {
  RngChain& chain = *node.chain;
  check_cuda_chain(chain);
  Replayer replayer(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device)));
  return state_before(chain, device, node.rng_index, &replayer);
}

c10::optional<PhiloxState> philox_take_run(Node& node, int device) {
  check_not_counted_on_cpu(*node.chain, node);
  const auto increment = philox_increment(node, device);
  if (!increment) {
    return c10::nullopt;
  }
  auto before = philox_state_before(node, device);
  if (!before) {
    return c10::nullopt;
  }
  const PhiloxState after{before->seed, before->offset + *increment};
  record_run(*node.chain, node, device, *before, after);
  at::Generator gen = cuda_generator(device);
  note_cuda_generator_touched(device);
  write_state(gen, after);
  return before;
}

int64_t philox_grid_limit(int device) {
  const auto& limits = grid_limits();
  return device >= 0 && device < static_cast<int>(limits.size()) ? limits[device] : -1;
}

bool philox_state_after_known(const Node& node, int device) {
  return state_before(*node.chain, device, node.rng_index + 1, nullptr).has_value();
}

bool philox_settle(RngChain& chain) {
  if (chain.cuda.device < 0 || chain.cuda.mixed) {
    return false;
  }
  const int device = chain.cuda.device;
  PhiloxStream& stream = stream_of(chain, device);
  for (int64_t i = 0; i < chain.size(); ++i) {
    if (stream.replayed[i]) {
      continue;
    }
    auto node = chain.nodes[i].lock();
    if (node && !node->owner_dead) {
      return false;  // a live random tensor is still lazy
    }
  }
  Replayer replayer(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device)));
  auto end = state_before(chain, device, chain.size(), &replayer);
  release_scratch();
  if (!end) {
    return false;
  }
  at::Generator gen = cuda_generator(device);
  write_state(gen, *end);
  return true;
}

#ifndef LAZYINIT_CUDA_KERNELS
void philox_region_fill(
    const std::vector<PhiloxPiece>&,
    PhiloxFill,
    const PhiloxState&,
    int64_t,
    int64_t,
    double,
    double) {
  TORCH_CHECK(
      false,
      "lazyinit: built without its CUDA kernels; rebuild with "
      "-DLAZYINIT_CUDA_KERNELS=ON on a machine with nvcc and a CUDA torch.");
}
#endif

}  // namespace lazyinit
