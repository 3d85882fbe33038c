// Strict, non-throwing JSON reading for untrusted model files (config.json, safetensors headers,
// shard indexes): UTF-8 is validated first, nesting depth is bounded, duplicate keys in any
// object are rejected (a silently dropped duplicate would hide a broken file), and every failure
// comes back as an absl::Status naming the source and the byte position.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace sqa::json_util {

// Byte offset of the first invalid UTF-8 sequence (overlong forms, surrogates and code points
// past U+10FFFF are invalid), or nullopt when `text` is valid.
std::optional<size_t> FindInvalidUtf8(std::string_view text);

inline constexpr int kMaxDepth = 64;

// Parses `text`; `what` names the document in messages ("header of /m/model.safetensors").
absl::StatusOr<nlohmann::json> Parse(std::string_view text, std::string_view what);

// A JSON value as text for an error message, cut to about 64 characters.
std::string Brief(const nlohmann::json& j);

// "object", "array", "string", "integer", "number", "boolean", "null".
const char* TypeName(const nlohmann::json& j);

}  // namespace sqa::json_util
