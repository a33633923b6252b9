// Walking and rewriting the tensors of a boxed argument list: plain Tensor
// arguments and elements of Tensor[] / Tensor?[] arguments.
#pragma once

#include <ATen/core/ivalue.h>
#include <ATen/core/stack.h>

#include <vector>

namespace lazyinit {

template <typename F>
void for_each_tensor(const std::vector<c10::IValue>& args, F&& f) {
  for (size_t i = 0; i < args.size(); ++i) {
    const auto& v = args[i];
    if (v.isTensor()) {
      const auto& t = v.toTensor();
      if (t.defined()) {
        f(i, int64_t{-1}, t);
      }
    } else if (v.isList()) {
      auto list = v.toList();
      for (size_t e = 0; e < list.size(); ++e) {
        c10::IValue element = list.get(e);
        if (element.isTensor() && element.toTensor().defined()) {
          f(i, static_cast<int64_t>(e), element.toTensor());
        }
      }
    }
  }
}

// Lists are shared by reference: copy every list that holds tensors before
// its elements are replaced, so the caller's lists stay untouched.
inline void copy_tensor_lists(std::vector<c10::IValue>& args) {
  for (auto& v : args) {
    if (v.isList()) {
      auto list = v.toList();
      bool has_tensor = false;
      for (size_t e = 0; e < list.size() && !has_tensor; ++e) {
        has_tensor = list.get(e).isTensor();
      }
      if (has_tensor) {
        v = c10::IValue(list.copy());
      }
    }
  }
}

// A boxed call's `num_args` arguments on `stack` give way to its outputs.
inline void return_outputs(
    torch::jit::Stack* stack, size_t num_args, std::vector<c10::IValue> outputs) {
  torch::jit::drop(*stack, num_args);
  for (auto& out : outputs) {
    stack->push_back(std::move(out));
  }
}

inline void set_tensor(
    std::vector<c10::IValue>& args, size_t arg, int64_t element, const at::Tensor& t) {
  if (element < 0) {
    args[arg] = c10::IValue(t);
  } else {
    auto list = args[arg].toList();
    list.set(static_cast<size_t>(element), c10::IValue(t));
  }
}

}  // namespace lazyinit
