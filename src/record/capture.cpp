#include <lazyinit/record/capture.h>

#include <ATen/core/TensorBody.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/as_strided.h>
#include <ATen/ops/empty.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/StorageImpl.h>
#include <c10/util/intrusive_ptr.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <iterator>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

namespace lazyinit {
namespace {

std::atomic<int64_t> g_copies{0};
std::atomic<int64_t> g_bytes{0};
std::atomic<int64_t> g_zero_copy{0};
std::atomic<int64_t> g_mapped_reads{0};
std::atomic<int64_t> g_mapped_read_bytes{0};
std::atomic<int64_t> g_private_maps{0};

struct Registered {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  bool mapped = false;  // a private file mapping (register_mapped_source)
};

// Registered storages by address, held weakly: an entry whose storage died
// (and whose address may be reused) does not count.
struct ImmutableRegistry {
  std::mutex mutex;
  std::unordered_map<const c10::StorageImpl*, Registered> storages;
  size_t swept_at = 64;  // size at which expired entries are dropped next
};

ImmutableRegistry& registry() {
  static ImmutableRegistry r;
  return r;
}

// Elements of the storage the view reaches, from element 0 (the offset
// included, so the copy keeps the view's storage offset and alignment).
int64_t reach(const at::Tensor& t) {
  int64_t last = t.storage_offset();
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) == 0) {
      return t.storage_offset();
    }
    last += (t.size(d) - 1) * t.stride(d);
  }
  return last + 1;
}

void add(const at::Tensor& t, bool mapped) {
  if (!t.has_storage()) {
    return;
  }
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (r.storages.size() >= r.swept_at) {
    for (auto it = r.storages.begin(); it != r.storages.end();) {
      it = it->second.storage.expired() ? r.storages.erase(it) : std::next(it);
    }
    r.swept_at = std::max<size_t>(64, 2 * r.storages.size());
  }
  const c10::StorageImpl* impl = t.storage().unsafeGetStorageImpl();
  r.storages.insert_or_assign(impl, Registered{t.storage().getWeakStorageImpl(), mapped});
}

// The registration of `t`'s storage, if it is registered and alive.
const Registered* find(const at::Tensor& t, std::unique_lock<std::mutex>& lock) {
  if (!t.has_storage()) {
    return nullptr;
  }
  const c10::StorageImpl* impl = t.storage().unsafeGetStorageImpl();
  auto& r = registry();
  lock = std::unique_lock<std::mutex>(r.mutex);
  auto it = r.storages.find(impl);
  if (it == r.storages.end()) {
    return nullptr;
  }
  auto alive = it->second.storage.lock();
  return alive && alive.get() == impl ? &it->second : nullptr;
}

// The smallest readahead window Linux uses by default (read_ahead_kb = 128).
constexpr size_t kWillNeedStep = size_t{128} << 10;

// Gives `advice` for the bytes [first, end), rounded outward to pages.
void advise(uintptr_t first, uintptr_t end, int advice) {
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  if (end <= first) {
    return;
  }
  const uintptr_t begin = first & ~(page - 1);
  const size_t length = static_cast<size_t>(((end + page - 1) & ~(page - 1)) - begin);
  // Advice: where it fails (an old kernel), reads fault the pages in.
  if (advice != MADV_WILLNEED) {
    madvise(reinterpret_cast<void*>(begin), length, advice);
    return;
  }
  // The kernel starts at most one readahead window (read_ahead_kb, often
  // 128 KiB) per WILLNEED call and ignores the rest of the range; those
  // pages would then fault in one at a time, synchronously (the mapping
  // reads at random: no read-around). So the range is asked for a window
  // at a time: every read is queued at once, and runs asynchronously.
  for (size_t at = 0; at < length; at += kWillNeedStep) {
    madvise(reinterpret_cast<void*>(begin + at), std::min(kWillNeedStep, length - at), advice);
  }
  ++g_mapped_reads;
  g_mapped_read_bytes += static_cast<int64_t>(length);
}

// Gives `advice` for the bytes the view `t` spans.
void advise(const at::Tensor& t, int advice) {
  if (t.numel() == 0) {
    return;
  }
  const auto base = reinterpret_cast<uintptr_t>(t.storage().data());
  const auto item = static_cast<uintptr_t>(t.element_size());
  advise(
      base + static_cast<uintptr_t>(t.storage_offset()) * item,
      base + static_cast<uintptr_t>(reach(t)) * item, advice);
}

bool mapped(const at::Tensor& t) {
  std::unique_lock<std::mutex> lock;
  const Registered* reg = find(t, lock);
  return reg != nullptr && reg->mapped;
}

}  // namespace

void register_immutable_source(const at::Tensor& t) {
  add(t, /*mapped=*/false);
}

void register_mapped_source(const at::Tensor& t) {
  add(t, /*mapped=*/true);
  if (t.has_storage()) {
    // No read-around on faults: a read fetches the pages it touches (those
    // prefetch_source asked for), not megabytes of neighbours that belong
    // to other ranks' pieces. Adjacent ranges given the same advice merge
    // back into one mapping entry.
    const auto base = reinterpret_cast<uintptr_t>(t.storage().data());
    advise(base, base + t.storage().nbytes(), MADV_RANDOM);
  }
}

bool is_immutable_source(const at::Tensor& t) {
  std::unique_lock<std::mutex> lock;
  return find(t, lock) != nullptr;
}

bool is_mapped_source(const at::Tensor& t) {
  return t.defined() && t.device().is_cpu() && mapped(t);
}

void prefetch_source(const at::Tensor& t) {
  if (is_mapped_source(t)) {
    advise(t, MADV_WILLNEED);
  }
}

void release_source(const at::Tensor& t) {
  // A private mapping nobody wrote: dropping the pages loses nothing (they
  // read back from the file), and they stop counting in this process.
  if (is_mapped_source(t)) {
    advise(t, MADV_DONTNEED);
  }
}

CapturedSource capture_source(const at::Tensor& t) {
  if (is_immutable_source(t)) {
    ++g_zero_copy;
    return {t, false};
  }
  at::NoGradGuard no_grad;
  at::Tensor copy;
  if (!t.has_storage() || t.is_sparse()) {
    copy = t.clone();
  } else {
    // The same view over a private buffer: strides matter to the kernels
    // that read it (TensorIterator's order, expanded inputs), so not clone().
    const int64_t n = reach(t);
    at::Tensor buffer = at::empty({n}, t.options().memory_format(c10::nullopt));
    if (n > t.storage_offset()) {
      buffer.narrow(0, t.storage_offset(), n - t.storage_offset())
          .copy_(at::as_strided(t, {n - t.storage_offset()}, {1}, t.storage_offset()));
    }
    copy = at::as_strided(buffer, t.sizes(), t.strides(), t.storage_offset());
  }
  if (t.unsafeGetTensorImpl()->is_wrapped_number()) {
    // A Python scalar the dispatcher wrapped: type promotion treats it
    // apart from 0-dim tensors, so the copy must be one too.
    copy.unsafeGetTensorImpl()->set_wrapped_number(true);
  }
  ++g_copies;
  g_bytes += static_cast<int64_t>(copy.numel() * copy.element_size());
  return {copy, true};
}

namespace {

// The file region behind an address range of this process's mappings.
struct FileRegion {
  std::string path;
  dev_t device = 0;
  ino_t inode = 0;
  int64_t offset = 0;  // of the range's first byte in the file
};

// A private mapping's extent, unmapped when its DataPtr goes.
struct Unmap {
  void* address;
  size_t length;
};

void release_unmap(void* context) {
  std::unique_ptr<Unmap> unmap(static_cast<Unmap*>(context));
  ::munmap(unmap->address, unmap->length);
}

// From /proc/self/maps: the file mapping that holds [address, address +
// length) whole, if any.
bool file_region(uintptr_t address, size_t length, FileRegion* out) {
  std::FILE* maps = std::fopen("/proc/self/maps", "re");
  if (maps == nullptr) {
    return false;
  }
  bool found = false;
  char line[4096];
  while (!found && std::fgets(line, sizeof(line), maps) != nullptr) {
    uintptr_t start = 0, end = 0;
    unsigned long long offset = 0;  // NOLINT(runtime/int): sscanf's type
    unsigned major = 0, minor = 0;
    unsigned long long inode = 0;  // NOLINT(runtime/int)
    int path_at = 0;
    if (std::sscanf(
            line, "%" SCNxPTR "-%" SCNxPTR " %*4s %llx %x:%x %llu %n", &start, &end, &offset,
            &major, &minor, &inode, &path_at) < 6 ||
        address < start || address + length > end) {
      continue;
    }
    std::string path(line + path_at);
    while (!path.empty() && (path.back() == '\n' || path.back() == ' ')) {
      path.pop_back();
    }
    if (inode == 0 || path.empty() || path[0] != '/') {
      break;  // anonymous memory: no file to map again
    }
    out->path = path;
    out->device = makedev(major, minor);
    out->inode = static_cast<ino_t>(inode);
    out->offset = static_cast<int64_t>(offset + (address - start));
    found = true;
  }
  std::fclose(maps);
  return found;
}

}  // namespace

at::Tensor map_source_privately(const at::Tensor& view) {
  if (view.numel() == 0 || !view.is_contiguous() || !is_mapped_source(view)) {
    return at::Tensor();
  }
  const auto address = reinterpret_cast<uintptr_t>(view.data_ptr());
  const size_t length = static_cast<size_t>(view.numel()) * view.element_size();
  FileRegion region;
  if (!file_region(address, length, &region)) {
    return at::Tensor();
  }
  const int fd = ::open(region.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return at::Tensor();
  }
  struct stat st {};
  // Replaced or moved since it was mapped: the path names other bytes.
  const bool same_file = ::fstat(fd, &st) == 0 && st.st_dev == region.device &&
                         st.st_ino == region.inode &&
                         region.offset + static_cast<int64_t>(length) <= st.st_size;
  static const int64_t page = sysconf(_SC_PAGESIZE);
  const int64_t aligned = region.offset / page * page;
  const size_t span = length + static_cast<size_t>(region.offset - aligned);
  void* map = same_file ? ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, aligned)
                        : MAP_FAILED;
  ::close(fd);
  if (map == MAP_FAILED) {
    return at::Tensor();
  }
  ++g_private_maps;
  char* data = static_cast<char*>(map) + (region.offset - aligned);
  // Resizable, as a parameter loaded eagerly (load_state_dict) is: a resize
  // moves it to the CPU allocator's memory and unmaps this mapping.
  auto unmap = std::make_unique<Unmap>(Unmap{map, span});
  c10::DataPtr ptr(data, unmap.release(), &release_unmap, c10::Device(c10::kCPU));
  c10::Storage storage(
      c10::Storage::use_byte_size_t(), static_cast<int64_t>(length), std::move(ptr),
      c10::GetCPUAllocator(), /*resizable=*/true);
  at::Tensor out = at::detail::make_tensor<c10::TensorImpl>(
      std::move(storage), c10::DispatchKeySet(c10::DispatchKey::CPU), view.dtype());
  out.unsafeGetTensorImpl()->set_sizes_contiguous({view.numel()});
  return out;
}

CaptureStats capture_stats() {
  return {
      g_copies.load(),
      g_bytes.load(),
      g_zero_copy.load(),
      g_mapped_reads.load(),
      g_mapped_read_bytes.load(),
      g_private_maps.load()};
}

}  // namespace lazyinit
