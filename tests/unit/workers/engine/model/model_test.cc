#include "workers/engine/model/model.h"

#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/unit/workers/engine/model/test_util.h"
#include "workers/engine/model/mkmodel.h"

namespace sqa {
namespace {

using ::sqa::testing_util::ReadBytes;
using ::sqa::testing_util::ScratchDir;
using ::sqa::testing_util::WriteText;
using ::testing::HasSubstr;

// A tiny SQA model (H=8, Hq=4, Hkv=2, head_dim=8, d=64, 2 layers) written into `dir`.
void WriteTiny(const std::string& dir, bool tie = false, int shards = 1, DType dtype = DType::kF32) {
  MkModelOptions o;
  auto c = PresetConfig("tiny", "SQA");
  ASSERT_TRUE(c.ok());
  o.config = *c;
  o.config.tie_word_embeddings = tie;
  o.dtype = dtype;
  o.seed = 5;
  o.shards = shards;
  ASSERT_TRUE(WriteRandomModel(o, dir).ok());
}

// Rewrites a single-file model's weights through `edit`, which gets name -> (dtype, shape, bytes).
struct Blob {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
void EditWeights(const std::string& path, const std::function<void(std::map<std::string, Blob>&)>& edit) {
  std::map<std::string, Blob> blobs;
  {
    auto f = SafetensorsFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status();
    for (const auto& [name, v] : (*f)->tensors()) {
      const auto* p = static_cast<const uint8_t*>(v.data);
      blobs[name] = Blob{v.dtype, v.shape, std::vector<uint8_t>(p, p + v.nbytes())};
    }
  }
  edit(blobs);
  std::vector<TensorToWrite> out;
  for (const auto& [name, b] : blobs) out.push_back({name, b.dtype, b.shape, b.bytes.data()});
  ASSERT_TRUE(WriteSafetensors(path, out).ok());
}

void EditJson(const std::string& path, const std::function<void(nlohmann::json&)>& edit) {
  const std::vector<uint8_t> raw = ReadBytes(path);
  nlohmann::json j = nlohmann::json::parse(raw.begin(), raw.end());
  edit(j);
  WriteText(path, j.dump(2));
}

std::string LoadError(const std::string& dir) {
  auto m = Model::Load(dir);
  EXPECT_FALSE(m.ok());
  return m.ok() ? "" : std::string(m.status().message());
}

TEST(Model, LoadsAndFillsWeights) {
  ScratchDir dir;
  WriteTiny(dir.path());
  auto m = Model::Load(dir.path());
  ASSERT_TRUE(m.ok()) << m.status();
  const Model& model = **m;
  EXPECT_EQ(model.weight_dtype(), DType::kF32);
  EXPECT_EQ(model.config().LayoutName(), "SQA");
  const ModelWeights& w = model.weights();
  ASSERT_EQ(w.layers.size(), 2u);
  EXPECT_EQ(w.embed_tokens.shape, (std::vector<int64_t>{256, 64}));
  EXPECT_EQ(w.layers[1].q_proj.shape, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(w.layers[1].k_proj.shape, (std::vector<int64_t>{16, 64}));
  EXPECT_EQ(w.layers[1].v_proj.shape, (std::vector<int64_t>{16, 64}));
  EXPECT_EQ(w.layers[1].o_proj.shape, (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(w.layers[0].down_proj.shape, (std::vector<int64_t>{64, 128}));
  EXPECT_EQ(w.final_norm.shape, (std::vector<int64_t>{64}));
  EXPECT_NE(w.lm_head.data, w.embed_tokens.data);
  // The loaded bytes are the generator's values (f32: exact).
  for (uint64_t i : {0ull, 1ull, 777ull, 2047ull}) {
    EXPECT_EQ(w.layers[1].o_proj.as<float>()[i],
              RandomWeight(5, "model.layers.1.self_attn.o_proj.weight", model.config(), i));
  }
  EXPECT_EQ(w.lm_head.as<float>()[100], RandomWeight(5, "lm_head.weight", model.config(), 100));
  auto slash = Model::Load(dir.path() + "//");
  ASSERT_TRUE(slash.ok()) << slash.status();
  EXPECT_EQ((*slash)->dir(), dir.path());
}

TEST(Model, TiedEmbeddingsShareTheView) {
  ScratchDir dir;
  WriteTiny(dir.path(), /*tie=*/true);
  auto m = Model::Load(dir.path());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->weights().lm_head.data, (*m)->weights().embed_tokens.data);
  EXPECT_EQ((*m)->weights().lm_head.shape, (*m)->weights().embed_tokens.shape);
}

TEST(Model, MissingTensor) {
  ScratchDir dir;
  WriteTiny(dir.path());
  EditWeights(dir / "model.safetensors", [](auto& b) { b.erase("model.layers.1.self_attn.k_proj.weight"); });
  EXPECT_THAT(LoadError(dir.path()),
              HasSubstr("model.layers.1.self_attn.k_proj.weight missing from " + (dir / "model.safetensors")));
}

TEST(Model, WrongShapeNamesTheConfigKeys) {
  ScratchDir dir;
  WriteTiny(dir.path());
  EditJson(dir / "config.json", [](nlohmann::json& j) { j["num_key_value_heads"] = 4; });
  EXPECT_THAT(LoadError(dir.path()),
              HasSubstr(dir / "model.safetensors" +
                        ": model.layers.0.self_attn.k_proj.weight has shape [16, 64], expected [32, 64] "
                        "(num_key_value_heads=4 x head_dim=8, hidden_size=64)"));
}

TEST(Model, HeadDimMismatch) {
  ScratchDir dir;
  WriteTiny(dir.path());
  EditJson(dir / "config.json", [](nlohmann::json& j) { j["head_dim"] = 16; });
  EXPECT_THAT(LoadError(dir.path()),
              HasSubstr("self_attn.q_proj.weight has shape [32, 64], expected [64, 64] (num_query_heads=4 x head_dim=16"));
}

TEST(Model, BadHeadCountsInConfig) {
  ScratchDir dir;
  WriteTiny(dir.path());
  EditJson(dir / "config.json", [](nlohmann::json& j) { j["num_query_heads"] = 0; });
  EXPECT_THAT(LoadError(dir.path()), HasSubstr(dir / "config.json" + ": \"num_query_heads\" is 0"));
  EditJson(dir / "config.json", [](nlohmann::json& j) { j["num_query_heads"] = 3; });
  EXPECT_THAT(LoadError(dir.path()), HasSubstr("num_query_heads=3 is not a multiple of num_key_value_heads=2"));
  WriteText(dir / "config.json", "{not json");
  EXPECT_THAT(LoadError(dir.path()), HasSubstr(dir / "config.json" + " is not valid JSON"));
}

TEST(Model, UnexpectedTensor) {
  ScratchDir dir;
  WriteTiny(dir.path());
  EditWeights(dir / "model.safetensors", [](auto& b) { b["model.layers.2.mlp.up_proj.weight"] = b["model.layers.1.mlp.up_proj.weight"]; });
  EXPECT_THAT(LoadError(dir.path()), HasSubstr("unexpected tensor \"model.layers.2.mlp.up_proj.weight\""));
}

TEST(Model, OldRotaryBuffersAreIgnored) {
  ScratchDir dir;
  WriteTiny(dir.path());
  EditWeights(dir / "model.safetensors", [](auto& b) {
    b["model.layers.0.self_attn.rotary_emb.inv_freq"] = Blob{DType::kF32, {4}, std::vector<uint8_t>(16)};
  });
  EXPECT_TRUE(Model::Load(dir.path()).ok());
}

TEST(Model, TiedButLmHeadPresent) {
  ScratchDir dir;
  WriteTiny(dir.path());
  EditJson(dir / "config.json", [](nlohmann::json& j) { j["tie_word_embeddings"] = true; });
  const std::string e = LoadError(dir.path());
  EXPECT_THAT(e, HasSubstr("lm_head.weight is unexpected"));
  EXPECT_THAT(e, HasSubstr("tie_word_embeddings=true"));
}

TEST(Model, UntiedButLmHeadMissing) {
  ScratchDir dir;
  WriteTiny(dir.path(), /*tie=*/true);
  EditJson(dir / "config.json", [](nlohmann::json& j) { j["tie_word_embeddings"] = false; });
  EXPECT_THAT(LoadError(dir.path()), HasSubstr("lm_head.weight missing from"));
}

TEST(Model, OneDtype) {
  ScratchDir dir;
  WriteTiny(dir.path());
  EditWeights(dir / "model.safetensors", [](auto& b) {
    Blob& n = b["model.norm.weight"];
    std::vector<float> f(n.bytes.size() / 4);
    std::memcpy(f.data(), n.bytes.data(), n.bytes.size());
    n.dtype = DType::kBF16;
    n.bytes.resize(f.size() * 2);
    ConvertFromF32(f.data(), f.size(), DType::kBF16, n.bytes.data());
  });
  EXPECT_THAT(LoadError(dir.path()),
              HasSubstr("model.norm.weight is BF16 but model.embed_tokens.weight is F32; all weights must share one dtype"));
  EditWeights(dir / "model.safetensors", [](auto& b) {
    for (auto& [name, blob] : b) blob.dtype = DType::kI32;  // 4-byte elements relabeled
    b["model.norm.weight"].bytes.resize(64 * 4);              // was BF16 after the edit above
  });
  EXPECT_THAT(LoadError(dir.path()), HasSubstr("has dtype I32; weights must be F32, BF16 or F16"));
}

TEST(Model, MissingFiles) {
  ScratchDir dir;
  auto m = Model::Load(dir.path());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(m.status().message(), HasSubstr("has no config.json"));
  WriteTiny(dir.path());
  std::filesystem::remove(dir / "model.safetensors");
  EXPECT_THAT(LoadError(dir.path()), HasSubstr("has neither model.safetensors nor model.safetensors.index.json"));
}

TEST(Model, ShardedLoadsTheSameWeights) {
  ScratchDir one, three;
  WriteTiny(one.path(), false, 1, DType::kBF16);
  WriteTiny(three.path(), false, 3, DType::kBF16);
  EXPECT_FALSE(std::filesystem::exists(three / "model.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(three / "model-00003-of-00003.safetensors"));
  auto a = Model::Load(one.path());
  auto b = Model::Load(three.path());
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*b)->weight_dtype(), DType::kBF16);
  const auto& wa = (*a)->weights();
  const auto& wb = (*b)->weights();
  auto same = [](const TensorView& x, const TensorView& y) {
    return x.shape == y.shape && std::memcmp(x.data, y.data, x.nbytes()) == 0;
  };
  EXPECT_TRUE(same(wa.embed_tokens, wb.embed_tokens));
  EXPECT_TRUE(same(wa.lm_head, wb.lm_head));
  EXPECT_TRUE(same(wa.final_norm, wb.final_norm));
  for (size_t l = 0; l < wa.layers.size(); ++l) {
    EXPECT_TRUE(same(wa.layers[l].q_proj, wb.layers[l].q_proj));
    EXPECT_TRUE(same(wa.layers[l].down_proj, wb.layers[l].down_proj));
  }
}

class BrokenIndex : public ::testing::Test {
 protected:
  void SetUp() override { WriteTiny(dir.path(), false, 2); }
  std::string index() const { return dir / "model.safetensors.index.json"; }
  ScratchDir dir;
};

TEST_F(BrokenIndex, MissingShardFile) {
  std::filesystem::remove(dir / "model-00002-of-00002.safetensors");
  EXPECT_THAT(LoadError(dir.path()), HasSubstr("model-00002-of-00002.safetensors does not exist"));
}

TEST_F(BrokenIndex, TensorNotInNamedShard) {
  EditJson(index(), [](nlohmann::json& j) {
    j["weight_map"]["lm_head.weight"] = "model-00001-of-00002.safetensors";
  });
  EXPECT_THAT(LoadError(dir.path()),
              HasSubstr("weight_map maps \"lm_head.weight\" to model-00001-of-00002.safetensors, but"));
}

TEST_F(BrokenIndex, ShardTensorNotListed) {
  EditJson(index(), [](nlohmann::json& j) { j["weight_map"].erase("model.norm.weight"); });
  EXPECT_THAT(LoadError(dir.path()), HasSubstr("tensor \"model.norm.weight\" is not listed in " + index()));
}

TEST_F(BrokenIndex, ExpectedTensorInNoShard) {
  EditJson(index(), [](nlohmann::json& j) { j["weight_map"].erase("model.norm.weight"); });
  EditWeights(dir / "model-00002-of-00002.safetensors", [](auto& b) { b.erase("model.norm.weight"); });
  EXPECT_THAT(LoadError(dir.path()), HasSubstr("model.norm.weight missing from " + index()));
}

TEST_F(BrokenIndex, ShardNamesStayInsideTheDirectory) {
  for (const char* bad : {"../model.safetensors", "/etc/passwd", "", "a//b", "./x"}) {
    EditJson(index(), [&](nlohmann::json& j) { j["weight_map"]["model.norm.weight"] = bad; });
    EXPECT_THAT(LoadError(dir.path()), HasSubstr("which is not a file inside")) << bad;
  }
}

TEST_F(BrokenIndex, BadIndexJson) {
  EditJson(index(), [](nlohmann::json& j) { j["weight_map"] = nlohmann::json::array(); });
  EXPECT_THAT(LoadError(dir.path()), HasSubstr("\"weight_map\" missing or not an object"));
  EditJson(index(), [](nlohmann::json& j) { j["weight_map"] = {{"model.norm.weight", 3}}; });
  EXPECT_THAT(LoadError(dir.path()), HasSubstr("must be a file name string"));
  WriteText(index(), "{\"weight_map\": {");
  EXPECT_THAT(LoadError(dir.path()), HasSubstr(index() + " is not valid JSON"));
}

TEST_F(BrokenIndex, CorruptShard) {
  std::vector<uint8_t> raw = ReadBytes(dir / "model-00001-of-00002.safetensors");
  raw.resize(raw.size() / 2);
  testing_util::WriteBytes(dir / "model-00001-of-00002.safetensors", raw.data(), raw.size());
  EXPECT_THAT(LoadError(dir.path()), HasSubstr("model-00001-of-00002.safetensors: tensor"));
}

}  // namespace
}  // namespace sqa
