// sqa-group-bench's runner on the CPU (Gloo over loopback): every rank's timings are there and
// plausible, and the longest-prompt search finds the boundary a KV byte cap sets, in every mode.
#include "bench/gpu/group/group_run.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "workers/engine/model/mkmodel.h"

namespace sqa::bench {
namespace {

std::shared_ptr<const Model> TestModel() {
  static std::shared_ptr<const Model> model = [] {
    ModelConfig c;
    c.hidden_size = 128;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 16;
    c.head_dim = 8;
    c.intermediate_size = 192;
    c.vocab_size = 256;
    c.max_position_embeddings = 4096;
    c.rope_theta = 10000;
    EXPECT_TRUE(ApplyLayout("SQA", &c).ok());  // Hq 8, Hkv 4
    MkModelOptions o;
    o.config = c;
    o.seed = 3;
    o.threads = 1;
    const std::string dir = (std::filesystem::path("/tmp") / ("sqa_group_run_test_" + std::to_string(::getpid()))).string();
    EXPECT_TRUE(WriteRandomModel(o, dir).ok());
    auto m = Model::Load(dir);
    EXPECT_TRUE(m.ok()) << m.status();
    return std::shared_ptr<const Model>(std::move(m).value());
  }();
  return model;
}

GroupSpec Spec(int world, ShardMode mode) {
  GroupSpec s;
  s.model = TestModel();
  s.world = world;
  s.mode = mode;
  s.backend.num_threads = 1;
  s.engine.block_size = 8;
  s.engine.num_kv_blocks = 256;
  s.engine.max_chunk_tokens = 64;
  s.timeout = std::chrono::milliseconds(20000);
  s.prefix = std::string(ShardModeName(mode)) + std::to_string(world);
  return s;
}

TEST(FindLongestPromptTest, FindsTheBoundaryOfAMonotonePredicate) {
  for (int64_t boundary : {0, 1, 5, 6, 19, 20}) {
    auto fits = [&](int64_t n) {
      return n <= boundary * 100 ? absl::OkStatus() : absl::ResourceExhaustedError("full");
    };
    auto r = FindLongestPrompt(100, 2000, fits);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->longest, boundary * 100) << boundary;
    EXPECT_EQ(r->first_failing, boundary == 20 ? 0 : (boundary + 1) * 100) << boundary;
    EXPECT_LE(r->probes.size(), 11u);  // doubling, then bisection
  }
  auto broken = FindLongestPrompt(100, 2000, [](int64_t) { return absl::UnavailableError("group broke"); });
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(FindLongestPrompt(0, 10, [](int64_t) { return absl::OkStatus(); }).ok());
}

TEST(GroupRunTest, EveryRankReportsPlausibleTimings) {
  const std::vector<int32_t> prompt = BenchPrompt(300, 256);
  for (ShardMode mode : {ShardMode::kHeads, ShardMode::kSequence}) {
    for (int world : {2, 4}) {
      SCOPED_TRACE(testing::Message() << ShardModeName(mode) << " P=" << world);
      const RunReport r = RunPrefill(Spec(world, mode), prompt, 100);
      ASSERT_TRUE(r.status.ok()) << r.status;
      ASSERT_EQ(r.ranks.size(), static_cast<size_t>(world));
      EXPECT_GT(r.seconds, 0);
      EXPECT_FALSE(r.logits.empty());
      // The measured prefill only: 300 tokens in chunks of 64 (heads) or one pass (sequence).
      const int64_t steps = mode == ShardMode::kSequence ? 1 : 5;
      for (const RankReport& k : r.ranks) {
        SCOPED_TRACE(testing::Message() << "rank " << k.rank);
        EXPECT_EQ(k.timings.steps, steps);
        EXPECT_GT(k.timings.attention_seconds, 0);
        EXPECT_LE(k.timings.attention_seconds, k.timings.step_seconds);
        EXPECT_GT(k.timings.exposed_comm_seconds, 0);
        EXPECT_LE(k.timings.exposed_comm_seconds, k.comm_seconds);
        EXPECT_LE(k.timings.exposed_comm_seconds, k.timings.step_seconds);
        EXPECT_GT(k.comm_bytes, 0);
      }
      EXPECT_GE(r.attention_balance(), 1.0);
      EXPECT_LE(r.attention_balance(), static_cast<double>(world));
    }
  }
  // One engine: attention timed, nothing to communicate.
  const RunReport one = RunPrefill(Spec(1, ShardMode::kNone), prompt, 100);
  ASSERT_TRUE(one.status.ok()) << one.status;
  ASSERT_EQ(one.ranks.size(), 1u);
  EXPECT_GT(one.ranks[0].timings.attention_seconds, 0);
  EXPECT_LE(one.ranks[0].timings.attention_seconds, one.ranks[0].timings.step_seconds);
  EXPECT_EQ(one.ranks[0].timings.exposed_comm_seconds, 0);
  EXPECT_DOUBLE_EQ(one.attention_balance(), 1.0);
}

// A cap of 40 blocks of 8 tokens per rank: one engine holds 320 tokens, a sequence group of two
// twice that (each rank stores half the prompt), a heads group of two 320 (each rank stores all
// tokens of half the KV heads; the cap is in bytes, so it is half as many bytes).
TEST(GroupRunTest, LongestPromptSearchFindsTheKvCapBoundary) {
  struct Case {
    int world;
    ShardMode mode;
    int64_t want;
  } cases[] = {{1, ShardMode::kNone, 320}, {2, ShardMode::kSequence, 640}, {2, ShardMode::kHeads, 320},
               {4, ShardMode::kSequence, 1280}};
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << ShardModeName(c.mode) << " P=" << c.world);
    GroupSpec spec = Spec(c.world, c.mode);
    absl::StatusOr<int64_t> cap =
        KvBytesPerRank(spec.model->config(), c.mode, 0, c.world, spec.engine.block_size, 320, DType::kF32);
    ASSERT_TRUE(cap.ok()) << cap.status();
    spec.max_kv_bytes = *cap;
    auto r = FindLongestPrompt(32, 4096, [&](int64_t n) { return ProbePrefill(spec, n); });
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->longest, c.want);
    EXPECT_EQ(r->first_failing, c.want + 32);
    EXPECT_EQ(r->failure.code(), absl::StatusCode::kResourceExhausted) << r->failure;
    // The boundary is real: a plain prefill (attention computed) of it fits, one step more does not.
    GroupSpec real = spec;
    real.kv_for_tokens = c.want;
    real.prefix += "-real";
    EXPECT_TRUE(RunPrefill(real, BenchPrompt(c.want, 256), 0).status.ok());
    real.kv_for_tokens = c.want + 32;
    real.prefix += "-over";
    EXPECT_EQ(RunPrefill(real, BenchPrompt(c.want + 32, 256), 0).status.code(), absl::StatusCode::kResourceExhausted);
  }
}

TEST(GroupRunTest, LongestPromptWithoutACapStopsAtTheModelsPositions) {
  GroupSpec spec = Spec(2, ShardMode::kSequence);
  auto r = FindLongestPrompt(1024, 8192, [&](int64_t n) { return ProbePrefill(spec, n); });
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->longest, 4096);
  EXPECT_EQ(r->first_failing, 5120);
  EXPECT_EQ(r->failure.code(), absl::StatusCode::kInvalidArgument) << r->failure;
}

}  // namespace
}  // namespace sqa::bench
