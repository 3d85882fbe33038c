// Deterministic random models for tests, demos and benchmarks (the library behind sqa-mkmodel).
//
// Weights are uniform with the variance of the usual N(0, 1/fan_in) init, chosen so a forward
// pass stays well conditioned at any depth and context length:
//   embed_tokens                 std 1        (each token's residual starts at RMS 1)
//   k/v/gate/up_proj             std 1/sqrt(hidden_size)   (inputs are RMS-normalized, so
//                                 k, v, gate, up come out at RMS ~1)
//   q_proj                       std 2/sqrt(hidden_size)   (q.k/sqrt(d_head) ~ N(0, 4): attention
//                                 peaked enough that its output matters at long context)
//   o_proj, down_proj            std 1/sqrt(fan_in) / sqrt(2 * num_layers)   (each of the 2L
//                                 residual updates adds variance <= 1/(2L): the stream stays O(1))
//   input/post-attention norms   1 + U(-0.05, 0.05)
//   model.norm                   2/sqrt(hidden_size) * (1 + U(-0.05, 0.05)), so that with lm_head
//                                 (or the tied embedding) of std 1 the logits have std ~2: a
//                                 peaked but non-degenerate next-token distribution
//   lm_head                      std 1
// Every element is a pure function of (seed, tensor name, element index), so the output does not
// depend on thread count, write order or sharding.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "workers/engine/model/config.h"
#include "workers/engine/model/tensor.h"

namespace sqa {

struct MkModelOptions {
  ModelConfig config;
  DType dtype = DType::kF32;  // F32, BF16 or F16; also sets config.json's torch_dtype
  uint64_t seed = 0;
  int shards = 1;   // > 1 writes model-0000i-of-0000K.safetensors + model.safetensors.index.json
  int threads = 0;  // 0: one per hardware thread
};

// Writes config.json and the weights into `dir` (created if needed). Stale weight files of the
// other layout (single vs sharded) are removed so Model::Load sees only what was written.
absl::Status WriteRandomModel(const MkModelOptions& options, const std::string& dir);

// Preset sizes "tiny", "small", "medium", "1b" and layouts "MHA", "GQA", "MQA", "SQA", "sSQA",
// "xSQA", "xSMQA", "rSQA" (Hq, Hkv derived from the preset's H as in REFERENCE.md).
absl::StatusOr<ModelConfig> PresetConfig(std::string_view size, std::string_view layout);
// Sets Hq and Hkv of `config` from its num_attention_heads for a layout name.
absl::Status ApplyLayout(std::string_view layout, ModelConfig* config);

// The value of element `index` of tensor `name` (before dtype rounding), exposed for tests.
float RandomWeight(uint64_t seed, const std::string& name, const ModelConfig& config, uint64_t index);

}  // namespace sqa
