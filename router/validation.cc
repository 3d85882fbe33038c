#include "router/validation.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace sqa::router {
namespace {

absl::Status ValidatePrompt(const google::protobuf::RepeatedField<int32_t>& prompt) {
  if (prompt.empty()) return absl::InvalidArgumentError("prompt_tokens is empty");
  for (int i = 0; i < prompt.size(); ++i) {
    if (prompt[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt_tokens[", i, "] = ", prompt[i], " is negative"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateGenerateRequest(const v1::GenerateRequest& r) {
  if (absl::Status s = ValidatePrompt(r.prompt_tokens()); !s.ok()) return s;
  if (r.max_tokens() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens must be > 0 (got ", r.max_tokens(), ")"));
  }
  const auto& p = r.sampling();
  if (!std::isfinite(p.temperature()) || p.temperature() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.temperature must be finite and >= 0 (got ", p.temperature(), ")"));
  }
  if (p.top_k() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.top_k must be >= 0 (got ", p.top_k(), ")"));
  }
  if (!(p.top_p() >= 0 && p.top_p() <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.top_p must be in (0, 1] (0 = off; got ", p.top_p(), ")"));
  }
  for (int t : r.stop_tokens()) {
    if (t < 0) return absl::InvalidArgumentError(absl::StrCat("stop token ", t, " is negative"));
  }
  if (!r.resume_tokens().empty()) {
    return absl::InvalidArgumentError("resume_tokens is internal to the router; leave it empty");
  }
  return absl::OkStatus();
}

absl::Status ValidateEncodeRequest(const v1::EncodeRequest& r) {
  return ValidatePrompt(r.prompt_tokens());
}

}  // namespace sqa::router
