// What the recorder needs to know about an operator, read once from its
// schema: which arguments it writes, which outputs alias which arguments,
// where its device/dtype/generator arguments are, and whether it draws
// random numbers.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/function_schema.h>

#include <vector>

namespace lazyinit {

struct OpInfo {
  enum class ReturnKind { kFresh, kView, kMutated };
  struct Return {
    ReturnKind kind = ReturnKind::kFresh;
    int64_t arg = -1;  // the aliased argument for kView / kMutated
    bool is_list = false;
  };

  std::vector<size_t> written_args;  // Tensor(a!) arguments
  // Arguments the kernel writes although the schema does not say so
  // (native_batch_norm's running_mean / running_var), written only when the
  // bool argument `unannotated_write_if` is true (-1: always). See
  // written_args_of().
  std::vector<size_t> unannotated_writes;
  int64_t unannotated_write_if = -1;
  std::vector<Return> returns;
  std::vector<size_t> device_args;  // Device / Device? arguments
  int64_t dtype_arg = -1;           // ScalarType? dtype of factories
  int64_t generator_arg = -1;       // Generator? argument
  bool random = false;
  bool has_tensor_args = false;
  bool returns_non_tensor = false;  // e.g. item(): needs values
  // aten::normal_ / aten::uniform_ (Tensor, float, float, Generator?):
  // their Meta kernels only check the two floats and return self, so the
  // recorder checks them itself (plain_fill_is_valid in recorder.cpp).
  enum class PlainFill { kNone, kNormal, kUniform };
  PlainFill plain_fill = PlainFill::kNone;
  // aten::copy_ (Tensor self, Tensor src, bool non_blocking): its Meta
  // kernel does not check that src broadcasts to self; the recorder does.
  bool is_copy = false;
  // aten::add_ / sub_ / mul_ / div_: the result type of self and other must
  // cast to self's dtype. torch 2.14's Meta kernel of mul_ does not check
  // (int64.mul_(1.5) passes); the recorder does.
  bool in_place_arithmetic = false;
  // div_ without a rounding mode: integer operands give a floating result.
  bool true_division = false;
  // Arguments whose values eager's CPU kernel checks and Meta kernels
  // cannot: those named `index` / `indices` (range and dtype), the
  // probabilities of bernoulli / multinomial / poisson / binomial, normal's
  // `std` (kernel_check.h runs the kernel on their values at the call).
  std::vector<size_t> value_checked_args;
  // Matrix products (mm, bmm, addmm, mv, dot, ...) and masked fills: every
  // error their CPU kernel raises on small stand-ins is eager's (operand
  // and mask dtypes, dot's lengths), which some torch versions' Meta
  // kernels do not check (layout.h).
  bool stand_in_errors_are_eagers = false;
  // Facts replay and shard replay read (every op-name list is in
  // op_info.cpp):
  // - a creation op that fills a constant (empty*: nothing, zeros*, ones*,
  //   full*: fill_value);
  enum class Creation { kNone, kEmpty, kZeros, kOnes, kFull };
  Creation creation = Creation::kNone;
  // - writes every element of its first argument and reads none of it
  //   (fills, random fills, copy_): what the tape held before is dead;
  bool overwrites_self = false;
  // - in-place element-wise and position-independent: an element's value
  //   is the same wherever it sits (ops with a transcendental vectorized
  //   path, exp_ or tanh_, are not: Sleef and scalar code may differ in
  //   the last bit, and which elements take the scalar tail depends on
  //   where a range starts), so it replays over any span of its storage;
  bool element_local = false;
  // - the out-of-place counterparts (and _to_copy, clone): a storage they
  //   create replays span by span from its inputs;
  bool element_wise = false;
  // - a new tensor copying its one input (_to_copy, clone): a copy of a
  //   checkpoint's mapping may be a private mapping of the file;
  bool plain_copy = false;
  // - fills its first argument through PyTorch's
  //   distribution_nullary_kernel, one value per element (normal_,
  //   uniform_, log_normal_, exponential_, cauchy_, geometric_,
  //   bernoulli_.float): Philox positions are computable (philox.h).
  bool distribution_fill = false;
  // Whether a replay of it may raise on values the recorder cannot see
  // (indices out of range, singular matrices): recorded nodes then keep
  // their source location. False for fills, factories and views.
  bool may_fail_on_values = true;
};

const OpInfo& op_info(const c10::OperatorHandle& op);

// Whether an op draws random numbers: a Generator? argument, or one of the
// random ops without one (rand, randn, randint, randperm, dropout, ...).
bool is_random_op(const c10::FunctionSchema& schema);

// The arguments this call writes: the annotated ones, plus the unannotated
// ones where the call's arguments enable them (and are tensors).
std::vector<size_t> written_args_of(const OpInfo& info, const std::vector<c10::IValue>& args);

}  // namespace lazyinit
