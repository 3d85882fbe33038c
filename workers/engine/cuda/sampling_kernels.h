// GPU token sampling with the rule of workers/engine/sampling.h (greedy; temperature with top-k
// and top-p over candidates ordered by logit, ties by id; the uniform draw u comes from
// UniformFromSeed(seed, step), computed on the host and passed in). Launcher conventions as in
// elementwise.h: device pointers, explicit stream, asynchronous, INTERNAL on launch failure.
//
// Differences from the host code, all at the level of rounding: the softmax normaliser and the
// cumulative probabilities are summed in double in a different order, and NaN logits are treated
// as -inf (never picked) instead of being dropped from the candidate list.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace sqa::cuda {

struct SampleRowParams {
  float temperature = 0.f;  // <= 0: greedy
  int32_t top_k = 0;        // 0: all
  float top_p = 1.f;
  double u = 0.0;           // UniformFromSeed(seed, step), in [0, 1)
};

// Scratch the launcher needs for `rows` rows of `vocab` logits.
size_t SampleWorkspaceBytes(int rows, int64_t vocab);

// logits: f32 [rows, vocab]; params: device [rows]; tokens: device int32 [rows]; logprobs:
// device f32 [rows] = log softmax(logits)[token] (unmodified by temperature). `any_random` says
// whether some row has temperature > 0 (else the sort is skipped).
absl::Status LaunchSample(const float* logits, int rows, int64_t vocab, const SampleRowParams* params,
                          bool any_random, void* workspace, size_t workspace_bytes, int32_t* tokens,
                          float* logprobs, cudaStream_t stream);

}  // namespace sqa::cuda
