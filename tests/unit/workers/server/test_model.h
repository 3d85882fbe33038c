// A tiny random model written once per test binary, and helpers to make engines and reference runs.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "workers/engine/engine.h"
#include "workers/engine/sampling.h"

namespace sqa::worker::testing {

// The "tiny" SQA preset (vocab 256, 2 layers) with max_position_embeddings = max_pos.
std::shared_ptr<const Model> TinyModel(int64_t max_pos = 4096);
std::unique_ptr<Engine> MakeEngine(std::shared_ptr<const Model> model, int64_t block_size, int64_t num_blocks);

// Generation of one request on a fresh engine, one sequence at a time: prefill of prompt + resume,
// then one decode step per token, sampling step numbers from resume.size(). Stops at max_tokens
// (resume included) or a stop token.
std::vector<int32_t> ReferenceGenerate(std::shared_ptr<const Model> model, const std::vector<int32_t>& prompt,
                                       const std::vector<int32_t>& resume, const SamplingParams& sampling,
                                       int max_tokens, const std::vector<int32_t>& stop = {});

std::vector<int32_t> RandomPrompt(int n, int seed, int vocab = 256);

}  // namespace sqa::worker::testing
