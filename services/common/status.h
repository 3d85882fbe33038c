// Error handling helpers shared by every library: absl::Status on the request path, converted to
// grpc::Status only at service boundaries (services/grpc_status.h).
#pragma once

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define SQA_CONCAT_INNER_(a, b) a##b
#define SQA_CONCAT_(a, b) SQA_CONCAT_INNER_(a, b)

// Returns from the current function if `expr` (an absl::Status) is not OK.
#define SQA_RETURN_IF_ERROR(expr)                  \
  do {                                             \
    ::absl::Status sqa_status_ = (expr);           \
    if (!sqa_status_.ok()) return sqa_status_;    \
  } while (0)

// `lhs = value of expr` where expr is an absl::StatusOr<T>; returns its status on error.
#define SQA_ASSIGN_OR_RETURN(lhs, expr) \
  SQA_ASSIGN_OR_RETURN_IMPL_(SQA_CONCAT_(sqa_statusor_, __LINE__), lhs, expr)
#define SQA_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()

// Broken invariants only (never for bad input): prints and aborts.
#define SQA_CHECK(cond)                                                                 \
  do {                                                                                  \
    if (!(cond)) ::sqa::internal::CheckFailed(__FILE__, __LINE__, #cond);               \
  } while (0)

namespace sqa::internal {
[[noreturn]] void CheckFailed(const char* file, int line, const char* cond);
}  // namespace sqa::internal
