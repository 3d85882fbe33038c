// A model directory in the Hugging Face layout: config.json + model.safetensors or a sharded
// model.safetensors.index.json. Weights stay memory-mapped; backends convert or upload them.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "workers/engine/model/config.h"
#include "workers/engine/model/safetensors.h"
#include "workers/engine/model/tensor.h"

namespace sqa {

struct LayerWeights {
  TensorView input_norm;  // [d]                       model.layers.N.input_layernorm.weight
  TensorView q_proj;      // [Hq*dh, d]                 ...self_attn.q_proj.weight
  TensorView k_proj;      // [Hkv*dh, d]
  TensorView v_proj;      // [Hkv*dh, d]
  TensorView o_proj;      // [d, max(Hq,Hkv)*dh]
  TensorView post_norm;   // [d]                       ...post_attention_layernorm.weight
  TensorView gate_proj;   // [I, d]                    ...mlp.gate_proj.weight
  TensorView up_proj;     // [I, d]
  TensorView down_proj;   // [d, I]
};

struct ModelWeights {
  TensorView embed_tokens;  // [V, d]  model.embed_tokens.weight
  std::vector<LayerWeights> layers;
  TensorView final_norm;    // [d]     model.norm.weight
  TensorView lm_head;       // [V, d]  lm_head.weight (== embed_tokens when tied)
};

// Immutable after Load; safe to share across threads.
class Model {
 public:
  // Loads and validates `dir`. Every tensor must be present with its exact shape and no unexpected
  // tensor may appear; all tensors must share one dtype among F32, BF16, F16.
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  DType weight_dtype() const { return dtype_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  ModelConfig config_;
  ModelWeights weights_;
  DType dtype_ = DType::kF32;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
};

// Expected tensor names and shapes for a config (used by Load and by sqa-mkmodel).
struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::string why;  // the config keys behind the shape, for error messages
};
// Order: embed_tokens, then per layer input_layernorm, q/k/v/o_proj, post_attention_layernorm,
// gate/up/down_proj, then model.norm, then lm_head.weight unless tie_word_embeddings.
std::vector<ExpectedTensor> ExpectedTensors(const ModelConfig& config);

}  // namespace sqa
