// Cheap request checks done at the router before any routing (the workers check again, including
// what only they know, such as token ids against the vocabulary).
#pragma once

#include "absl/status/status.h"
#include "sqa/v1/inference.pb.h"

namespace sqa::router {

// INVALID_ARGUMENT for: empty prompt, negative token ids, max_tokens <= 0, temperature < 0 or not
// finite, top_k < 0, top_p outside [0, 1] (0 means off), negative stop tokens, and resume_tokens
// (internal to the router).
absl::Status ValidateGenerateRequest(const v1::GenerateRequest& r);
absl::Status ValidateEncodeRequest(const v1::EncodeRequest& r);

}  // namespace sqa::router
