// Placement math and region replay against eager values.
#include <gtest/gtest.h>

#include <lazyinit/shard/placement.h>
#include <lazyinit/shard/shard_replay.h>

#include "test_util.h"

#include <algorithm>
#include <numeric>
#include <random>

namespace lazyinit {
namespace {

using testing::lazy_options;

int64_t product_of(const std::vector<int64_t>& v) {
  int64_t n = 1;
  for (int64_t x : v) {
    n *= x;
  }
  return n;
}

TEST(Placement, ChunkBoundsMatchTorchChunk) {
  for (int64_t size : {0, 1, 5, 7, 16, 17}) {
    for (int64_t world = 1; world <= 8; ++world) {
      auto chunks = at::arange(size).chunk(world);
      for (int64_t rank = 0; rank < world; ++rank) {
        auto b = chunk_bounds(size, rank, world);
        if (rank < static_cast<int64_t>(chunks.size())) {
          ASSERT_TRUE(at::equal(chunks[rank], at::arange(b.first, b.second)))
              << size << " " << world << " " << rank;
        } else {
          ASSERT_EQ(b.first, b.second) << size << " " << world << " " << rank;
        }
      }
    }
  }
}

TEST(Placement, NestedShardsAndFlatRange) {
  at::Tensor full = at::arange(10 * 6).reshape({10, 6});
  auto piece = local_piece(full.sizes(), {Placement::shard(0, 1, 2), Placement::shard(1, 2, 4)});
  EXPECT_TRUE(at::equal(piece.slice(full), full.chunk(2, 0)[1].chunk(4, 1)[2]));
  auto flat = local_piece(full.sizes(), {Placement::shard(1, 0, 2), Placement::flat_range(4, 11)});
  EXPECT_TRUE(at::equal(flat.slice(full), full.chunk(2, 1)[0].reshape(-1).slice(0, 4, 11)));
  EXPECT_THROW(local_piece(full.sizes(), {Placement::flat_range(0, 61)}), c10::Error);
  EXPECT_THROW(local_piece(full.sizes(), {Placement::shard(2, 0, 2)}), c10::Error);
}

TEST(Placement, SpansOfRowsAreMerged) {
  Geometry g{{8, 4}, {4, 1}, 3};
  bool in_order = false;
  auto spans = storage_spans(g, local_piece(g.sizes, {Placement::shard(0, 1, 2)}), &in_order);
  ASSERT_TRUE(in_order);
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].begin, 3 + 16);
  EXPECT_EQ(spans[0].end, 3 + 32);
  // A Shard(1): the 8 rows are one span of rows, not 8 spans.
  spans = storage_spans(g, local_piece(g.sizes, {Placement::shard(1, 1, 2)}), &in_order);
  ASSERT_TRUE(in_order);
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].begin, 3 + 2);
  EXPECT_EQ(spans[0].end, 3 + 4);
  EXPECT_EQ(spans[0].rows, 8);
  EXPECT_EQ(spans[0].row_step, 4);
  // A flat range of a Shard(1) that starts and ends mid-row: the partial
  // rows are spans of their own around the whole rows.
  spans = storage_spans(
      g, local_piece(g.sizes, {Placement::shard(1, 1, 2), Placement::flat_range(3, 13)}),
      &in_order);
  ASSERT_TRUE(in_order);
  ASSERT_EQ(spans.size(), 3u);
  EXPECT_EQ(spans[0].rows, 1);  // row 1's second element
  EXPECT_EQ(spans[0].begin, 3 + 4 + 3);
  EXPECT_EQ(spans[1].rows, 4);  // rows 2 to 5
  EXPECT_EQ(spans[1].begin, 3 + 8 + 2);
  EXPECT_EQ(spans[2].rows, 1);  // row 6's first element
  EXPECT_EQ(spans[2].end, 3 + 24 + 3);
  Geometry t{{4, 8}, {1, 4}, 0};  // a transposed view: one bounding span
  spans = storage_spans(t, local_piece(t.sizes, {Placement::shard(0, 1, 2)}), &in_order);
  EXPECT_FALSE(in_order);
  ASSERT_EQ(spans.size(), 1u);
}

// storage_spans against the storage positions of the piece's elements,
// over strided views of many shapes (size-1 dims, slices, permutations,
// offsets) and placements (shards of each dim, nested, flat ranges).
TEST(Placement, SpansHoldThePiecesPositions) {
  std::mt19937 rng(11);
  auto pick = [&](int64_t n) { return static_cast<int64_t>(rng() % n); };
  int checked = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    const int64_t ndim = 1 + pick(4);
    std::vector<int64_t> base_sizes;
    for (int64_t d = 0; d < ndim; ++d) {
      base_sizes.push_back(pick(4) == 0 ? 1 : 1 + pick(7));
    }
    at::Tensor base = at::arange(3 + product_of(base_sizes)).slice(0, 3).view(base_sizes);
    at::Tensor view = base;
    if (pick(3) == 0 && ndim > 1) {  // a permutation: transposed layouts
      std::vector<int64_t> perm(ndim);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      view = view.permute(perm);
    }
    if (pick(2) == 0) {  // a slice of one dim
      const int64_t d = pick(ndim);
      const int64_t size = view.size(d);
      const int64_t from = pick(size);
      view = view.slice(d, from, from + 1 + pick(size - from));
    }
    std::vector<Placement> placements;
    const int64_t nplace = pick(3);
    std::vector<int64_t> shape(view.sizes().begin(), view.sizes().end());
    bool flat = false;
    for (int64_t k = 0; k < nplace && !flat; ++k) {
      if (pick(4) == 0) {
        const int64_t n = product_of(shape);
        const int64_t a = pick(n + 1);
        placements.push_back(Placement::flat_range(a, a + pick(n - a + 1)));
        flat = true;
      } else {
        const int64_t d = pick(static_cast<int64_t>(shape.size()));
        const int64_t world = 1 + pick(5);
        const int64_t rank = pick(world);
        placements.push_back(Placement::shard(d, rank, world));
        shape = local_piece(shape, {placements.back()}).shape();
      }
    }
    const LocalPiece piece = local_piece(view.sizes(), placements);
    Geometry g{view.sizes().vec(), view.strides().vec(), view.storage_offset()};
    bool in_order = false;
    const std::vector<Span> spans = storage_spans(g, piece, &in_order);
    // arange's values are storage positions.
    at::Tensor positions = piece.slice(view).contiguous().reshape({-1});
    const int64_t n = positions.numel();
    if (n == 0) {
      ASSERT_TRUE(spans.empty());
      continue;
    }
    auto* p = positions.data_ptr<int64_t>();
    if (in_order) {
      std::vector<int64_t> from_spans;
      for (size_t i = 0; i < spans.size(); ++i) {
        const Span& s = spans[i];
        ASSERT_LT(s.begin, s.end);
        ASSERT_GE(s.rows, 1);
        if (s.rows > 1) {
          ASSERT_GE(s.row_step, s.size());
        }
        if (i > 0) {
          const Span& before = spans[i - 1];
          if (before.rows == 1 && s.rows == 1) {
            ASSERT_LT(before.end, s.begin);  // sorted, disjoint, merged
          } else {
            ASSERT_LE(before.last_end(), s.begin);  // sorted, disjoint
          }
        }
        for (const Span& run : split_rows({s})) {
          for (int64_t x = run.begin; x < run.end; ++x) {
            from_spans.push_back(x);
          }
        }
        ASSERT_EQ(s.numel(), s.rows * s.size());
      }
      ASSERT_EQ(static_cast<int64_t>(from_spans.size()), n) << iter;
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(from_spans[i], p[i]) << iter << " element " << i;
      }
    } else {
      ASSERT_EQ(spans.size(), 1u);
      const auto mm = std::minmax_element(p, p + n);
      ASSERT_LE(spans[0].begin, *mm.first) << iter;
      ASSERT_GT(spans[0].end, *mm.second) << iter;
    }
    ++checked;
  }
  EXPECT_GT(checked, 2000);
}

TEST(Placement, DiscardMatchesDraws) {
  at::mt19937 a(7);
  at::mt19937 b(7);
  for (int64_t n : {0, 1, 622, 623, 624, 625, 1000, 5000, 1}) {
    for (int64_t i = 0; i < n; ++i) {
      a();
    }
    discard_draws(b, n);
    ASSERT_EQ(a.data().left_, b.data().left_) << n;
    ASSERT_EQ(a.data().next_, b.data().next_) << n;
    ASSERT_EQ(a(), b()) << n;
  }
}

std::vector<at::Tensor> build(const at::TensorOptions& options) {
  at::Tensor w = at::empty({37, 11}, options);
  w.normal_(0, 0.02);
  at::Tensor u = at::empty({29, 5}, options.dtype(at::kDouble));
  u.uniform_(-2, 3);
  u.mul_(3).clamp_(-1, 1);
  at::Tensor z = at::zeros({13, 3}, options);
  z.slice(0, 2, 4).fill_(5);  // a write to a contiguous range
  at::Tensor q = at::empty({9, 9}, options);
  q.t().uniform_();  // a transposed write: falls back
  return {w, u, z, q};
}

TEST(ShardReplay, EveryShardEqualsTheEagerSliceInAnyOrder) {
  at::manual_seed(5);
  auto eager = build(at::TensorOptions());
  at::Tensor eager_state = at::detail::getDefaultCPUGenerator().get_state();
  at::manual_seed(5);
  auto lazy = build(lazy_options());
  reset_shard_stats();
  for (int64_t world : {1, 3, 8}) {
    for (int64_t dim : {0, 1}) {
      for (int64_t rank = world - 1; rank >= 0; --rank) {
        for (size_t i = lazy.size(); i-- > 0;) {
          std::vector<Placement> p{Placement::shard(dim, rank, world)};
          at::Tensor got = materialize_shard(lazy[i], p, c10::Device(c10::kCPU));
          ASSERT_TRUE(at::equal(got, local_piece(eager[i].sizes(), p).slice(eager[i])))
              << "tensor " << i << " world " << world << " dim " << dim << " rank " << rank;
          ASSERT_TRUE(testing::is_pending(lazy[i]));
        }
      }
    }
  }
  auto stats = shard_stats();
  EXPECT_GT(stats.pushed_down, 0);
  EXPECT_GT(stats.fallbacks, 0);
  EXPECT_TRUE(storage_fell_back(get_pending_impl(lazy[3])->lazy_storage()->id));
  EXPECT_FALSE(storage_fell_back(get_pending_impl(lazy[0])->lazy_storage()->id));
  // Full materialization afterwards is unaffected.
  for (auto& t : lazy) {
    testing::materialize(t);
  }
  for (size_t i = 0; i < lazy.size(); ++i) {
    EXPECT_TRUE(at::equal(lazy[i], eager[i])) << "tensor " << i;
  }
  EXPECT_TRUE(at::equal(at::detail::getDefaultCPUGenerator().get_state(), eager_state));
}

}  // namespace
}  // namespace lazyinit

namespace lazyinit {
namespace {

// RAII: swaps in a region generator and puts the previous one back.
class RegionFillOverride {
 public:
  RegionFillOverride(std::string op, c10::DeviceType device, RegionFill fill)
      : op_(std::move(op)), device_(device), saved_(*find_region_fill(op_, device)) {
    register_region_fill(op_, device_, std::move(fill));
  }
  ~RegionFillOverride() { register_region_fill(op_, device_, saved_); }
  RegionFillOverride(const RegionFillOverride&) = delete;
  RegionFillOverride& operator=(const RegionFillOverride&) = delete;

 private:
  std::string op_;
  c10::DeviceType device_;
  RegionFill saved_;
};

TEST(ShardReplay, ARegionGeneratorThatDeclinesFallsBackExactly) {
  at::manual_seed(11);
  at::Tensor eager = at::empty({40, 6}).normal_(0, 2);
  at::manual_seed(11);
  at::Tensor lazy = at::empty({40, 6}, testing::lazy_options()).normal_(0, 2);
  reset_shard_stats();
  int calls = 0;
  {
    RegionFillOverride decline(
        "aten::normal_", c10::DeviceType::CPU, [&](Node&, int64_t, std::vector<RegionRequest>&) {
          ++calls;
          return false;
        });
    std::vector<Placement> p{Placement::shard(0, 1, 3)};
    EXPECT_TRUE(at::equal(
        materialize_shard(lazy, p, c10::Device(c10::kCPU)),
        local_piece(eager.sizes(), p).slice(eager)));
  }
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(shard_stats().fallbacks, 1);
  std::vector<Placement> p{Placement::shard(0, 2, 3)};
  EXPECT_TRUE(at::equal(
      materialize_shard(lazy, p, c10::Device(c10::kCPU)),
      local_piece(eager.sizes(), p).slice(eager)));
  EXPECT_EQ(shard_stats().fallbacks, 1);  // the CPU generator is back
  EXPECT_EQ(shard_stats().pushed_down, 1);
}

}  // namespace
}  // namespace lazyinit
