// The recorder: what the boxed kernel records, and what it runs early.
#include <gtest/gtest.h>

#include "test_util.h"

#include <lazyinit/core/lazy_tensor_impl.h>
#include <lazyinit/record/capture.h>
#include <lazyinit/record/meta_cache.h>

#include <c10/core/DefaultDtype.h>

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

// Repeated calls reuse the outputs' metadata (meta_cache.h), and every
// input that changes the outputs changes the key.
TEST(Recorder, RepeatedCallsReuseTheirMetadata) {
  at::Tensor a = at::empty({6, 4}, lazy_options());
  at::Tensor first = at::cat({a, a}, 1);
  const int64_t hits = meta_cache_stats().hits;
  at::Tensor again = at::cat({a, a}, 1);
  EXPECT_EQ(meta_cache_stats().hits, hits + 1);
  EXPECT_EQ(again.sizes(), at::IntArrayRef({6, 8}));
  EXPECT_FALSE(
      get_pending_impl(again)->lazy_storage().get() ==
      get_pending_impl(first)->lazy_storage().get());
  // Another dim, a transposed input, another dtype: other outputs.
  EXPECT_EQ(at::cat({a, a}, 0).sizes(), at::IntArrayRef({12, 4}));
  at::Tensor t = a.t();
  at::Tensor tt = at::cat({t, t}, 1);
  EXPECT_EQ(tt.sizes(), at::IntArrayRef({4, 12}));
  EXPECT_EQ(at::cat({a.to(at::kDouble), a.to(at::kDouble)}, 1).scalar_type(), at::kDouble);
  // Wrapped scalars of other dtypes promote differently.
  at::Tensor ints = at::empty({3}, lazy_options().dtype(at::kLong));
  at::Tensor two = at::scalar_tensor(2, at::kLong);
  two.unsafeGetTensorImpl()->set_wrapped_number(true);
  at::Tensor half = at::scalar_tensor(0.5, at::kDouble);
  half.unsafeGetTensorImpl()->set_wrapped_number(true);
  EXPECT_EQ(at::mul(ints, two).scalar_type(), at::kLong);
  EXPECT_EQ(at::mul(ints, half).scalar_type(), c10::get_default_dtype_as_scalartype());
  // Factories follow the default dtype.
  const auto saved = c10::get_default_dtype();
  at::Tensor f32 = at::arange(0.0, 4.0, 1.0, at::TensorOptions().device(lazy_options().device()));
  c10::set_default_dtype(caffe2::TypeMeta::Make<double>());
  at::Tensor f64 = at::arange(0.0, 4.0, 1.0, at::TensorOptions().device(lazy_options().device()));
  c10::set_default_dtype(saved);
  EXPECT_EQ(f32.scalar_type(), c10::typeMetaToScalarType(saved));
  EXPECT_EQ(f64.scalar_type(), at::kDouble);
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

TEST(Recorder, RealSourcesAreReadAsRecorded) {
  // Copied when recorded: a later write to the source changes nothing.
  at::Tensor src = at::ones({3});
  at::Tensor t = at::empty({3}, lazy_options());
  t.copy_(src);
  src.add_(1);
  testing::materialize(t);
  EXPECT_TRUE(at::equal(t, at::ones({3})));
}

TEST(Recorder, ModifiedImmutableSourceIsReported) {
  // Immutable sources are not copied; writing one anyway is caught.
  at::Tensor src = at::ones({3});
  register_immutable_source(src);
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
