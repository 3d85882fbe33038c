#include "workers/engine/model/mkmodel.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/workers/engine/model/test_util.h"
#include "workers/engine/model/model.h"

namespace sqa {
namespace {

using ::sqa::testing_util::ReadBytes;
using ::sqa::testing_util::ScratchDir;
using ::testing::HasSubstr;

MkModelOptions Options(const std::string& size, const std::string& layout, DType dtype, uint64_t seed) {
  MkModelOptions o;
  auto c = PresetConfig(size, layout);
  EXPECT_TRUE(c.ok()) << c.status();
  o.config = c.value_or(ModelConfig{});
  o.dtype = dtype;
  o.seed = seed;
  return o;
}

int64_t ParamCount(const ModelConfig& c) {
  int64_t n = 0;
  for (const ExpectedTensor& e : ExpectedTensors(c)) {
    int64_t k = 1;
    for (int64_t d : e.shape) k *= d;
    n += k;
  }
  return n;
}

TEST(MkModel, PresetsAndLayouts) {
  struct L {
    const char* name;
    int64_t hq, hkv;  // for H = 16
  };
  const L layouts[] = {{"MHA", 16, 16}, {"GQA", 16, 4}, {"MQA", 16, 1},  {"SQA", 8, 4},
                       {"sSQA", 8, 8},  {"xSQA", 4, 4}, {"xSMQA", 4, 1}, {"rSQA", 4, 8}};
  for (const L& l : layouts) {
    auto c = PresetConfig("1b", l.name);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->num_query_heads, l.hq) << l.name;
    EXPECT_EQ(c->num_key_value_heads, l.hkv) << l.name;
    EXPECT_EQ(c->LayoutName(), l.name);
    EXPECT_TRUE(ValidateModelConfig(*c, "preset").ok());
  }
  auto big = PresetConfig("1b", "MHA");
  EXPECT_EQ(big->hidden_size, 2048);
  EXPECT_EQ(big->head_dim, 128);
  EXPECT_EQ(big->rope_theta, 500000.0);
  EXPECT_EQ(big->max_position_embeddings, 1048576);
  EXPECT_NEAR(ParamCount(*big) / 1e9, 0.953, 0.001);  // untied 32000 x 2048 embeddings + 16 layers
  EXPECT_EQ(PresetConfig("tiny", "MHA")->rope_theta, 10000.0);
  EXPECT_EQ(PresetConfig("small", "MHA")->head_dim, 32);
  EXPECT_EQ(PresetConfig("medium", "MHA")->intermediate_size, 1376);
  EXPECT_THAT(PresetConfig("huge", "MHA").status().message(), HasSubstr("unknown preset \"huge\""));
  EXPECT_THAT(PresetConfig("tiny", "GQQA").status().message(), HasSubstr("unknown layout \"GQQA\""));
  ModelConfig odd;
  odd.num_attention_heads = 6;
  EXPECT_THAT(ApplyLayout("SQA", &odd).message(), HasSubstr("divisible by 4"));
}

// Every preset the tests can afford to write (1b is ~1.9 GB; its config is checked above) in
// every layout loads back with the right heads and shapes.
TEST(MkModel, EveryPresetAndLayoutLoadsBack) {
  std::vector<std::string> sizes = {"tiny", "small"};
#ifndef SQA_UNDER_SANITIZER
  sizes.push_back("medium");
#endif
  for (const std::string& size : sizes) {
    for (const char* layout : {"MHA", "GQA", "MQA", "SQA", "sSQA", "xSQA", "xSMQA", "rSQA"}) {
      ScratchDir dir;
      const DType dtype = size == "tiny" ? DType::kF32 : DType::kBF16;
      MkModelOptions o = Options(size, layout, dtype, 1);
      ASSERT_TRUE(WriteRandomModel(o, dir.path()).ok()) << size << " " << layout;
      auto m = Model::Load(dir.path());
      ASSERT_TRUE(m.ok()) << size << " " << layout << ": " << m.status();
      const ModelConfig& c = (*m)->config();
      EXPECT_EQ(c.LayoutName(), layout);
      EXPECT_EQ(c.num_query_heads, o.config.num_query_heads);
      EXPECT_EQ(c.num_key_value_heads, o.config.num_key_value_heads);
      EXPECT_EQ(c.torch_dtype, dtype == DType::kF32 ? "float32" : "bfloat16");
      EXPECT_EQ((*m)->weight_dtype(), dtype);
      EXPECT_EQ((*m)->weights().layers[0].o_proj.shape,
                (std::vector<int64_t>{c.hidden_size, std::max(c.num_query_heads, c.num_key_value_heads) * c.head_dim}));
    }
  }
}

TEST(MkModel, DeterministicAndIndependentOfThreadsAndShards) {
  ScratchDir a, b, c, d;
  MkModelOptions o = Options("tiny", "SQA", DType::kBF16, 42);
  o.threads = 1;
  ASSERT_TRUE(WriteRandomModel(o, a.path()).ok());
  o.threads = 3;
  ASSERT_TRUE(WriteRandomModel(o, b.path()).ok());
  EXPECT_EQ(ReadBytes(a / "model.safetensors"), ReadBytes(b / "model.safetensors"));
  EXPECT_EQ(ReadBytes(a / "config.json"), ReadBytes(b / "config.json"));
  o.seed = 43;
  ASSERT_TRUE(WriteRandomModel(o, c.path()).ok());
  EXPECT_NE(ReadBytes(a / "model.safetensors"), ReadBytes(c / "model.safetensors"));
  // Sharding splits the same tensors across files.
  o.seed = 42;
  o.shards = 4;
  ASSERT_TRUE(WriteRandomModel(o, d.path()).ok());
  auto ma = Model::Load(a.path());
  auto md = Model::Load(d.path());
  ASSERT_TRUE(ma.ok() && md.ok());
  const TensorView& x = (*ma)->weights().layers[1].gate_proj;
  const TensorView& y = (*md)->weights().layers[1].gate_proj;
  EXPECT_EQ(std::memcmp(x.data, y.data, x.nbytes()), 0);
  // A tensor's values depend on its name, not on where it sits in the file.
  const TensorView& q0 = (*ma)->weights().layers[0].q_proj;
  const TensorView& q1 = (*ma)->weights().layers[1].q_proj;
  EXPECT_NE(std::memcmp(q0.data, q1.data, q0.nbytes()), 0);
  EXPECT_EQ(Bf16ToF32(q1.as<uint16_t>()[9]),
            Bf16ToF32(F32ToBf16(RandomWeight(42, "model.layers.1.self_attn.q_proj.weight", (*ma)->config(), 9))));
}

TEST(MkModel, RewritingSwitchesBetweenSingleAndSharded) {
  ScratchDir dir;
  MkModelOptions o = Options("tiny", "GQA", DType::kF32, 1);
  o.shards = 2;
  ASSERT_TRUE(WriteRandomModel(o, dir.path()).ok());
  o.shards = 1;
  o.config.num_hidden_layers = 3;
  ASSERT_TRUE(WriteRandomModel(o, dir.path()).ok());
  EXPECT_FALSE(std::filesystem::exists(dir / "model.safetensors.index.json"));
  auto m = Model::Load(dir.path());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->weights().layers.size(), 3u);
}

// The init scales documented in mkmodel.h, measured on the written tensors.
TEST(MkModel, WeightStatistics) {
  ScratchDir dir;
  MkModelOptions o = Options("small", "SQA", DType::kF32, 9);
  ASSERT_TRUE(WriteRandomModel(o, dir.path()).ok());
  auto m = Model::Load(dir.path());
  ASSERT_TRUE(m.ok());
  auto stats = [](const TensorView& t, double* mean, double* sd, double* max_abs) {
    const float* p = t.as<float>();
    double s = 0, s2 = 0, mx = 0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      s += p[i];
      s2 += double(p[i]) * p[i];
      mx = std::max(mx, std::fabs(double(p[i])));
    }
    *mean = s / t.numel();
    *sd = std::sqrt(s2 / t.numel() - *mean * *mean);
    *max_abs = mx;
  };
  const ModelConfig& c = (*m)->config();
  const auto& w = (*m)->weights();
  const double d = c.hidden_size, layers = c.num_hidden_layers;
  double mean, sd, mx;
  stats(w.embed_tokens, &mean, &sd, &mx);
  EXPECT_NEAR(sd, 1.0, 0.02);
  EXPECT_NEAR(mean, 0.0, 0.01);
  EXPECT_LE(mx, std::sqrt(3.0) + 1e-6);
  stats(w.layers[2].q_proj, &mean, &sd, &mx);
  EXPECT_NEAR(sd * std::sqrt(d), 2.0, 0.04);
  stats(w.layers[2].k_proj, &mean, &sd, &mx);
  EXPECT_NEAR(sd * std::sqrt(d), 1.0, 0.03);
  stats(w.layers[2].o_proj, &mean, &sd, &mx);
  EXPECT_NEAR(sd * std::sqrt(double(c.o_in_dim())) * std::sqrt(2 * layers), 1.0, 0.03);
  stats(w.layers[3].down_proj, &mean, &sd, &mx);
  EXPECT_NEAR(sd * std::sqrt(double(c.intermediate_size)) * std::sqrt(2 * layers), 1.0, 0.02);
  stats(w.layers[0].input_norm, &mean, &sd, &mx);
  EXPECT_NEAR(mean, 1.0, 0.01);
  EXPECT_LE(mx, 1.05 + 1e-6);
  stats(w.final_norm, &mean, &sd, &mx);
  EXPECT_NEAR(mean * std::sqrt(d), 2.0, 0.02);
  stats(w.lm_head, &mean, &sd, &mx);
  EXPECT_NEAR(sd, 1.0, 0.02);
  // Two different tensors are uncorrelated.
  double dot = 0;
  const float* g = w.layers[1].gate_proj.as<float>();
  const float* u = w.layers[1].up_proj.as<float>();
  for (int64_t i = 0; i < w.layers[1].gate_proj.numel(); ++i) dot += double(g[i]) * u[i];
  EXPECT_NEAR(dot / w.layers[1].gate_proj.numel() * d, 0.0, 0.02);
}

TEST(MkModel, RejectsBadOptions) {
  ScratchDir dir;
  MkModelOptions o = Options("tiny", "SQA", DType::kF32, 1);
  o.shards = 0;
  EXPECT_THAT(WriteRandomModel(o, dir.path()).message(), HasSubstr("shards=0"));
  o.shards = 1000;
  EXPECT_THAT(WriteRandomModel(o, dir.path()).message(), HasSubstr("number of tensors (21)"));
  o.shards = 1;
  o.dtype = DType::kI32;
  EXPECT_THAT(WriteRandomModel(o, dir.path()).message(), HasSubstr("not a weight dtype"));
  o.dtype = DType::kF16;
  o.config.head_dim = 7;
  EXPECT_THAT(WriteRandomModel(o, dir.path()).message(), HasSubstr("head_dim=7 is odd"));
  EXPECT_FALSE(std::filesystem::exists(dir / "config.json"));
  o.config.head_dim = 8;
  EXPECT_FALSE(WriteRandomModel(o, "/proc/no-such-dir/model").ok());
  ASSERT_TRUE(WriteRandomModel(o, dir.path()).ok());
  auto m = Model::Load(dir.path());
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)->weight_dtype(), DType::kF16);
  EXPECT_EQ((*m)->config().torch_dtype, "float16");
}

}  // namespace
}  // namespace sqa
