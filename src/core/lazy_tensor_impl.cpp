#include <lazyinit/core/lazy_tensor_impl.h>

#include <lazyinit/core/compat.h>
#include <lazyinit/core/device.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/as_strided.h>
#include <c10/core/DispatchKeySet.h>
#include <torch/csrc/autograd/variable.h>

namespace lazyinit {
namespace {

c10::DispatchKeySet lazy_key_set() {
  return c10::DispatchKeySet(lazy_dispatch_key());
}

}  // namespace

LazyTensorImpl::LazyTensorImpl(
    LazyStoragePtr storage, const Geometry& geometry, caffe2::TypeMeta dtype)
    : c10::TensorImpl(lazy_key_set(), dtype, lazy_device()), lazy_storage_(std::move(storage)) {
  // Code that reaches for data (data_ptr, storage) must fail loudly rather
  // than read garbage: there is none until materialization.
  set_storage_access_should_throw();
  set_geometry(geometry);
}

Geometry LazyTensorImpl::geometry() const {
  Geometry g;
  g.sizes = sizes().vec();
  g.strides = strides().vec();
  g.offset = storage_offset();
  return g;
}

void LazyTensorImpl::set_geometry(const Geometry& geometry) {
  // Written directly: detached impls forbid metadata changes through the
  // public setters, but the geometry must follow the recorded graph.
  sizes_and_strides_.set_sizes(geometry.sizes);
  for (size_t d = 0; d < geometry.strides.size(); ++d) {
    sizes_and_strides_.stride_at_unchecked(d) = geometry.strides[d];
  }
  storage_offset_ = geometry.offset;
  refresh_numel();
  refresh_contiguous();
}

void LazyTensorImpl::become(const at::Tensor& real, bool early, int64_t replays) {
  TORCH_INTERNAL_ASSERT(real.sizes() == sizes() && real.strides() == strides());
  const auto old_keys = key_set_;
  copy_tensor_metadata(
      /*src_impl=*/real.unsafeGetTensorImpl(),
      /*dest_impl=*/this,
      /*version_counter=*/version_counter(),
      /*allow_tensor_metadata_change=*/allow_tensor_metadata_change());
  // Keep autograd keys: replay may have run where they were off.
  const auto autograd_keys = c10::autograd_dispatch_keyset_with_ADInplaceOrView;
  if (old_keys.has_any(autograd_keys)) {
    key_set_ = key_set_ | c10::getAutogradRelatedKeySetFromBackend(key_set_.highestBackendKey()) |
               c10::DispatchKeySet(c10::DispatchKey::ADInplaceOrView);
  }
  refresh_numel();
  refresh_contiguous();
  lazy_storage_.reset();
  was_early_ = early;
  replays_ = replays;
  forget_view_replay();
}

void LazyTensorImpl::forget_view_replay() {
  // A view made while lazy keeps a function that repeats its view call
  // (the Lazy device has no as_strided), and autograd re-creates the view's
  // grad_fn with it after its base is written. Eager's CPU and CUDA views
  // are re-created with as_strided instead; a repeated call can fail where
  // that does not (a base whose .data was replaced since: fuzz finding 42).
  auto* view = dynamic_cast<torch::autograd::DifferentiableViewMeta*>(autograd_meta());
  if (view != nullptr && view->has_bw_view() && device().supports_as_strided()) {
    compat::clear_view_replay(const_cast<torch::autograd::ViewInfo&>(view->get_backward_view()));
  }
}

namespace {

// Lazy views made since the last record_op (their autograd view meta is
// set after the kernel returns). Guarded by the graph lock.
std::vector<c10::weak_intrusive_ptr<c10::TensorImpl>>& fresh_views() {
  static std::vector<c10::weak_intrusive_ptr<c10::TensorImpl>> views;
  return views;
}

}  // namespace

void note_fresh_view(const at::Tensor& view) {
  fresh_views().emplace_back(view.getIntrusivePtr());
}

void forget_fresh_views_replay() {
  auto lock = lock_graph();
  auto& views = fresh_views();
  for (auto& weak : views) {
    auto locked = weak.lock();
    if (auto* impl = dynamic_cast<LazyTensorImpl*>(locked.get())) {
      impl->clear_view_replay();
    }
  }
  views.clear();
}

void LazyTensorImpl::clear_view_replay() {
  auto* view = dynamic_cast<torch::autograd::DifferentiableViewMeta*>(autograd_meta());
  if (view != nullptr && view->has_bw_view()) {
    compat::clear_view_replay(const_cast<torch::autograd::ViewInfo&>(view->get_backward_view()));
  }
}

void LazyTensorImpl::rebind(LazyStoragePtr storage, const Geometry& geometry) {
  lazy_storage_ = std::move(storage);
  set_geometry(geometry);
  lazy_storage_->add_impl(this);
}

template <typename VariableVersion>
c10::intrusive_ptr<c10::TensorImpl> LazyTensorImpl::detach_impl(
    VariableVersion&& version_counter, bool allow_tensor_metadata_change) const {
  if (!is_pending()) {
    // Real by now: detach like any dense tensor.
    return c10::TensorImpl::shallow_copy_and_detach(
        std::forward<VariableVersion>(version_counter), allow_tensor_metadata_change);
  }
  auto impl = c10::make_intrusive<LazyTensorImpl>(lazy_storage_, geometry(), dtype());
  impl->set_version_counter(std::forward<VariableVersion>(version_counter));
  impl->set_allow_tensor_metadata_change(allow_tensor_metadata_change);
  impl->was_early_ = was_early_;
  lazy_storage_->add_impl(impl.get());
  return impl;
}

c10::intrusive_ptr<c10::TensorImpl> LazyTensorImpl::shallow_copy_and_detach(
    const c10::VariableVersion& version_counter, bool allow_tensor_metadata_change) const {
  return detach_impl(version_counter, allow_tensor_metadata_change);
}

c10::intrusive_ptr<c10::TensorImpl> LazyTensorImpl::shallow_copy_and_detach(
    c10::VariableVersion&& version_counter, bool allow_tensor_metadata_change) const {
  return detach_impl(std::move(version_counter), allow_tensor_metadata_change);
}

void LazyTensorImpl::shallow_copy_from(const c10::intrusive_ptr<c10::TensorImpl>& impl) {
  if (impl.get() == this) {
    return;  // `param.data = param`, as Module._apply does after .to()
  }
  forget_fresh_views_replay();
  auto* other = dynamic_cast<LazyTensorImpl*>(impl.get());
  if (other != nullptr && other->is_pending()) {
    TORCH_CHECK(
        is_pending() || !has_storage(),
        "lazyinit: cannot assign a lazy tensor to the .data of a real tensor; "
        "materialize it first (lazyinit.materialize(t)).");
    rebind(other->lazy_storage_, other->geometry());
    data_type_ = other->dtype();
    was_early_ = other->was_early_;
    return;
  }
  c10::TensorImpl::shallow_copy_from(impl);
  lazy_storage_.reset();
}

void LazyTensorImpl::release_resources() {
  c10::TensorImpl::release_resources();
  lazy_storage_.reset();
}

at::Tensor typed_view(const at::Tensor& flat, caffe2::TypeMeta dtype) {
  return flat.dtype() == dtype ? flat : flat.view(c10::typeMetaToScalarType(dtype));
}

at::Tensor view_of(const at::Tensor& flat, caffe2::TypeMeta dtype, const Geometry& g) {
  at::Tensor typed = typed_view(flat, dtype);
  return at::as_strided(typed, g.sizes, g.strides, typed.storage_offset() + g.offset);
}

LazyTensorImpl* get_lazy_impl(const at::Tensor& t) {
  if (!t.defined()) {
    return nullptr;
  }
  return dynamic_cast<LazyTensorImpl*>(t.unsafeGetTensorImpl());
}

LazyTensorImpl* get_pending_impl(const at::Tensor& t) {
  auto* impl = get_lazy_impl(t);
  return (impl != nullptr && impl->is_pending()) ? impl : nullptr;
}

at::Tensor make_lazy_tensor(
    LazyStoragePtr storage, const Geometry& geometry, c10::optional<caffe2::TypeMeta> dtype) {
  auto impl =
      c10::make_intrusive<LazyTensorImpl>(storage, geometry, dtype.value_or(storage->dtype));
  storage->add_impl(impl.get());
  return at::Tensor(std::move(impl));
}

}  // namespace lazyinit
