// Bindings of lazyinit._C for pieces of tensors and modules, and the walk
// over a module's tensors (python_shard.cpp); python_module.cpp calls them.
#pragma once

#include <torch/csrc/utils/pybind.h>

namespace lazyinit {

// Defines _module_tensors, _materialize_shard(s), _materialize_module_shards
// and the shard counters on `m`.
void bind_shard(pybind11::module& m);

}  // namespace lazyinit
