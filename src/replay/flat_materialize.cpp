// One allocation per device and dtype for a whole module (flat.h), a few
// growing ones on a GPU: an allocator call per tensor (in a fresh process,
// a cudaMalloc for each large one) costs more than generating most
// tensors' values.
//
// Each storage gets its own c10::Storage over its slice, whose DataPtr keeps
// the whole buffer alive: materialized tensors look as eager ones do
// (storage offset 0, no storage shared between parameters, nbytes their
// own, and resizing one moves it to memory of its own, leaving the
// neighbours in place).
#include <lazyinit/replay/flat_materialize.h>
#include <lazyinit/shard/shard_replay.h>

#include <lazyinit/core/lazy_tensor_impl.h>
#include <lazyinit/replay/replay.h>
#include <lazyinit/rng/chain.h>

#include <ATen/ops/empty.h>
#include <c10/core/Storage.h>
#include <c10/core/TensorOptions.h>
#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>

#include <map>
#include <memory>
#include <string>
#include <unordered_set>
#include <utility>

namespace lazyinit {
namespace {

// The CUDA caching allocator's block granularity: slices start where a
// separately allocated tensor would (vectorized kernels check alignment).
constexpr int64_t kAlignment = 512;

// What a slice's DataPtr owns: a reference to the whole buffer.
struct SliceOwner {
  c10::Storage buffer;
};

void release_slice(void* owner) {
  std::unique_ptr<SliceOwner> release(static_cast<SliceOwner*>(owner));
}

// allocation_parts(): the first part holds 1/21 of the bytes, each later
// one four times the share of the one before (1/21, 4/21, 16/21). A part's
// kernels then run longer than the CPU takes to plan and allocate the next
// (an H200 fills about 0.9 GiB a millisecond with random bf16 values).
constexpr double kFirstPartShare = 1.0 / 21;
constexpr double kPartGrowth = 4;

struct Group {
  c10::Device device;
  caffe2::TypeMeta dtype;
  std::vector<LazyStoragePtr> storages;
};

}  // namespace

std::vector<size_t> allocation_parts(const std::vector<int64_t>& sizes, c10::Device device) {
  std::vector<size_t> ends;
  if (sizes.empty()) {
    return ends;
  }
  if (device.is_cpu()) {
    ends.push_back(sizes.size());
    return ends;
  }
  int64_t total = 0;
  for (int64_t size : sizes) {
    total += size;
  }
  double share = kFirstPartShare;
  double bound = total * share;  // where the current part should end
  int64_t seen = 0;
  for (size_t i = 0; total > 0 && i + 1 < sizes.size(); ++i) {
    seen += sizes[i];
    if (seen >= bound) {
      ends.push_back(i + 1);
      while (bound <= seen) {  // an item larger than a part's share
        share *= kPartGrowth;
        bound += total * share;
      }
    }
  }
  ends.push_back(sizes.size());
  return ends;
}

int64_t flat_slice_bytes(int64_t nbytes) {
  return (nbytes + kAlignment - 1) / kAlignment * kAlignment;
}

at::Tensor flat_slice(
    const at::Tensor& buffer, int64_t offset, int64_t numel, caffe2::TypeMeta dtype) {
  const int64_t nbytes = numel * static_cast<int64_t>(dtype.itemsize());
  auto owner = std::make_unique<SliceOwner>(SliceOwner{buffer.storage()});
  void* data = static_cast<char*>(buffer.data_ptr()) + offset;
  c10::DataPtr ptr(data, owner.release(), &release_slice, buffer.device());
  // Resizable as eager's tensors are (an out= argument of another size):
  // a resize allocates anew from the buffer's allocator and releases this
  // slice's reference to the buffer; the neighbours keep theirs.
  c10::Storage storage(
      c10::Storage::use_byte_size_t(), nbytes, std::move(ptr), buffer.storage().allocator(),
      /*resizable=*/true);
  // A plain dense tensor over the storage, built without dispatching
  // (empty + set_ cost two dispatcher calls a tensor).
  const auto key =
      c10::computeDispatchKey(c10::typeMetaToScalarType(dtype), c10::kStrided, buffer.device());
  at::Tensor out =
      at::detail::make_tensor<c10::TensorImpl>(std::move(storage), c10::DispatchKeySet(key), dtype);
  out.unsafeGetTensorImpl()->set_sizes_contiguous({numel});
  return out;
}

at::Tensor contiguous_alias(const at::Tensor& t, c10::IntArrayRef shape) {
  TORCH_INTERNAL_ASSERT(
      t.is_contiguous() && c10::multiply_integers(shape) == t.numel() &&
      t.layout() == c10::kStrided && !t.requires_grad());
  const auto key = c10::computeDispatchKey(t.scalar_type(), c10::kStrided, t.device());
  at::Tensor out = at::detail::make_tensor<c10::TensorImpl>(
      c10::Storage(t.storage()), c10::DispatchKeySet(key), t.dtype());
  out.unsafeGetTensorImpl()->set_storage_offset(t.storage_offset());
  out.unsafeGetTensorImpl()->set_sizes_contiguous(shape);
  return out;
}

void materialize_flat(
    const std::vector<at::Tensor>& tensors,
    c10::optional<c10::Device> device,
    const std::function<void(int64_t)>& progress) {
  std::lock_guard<std::recursive_mutex> lock(graph_mutex());
  std::vector<Group> groups;
  std::map<std::pair<std::string, c10::ScalarType>, size_t> index;
  std::unordered_set<const LazyStorage*> seen;
  std::vector<std::pair<LazyStoragePtr, c10::Device>> mapped;  // no slice: see below
  for (const auto& t : tensors) {
    auto* impl = get_pending_impl(t);
    if (impl == nullptr) {
      continue;
    }
    LazyStoragePtr storage = impl->lazy_storage();
    storage->check_usable();
    if (!seen.insert(storage.get()).second) {
      continue;  // tied weights, views of one storage
    }
    const c10::Device target = Replayer(device.value_or(storage->home_device)).device();
    check_target_device(target);
    if (may_map_checkpoint_bytes(*storage, target)) {
      // A copy of a checkpoint's bytes becomes a mapping of the file, read
      // on first touch (as eager's mapped checkpoints are), not a slice.
      mapped.emplace_back(std::move(storage), target);
      continue;
    }
    const auto key = std::make_pair(target.str(), c10::typeMetaToScalarType(storage->dtype));
    auto it = index.find(key);
    if (it == index.end()) {
      it = index.emplace(key, groups.size()).first;
      groups.push_back(Group{target, storage->dtype, {}});
    }
    groups[it->second].storages.push_back(std::move(storage));
  }
  GeneratorStateGuard generators;
  DeferredFillScope deferred;  // CUDA random fills launched batched
  for (const auto& entry : mapped) {
    materialize_storage(*entry.first, entry.second);
    if (progress) {
      progress(entry.first->nbytes);
    }
  }
  for (const Group& group : groups) {
    const int64_t itemsize = static_cast<int64_t>(group.dtype.itemsize());
    std::vector<int64_t> sizes;
    sizes.reserve(group.storages.size());
    for (const auto& storage : group.storages) {
      sizes.push_back(flat_slice_bytes(storage->numel() * itemsize));
    }
    size_t begin = 0;
    for (size_t end : allocation_parts(sizes, group.device)) {
      if (begin > 0) {
        flush_deferred_fills();  // the GPU fills these while the next is allocated
      }
      int64_t total = 0;
      for (size_t i = begin; i < end; ++i) {
        total += sizes[i];
      }
      at::Tensor buffer =
          at::empty({total}, at::TensorOptions().dtype(at::kByte).device(group.device));
      int64_t offset = 0;
      for (size_t i = begin; i < end; ++i) {
        LazyStorage& storage = *group.storages[i];
        at::Tensor dest = flat_slice(buffer, offset, storage.numel(), group.dtype);
        offset += sizes[i];
        materialize_storage(storage, group.device, dest);
        if (progress) {
          progress(storage.numel() * itemsize);
        }
      }
      begin = end;
    }
  }
  flush_deferred_fills();
}

}  // namespace lazyinit
