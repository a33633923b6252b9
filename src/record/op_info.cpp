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

// Kernels that write arguments their schema leaves unannotated: the
// argument positions, and the bool argument that must be true for it (-1:
// always). Found by comparing values before and after each kernel (torch
// 1.13 and 2.14; rrelu_with_noise's noise is annotated from some 2.x on).
struct UnannotatedWrite {
  const char* name;
  std::vector<size_t> args;
  int64_t if_arg;
};

const std::vector<UnannotatedWrite>& unannotated_writes() {
  static const std::vector<UnannotatedWrite> table = {
      {"aten::native_batch_norm", {3, 4}, 5}, {"aten::cudnn_batch_norm", {3, 4}, 5},
      {"aten::miopen_batch_norm", {3, 4}, 5}, {"aten::batch_norm_update_stats", {1, 2}, -1},
      {"aten::rrelu_with_noise", {1}, 4},     {"aten::rrelu_with_noise_", {1}, 4},
  };
  return table;
}

// Arguments whose values the CPU kernel checks (OpInfo::value_checked_args).
std::vector<size_t> value_checked_args(const c10::FunctionSchema& schema) {
  static const std::unordered_map<std::string, std::set<std::string>> probabilities = {
      {"aten::bernoulli", {"self", "p"}},    {"aten::bernoulli_", {"p"}},
      {"aten::multinomial", {"self"}},       {"aten::poisson", {"self"}},
      {"aten::binomial", {"count", "prob"}}, {"aten::normal", {"std"}},
  };
  const auto it = probabilities.find(schema.name());
  std::vector<size_t> out;
  const auto& args = schema.arguments();
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& name = args[i].name();
    const bool checked = name == "index" || name == "indices" ||
                         (it != probabilities.end() && it->second.count(name) > 0);
    // bernoulli.p(self, float p): self's values are not read.
    const bool float_p_overload =
        schema.name() == "aten::bernoulli" && schema.overload_name() == "p" && name == "self";
    if (checked && !float_p_overload && is_tensor_like(args[i].type())) {
      out.push_back(i);
    }
  }
  return out;
}

// Random ops whose schema has no Generator argument.
const std::set<std::string>& random_op_names() {
  static const std::set<std::string> names = {
      "aten::rand",      "aten::randn",      "aten::randint",         "aten::randperm",
      "aten::rand_like", "aten::randn_like", "aten::randint_like",    "aten::native_dropout",
      "aten::dropout",   "aten::dropout_",   "aten::feature_dropout", "aten::alpha_dropout",
      "aten::rrelu",     "aten::rrelu_",     "aten::bernoulli",       "aten::multinomial",
  };
  return names;
}

OpInfo::Creation creation_of(const std::string& name) {
  static const std::unordered_map<std::string, OpInfo::Creation> table = {
      {"aten::empty", OpInfo::Creation::kEmpty},
      {"aten::empty_strided", OpInfo::Creation::kEmpty},
      {"aten::new_empty", OpInfo::Creation::kEmpty},
      {"aten::new_empty_strided", OpInfo::Creation::kEmpty},
      {"aten::empty_like", OpInfo::Creation::kEmpty},
      {"aten::zeros", OpInfo::Creation::kZeros},
      {"aten::new_zeros", OpInfo::Creation::kZeros},
      {"aten::zeros_like", OpInfo::Creation::kZeros},
      {"aten::ones", OpInfo::Creation::kOnes},
      {"aten::new_ones", OpInfo::Creation::kOnes},
      {"aten::ones_like", OpInfo::Creation::kOnes},
      {"aten::full", OpInfo::Creation::kFull},
      {"aten::new_full", OpInfo::Creation::kFull},
      {"aten::full_like", OpInfo::Creation::kFull},
  };
  const auto it = table.find(name);
  return it == table.end() ? OpInfo::Creation::kNone : it->second;
}

// The element-wise facts (OpInfo::overwrites_self, element_local,
// element_wise, distribution_fill).
void add_element_facts(const c10::FunctionSchema& schema, OpInfo& info) {
  static const std::set<std::string> overwriting = {
      "aten::normal_",     "aten::uniform_",   "aten::random_",      "aten::fill_",
      "aten::zero_",       "aten::copy_",      "aten::exponential_", "aten::cauchy_",
      "aten::log_normal_", "aten::geometric_", "aten::bernoulli_",
  };
  // erfinv_ has only a scalar kernel on the CPU.
  static const std::set<std::string> local = {
      "aten::fill_",        "aten::zero_", "aten::copy_",  "aten::mul_",       "aten::div_",
      "aten::add_",         "aten::sub_",  "aten::clamp_", "aten::clamp_min_", "aten::clamp_max_",
      "aten::erfinv_",      "aten::neg_",  "aten::abs_",   "aten::sqrt_",      "aten::reciprocal_",
      "aten::relu_",        "aten::sign_", "aten::floor_", "aten::ceil_",      "aten::trunc_",
      "aten::masked_fill_",
  };
  static const std::set<std::string> element_wise = {
      "aten::_to_copy",  "aten::clone",  "aten::mul",  "aten::div",        "aten::add",
      "aten::sub",       "aten::neg",    "aten::abs",  "aten::clamp",      "aten::clamp_min",
      "aten::clamp_max", "aten::erfinv", "aten::sqrt", "aten::reciprocal", "aten::relu",
      "aten::sign",      "aten::floor",  "aten::ceil", "aten::trunc",      "aten::masked_fill",
  };
  static const std::set<std::string> distribution = {
      "aten::normal_",      "aten::uniform_", "aten::log_normal_",
      "aten::exponential_", "aten::cauchy_",  "aten::geometric_",
  };
  const std::string& name = schema.name();
  info.overwrites_self = overwriting.count(name) > 0;
  info.element_local = local.count(name) > 0;
  info.element_wise = element_wise.count(name) > 0;
  info.distribution_fill = (distribution.count(name) > 0 && schema.overload_name().empty()) ||
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
  for (const auto& w : unannotated_writes()) {
    if (schema.name() != w.name) {
      continue;
    }
    for (size_t i : w.args) {
      if (i < args.size() && !is_write(args[i])) {
        info.unannotated_writes.push_back(i);
      }
    }
    info.unannotated_write_if = w.if_arg;
  }
}

// Ops whose replay cannot fail on values (OpInfo::may_fail_on_values).
bool cannot_fail(const std::string& name) {
  static const std::set<std::string> names = {
      "aten::empty",
      "aten::empty_strided",
      "aten::empty_like",
      "aten::zeros",
      "aten::zeros_like",
      "aten::ones",
      "aten::ones_like",
      "aten::full",
      "aten::full_like",
      "aten::new_empty",
      "aten::new_empty_strided",
      "aten::new_zeros",
      "aten::new_ones",
      "aten::new_full",
      "aten::fill_",
      "aten::zero_",
      "aten::normal_",
      "aten::uniform_",
      "aten::rand",
      "aten::randn",
      "aten::copy_",
      "aten::_to_copy",
      "aten::clone",
      "aten::mul",
      "aten::mul_",
      "aten::add",
      "aten::add_",
      "aten::sub",
      "aten::sub_",
      "aten::div",
      "aten::div_",
      "aten::arange",
      "aten::linspace",
  };
  return names.count(name) > 0;
}

// Ops whose CPU kernel checks only metadata the size map keeps (dtypes,
// broadcasting, equal lengths) and that take no size-valued scalars:
// matrix products (operand dtypes, dot's lengths; torch 1.13's Meta
// kernels check neither) and masked fills (the mask's dtype; torch 2.14's
// Meta kernel does not check it).
bool checks_only_metadata(const std::string& name) {
  static const std::set<std::string> names = {
      "aten::mm",
      "aten::bmm",
      "aten::addmm",
      "aten::addbmm",
      "aten::baddbmm",
      "aten::mv",
      "aten::addmv",
      "aten::dot",
      "aten::vdot",
      "aten::addr",
      "aten::_addmm_activation",
      "aten::masked_fill",
      "aten::masked_fill_",
  };
  return names.count(name) > 0;
}

// What the recorder checks itself, and where (OpInfo's check facts).
void add_check_facts(const c10::FunctionSchema& schema, OpInfo& info) {
  const std::string& name = schema.name();
  const std::string& overload = schema.overload_name();
  const bool is_view = std::any_of(
      info.returns.begin(), info.returns.end(),
      [](const OpInfo::Return& r) { return r.kind == OpInfo::ReturnKind::kView; });
  info.may_fail_on_values = !is_view && !cannot_fail(name);
  info.value_checked_args = value_checked_args(schema);
  info.stand_in_errors_are_eagers = checks_only_metadata(name);
  info.is_copy = name == "aten::copy_" && overload.empty();
  info.in_place_arithmetic =
      name == "aten::add_" || name == "aten::sub_" || name == "aten::mul_" || name == "aten::div_";
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
  info.creation = creation_of(schema.name());
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
  return random_op_names().count(schema.name()) > 0;
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
