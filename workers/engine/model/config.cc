#include "workers/engine/model/config.h"

#include <cmath>
#include <optional>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "services/common/status.h"
#include "workers/engine/model/json_util.h"

namespace sqa {
namespace {

using Json = nlohmann::json;

// Upper bounds keep every product of sizes (e.g. vocab x hidden, layers x Hq x head_dim x hidden)
// far from int64 overflow, and are well past any real model.
constexpr int64_t kMaxDim = int64_t{1} << 24;        // hidden, intermediate, head_dim, vocab
constexpr int64_t kMaxHeads = 4096;
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxPositions = int64_t{1} << 40;

absl::Status Err(absl::string_view source, absl::string_view msg) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", msg));
}

// Reads an optional integer key; null counts as absent (HF writes e.g. "head_dim": null).
absl::StatusOr<std::optional<int64_t>> GetInt(const Json& root, const char* key, absl::string_view source) {
  auto it = root.find(key);
  if (it == root.end() || it->is_null()) return std::optional<int64_t>();
  if (it->is_number_unsigned()) {
    const uint64_t v = it->get<uint64_t>();
    if (v > static_cast<uint64_t>(INT64_MAX)) return Err(source, absl::StrCat("\"", key, "\" is too large"));
    return std::optional<int64_t>(static_cast<int64_t>(v));
  }
  if (it->is_number_integer()) return std::optional<int64_t>(it->get<int64_t>());
  return Err(source, absl::StrCat("\"", key, "\" must be an integer, got ", json_util::TypeName(*it),
                                  " ", json_util::Brief(*it)));
}

absl::StatusOr<int64_t> RequireInt(const Json& root, const char* key, absl::string_view source) {
  SQA_ASSIGN_OR_RETURN(std::optional<int64_t> v, GetInt(root, key, source));
  if (!v) return Err(source, absl::StrCat("missing required key \"", key, "\""));
  return *v;
}

absl::StatusOr<std::optional<double>> GetNumber(const Json& root, const char* key, absl::string_view source) {
  auto it = root.find(key);
  if (it == root.end() || it->is_null()) return std::optional<double>();
  if (!it->is_number()) {
    return Err(source, absl::StrCat("\"", key, "\" must be a number, got ", json_util::TypeName(*it), " ",
                                    json_util::Brief(*it)));
  }
  return std::optional<double>(it->get<double>());
}

absl::Status CheckRange(absl::string_view source, const char* key, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi) {
    return Err(source, absl::StrCat("\"", key, "\" is ", v, "; it must be in [", lo, ", ", hi, "]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<RopeScaling> ParseRopeScaling(const Json& root, absl::string_view source) {
  RopeScaling rs;
  auto it = root.find("rope_scaling");
  if (it == root.end() || it->is_null()) return rs;
  if (!it->is_object()) {
    return Err(source, absl::StrCat("\"rope_scaling\" must be null or an object, got ", json_util::TypeName(*it)));
  }
  std::optional<std::string> type;
  for (const char* k : {"type", "rope_type"}) {
    auto t = it->find(k);
    if (t == it->end() || t->is_null()) continue;
    if (!t->is_string()) {
      return Err(source, absl::StrCat("\"rope_scaling.", k, "\" must be a string, got ", json_util::TypeName(*t)));
    }
    const std::string s = t->get<std::string>();
    if (type && *type != s) {
      return Err(source, absl::StrCat("\"rope_scaling\" has type \"", *type, "\" and rope_type \"", s,
                                      "\"; they must agree"));
    }
    type = s;
  }
  if (!type) return Err(source, "\"rope_scaling\" needs a \"type\" (or \"rope_type\") key");
  if (*type == "default" || *type == "none") return rs;  // HF spelling of "no scaling"
  if (*type != "linear") {
    return absl::InvalidArgumentError(absl::StrCat(source, ": rope_scaling type \"", *type,
                                                   "\" is not supported (supported: linear, or null for none)"));
  }
  auto f = it->find("factor");
  if (f == it->end() || !f->is_number()) {
    return Err(source, "\"rope_scaling.factor\" must be a number for linear scaling");
  }
  const double factor = f->get<double>();
  if (!(std::isfinite(factor) && factor > 0)) {
    return Err(source, absl::StrCat("\"rope_scaling.factor\" is ", factor, "; it must be > 0"));
  }
  rs.type = "linear";
  rs.factor = factor;
  return rs;
}

}  // namespace

absl::Status ValidateModelConfig(const ModelConfig& c, std::string_view source_sv) {
  const absl::string_view source(source_sv.data(), source_sv.size());
  SQA_RETURN_IF_ERROR(CheckRange(source, "hidden_size", c.hidden_size, 1, kMaxDim));
  SQA_RETURN_IF_ERROR(CheckRange(source, "num_hidden_layers", c.num_hidden_layers, 1, kMaxLayers));
  SQA_RETURN_IF_ERROR(CheckRange(source, "num_attention_heads", c.num_attention_heads, 1, kMaxHeads));
  SQA_RETURN_IF_ERROR(CheckRange(source, "num_query_heads", c.num_query_heads, 1, kMaxHeads));
  SQA_RETURN_IF_ERROR(CheckRange(source, "num_key_value_heads", c.num_key_value_heads, 1, kMaxHeads));
  SQA_RETURN_IF_ERROR(CheckRange(source, "head_dim", c.head_dim, 1, kMaxDim));
  SQA_RETURN_IF_ERROR(CheckRange(source, "intermediate_size", c.intermediate_size, 1, kMaxDim));
  SQA_RETURN_IF_ERROR(CheckRange(source, "vocab_size", c.vocab_size, 1, kMaxDim));
  SQA_RETURN_IF_ERROR(CheckRange(source, "max_position_embeddings", c.max_position_embeddings, 1, kMaxPositions));
  const int64_t hq = c.num_query_heads, hkv = c.num_key_value_heads;
  if (hq >= hkv && hq % hkv != 0) {
    return Err(source, absl::StrCat("num_query_heads=", hq, " is not a multiple of num_key_value_heads=", hkv,
                                    " (each KV head must serve the same number of query heads)"));
  }
  if (hq < hkv && hkv % hq != 0) {
    return Err(source, absl::StrCat("num_key_value_heads=", hkv, " is not a multiple of num_query_heads=", hq,
                                    " (rSQA tiles query heads over KV heads)"));
  }
  if (c.head_dim % 2 != 0) {
    return Err(source, absl::StrCat("head_dim=", c.head_dim, " is odd; RoPE rotates pairs of channels"));
  }
  if (!(std::isfinite(c.rms_norm_eps) && c.rms_norm_eps > 0)) {
    return Err(source, absl::StrCat("\"rms_norm_eps\" is ", c.rms_norm_eps, "; it must be > 0"));
  }
  if (!(std::isfinite(c.rope_theta) && c.rope_theta > 0)) {
    return Err(source, absl::StrCat("\"rope_theta\" is ", c.rope_theta, "; it must be > 0"));
  }
  if (c.rope_scaling.type != "none" && c.rope_scaling.type != "linear") {
    return Err(source, absl::StrCat("rope_scaling type \"", c.rope_scaling.type, "\" is not supported"));
  }
  if (!(std::isfinite(c.rope_scaling.factor) && c.rope_scaling.factor > 0)) {
    return Err(source, absl::StrCat("\"rope_scaling.factor\" is ", c.rope_scaling.factor, "; it must be > 0"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view source_sv) {
  const absl::string_view source(source_sv.data(), source_sv.size());
  SQA_ASSIGN_OR_RETURN(Json root, json_util::Parse(json_text, source_sv));
  if (!root.is_object()) {
    return Err(source, absl::StrCat("top level must be a JSON object, got ", json_util::TypeName(root)));
  }
  ModelConfig c;
  SQA_ASSIGN_OR_RETURN(c.hidden_size, RequireInt(root, "hidden_size", source));
  SQA_ASSIGN_OR_RETURN(c.num_hidden_layers, RequireInt(root, "num_hidden_layers", source));
  SQA_ASSIGN_OR_RETURN(c.num_attention_heads, RequireInt(root, "num_attention_heads", source));
  SQA_ASSIGN_OR_RETURN(c.intermediate_size, RequireInt(root, "intermediate_size", source));
  SQA_ASSIGN_OR_RETURN(c.vocab_size, RequireInt(root, "vocab_size", source));
  SQA_ASSIGN_OR_RETURN(c.max_position_embeddings, RequireInt(root, "max_position_embeddings", source));
  // H is checked before it is used as a default or a divisor below.
  SQA_RETURN_IF_ERROR(CheckRange(source, "num_attention_heads", c.num_attention_heads, 1, kMaxHeads));
  SQA_RETURN_IF_ERROR(CheckRange(source, "hidden_size", c.hidden_size, 1, kMaxDim));

  SQA_ASSIGN_OR_RETURN(std::optional<int64_t> hq, GetInt(root, "num_query_heads", source));
  SQA_ASSIGN_OR_RETURN(std::optional<int64_t> hkv, GetInt(root, "num_key_value_heads", source));
  SQA_ASSIGN_OR_RETURN(std::optional<int64_t> head_dim, GetInt(root, "head_dim", source));
  c.num_query_heads = hq.value_or(c.num_attention_heads);
  c.num_key_value_heads = hkv.value_or(c.num_attention_heads);
  if (head_dim) {
    c.head_dim = *head_dim;
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      return Err(source, absl::StrCat("hidden_size=", c.hidden_size, " is not divisible by num_attention_heads=",
                                      c.num_attention_heads, "; give \"head_dim\" explicitly"));
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }

  SQA_ASSIGN_OR_RETURN(std::optional<double> eps, GetNumber(root, "rms_norm_eps", source));
  c.rms_norm_eps = eps.value_or(1e-6);  // HF LlamaConfig's default
  SQA_ASSIGN_OR_RETURN(std::optional<double> theta, GetNumber(root, "rope_theta", source));
  c.rope_theta = theta.value_or(10000.0);
  SQA_ASSIGN_OR_RETURN(c.rope_scaling, ParseRopeScaling(root, source));

  if (auto it = root.find("tie_word_embeddings"); it != root.end() && !it->is_null()) {
    if (!it->is_boolean()) {
      return Err(source, absl::StrCat("\"tie_word_embeddings\" must be a boolean, got ", json_util::TypeName(*it)));
    }
    c.tie_word_embeddings = it->get<bool>();
  }
  if (auto it = root.find("torch_dtype"); it != root.end() && !it->is_null()) {
    if (!it->is_string()) {
      return Err(source, absl::StrCat("\"torch_dtype\" must be a string, got ", json_util::TypeName(*it)));
    }
    c.torch_dtype = it->get<std::string>();
  }
  SQA_RETURN_IF_ERROR(ValidateModelConfig(c, source_sv));
  return c;
}

// Layout names, with H = num_attention_heads (the baseline), Hq, Hkv; first rule that matches:
//   MHA   Hq == H,  Hkv == H
//   MQA   Hq == H,  Hkv == 1            (H > 1)
//   GQA   Hq == H,  1 < Hkv < H
//   rSQA  Hq < Hkv                      (queries tiled over KV heads)
//   xSMQA Hq < H,   Hkv == 1
//   sSQA  Hq == Hkv == H/2
//   xSQA  Hq == Hkv <= H/4
//   SQA   Hq < H,   Hkv < Hq
//   custom otherwise (Hq > H, or H/4 < Hq == Hkv < H with Hq != H/2)
std::string ModelConfig::LayoutName() const {
  const int64_t h = num_attention_heads, hq = num_query_heads, hkv = num_key_value_heads;
  if (h <= 0 || hq <= 0 || hkv <= 0) return "custom";
  if (hq == h && hkv == h) return "MHA";
  if (hq == h && hkv == 1) return "MQA";
  if (hq == h && hkv > 1 && hkv < h) return "GQA";
  if (hq > h) return "custom";
  if (hq < hkv) return "rSQA";
  if (hkv == 1) return "xSMQA";
  if (hq == hkv && 2 * hq == h) return "sSQA";
  if (hq == hkv && 4 * hq <= h) return "xSQA";
  if (hkv < hq) return "SQA";
  return "custom";
}

std::string ModelConfig::ToJson() const {
  nlohmann::ordered_json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["hidden_act"] = "silu";
  j["hidden_size"] = hidden_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_query_heads"] = num_query_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["intermediate_size"] = intermediate_size;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  if (rope_scaling.type == "none") {
    j["rope_scaling"] = nullptr;
  } else {
    j["rope_scaling"] = {{"type", rope_scaling.type}, {"rope_type", rope_scaling.type}, {"factor", rope_scaling.factor}};
  }
  j["max_position_embeddings"] = max_position_embeddings;
  j["vocab_size"] = vocab_size;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["torch_dtype"] = torch_dtype;
  j["sqa_layout"] = LayoutName();  // informational; not read back
  return j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

}  // namespace sqa
