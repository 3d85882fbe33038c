// Runs the real sqa-mkmodel binary (path from CMake) the way a user would.
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/workers/engine/model/test_util.h"
#include "workers/engine/model/model.h"

namespace sqa {
namespace {

using ::sqa::testing_util::ScratchDir;
using ::testing::HasSubstr;

struct Result {
  int exit_code;
  std::string output;
};

Result RunCli(const std::string& args) {
  const std::string cmd = std::string(SQA_MKMODEL_BIN) + " " + args + " 2>&1";
  Result r{-1, ""};
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

TEST(MkModelCli, WritesALoadableModel) {
  ScratchDir dir;
  Result r = RunCli("--out " + dir.path() + " --preset tiny --layout xSMQA --dtype bf16 --seed 3 --shards 2 --tie "
                 "--layers 3 --verify");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("layout xSMQA (H=8 Hq=2 Hkv=1 head_dim=8), 3 layers"));
  EXPECT_THAT(r.output, HasSubstr("verified"));
  auto m = Model::Load(dir.path());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->config().num_hidden_layers, 3);
  EXPECT_TRUE((*m)->config().tie_word_embeddings);
  EXPECT_EQ((*m)->weight_dtype(), DType::kBF16);
}

TEST(MkModelCli, Overrides) {
  ScratchDir dir;
  Result r = RunCli("--out=" + dir.path() + " --hidden 96 --heads 12 --query-heads 6 --kv-heads 3 --intermediate 64 "
                 "--vocab 100 --max-pos 512 --rope-theta 5e5 --rope-scaling-factor 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto m = Model::Load(dir.path());
  ASSERT_TRUE(m.ok()) << m.status();
  const ModelConfig& c = (*m)->config();
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.num_query_heads, 6);
  EXPECT_EQ(c.num_key_value_heads, 3);
  EXPECT_EQ(c.vocab_size, 100);
  EXPECT_EQ(c.rope_theta, 5e5);
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_EQ(c.rope_scaling.factor, 2.0);
}

TEST(MkModelCli, BadFlagsExitWithTwo) {
  ScratchDir dir;
  const std::string out = " --out " + dir.path();
  for (const char* bad : {"--bogus 1", "--layout ZQA", "--preset huge", "--dtype f64", "--seed x", "--layers",
                          "--kv-heads 3", "--head-dim 7", "--shards 0"}) {
    Result r = RunCli(std::string(bad) + out);
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.output;
    EXPECT_THAT(r.output, HasSubstr("usage: sqa-mkmodel")) << bad;
  }
  EXPECT_EQ(RunCli("--preset tiny").exit_code, 2);  // no --out
  EXPECT_THAT(RunCli("--kv-heads 3" + out).output, HasSubstr("not a multiple"));
}

}  // namespace
}  // namespace sqa
