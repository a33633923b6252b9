// lazyinit._C: the Python binding. Wiring only; the logic is in src/.
#include <lazyinit/device.h>
#include <lazyinit/graph.h>
#include <lazyinit/lazy_tensor_impl.h>
#include <lazyinit/flat.h>
#include <lazyinit/philox_region.h>
#include <lazyinit/registration.h>
#include <lazyinit/replay.h>
#include <lazyinit/rng.h>
#include <lazyinit/shard_replay.h>

#include <ATen/ops/as_strided.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/python.h>

#include <array>
#include <string>
#include <vector>

namespace py = pybind11;

namespace lazyinit {
namespace {

// 0: not a lazyinit tensor, 1: lazy, 2: materialized by lazyinit.
int tensor_state(const at::Tensor& t) {
  auto* impl = get_lazy_impl(t);
  if (impl == nullptr) {
    return 0;
  }
  return impl->is_pending() ? 1 : 2;
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

}  // namespace
}  // namespace lazyinit

PYBIND11_MODULE(_C, m) {
  using namespace lazyinit;
  set_blocking_lock_hook(&wait_without_gil);
  m.doc() = "lazyinit's C++ core: the lazy device backend.";
  m.def("_register", &register_backend,
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
  m.def("_home_device", [](const at::Tensor& t) {
    return pending_storage(t).home_device.str();
  });
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
  m.def("_initial_seed", &rng_initial_seed);
  m.def(
      "_philox_region_fill",
      [](const std::vector<std::pair<int64_t, at::Tensor>>& pieces, const std::string& kind,
         uint64_t seed, uint64_t offset, int64_t numel, int64_t grid_limit, double a,
         double b) {
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
         const std::string& device) {
        auto list = placements_from(placements);
        py::gil_scoped_release no_gil;
        return materialize_shard(t, list, c10::Device(device));
      });
  m.def(
      "_materialize_shards",
      [](const std::vector<at::Tensor>& tensors,
         const std::vector<std::vector<std::array<int64_t, 4>>>& placements,
         const std::string& device) {
        std::vector<std::vector<Placement>> lists;
        for (const auto& p : placements) {
          lists.push_back(placements_from(p));
        }
        py::gil_scoped_release no_gil;
        return materialize_shards(tensors, lists, c10::Device(device));
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
  m.def("_rng_catch_up", [] {
    py::gil_scoped_release no_gil;
    rng_catch_up_default();
  });
}
