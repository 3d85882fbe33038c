#include "workers/engine/model/json_util.h"

#include <set>
#include <vector>

#include "absl/strings/str_cat.h"

namespace sqa::json_util {

std::optional<size_t> FindInvalidUtf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return i;  // continuation byte, overlong lead (0xc0, 0xc1) or lead past U+10FFFF
    }
    if (n - i < len) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xc0) != 0x80) return i;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff)) {
      return i;
    }
    i += len;
  }
  return std::nullopt;
}

namespace {

using Json = nlohmann::json;

// Forwards SAX events to nlohmann's DOM builder while bounding depth, rejecting duplicate keys
// and keeping the parser's error message (the DOM builder alone would only say "discarded").
class CheckedSax {
 public:
  explicit CheckedSax(Json& root) : dom_(root, /*allow_exceptions=*/false) {}

  bool null() { return dom_.null(); }
  bool boolean(bool v) { return dom_.boolean(v); }
  bool number_integer(Json::number_integer_t v) { return dom_.number_integer(v); }
  bool number_unsigned(Json::number_unsigned_t v) { return dom_.number_unsigned(v); }
  bool number_float(Json::number_float_t v, const Json::string_t& s) { return dom_.number_float(v, s); }
  bool string(Json::string_t& v) { return dom_.string(v); }
  bool binary(Json::binary_t& v) { return dom_.binary(v); }
  bool start_object(std::size_t n) {
    if (!Enter()) return false;
    keys_.emplace_back();
    return dom_.start_object(n);
  }
  bool key(Json::string_t& k) {
    if (!keys_.back().insert(k).second) {
      error_ = absl::StrCat("duplicate key \"", k, "\"");
      return false;
    }
    return dom_.key(k);
  }
  bool end_object() {
    keys_.pop_back();
    --depth_;
    return dom_.end_object();
  }
  bool start_array(std::size_t n) { return Enter() && dom_.start_array(n); }
  bool end_array() {
    --depth_;
    return dom_.end_array();
  }
  bool parse_error(std::size_t position, const std::string& /*token*/, const nlohmann::detail::exception& ex) {
    // nlohmann's message already carries the line/column; keep its text after the "[json.exception...] ".
    std::string msg = ex.what();
    if (auto p = msg.find("] "); p != std::string::npos) msg = msg.substr(p + 2);
    error_ = msg;
    (void)position;
    return false;
  }
  const std::string& error() const { return error_; }

 private:
  bool Enter() {
    if (++depth_ > kMaxDepth) {
      error_ = absl::StrCat("nesting deeper than ", kMaxDepth, " levels");
      return false;
    }
    return true;
  }
  nlohmann::detail::json_sax_dom_parser<Json> dom_;
  std::vector<std::set<std::string>> keys_;
  int depth_ = 0;
  std::string error_;
};

}  // namespace

absl::StatusOr<Json> Parse(std::string_view text, std::string_view what_sv) {
  const absl::string_view what(what_sv.data(), what_sv.size());
  if (auto bad = FindInvalidUtf8(text)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is not valid UTF-8 (bad byte sequence at offset ", *bad, ")"));
  }
  Json root;
  CheckedSax sax(root);
  const bool ok = Json::sax_parse(text.begin(), text.end(), &sax, Json::input_format_t::json, /*strict=*/true);
  if (!ok || !sax.error().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " is not valid JSON: ", sax.error().empty() ? std::string("parse failed") : sax.error()));
  }
  return root;
}

std::string Brief(const Json& j) {
  std::string s = j.dump(-1, ' ', false, Json::error_handler_t::replace);  // never throws on bad UTF-8
  if (s.size() > 64) s = s.substr(0, 60) + " ...";
  return s;
}

const char* TypeName(const Json& j) {
  switch (j.type()) {
    case Json::value_t::object:
      return "object";
    case Json::value_t::array:
      return "array";
    case Json::value_t::string:
      return "string";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      return "integer";
    case Json::value_t::number_float:
      return "number";
    case Json::value_t::boolean:
      return "boolean";
    case Json::value_t::null:
      return "null";
    default:
      return "value";
  }
}

}  // namespace sqa::json_util
