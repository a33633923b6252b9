#pragma once
// Reads of checkpoint tensors (registered file mappings, capture.h) by
// span replay, a chunk at a time. See include/lazyinit/shard/shard_replay.h.

#include <lazyinit/record/capture.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace lazyinit {

// Reads of registered file mappings (checkpoints), a chunk of at most
// kMappedChunkBytes at a time: the next chunk's pages are requested from
// the file while this one is read, and each chunk's pages are unmapped
// after it (they stay in the page cache, not in the process's RSS). So a
// piece reads only its own bytes and its peak holds one chunk of the file.
class MappedReads {
 public:
  // `flat`: the operands read per range, flattened (undefined or 1-element
  // ones are not read per range).
  explicit MappedReads(const std::vector<at::Tensor>& flat) {
    for (size_t j = 0; j < flat.size(); ++j) {
      if (flat[j].defined() && flat[j].numel() != 1 && is_mapped_source(flat[j])) {
        mapped_.push_back(j);
        item_ = std::max<int64_t>(item_, flat[j].element_size());
      }
    }
  }
  bool any() const { return !mapped_.empty(); }
  // Elements a chunk holds.
  int64_t chunk() const { return std::max<int64_t>(1, kMappedChunkBytes / item_); }

  // Runs `run(k)` for every range k of `ranges` (begin, size in the
  // operands' flat index), prefetching range k + 1 first and releasing k
  // after.
  template <typename Run>
  void each(
      const std::vector<at::Tensor>& flat,
      const std::vector<std::pair<int64_t, int64_t>>& ranges,
      const Run& run) const {
    auto touch = [&](size_t k, bool fetch) {
      if (k >= ranges.size()) {
        return;
      }
      for (size_t j : mapped_) {
        const at::Tensor piece = flat[j].narrow(0, ranges[k].first, ranges[k].second);
        fetch ? prefetch_source(piece) : release_source(piece);
      }
    };
    touch(0, true);
    for (size_t k = 0; k < ranges.size(); ++k) {
      touch(k + 1, true);
      run(k);
      touch(k, false);
    }
  }

 private:
  std::vector<size_t> mapped_;
  int64_t item_ = 1;
};

}  // namespace lazyinit
