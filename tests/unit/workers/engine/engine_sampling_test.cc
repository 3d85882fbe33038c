// Engine::Forward with Segment::sample on the CPU backend: the engine samples on the host with
// SampleToken from the logits it computed, the (seed, step) draw of sampling.h, so the tokens
// equal SampleToken on the returned rows; segments that only sample return no logits rows; the
// step-graph option changes nothing on a backend without step graphs.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "workers/engine/engine.h"
#include "workers/engine/model/mkmodel.h"
#include "workers/engine/sampling.h"

namespace sqa {
namespace {

namespace fs = std::filesystem;

class EngineSamplingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("sqa_engine_sampling_" + std::to_string(::getpid()));
    auto cfg = PresetConfig("tiny", "GQA");
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    MkModelOptions o;
    o.config = *cfg;
    o.seed = 23;
    o.threads = 1;
    ASSERT_TRUE(WriteRandomModel(o, dir_.string()).ok());
    auto m = Model::Load(dir_.string());
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::shared_ptr<const Model>(std::move(m).value());
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::unique_ptr<Engine> MakeEngine(StepGraphMode mode) {
    BackendOptions bo;
    bo.num_threads = 2;
    auto be = CreateBackend(bo);
    EXPECT_TRUE(be.ok()) << be.status();
    EngineOptions eo;
    eo.block_size = 16;
    eo.num_kv_blocks = 64;
    eo.cuda_graphs = mode;
    auto e = Engine::Create(model_, std::move(be).value(), eo);
    EXPECT_TRUE(e.ok()) << e.status();
    return std::move(e).value();
  }
  fs::path dir_;
  std::shared_ptr<const Model> model_;
};

TEST_F(EngineSamplingTest, SampledTokensFollowTheHostSampler) {
  auto eng = MakeEngine(StepGraphMode::kOn);
  const int64_t vocab = model_->config().vocab_size;
  std::vector<SamplingParams> params(4);
  params[1].temperature = 0.9f, params[1].seed = 11;
  params[2].temperature = 1.3f, params[2].top_k = 7, params[2].seed = 12;
  params[3].temperature = 0.7f, params[3].top_p = 0.8f, params[3].seed = 13;
  std::vector<SeqId> seqs;
  std::vector<int32_t> next(4);
  for (int i = 0; i < 4; ++i) {
    seqs.push_back(eng->NewSequence());
    const std::vector<int32_t> p = {static_cast<int32_t>(3 + i), 17, 40, static_cast<int32_t>(100 + i)};
    Engine::Segment s{seqs.back(), p, false};
    s.sample = &params[static_cast<size_t>(i)];
    s.sample_step = 0;
    s.sample_logits = true;
    auto r = eng->Forward({&s, 1});
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->rows(), 1);
    const SampledToken want = SampleToken(r->row(0), vocab, params[static_cast<size_t>(i)], 0);
    EXPECT_EQ(r->sampled[0].token, want.token);
    EXPECT_FLOAT_EQ(r->sampled[0].logprob, want.logprob);
    next[static_cast<size_t>(i)] = want.token;
  }
  for (uint64_t step = 1; step < 6; ++step) {
    // Sequence 0 asks for logits only (no sampling), 1 samples with logits, 2 and 3 sample only.
    std::vector<Engine::Segment> segs;
    for (int i = 0; i < 4; ++i) {
      Engine::Segment s{seqs[static_cast<size_t>(i)], absl::MakeConstSpan(&next[static_cast<size_t>(i)], 1), false};
      if (i > 0) {
        s.sample = &params[static_cast<size_t>(i)];
        s.sample_step = step;
        s.sample_logits = i == 1;
      }
      segs.push_back(s);
    }
    auto r = eng->Forward(segs);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->rows(), 2);
    EXPECT_EQ(r->row_begin, (std::vector<int64_t>{0, 1, 2, 2}));
    const SampledToken w1 = SampleToken(r->row(1), vocab, params[1], step);
    EXPECT_EQ(r->sampled[1].token, w1.token);
    EXPECT_FLOAT_EQ(r->sampled[1].logprob, w1.logprob);
    next[0] = SampleToken(r->row(0), vocab, params[0], step).token;
    for (int i = 1; i < 4; ++i) next[static_cast<size_t>(i)] = r->sampled[static_cast<size_t>(i)].token;
  }
  EXPECT_EQ(eng->step_graph_stats().padded_steps, 0);  // the CPU backend has no step graphs
}

// The same steps with sampling-only segments and with full logits pick the same tokens.
TEST_F(EngineSamplingTest, SamplingWithoutLogitsEqualsSamplingFromReturnedLogits) {
  auto a = MakeEngine(StepGraphMode::kOn);
  auto b = MakeEngine(StepGraphMode::kOff);
  SamplingParams p;
  p.temperature = 1.1f;
  p.top_k = 20;
  p.seed = 99;
  const std::vector<int32_t> prompt = {5, 6, 7, 8, 9};
  const SeqId sa = a->NewSequence(), sb = b->NewSequence();
  int32_t ta = 0, tb = 0;
  for (uint64_t step = 0; step < 8; ++step) {
    Engine::Segment xa{sa, step == 0 ? absl::MakeConstSpan(prompt) : absl::MakeConstSpan(&ta, 1), false};
    Engine::Segment xb{sb, step == 0 ? absl::MakeConstSpan(prompt) : absl::MakeConstSpan(&tb, 1), false};
    xa.sample = &p;
    xa.sample_step = step;
    auto ra = a->Forward({&xa, 1});
    auto rb = b->Forward({&xb, 1});
    ASSERT_TRUE(ra.ok() && rb.ok());
    EXPECT_TRUE(ra->data.empty());
    ASSERT_EQ(rb->rows(), 1);
    const SampledToken want = SampleToken(rb->row(0), rb->vocab, p, step);
    EXPECT_EQ(ra->sampled[0].token, want.token) << "step " << step;
    ta = ra->sampled[0].token;
    tb = want.token;
  }
}

TEST_F(EngineSamplingTest, InvalidSamplingParamsAreRejected) {
  auto eng = MakeEngine(StepGraphMode::kOn);
  SamplingParams bad;
  bad.top_p = 0.f;
  const std::vector<int32_t> prompt = {1, 2, 3};
  Engine::Segment s{eng->NewSequence(), prompt, false};
  s.sample = &bad;
  EXPECT_EQ(eng->Forward({&s, 1}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(eng->SequenceLength(s.seq), 0);
}

TEST(StepGraphModeTest, Parses) {
  EXPECT_EQ(*ParseStepGraphMode("on"), StepGraphMode::kOn);
  EXPECT_EQ(*ParseStepGraphMode("off"), StepGraphMode::kOff);
  EXPECT_FALSE(ParseStepGraphMode("yes").ok());
}

}  // namespace
}  // namespace sqa
