// Replay: values equal eager construction, in any order, with views,
// versions, reads of older versions and the generator's final state.
#include <gtest/gtest.h>

#include "test_util.h"

#include <lazyinit/replay/flat_materialize.h>

namespace lazyinit {
namespace {

using testing::lazy_options;

// Builds the same tensors on `options`, consuming the generator in order.
std::vector<at::Tensor> build(const at::TensorOptions& options) {
  at::Tensor w = at::empty({7, 33}, options);
  w.normal_(0, 0.02);
  at::Tensor b = at::empty({33}, options);
  b.uniform_(-1, 1);
  w.slice(1, 0, 5).zero_();  // in-place op on a view
  at::Tensor e = at::randn({19}, options);
  e.select(0, 0).fill_(-3);
  at::Tensor snapshot = w.clone();  // reads w at this version
  w.mul_(2);                        // ... which then changes
  at::Tensor p = at::randperm(11, options.dtype(at::kLong));
  return {w, b, e, snapshot, p};
}

void expect_equal(const std::vector<at::Tensor>& lazy, const std::vector<at::Tensor>& eager) {
  ASSERT_EQ(lazy.size(), eager.size());
  for (size_t i = 0; i < lazy.size(); ++i) {
    EXPECT_FALSE(testing::is_pending(lazy[i]));
    EXPECT_TRUE(at::equal(lazy[i], eager[i])) << "tensor " << i;
  }
}

class ReplayOrder : public ::testing::TestWithParam<std::vector<int>> {};

TEST_P(ReplayOrder, EqualsEagerAndLeavesTheGeneratorAsEager) {
  at::manual_seed(123);
  auto eager = build(at::TensorOptions());
  at::Tensor eager_state = at::detail::getDefaultCPUGenerator().get_state();

  at::manual_seed(123);
  auto lazy = build(lazy_options());
  for (int i : GetParam()) {
    testing::materialize(lazy[i]);
  }
  expect_equal(lazy, eager);
  EXPECT_TRUE(at::equal(at::detail::getDefaultCPUGenerator().get_state(), eager_state));
}

INSTANTIATE_TEST_SUITE_P(
    Orders,
    ReplayOrder,
    ::testing::Values(
        std::vector<int>{0, 1, 2, 3, 4},
        std::vector<int>{4, 3, 2, 1, 0},
        std::vector<int>{2, 4, 0, 3, 1}));

TEST(Replay, EachStorageIsReplayedOnce) {
  at::Tensor t = at::empty({10}, lazy_options());
  t.normal_();
  at::Tensor v = t.view({2, 5});
  at::Tensor sum = t + 1;  // reads t's current version
  testing::materialize(sum);
  testing::materialize(t);
  EXPECT_EQ(get_lazy_impl(t)->replays(), 1);
  EXPECT_EQ(get_lazy_impl(v)->replays(), 1);
  // Views turned real together, still aliasing one buffer.
  EXPECT_FALSE(testing::is_pending(v));
  EXPECT_EQ(v.data_ptr(), t.data_ptr());
}

TEST(Replay, SelfReferencingWrites) {
  at::manual_seed(5);
  at::Tensor e = at::randn({3, 3});
  e.select(0, 0).select(0, 0).copy_(-e.select(0, 0).select(0, 0));
  at::manual_seed(5);
  at::Tensor l = at::randn({3, 3}, lazy_options());
  l.select(0, 0).select(0, 0).copy_(-l.select(0, 0).select(0, 0));
  testing::materialize(l);
  EXPECT_TRUE(at::equal(l, e));
}

TEST(Replay, ReseedingStartsANewChain) {
  at::manual_seed(1);
  at::Tensor e1 = at::rand({4});
  at::manual_seed(1);
  at::Tensor e2 = at::rand({4});  // equal to e1 in eager

  at::manual_seed(1);
  at::Tensor l1 = at::rand({4}, lazy_options());
  at::manual_seed(1);  // same seed: must still be noticed
  at::Tensor l2 = at::rand({4}, lazy_options());
  testing::materialize(l2);
  testing::materialize(l1);
  EXPECT_TRUE(at::equal(l1, e1));
  EXPECT_TRUE(at::equal(l2, e2));
}

// On a GPU a module's memory comes in growing parts: each item in one part,
// in order, the first part small (its allocation is quick) and each later
// one larger than the one before. On the CPU, one part.
TEST(AllocationParts, CoverEveryItemInOrderAndGrow) {
  const c10::Device gpu(c10::kCUDA, 0);
  const std::vector<int64_t> sizes(300, int64_t{1} << 20);
  const std::vector<size_t> ends = allocation_parts(sizes, gpu);
  ASSERT_GE(ends.size(), 3u);
  EXPECT_EQ(ends.back(), sizes.size());
  EXPECT_LE(ends.front() * 16, sizes.size());
  size_t begin = 0;
  size_t previous = 0;
  for (size_t end : ends) {
    EXPECT_GT(end - begin, previous) << "part ending at " << end;
    previous = end - begin;
    begin = end;
  }
  // An item larger than a part's share ends its part; no part is empty.
  EXPECT_EQ(allocation_parts({100, 1, 1, 1}, gpu), (std::vector<size_t>{1, 4}));
  EXPECT_EQ(allocation_parts({0, 0, 0}, gpu), (std::vector<size_t>{3}));
  EXPECT_EQ(allocation_parts({5}, gpu), (std::vector<size_t>{1}));
  EXPECT_TRUE(allocation_parts({}, gpu).empty());
  EXPECT_EQ(allocation_parts(sizes, c10::Device(c10::kCPU)), (std::vector<size_t>{300}));
  EXPECT_TRUE(allocation_parts({}, c10::Device(c10::kCPU)).empty());
}

}  // namespace
}  // namespace lazyinit
