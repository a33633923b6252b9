#include <lazyinit/shard/placement.h>

#include <c10/util/Exception.h>
#include <c10/util/SmallVector.h>

#include <algorithm>
#include <string>

namespace lazyinit {
namespace {

// Past this many spans a piece is cut out of one bounding span instead: the
// per-span work of region replay would cost more than the memory it saves.
constexpr int64_t kMaxSpans = int64_t{1} << 20;

int64_t product(const std::vector<int64_t>& v) {
  int64_t n = 1;
  for (int64_t x : v) {
    n *= x;
  }
  return n;
}

}  // namespace

Placement Placement::replicate() {
  return Placement{};
}

Placement Placement::shard(int64_t dim, int64_t rank, int64_t world_size) {
  TORCH_CHECK(
      world_size >= 1 && rank >= 0 && rank < world_size, "lazyinit: Shard(dim=", dim,
      ", rank=", rank, ", world_size=", world_size,
      ") needs world_size >= 1 and 0 <= rank < world_size.");
  Placement p;
  p.kind = Kind::kShard;
  p.dim = dim;
  p.rank = rank;
  p.world_size = world_size;
  return p;
}

Placement Placement::flat_range(int64_t start, int64_t end) {
  TORCH_CHECK(
      0 <= start && start <= end, "lazyinit: FlatRange(", start, ", ", end,
      ") needs 0 <= start <= end.");
  Placement p;
  p.kind = Kind::kFlatRange;
  p.start = start;
  p.end = end;
  return p;
}

std::string Placement::str() const {
  switch (kind) {
    case Kind::kReplicate:
      return "Replicate()";
    case Kind::kShard:
      return "Shard(dim=" + std::to_string(dim) + ", rank=" + std::to_string(rank) +
             ", world_size=" + std::to_string(world_size) + ")";
    case Kind::kFlatRange:
      return "FlatRange(" + std::to_string(start) + ", " + std::to_string(end) + ")";
  }
  return "?";
}

std::pair<int64_t, int64_t> chunk_bounds(int64_t size, int64_t rank, int64_t world_size) {
  TORCH_INTERNAL_ASSERT(size >= 0 && world_size >= 1 && rank >= 0 && rank < world_size);
  const int64_t chunk = (size + world_size - 1) / world_size;
  const int64_t begin = std::min(rank * chunk, size);
  const int64_t end = std::min(begin + chunk, size);
  return {begin, end};
}

std::vector<int64_t> LocalPiece::shape() const {
  if (flat) {
    return {flat_end - flat_start};
  }
  return box_sizes;
}

int64_t LocalPiece::numel() const {
  return flat ? flat_end - flat_start : product(box_sizes);
}

at::Tensor LocalPiece::slice(const at::Tensor& full) const {
  at::Tensor t = full;
  for (size_t d = 0; d < box_sizes.size(); ++d) {
    t = t.narrow(static_cast<int64_t>(d), box_start[d], box_sizes[d]);
  }
  if (flat) {
    t = t.reshape({-1}).narrow(0, flat_start, flat_end - flat_start);
  }
  return t;
}

LocalPiece local_piece(c10::IntArrayRef sizes, const std::vector<Placement>& placements) {
  LocalPiece piece;
  piece.box_sizes = sizes.vec();
  piece.box_start.assign(sizes.size(), 0);
  for (const Placement& p : placements) {
    switch (p.kind) {
      case Placement::Kind::kReplicate:
        break;
      case Placement::Kind::kShard: {
        const int64_t ndim = piece.flat ? 1 : static_cast<int64_t>(piece.box_sizes.size());
        TORCH_CHECK(
            ndim > 0, "lazyinit: cannot apply ", p.str(), " to a 0-dim tensor; use Replicate().");
        TORCH_CHECK(
            p.dim >= -ndim && p.dim < ndim, "lazyinit: ", p.str(),
            " is out of range for a piece of ", ndim, " dim(s)",
            piece.flat ? " (a FlatRange leaves a 1-D piece)" : "", ".");
        const int64_t dim = p.dim < 0 ? p.dim + ndim : p.dim;
        if (piece.flat) {
          auto b = chunk_bounds(piece.flat_end - piece.flat_start, p.rank, p.world_size);
          piece.flat_end = piece.flat_start + b.second;
          piece.flat_start += b.first;
        } else {
          auto b = chunk_bounds(piece.box_sizes[dim], p.rank, p.world_size);
          piece.box_start[dim] += b.first;
          piece.box_sizes[dim] = b.second - b.first;
        }
        break;
      }
      case Placement::Kind::kFlatRange: {
        const int64_t n = piece.numel();
        TORCH_CHECK(
            p.start >= 0 && p.start <= p.end && p.end <= n, "lazyinit: ", p.str(),
            " does not fit a piece of ", n, " elements; pass 0 <= start <= end <= ", n, ".");
        const int64_t base = piece.flat ? piece.flat_start : 0;
        piece.flat = true;
        piece.flat_start = base + p.start;
        piece.flat_end = base + p.end;
        break;
      }
    }
  }
  return piece;
}

namespace {

// A piece's box over fewer, longer dims: a dim the box spans whole merges
// into the one before it where their strides are contiguous, which leaves
// the box's row-major order (and so flat ranges) as it was. A Shard(0) of
// a contiguous matrix becomes one row instead of one a matrix row.
struct MergedBox {
  c10::SmallVector<int64_t, 6> sizes;
  c10::SmallVector<int64_t, 6> strides;
  c10::SmallVector<int64_t, 6> start;
  c10::SmallVector<int64_t, 6> box;
};

MergedBox merged_box(const Geometry& g, const LocalPiece& piece) {
  MergedBox m;
  for (size_t d = 0; d < g.sizes.size(); ++d) {
    if (g.sizes[d] == 1) {
      continue;  // its stride is arbitrary, and it holds one index
    }
    const bool whole = piece.box_start[d] == 0 && piece.box_sizes[d] == g.sizes[d];
    if (whole && !m.sizes.empty() && m.strides.back() == g.strides[d] * g.sizes[d]) {
      m.sizes.back() *= g.sizes[d];
      m.strides.back() = g.strides[d];
      m.start.back() *= g.sizes[d];
      m.box.back() *= g.sizes[d];
    } else {
      m.sizes.push_back(g.sizes[d]);
      m.strides.push_back(g.strides[d]);
      m.start.push_back(piece.box_start[d]);
      m.box.push_back(piece.box_sizes[d]);
    }
  }
  return m;
}

// Appends `s` (runs after the last span's), merging it into that span
// where it continues it: adjacent single runs, or rows of the same length
// and spacing. False where `s` overlaps or precedes the last span: not a
// plain layout.
bool append_span(std::vector<Span>& spans, const Span& s) {
  if (spans.empty()) {
    spans.push_back(s);
    return true;
  }
  Span& back = spans.back();
  const int64_t back_last_begin = back.begin + (back.rows - 1) * back.row_step;
  const int64_t step = s.begin - back_last_begin;
  if (s.begin < back.last_end()) {
    return false;
  }
  if (back.rows == 1 && s.rows == 1 && s.begin == back.end) {
    back.end = s.end;
  } else if (
      s.size() == back.size() && (back.rows == 1 || step == back.row_step) &&
      (s.rows == 1 || s.row_step == step)) {
    back.row_step = step;
    back.rows += s.rows;
  } else {
    spans.push_back(s);
  }
  return true;
}

// The piece's rows (elements `first_elem` to `end_elem` of the box in
// row-major order) as spans in storage order; false where they are not in
// order or need more than kMaxSpans spans.
bool row_spans(
    const Geometry& g,
    const MergedBox& m,
    int64_t first_elem,
    int64_t end_elem,
    std::vector<Span>* spans) {
  const int64_t last = static_cast<int64_t>(m.sizes.size()) - 1;
  const int64_t row = m.box[last];
  const int64_t first_row = first_elem / row;
  const int64_t last_row = (end_elem - 1) / row;
  // Rows along the dim before the last are equally spaced: a block of them
  // is one span of rows.
  const int64_t block = last > 0 ? m.box[last - 1] : 1;
  const int64_t block_step = last > 0 ? m.strides[last - 1] : 0;
  if (m.strides[last] != 1 && row != 1) {
    return false;
  }
  for (int64_t d = 0; d <= last; ++d) {
    if (m.strides[d] < 0) {
      return false;
    }
  }
  for (int64_t r = first_row; r <= last_row;) {
    if (static_cast<int64_t>(spans->size()) >= kMaxSpans) {
      return false;
    }
    // Storage position of (outer index of row r, start[last]).
    int64_t pos = g.offset + m.start[last] * m.strides[last];
    int64_t rest = r;
    for (int64_t d = last - 1; d >= 0; --d) {
      pos += (m.start[d] + rest % m.box[d]) * m.strides[d];
      rest /= m.box[d];
    }
    const int64_t lo = r == first_row ? first_elem - r * row : 0;
    const int64_t hi = r == last_row ? end_elem - r * row : row;
    Span s{pos + lo * m.strides[last], pos + (hi - 1) * m.strides[last] + 1};
    if (lo == 0 && hi == row && block > 1 && block_step >= s.size()) {
      // Whole rows up to the end of this block (or before the last row,
      // which may be partial).
      s.rows = std::max<int64_t>(1, std::min(block - r % block, last_row - r));
      s.row_step = s.rows > 1 ? block_step : 0;
    }
    if (!append_span(*spans, s)) {
      return false;
    }
    r += s.rows;
  }
  return true;
}

// One span bounding the piece's box.
Span bounding_span(const Geometry& g, const LocalPiece& piece) {
  int64_t lo = g.offset;
  int64_t hi = g.offset;
  for (size_t d = 0; d < g.sizes.size(); ++d) {
    const int64_t from = piece.box_start[d] * g.strides[d];
    const int64_t to = (piece.box_start[d] + piece.box_sizes[d] - 1) * g.strides[d];
    lo += std::min(from, to);
    hi += std::max(from, to);
  }
  return {lo, hi + 1};
}

}  // namespace

std::vector<Span> storage_spans(const Geometry& g, const LocalPiece& piece, bool* in_order) {
  *in_order = true;
  const int64_t total = piece.numel();
  if (total == 0) {
    return {};
  }
  const MergedBox m = merged_box(g, piece);
  if (m.sizes.empty()) {
    return {Span{g.offset, g.offset + 1}};  // 0-dim, or every dim of size 1
  }
  const int64_t first_elem = piece.flat ? piece.flat_start : 0;
  const int64_t end_elem = piece.flat ? piece.flat_end : total + first_elem;
  std::vector<Span> spans;
  if (row_spans(g, m, first_elem, end_elem, &spans)) {
    return spans;
  }
  *in_order = false;
  return {bounding_span(g, piece)};
}

SpanOut span_out(int64_t begin, at::Tensor out, int64_t rows, int64_t row_step) {
  const int64_t len = rows > 0 ? out.numel() / rows : 0;
  return SpanOut{{begin, begin + len, rows, row_step}, std::move(out)};
}

std::vector<Span> split_rows(const std::vector<Span>& spans) {
  std::vector<Span> runs;
  for (const Span& s : spans) {
    for (int64_t r = 0; r < s.rows; ++r) {
      runs.push_back(s.row(r));
    }
  }
  return runs;
}

}  // namespace lazyinit
