#include "workers/engine/model/safetensors.h"

#include <cstring>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/workers/engine/model/test_util.h"

namespace sqa {
namespace {

using ::sqa::testing_util::Image;
using ::sqa::testing_util::ReadBytes;
using ::sqa::testing_util::ScratchDir;
using ::sqa::testing_util::WriteBytes;
using ::testing::HasSubstr;

absl::Status ParseError(const std::string& header, size_t data_bytes, int64_t declared_len = -1) {
  return SafetensorsFile::Parse(Image(header, data_bytes, declared_len), "mem.safetensors").status();
}

TEST(Safetensors, WriteThenOpenRoundTrips) {
  ScratchDir dir;
  const std::vector<float> a = {1.f, -2.5f, 3.f, 4.f, 5.f, 6.f};
  const std::vector<uint16_t> b = {F32ToBf16(0.5f), F32ToBf16(-7.f), F32ToBf16(1e-3f), 0};
  const std::vector<int32_t> c = {42};
  const std::string path = dir / "t.safetensors";
  ASSERT_TRUE(WriteSafetensors(path,
                               {{"a", DType::kF32, {2, 3}, a.data()},
                                {"c", DType::kI32, {}, c.data()},
                                {"empty", DType::kF32, {0, 4}, nullptr},
                                {"b", DType::kBF16, {4}, b.data()}},
                               {{"format", "pt"}})
                  .ok());
  const std::vector<uint8_t> raw = ReadBytes(path);
  uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u) << "header padded to 8 bytes";
  EXPECT_EQ(raw[8 + n - 1] == ' ' || raw[8 + n - 1] == '}', true);

  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  const auto& t = (*f)->tensors();
  ASSERT_EQ(t.size(), 4u);
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  const TensorView& va = t.at("a");
  EXPECT_EQ(va.dtype, DType::kF32);
  EXPECT_EQ(va.space, MemSpace::kHost);
  EXPECT_EQ(va.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(va.data, a.data(), 24), 0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(va.data) % 4, 0u);
  EXPECT_EQ(t.at("c").shape.size(), 0u);
  EXPECT_EQ(*t.at("c").as<int32_t>(), 42);
  EXPECT_EQ(t.at("empty").numel(), 0);
  EXPECT_EQ(t.at("b").dtype, DType::kBF16);
  EXPECT_EQ(std::memcmp(t.at("b").data, b.data(), 8), 0);

  // The same bytes through the in-memory parser.
  auto g = SafetensorsFile::Parse(std::make_shared<std::vector<uint8_t>>(raw), "copy");
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(std::memcmp(g.value()->tensors().at("a").data, a.data(), 24), 0);
}

TEST(Safetensors, WriterRejectsBadInput) {
  ScratchDir dir;
  const float x = 1;
  EXPECT_FALSE(WriteSafetensors(dir / "x", {{"a", DType::kF32, {1}, &x}, {"a", DType::kF32, {1}, &x}}).ok());
  EXPECT_FALSE(WriteSafetensors(dir / "x", {{"", DType::kF32, {1}, &x}}).ok());
  EXPECT_FALSE(WriteSafetensors(dir / "x", {{"__metadata__", DType::kF32, {1}, &x}}).ok());
  EXPECT_FALSE(WriteSafetensors(dir / "x", {{"a", DType::kF32, {-1}, &x}}).ok());
  EXPECT_FALSE(WriteSafetensors(dir / "x", {{"a", DType::kF32, {1}, nullptr}}).ok());
  EXPECT_THAT(WriteSafetensors(dir / "x", {{"a", DType::kF32, {1}, &x}}, {{"k", "\xff"}}).message(),
              HasSubstr("not valid UTF-8"));
  EXPECT_THAT(WriteSafetensors(dir / "x", {{"\xc0", DType::kF32, {1}, &x}}).message(), HasSubstr("not valid UTF-8"));
  // A BF16 tensor of odd length followed by an F32 one would misalign the latter.
  const uint16_t h[3] = {};
  EXPECT_THAT(WriteSafetensors(dir / "x", {{"h", DType::kBF16, {3}, h}, {"f", DType::kF32, {1}, &x}}).message(),
              HasSubstr("not aligned"));
  EXPECT_FALSE(std::filesystem::exists(dir / "x"));
  EXPECT_EQ(WriteSafetensors("/nonexistent-dir/x.safetensors", {}).code(), absl::StatusCode::kNotFound);
}

TEST(Safetensors, OpenErrors) {
  ScratchDir dir;
  auto missing = SafetensorsFile::Open(dir / "nope.safetensors");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("nope.safetensors"));
  EXPECT_THAT(SafetensorsFile::Open(dir.path()).status().message(), HasSubstr("not a regular file"));
  WriteBytes(dir / "empty", "", 0);
  EXPECT_THAT(SafetensorsFile::Open(dir / "empty").status().message(),
              HasSubstr("empty: file is 0 bytes; a safetensors file starts with an 8-byte header length"));
  EXPECT_FALSE(SafetensorsFile::Parse(nullptr, "null").ok());
}

TEST(Safetensors, HeaderLength) {
  EXPECT_THAT(ParseError("{}", 0, 1000).message(),
              HasSubstr("mem.safetensors: header length 1000 past end of file (size 16)"));
  auto huge = std::make_shared<std::vector<uint8_t>>(*Image("{}", 0));
  std::memset(huge->data(), 0xff, 8);  // 2^64 - 1: must not wrap around in the bounds check
  EXPECT_THAT(SafetensorsFile::Parse(huge, "huge").status().message(),
              HasSubstr("header length 18446744073709551615 past end of file"));
  EXPECT_THAT(SafetensorsFile::Parse(std::make_shared<std::vector<uint8_t>>(5, 0), "short").status().message(),
              HasSubstr("file is 5 bytes"));
  EXPECT_TRUE(SafetensorsFile::Parse(Image("{}", 0), "ok").ok());
}

TEST(Safetensors, HeaderText) {
  EXPECT_THAT(ParseError("{\"a\xff\": 1}", 0).message(), HasSubstr("mem.safetensors: header is not valid UTF-8"));
  EXPECT_THAT(ParseError("{\"a\": ", 0).message(), HasSubstr("mem.safetensors: header is not valid JSON"));
  EXPECT_THAT(ParseError("[]", 0).message(), HasSubstr("header must be a JSON object, got array"));
  EXPECT_THAT(ParseError(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                               "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                         8)
                  .message(),
              HasSubstr("duplicate key \"a\""));
  EXPECT_THAT(ParseError(R"({"__metadata__": {"k": 1}})", 0).message(),
              HasSubstr("\"__metadata__\" value for \"k\" must be a string"));
  EXPECT_THAT(ParseError(R"({"__metadata__": []})", 0).message(), HasSubstr("\"__metadata__\" must be an object"));
  EXPECT_THAT(ParseError(R"({"t": 5})", 0).message(), HasSubstr("tensor \"t\": entry must be an object"));
}

TEST(Safetensors, TensorEntries) {
  auto err = [](const std::string& entry, size_t data) {
    return std::string(ParseError("{\"w\": " + entry + "}", data).message());
  };
  EXPECT_THAT(err(R"({"dtype": "F64", "shape": [1], "data_offsets": [0, 8]})", 8),
              HasSubstr("mem.safetensors: tensor \"w\" has dtype \"F64\", which is not supported"));
  EXPECT_THAT(err(R"({"dtype": "BOOL", "shape": [1], "data_offsets": [0, 1]})", 8), HasSubstr("\"BOOL\""));
  EXPECT_THAT(err(R"({"shape": [1], "data_offsets": [0, 4]})", 8), HasSubstr("tensor \"w\": \"dtype\" missing"));
  EXPECT_THAT(err(R"({"dtype": "F32", "data_offsets": [0, 4]})", 8), HasSubstr("tensor \"w\": \"shape\" missing"));
  EXPECT_THAT(err(R"({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]})", 8),
              HasSubstr("tensor \"w\": shape [-1] must hold non-negative integers"));
  EXPECT_THAT(err(R"({"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]})", 8),
              HasSubstr("must hold non-negative integers"));
  EXPECT_THAT(err(R"({"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]})", 8),
              HasSubstr("has too many elements"));
  EXPECT_THAT(err(R"({"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 4]})", 8),
              HasSubstr("has too many elements"));  // numel fits, bytes overflow
  EXPECT_THAT(err(R"({"dtype": "F32", "shape": [1]})", 8), HasSubstr("\"data_offsets\" must be [begin, end]"));
  EXPECT_THAT(err(R"({"dtype": "F32", "shape": [1], "data_offsets": [0]})", 8), HasSubstr("\"data_offsets\""));
  EXPECT_THAT(err(R"({"dtype": "F32", "shape": [1], "data_offsets": [0, -4]})", 8), HasSubstr("\"data_offsets\""));
  EXPECT_THAT(err(R"({"dtype": "F32", "shape": [1], "data_offsets": [8, 4]})", 8),
              HasSubstr("data_offsets [8, 4] has begin after end"));
  // Offsets past the data section: a truncated file.
  EXPECT_THAT(err(R"({"dtype": "F32", "shape": [4], "data_offsets": [0, 16]})", 12),
              HasSubstr("tensor \"w\": data_offsets [0, 16] extend past the end of the data section (12 bytes"));
  EXPECT_THAT(err(R"({"dtype": "F32", "shape": [1], "data_offsets": [18446744073709551612, 18446744073709551615]})", 8),
              HasSubstr("extend past the end"));
  EXPECT_THAT(err(R"({"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]})", 24),
              HasSubstr("tensor \"w\" (F32 [2, 3]) needs 24 bytes but its data_offsets [0, 20] span 20"));
  EXPECT_THAT(err(R"({"dtype": "F32", "shape": [1], "data_offsets": [2, 6]})", 8),
              HasSubstr("not a multiple of its element size 4"));
  EXPECT_TRUE(SafetensorsFile::Parse(Image(R"({"w": {"dtype": "BF16", "shape": [1], "data_offsets": [2, 4]}})", 8),
                                     "ok")
                  .ok());
}

TEST(Safetensors, TruncatedFileIsDetected) {
  ScratchDir dir;
  std::vector<float> a(100, 1.f);
  const std::string path = dir / "t.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {{"a", DType::kF32, {100}, a.data()}}).ok());
  std::vector<uint8_t> raw = ReadBytes(path);
  raw.resize(raw.size() - 4);
  WriteBytes(path, raw.data(), raw.size());
  auto f = SafetensorsFile::Open(path);
  EXPECT_THAT(f.status().message(), HasSubstr(path + ": tensor \"a\": data_offsets [0, 400] extend past the end"));
  EXPECT_THAT(f.status().message(), HasSubstr("truncated"));
  raw.resize(20);  // into the header itself
  WriteBytes(path, raw.data(), raw.size());
  EXPECT_THAT(SafetensorsFile::Open(path).status().message(), HasSubstr("past end of file (size 20)"));
}

TEST(Safetensors, OverlapsAreRejected) {
  const std::string two = R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                              "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})";
  EXPECT_THAT(ParseError(two, 16).message(), HasSubstr("tensors \"a\" [0, 8) and \"b\" [4, 12) overlap"));
  const std::string same = R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                               "b": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}})";
  EXPECT_THAT(ParseError(same, 16).message(), HasSubstr("overlap"));
  const std::string inside = R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                 "z": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})";
  EXPECT_THAT(ParseError(inside, 16).message(), HasSubstr("overlap"));
  // Adjacent and zero-sized tensors do not overlap.
  const std::string fine = R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                               "e": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},
                               "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})";
  EXPECT_TRUE(SafetensorsFile::Parse(Image(fine, 16), "fine").ok());
}

}  // namespace
}  // namespace sqa
