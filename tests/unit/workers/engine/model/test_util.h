// Helpers shared by the model-format tests: scratch directories and raw safetensors images.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sqa::testing_util {

// A fresh directory under the gtest temp dir, removed on destruction.
class ScratchDir {
 public:
  ScratchDir() {
    static std::atomic<int> counter{0};
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::path(::testing::TempDir()) /
            ("sqa_model_" + std::to_string(::getpid()) + "_" + (info ? info->name() : "x") + "_" +
             std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string path() const { return path_.string(); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

inline std::vector<uint8_t> ReadBytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

inline void WriteBytes(const std::string& path, const void* data, size_t n) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
}
inline void WriteText(const std::string& path, const std::string& s) { WriteBytes(path, s.data(), s.size()); }

// An image: 8-byte little-endian length `declared_len` (default: the padded header's size), the
// header text padded with spaces to 8 bytes, then `data_bytes` bytes of data (a counting pattern).
inline std::shared_ptr<const std::vector<uint8_t>> Image(const std::string& header, size_t data_bytes,
                                                         int64_t declared_len = -1) {
  auto v = std::make_shared<std::vector<uint8_t>>();
  std::string h = header;
  h.append((8 - h.size() % 8) % 8, ' ');  // keep the data section 8-aligned, as writers do
  const uint64_t n = declared_len < 0 ? h.size() : static_cast<uint64_t>(declared_len);
  for (int i = 0; i < 8; ++i) v->push_back(static_cast<uint8_t>(n >> (8 * i)));
  v->insert(v->end(), h.begin(), h.end());
  for (size_t i = 0; i < data_bytes; ++i) v->push_back(static_cast<uint8_t>(i));
  return v;
}

}  // namespace sqa::testing_util
