// .npy round trip and header layout (NumPy reads the files in the reference tests).
#include "workers/engine/npy.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace sqa {
namespace {

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/sqa_npy_test_" + std::to_string(::getpid()) + "_" + name;
}

TEST(NpyTest, RoundTripAndAlignedHeader) {
  const std::string path = TempPath("a.npy");
  std::vector<float> data = {1.f, -2.5f, 3.f, 4.f, 5.f, 6.f};
  ASSERT_TRUE(WriteNpyF32(path, data.data(), {2, 3}).ok());
  auto back = ReadNpyF32(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(back->data, data);
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(bytes.substr(1, 5), "NUMPY");
  const size_t hl = static_cast<uint8_t>(bytes[8]) | (static_cast<size_t>(static_cast<uint8_t>(bytes[9])) << 8);
  EXPECT_EQ((10 + hl) % 64, 0u);
  EXPECT_EQ(bytes.size(), 10 + hl + data.size() * 4);
  EXPECT_NE(bytes.find("'shape': (2, 3)"), std::string::npos);
  std::remove(path.c_str());
}

TEST(NpyTest, OneDimensionalAndEmpty) {
  const std::string path = TempPath("b.npy");
  std::vector<float> data = {7.f};
  ASSERT_TRUE(WriteNpyF32(path, data.data(), {1}).ok());
  auto back = ReadNpyF32(path);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->shape, (std::vector<int64_t>{1}));
  ASSERT_TRUE(WriteNpyF32(path, nullptr, {0, 5}).ok());
  back = ReadNpyF32(path);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->shape, (std::vector<int64_t>{0, 5}));
  EXPECT_TRUE(back->data.empty());
  std::remove(path.c_str());
  EXPECT_FALSE(ReadNpyF32(path).ok());
  EXPECT_FALSE(WriteNpyF32("/nonexistent-dir/x.npy", data.data(), {1}).ok());
}

}  // namespace
}  // namespace sqa
