#include <lazyinit/record/layout.h>

#include <lazyinit/core/lazy_tensor_impl.h>
#include <lazyinit/core/tensor_args.h>
#include <lazyinit/rng/chain.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/as_strided.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <numeric>
#include <string>
#include <utility>

namespace lazyinit {
namespace {

// Stand-ins stay small: beyond this many elements the Meta answer stays.
constexpr int64_t kMaxStandInElements = int64_t{1} << 16;

// An increasing map from the input sizes to small sizes: 0 and 1 stay (they
// decide emptiness and broadcasting), the k-th smallest size above 1 becomes
// k + 2. Equal sizes stay equal, and their order is kept (TensorIterator
// breaks ties between equal strides by size).
class SizeMap {
 public:
  void add(c10::IntArrayRef sizes) {
    for (int64_t s : sizes) {
      if (s > 1) {
        sizes_.push_back(s);
      }
    }
  }
  void finish() {
    std::sort(sizes_.begin(), sizes_.end());
    sizes_.erase(std::unique(sizes_.begin(), sizes_.end()), sizes_.end());
  }
  int64_t operator()(int64_t s) const {
    if (s <= 1) {
      return s;
    }
    return 2 + (std::lower_bound(sizes_.begin(), sizes_.end(), s) - sizes_.begin());
  }

 private:
  std::vector<int64_t> sizes_;
};

// One tensor input and its stand-in's geometry.
struct StandIn {
  std::vector<int64_t> real_sizes, real_strides;
  std::vector<int64_t> sizes, strides;
};

// Strides for a stand-in with sizes `small` of a tensor with `sizes` and
// `strides`. Layout decisions compare strides with each other (TensorIterator's
// dimension order, channels-last detection) and with stride * size of other
// dimensions (contiguity, density, gaps): every such value of the real
// tensor is an anchor, and the stand-in's anchors must be ordered the same
// way. Returns false where no such strides were found (e.g. overlapping
// layouts from as_strided).
bool stand_in_strides(
    c10::IntArrayRef sizes,
    c10::IntArrayRef strides,
    const std::vector<int64_t>& small,
    std::vector<int64_t>& out) {
  const size_t n = sizes.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(
      order.begin(), order.end(), [&](size_t a, size_t b) { return strides[a] < strides[b]; });
  std::vector<std::pair<int64_t, int64_t>> anchors = {{0, 0}, {1, 1}};  // (real, stand-in)
  out.assign(n, 0);
  for (size_t d : order) {
    const int64_t r = strides[d];
    if (r < 0) {
      return false;
    }
    int64_t p = -1;
    int64_t below = 0;
    c10::optional<int64_t> above;
    for (const auto& a : anchors) {
      if (a.first == r) {
        p = a.second;
        break;
      }
      if (a.first < r) {
        below = std::max(below, a.second);
      } else if (!above || a.second < *above) {
        above = a.second;
      }
    }
    if (p < 0) {
      p = below + 1;  // strictly between its neighbours, if there is room
      if (above && p >= *above) {
        return false;
      }
    }
    out[d] = p;
    int64_t extent = 0;
    if (__builtin_mul_overflow(r, sizes[d], &extent)) {
      return false;
    }
    anchors.emplace_back(r, p);
    anchors.emplace_back(extent, p * small[d]);
  }
  std::sort(anchors.begin(), anchors.end());
  for (size_t i = 1; i < anchors.size(); ++i) {
    const bool same = anchors[i].first == anchors[i - 1].first;
    if (same ? anchors[i].second != anchors[i - 1].second
             : anchors[i].second <= anchors[i - 1].second) {
      return false;
    }
  }
  return true;
}

at::Tensor make_stand_in(const StandIn& s, c10::ScalarType dtype) {
  int64_t extent = 1;
  for (size_t d = 0; d < s.sizes.size(); ++d) {
    if (s.sizes[d] == 0) {
      extent = 0;
      break;
    }
    extent += (s.sizes[d] - 1) * s.strides[d];
  }
  auto buffer = at::empty({extent}, at::TensorOptions().dtype(dtype).device(at::kCPU));
  // Ones keep floating inputs valid for most kernels (probabilities,
  // logarithms, divisions); zeros keep integer inputs valid as indices.
  if (c10::isFloatingType(dtype) || c10::isComplexType(dtype)) {
    buffer.fill_(1);
  } else {
    buffer.zero_();
  }
  return at::as_strided(buffer, s.sizes, s.strides, 0);
}

// Strides of a tensor with `sizes` laid out densely in `order` (fastest
// first). TensorIterator multiplies by the sizes as they are; empty_like and
// friends by max(size, 1): both spellings are tried.
std::vector<int64_t> dense_strides(
    c10::IntArrayRef sizes, const std::vector<size_t>& order, bool clamp_zero) {
  std::vector<int64_t> strides(sizes.size());
  int64_t next = 1;
  for (size_t d : order) {
    strides[d] = next;
    next *= clamp_zero ? std::max<int64_t>(sizes[d], 1) : sizes[d];
  }
  return strides;
}

// The strides a result with the real sizes `real` gets, given the CPU
// kernel's result `cpu` on the stand-ins. False if that cannot be told.
bool map_back(
    const at::Tensor& cpu,
    c10::IntArrayRef real,
    const std::vector<StandIn>& inputs,
    std::vector<int64_t>& strides) {
  if (static_cast<size_t>(cpu.dim()) != real.size()) {
    return false;
  }
  for (size_t d = 0; d < real.size(); ++d) {
    const int64_t c = cpu.size(static_cast<int64_t>(d));
    if ((c == 0) != (real[d] == 0) || (c == 1) != (real[d] == 1)) {
      return false;
    }
  }
  // The result took an input's strides (empty_like of a dense input).
  for (const auto& in : inputs) {
    if (cpu.sizes() == c10::IntArrayRef(in.sizes) &&
        cpu.strides() == c10::IntArrayRef(in.strides) && real == c10::IntArrayRef(in.real_sizes)) {
      strides = in.real_strides;
      return true;
    }
  }
  // The result is dense in some order of its dimensions: find the order (on
  // equal strides, dimensions of size 0 or 1 count as the faster ones) and
  // lay the real sizes out in it.
  std::vector<size_t> order(real.size());
  std::iota(order.begin(), order.end(), 0);
  const auto cs = cpu.strides();
  const auto csz = cpu.sizes();
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (cs[a] != cs[b]) {
      return cs[a] < cs[b];
    }
    return (csz[a] <= 1) > (csz[b] <= 1);
  });
  auto try_order = [&]() {
    for (bool clamp_zero : {false, true}) {
      if (c10::IntArrayRef(dense_strides(csz, order, clamp_zero)) == cs) {
        strides = dense_strides(real, order, clamp_zero);
        return true;
      }
    }
    return false;
  };
  if (try_order()) {
    return true;
  }
  // Zero sizes make strides of slower dimensions 0, which sorting by stride
  // cannot place: search the orders (few dimensions only).
  if (cpu.numel() == 0 && real.size() <= 6) {
    std::sort(order.begin(), order.end());
    do {
      if (try_order()) {
        return true;
      }
    } while (std::next_permutation(order.begin(), order.end()));
  }
  // Last, where the map kept every size (0 and 1 only, or small ones): the
  // CPU's strides as they are. (Not first: stand-in strides of inputs differ
  // from the real ones, and a result may have copied an input's.)
  if (cpu.sizes() == real) {
    strides = cpu.strides().vec();
    return true;
  }
  return false;
}

// Meta and CPU kernels agree where every input has exactly the strides of a
// contiguous tensor of its sizes (is_contiguous() is not enough: it ignores
// the strides of size-1 dimensions, which TensorIterator compares).
bool needs_check(const std::vector<c10::IValue>& args) {
  bool any = false;
  for_each_tensor(args, [&](size_t, int64_t, const at::Tensor& t) {
    if (any || t.dim() == 0) {
      return;
    }
    int64_t expected = 1;
    for (int64_t d = t.dim() - 1; d >= 0 && !any; --d) {
      any = t.stride(d) != expected || t.size(d) == 0;
      expected *= t.size(d);
    }
  });
  return any;
}

bool is_wrapped_cpu_scalar(const at::Tensor& t) {
  return t.dim() == 0 && t.device().is_cpu() && get_pending_impl(t) == nullptr;
}

// Whether the Meta kernel gave a written argument (an out= tensor) another
// geometry: the kernel resized it, and the CPU kernel may lay it out
// differently (torch.add(nonzero_result, 0.5, out=t) takes the input's
// transposed strides on the CPU).
bool resizes_written(
    const OpInfo& info,
    const std::vector<c10::IValue>& args,
    const std::vector<c10::IValue>& meta_stack) {
  for (size_t r = 0; r < info.returns.size() && r < meta_stack.size(); ++r) {
    const auto& ret = info.returns[r];
    if (ret.kind != OpInfo::ReturnKind::kMutated || !args[ret.arg].isTensor() ||
        !meta_stack[r].isTensor()) {
      continue;
    }
    const at::Tensor& before = args[ret.arg].toTensor();
    const at::Tensor& after = meta_stack[r].toTensor();
    if (before.sizes() != after.sizes() || before.strides() != after.strides()) {
      return true;
    }
  }
  return false;
}

// The CPU call on stand-ins: its arguments, and the stand-ins' geometry
// (to map result layouts back). Empty where stand-ins cannot be built.
struct StandInCall {
  std::vector<c10::IValue> stack;
  std::vector<StandIn> inputs;
  // The stand-ins have the real sizes and strides (inputs small enough):
  // the CPU kernel's result layouts are the real ones, nothing to map back.
  bool real_geometry = false;
};

// Whether the tensor inputs are small enough to stand in with their real
// sizes and strides: every layout decision is then the CPU kernel's own,
// including those the size map cannot keep (a size-1 dimension's stride
// between two others: fuzz seed 2100050450; strides of empty results).
bool fits_real_geometry(const std::vector<c10::IValue>& args) {
  bool fits = true;
  int64_t total = 0;
  for_each_tensor(args, [&](size_t, int64_t, const at::Tensor& t) {
    for (int64_t d = 0; d < t.dim(); ++d) {
      fits = fits && t.stride(d) >= 0;
    }
    Geometry g = Geometry::of(t);
    g.offset = 0;  // the stand-in starts its own buffer
    total += g.extent();
  });
  return fits && total <= kMaxStandInElements;
}

// Factories have no tensor to shrink: their `size` lists are, to at most 2
// a dimension (0 and 1 kept), which keeps every dtype and shape check.
void shrink_factory_sizes(const c10::OperatorHandle& op, std::vector<c10::IValue>& stack) {
  const auto& arguments = op.schema().arguments();
  for (size_t i = 0; i < arguments.size() && i < stack.size(); ++i) {
    if (arguments[i].name() != "size" || !stack[i].isIntList()) {
      continue;
    }
    std::vector<int64_t> sizes = stack[i].toIntVector();
    for (auto& s : sizes) {
      s = std::min<int64_t>(s, 2);
    }
    stack[i] = c10::IValue(sizes);
  }
}

c10::optional<StandInCall> make_stand_in_call(
    const c10::OperatorHandle& op, const OpInfo& info, const std::vector<c10::IValue>& args) {
  SizeMap size_map;
  for_each_tensor(args, [&](size_t, int64_t, const at::Tensor& t) { size_map.add(t.sizes()); });
  size_map.finish();

  StandInCall call;
  call.real_geometry = info.has_tensor_args && fits_real_geometry(args);
  call.stack = args;
  copy_tensor_lists(call.stack);
  bool ok = true;
  int64_t total = 0;
  for_each_tensor(args, [&](size_t i, int64_t e, const at::Tensor& t) {
    if (!ok || is_wrapped_cpu_scalar(t)) {
      return;  // type promotion depends on these: they pass as they are
    }
    const auto dtype = t.scalar_type();
    if (!(c10::isFloatingType(dtype) || c10::isComplexType(dtype) ||
          c10::isIntegralType(dtype, /*includeBool=*/true))) {
      ok = false;
      return;
    }
    StandIn s;
    s.real_sizes = t.sizes().vec();
    s.real_strides = t.strides().vec();
    if (call.real_geometry) {
      s.sizes = s.real_sizes;
      s.strides = s.real_strides;
    } else {
      for (int64_t size : s.real_sizes) {
        s.sizes.push_back(size_map(size));
      }
      ok = stand_in_strides(t.sizes(), t.strides(), s.sizes, s.strides);
    }
    int64_t numel = 1;
    for (int64_t size : s.sizes) {
      numel *= size;
    }
    total += numel;
    ok = ok && total <= kMaxStandInElements;
    if (ok) {
      set_tensor(call.stack, i, e, make_stand_in(s, dtype));
      call.inputs.push_back(std::move(s));
    }
  });
  if (!ok) {
    return c10::nullopt;
  }
  if (!info.has_tensor_args) {
    shrink_factory_sizes(op, call.stack);
  }
  for (size_t i : info.device_args) {
    if (call.stack[i].isDevice()) {
      call.stack[i] = c10::IValue(c10::Device(c10::kCPU));
    }
  }
  // Random ops draw on the stand-ins from a throwaway generator.
  if (info.generator_arg >= 0) {
    call.stack[info.generator_arg] = c10::IValue(at::detail::createCPUGenerator(0));
  }
  return call;
}

// Runs the CPU kernel on the stand-ins. An error eager would raise too (a
// missing kernel for a dtype, whatever the values) is rethrown; other
// errors may come from the stand-ins' values (ones, zeros) and are left for
// replay, where the real values decide; false where the kernel failed for the stand-ins' sake.
// Plain fills (normal_, uniform_) check only their scalar arguments and dtype, so every error they
// raise on a stand-in is eager's: torch 2.x's Meta decomposition of uniform_ does not check from <=
// to. So is every error of a matrix product (operand dtypes; dot's lengths, which the increasing
// size map keeps apart), which torch 1.13's Meta kernels do not check.
bool run_stand_in_call(
    const c10::OperatorHandle& op, const OpInfo& info, std::vector<c10::IValue>& stack) {
  const std::exception_ptr error = run_cpu_call(op, stack, /*may_draw=*/info.random);
  if (error == nullptr) {
    return true;
  }
  if (is_c10_error(error, [&](const c10::Error& e) {
        return is_missing_kernel_error(e) || info.plain_fill != OpInfo::PlainFill::kNone ||
               info.stand_in_errors_are_eagers;
      })) {
    std::rethrow_exception(error);
  }
  return false;
}

// Replaces the strides (and dtype) of fresh and resized results in
// `meta_stack` with those of the CPU run, mapped back to the real sizes.
void take_cpu_layouts(
    const OpInfo& info, const StandInCall& call, std::vector<c10::IValue>& meta_stack) {
  const auto& cpu = call.stack;
  if (cpu.size() != meta_stack.size()) {
    return;
  }
  // The CPU kernel's dtype too: Meta kernels can disagree on edge cases
  // that only empty inputs reach (torch 2.14: torch.normal of an empty
  // int64 mean is float32 on Meta, int64 on the CPU).
  auto relayout = [&](const at::Tensor& c, const at::Tensor& m) -> at::Tensor {
    std::vector<int64_t> strides;
    if (call.real_geometry && c.defined() && m.defined() && c.sizes() == m.sizes()) {
      strides = c.strides().vec();
    } else if (
        !c.defined() || !m.defined() || !map_back(c, m.sizes(), call.inputs, strides) ||
        (m.strides() == c10::IntArrayRef(strides) && m.dtype() == c.dtype())) {
      return m;
    }
    at::Tensor out = at::empty_strided(m.sizes(), strides, m.options().dtype(c.dtype()));
    // A resized out= keeps its storage offset (torch 2.14: a 0-element
    // result of a view at offset 8 stays at 8).
    out.unsafeGetTensorImpl()->set_storage_offset(m.storage_offset());
    return out;
  };
  for (size_t r = 0; r < cpu.size() && r < info.returns.size(); ++r) {
    if (info.returns[r].kind == OpInfo::ReturnKind::kView) {
      continue;
    }
    if (cpu[r].isTensor() && meta_stack[r].isTensor()) {
      meta_stack[r] = c10::IValue(relayout(cpu[r].toTensor(), meta_stack[r].toTensor()));
    } else if (cpu[r].isTensorList() && meta_stack[r].isTensorList()) {
      auto c = cpu[r].toTensorList();
      auto m = meta_stack[r].toTensorList();
      if (c.size() != m.size()) {
        continue;
      }
      c10::List<at::Tensor> out;
      for (size_t e = 0; e < m.size(); ++e) {
        out.push_back(relayout(c.get(e), m.get(e)));
      }
      meta_stack[r] = c10::IValue(std::move(out));
    }
  }
}

}  // namespace

void check_on_cpu(
    const c10::OperatorHandle& op,
    const OpInfo& info,
    const std::vector<c10::IValue>& args,
    std::vector<c10::IValue>& meta_stack) {
  // Layouts: Meta and CPU kernels agree where every input has exactly the
  // strides of a contiguous tensor of its sizes; an in-place op keeps the
  // written tensor's layout.
  const bool layout =
      (info.written_args.empty() || resizes_written(info, args, meta_stack)) && needs_check(args);
  auto call = make_stand_in_call(op, info, args);
  if (!call) {
    return;
  }
  if (run_stand_in_call(op, info, call->stack) && layout) {
    take_cpu_layouts(info, *call, meta_stack);
  }
}

std::exception_ptr run_cpu_call(
    const c10::OperatorHandle& op, std::vector<c10::IValue>& stack, bool may_draw) {
  at::Generator default_gen = at::detail::getDefaultCPUGenerator();
  c10::optional<GenState> saved;
  if (may_draw) {
    saved = GenState::of(default_gen);
  }
  const std::vector<c10::IValue> keep_alive = stack;
  std::exception_ptr error;
  {
    CatchUpSuppressed no_catch_up;
    try {
      at::NoGradGuard no_grad;
      op.callBoxed(&stack);
    } catch (const std::exception&) {
      error = std::current_exception();
    }
  }
  if (saved) {
    saved->apply(default_gen);
  }
  return error;
}

bool is_c10_error(
    const std::exception_ptr& error, const std::function<bool(const c10::Error&)>& accept) {
  if (error == nullptr) {
    return false;
  }
  try {
    std::rethrow_exception(error);
  } catch (const c10::Error& e) {
    return accept(e);
  } catch (...) {
    return false;
  }
}

bool is_missing_kernel_error(const c10::Error& e) {
  if (dynamic_cast<const c10::NotImplementedError*>(&e) != nullptr) {
    return true;
  }
  return std::string(e.what_without_backtrace()).find(" not implemented for '") !=
         std::string::npos;
}

}  // namespace lazyinit
