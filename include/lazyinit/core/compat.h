// Every difference between the torch versions lazyinit supports lives here.
//
// Supported: torch 1.13 (Debian 12's LibTorch) to 2.14 (Debian unstable's;
// 2.11 with CUDA on the accelerator machine).
#pragma once

#include <ATen/core/Generator.h>
#include <c10/core/DeviceType.h>
#include <c10/core/DispatchKey.h>
#include <c10/util/Optional.h>
#include <torch/csrc/api/include/torch/version.h>

#include <c10/util/Exception.h>

#include <string>

#define LAZYINIT_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||           \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace lazyinit {
namespace compat {

template <typename T>
using optional = c10::optional<T>;
constexpr auto nullopt = c10::nullopt;

// Philox generators (CUDA) expose their counter offset through the generic
// Generator interface from torch 2.1 on; exact CUDA replay needs it.
constexpr bool kGeneratorHasOffset = LAZYINIT_TORCH_AT_LEAST(2, 1);

inline uint64_t generator_offset(at::Generator& gen) {
#if LAZYINIT_TORCH_AT_LEAST(2, 1)
  return gen.get_offset();
#else
  TORCH_CHECK(false, "lazyinit: exact CUDA replay needs torch >= 2.1 (Generator.get_offset).");
#endif
}

inline void set_generator_offset(at::Generator& gen, uint64_t offset) {
#if LAZYINIT_TORCH_AT_LEAST(2, 1)
  gen.set_offset(offset);
#else
  TORCH_CHECK(false, "lazyinit: exact CUDA replay needs torch >= 2.1 (Generator.set_offset).");
#endif
}

namespace detail {
template <typename Info>
auto clear_reverse_view_fn(Info& info, int) -> decltype(void(info.rev_view_fn_ = nullptr)) {
  info.rev_view_fn_ = nullptr;
}
template <typename Info>
void clear_reverse_view_fn(Info&, long) {}
}  // namespace detail

// Drops the function autograd repeats a view's call with (an
// autograd::ViewInfo's view_fn_: a std::function on torch 1.13, a ViewFunc
// with a reverse std::function beside it on torch 2.x), so that autograd
// re-creates the view with as_strided, as it does for CPU and CUDA views.
template <typename Info>
void clear_view_replay(Info& info) {
  info.view_fn_ = nullptr;
  detail::clear_reverse_view_fn(info, 0);
}

// Swallows torch warnings while alive (used around deliberate kernel
// overrides, which the dispatcher reports as warnings).
class SilenceWarnings {
 public:
  SilenceWarnings() : guard_(&handler_) {}

 private:
  struct Handler : c10::WarningHandler {
#if LAZYINIT_TORCH_AT_LEAST(2, 0)
    void process(const c10::Warning&) override {}
#else
    void process(const c10::SourceLocation&, const std::string&, const bool) override {}
#endif
  };
  Handler handler_;
#if LAZYINIT_TORCH_AT_LEAST(2, 0)
  c10::WarningUtils::WarningHandlerGuard guard_;
#else
  c10::Warning::WarningHandlerGuard guard_;
#endif
};

}  // namespace compat
}  // namespace lazyinit
