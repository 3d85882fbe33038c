// Unit tests of sqa-bench's option parsing and helpers (the benchmarks themselves run in the
// bench_*_quick smoke tests).
#include <cmath>
#include <string>
#include <vector>

#include "bench/cpu/attention_bench.h"
#include "bench/cpu/bench_util.h"
#include "bench/cpu/prefill_bench.h"
#include "gtest/gtest.h"

namespace sqa::bench {
namespace {

TEST(ArgsTest, ParsesValuesFlagsAndEqualsForm) {
  auto a = Args::Parse({"--lengths", "1024,2048", "--heads=8", "--quick"}, {"lengths", "heads"}, {"quick"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(*a->GetIntList("lengths", {}), (std::vector<int64_t>{1024, 2048}));
  EXPECT_EQ(*a->GetInt("heads", 16), 8);
  EXPECT_TRUE(a->Has("quick"));
  EXPECT_EQ(*a->GetInt("missing", 7), 7);
}

TEST(ArgsTest, RejectsUnknownMissingAndMalformed) {
  EXPECT_FALSE(Args::Parse({"--lenghts", "5"}, {"lengths"}, {}).ok());
  EXPECT_FALSE(Args::Parse({"--lengths"}, {"lengths"}, {}).ok());
  EXPECT_FALSE(Args::Parse({"stray"}, {"lengths"}, {}).ok());
  auto a = Args::Parse({"--lengths", "10,-3", "--heads", "x"}, {"lengths", "heads"}, {});
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(a->GetIntList("lengths", {}).ok());
  EXPECT_FALSE(a->GetInt("heads", 0).ok());
}

TEST(MedianTest, OddEvenEmpty) {
  EXPECT_EQ(Median({3, 1, 2}), 2);
  EXPECT_EQ(Median({4, 1, 3, 2}), 2.5);
  EXPECT_EQ(Median({}), 0);
}

TEST(LayoutsTest, MatchReferenceTable) {
  auto l = LayoutsForBaseline(16);
  ASSERT_TRUE(l.ok());
  std::vector<std::string> names;
  for (const auto& x : *l) names.push_back(x.name + ":" + std::to_string(x.hq) + "/" + std::to_string(x.hkv));
  EXPECT_EQ(names, (std::vector<std::string>{"MHA:16/16", "GQA:16/4", "MQA:16/1", "SQA:8/4", "sSQA:8/8", "xSQA:4/4",
                                             "xSMQA:4/1", "rSQA:4/8"}));
  EXPECT_EQ((*l)[7].ha(), 8);  // rSQA computes max(Hq, Hkv) heads
  EXPECT_FALSE(LayoutsForBaseline(6).ok());
  EXPECT_FALSE(LayoutsForBaseline(0).ok());
}

TEST(AttentionOptionsTest, QuickDefaultsAndValidation) {
  std::string json, md;
  auto o = ParseAttentionOptions({"--quick"}, &json, &md);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->quick);
  EXPECT_EQ(o->lengths, (std::vector<int64_t>{128, 256}));
  o = ParseAttentionOptions({"--lengths", "4096,1024,1024", "--md", "x.md"}, &json, &md);
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->lengths, (std::vector<int64_t>{1024, 4096}));  // sorted, deduplicated
  EXPECT_EQ(md, "x.md");
  EXPECT_FALSE(ParseAttentionOptions({"--layouts", "MHA,XYZ"}, &json, &md).ok());
  EXPECT_FALSE(ParseAttentionOptions({"--heads", "10"}, &json, &md).ok());
}

TEST(PrefillOptionsTest, PresetSpecs) {
  auto p = SplitPresetSpec("1b/MHA+SQA", {"GQA"});
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->first, "1b");
  EXPECT_EQ(p->second, (std::vector<std::string>{"MHA", "SQA"}));
  p = SplitPresetSpec("small", {"GQA"});
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->second, (std::vector<std::string>{"GQA"}));
  EXPECT_FALSE(SplitPresetSpec("small/", {}).ok());
  EXPECT_FALSE(SplitPresetSpec("/MHA", {}).ok());
  std::string json, md;
  EXPECT_FALSE(ParsePrefillOptions({"--presets", "huge"}, &json, &md).ok());
  EXPECT_FALSE(ParsePrefillOptions({"--presets", "small/NOPE"}, &json, &md).ok());
  EXPECT_FALSE(ParsePrefillOptions({"--dtype", "f64"}, &json, &md).ok());
  EXPECT_TRUE(ParsePrefillOptions({"--presets", "tiny,1b/MHA+xSQA", "--dtype", "bf16"}, &json, &md).ok());
}

TEST(FillRandomTest, DeterministicUnitVariance) {
  std::vector<float> a(100000), b(100000);
  FillRandom(a.data(), a.size(), 5);
  FillRandom(b.data(), b.size(), 5);
  EXPECT_EQ(a, b);
  double sum = 0, sq = 0;
  for (float x : a) {
    sum += x;
    sq += double(x) * x;
  }
  EXPECT_NEAR(sum / a.size(), 0.0, 0.02);
  EXPECT_NEAR(sq / a.size(), 1.0, 0.02);
}

TEST(MdTableTest, Renders) {
  MdTable t({"a", "b"});
  t.AddRow({"1", "2"});
  EXPECT_EQ(t.Render(), "| a | b |\n|---|---|\n| 1 | 2 |\n");
}

}  // namespace
}  // namespace sqa::bench
