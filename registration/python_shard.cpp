// lazyinit._C's shard bindings and module walk: wiring, the pieces are
// computed in src/shard.
#include "python_shard.h"

#include <lazyinit/core/lazy_tensor_impl.h>
#include <lazyinit/replay/flat_materialize.h>
#include <lazyinit/shard/placement.h>
#include <lazyinit/shard/shard_replay.h>

#include <torch/python.h>

#include <array>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace lazyinit {
namespace {

// Pending and not discarded.
bool is_lazy(const at::Tensor& t) {
  auto* impl = get_pending_impl(t);
  return impl != nullptr && impl->lazy_storage()->state != StorageState::kDiscarded;
}

// Placements from Python as (kind, a, b, c): (0, ...) Replicate,
// (1, dim, rank, world_size) Shard, (2, start, end, _) FlatRange.
std::vector<Placement> placements_from(const std::vector<std::array<int64_t, 4>>& items) {
  std::vector<Placement> out;
  for (const auto& p : items) {
    switch (p[0]) {
      case 0:
        out.push_back(Placement::replicate());
        break;
      case 1:
        out.push_back(Placement::shard(p[1], p[2], p[3]));
        break;
      case 2:
        out.push_back(Placement::flat_range(p[1], p[2]));
        break;
      default:
        TORCH_CHECK(false, "lazyinit: unknown placement kind ", p[0]);
    }
  }
  return out;
}

// (key, value) pairs of a module's _modules / _parameters / _buffers:
// dicts read directly, other mappings (TorchScript's wrappers) through
// items().
template <typename F>
void for_each_item(const py::object& mapping, F&& f) {
  if (PyDict_Check(mapping.ptr())) {
    PyObject* key = nullptr;
    PyObject* value = nullptr;
    Py_ssize_t pos = 0;
    while (PyDict_Next(mapping.ptr(), &pos, &key, &value)) {
      f(py::handle(key), py::handle(value));
    }
    return;
  }
  for (py::handle item : mapping.attr("items")()) {
    py::tuple pair = py::reinterpret_borrow<py::tuple>(item);
    f(pair[0], pair[1]);
  }
}

// `head` + `tail` (Python strings), or `tail` alone where `head` is empty.
py::object concat(const py::object& head, py::handle tail) {
  if (PyUnicode_GET_LENGTH(head.ptr()) == 0) {
    return py::reinterpret_borrow<py::object>(tail);
  }
  PyObject* joined = PyUnicode_Concat(head.ptr(), tail.ptr());
  if (joined == nullptr) {
    throw py::error_already_set();  // a key that is not a string
  }
  return py::reinterpret_steal<py::object>(joined);
}

py::object attr_of(const py::object& obj, const py::object& name) {
  PyObject* value = PyObject_GetAttr(obj.ptr(), name.ptr());
  if (value == nullptr) {
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::object>(value);
}

// Calls visit(name, tensor, is_parameter) for every parameter and buffer of
// `root`, once each, in named_parameters() then named_buffers() order
// (modules in named_modules() order: depth first, each module once; tied
// tensors under their first name). The same walk as Python's, without a
// generator frame per module and level. `only_lazy`: lazy tensors alone.
template <typename Visit>
void visit_module_tensors(const py::object& root, bool only_lazy, Visit&& visit) {
  static const py::object kModules =
      py::reinterpret_steal<py::object>(PyUnicode_InternFromString("_modules"));
  static const py::object kParameters =
      py::reinterpret_steal<py::object>(PyUnicode_InternFromString("_parameters"));
  static const py::object kBuffers =
      py::reinterpret_steal<py::object>(PyUnicode_InternFromString("_buffers"));
  static const py::object kDot = py::reinterpret_steal<py::object>(PyUnicode_InternFromString("."));
  struct Module {
    py::object dotted;  // "name." ("" at the root)
    py::object module;
  };
  std::vector<Module> modules;
  std::unordered_set<PyObject*> seen;
  std::vector<std::pair<py::object, py::object>> stack;  // (name, module)
  stack.emplace_back(py::str(""), root);
  std::vector<std::pair<py::object, py::object>> children;
  while (!stack.empty()) {
    auto entry = std::move(stack.back());
    stack.pop_back();
    if (!seen.insert(entry.second.ptr()).second) {
      continue;
    }
    // `name.` ("" at the root), made once per module: each name below it
    // is then one concatenation.
    py::object dotted =
        PyUnicode_GET_LENGTH(entry.first.ptr()) == 0 ? entry.first : concat(entry.first, kDot);
    children.clear();
    for_each_item(attr_of(entry.second, kModules), [&](py::handle key, py::handle child) {
      if (!child.is_none()) {
        children.emplace_back(concat(dotted, key), py::reinterpret_borrow<py::object>(child));
      }
    });
    // Popped in order: the same pre-order as named_modules().
    for (auto it = children.rbegin(); it != children.rend(); ++it) {
      stack.push_back(std::move(*it));
    }
    modules.push_back(Module{std::move(dotted), std::move(entry.second)});
  }
  std::unordered_set<PyObject*> seen_tensors;
  for (const py::object* attr : {&kParameters, &kBuffers}) {
    const bool is_param = attr == &kParameters;
    for (const auto& entry : modules) {
      for_each_item(attr_of(entry.module, *attr), [&](py::handle key, py::handle value) {
        if (value.is_none() || !seen_tensors.insert(value.ptr()).second) {
          return;
        }
        if (only_lazy &&
            (!THPVariable_Check(value.ptr()) || !is_lazy(THPVariable_Unpack(value.ptr())))) {
          return;
        }
        visit(concat(entry.dotted, key), value, is_param);
      });
    }
  }
}

// visit_module_tensors as a list of (name, tensor, is_parameter).
py::list module_tensors(const py::object& root, bool only_lazy) {
  py::list out;
  visit_module_tensors(root, only_lazy, [&](py::object name, py::handle value, bool is_param) {
    out.append(py::make_tuple(std::move(name), value, is_param));
  });
  return out;
}

// The parameters and buffers of a module, in visit_module_tensors' order.
struct ModuleTensors {
  std::vector<py::object> names;
  std::vector<py::object> values;
  std::vector<bool> is_param;

  explicit ModuleTensors(const py::object& module) {
    visit_module_tensors(
        module, /*only_lazy=*/false, [&](py::object name, py::handle value, bool param) {
          names.push_back(std::move(name));
          values.push_back(py::reinterpret_borrow<py::object>(value));
          is_param.push_back(param);
        });
  }
};

// The placements of each tensor of a ModuleTensors: lazyinit.ByKind's two
// lists decided here without a Python call a tensor (a 0-dim tensor has
// nothing to split: replicated), or the plugin's placement function, whose
// results are encoded once per distinct object (plugins return the same
// few placement objects for many tensors).
class ModulePlacements {
 public:
  using Encoded = std::vector<std::array<int64_t, 4>>;

  ModulePlacements(
      const ModuleTensors& tensors,
      const py::object& placement_fn,
      const py::function& encode,
      const std::optional<std::pair<Encoded, Encoded>>& by_kind)
      : tensors_(tensors), placement_fn_(placement_fn), encode_(encode), by_kind_(by_kind) {
    if (by_kind_) {
      parameters_ = placements_from(by_kind_->first);
      buffers_ = placements_from(by_kind_->second);
    }
  }

  const std::vector<Placement>& of(size_t i) {
    const py::object& name = tensors_.names[i];
    const py::object& value = tensors_.values[i];
    TORCH_CHECK(
        THPVariable_Check(value.ptr()), "lazyinit: ", py::str(name).cast<std::string>(),
        " is neither None nor a tensor");
    if (by_kind_) {
      if (THPVariable_Unpack(value.ptr()).dim() == 0) {
        return replicate_;
      }
      return tensors_.is_param[i] ? parameters_ : buffers_;
    }
#if PY_VERSION_HEX >= 0x03090000
    PyObject* args[] = {name.ptr(), value.ptr()};  // one call, no argument tuple
    py::object placement = py::reinterpret_steal<py::object>(
        PyObject_Vectorcall(placement_fn_.ptr(), args, 2, nullptr));
#else
    py::object placement = py::reinterpret_steal<py::object>(
        PyObject_CallFunctionObjArgs(placement_fn_.ptr(), name.ptr(), value.ptr(), nullptr));
#endif
    if (!placement) {
      throw py::error_already_set();
    }
    auto it = index_.find(placement.ptr());
    if (it == index_.end()) {
      auto items = encode_(placement).cast<Encoded>();
      it = index_.emplace(placement.ptr(), encoded_.size()).first;
      encoded_.emplace_back(placement, placements_from(items));  // holds the object
    }
    return encoded_[it->second].second;
  }

 private:
  const ModuleTensors& tensors_;
  const py::object& placement_fn_;
  const py::function& encode_;
  const std::optional<std::pair<Encoded, Encoded>>& by_kind_;
  std::vector<Placement> parameters_;
  std::vector<Placement> buffers_;
  const std::vector<Placement> replicate_{Placement::replicate()};
  std::unordered_map<PyObject*, size_t> index_;
  std::vector<std::pair<py::object, std::vector<Placement>>> encoded_;
};

// lazyinit.materialize_module_shards: every parameter's and buffer's piece,
// by name. On a GPU in growing parts (allocation_parts(), by the tensors'
// sizes): the placement calls, planning and allocation of each part run on
// the CPU while the GPU fills the parts before it.
py::dict module_shards(
    const py::object& module,
    const py::object& placement_fn,
    const py::function& encode,
    const std::optional<std::pair<ModulePlacements::Encoded, ModulePlacements::Encoded>>& by_kind,
    const std::string& device) {
  const ModuleTensors all(module);
  ModulePlacements placements(all, placement_fn, encode, by_kind);
  const c10::Device target(device);
  std::vector<int64_t> numels(all.values.size(), 0);  // non-tensors fail in placements.of
  for (size_t i = 0; i < all.values.size(); ++i) {
    if (THPVariable_Check(all.values[i].ptr())) {
      numels[i] = THPVariable_Unpack(all.values[i].ptr()).numel();
    }
  }
  std::vector<at::Tensor> pieces;
  pieces.reserve(all.names.size());
  size_t begin = 0;
  for (size_t end : allocation_parts(numels, target)) {
    std::vector<at::Tensor> tensors;
    std::vector<std::vector<Placement>> lists;
    for (size_t i = begin; i < end; ++i) {
      lists.push_back(placements.of(i));
      tensors.push_back(THPVariable_Unpack(all.values[i].ptr()));
    }
    begin = end;
    py::gil_scoped_release no_gil;
    for (auto& piece : materialize_shards(tensors, lists, target)) {
      pieces.push_back(std::move(piece));
    }
  }
  py::dict out;
  for (size_t i = 0; i < all.names.size(); ++i) {
    out[all.names[i]] = py::cast(pieces[i]);
  }
  return out;
}

}  // namespace

void bind_shard(py::module& m) {
  m.def("_chunk_bounds", &chunk_bounds, py::arg("size"), py::arg("rank"), py::arg("world_size"));
  // The shape of the piece `placements` leave of a tensor of `sizes`.
  m.def(
      "_piece_shape",
      [](const std::vector<int64_t>& sizes, const std::vector<std::array<int64_t, 4>>& placements) {
        return local_piece(sizes, placements_from(placements)).shape();
      },
      py::arg("sizes"), py::arg("placements"));
  m.def("_module_tensors", &module_tensors, py::arg("module"), py::arg("only_lazy") = false);
  m.def(
      "_materialize_shard",
      [](const at::Tensor& t, const std::vector<std::array<int64_t, 4>>& placements,
         const std::string& device, const std::optional<at::Tensor>& dest) {
        // `dest`: a flat, contiguous tensor of the piece's numel and t's dtype
        // on `device` (lazyinit.materialize_shard(out=...) checks it), which
        // receives the piece.
        auto list = placements_from(placements);
        py::gil_scoped_release no_gil;
        return materialize_shard(t, list, c10::Device(device), dest.value_or(at::Tensor()));
      },
      py::arg("tensor"), py::arg("placements"), py::arg("device"), py::arg("dest") = py::none());
  m.def(
      "_materialize_shards", [](const std::vector<at::Tensor>& tensors,
                                const std::vector<std::vector<std::array<int64_t, 4>>>& placements,
                                const std::string& device) {
        std::vector<std::vector<Placement>> lists;
        for (const auto& p : placements) {
          lists.push_back(placements_from(p));
        }
        py::gil_scoped_release no_gil;
        return materialize_shards(tensors, lists, c10::Device(device));
      });
  m.def("_materialize_module_shards", &module_shards);
  m.def("_shard_stats", [] {
    ShardStats s = shard_stats();
    py::dict d;
    d["shards"] = s.shards;
    d["pushed_down"] = s.pushed_down;
    d["fallbacks"] = s.fallbacks;
    d["whole"] = s.whole;
    d["rng_scratch_runs"] = s.rng_scratch_runs;
    d["draws_skipped"] = s.draws_skipped;
    d["fallback_reasons"] = s.fallback_reasons;
    return d;
  });
  m.def("_reset_shard_stats", &reset_shard_stats);
  m.def("_shard_fell_back", [](const at::Tensor& t) {
    auto* impl = get_pending_impl(t);
    return impl != nullptr && storage_fell_back(impl->lazy_storage()->id);
  });
}

}  // namespace lazyinit
