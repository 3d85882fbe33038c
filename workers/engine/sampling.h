// Token sampling on host logits: greedy, temperature, top-k, top-p. Stateless randomness: the
// uniform draw for generated token number `step` of a request is a hash of (seed, step), so a
// request resumed elsewhere with the same seed and step continues identically.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace sqa {

struct SamplingParams {
  float temperature = 0.f;  // 0 = greedy (argmax; ties go to the lowest id)
  int32_t top_k = 0;        // 0 = off
  float top_p = 1.f;        // in (0, 1]; 1 = off
  uint64_t seed = 0;
};

// INVALID_ARGUMENT for temperature < 0 or non-finite, top_k < 0, top_p outside (0, 1].
absl::Status ValidateSamplingParams(const SamplingParams& p);

struct SampledToken {
  int32_t token = 0;
  float logprob = 0.f;  // log-probability of `token` under the unmodified softmax(logits)
};

// Samples from logits[0, vocab). `step` is the index of the token being generated (0-based).
SampledToken SampleToken(const float* logits, int64_t vocab, const SamplingParams& params, uint64_t step);

// Deterministic uniform in [0, 1) from (seed, step).
double UniformFromSeed(uint64_t seed, uint64_t step);

}  // namespace sqa
