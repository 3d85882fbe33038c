#include "workers/engine/npy.h"

#include <cstdio>
#include <cstring>
#include <memory>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace sqa {
namespace {
constexpr char kMagic[] = "\x93NUMPY";
struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};
}  // namespace

absl::Status WriteNpyF32(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  std::string dims;
  int64_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) return absl::InvalidArgumentError("WriteNpyF32: negative dimension");
    absl::StrAppend(&dims, i ? ", " : "", shape[i]);
    n *= shape[i];
  }
  if (shape.size() == 1) dims += ",";
  std::string header = absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (", dims, "), }");
  // Pad with spaces so that magic(6) + version(2) + length(2) + header + '\n' is a multiple of 64.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  if (header.size() > 65535) return absl::InvalidArgumentError("WriteNpyF32: header too long");
  std::unique_ptr<FILE, FileCloser> f(std::fopen(path.c_str(), "wb"));
  if (f == nullptr) return absl::InvalidArgumentError(absl::StrCat("cannot open ", path, " for writing: ", std::strerror(errno)));
  const uint8_t ver[2] = {1, 0};
  const uint16_t hl = static_cast<uint16_t>(header.size());
  const uint8_t len[2] = {static_cast<uint8_t>(hl & 0xff), static_cast<uint8_t>(hl >> 8)};
  bool ok = std::fwrite(kMagic, 1, 6, f.get()) == 6 && std::fwrite(ver, 1, 2, f.get()) == 2 &&
            std::fwrite(len, 1, 2, f.get()) == 2 &&
            std::fwrite(header.data(), 1, header.size(), f.get()) == header.size();
  if (ok && n > 0) ok = std::fwrite(data, sizeof(float), static_cast<size_t>(n), f.get()) == static_cast<size_t>(n);
  if (!ok || std::fflush(f.get()) != 0) {
    return absl::DataLossError(absl::StrCat("writing ", path, " failed: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<NpyArrayF32> ReadNpyF32(const std::string& path) {
  std::unique_ptr<FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
  if (f == nullptr) return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  uint8_t pre[10];
  if (std::fread(pre, 1, 10, f.get()) != 10 || std::memcmp(pre, kMagic, 6) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a .npy file"));
  }
  if (pre[6] != 1) return absl::InvalidArgumentError(absl::StrCat(path, ": unsupported .npy version ", pre[6]));
  const size_t hl = pre[8] | (static_cast<size_t>(pre[9]) << 8);
  std::string header(hl, '\0');
  if (std::fread(header.data(), 1, hl, f.get()) != hl) return absl::InvalidArgumentError(absl::StrCat(path, ": truncated header"));
  if (header.find("'descr': '<f4'") == std::string::npos || header.find("'fortran_order': False") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": only little-endian float32 C-order arrays are supported"));
  }
  const size_t s0 = header.find("'shape': (");
  const size_t s1 = s0 == std::string::npos ? s0 : header.find(')', s0);
  if (s1 == std::string::npos) return absl::InvalidArgumentError(absl::StrCat(path, ": no shape in header"));
  NpyArrayF32 out;
  int64_t n = 1;
  for (absl::string_view part : absl::StrSplit(header.substr(s0 + 10, s1 - s0 - 10), ',', absl::SkipWhitespace())) {
    int64_t d;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &d) || d < 0) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": bad shape in header"));
    }
    out.shape.push_back(d);
    n *= d;
  }
  out.data.resize(static_cast<size_t>(n));
  if (n > 0 && std::fread(out.data.data(), sizeof(float), static_cast<size_t>(n), f.get()) != static_cast<size_t>(n)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": truncated data"));
  }
  return out;
}

}  // namespace sqa
