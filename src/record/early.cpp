#include <lazyinit/record/early.h>

#include <lazyinit/core/device.h>
#include <lazyinit/core/lazy_tensor_impl.h>
#include <lazyinit/core/tensor_args.h>
#include <lazyinit/record/op_info.h>
#include <lazyinit/replay/replay.h>
#include <lazyinit/rng/chain.h>

#include <ATen/ops/as_strided.h>
#include <ATen/ops/equal.h>
#include <c10/util/Exception.h>

#include <map>
#include <set>
#include <sstream>

namespace lazyinit {
namespace {

// A new lazy storage whose value is the real tensor `t`.
at::Tensor wrap_constant(const at::Tensor& t) {
  const int64_t nbytes = static_cast<int64_t>(t.storage().nbytes());
  auto storage = c10::make_intrusive<LazyStorage>(nbytes, t.dtype(), default_device());
  const int64_t numel = nbytes / static_cast<int64_t>(t.dtype().itemsize());
  auto flat = at::as_strided(t, {numel}, {1}, 0);
  auto node = std::make_shared<Node>();
  node->constant = flat;
  storage->creation_geometry = Geometry::of(t);
  storage->tape.push_back(LazyStorage::Entry{node, 0, -1});
  storage->version = 0;
  storage->cached = flat;
  storage->cached_version = 0;
  storage->early = true;
  return make_lazy_tensor(storage, Geometry::of(t));
}

bool has_real_device_arg(const OpInfo& info, const std::vector<c10::IValue>& args) {
  for (size_t i : info.device_args) {
    if (args[i].isDevice() && !is_lazy_device(args[i].toDevice())) {
      return true;
    }
  }
  return false;
}

// The values standing for each lazy storage among a call's arguments.
// Written ones are copies (the cached value of the old version must stay
// intact); `before` holds their values before the call.
struct EarlyInputs {
  std::set<LazyStorage*> written;
  std::map<LazyStorage*, at::Tensor> values;
  std::map<LazyStorage*, at::Tensor> before;
};

EarlyInputs early_inputs(const OpInfo& info, const std::vector<c10::IValue>& args) {
  EarlyInputs in;
  for (size_t i : written_args_of(info, args)) {
    std::vector<c10::IValue> one{args[i]};
    for_each_tensor(one, [&](size_t, int64_t, const at::Tensor& t) {
      if (auto* impl = get_pending_impl(t)) {
        in.written.insert(impl->lazy_storage().get());
      }
    });
  }
  for_each_tensor(args, [&](size_t, int64_t, const at::Tensor& t) {
    auto* impl = get_pending_impl(t);
    if (impl == nullptr || in.values.count(impl->lazy_storage().get())) {
      return;
    }
    auto* storage = impl->lazy_storage().get();
    at::Tensor value = early_value(*storage);
    const bool written = in.written.count(storage) > 0;
    in.values[storage] = written ? value.clone() : value;
    if (written) {
      in.before[storage] = value;
    }
  });
  return in;
}

// The call's arguments with every lazy tensor replaced by a view of its
// value and the lazy device by `device`.
std::vector<c10::IValue> real_arguments(
    const OpInfo& info,
    const std::vector<c10::IValue>& args,
    const EarlyInputs& in,
    c10::Device device) {
  std::vector<c10::IValue> real = args;
  copy_tensor_lists(real);
  for_each_tensor(args, [&](size_t i, int64_t e, const at::Tensor& t) {
    if (auto* impl = get_pending_impl(t)) {
      set_tensor(
          real, i, e,
          view_of(in.values.at(impl->lazy_storage().get()), impl->dtype(), impl->geometry()));
    }
  });
  for (size_t i : info.device_args) {
    if (real[i].isDevice() && is_lazy_device(real[i].toDevice())) {
      real[i] = c10::IValue(device);
    }
  }
  return real;
}

// The written storages take the values the call left.
void keep_writes(const EarlyInputs& in, const std::set<LazyStorage*>& storages) {
  for (auto* storage : storages) {
    auto node = std::make_shared<Node>();
    node->constant = in.values.at(storage);
    storage->append(node);
    storage->cached = node->constant;
    storage->cached_version = storage->version;
    storage->early = true;
  }
}

// A call that raised: eager keeps what it wrote before raising
// (torch.normal's out= fills, then refuses an overlapping mean), so the
// lazy tensors it changed keep it; the error says where the call ran.
void keep_partial_writes(
    c10::Error& e,
    const c10::OperatorHandle& op,
    const EarlyInputs& in,
    c10::Device device,
    const std::string& reason) {
  std::set<LazyStorage*> changed;
  for (auto* storage : in.written) {
    const at::Tensor& value = in.values.at(storage);
    const at::Tensor& before = in.before.at(storage);
    if (value.sizes() == before.sizes() && !at::equal(value, before)) {
      changed.insert(storage);
    }
  }
  keep_writes(in, changed);
  std::ostringstream context;
  context << "lazyinit: " << op.schema().operator_name() << " ran on the values of its "
          << "lazy inputs on " << device.str() << " (" << reason << ") and raised "
          << "the error above, as eager raises it. If this mixes lazy tensors with real "
          << "tensors on another device, materialize the lazy ones there first "
          << "(lazyinit.materialize(t, device=...)) or create the context with that "
          << "default_device.";
  e.add_context(context.str());
}

// The call's results as the lazy call returns them: in-place results are
// the argument objects, views of a lazy input are lazy views, other tensors
// are new lazy constants (real where a real device was asked for).
std::vector<c10::IValue> lazy_outputs(
    const OpInfo& info,
    const std::vector<c10::IValue>& args,
    const std::vector<c10::IValue>& real,
    const EarlyInputs& in) {
  const bool real_result = has_real_device_arg(info, args);
  auto wrap = [&](const at::Tensor& t) -> at::Tensor {
    if (!t.defined()) {
      return t;
    }
    for (const auto& kv : in.values) {
      if (t.storage().is_alias_of(kv.second.storage())) {
        at::Tensor view = make_lazy_tensor(
            c10::intrusive_ptr<LazyStorage>::unsafe_reclaim_from_nonowning(kv.first),
            Geometry::of(t), t.dtype());
        note_fresh_view(view);  // a view of a lazy input (lazy_tensor_impl.h)
        return view;
      }
    }
    return real_result ? t : wrap_constant(t);
  };
  std::vector<c10::IValue> outputs;
  for (size_t r = 0; r < real.size(); ++r) {
    const auto& v = real[r];
    if (r < info.returns.size() && info.returns[r].kind == OpInfo::ReturnKind::kMutated) {
      outputs.push_back(args[info.returns[r].arg]);  // in-place: same object
    } else if (v.isTensor()) {
      outputs.emplace_back(wrap(v.toTensor()));
    } else if (v.isTensorList()) {
      c10::List<at::Tensor> list;
      for (at::Tensor t : v.toTensorList()) {
        list.push_back(wrap(t));
      }
      outputs.emplace_back(std::move(list));
    } else {
      outputs.push_back(v);
    }
  }
  return outputs;
}

}  // namespace

void run_early(const c10::OperatorHandle& op, torch::jit::Stack* stack, const std::string& reason) {
  auto lock = lock_graph();
  const auto& info = op_info(op);
  const size_t num_args = op.schema().arguments().size();
  std::vector<c10::IValue> args(stack->end() - num_args, stack->end());
  const c10::Device device = default_device();

  EarlyInputs in = early_inputs(info, args);
  std::vector<c10::IValue> real = real_arguments(info, args, in, device);
  if (info.random) {
    // Running a random op for real: first put the generator where eager
    // construction would have it.
    c10::optional<at::Generator> gen;
    if (info.generator_arg >= 0 && args[info.generator_arg].isGenerator()) {
      gen = args[info.generator_arg].toGenerator();
    }
    Replayer replayer(device);
    rng_catch_up(gen, replayer);
  }
  // torch 1.13's boxed adapter returns a tuple of references to the `out`
  // arguments (sort.values, max.dim_max, topk.values, ...) after dropping
  // those arguments from the stack: with nothing else holding them, the out
  // tensors (views made above) were freed before being read back. Holding
  // the arguments keeps every referenced tensor alive across the call.
  const std::vector<c10::IValue> keep_alive = real;
  try {
    op.callBoxed(&real);
  } catch (c10::Error& e) {
    // Eager's error, of eager's type (LinAlgError, IndexError, ...): the
    // call ran on the real values of its inputs, as eager runs it.
    keep_partial_writes(e, op, in, device, reason);
    throw;
  }
  keep_writes(in, in.written);

  return_outputs(stack, num_args, lazy_outputs(info, args, real, in));
}

}  // namespace lazyinit
