#include "workers/engine/model/config.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sqa {
namespace {

using ::testing::HasSubstr;

// A config.json with the given extra/overriding members spliced in.
std::string Cfg(const std::string& extra = "", bool with_defaults = true) {
  std::string s = "{";
  if (with_defaults) {
    s += R"("hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
            "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 4096)";
    if (!extra.empty()) s += ", ";
  }
  return s + extra + "}";
}

absl::Status ErrorOf(const std::string& text) { return ParseModelConfig(text, "dir/config.json").status(); }

TEST(Config, DefaultsFollowHeads) {
  auto c = ParseModelConfig(Cfg(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_query_heads, 8);
  EXPECT_EQ(c->num_key_value_heads, 8);
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->rope_scaling.type, "none");
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->LayoutName(), "MHA");
  EXPECT_EQ(c->attn_heads(), 8);
}

TEST(Config, PlainHfLlamaConfigLoads) {
  // The shape of a real HF Llama config (extra keys ignored, GQA via num_key_value_heads).
  const std::string text = R"({
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": null, "rope_theta": 500000.0, "tie_word_embeddings": false,
    "torch_dtype": "bfloat16", "transformers_version": "4.40.0.dev0", "use_cache": true,
    "vocab_size": 128256})";
  auto c = ParseModelConfig(text, "llama3/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_query_heads, 32);
  EXPECT_EQ(c->num_key_value_heads, 8);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  EXPECT_EQ(c->LayoutName(), "GQA");
}

TEST(Config, ToJsonRoundTrips) {
  auto c = ParseModelConfig(Cfg(R"("num_query_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
      "rms_norm_eps": 1.5e-6, "rope_theta": 123456.5, "tie_word_embeddings": true,
      "rope_scaling": {"type": "linear", "factor": 4.0}, "torch_dtype": "bfloat16")"),
                            "a.json");
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string text = c->ToJson();
  EXPECT_THAT(text, HasSubstr("\"LlamaForCausalLM\""));
  EXPECT_THAT(text, HasSubstr("\"model_type\": \"llama\""));
  EXPECT_THAT(text, HasSubstr("\"hidden_act\": \"silu\""));
  auto d = ParseModelConfig(text, "b.json");
  ASSERT_TRUE(d.ok()) << d.status() << "\n" << text;
  EXPECT_EQ(d->hidden_size, c->hidden_size);
  EXPECT_EQ(d->num_query_heads, 4);
  EXPECT_EQ(d->num_key_value_heads, 2);
  EXPECT_EQ(d->head_dim, 16);
  EXPECT_EQ(d->rms_norm_eps, 1.5e-6);
  EXPECT_EQ(d->rope_theta, 123456.5);
  EXPECT_TRUE(d->tie_word_embeddings);
  EXPECT_EQ(d->rope_scaling.type, "linear");
  EXPECT_EQ(d->rope_scaling.factor, 4.0);
  EXPECT_EQ(d->torch_dtype, "bfloat16");
  EXPECT_EQ(d->ToJson(), text);
}

TEST(Config, LayoutNames) {
  struct Case {
    int h, hq, hkv;
    const char* name;
  };
  for (const Case& k : {Case{16, 16, 16, "MHA"}, Case{16, 16, 4, "GQA"}, Case{16, 16, 1, "MQA"},
                        Case{16, 8, 4, "SQA"}, Case{16, 8, 8, "sSQA"}, Case{16, 4, 4, "xSQA"},
                        Case{16, 2, 2, "xSQA"}, Case{16, 4, 1, "xSMQA"}, Case{16, 4, 8, "rSQA"},
                        Case{16, 12, 12, "custom"}, Case{16, 32, 16, "custom"}, Case{16, 12, 4, "SQA"}}) {
    ModelConfig c;
    c.num_attention_heads = k.h;
    c.num_query_heads = k.hq;
    c.num_key_value_heads = k.hkv;
    EXPECT_EQ(c.LayoutName(), k.name) << k.h << "/" << k.hq << "/" << k.hkv;
  }
}

TEST(Config, RejectsBadText) {
  EXPECT_THAT(ErrorOf("{\"hidden_size\": 64,").message(), HasSubstr("dir/config.json is not valid JSON"));
  EXPECT_THAT(ErrorOf("{\"a\": \"\xff\xfe\"}").message(), HasSubstr("dir/config.json is not valid UTF-8"));
  EXPECT_THAT(ErrorOf("{\"a\": \"\xed\xa0\x80\"}").message(), HasSubstr("not valid UTF-8"));  // surrogate
  EXPECT_THAT(ErrorOf("{\"a\": \"\xc0\xaf\"}").message(), HasSubstr("not valid UTF-8"));      // overlong
  EXPECT_THAT(ErrorOf("[1, 2]").message(), HasSubstr("top level must be a JSON object, got array"));
  EXPECT_THAT(ErrorOf("").message(), HasSubstr("not valid JSON"));
  EXPECT_THAT(ErrorOf(Cfg("\"hidden_size\": 32")).message(), HasSubstr("duplicate key \"hidden_size\""));
  EXPECT_THAT(ErrorOf(std::string(1000, '[') + std::string(1000, ']')).message(), HasSubstr("nesting deeper"));
  EXPECT_THAT(ErrorOf(Cfg("\"x\": 1e999")).message(), HasSubstr("not valid JSON"));
  EXPECT_TRUE(ParseModelConfig(Cfg("\"name\": \"caf\xc3\xa9 \xf0\x9f\x98\x80\""), "x").ok());  // valid UTF-8
}

TEST(Config, NamesMissingAndMistypedKeys) {
  absl::Status st = ErrorOf(R"({"num_hidden_layers": 2})");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("dir/config.json: missing required key \"hidden_size\""));
  EXPECT_THAT(ErrorOf(Cfg(R"("num_key_value_heads": "2")")).message(),
              HasSubstr("\"num_key_value_heads\" must be an integer, got string \"2\""));
  EXPECT_THAT(ErrorOf(Cfg(R"("head_dim": 8.5)")).message(), HasSubstr("\"head_dim\" must be an integer, got number"));
  EXPECT_THAT(ErrorOf(Cfg(R"("rope_theta": "big")")).message(), HasSubstr("\"rope_theta\" must be a number"));
  EXPECT_THAT(ErrorOf(Cfg(R"("tie_word_embeddings": 1)")).message(),
              HasSubstr("\"tie_word_embeddings\" must be a boolean, got integer"));
  EXPECT_THAT(ErrorOf(Cfg(R"("torch_dtype": 16)")).message(), HasSubstr("\"torch_dtype\" must be a string"));
  EXPECT_THAT(ErrorOf(Cfg(R"("num_query_heads": 18446744073709551615)")).message(),
              HasSubstr("\"num_query_heads\" is too large"));
  // null means "use the default"
  EXPECT_TRUE(ParseModelConfig(Cfg(R"("head_dim": null, "num_key_value_heads": null)"), "x").ok());
}

TEST(Config, ValidatesHeadCounts) {
  EXPECT_THAT(ErrorOf(Cfg(R"("num_attention_heads": 0)", true)).message(), HasSubstr("duplicate key"));
  EXPECT_THAT(ErrorOf(R"({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 0,
      "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 4096})")
                  .message(),
              HasSubstr("\"num_attention_heads\" is 0; it must be in [1, 4096]"));
  EXPECT_THAT(ErrorOf(Cfg(R"("num_query_heads": 0)")).message(), HasSubstr("\"num_query_heads\" is 0"));
  EXPECT_THAT(ErrorOf(Cfg(R"("num_key_value_heads": -2)")).message(), HasSubstr("\"num_key_value_heads\" is -2"));
  EXPECT_THAT(ErrorOf(Cfg(R"("num_query_heads": 6, "num_key_value_heads": 4)")).message(),
              HasSubstr("num_query_heads=6 is not a multiple of num_key_value_heads=4"));
  EXPECT_THAT(ErrorOf(Cfg(R"("num_query_heads": 4, "num_key_value_heads": 6)")).message(),
              HasSubstr("num_key_value_heads=6 is not a multiple of num_query_heads=4"));
  EXPECT_TRUE(ParseModelConfig(Cfg(R"("num_query_heads": 2, "num_key_value_heads": 4)"), "x").ok());  // rSQA
}

TEST(Config, ValidatesSizes) {
  const std::string base = R"("num_hidden_layers": 2, "num_attention_heads": 6, "intermediate_size": 128,
                              "vocab_size": 256, "max_position_embeddings": 4096)";
  // 64 / 6 does not divide: head_dim must be given.
  EXPECT_THAT(ErrorOf("{\"hidden_size\": 64, " + base + "}").message(),
              HasSubstr("hidden_size=64 is not divisible by num_attention_heads=6; give \"head_dim\""));
  EXPECT_TRUE(ParseModelConfig("{\"hidden_size\": 64, \"head_dim\": 10, " + base + "}", "x").ok());
  EXPECT_THAT(ErrorOf(Cfg(R"("head_dim": 7)")).message(), HasSubstr("head_dim=7 is odd"));
  EXPECT_THAT(ErrorOf(Cfg(R"("head_dim": 0)")).message(), HasSubstr("\"head_dim\" is 0"));
  EXPECT_THAT(ErrorOf(R"({"hidden_size": -64, "num_hidden_layers": 2, "num_attention_heads": 8,
      "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 4096})")
                  .message(),
              HasSubstr("\"hidden_size\" is -64"));
  EXPECT_THAT(ErrorOf(R"({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
      "intermediate_size": 128, "vocab_size": 99999999999, "max_position_embeddings": 4096})")
                  .message(),
              HasSubstr("\"vocab_size\" is 99999999999"));
  EXPECT_THAT(ErrorOf(Cfg(R"("rms_norm_eps": 0)")).message(), HasSubstr("\"rms_norm_eps\" is 0"));
  EXPECT_THAT(ErrorOf(Cfg(R"("rope_theta": -1)")).message(), HasSubstr("\"rope_theta\" is -1"));
}

TEST(Config, RopeScaling) {
  auto c = ParseModelConfig(Cfg(R"("rope_scaling": {"rope_type": "linear", "factor": 2})"), "x");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, "linear");
  EXPECT_EQ(c->rope_scaling.factor, 2.0);
  EXPECT_EQ(ParseModelConfig(Cfg(R"("rope_scaling": {"rope_type": "default"})"), "x")->rope_scaling.type, "none");
  absl::Status st = ErrorOf(Cfg(R"("rope_scaling": {"type": "yarn", "factor": 4})"));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("rope_scaling type \"yarn\" is not supported"));
  EXPECT_THAT(ErrorOf(Cfg(R"("rope_scaling": {"rope_type": "llama3", "factor": 8})")).message(),
              HasSubstr("\"llama3\" is not supported"));
  EXPECT_THAT(ErrorOf(Cfg(R"("rope_scaling": {"type": "linear", "factor": 0})")).message(),
              HasSubstr("\"rope_scaling.factor\" is 0"));
  EXPECT_THAT(ErrorOf(Cfg(R"("rope_scaling": {"type": "linear"})")).message(), HasSubstr("rope_scaling.factor"));
  EXPECT_THAT(ErrorOf(Cfg(R"("rope_scaling": {"factor": 2})")).message(), HasSubstr("needs a \"type\""));
  EXPECT_THAT(ErrorOf(Cfg(R"("rope_scaling": "linear")")).message(),
              HasSubstr("\"rope_scaling\" must be null or an object, got string"));
  EXPECT_THAT(ErrorOf(Cfg(R"("rope_scaling": {"type": "linear", "rope_type": "yarn", "factor": 2})")).message(),
              HasSubstr("must agree"));
}

}  // namespace
}  // namespace sqa
