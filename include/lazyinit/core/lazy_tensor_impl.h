// LazyTensorImpl: a storage-less tensor on the "lazy" device that points to
// a LazyStorage. On materialization it turns, in place, into an ordinary
// dense tensor, so every holder (Parameters, ties, optimizers) sees it.
#pragma once

#include <c10/core/TensorImpl.h>

#include <lazyinit/core/graph.h>

namespace lazyinit {

class LazyTensorImpl : public c10::TensorImpl {
 public:
  LazyTensorImpl(LazyStoragePtr storage, const Geometry& geometry, caffe2::TypeMeta dtype);

  // The storage while lazy; null once materialized.
  const LazyStoragePtr& lazy_storage() const { return lazy_storage_; }
  bool is_pending() const { return lazy_storage_.defined(); }
  bool was_early() const { return was_early_; }
  // Times the storage was replayed before this impl became real.
  int64_t replays() const { return replays_; }
  Geometry geometry() const;

  // Becomes `real` (a real tensor with this impl's geometry): storage,
  // device and dispatch keys are taken over; sizes and strides stay.
  void become(const at::Tensor& real, bool early, int64_t replays);
  // Re-points this impl to another lazy storage/geometry (set_data).
  void rebind(LazyStoragePtr storage, const Geometry& geometry);
  // Updates the geometry after a recorded resize.
  void set_geometry(const Geometry& geometry);

  // Drops the function autograd repeats this view's call with, so that it
  // re-creates the view's grad_fn from its geometry (metadata only), as for
  // eager's CPU and CUDA views (see note_fresh_view).
  void clear_view_replay();

  c10::intrusive_ptr<c10::TensorImpl> shallow_copy_and_detach(
      const c10::VariableVersion& version_counter,
      bool allow_tensor_metadata_change) const override;
  c10::intrusive_ptr<c10::TensorImpl> shallow_copy_and_detach(
      c10::VariableVersion&& version_counter, bool allow_tensor_metadata_change) const override;
  void shallow_copy_from(const c10::intrusive_ptr<c10::TensorImpl>& impl) override;
  // Storages hold weak references to their impls, and c10 deletes an
  // object only once its weak count drops too: release the storage as soon
  // as the last strong reference goes, or impl and storage keep each other.
  void release_resources() override;

 private:
  const char* tensorimpl_type_name() const override { return "lazyinit::LazyTensorImpl"; }
  void forget_view_replay();
  template <typename VariableVersion>
  c10::intrusive_ptr<c10::TensorImpl> detach_impl(
      VariableVersion&& version_counter, bool allow_tensor_metadata_change) const;

  LazyStoragePtr lazy_storage_;
  bool was_early_ = false;
  int64_t replays_ = 0;
};

// Autograd gives views on devices without as_strided (the Lazy type among
// them) a function that repeats the view call, and after an in-place write
// to the base re-creates the view's grad_fn by running it on the base. That
// can fail where eager's re-creation, metadata only (AsStridedBackward0 from
// the view's geometry), does not: the base's .data replaced by a tensor of
// another shape (fuzz findings 42, 49), real by then, discarded (47), or not
// requiring grad (finding 10: a torch assertion). Every lazy view the
// recorder makes is noted here, and its repeat function is dropped at the
// next recorded op or .data assignment, before any write can bump its
// version: autograd then treats lazy views as it treats eager's.
void note_fresh_view(const at::Tensor& view);
void forget_fresh_views_replay();

// The LazyTensorImpl behind `t`, or null when `t` is not a lazyinit tensor.
LazyTensorImpl* get_lazy_impl(const at::Tensor& t);
// Like get_lazy_impl, but only while the tensor still awaits replay.
LazyTensorImpl* get_pending_impl(const at::Tensor& t);
// Makes a new lazy tensor viewing `storage` with `geometry`, as `dtype`
// (the storage's own dtype unless given: Tensor.view(dtype) differs).
at::Tensor make_lazy_tensor(
    LazyStoragePtr storage,
    const Geometry& geometry,
    c10::optional<caffe2::TypeMeta> dtype = c10::nullopt);

// `flat` (a flat buffer over a whole storage) seen as `dtype`.
at::Tensor typed_view(const at::Tensor& flat, caffe2::TypeMeta dtype);
// View `g` of the flat buffer `flat` read as `dtype`, g.offset counted from
// flat's first element (flat may itself start inside a larger storage).
at::Tensor view_of(const at::Tensor& flat, caffe2::TypeMeta dtype, const Geometry& g);

}  // namespace lazyinit
