// Span replay (materialize-on-shard): a storage's tape replayed over some
// of its elements only. See include/lazyinit/shard/shard_replay.h.
#include <lazyinit/shard/shard_replay.h>

#include <lazyinit/core/tensor_args.h>
#include <lazyinit/record/capture.h>
#include <lazyinit/record/op_info.h>
#include <lazyinit/replay/replay.h>
#include <lazyinit/rng/chain.h>
#include <lazyinit/shard/mapped_reads.h>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <string>
#include <utility>

namespace lazyinit {
namespace {

// Lazy operands of element-wise ops up to this many elements are replayed
// whole (a 256 KiB fp32 buffer at most).
constexpr int64_t kSmallLazy = int64_t{1} << 16;

// Element-wise creations from lazy inputs (w.to(torch.bfloat16)) are
// computed this many elements at a time (4 MiB of fp32 input each).
constexpr int64_t kDerivedChunk = int64_t{1} << 20;

const std::string& op_name(const Node& node) {
  return node.op->schema().name();
}

// a + alpha * b: the vectorized kernel fuses it (fmadd), the scalar tail
// does not, so only alpha == 1 is position-independent.
std::string bad_alpha(const Node& node) {
  const auto& args = node.op->schema().arguments();
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i].name() == "alpha" && node.args[i].isScalar() &&
        node.args[i].toScalar().toDouble() != 1.0) {
      return op_name(node) + " with alpha != 1";
    }
  }
  return std::string();
}

// Why `node` (a write to `storage`) cannot be replayed over spans, or empty.
std::string not_local(const LazyStorage& storage, const Node& node, c10::DeviceType device) {
  const std::string& name = op_name(node);
  if (node.self_slot < 0) {
    return name + " does not write its storage through an argument";
  }
  const TensorRef& self = node.tensors[node.self_slot].ref;
  int64_t begin = 0;
  int64_t numel = 0;
  if (self.kind != TensorRef::Kind::kSelf || self.dtype != storage.dtype ||
      !contiguous_range(self.geometry, &begin, &numel)) {
    return name + " writes a non-contiguous (or reinterpreted) view";
  }
  if (node.is_random()) {
    if (find_region_fill(name, device) == nullptr) {
      return name + " has no region generator for " + c10::DeviceTypeName(device);
    }
  } else if (!op_info(*node.op).element_local) {
    return name + " is not known to be element-local";
  }
  for (size_t i = 0; i < node.tensors.size(); ++i) {
    if (static_cast<int64_t>(i) == node.self_slot) {
      continue;
    }
    const TensorRef& ref = node.tensors[i].ref;
    switch (ref.kind) {
      case TensorRef::Kind::kSelf:
        if (ref.geometry != self.geometry || ref.dtype != self.dtype) {
          return name + " reads another part of its own storage";
        }
        break;
      case TensorRef::Kind::kLazy:
        // Small lazy operands (torch.tensor(3.0) or an arange made under
        // the context) are replayed whole; large ones would cost memory.
        if (ref.storage->numel() > kSmallLazy) {
          return name + " reads another large lazy tensor";
        }
        if (ref.geometry.numel() != 1 && ref.geometry.sizes != self.geometry.sizes) {
          return name + " broadcasts a lazy tensor";
        }
        break;
      case TensorRef::Kind::kReal:
        if (ref.real.numel() != 1 && ref.real.sizes() != c10::IntArrayRef(self.geometry.sizes)) {
          return name + " broadcasts a real tensor";
        }
        break;
    }
  }
  return bad_alpha(node);
}

// A real operand moved to the target device. 0-dim CPU tensors (Python
// scalars arrive as wrapped numbers) stay on the CPU, as in eager: CUDA
// kernels treat a CPU scalar operand differently (div multiplies by its
// reciprocal, for one).
at::Tensor on_target(const at::Tensor& t, c10::Device device) {
  return t.dim() == 0 && t.device().is_cpu() ? t : t.to(device);
}

// Real operands that are read a piece at a time: their elements the
// piece needs are cut out first and only those moved to the target (a
// checkpoint's tensor on the CPU, read for a CUDA piece, is not copied
// whole to the GPU).
at::Tensor piece_on_target(
    const at::Tensor& flat, int64_t begin, int64_t size, c10::Device device) {
  return on_target(flat.narrow(0, begin, size), device);
}

// `spans` moved `by` elements: where a derived storage's spans sit in an
// input's storage.
std::vector<Span> shifted(std::vector<Span> spans, int64_t by) {
  for (Span& span : spans) {
    span.begin += by;
    span.end += by;
  }
  return spans;
}

// The elements of `span` in `flat` (a 1-D tensor indexed like the storage):
// a view of `flat`, 1-D for one run, [rows, size] for rows.
at::Tensor rows_of(const at::Tensor& flat, const Span& span) {
  at::Tensor first = flat.narrow(0, span.begin, span.last_end() - span.begin);
  if (span.rows == 1) {
    return first;
  }
  const int64_t stride = first.stride(0);
  return first.as_strided(
      {span.rows, span.size()}, {span.row_step * stride, stride}, first.storage_offset());
}

// Replays `storage` at its current version over `spans` into one buffer
// (the spans' elements, concatenated). Returns false, with a reason, when
// the tape is not element-local; nothing is changed then.
class SpanReplay {
 public:
  SpanReplay(
      LazyStorage& storage,
      int64_t version,
      std::vector<Span> spans,
      c10::Device device,
      bool may_defer = false)
      : storage_(storage),
        version_(version),
        spans_(std::move(spans)),
        device_(device),
        may_defer_(may_defer) {}

  // `dest`: a flat tensor of the spans' total size to compute into.
  bool run(at::Tensor* out, std::string* why, const at::Tensor& dest) {
    return plan(why) && execute(out, why, dest);
  }

 private:
  // After plan() succeeded: computes the spans' values.
  bool execute(at::Tensor* out, std::string* why, const at::Tensor& dest = {}) {
    int64_t total = 0;
    for (const Span& s : spans_) {
      total += s.numel();
    }
    buffer_ = dest.defined() && dest.numel() == total && dest.dtype() == storage_.dtype
                  ? dest
                  : at::empty({total}, at::TensorOptions().dtype(storage_.dtype).device(device_));
    if (spans_.size() == 1) {
      parts_.push_back(buffer_);  // the common case: no narrow() to pay for
    } else {
      int64_t at = 0;
      for (const Span& s : spans_) {
        parts_.push_back(buffer_.narrow(0, at, s.numel()));
        at += s.numel();
      }
    }
    if (source_.defined()) {
      for (size_t i = 0; i < spans_.size(); ++i) {
        const at::Tensor rows = rows_of(source_, spans_[i]);
        parts_[i].view(rows.sizes()).copy_(rows);
      }
    } else if (fill_.has_value() && fill_->has_value()) {
      // The creation's constant, queued where nothing runs after it.
      DeferralWindow window(may_defer_ && start_ == version_);
      if (!queue_constant_fill(buffer_, **fill_)) {
        buffer_.fill_(**fill_);
      }
    } else if (derived_ != nullptr && !run_derived(why)) {
      return false;
    } else if (random_creation_ != nullptr) {
      std::vector<RegionRequest> requests;
      for (size_t i = 0; i < spans_.size(); ++i) {
        const Span& s = spans_[i];
        requests.push_back(RegionRequest{s, parts_[i]});
      }
      // Nothing of this storage runs after it: the launch may be queued.
      DeferralWindow window(may_defer_ && start_ == version_);
      if (!requests.empty() && !fill_random(*random_creation_, storage_.numel(), requests, why)) {
        return false;
      }
    }
    for (int64_t k = start_ + 1; k <= version_; ++k) {
      DeferralWindow window(may_defer_ && k == version_);
      if (!apply(*storage_.tape[k].node, why)) {
        return false;
      }
    }
    *out = buffer_;
    return true;
  }

  // Storages made by an element-wise op (x.to(torch.bfloat16), x * 2,
  // x.clone()) from lazy inputs of the same shape: the inputs are replayed
  // over the same spans, then the op runs on each span.
  bool plan_derived(Node& creation, std::string* why) {
    const std::string& name = op_name(creation);
    const Geometry& out = storage_.creation_geometry;
    if (!op_info(*creation.op).element_wise || !creation_covers_storage(storage_)) {
      *why = "created by " + name + ", which is neither a constant fill nor element-wise";
      return false;
    }
    *why = bad_alpha(creation);
    if (!why->empty()) {
      return false;
    }
    for (size_t i = 0; i < creation.tensors.size(); ++i) {
      const TensorRef& ref = creation.tensors[i].ref;
      const int64_t n = ref.geometry.numel();
      if (ref.kind == TensorRef::Kind::kReal) {
        if (ref.real.numel() != 1 && ref.real.sizes() != c10::IntArrayRef(out.sizes)) {
          *why = name + " broadcasts a real tensor";
          return false;
        }
        continue;
      }
      TORCH_INTERNAL_ASSERT(ref.kind == TensorRef::Kind::kLazy);
      if (n == 1 && ref.storage->numel() <= kSmallLazy) {
        continue;  // resolved whole, like a scalar
      }
      int64_t in_begin = 0;
      int64_t in_numel = 0;
      if (ref.geometry.sizes != out.sizes || ref.dtype != ref.storage->dtype ||
          !contiguous_range(ref.geometry, &in_begin, &in_numel)) {
        *why = name + " reads a lazy tensor of another shape or layout";
        return false;
      }
      SpanReplay input(*ref.storage, ref.version, shifted(spans_, in_begin), device_);
      std::string inner;
      if (!input.plan(&inner)) {
        *why = name + " reads a lazy tensor that is not element-local (" + inner + ")";
        return false;
      }
      inputs_.push_back(DerivedInput{i, in_begin});
    }
    derived_ = &creation;
    return true;
  }

  // Random factories (torch.randn / torch.rand) with a region generator,
  // whose output is the whole storage in order.
  bool plan_random_creation(Node& creation, std::string* why) {
    const std::string& name = op_name(creation);
    if (find_region_fill(name, device_.type()) == nullptr || !creation_covers_storage(storage_)) {
      *why = "created by " + name + ", which has no region generator for " +
             c10::DeviceTypeName(device_.type());
      return false;
    }
    random_creation_ = &creation;
    return true;
  }

  bool fill_random(
      Node& node, int64_t numel, std::vector<RegionRequest>& requests, std::string* why) {
    const RegionFill* fill = find_region_fill(op_name(node), device_.type());
    count_random_run();
    if (!(*fill)(node, numel, requests)) {
      *why = op_name(node) + ": the region generator declined this call";
      return false;
    }
    return true;
  }

  // The spans cut into consecutive chunks of at most kDerivedChunk
  // elements: (offset in the buffer, spans). Rows stay together where whole
  // rows fit in a chunk.
  std::vector<std::pair<int64_t, std::vector<Span>>> derived_chunks() const {
    std::vector<std::pair<int64_t, std::vector<Span>>> chunks;
    int64_t at = 0;
    int64_t room = 0;
    auto new_chunk_if_full = [&] {
      if (room == 0) {
        chunks.emplace_back(at, std::vector<Span>());
        room = kDerivedChunk;
      }
    };
    for (const Span& span : spans_) {
      for (int64_t r = 0; r < span.rows;) {
        new_chunk_if_full();
        if (span.size() <= room) {
          const int64_t k = std::min(span.rows - r, room / span.size());
          Span rows = span.row(r);
          rows.rows = k;
          rows.row_step = k > 1 ? span.row_step : 0;
          chunks.back().second.push_back(rows);
          room -= rows.numel();
          at += rows.numel();
          r += k;
          continue;
        }
        const Span run = span.row(r++);
        for (int64_t b = run.begin; b < run.end;) {
          new_chunk_if_full();
          const int64_t e = std::min(run.end, b + room);
          chunks.back().second.push_back(Span{b, e});
          room -= e - b;
          at += e - b;
          b = e;
        }
      }
    }
    return chunks;
  }

  // Element-wise creation from lazy inputs, a chunk at a time: the inputs'
  // values (and theirs, recursively) are held for one chunk only, so the
  // peak stays near the piece's own size whatever the dtypes.
  bool run_derived(std::string* why) {
    at::NoGradGuard no_grad;
    DefaultDtypeGuard dtype(derived_->default_dtype);
    // Operands that are not replayed over the spans: scalars, or real
    // tensors of the output's shape (cut per span below).
    std::vector<at::Tensor> whole(derived_->tensors.size());
    std::vector<bool> replayed(derived_->tensors.size(), false);
    for (const auto& input : inputs_) {
      replayed[input.slot] = true;
    }
    bool per_span = false;
    for (size_t j = 0; j < derived_->tensors.size(); ++j) {
      if (!replayed[j]) {
        Replayer replayer(device_);
        at::Tensor t = replayer.resolve(derived_->tensors[j].ref, at::Tensor());
        whole[j] = t.dim() == 0 ? t : t.reshape({-1});
        if (whole[j].numel() == 1) {
          whole[j] = on_target(whole[j], device_);
        } else {
          per_span = true;  // cut per span, then moved (piece_on_target)
        }
      }
    }
    const MappedReads mapped(whole);
    for (const auto& chunk : derived_chunks()) {
      const std::vector<Span>& spans = chunk.second;
      std::vector<at::Tensor> values(derived_->tensors.size());
      for (const auto& input : inputs_) {
        const TensorRef& ref = derived_->tensors[input.slot].ref;
        SpanReplay replay(*ref.storage, ref.version, shifted(spans, input.shift), device_);
        if (!replay.run(&values[input.slot], why, at::Tensor())) {
          return false;
        }
      }
      auto run_op = [&](int64_t at, int64_t size, const Span* span) {
        std::vector<c10::IValue> stack = derived_->args;
        copy_tensor_lists(stack);
        for (size_t j = 0; j < derived_->tensors.size(); ++j) {
          at::Tensor t = replayed[j] ? values[j].narrow(0, at, size) : whole[j];
          if (span != nullptr && !replayed[j] && t.numel() != 1) {
            t = piece_on_target(t, span->begin, span->size(), device_);
          }
          set_tensor(stack, derived_->tensors[j].arg, derived_->tensors[j].element, t);
        }
        for (size_t d : derived_->device_args) {
          stack[d] = c10::IValue(device_);
        }
        derived_->op->callBoxed(&stack);
        buffer_.narrow(0, chunk.first + at, size)
            .copy_(stack[storage_.tape.front().output].toTensor());
      };
      int64_t total = 0;
      for (const Span& span : spans) {
        total += span.numel();
      }
      if (!per_span) {
        run_op(0, total, nullptr);  // element-wise: the chunk's spans at once
        continue;
      }
      const std::vector<Span> runs = split_rows(spans);
      if (!mapped.any()) {
        int64_t at = 0;
        for (const Span& span : runs) {
          run_op(at, span.size(), &span);
          at += span.size();
        }
        continue;
      }
      // A chunk holds at most kDerivedChunk elements (a few MiB of the
      // file): its runs are prefetched and released one by one.
      std::vector<std::pair<int64_t, int64_t>> ranges;
      std::vector<int64_t> offsets;
      int64_t at = 0;
      for (const Span& span : runs) {
        ranges.emplace_back(span.begin, span.size());
        offsets.push_back(at);
        at += span.size();
      }
      mapped.each(whole, ranges, [&](size_t k) { run_op(offsets[k], runs[k].size(), &runs[k]); });
    }
    return true;
  }

 public:
  // Picks the starting value and checks every later node is local.
  bool plan(std::string* why) {
    storage_.check_usable();
    const int64_t version = version_;
    if (storage_.cached.defined() && storage_.cached_version == version) {
      start_ = version;
      source_ = storage_.cached.to(device_);
      return true;
    }
    start_ = -1;
    for (int64_t k = version; k >= 0; --k) {
      if (storage_.tape[k].node->is_constant()) {
        start_ = k;
        source_ = storage_.tape[k].node->constant;
        break;
      }
    }
    for (int64_t k = version; k > std::max<int64_t>(start_, 0); --k) {
      if (overwrites_storage(storage_, *storage_.tape[k].node)) {
        start_ = k - 1;
        source_ = at::Tensor();
        break;
      }
    }
    if (start_ < 0) {
      Node& creation = *storage_.tape.front().node;
      auto fill = creation_fill(creation);
      if (fill.has_value()) {
        fill_ = *fill;
      } else if (creation.is_random()) {
        if (!plan_random_creation(creation, why)) {
          return false;
        }
      } else if (!plan_derived(creation, why)) {
        return false;
      }
      start_ = 0;
    }
    for (int64_t k = start_ + 1; k <= version; ++k) {
      *why = not_local(storage_, *storage_.tape[k].node, device_.type());
      if (!why->empty()) {
        return false;
      }
    }
    if (source_.defined()) {
      source_ = source_.to(device_);
    }
    return true;
  }

 private:
  bool apply(Node& node, std::string* why) {
    const TensorRef& self = node.tensors[node.self_slot].ref;
    int64_t begin = 0;
    int64_t numel = 0;
    contiguous_range(self.geometry, &begin, &numel);
    std::vector<RegionRequest> requests;
    for (size_t i = 0; i < spans_.size(); ++i) {
      const Span& span = spans_[i];
      if (span.begin >= begin && span.last_end() <= begin + numel) {
        // The node writes all of the span (the common case: all of the
        // storage): its rows stay one request.
        requests.push_back(RegionRequest{
            {span.begin - begin, span.end - begin, span.rows, span.row_step}, parts_[i]});
        continue;
      }
      for (int64_t r = 0; r < span.rows; ++r) {
        const Span run = span.row(r);
        const int64_t lo = std::max(run.begin, begin);
        const int64_t hi = std::min(run.end, begin + numel);
        if (lo < hi) {
          requests.push_back(RegionRequest{
              {lo - begin, hi - begin},
              parts_[i].narrow(0, r * run.size() + lo - run.begin, hi - lo)});
        }
      }
    }
    if (requests.empty()) {
      return true;
    }
    at::NoGradGuard no_grad;
    DefaultDtypeGuard dtype(node.default_dtype);
    if (node.is_random()) {
      return fill_random(node, numel, requests, why);
    }
    // Other operands: scalars, self (same geometry, checked by not_local),
    // small lazy tensors replayed whole, or real tensors cut per request.
    std::vector<at::Tensor> operands(node.tensors.size());
    bool per_request = false;
    for (size_t j = 0; j < node.tensors.size(); ++j) {
      const auto& ref = node.tensors[j].ref;
      if (ref.kind == TensorRef::Kind::kSelf) {
        continue;
      }
      // Checks real operands were not modified since recording.
      Replayer replayer(device_);
      at::Tensor real = replayer.resolve(ref, at::Tensor());
      // Keep 0-dim vs dimensioned: it decides the computation dtype.
      if (real.numel() == 1) {
        operands[j] = on_target(real.dim() == 0 ? real : real.reshape({1}), device_);
      } else {
        operands[j] = real.reshape({-1});  // cut per request, then moved
        per_request = true;
      }
    }
    // Element-wise with scalar operands over every part whole: one call on
    // the whole buffer instead of one a span (a Shard(1) has one a row).
    const bool whole_buffer =
        !per_request && requests.size() == parts_.size() &&
        std::all_of(requests.begin(), requests.end(), [&](const RegionRequest& r) {
          return r.out.numel() == parts_[&r - requests.data()].numel();
        });
    auto run_op = [&](const at::Tensor& out, const RegionRequest* r) {
      std::vector<c10::IValue> stack = node.args;
      copy_tensor_lists(stack);
      for (size_t j = 0; j < node.tensors.size(); ++j) {
        at::Tensor t = operands[j];
        if (node.tensors[j].ref.kind == TensorRef::Kind::kSelf) {
          t = out;
        } else if (t.numel() != 1) {
          t = piece_on_target(t, r->begin, r->end - r->begin, device_);
        }
        set_tensor(stack, node.tensors[j].arg, node.tensors[j].element, t);
      }
      for (size_t i : node.device_args) {
        stack[i] = c10::IValue(device_);
      }
      node.op->callBoxed(&stack);
    };
    if (whole_buffer) {
      run_op(buffer_, nullptr);
      return true;
    }
    if (per_request) {
      split_rows(requests);  // operands are cut one range at a time
    }
    const MappedReads mapped(operands);
    if (!mapped.any()) {
      for (auto& r : requests) {
        run_op(r.out, &r);
      }
      return true;
    }
    // Operands read from a checkpoint's mapping: ranges of at most a chunk,
    // each prefetched before and released after its read.
    std::vector<RegionRequest> chunks;
    for (auto& r : requests) {
      for (int64_t b = r.begin; b < r.end; b += mapped.chunk()) {
        const int64_t e = std::min(r.end, b + mapped.chunk());
        chunks.push_back(RegionRequest{{b, e}, r.out.narrow(0, b - r.begin, e - b)});
      }
    }
    std::vector<std::pair<int64_t, int64_t>> ranges;
    for (const auto& c : chunks) {
      ranges.emplace_back(c.begin, c.end - c.begin);
    }
    mapped.each(operands, ranges, [&](size_t k) { run_op(chunks[k].out, &chunks[k]); });
    return true;
  }

  LazyStorage& storage_;
  int64_t version_;
  std::vector<Span> spans_;
  c10::Device device_;
  bool may_defer_;                   // the tape's last write may be queued (DeferralWindow)
  Node* derived_ = nullptr;          // element-wise creation op, if the start is one
  Node* random_creation_ = nullptr;  // random factory, if the start is one
  // Its lazy inputs: which tensor slot, and where the output's element 0
  // sits in the input's storage.
  struct DerivedInput {
    size_t slot;
    int64_t shift;
  };
  std::vector<DerivedInput> inputs_;
  int64_t start_ = 0;
  at::Tensor source_;                               // value at start_ (flat), if any
  c10::optional<c10::optional<c10::Scalar>> fill_;  // creation fill, if any
  at::Tensor buffer_;
  std::vector<at::Tensor> parts_;
};

}  // namespace

void split_rows(std::vector<RegionRequest>& requests) {
  const bool any_rows = std::any_of(
      requests.begin(), requests.end(), [](const RegionRequest& r) { return r.rows > 1; });
  if (!any_rows) {
    return;
  }
  std::vector<RegionRequest> runs;
  for (auto& r : requests) {
    const int64_t len = r.end - r.begin;
    for (int64_t k = 0; k < r.rows; ++k) {
      runs.push_back(RegionRequest{r.row(k), r.rows == 1 ? r.out : r.out.narrow(0, k * len, len)});
    }
  }
  requests = std::move(runs);
}

bool replay_spans(
    LazyStorage& storage,
    int64_t version,
    std::vector<Span> spans,
    c10::Device device,
    at::Tensor* out,
    std::string* why,
    const at::Tensor& dest,
    bool may_defer) {
  SpanReplay replay(storage, version, std::move(spans), device, may_defer);
  return replay.run(out, why, dest);
}

}  // namespace lazyinit
