#include <lazyinit/record/meta_cache.h>

#include <lazyinit/core/lazy_tensor_impl.h>

#include <c10/core/DefaultDtype.h>

#include <algorithm>
#include <cstring>
#include <unordered_map>
#include <utility>

namespace lazyinit {
namespace {

// Entries past this are dropped all at once: a model has a few hundred
// distinct signatures; a program making ever new shapes must not grow it
// without bound.
constexpr size_t kMaxEntries = 4096;

enum Tag : int64_t {
  kNone = 1,
  kInt,
  kDouble,
  kBool,
  kIntList,
  kDoubleList,
  kBoolList,
  kList,
  kDevice,
  kGenerator,
  kUndefined,
  kLazy,
  kReal,
};

struct KeyHash {
  size_t operator()(const MetaKey& key) const {
    uint64_t h = 1469598103934665603ULL;
    for (int64_t v : key) {
      h = (h ^ static_cast<uint64_t>(v)) * 1099511628211ULL;
    }
    return static_cast<size_t>(h);
  }
};

struct Cache {
  std::unordered_map<MetaKey, std::vector<c10::IValue>, KeyHash> entries;
  int64_t hits = 0;
};

Cache& cache() {
  static Cache c;
  return c;
}

int64_t bits_of(double d) {
  int64_t out = 0;
  std::memcpy(&out, &d, sizeof(d));
  return out;
}

void put_shape(MetaKey* key, c10::IntArrayRef sizes, c10::IntArrayRef strides) {
  key->push_back(static_cast<int64_t>(sizes.size()));
  key->insert(key->end(), sizes.begin(), sizes.end());
  key->insert(key->end(), strides.begin(), strides.end());
}

bool put_tensor(MetaKey* key, const at::Tensor& t) {
  if (!t.defined()) {
    key->push_back(kUndefined);
    return true;
  }
  if (auto* impl = get_pending_impl(t)) {
    const auto& storage = *impl->lazy_storage();
    key->push_back(kLazy);
    key->push_back(static_cast<int64_t>(c10::typeMetaToScalarType(impl->dtype())));
    key->push_back(static_cast<int64_t>(c10::typeMetaToScalarType(storage.dtype)));
    key->push_back(storage.nbytes);
    key->push_back(impl->storage_offset());
    put_shape(key, impl->sizes(), impl->strides());
    return true;
  }
  if (t.layout() != c10::kStrided || !t.has_storage() || t.is_quantized()) {
    return false;
  }
  key->push_back(kReal);
  key->push_back(static_cast<int64_t>(t.scalar_type()));
  key->push_back(static_cast<int64_t>(t.device().type()));
  key->push_back(static_cast<int64_t>(t.device().index()));
  key->push_back(t.unsafeGetTensorImpl()->is_wrapped_number() ? 1 : 0);
  key->push_back(t.storage_offset());
  key->push_back(static_cast<int64_t>(t.storage().nbytes()));
  put_shape(key, t.sizes(), t.strides());
  if (t.dim() == 0 && t.device().is_cpu()) {
    // Passed to the Meta kernel as it is (type promotion reads it): its
    // value goes into the key too.
    int64_t value[2] = {0, 0};  // complex double: 16 bytes
    std::memcpy(value, t.data_ptr(), std::min<size_t>(sizeof(value), t.element_size()));
    key->push_back(value[0]);
    key->push_back(value[1]);
  }
  return true;
}

bool put_value(MetaKey* key, const c10::IValue& v) {
  if (v.isTensor()) {
    return put_tensor(key, v.toTensor());
  }
  if (v.isNone()) {
    key->push_back(kNone);
  } else if (v.isInt()) {
    key->push_back(kInt);
    key->push_back(v.toInt());
  } else if (v.isDouble()) {
    key->push_back(kDouble);
    key->push_back(bits_of(v.toDouble()));
  } else if (v.isBool()) {
    key->push_back(kBool);
    key->push_back(v.toBool() ? 1 : 0);
  } else if (v.isIntList()) {
    auto list = v.toIntList();
    key->push_back(kIntList);
    key->push_back(static_cast<int64_t>(list.size()));
    for (size_t i = 0; i < list.size(); ++i) {
      key->push_back(list.get(i));
    }
  } else if (v.isDoubleList()) {
    auto list = v.toDoubleList();
    key->push_back(kDoubleList);
    key->push_back(static_cast<int64_t>(list.size()));
    for (size_t i = 0; i < list.size(); ++i) {
      key->push_back(bits_of(list.get(i)));
    }
  } else if (v.isBoolList()) {
    auto list = v.toBoolList();
    key->push_back(kBoolList);
    key->push_back(static_cast<int64_t>(list.size()));
    for (size_t i = 0; i < list.size(); ++i) {
      key->push_back(list.get(i) ? 1 : 0);
    }
  } else if (v.isList()) {  // Tensor[], Tensor?[]
    auto list = v.toList();
    key->push_back(kList);
    key->push_back(static_cast<int64_t>(list.size()));
    for (size_t i = 0; i < list.size(); ++i) {
      const c10::IValue element = list.get(i);
      if (!(element.isTensor() || element.isNone()) || !put_value(key, element)) {
        return false;
      }
    }
  } else if (v.isDevice()) {
    key->push_back(kDevice);
    key->push_back(static_cast<int64_t>(v.toDevice().type()));
    key->push_back(static_cast<int64_t>(v.toDevice().index()));
  } else if (v.isGenerator()) {
    key->push_back(kGenerator);  // Meta kernels draw nothing
  } else {
    return false;  // strings, complex numbers, symbolic sizes ...
  }
  return true;
}

}  // namespace

bool meta_key(const c10::OperatorHandle& op, const std::vector<c10::IValue>& args, MetaKey* key) {
  key->clear();
  key->push_back(reinterpret_cast<int64_t>(&op.schema()));
  key->push_back(static_cast<int64_t>(c10::typeMetaToScalarType(c10::get_default_dtype())));
  for (const auto& v : args) {
    if (!put_value(key, v)) {
      return false;
    }
  }
  return true;
}

const std::vector<c10::IValue>* find_meta(const MetaKey& key) {
  Cache& c = cache();
  auto it = c.entries.find(key);
  if (it == c.entries.end()) {
    return nullptr;
  }
  ++c.hits;
  return &it->second;
}

void store_meta(MetaKey key, const std::vector<c10::IValue>& outputs) {
  Cache& c = cache();
  if (c.entries.size() >= kMaxEntries) {
    c.entries.clear();
  }
  c.entries.emplace(std::move(key), outputs);
}

MetaCacheStats meta_cache_stats() {
  const Cache& c = cache();
  return MetaCacheStats{c.hits, static_cast<int64_t>(c.entries.size())};
}

}  // namespace lazyinit
