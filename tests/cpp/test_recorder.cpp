// The recorder: what the boxed kernel records, and what it runs early.
#include <gtest/gtest.h>

#include "test_util.h"

namespace lazyinit {
namespace {

using testing::lazy_options;

TEST(Recorder, ShapesComeFromMetaKernels) {
  at::Tensor a = at::empty({2, 3}, lazy_options());
  at::Tensor b = at::empty({3, 5}, lazy_options());
  at::Tensor c = at::matmul(a, b);
  EXPECT_EQ(c.sizes(), at::IntArrayRef({2, 5}));
  EXPECT_TRUE(testing::is_pending(c));
  at::Tensor d = at::cat({a, a}, 0);
  EXPECT_EQ(d.sizes(), at::IntArrayRef({4, 3}));
}

TEST(Recorder, FactoriesKeepTheirOwnOp) {
  // ones is CompositeExplicitAutograd: it is recorded as itself, not as
  // empty + fill_, because the recorder is registered for it explicitly.
  at::Tensor t = at::ones({4}, lazy_options());
  auto storage = get_pending_impl(t)->lazy_storage();
  ASSERT_EQ(storage->tape.size(), 1u);
  EXPECT_EQ(storage->tape[0].node->op->schema().name(), "aten::ones");
}

TEST(Recorder, ValueNeedingOpsRunEarlyAndTheTensorStaysLazy) {
  at::Tensor t = at::arange(5, lazy_options().dtype(at::kFloat));
  EXPECT_EQ(t.sum().item<float>(), 10.0f);
  EXPECT_TRUE(testing::is_pending(t));
  EXPECT_TRUE(get_pending_impl(t)->lazy_storage()->early);
  at::Tensor nz = at::nonzero(t);  // no Meta kernel: early, result lazy
  EXPECT_TRUE(testing::is_pending(nz));
  testing::materialize(nz);
  EXPECT_TRUE(at::equal(nz, at::nonzero(at::arange(5, at::kFloat))));
}

TEST(Recorder, CopyFromARealTensor) {
  at::Tensor src = at::randn({3, 3});
  at::Tensor t = at::empty({3, 3}, lazy_options());
  t.copy_(src);
  testing::materialize(t);
  EXPECT_TRUE(at::equal(t, src));
}

TEST(Recorder, ModifiedRealSourceIsReported) {
  at::Tensor src = at::ones({3});
  at::Tensor t = at::empty({3}, lazy_options());
  t.copy_(src);
  src.add_(1);
  EXPECT_THROW(testing::materialize(t), c10::Error);
}

TEST(Recorder, DiscardedGraphsRefuseUse) {
  at::Tensor t = at::empty({3}, lazy_options());
  auto storage = get_pending_impl(t)->lazy_storage();
  storage->state = StorageState::kDiscarded;
  storage->tape.clear();
  EXPECT_THROW(t.add_(1), c10::Error);
}

}  // namespace
}  // namespace lazyinit
