// Placements: which piece of a tensor a rank holds (docs/architecture.md, "Materialize-on-shard").
//
// A placement is a list applied in order to the piece left by the previous
// one, starting from the whole tensor:
//  - Replicate: the whole piece;
//  - Shard(dim, rank, world_size): torch.chunk's split of `dim` (what
//    DTensor's Shard and FSDP use; see chunk_bounds);
//  - FlatRange(start, end): elements [start, end) of the piece flattened in
//    row-major order (ZeRO / FSDP flat parameters). The piece is 1-D after
//    it, so only Shard(0) and FlatRange may follow.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <lazyinit/core/graph.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace lazyinit {

struct Placement {
  enum class Kind { kReplicate, kShard, kFlatRange };
  Kind kind = Kind::kReplicate;
  int64_t dim = 0;         // kShard
  int64_t rank = 0;        // kShard
  int64_t world_size = 1;  // kShard
  int64_t start = 0;       // kFlatRange
  int64_t end = 0;         // kFlatRange

  static Placement replicate();
  static Placement shard(int64_t dim, int64_t rank, int64_t world_size);
  static Placement flat_range(int64_t start, int64_t end);
  std::string str() const;
};

// [begin, end) of rank's chunk when `size` indices are split like
// torch.chunk(x, world_size): chunks of ceil(size / world_size), the last
// one shorter; ranks past the last chunk get an empty range at `size`.
// (torch.tensor_split would instead spread the remainder over the first
// ranks; DTensor's Shard, FSDP1's flat parameter and FSDP2 all use chunk.)
std::pair<int64_t, int64_t> chunk_bounds(int64_t size, int64_t rank, int64_t world_size);

// The local piece of a tensor: a box of its indices, then optionally a range
// of that box's row-major elements.
struct LocalPiece {
  std::vector<int64_t> box_start;
  std::vector<int64_t> box_sizes;
  bool flat = false;
  int64_t flat_start = 0;
  int64_t flat_end = 0;

  std::vector<int64_t> shape() const;
  int64_t numel() const;
  // The piece cut out of a real tensor of the full shape (a view where the
  // piece is a box, a copy where it is a flat range of a non-contiguous box).
  at::Tensor slice(const at::Tensor& full) const;
};

LocalPiece local_piece(c10::IntArrayRef sizes, const std::vector<Placement>& placements);

// A run of consecutive elements [begin, end) (of a storage, or of the view a
// node writes), or with rows > 1,
// `rows` such runs, run r at [begin + r * row_step, end + r * row_step)
// (row_step >= end - begin): the rows of a Shard(1) piece as one span, so
// that a piece costs per span, not per row, from here to the kernels.
// Its elements are the runs' in order.
struct Span {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t rows = 1;
  int64_t row_step = 0;
  // Elements of one run.
  int64_t size() const { return end - begin; }
  // Elements of all runs.
  int64_t numel() const { return rows * (end - begin); }
  // One past the last run's last element.
  int64_t last_end() const { return end + (rows - 1) * row_step; }
  // Run r alone.
  Span row(int64_t r) const { return Span{begin + r * row_step, end + r * row_step}; }
};

// A span and the contiguous 1-D tensor that receives its elements, run
// after run (out.numel() == numel()): a region fill's request, a Philox
// piece, a Philox job's target.
struct SpanOut : Span {
  at::Tensor out;
};

// The SpanOut of `rows` runs of out.numel() / rows elements, run r from
// `begin + r * row_step` on.
SpanOut span_out(int64_t begin, at::Tensor out, int64_t rows = 1, int64_t row_step = 0);

// `spans` with every multi-row span cut into its runs (for code that takes
// one run at a time: a cost per row).
std::vector<Span> split_rows(const std::vector<Span>& spans);

// Storage spans holding the piece of a tensor viewing a storage with
// geometry `g`. `in_order` is set when the spans, concatenated, are the
// piece's elements in row-major order (contiguous-row tensors); otherwise a
// single span bounds every element of the piece, to be cut out afterwards.
// Spans are sorted, disjoint (each one's first element after the previous
// one's last) and non-empty; equally spaced rows of one length share a
// span, and adjacent runs are merged.
std::vector<Span> storage_spans(const Geometry& g, const LocalPiece& piece, bool* in_order);

}  // namespace lazyinit
