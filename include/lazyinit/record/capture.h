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

// Declares `t`'s storage an immutable source that is a private memory map
// of a file nobody writes (a checkpoint lazyinit opened). Replay reads its
// views through prefetch_source / release_source, a chunk at a time, so
// that a piece fetches only its own pages from the file and the process
// does not keep them mapped afterwards.
void register_mapped_source(const at::Tensor& t);
bool is_mapped_source(const at::Tensor& t);

// For a view of a registered mapped source (no-ops for other tensors):
// prefetch_source asks the kernel to read exactly the pages the view
// spans (madvise WILLNEED, asynchronous); release_source unmaps them from
// this process (madvise DONTNEED: they stay in the page cache, leave the
// process's RSS, and read back from the file if touched again).
void prefetch_source(const at::Tensor& t);
void release_source(const at::Tensor& t);

// A flat tensor with `view`'s values over a new private mapping of the same
// file bytes (the pages stay in the page cache and are read on first
// touch; a write copies the page, as eager's mapped checkpoints do), or an
// undefined tensor where that cannot be done: `view` is not a contiguous
// view of a registered mapped source, or the file that source maps is no
// longer the one at its path. A mapping of its own, so that
// release_source on the source's mapping never drops pages written
// through it.
at::Tensor map_source_privately(const at::Tensor& view);

// Bytes of mapped sources a read handles at once: the resident mapped
// pages of a read stay below this.
constexpr int64_t kMappedChunkBytes = int64_t{16} << 20;

// Process-wide counts of copies made at record time.
struct CaptureStats {
  int64_t copies = 0;
  int64_t bytes = 0;
  int64_t zero_copy = 0;          // captures of immutable sources
  int64_t mapped_reads = 0;       // prefetch_source calls on mapped sources
  int64_t mapped_read_bytes = 0;  // bytes they asked for (page-rounded)
  int64_t private_maps = 0;       // map_source_privately results
};
CaptureStats capture_stats();

}  // namespace lazyinit
