// Capturing real tensors that a recorded op reads.
//
// A recorded read of a real tensor must replay with the values the tensor
// had when the op was recorded. Version counters do not see every write
// (NumPy arrays behind torch.from_numpy, inference tensors, writes through
// .data or another process), so a captured tensor is copied at record time
// unless it is a registered immutable source (a read-only memory map of a
// checkpoint, which must stay zero-copy).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace lazyinit {

struct CapturedSource {
  at::Tensor tensor;    // what replay reads: a copy, or the source itself
  bool copied = false;  // false for registered immutable sources
};

// The tensor a recorded op keeps for `t`: an exact copy (same sizes,
// strides and storage offset, over a private buffer), or `t` itself when
// its storage is registered immutable.
CapturedSource capture_source(const at::Tensor& t);

// Declares that nothing will write `t`'s storage for as long as it lives
// (lazyinit's checkpoint loader calls this for read-only mappings).
void register_immutable_source(const at::Tensor& t);
bool is_immutable_source(const at::Tensor& t);

// Process-wide counts of copies made at record time.
struct CaptureStats {
  int64_t copies = 0;
  int64_t bytes = 0;
  int64_t zero_copy = 0;  // captures of immutable sources
};
CaptureStats capture_stats();

}  // namespace lazyinit
