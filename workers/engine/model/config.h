// Model configuration: the config.json keys of ARCHITECTURE.md §2, parsed and validated once.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sqa {

struct RopeScaling {
  // "none" or "linear" (positions divided by `factor`). Other HF types are rejected.
  std::string type = "none";
  double factor = 1.0;
};

struct ModelConfig {
  int64_t hidden_size = 0;          // d_model
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;  // H: the baseline head count
  int64_t num_query_heads = 0;      // Hq (defaults to H)
  int64_t num_key_value_heads = 0;  // Hkv (defaults to H)
  int64_t head_dim = 0;             // defaults to hidden_size / H
  int64_t intermediate_size = 0;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 0;
  int64_t vocab_size = 0;
  bool tie_word_embeddings = false;
  std::string torch_dtype = "float32";  // informational

  // Number of attention heads actually computed: max(Hq, Hkv). For Hq >= Hkv query head h reads
  // KV head h / (Hq / Hkv); for Hq < Hkv (rSQA) attention head h uses query head h % Hq and KV
  // head h. W_O takes attn_heads() * head_dim inputs.
  int64_t attn_heads() const { return num_query_heads > num_key_value_heads ? num_query_heads : num_key_value_heads; }
  int64_t q_dim() const { return num_query_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  int64_t o_in_dim() const { return attn_heads() * head_dim; }
  // "MHA", "GQA", "MQA", "SQA", "sSQA", "xSQA", "xSMQA", "rSQA", or "custom".
  std::string LayoutName() const;
  std::string ToJson() const;  // the config.json text that round-trips through ParseModelConfig
};

// Parses and validates config.json text. `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view source);

// Checks the invariants ParseModelConfig enforces on an already-filled config (defaults resolved:
// Hq, Hkv and head_dim set). Used by sqa-mkmodel for configs built from flags.
absl::Status ValidateModelConfig(const ModelConfig& config, std::string_view source);

}  // namespace sqa
