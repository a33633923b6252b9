// The recorder: one boxed kernel for every op that touches a lazy tensor or
// is a factory on the lazy device. It learns output shapes from the Meta
// kernel and records the call into the graph, following the op's schema:
// writes append to the written storage's tape, views share a storage, other
// outputs start new storages. Ops that cannot be recorded run early.
#include <lazyinit/record/recorder.h>

#include <lazyinit/core/device.h>
#include <lazyinit/core/lazy_tensor_impl.h>
#include <lazyinit/core/tensor_args.h>
#include <lazyinit/record/capture.h>
#include <lazyinit/record/early.h>
#include <lazyinit/record/kernel_check.h>
#include <lazyinit/record/layout.h>
#include <lazyinit/record/meta_cache.h>
#include <lazyinit/record/op_info.h>
#include <lazyinit/record/overlap.h>
#include <lazyinit/rng/chain.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ExpandUtils.h>
#include <ATen/ops/as_strided.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
#include <ATen/ops/result_type.h>
#include <c10/core/DefaultDtype.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <torch/csrc/jit/runtime/operator.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <limits>
#include <string>

namespace lazyinit {
namespace {

at::Tensor meta_for_lazy(const LazyTensorImpl& impl) {
  const auto& storage = *impl.lazy_storage();
  auto options = at::TensorOptions().dtype(storage.dtype).device(at::kMeta);
  const int64_t itemsize = static_cast<int64_t>(impl.dtype().itemsize());
  if (impl.storage_offset() == 0 && impl.geometry().extent() * itemsize == storage.nbytes) {
    // The view covers its storage exactly (the common case): one op.
    return at::empty_strided(impl.sizes(), impl.strides(), options.dtype(impl.dtype()));
  }
  auto base = typed_view(at::empty({storage.numel()}, options), impl.dtype());
  return at::as_strided(base, impl.sizes(), impl.strides(), impl.storage_offset());
}

at::Tensor meta_for_real(const at::Tensor& t) {
  // CPU scalars mix with any device and keep their wrapped-number flag,
  // which type promotion depends on.
  if (t.dim() == 0 && t.device().is_cpu()) {
    return t;
  }
  return at::empty_strided(t.sizes(), t.strides(), t.options().device(at::kMeta));
}

// True for errors a Meta kernel raises because it needs values.
bool is_meta_limitation(const c10::Error& e) {
  std::string msg = e.what_without_backtrace();
  std::transform(msg.begin(), msg.end(), msg.begin(), [](unsigned char c) {
    return static_cast<char>(std::tolower(c));
  });
  return msg.find("meta") != std::string::npos;
}

int64_t tensor_version(const at::Tensor& t) {
  return t.is_inference() ? -1 : static_cast<int64_t>(t._version());
}

struct Inputs {
  LazyStorage* written = nullptr;  // the one lazy storage the op writes
  std::string early_reason;        // non-empty: record nothing, run early
};

Inputs classify(const OpInfo& info, const std::vector<c10::IValue>& args) {
  Inputs in;
  for (size_t i : info.device_args) {
    if (args[i].isDevice() && !is_lazy_device(args[i].toDevice())) {
      in.early_reason = "its result is on " + args[i].toDevice().str();
      return in;
    }
  }
  if (info.returns_non_tensor) {
    in.early_reason = "it returns values, not tensors";
    return in;
  }
  if (info.returns.empty() && info.written_args.empty() && info.unannotated_writes.empty() &&
      info.has_tensor_args) {
    // Returns nothing and writes nothing: it exists to check values
    // (_linalg_check_errors after linalg.inv / cholesky), and eager raises
    // its error at this call.
    in.early_reason = "it checks values";
    return in;
  }
  for (size_t i : written_args_of(info, args)) {
    std::vector<c10::IValue> one{args[i]};
    for_each_tensor(one, [&](size_t, int64_t, const at::Tensor& t) {
      auto* impl = get_pending_impl(t);
      if (impl == nullptr) {
        in.early_reason = "it writes a real tensor";
      } else if (in.written && in.written != impl->lazy_storage().get()) {
        in.early_reason = "it writes several lazy tensors";
      } else {
        in.written = impl->lazy_storage().get();
      }
    });
  }
  if (!in.early_reason.empty()) {
    in.written = nullptr;
  }
  return in;
}

// Whether `normal_(self, mean, std)` / `uniform_(self, from, to)` is
// plainly valid, so that its Meta kernel would only return self. torch >= 2
// runs those kernels as Python decompositions (torch._refs.normal,
// torch._decomp's uniform: 100-300 us a call, most of a Llama's recording
// time). Anything else (std < 0, NaN, from > to, bounds outside the dtype,
// other dtypes) still goes to the Meta kernel, which raises eager's error.
bool plain_fill_is_valid(OpInfo::PlainFill fill, const std::vector<c10::IValue>& args) {
  if (args.size() < 3 || !args[0].isTensor() || !args[1].isDouble() || !args[2].isDouble()) {
    return false;
  }
  auto* impl = get_pending_impl(args[0].toTensor());
  if (impl == nullptr) {
    return false;
  }
  double max = 0.0;
  switch (c10::typeMetaToScalarType(impl->dtype())) {
    case at::kFloat:
      max = std::numeric_limits<float>::max();
      break;
    case at::kDouble:
      max = std::numeric_limits<double>::max();
      break;
    case at::kBFloat16:
      max = static_cast<double>(std::numeric_limits<c10::BFloat16>::max());
      break;
    case at::kHalf:
      max = static_cast<double>(std::numeric_limits<c10::Half>::max());
      break;
    default:
      return false;
  }
  const double a = args[1].toDouble();
  const double b = args[2].toDouble();
  if (fill == OpInfo::PlainFill::kNormal) {
    return b >= 0.0;  // std; NaN fails
  }
  // uniform_impl_'s checks: both bounds within the dtype, from <= to, and
  // to - from within the dtype.
  return std::abs(a) <= max && std::abs(b) <= max && a <= b && b - a <= max;
}

// Runs the op's Meta kernel on stand-ins of the arguments. Returns false
// when the op cannot run on Meta (no kernel, or it needs values).
bool infer_on_meta(
    const c10::OperatorHandle& op,
    const OpInfo& info,
    const std::vector<c10::IValue>& args,
    std::vector<c10::IValue>& meta_stack) {
  meta_stack = args;
  copy_tensor_lists(meta_stack);
  for_each_tensor(args, [&](size_t i, int64_t e, const at::Tensor& t) {
    auto* impl = get_pending_impl(t);
    set_tensor(meta_stack, i, e, impl ? meta_for_lazy(*impl) : meta_for_real(t));
  });
  for (size_t i : info.device_args) {
    if (meta_stack[i].isDevice()) {
      meta_stack[i] = c10::IValue(c10::Device(c10::kMeta));
    }
  }
  try {
    op.redispatchBoxed(c10::DispatchKeySet(c10::DispatchKey::Meta), &meta_stack);
  } catch (const c10::NotImplementedError&) {
    return false;
  } catch (const c10::Error& e) {
    if (is_meta_limitation(e)) {
      return false;
    }
    throw;
  } catch (const std::exception&) {
    // Meta kernels written in Python (torch._meta_registrations) raise
    // Python exceptions, e.g. NotImplementedError for nonzero on torch 2.x.
    return false;
  }
  return true;
}

// In-place random fills check their scalar arguments in the CPU kernel
// only (exponential_'s lambda, bernoulli_'s p, geometric_'s p,
// log_normal_'s std): the Meta kernels accept anything. Where an op draws
// (a Generator? argument) and every tensor it takes is one it writes, the
// CPU kernel runs on empty stand-ins with a scratch generator, so that eager's
// error comes at this call. An empty tensor draws nothing, and the scratch
// generator is not the caller's.
void check_random_arguments_on_cpu(
    const c10::OperatorHandle& op, const OpInfo& info, const std::vector<c10::IValue>& args) {
  if (info.generator_arg < 0 || info.written_args.empty()) {
    return;
  }
  bool only_written = true;
  for_each_tensor(args, [&](size_t i, int64_t, const at::Tensor&) {
    only_written =
        only_written &&
        std::find(info.written_args.begin(), info.written_args.end(), i) != info.written_args.end();
  });
  if (!only_written) {
    return;
  }
  std::vector<c10::IValue> stack = args;
  copy_tensor_lists(stack);
  for_each_tensor(args, [&](size_t i, int64_t e, const at::Tensor& t) {
    set_tensor(stack, i, e, at::empty({0}, t.options().device(at::kCPU)));
  });
  stack[static_cast<size_t>(info.generator_arg)] = c10::IValue(at::detail::createCPUGenerator());
  op.redispatchBoxed(c10::DispatchKeySet(c10::DispatchKey::CPU), &stack);
}

// `self.copy_(src)`: src must broadcast to self's shape. The CPU kernel
// checks it (TensorIterator, self's sizes first), the Meta kernel does not.
void check_copy_shapes(const OpInfo& info, const std::vector<c10::IValue>& args) {
  if (!info.is_copy || args.size() < 2 || !args[0].isTensor() || !args[1].isTensor()) {
    return;
  }
  const auto self_sizes = args[0].toTensor().sizes();
  const auto shape = at::infer_size_dimvector(self_sizes, args[1].toTensor().sizes());
  TORCH_CHECK(
      shape == self_sizes, "output with shape ", self_sizes, " doesn't match the broadcast shape ",
      shape);
}

// `self.mul_(other)` & co.: the result type must cast to self's dtype
// (TensorIterator's check on the CPU).
void check_in_place_promotion(const OpInfo& info, const std::vector<c10::IValue>& args) {
  if (!info.in_place_arithmetic || args.size() < 2 || !args[0].isTensor()) {
    return;
  }
  const at::Tensor& self = args[0].toTensor();
  c10::ScalarType result;
  if (args[1].isTensor()) {
    result = at::result_type(self, args[1].toTensor());
  } else if (args[1].isScalar()) {
    result = at::result_type(self, args[1].toScalar());
  } else {
    return;
  }
  if (info.true_division && c10::isIntegralType(result, /*includeBool=*/true)) {
    result = c10::typeMetaToScalarType(c10::get_default_dtype());  // int / int is a float
  }
  TORCH_CHECK(
      c10::canCast(result, self.scalar_type()), "result type ", result,
      " can't be cast to the desired output type ", self.scalar_type());
}

// The outputs' metadata: infer_on_meta, then check_on_cpu, remembered by
// call signature (meta_cache.h). Valid plain fills skip all three: their
// output is their input (and check_on_cpu leaves their layout alone).
bool infer_outputs(
    const c10::OperatorHandle& op,
    const OpInfo& info,
    const std::vector<c10::IValue>& args,
    std::vector<c10::IValue>& meta_stack) {
  if (info.plain_fill != OpInfo::PlainFill::kNone && plain_fill_is_valid(info.plain_fill, args)) {
    meta_stack = {c10::IValue(meta_for_lazy(*get_pending_impl(args[0].toTensor())))};
    return true;
  }
  check_copy_shapes(info, args);
  check_in_place_promotion(info, args);
  MetaKey key;
  const bool keyed = meta_key(op, args, &key);
  if (keyed) {
    if (const auto* known = find_meta(key)) {
      meta_stack = *known;
      return true;
    }
  }
  if (!infer_on_meta(op, info, args, meta_stack)) {
    return false;
  }
  check_random_arguments_on_cpu(op, info, args);
  check_on_cpu(op, info, args, meta_stack);
  if (keyed) {
    store_meta(std::move(key), meta_stack);
  }
  return true;
}

NodePtr make_node(
    const c10::OperatorHandle& op,
    const OpInfo& info,
    const std::vector<c10::IValue>& args,
    LazyStorage* written) {
  auto node = std::make_shared<Node>();
  node->op = op;
  node->default_dtype = c10::get_default_dtype();
  node->args = args;
  copy_tensor_lists(node->args);
  for_each_tensor(args, [&](size_t i, int64_t e, const at::Tensor& t) {
    ArgSlot slot;
    slot.arg = i;
    slot.element = e;
    if (auto* impl = get_pending_impl(t)) {
      auto& storage = impl->lazy_storage();
      storage->check_usable();
      slot.ref.geometry = impl->geometry();
      slot.ref.dtype = impl->dtype();
      if (storage.get() == written) {
        slot.ref.kind = TensorRef::Kind::kSelf;
        if (node->self_slot < 0 &&
            std::find(info.written_args.begin(), info.written_args.end(), i) !=
                info.written_args.end()) {
          node->self_slot = static_cast<int64_t>(node->tensors.size());
        }
      } else {
        slot.ref.kind = TensorRef::Kind::kLazy;
        slot.ref.storage = storage;
        slot.ref.version = storage->version;
        storage->current_readers.push_back(node);
      }
    } else {
      // The values as of now: a copy, unless an immutable source.
      CapturedSource source = capture_source(t);
      slot.ref.kind = TensorRef::Kind::kReal;
      slot.ref.real = source.tensor;
      slot.ref.copied = source.copied;
      slot.ref.version = tensor_version(source.tensor);
      slot.ref.real_data = source.tensor.has_storage() ? source.tensor.storage().data() : nullptr;
    }
    set_tensor(node->args, i, e, at::Tensor());
    node->tensors.push_back(std::move(slot));
  });
  for (size_t i : info.device_args) {
    if (args[i].isDevice()) {
      node->device_args.push_back(i);
    }
  }
  if (written != nullptr) {
    node->self_numel = written->numel();
    node->self_dtype = written->dtype;
  }
  return node;
}

// torch 1.13's Meta kernels infer `arange(8.0)` as int64 and `full(s, 1)` as
// float32, unlike the CPU kernels. Resolve dtype=None for them from their
// scalars the way the CPU kernels do, before the Meta kernel runs.
void resolve_scalar_factory_dtype(
    const c10::OperatorHandle& op, const OpInfo& info, std::vector<c10::IValue>& args) {
  if (info.has_tensor_args || info.dtype_arg < 0 || !args[info.dtype_arg].isNone()) {
    return;
  }
  const auto& name = op.schema().name();
  const auto& arguments = op.schema().arguments();
  c10::optional<c10::ScalarType> dtype;
  if (name == "aten::full") {
    for (size_t i = 0; i < arguments.size(); ++i) {
      if (arguments[i].name() == "fill_value" && args[i].isScalar()) {
        const auto v = args[i].toScalar();
        dtype = v.isBoolean()                         ? at::kBool
                : v.isIntegral(/*includeBool=*/false) ? at::kLong
                : v.isComplex() ? c10::toComplexType(c10::get_default_dtype_as_scalartype())
                                : c10::get_default_dtype_as_scalartype();
      }
    }
  } else if (name == "aten::arange") {
    bool floating = false;
    for (size_t i = 0; i < arguments.size(); ++i) {
      const auto& n = arguments[i].name();
      if ((n == "start" || n == "end" || n == "step") && args[i].isScalar()) {
        floating = floating || args[i].toScalar().isFloatingPoint();
      }
    }
    dtype = floating ? c10::get_default_dtype_as_scalartype() : at::kLong;
  }
  if (dtype.has_value()) {
    args[info.dtype_arg] = c10::IValue(static_cast<int64_t>(*dtype));
  }
}

// Factories resolve dtype=None from global defaults at run time; pin the
// dtype seen now so a later torch.set_default_dtype cannot change replay.
void pin_factory_dtype(
    Node& node, const OpInfo& info, const std::vector<c10::IValue>& meta_returns) {
  if (info.has_tensor_args || info.dtype_arg < 0 || !node.args[info.dtype_arg].isNone() ||
      meta_returns.empty() || !meta_returns[0].isTensor()) {
    return;
  }
  node.args[info.dtype_arg] =
      c10::IValue(static_cast<int64_t>(meta_returns[0].toTensor().scalar_type()));
}

at::Tensor new_storage_output(
    const NodePtr& node, const at::Tensor& meta_out, int64_t output, int64_t element) {
  auto storage = c10::make_intrusive<LazyStorage>(
      static_cast<int64_t>(meta_out.storage().nbytes()), meta_out.dtype(), default_device());
  storage->creation_geometry = Geometry::of(meta_out);
  storage->tape.push_back(LazyStorage::Entry{node, output, element});
  storage->version = 0;
  return make_lazy_tensor(storage, storage->creation_geometry);
}

// A view must lie inside its storage. CPU tensors check it when their
// storage is set (as_strided beyond the end raises); torch 2.x's Meta
// kernel for as_strided does not, so the recorder does, with eager's words.
void check_view_in_bounds(const Geometry& g, caffe2::TypeMeta dtype, const LazyStorage& storage) {
  const int64_t itemsize = static_cast<int64_t>(dtype.itemsize());
  const int64_t needed = g.extent() * itemsize;
  TORCH_CHECK(
      needed <= storage.nbytes, "setStorage: sizes ", c10::IntArrayRef(g.sizes), ", strides ",
      c10::IntArrayRef(g.strides), ", storage offset ", g.offset, ", and itemsize ", itemsize,
      " requiring a storage size of ", needed, " are out of bounds for storage of size ",
      storage.nbytes);
}

// The outputs of a recorded call, built from the Meta kernel's outputs.
std::vector<c10::IValue> make_outputs(
    const OpInfo& info,
    const NodePtr& node,
    const std::vector<c10::IValue>& args,
    const std::vector<c10::IValue>& meta_returns) {
  std::vector<c10::IValue> outputs;
  for (size_t r = 0; r < meta_returns.size(); ++r) {
    const auto& ret = info.returns[r];
    const auto& value = meta_returns[r];
    if (ret.kind == OpInfo::ReturnKind::kMutated) {
      outputs.push_back(args[ret.arg]);
      continue;
    }
    auto wrap = [&](const at::Tensor& meta_out, int64_t element) -> at::Tensor {
      if (!meta_out.defined()) {
        return meta_out;
      }
      if (ret.kind == OpInfo::ReturnKind::kView) {
        auto* base = get_pending_impl(
            args[ret.arg].isTensor() ? args[ret.arg].toTensor()
                                     : args[ret.arg].toList().get(0).toTensor());
        TORCH_INTERNAL_ASSERT(base != nullptr);
        const Geometry g = Geometry::of(meta_out);
        check_view_in_bounds(g, meta_out.dtype(), *base->lazy_storage());
        at::Tensor view = make_lazy_tensor(base->lazy_storage(), g, meta_out.dtype());
        note_fresh_view(view);
        return view;
      }
      return new_storage_output(node, meta_out, static_cast<int64_t>(r), element);
    };
    if (value.isTensor()) {
      outputs.emplace_back(wrap(value.toTensor(), -1));
    } else if (value.isTensorList()) {
      auto list = value.toTensorList();
      c10::List<at::Tensor> out;
      for (size_t e = 0; e < list.size(); ++e) {
        out.push_back(wrap(list.get(e), static_cast<int64_t>(e)));
      }
      outputs.emplace_back(std::move(out));
    } else {
      outputs.push_back(value);
    }
  }
  return outputs;
}

// Some ops (resize_, out= variants) change the geometry of what they write.
void follow_written_geometry(
    const OpInfo& info,
    const std::vector<c10::IValue>& args,
    const std::vector<c10::IValue>& meta_args) {
  for (size_t i : info.written_args) {
    if (!args[i].isTensor() || !meta_args[i].isTensor()) {
      continue;
    }
    auto* impl = get_pending_impl(args[i].toTensor());
    const auto& meta = meta_args[i].toTensor();
    Geometry g = Geometry::of(meta);
    if (impl == nullptr || g == impl->geometry()) {
      continue;
    }
    auto& storage = *impl->lazy_storage();
    const int64_t needed = g.extent() * static_cast<int64_t>(impl->dtype().itemsize());
    storage.nbytes = std::max(storage.nbytes, needed);
    impl->set_geometry(g);
  }
}

// The lazy impls a view op makes views of (null where it returns anything
// else).
std::vector<LazyTensorImpl*> view_bases(const OpInfo& info, const std::vector<c10::IValue>& args) {
  std::vector<LazyTensorImpl*> bases;
  for (const auto& ret : info.returns) {
    if (ret.kind != OpInfo::ReturnKind::kView || !args[ret.arg].isTensor()) {
      return {};
    }
    auto* base = get_pending_impl(args[ret.arg].toTensor());
    if (base == nullptr) {
      return {};
    }
    bases.push_back(base);
  }
  return bases;
}

// A view of a discarded tensor is metadata only, as any view: it shares
// the discarded storage and raises like it at its first use (finding 47
// met one made by autograd, before lazy views dropped its repeats).
bool views_discarded(const std::vector<LazyTensorImpl*>& bases) {
  return !bases.empty() && std::all_of(bases.begin(), bases.end(), [](const LazyTensorImpl* base) {
    return base->lazy_storage()->state == StorageState::kDiscarded;
  });
}

// Lazy inputs must have a value to replay (not discarded, unless only
// viewed); a meta tensor among lazy ones has none.
void check_inputs(
    const c10::OperatorHandle& op, const std::vector<c10::IValue>& args, bool viewing_discarded) {
  for_each_tensor(args, [&](size_t, int64_t, const at::Tensor& t) {
    if (auto* impl = get_pending_impl(t)) {
      if (!viewing_discarded) {
        impl->lazy_storage()->check_usable();
      }
    } else {
      TORCH_CHECK(
          !t.is_meta(), "lazyinit: ", op.schema().operator_name(),
          " got a tensor on the "
          "meta device together with lazy tensors; meta tensors have no values "
          "to replay. Create it on the lazy device (or a real one) instead.");
    }
  });
}

// The call's node: checked as eager checks the call (overlaps, argument
// values), positioned on its generator, appended to the tape of the
// storage it writes.
NodePtr record_node(
    const c10::OperatorHandle& op,
    const OpInfo& info,
    const std::vector<c10::IValue>& args,
    const Inputs& in,
    const std::vector<c10::IValue>& meta_stack) {
  // Written arguments as the Meta kernel left them (returned as themselves).
  std::vector<c10::IValue> meta_args(args.size());
  for (size_t r = 0; r < info.returns.size() && r < meta_stack.size(); ++r) {
    if (info.returns[r].kind == OpInfo::ReturnKind::kMutated) {
      meta_args[info.returns[r].arg] = meta_stack[r];
    }
  }
  if (in.written != nullptr) {
    check_overlap(op, info, args);
  }
  check_on_cpu_kernel(op, info, args);
  NodePtr node = make_node(op, info, args, in.written);
  pin_factory_dtype(*node, info, meta_stack);
  if (info.may_fail_on_values) {
    node->recorded_at = recording_location();
  }
  if (info.random) {
    c10::optional<at::Generator> gen;
    if (info.generator_arg >= 0 && args[info.generator_arg].isGenerator()) {
      gen = args[info.generator_arg].toGenerator();
    }
    rng_record(node, gen);
  }
  if (in.written != nullptr) {
    follow_written_geometry(info, args, meta_args);
    in.written->append(node);
  }
  return node;
}

}  // namespace

void record_op(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  auto lock = lock_graph();
  forget_fresh_views_replay();
  const auto& info = op_info(op);
  const size_t num_args = op.schema().arguments().size();
  std::vector<c10::IValue> args(stack->end() - num_args, stack->end());

  const bool viewing_discarded = views_discarded(view_bases(info, args));
  check_inputs(op, args, viewing_discarded);
  resolve_scalar_factory_dtype(op, info, args);
  Inputs in = classify(info, args);
  if (!in.early_reason.empty()) {
    run_early(op, stack, in.early_reason);
    return;
  }
  // Keep args[] as the caller's values; the meta stack holds stand-ins and,
  // after the call, the Meta kernel's outputs.
  std::vector<c10::IValue> meta_stack;
  if (!infer_outputs(op, info, args, meta_stack)) {
    run_early(op, stack, "it has no Meta kernel or needs values");
    return;
  }
  if (viewing_discarded) {
    return_outputs(stack, num_args, make_outputs(info, nullptr, args, meta_stack));
    return;
  }
  const bool fresh_tensor_out = std::any_of(
      info.returns.begin(), info.returns.end(),
      [](const OpInfo::Return& r) { return r.kind == OpInfo::ReturnKind::kFresh; });
  if (in.written != nullptr && fresh_tensor_out) {
    // A write plus new outputs (e.g. batch_norm's running stats): rare
    // during construction; running it once for real keeps both exact.
    run_early(op, stack, "it writes a lazy tensor and also returns new ones");
    return;
  }
  NodePtr node = record_node(op, info, args, in, meta_stack);
  return_outputs(stack, num_args, make_outputs(info, node, args, meta_stack));
}

}  // namespace lazyinit
