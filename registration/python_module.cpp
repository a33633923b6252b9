// lazyinit._C: the Python binding. Wiring only; the logic is in src/.
#include <lazyinit/core/device.h>
#include <lazyinit/core/graph.h>
#include <lazyinit/core/lazy_tensor_impl.h>
#include <lazyinit/record/capture.h>
#include <lazyinit/registration.h>
#include <lazyinit/replay/flat_materialize.h>
#include <lazyinit/replay/replay.h>
#include <lazyinit/rng/chain.h>
#include <lazyinit/rng/mt19937_jump.h>
#include <lazyinit/shard/philox_region.h>
#include <lazyinit/shard/shard_replay.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/as_strided.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/python.h>

#include <algorithm>
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

// 0: not a lazyinit tensor, 1: lazy, 2: materialized by lazyinit,
// 3: discarded (lazyinit.discard: no value any more).
int tensor_state(const at::Tensor& t) {
  auto* impl = get_lazy_impl(t);
  if (impl == nullptr) {
    return 0;
  }
  if (!impl->is_pending()) {
    return 2;
  }
  return impl->lazy_storage()->state == StorageState::kDiscarded ? 3 : 1;
}

bool was_early(const at::Tensor& t) {
  auto* impl = get_lazy_impl(t);
  if (impl == nullptr) {
    return false;
  }
  return impl->is_pending() ? impl->lazy_storage()->early : impl->was_early();
}

LazyStorage& pending_storage(const at::Tensor& t) {
  auto* impl = get_pending_impl(t);
  TORCH_CHECK(impl != nullptr, "lazyinit: expected a lazy tensor");
  return *impl->lazy_storage();
}

// A real copy of the current value, computed on the default device; the
// tensor stays lazy (used for printing values, tolist() and numpy()).
at::Tensor value_copy(const at::Tensor& t) {
  auto lock = lock_graph();
  auto* impl = get_pending_impl(t);
  TORCH_CHECK(impl != nullptr, "lazyinit: expected a lazy tensor");
  at::Tensor base = early_value(*impl->lazy_storage());
  return at::as_strided(
             typed_view(base, impl->dtype()), impl->sizes(), impl->strides(),
             impl->storage_offset())
      .clone();
}

void discard(const at::Tensor& t) {
  auto lock = lock_graph();
  auto* impl = get_pending_impl(t);
  if (impl == nullptr) {
    return;
  }
  auto& storage = *impl->lazy_storage();
  // Tensors recorded from this one keep what they read (as after `del`);
  // only the discarded storage loses its value.
  storage.freeze_for_readers();
  // Eager drew these tensors' numbers: the generators keep counting them
  // (those a reader still holds are replayed with it).
  for (auto& entry : storage.tape) {
    if (entry.node->is_random() && entry.node.use_count() == 1) {
      rng_node_released(entry.node);
    }
  }
  storage.tape.clear();
  storage.cached = at::Tensor();
  storage.state = StorageState::kDiscarded;
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
        if (only_lazy && (!THPVariable_Check(value.ptr()) ||
                          tensor_state(THPVariable_Unpack(value.ptr())) != 1)) {
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

// Installed as the graph lock's blocking wait (see lock_graph): a thread
// that holds the GIL releases it while it waits for the lock, so the thread
// holding the lock can run Python (Meta kernels written in Python).
void wait_without_gil(std::recursive_mutex& mutex) {
  if (PyGILState_Check()) {
    py::gil_scoped_release no_gil;
    mutex.lock();
  } else {
    mutex.lock();
  }
}

// The innermost Python frame outside torch and lazyinit, as
// "file:line in function". torch's bindings release the GIL around ops, so
// it is taken here (the graph lock is waited for without it, so this cannot
// deadlock); the thread's frames are there meanwhile.
std::string python_location() {
  if (!Py_IsInitialized()) {
    return {};
  }
  py::gil_scoped_acquire gil;
  PyFrameObject* frame = PyEval_GetFrame();  // borrowed
  Py_XINCREF(frame);
  std::string out;
  while (frame != nullptr && out.empty()) {
    PyCodeObject* code = PyFrame_GetCode(frame);  // new reference
    const char* file = PyUnicode_AsUTF8(code->co_filename);
    const std::string path = file != nullptr ? file : "";
    if (path.find("/torch/") == std::string::npos && path.find("/lazyinit/") == std::string::npos &&
        path.rfind("<frozen", 0) != 0) {
      const char* name = PyUnicode_AsUTF8(code->co_name);
      out = path + ":" + std::to_string(PyFrame_GetLineNumber(frame)) + " in " +
            (name != nullptr ? name : "?");
    }
    Py_DECREF(code);
    PyFrameObject* back = PyFrame_GetBack(frame);  // new reference
    Py_DECREF(frame);
    frame = back;
  }
  Py_XDECREF(frame);
  PyErr_Clear();
  return out;
}

}  // namespace
}  // namespace lazyinit

PYBIND11_MODULE(_C, m) {
  using namespace lazyinit;
  set_blocking_lock_hook(&wait_without_gil);
  set_location_hook(&python_location);
  m.doc() = "lazyinit's C++ core: the lazy device backend.";
  m.def(
      "_register", &register_backend,
      "Registers the lazy backend with the dispatcher (idempotent).");
  m.def("_lazy_device_type", [] {
    return std::string(c10::DeviceTypeName(lazy_device_type(), /*lower_case=*/true));
  });
  m.def("_set_default_device", [](const std::string& device) {
    set_default_device(c10::Device(device));
  });
  m.def("_default_device", [] { return default_device().str(); });
  m.def("_set_in_context", &set_in_context);
  m.def("_tensor_state", &tensor_state);
  m.def("_module_tensors", &module_tensors, py::arg("module"), py::arg("only_lazy") = false);
  m.def("_was_early", &was_early);
  m.def("_home_device", [](const at::Tensor& t) { return pending_storage(t).home_device.str(); });
  m.def(
      "_materialize",
      [](const at::Tensor& t, c10::optional<std::string> device, bool settle) {
        py::gil_scoped_release no_gil;
        c10::optional<c10::Device> target;
        if (device.has_value()) {
          target = c10::Device(*device);
        }
        materialize_tensor(t, target, settle);
      },
      py::arg("tensor"), py::arg("device") = py::none(), py::arg("settle") = true);
  m.def(
      "_materialize_flat",
      [](const std::vector<at::Tensor>& tensors, c10::optional<std::string> device,
         py::object progress) {
        std::function<void(int64_t)> report;
        if (!progress.is_none()) {
          report = [progress](int64_t nbytes) {
            py::gil_scoped_acquire gil;
            progress(nbytes);
          };
        }
        py::gil_scoped_release no_gil;
        c10::optional<c10::Device> target;
        if (device.has_value()) {
          target = c10::Device(*device);
        }
        materialize_flat(tensors, target, report);
      },
      py::arg("tensors"), py::arg("device") = py::none(), py::arg("progress") = py::none());
  m.def("_finish", [] {
    py::gil_scoped_release no_gil;
    finish_materialization();
  });
  m.def("_value_copy", [](const at::Tensor& t) {
    py::gil_scoped_release no_gil;
    return value_copy(t);
  });
  m.def("_replay_count", [](const at::Tensor& t) {
    auto* impl = get_lazy_impl(t);
    TORCH_CHECK(impl != nullptr, "lazyinit: expected a lazyinit tensor");
    return impl->is_pending() ? impl->lazy_storage()->replay_count : impl->replays();
  });
  m.def("_storage_id", [](const at::Tensor& t) { return pending_storage(t).id; });
  m.def("_clone_storage", [](const at::Tensor& t) {
    // A recorded copy of the whole storage behind `t`, as a flat tensor.
    auto storage = LazyStoragePtr::unsafe_reclaim_from_nonowning(&pending_storage(t));
    Geometry flat;
    flat.sizes = {storage->numel()};
    flat.strides = {1};
    return make_lazy_tensor(storage, flat).clone();
  });
  m.def("_view_like", [](const at::Tensor& flat, const at::Tensor& like) {
    // A view of `flat`'s storage with the geometry and dtype of `like`.
    auto* base = get_pending_impl(flat);
    auto* impl = get_pending_impl(like);
    TORCH_CHECK(base && impl, "lazyinit: expected lazy tensors");
    return make_lazy_tensor(base->lazy_storage(), impl->geometry(), impl->dtype());
  });
  m.def("_live_nodes", &live_node_count);
  m.def("_discard", &discard);
  m.def("_fork_prepare", [] {
    py::gil_scoped_release no_gil;  // another thread may need it to finish
    prepare_fork();
  });
  m.def("_fork_parent", &after_fork_in_parent);
  m.def("_fork_child", &after_fork_in_child);
  m.def("_become_empty", [](const at::Tensor& t, const std::string& device) {
    auto lock = lock_graph();
    if (auto* impl = get_pending_impl(t)) {
      LazyStoragePtr storage = impl->lazy_storage();  // outlives the impls' release
      materialize_storage_empty(*storage, c10::Device(device));
    }
  });
  // How many live tensors view t's lazy storage (t included); 0 if t is real.
  m.def("_storage_tensor_count", [](const at::Tensor& t) {
    auto lock = lock_graph();
    auto* impl = get_pending_impl(t);
    if (impl == nullptr) {
      return int64_t{0};
    }
    const auto& impls = impl->lazy_storage()->impls;
    return static_cast<int64_t>(
        std::count_if(impls.begin(), impls.end(), [](const auto& w) { return !w.expired(); }));
  });
  m.def("_register_immutable_source", &register_immutable_source);
  m.def("_register_mapped_source", &register_mapped_source);
  m.def("_is_mapped_source", &is_mapped_source);
  m.def("_prefetch_source", &prefetch_source);
  m.def("_release_source", &release_source);
  m.def("_capture_stats", [] {
    const CaptureStats s = capture_stats();
    py::dict d;
    d["copies"] = s.copies;
    d["bytes"] = s.bytes;
    d["zero_copy"] = s.zero_copy;
    d["mapped_reads"] = s.mapped_reads;
    d["mapped_read_bytes"] = s.mapped_read_bytes;
    d["private_maps"] = s.private_maps;
    return d;
  });
  m.def("_random_runs", &random_runs);
  // The recorded op names of a lazy tensor's storage, creation first
  // (empty for real tensors): for tests and debugging.
  m.def("_tape_ops", [](const at::Tensor& t) {
    auto lock = lock_graph();
    std::vector<std::string> names;
    if (auto* impl = get_pending_impl(t)) {
      for (const auto& entry : impl->lazy_storage()->tape) {
        names.push_back(
            entry.node->is_constant() ? std::string("<constant>")
                                      : entry.node->op->schema().name());
      }
    }
    return names;
  });
  m.def(
      "_check_target_device",
      [](const std::string& device, const std::string& what) {
        check_target_device(c10::Device(device), what.c_str());
      },
      py::arg("device"), py::arg("what") = "");
  m.def("_initial_seed", &rng_initial_seed);
  m.def("_rng_chain_count", &rng_chain_count);
  m.def(
      "_philox_region_fill",
      [](const std::vector<std::pair<int64_t, at::Tensor>>& pieces, const std::string& kind,
         uint64_t seed, uint64_t offset, int64_t numel, int64_t grid_limit, double a, double b) {
        py::gil_scoped_release no_gil;
        TORCH_CHECK(kind == "normal" || kind == "uniform", "kind: 'normal' or 'uniform'");
        std::vector<PhiloxPiece> list;
        for (const auto& piece : pieces) {
          list.push_back(PhiloxPiece{piece.first, piece.second});
        }
        philox_region_fill(
            list, kind == "normal" ? PhiloxFill::kNormal : PhiloxFill::kUniform,
            PhiloxState{seed, offset}, numel, grid_limit, a, b);
      });
  m.def("_set_philox_grid_limits", [](const std::vector<int64_t>& limits) {
    py::gil_scoped_release no_gil;
    set_philox_grid_limits(limits);
  });
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
  m.def(
      "_materialize_module_shards",
      [](const py::object& module, const py::object& placement_fn, const py::function& encode,
         const std::optional<std::pair<
             std::vector<std::array<int64_t, 4>>, std::vector<std::array<int64_t, 4>>>>& by_kind,
         const std::string& device) {
        std::vector<py::object> names;
        std::vector<py::object> values;
        std::vector<bool> is_param;
        visit_module_tensors(
            module, /*only_lazy=*/false, [&](py::object name, py::handle value, bool param) {
              names.push_back(std::move(name));
              values.push_back(py::reinterpret_borrow<py::object>(value));
              is_param.push_back(param);
            });
        // lazyinit.ByKind: placements by kind, decided here without a Python
        // call a tensor. A 0-dim tensor has nothing to split: replicated.
        std::vector<Placement> parameters;
        std::vector<Placement> buffers;
        const std::vector<Placement> replicate{Placement::replicate()};
        if (by_kind) {
          parameters = placements_from(by_kind->first);
          buffers = placements_from(by_kind->second);
        }
        // Plugins return the same few placement objects for many tensors:
        // each is encoded once (held in `encoded`, so its address stays its own).
        std::unordered_map<PyObject*, size_t> index;
        std::vector<std::pair<py::object, std::vector<Placement>>> encoded;
        auto placement_of = [&](size_t i) -> const std::vector<Placement>& {
          TORCH_CHECK(
              THPVariable_Check(values[i].ptr()),
              "lazyinit: ", py::str(names[i]).cast<std::string>(), " is neither None nor a tensor");
          if (by_kind) {
            if (THPVariable_Unpack(values[i].ptr()).dim() == 0) {
              return replicate;
            }
            return is_param[i] ? parameters : buffers;
          }
#if PY_VERSION_HEX >= 0x03090000
          PyObject* args[] = {names[i].ptr(), values[i].ptr()};  // one call, no argument tuple
          py::object placement = py::reinterpret_steal<py::object>(
              PyObject_Vectorcall(placement_fn.ptr(), args, 2, nullptr));
#else
          py::object placement = py::reinterpret_steal<py::object>(PyObject_CallFunctionObjArgs(
              placement_fn.ptr(), names[i].ptr(), values[i].ptr(), nullptr));
#endif
          if (!placement) {
            throw py::error_already_set();
          }
          auto it = index.find(placement.ptr());
          if (it == index.end()) {
            auto items = encode(placement).cast<std::vector<std::array<int64_t, 4>>>();
            it = index.emplace(placement.ptr(), encoded.size()).first;
            encoded.emplace_back(placement, placements_from(items));
          }
          return encoded[it->second].second;
        };
        // On a GPU in growing parts (allocation_parts(), by the tensors'
        // sizes): the placement calls, planning and allocation of each part
        // run on the CPU while the GPU fills the parts before it.
        const c10::Device target(device);
        std::vector<int64_t> numels(values.size(), 0);  // non-tensors fail in placement_of
        for (size_t i = 0; i < values.size(); ++i) {
          if (THPVariable_Check(values[i].ptr())) {
            numels[i] = THPVariable_Unpack(values[i].ptr()).numel();
          }
        }
        std::vector<at::Tensor> pieces;
        pieces.reserve(names.size());
        size_t begin = 0;
        for (size_t end : allocation_parts(numels, target)) {
          std::vector<at::Tensor> tensors;
          std::vector<std::vector<Placement>> lists;
          for (size_t i = begin; i < end; ++i) {
            lists.push_back(placement_of(i));
            tensors.push_back(THPVariable_Unpack(values[i].ptr()));
          }
          begin = end;
          py::gil_scoped_release no_gil;
          for (auto& piece : materialize_shards(tensors, lists, target)) {
            pieces.push_back(std::move(piece));
          }
        }
        py::dict out;
        for (size_t i = 0; i < names.size(); ++i) {
          out[names[i]] = py::cast(pieces[i]);
        }
        return out;
      });
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
  m.def("_mt19937_discard", [](at::Generator& gen, int64_t n, const std::string& how) {
    // Advances a CPU generator by n outputs (benchmarks and tests of the
    // jump-ahead): "step" block by block, "jump", or "auto" as discard_draws.
    TORCH_CHECK(how == "auto" || how == "step" || how == "jump", "how: 'auto', 'step' or 'jump'");
    auto* impl = at::check_generator<at::CPUGeneratorImpl>(gen);
    py::gil_scoped_release no_gil;
    std::lock_guard<std::mutex> lock(gen.mutex());
    at::mt19937 engine = impl->engine();
    mt19937_discard(
        engine, n,
        how == "step"   ? Mt19937Skip::kStep
        : how == "jump" ? Mt19937Skip::kJump
                        : Mt19937Skip::kAuto);
    impl->set_engine(engine);
  });
  m.def("_mt19937_jump_twists", &mt19937_jump_twists);
  m.def("_set_mt19937_jump_twists", &set_mt19937_jump_twists);
  m.def(
      "_rng_catch_up",
      [](c10::optional<at::Generator> gen) {
        if (gen.has_value() && !gen->device().is_cpu()) {
          return;  // lazy draws are counted on CPU generators only
        }
        py::gil_scoped_release no_gil;
        rng_catch_up_default(gen);
      },
      py::arg("generator") = py::none());
  // Replaces a method of a (static) extension type, for the wrappers of
  // torch.Generator's state readers (_patches.py). Such types take no
  // attribute assignment from Python; their dict can be updated from C.
  m.def("_set_type_attribute", [](py::handle type, const std::string& name, py::object value) {
    TORCH_CHECK(PyType_Check(type.ptr()), "lazyinit: expected a type");
    auto* t = reinterpret_cast<PyTypeObject*>(type.ptr());
    PyObject* dict = t->tp_dict;
    TORCH_CHECK(dict != nullptr, "lazyinit: ", t->tp_name, " has no attribute dict");
    if (PyDict_SetItemString(dict, name.c_str(), value.ptr()) != 0) {
      throw py::error_already_set();
    }
    PyType_Modified(t);
  });
}
