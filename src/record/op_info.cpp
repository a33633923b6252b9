#include <lazyinit/record/op_info.h>

#include <ATen/core/function_schema.h>
#include <ATen/core/jit_type.h>

#include <algorithm>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>

namespace lazyinit {
namespace {

bool is_device_type(const c10::TypePtr& type) {
  auto t = type;
  if (auto opt = t->cast<c10::OptionalType>()) {
    t = opt->getElementType();
  }
  return t->kind() == c10::TypeKind::DeviceObjType;
}

bool is_generator_type(const c10::TypePtr& type) {
  auto t = type;
  if (auto opt = t->cast<c10::OptionalType>()) {
    t = opt->getElementType();
  }
  return t->kind() == c10::TypeKind::GeneratorType;
}

bool is_tensor_like(const c10::TypePtr& type) {
  auto t = type;
  if (auto opt = t->cast<c10::OptionalType>()) {
    t = opt->getElementType();
  }
  if (auto list = t->cast<c10::ListType>()) {
    return is_tensor_like(list->getElementType());
  }
  return t->kind() == c10::TypeKind::TensorType;
}

// Alias sets of an argument or return, including those of list elements
// (`Tensor(a)[]`).
std::vector<c10::Symbol> alias_sets(const c10::Argument& arg) {
  std::vector<c10::Symbol> sets;
  const c10::AliasInfo* info = arg.alias_info();
  if (info == nullptr) {
    return sets;
  }
  for (const auto& s : info->beforeSets()) {
    sets.push_back(s);
  }
  for (const auto& contained : info->containedTypes()) {
    for (const auto& s : contained.beforeSets()) {
      sets.push_back(s);
    }
  }
  return sets;
}

bool is_write(const c10::Argument& arg) {
  const c10::AliasInfo* info = arg.alias_info();
  return info != nullptr && info->isWrite();
}

// Op facts by name: one row an op, one column a fact (OpInfo's fields say
// what each means). An op absent from the table has none of them.
enum OpFact : uint32_t {
  kRandom = 1u << 0,              // random, though its schema has no Generator
  kOverwritesSelf = 1u << 1,      // OpInfo::overwrites_self
  kElementLocal = 1u << 2,        // OpInfo::element_local
  kElementWise = 1u << 3,         // OpInfo::element_wise
  kDistributionFill = 1u << 4,    // OpInfo::distribution_fill (overload "")
  kCannotFail = 1u << 5,          // replay cannot fail on values
  kChecksOnlyMetadata = 1u << 6,  // OpInfo::stand_in_errors_are_eagers
  kInPlaceArithmetic = 1u << 7,   // OpInfo::in_place_arithmetic
  kPlainCopy = 1u << 8,           // OpInfo::plain_copy
};

struct OpRow {
  const char* name;
  uint32_t facts = 0;
  OpInfo::Creation creation = OpInfo::Creation::kNone;
  // Arguments besides `index` / `indices` whose values the CPU kernel
  // checks (probabilities, normal's std): OpInfo::value_checked_args.
  std::vector<std::string> value_checked = {};
  // Arguments the kernel writes though its schema leaves them unannotated,
  // and the bool argument that must be true for it (-1: always). Found by
  // comparing values before and after each kernel (torch 1.13 and 2.14;
  // rrelu_with_noise's noise is annotated from some 2.x on).
  std::vector<size_t> unannotated_writes = {};
  int64_t unannotated_write_if = -1;
};

// Ops with a fact, sorted by name. Matrix products and masked fills check
// only metadata the stand-ins' size map keeps (operand dtypes, dot's
// lengths: torch 1.13's Meta kernels check neither; the mask's dtype:
// torch 2.14's Meta kernel does not check it). erfinv_ is element-local:
// it has only a scalar kernel on the CPU.
const OpRow* op_row(const std::string& name) {
  static const std::vector<OpRow> rows = {
      {"aten::_addmm_activation", kChecksOnlyMetadata},
      {"aten::_to_copy", kElementWise | kCannotFail | kPlainCopy},
      {"aten::abs", kElementWise},
      {"aten::abs_", kElementLocal},
      {"aten::add", kElementWise | kCannotFail},
      {"aten::add_", kElementLocal | kCannotFail | kInPlaceArithmetic},
      {"aten::addbmm", kChecksOnlyMetadata},
      {"aten::addmm", kChecksOnlyMetadata},
      {"aten::addmv", kChecksOnlyMetadata},
      {"aten::addr", kChecksOnlyMetadata},
      {"aten::alpha_dropout", kRandom},
      {"aten::arange", kCannotFail},
      {"aten::baddbmm", kChecksOnlyMetadata},
      {"aten::batch_norm_update_stats", 0, OpInfo::Creation::kNone, {}, {1, 2}, -1},
      {"aten::bernoulli", kRandom, OpInfo::Creation::kNone, {"self", "p"}},
      {"aten::bernoulli_", kOverwritesSelf, OpInfo::Creation::kNone, {"p"}},
      {"aten::binomial", 0, OpInfo::Creation::kNone, {"count", "prob"}},
      {"aten::bmm", kChecksOnlyMetadata},
      {"aten::cauchy_", kOverwritesSelf | kDistributionFill},
      {"aten::ceil", kElementWise},
      {"aten::ceil_", kElementLocal},
      {"aten::clamp", kElementWise},
      {"aten::clamp_", kElementLocal},
      {"aten::clamp_max", kElementWise},
      {"aten::clamp_max_", kElementLocal},
      {"aten::clamp_min", kElementWise},
      {"aten::clamp_min_", kElementLocal},
      {"aten::clone", kElementWise | kCannotFail | kPlainCopy},
      {"aten::copy_", kOverwritesSelf | kElementLocal | kCannotFail},
      {"aten::cudnn_batch_norm", 0, OpInfo::Creation::kNone, {}, {3, 4}, 5},
      {"aten::div", kElementWise | kCannotFail},
      {"aten::div_", kElementLocal | kCannotFail | kInPlaceArithmetic},
      {"aten::dot", kChecksOnlyMetadata},
      {"aten::dropout", kRandom},
      {"aten::dropout_", kRandom},
      {"aten::empty", kCannotFail, OpInfo::Creation::kEmpty},
      {"aten::empty_like", kCannotFail, OpInfo::Creation::kEmpty},
      {"aten::empty_strided", kCannotFail, OpInfo::Creation::kEmpty},
      {"aten::erfinv", kElementWise},
      {"aten::erfinv_", kElementLocal},
      {"aten::exponential_", kOverwritesSelf | kDistributionFill},
      {"aten::feature_dropout", kRandom},
      {"aten::fill_", kOverwritesSelf | kElementLocal | kCannotFail},
      {"aten::floor", kElementWise},
      {"aten::floor_", kElementLocal},
      {"aten::full", kCannotFail, OpInfo::Creation::kFull},
      {"aten::full_like", kCannotFail, OpInfo::Creation::kFull},
      {"aten::geometric_", kOverwritesSelf | kDistributionFill},
      {"aten::linspace", kCannotFail},
      {"aten::log_normal_", kOverwritesSelf | kDistributionFill},
      {"aten::masked_fill", kElementWise | kChecksOnlyMetadata},
      {"aten::masked_fill_", kElementLocal | kChecksOnlyMetadata},
      {"aten::miopen_batch_norm", 0, OpInfo::Creation::kNone, {}, {3, 4}, 5},
      {"aten::mm", kChecksOnlyMetadata},
      {"aten::mul", kElementWise | kCannotFail},
      {"aten::mul_", kElementLocal | kCannotFail | kInPlaceArithmetic},
      {"aten::multinomial", kRandom, OpInfo::Creation::kNone, {"self"}},
      {"aten::mv", kChecksOnlyMetadata},
      {"aten::native_batch_norm", 0, OpInfo::Creation::kNone, {}, {3, 4}, 5},
      {"aten::native_dropout", kRandom},
      {"aten::neg", kElementWise},
      {"aten::neg_", kElementLocal},
      {"aten::new_empty", kCannotFail, OpInfo::Creation::kEmpty},
      {"aten::new_empty_strided", kCannotFail, OpInfo::Creation::kEmpty},
      {"aten::new_full", kCannotFail, OpInfo::Creation::kFull},
      {"aten::new_ones", kCannotFail, OpInfo::Creation::kOnes},
      {"aten::new_zeros", kCannotFail, OpInfo::Creation::kZeros},
      {"aten::normal", 0, OpInfo::Creation::kNone, {"std"}},
      {"aten::normal_", kOverwritesSelf | kDistributionFill | kCannotFail},
      {"aten::ones", kCannotFail, OpInfo::Creation::kOnes},
      {"aten::ones_like", kCannotFail, OpInfo::Creation::kOnes},
      {"aten::poisson", 0, OpInfo::Creation::kNone, {"self"}},
      {"aten::rand", kRandom | kCannotFail},
      {"aten::rand_like", kRandom},
      {"aten::randint", kRandom},
      {"aten::randint_like", kRandom},
      {"aten::randn", kRandom | kCannotFail},
      {"aten::randn_like", kRandom},
      {"aten::random_", kOverwritesSelf},
      {"aten::randperm", kRandom},
      {"aten::reciprocal", kElementWise},
      {"aten::reciprocal_", kElementLocal},
      {"aten::relu", kElementWise},
      {"aten::relu_", kElementLocal},
      {"aten::rrelu", kRandom},
      {"aten::rrelu_", kRandom},
      {"aten::rrelu_with_noise", 0, OpInfo::Creation::kNone, {}, {1}, 4},
      {"aten::rrelu_with_noise_", 0, OpInfo::Creation::kNone, {}, {1}, 4},
      {"aten::sign", kElementWise},
      {"aten::sign_", kElementLocal},
      {"aten::sqrt", kElementWise},
      {"aten::sqrt_", kElementLocal},
      {"aten::sub", kElementWise | kCannotFail},
      {"aten::sub_", kElementLocal | kCannotFail | kInPlaceArithmetic},
      {"aten::trunc", kElementWise},
      {"aten::trunc_", kElementLocal},
      {"aten::uniform_", kOverwritesSelf | kDistributionFill | kCannotFail},
      {"aten::vdot", kChecksOnlyMetadata},
      {"aten::zero_", kOverwritesSelf | kElementLocal | kCannotFail},
      {"aten::zeros", kCannotFail, OpInfo::Creation::kZeros},
      {"aten::zeros_like", kCannotFail, OpInfo::Creation::kZeros},
  };
  static const std::unordered_map<std::string, const OpRow*> by_name = [] {
    std::unordered_map<std::string, const OpRow*> map;
    for (const OpRow& row : rows) {
      map.emplace(row.name, &row);
    }
    return map;
  }();
  const auto it = by_name.find(name);
  return it == by_name.end() ? nullptr : it->second;
}

bool has_fact(const std::string& name, OpFact fact) {
  const OpRow* row = op_row(name);
  return row != nullptr && (row->facts & fact) != 0;
}

// Arguments whose values the CPU kernel checks (OpInfo::value_checked_args).
std::vector<size_t> value_checked_args(const c10::FunctionSchema& schema) {
  const OpRow* row = op_row(schema.name());
  std::vector<size_t> out;
  const auto& args = schema.arguments();
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& name = args[i].name();
    const bool checked =
        name == "index" || name == "indices" ||
        (row != nullptr && std::find(row->value_checked.begin(), row->value_checked.end(), name) !=
                               row->value_checked.end());
    // bernoulli.p(self, float p): self's values are not read.
    const bool float_p_overload =
        schema.name() == "aten::bernoulli" && schema.overload_name() == "p" && name == "self";
    if (checked && !float_p_overload && is_tensor_like(args[i].type())) {
      out.push_back(i);
    }
  }
  return out;
}

// The element-wise facts (OpInfo::overwrites_self, element_local,
// element_wise, distribution_fill).
void add_element_facts(const c10::FunctionSchema& schema, OpInfo& info) {
  const std::string& name = schema.name();
  info.overwrites_self = has_fact(name, kOverwritesSelf);
  info.element_local = has_fact(name, kElementLocal);
  info.element_wise = has_fact(name, kElementWise);
  info.plain_copy = has_fact(name, kPlainCopy);
  info.distribution_fill = (has_fact(name, kDistributionFill) && schema.overload_name().empty()) ||
                           (name == "aten::bernoulli_" && schema.overload_name() == "float");
}

// Arguments and returns: device, generator, dtype and written arguments,
// returns aliasing an argument (views, or the written argument).
void add_schema_facts(const c10::FunctionSchema& schema, OpInfo& info) {
  const auto& args = schema.arguments();
  for (size_t i = 0; i < args.size(); ++i) {
    const auto& arg = args[i];
    if (is_device_type(arg.type())) {
      info.device_args.push_back(i);
    } else if (is_generator_type(arg.type())) {
      info.generator_arg = static_cast<int64_t>(i);
    } else if (arg.name() == "dtype") {
      info.dtype_arg = static_cast<int64_t>(i);
    }
    if (is_tensor_like(arg.type())) {
      info.has_tensor_args = true;
    }
    if (is_write(arg)) {
      info.written_args.push_back(i);
    }
  }
  for (const auto& ret : schema.returns()) {
    OpInfo::Return r;
    r.is_list = ret.type()->kind() == c10::TypeKind::ListType;
    if (!is_tensor_like(ret.type())) {
      info.returns_non_tensor = true;
    }
    for (const auto& set : alias_sets(ret)) {
      for (size_t i = 0; i < args.size() && r.arg < 0; ++i) {
        for (const auto& arg_set : alias_sets(args[i])) {
          if (arg_set == set) {
            r.arg = static_cast<int64_t>(i);
            r.kind = is_write(args[i]) ? OpInfo::ReturnKind::kMutated : OpInfo::ReturnKind::kView;
          }
        }
      }
    }
    info.returns.push_back(r);
  }
  if (const OpRow* row = op_row(schema.name())) {
    for (size_t i : row->unannotated_writes) {
      if (i < args.size() && !is_write(args[i])) {
        info.unannotated_writes.push_back(i);
      }
    }
    if (!row->unannotated_writes.empty()) {
      info.unannotated_write_if = row->unannotated_write_if;
    }
  }
}

// What the recorder checks itself, and where (OpInfo's check facts).
void add_check_facts(const c10::FunctionSchema& schema, OpInfo& info) {
  const std::string& name = schema.name();
  const std::string& overload = schema.overload_name();
  const bool is_view = std::any_of(
      info.returns.begin(), info.returns.end(),
      [](const OpInfo::Return& r) { return r.kind == OpInfo::ReturnKind::kView; });
  info.may_fail_on_values = !is_view && !has_fact(name, kCannotFail);
  info.value_checked_args = value_checked_args(schema);
  info.stand_in_errors_are_eagers = has_fact(name, kChecksOnlyMetadata);
  info.is_copy = name == "aten::copy_" && overload.empty();
  info.in_place_arithmetic = has_fact(name, kInPlaceArithmetic);
  info.true_division = name == "aten::div_" && (overload == "Tensor" || overload == "Scalar");
  if (overload.empty() && name == "aten::normal_") {
    info.plain_fill = OpInfo::PlainFill::kNormal;
  } else if (overload.empty() && name == "aten::uniform_") {
    info.plain_fill = OpInfo::PlainFill::kUniform;
  }
}

OpInfo analyze(const c10::OperatorHandle& op) {
  const auto& schema = op.schema();
  OpInfo info;
  add_schema_facts(schema, info);
  info.random = is_random_op(schema);
  const OpRow* row = op_row(schema.name());
  info.creation = row != nullptr ? row->creation : OpInfo::Creation::kNone;
  add_element_facts(schema, info);
  add_check_facts(schema, info);
  return info;
}

}  // namespace

std::vector<size_t> written_args_of(const OpInfo& info, const std::vector<c10::IValue>& args) {
  std::vector<size_t> written = info.written_args;
  if (info.unannotated_writes.empty()) {
    return written;
  }
  const int64_t cond = info.unannotated_write_if;
  if (cond >= 0 &&
      !(cond < static_cast<int64_t>(args.size()) && args[cond].isBool() && args[cond].toBool())) {
    return written;
  }
  for (size_t i : info.unannotated_writes) {
    if (i < args.size() && args[i].isTensor()) {
      written.push_back(i);
    }
  }
  return written;
}

bool is_random_op(const c10::FunctionSchema& schema) {
  for (const auto& arg : schema.arguments()) {
    if (is_generator_type(arg.type())) {
      return true;
    }
  }
  return has_fact(schema.name(), kRandom);
}

const OpInfo& op_info(const c10::OperatorHandle& op) {
  static std::mutex mutex;
  static std::unordered_map<const void*, std::unique_ptr<OpInfo>> cache;
  // The schema object lives as long as the operator registration.
  const void* key = &op.schema();
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it == cache.end()) {
    it = cache.emplace(key, std::make_unique<OpInfo>(analyze(op))).first;
  }
  return *it->second;
}

}  // namespace lazyinit
