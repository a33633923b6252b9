// Output metadata of recorded calls, by call signature.
//
// Recording learns each call's outputs from the op's Meta kernel (and, for
// strided inputs, from CPU stand-ins: layout.h). A model repeats the same
// calls layer after layer (a rotary embedding's arange / pow / outer / cat /
// cos in every attention block), and torch >= 2 runs many Meta kernels as
// Python decompositions, 50-100 us a call. The cache keeps the outputs'
// metadata for a signature that holds everything those kernels read: the
// op, the default dtype, every non-tensor argument's value, every tensor's
// metadata, and the value of wrapped CPU scalars.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>

#include <cstdint>
#include <vector>

namespace lazyinit {

using MetaKey = std::vector<int64_t>;

// The signature of calling `op` on `args`, or false for arguments it does
// not describe (strings, complex numbers, sparse tensors ...): such calls
// are not cached.
bool meta_key(const c10::OperatorHandle& op, const std::vector<c10::IValue>& args, MetaKey* key);

// The outputs stored for `key`, or nullptr. Callers hold the graph lock.
const std::vector<c10::IValue>* find_meta(const MetaKey& key);

// Stores `outputs` (meta tensors and plain values, read but never written
// by the recorder) for `key`.
void store_meta(MetaKey key, const std::vector<c10::IValue>& outputs);

// Counters for tests: lookups that found an entry, and entries.
struct MetaCacheStats {
  int64_t hits = 0;
  int64_t entries = 0;
};
MetaCacheStats meta_cache_stats();

}  // namespace lazyinit
