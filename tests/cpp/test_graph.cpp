// The graph: storages, versions, views sharing a storage, node lifetime.
#include <gtest/gtest.h>

#include "test_util.h"

namespace lazyinit {
namespace {

using testing::lazy_options;

TEST(Graph, FactoryMakesLazyStorageWithoutData) {
  at::Tensor t = at::empty({3, 4}, lazy_options());
  auto* impl = get_pending_impl(t);
  ASSERT_NE(impl, nullptr);
  EXPECT_EQ(t.device().type(), lazy_device_type());
  EXPECT_EQ(t.sizes(), at::IntArrayRef({3, 4}));
  EXPECT_EQ(impl->lazy_storage()->nbytes, 3 * 4 * 4);
  EXPECT_EQ(impl->lazy_storage()->version, 0);
  EXPECT_THROW(t.data_ptr(), c10::Error);  // no data to read: fails loudly
}

TEST(Graph, InPlaceOpsBumpTheStorageVersion) {
  at::Tensor t = at::empty({5}, lazy_options());
  auto storage = get_pending_impl(t)->lazy_storage();
  t.fill_(1.0);
  t.mul_(2.0);
  EXPECT_EQ(storage->version, 2);
  EXPECT_EQ(storage->tape.size(), 3u);
}

TEST(Graph, ViewsShareTheStorageWithTheirGeometry) {
  at::Tensor t = at::empty({4, 6}, lazy_options());
  at::Tensor v = t.slice(1, 2, 5).t();
  ASSERT_TRUE(testing::is_pending(v));
  EXPECT_EQ(get_pending_impl(v)->lazy_storage(), get_pending_impl(t)->lazy_storage());
  EXPECT_EQ(v.sizes(), at::IntArrayRef({3, 4}));
  EXPECT_EQ(v.strides(), at::IntArrayRef({1, 6}));
  EXPECT_EQ(v.storage_offset(), 2);
  v.zero_();  // a write through a view lands on the shared storage's tape
  EXPECT_EQ(get_pending_impl(t)->lazy_storage()->version, 1);
}

TEST(Graph, OutOfPlaceOpsStartNewStorages) {
  at::Tensor a = at::ones({3}, lazy_options());
  at::Tensor b = a * 2;
  EXPECT_NE(get_pending_impl(a)->lazy_storage(), get_pending_impl(b)->lazy_storage());
}

TEST(Graph, NodesAreFreedWithTheirTensors) {
  const int64_t before = live_node_count();
  {
    at::Tensor t = at::empty({8}, lazy_options());
    t.add_(1);
    EXPECT_GT(live_node_count(), before);
  }
  EXPECT_EQ(live_node_count(), before);
}

TEST(Graph, DeadRandomNodesAreKeptUntilTheirDrawsAreReplayed) {
  // Eager construction drew numbers for a random tensor even if it was
  // dropped; the node stays until settling replays its draws into scratch.
  at::manual_seed(7);
  at::Tensor kept_eager = at::empty({4}).normal_();
  at::empty({100}).normal_();
  at::Tensor after_eager = at::rand({3});
  at::Tensor eager_state = at::detail::getDefaultCPUGenerator().get_state();

  at::manual_seed(7);
  const int64_t before = live_node_count();
  at::Tensor kept = at::empty({4}, lazy_options()).normal_();
  at::empty({100}, lazy_options()).normal_();  // dies unreplayed
  at::Tensor after = at::rand({3}, lazy_options());
  EXPECT_EQ(live_node_count(), before + 4);  // kept: 2, dropped: normal_, rand
  testing::materialize(after);
  testing::materialize(kept);
  EXPECT_TRUE(at::equal(after, after_eager));
  EXPECT_TRUE(at::equal(kept, kept_eager));
  EXPECT_TRUE(at::equal(at::detail::getDefaultCPUGenerator().get_state(), eager_state));
  EXPECT_EQ(live_node_count(), before);
}

TEST(Graph, MaterializationFreesTheTape) {
  const int64_t before = live_node_count();
  at::Tensor t = at::empty({8}, lazy_options());
  t.uniform_();
  at::Tensor u = t.clone();
  testing::materialize(t);
  testing::materialize(u);
  EXPECT_EQ(live_node_count(), before);
  EXPECT_FALSE(testing::is_pending(t));
  EXPECT_TRUE(t.device().is_cpu());
}

}  // namespace
}  // namespace lazyinit
