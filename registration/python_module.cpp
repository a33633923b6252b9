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
#include "python_shard.h"

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

// The backend, the context's state, and what a tensor is.
void bind_context(py::module& m) {
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
  m.def("_was_early", &was_early);
  m.def("_home_device", [](const at::Tensor& t) { return pending_storage(t).home_device.str(); });
}

// Whole materialization and values.
void bind_materialize(py::module& m) {
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
}

// The recorded graph: storages, views, counters, discard and fork.
void bind_graph(py::module& m) {
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
}

// Captured sources (arrays, checkpoint mappings) and their counters.
void bind_sources(py::module& m) {
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
}

// Generators: positions, Philox fills, mt19937 skips, state readers.
void bind_rng(py::module& m) {
  m.def("_initial_seed", &rng_initial_seed);
  m.def("_rng_chain_count", &rng_chain_count);
  // How many CPU generator states the chain of the first random node of a
  // lazy tensor's tape knows (-1: none): for tests of what replays leave.
  m.def("_rng_known_states", [](const at::Tensor& t) {
    auto lock = lock_graph();
    auto* impl = get_pending_impl(t);
    if (impl != nullptr) {
      for (const auto& entry : impl->lazy_storage()->tape) {
        if (entry.node->is_random()) {
          const auto& states = entry.node->chain->states;
          return static_cast<int64_t>(std::count_if(
              states.begin(), states.end(), [](const auto& s) { return s != nullptr; }));
        }
      }
    }
    return int64_t{-1};
  });
  m.def(
      "_philox_region_fill",
      [](const std::vector<std::pair<int64_t, at::Tensor>>& pieces, const std::string& kind,
         uint64_t seed, uint64_t offset, int64_t numel, int64_t grid_limit, double a, double b) {
        py::gil_scoped_release no_gil;
        TORCH_CHECK(kind == "normal" || kind == "uniform", "kind: 'normal' or 'uniform'");
        std::vector<PhiloxPiece> list;
        for (const auto& piece : pieces) {
          list.push_back(span_out(piece.first, piece.second));
        }
        philox_region_fill(
            list, kind == "normal" ? PhiloxFill::kNormal : PhiloxFill::kUniform,
            PhiloxState{seed, offset}, numel, grid_limit, a, b);
      });
  m.def("_set_philox_grid_limits", [](const std::vector<int64_t>& limits) {
    py::gil_scoped_release no_gil;
    set_philox_grid_limits(limits);
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

}  // namespace
}  // namespace lazyinit

PYBIND11_MODULE(_C, m) {
  lazyinit::set_blocking_lock_hook(&lazyinit::wait_without_gil);
  lazyinit::set_location_hook(&lazyinit::python_location);
  m.doc() = "lazyinit's C++ core: the lazy device backend.";
  lazyinit::bind_context(m);
  lazyinit::bind_materialize(m);
  lazyinit::bind_graph(m);
  lazyinit::bind_sources(m);
  lazyinit::bind_shard(m);
  lazyinit::bind_rng(m);
}
