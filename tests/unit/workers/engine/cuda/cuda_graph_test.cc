// Decode steps as CUDA graphs (EngineOptions::cuda_graphs) and the engine's GPU sampling, on small
// random models (bf16 on disk). Four engines run the same steps:
//   on        graphs captured and replayed
//   padded    the graph path's padded buffers and arrays, never captured: the same kernels on the
//             same shapes, so its logits and tokens must equal `on` bit for bit
//   off       op by op, unpadded (other GEMM shapes and attention splits): within bf16 rounding
//   quiet     graphs on, sampling only (no logits come back): the same tokens as `on`
// while sequences join and leave (batch 3 -> 4 -> 3 -> 5 -> 3 -> 15, crossing the power-of-two
// batch buckets; 15 rows take the skinny GEMM's wide form, whose split K uses arrival counters
// that every replay must leave zeroed) and grow across KV-bound buckets (256, 1024). Every greedy token equals SampleToken on
// the step's own logits, and seeded sampling (temperature, top-k, top-p) equals the host sampler
// on the returned logits with graphs on and off, as the backend's sampler test requires. Skips
// without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "tests/unit/workers/engine/cuda/cuda_model_fixture.h"
#include "workers/engine/backend.h"
#include "workers/engine/cuda/cuda_backend.h"
#include "workers/engine/engine.h"
#include "workers/engine/model/model.h"
#include "workers/engine/sampling.h"

namespace sqa {
namespace {

using testing_cuda::ModelCase;
using testing_cuda::ModelCaseName;

class CudaGraphTest : public testing_cuda::CudaModelTest {
 protected:
  std::unique_ptr<Engine> MakeEngine(StepGraphMode mode, int64_t block_size = 16) {
    BackendOptions bo;
    bo.device = DeviceKind::kCuda;
    auto be = CreateBackend(bo);
    EXPECT_TRUE(be.ok()) << be.status();
    EngineOptions eo;
    eo.block_size = block_size;
    eo.num_kv_blocks = 1024;
    eo.max_chunk_tokens = 512;
    eo.cuda_graphs = mode;
    auto e = Engine::Create(model_, std::move(be).value(), eo);
    EXPECT_TRUE(e.ok()) << e.status();
    return std::move(e).value();
  }

  std::vector<int32_t> Tokens(int64_t n) {
    std::uniform_int_distribution<int32_t> d(0, static_cast<int32_t>(model_->config().vocab_size) - 1);
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (auto& x : t) x = d(rng_);
    return t;
  }

};

// One logical sequence on every engine.
struct Seq {
  std::vector<SeqId> ids;  // per engine
  int32_t next = 0;
  uint64_t step = 0;
};

TEST_P(CudaGraphTest, GraphStepsEqualEagerStepsAcrossBatchAndLengthChanges) {
  enum { kOn, kPadded, kOffE, kQuiet, kEngines };
  std::vector<std::unique_ptr<Engine>> eng;
  eng.push_back(MakeEngine(StepGraphMode::kOn));
  eng.push_back(MakeEngine(StepGraphMode::kPaddedEager));
  eng.push_back(MakeEngine(StepGraphMode::kOff));
  eng.push_back(MakeEngine(StepGraphMode::kOn));
  const int64_t vocab = model_->config().vocab_size;
  const SamplingParams greedy;
  std::map<char, Seq> live;
  auto add = [&](char name, int64_t prompt_len) {
    const std::vector<int32_t> p = Tokens(prompt_len);
    Seq s;
    std::vector<Logits> got;
    for (auto& e : eng) {
      s.ids.push_back(e->NewSequence());
      auto r = e->Prefill(s.ids.back(), p, false);
      ASSERT_TRUE(r.ok()) << r.status();
      got.push_back(std::move(r).value());
    }
    s.next = SampleToken(got[kOn].row(0), vocab, greedy, 0).token;
    s.step = 1;
    live[name] = s;
  };
  auto drop = [&](char name) {
    for (int e = 0; e < kEngines; ++e) eng[static_cast<size_t>(e)]->Release(live[name].ids[static_cast<size_t>(e)]);
    live.erase(name);
  };
  // 'a' crosses the 256 KV bound after 11 steps, 'd' the 1024 bound after 4.
  add('a', 245);
  add('b', 5);
  add('c', 77);
  int64_t bitwise_rows = 0, near_tie_token_diffs = 0;
  for (int step = 0; step < 44; ++step) {
    if (step == 8) add('d', 1020);   // batch 4
    if (step == 14) drop('a');       // batch 3
    if (step == 20) {  // batch 5 (bucket 8: the graph buffers grow, every graph is rebuilt)
      add('e', 30);
      add('f', 3);
    }
    if (step == 32) {  // batch 3 (bucket 4 again)
      drop('b');
      drop('e');
    }
    if (step == 38) {  // batch 15 (bucket 16)
      for (char c = 'g'; c < 'g' + 12; ++c) add(c, 4 + 3 * (c - 'g'));
    }
    if (HasFatalFailure()) return;
    std::vector<Logits> out;
    for (int e = 0; e < kEngines; ++e) {
      std::vector<Engine::Segment> segs;
      for (auto& [name, s] : live) {
        Engine::Segment sg{s.ids[static_cast<size_t>(e)], absl::MakeConstSpan(&s.next, 1), false};
        sg.sample = &greedy;
        sg.sample_step = s.step;
        sg.sample_logits = e != kQuiet;
        segs.push_back(sg);
      }
      auto r = eng[static_cast<size_t>(e)]->Forward(segs);
      ASSERT_TRUE(r.ok()) << "engine " << e << " step " << step << ": " << r.status();
      out.push_back(std::move(r).value());
    }
    const std::string at = "step " + std::to_string(step) + " batch " + std::to_string(live.size());
    ASSERT_EQ(out[kOn].rows(), static_cast<int64_t>(live.size())) << at;
    ASSERT_EQ(out[kPadded].data.size(), out[kOn].data.size()) << at;
    EXPECT_EQ(std::memcmp(out[kPadded].data.data(), out[kOn].data.data(), sizeof(float) * out[kOn].data.size()), 0)
        << at << ": graph replay differs from the same steps run eagerly";
    EXPECT_TRUE(out[kQuiet].data.empty()) << at;
    ASSERT_EQ(out[kOffE].data.size(), out[kOn].data.size()) << at;
    size_t i = 0;
    for (auto& [name, s] : live) {
      const float* on = out[kOn].row(static_cast<int64_t>(i));
      const float* off = out[kOffE].row(static_cast<int64_t>(i));
      const std::string who = at + " seq " + std::string(1, name);
      const SampledToken t_on = out[kOn].sampled[i];
      EXPECT_EQ(t_on.token, SampleToken(on, vocab, greedy, s.step).token) << who << ": GPU greedy != host argmax";
      EXPECT_EQ(out[kPadded].sampled[i].token, t_on.token) << who;
      EXPECT_EQ(std::memcmp(&out[kPadded].sampled[i].logprob, &t_on.logprob, sizeof(float)), 0) << who;
      EXPECT_EQ(out[kQuiet].sampled[i].token, t_on.token) << who;
      EXPECT_EQ(std::memcmp(&out[kQuiet].sampled[i].logprob, &t_on.logprob, sizeof(float)), 0) << who;
      double mx = 0, err = 0;
      for (int64_t v = 0; v < vocab; ++v) {
        ASSERT_TRUE(std::isfinite(on[v])) << who;
        mx = std::max(mx, std::fabs(static_cast<double>(on[v])));
        err = std::max(err, std::fabs(static_cast<double>(on[v]) - off[v]));
      }
      EXPECT_LE(err, 2e-2 * mx) << who << ": graphs on vs off";
      const int32_t t_off = out[kOffE].sampled[i].token;
      if (t_off != t_on.token) {
        // Only a near tie may flip: the two tokens' logits within the two runs' difference.
        ++near_tie_token_diffs;
        EXPECT_LE(std::fabs(static_cast<double>(on[t_on.token]) - on[t_off]), 2 * err) << who;
      }
      ++bitwise_rows;
      ++i;
    }
    i = 0;
    for (auto& [name, s] : live) {
      s.next = out[kOn].sampled[i++].token;
      ++s.step;
    }
  }
  EXPECT_GT(bitwise_rows, 100);
  EXPECT_LE(near_tie_token_diffs, 2);
  const StepGraphStats& on = eng[kOn]->step_graph_stats();
  EXPECT_EQ(on.capture_failures, 0);
  // (4, 256), (4, 1024), (4, 2048), (8, 2048), and (4, 2048) again after the buffers grew.
  EXPECT_GE(on.captures, 5);
  EXPECT_GE(on.invalidations, 1);
  EXPECT_GT(on.replays, 20);
  EXPECT_EQ(eng[kPadded]->step_graph_stats().captures, 0);
  EXPECT_GT(eng[kPadded]->step_graph_stats().padded_steps, 40);
  EXPECT_EQ(eng[kOffE]->step_graph_stats().padded_steps, 0);
  EXPECT_EQ(eng[kQuiet]->step_graph_stats().capture_failures, 0);
  EXPECT_GT(eng[kQuiet]->step_graph_stats().replays, 20);
}

// Seeded sampling on the GPU (graph steps and eager steps, decode and a prefill's last position)
// picks what the host sampler picks from the same logits.
TEST_P(CudaGraphTest, GpuSamplingMatchesHostSamplerOnTheReturnedLogits) {
  const int64_t vocab = model_->config().vocab_size;
  std::uniform_real_distribution<float> temp(0.3f, 1.5f), topp(0.3f, 1.f);
  std::uniform_int_distribution<int32_t> topk(1, 80);
  std::uniform_int_distribution<uint64_t> seed;
  std::vector<SamplingParams> params(7);
  for (size_t r = 0; r < params.size(); ++r) {
    SamplingParams& p = params[r];
    p.seed = seed(rng_);
    switch (r % 7) {
      case 0: break;
      case 1: p.temperature = temp(rng_); break;
      case 2: p.temperature = temp(rng_), p.top_k = topk(rng_); break;
      case 3: p.temperature = temp(rng_), p.top_p = topp(rng_); break;
      case 4: p.temperature = temp(rng_), p.top_k = topk(rng_), p.top_p = topp(rng_); break;
      case 5: p.temperature = 1.f, p.top_k = 1; break;
      case 6: p.temperature = 4.f; break;  // nearly flat: exercises the cumulative walk
    }
  }
  int mismatches = 0, total = 0;
  for (StepGraphMode mode : {StepGraphMode::kOn, StepGraphMode::kOff}) {
    auto e = MakeEngine(mode, 64);
    std::vector<SeqId> ids;
    std::vector<int32_t> next(params.size());
    std::vector<uint64_t> steps(params.size(), 0);
    auto check = [&](const Logits& r, size_t seg, int64_t row, size_t p, const std::string& what) {
      const SampledToken want = SampleToken(r.row(row), vocab, params[p], steps[p]);
      ++total;
      if (r.sampled[seg].token != want.token) {
        ++mismatches;
        ADD_FAILURE() << what << " params " << p << ": gpu " << r.sampled[seg].token << ", host " << want.token;
      }
      EXPECT_NEAR(r.sampled[seg].logprob, want.logprob, 1e-4 * std::max(1.f, std::fabs(want.logprob))) << what;
    };
    // Prompts: one Forward each, sampling the last position (eager path).
    for (size_t p = 0; p < params.size(); ++p) {
      ids.push_back(e->NewSequence());
      const std::vector<int32_t> prompt = Tokens(20 + 13 * static_cast<int64_t>(p));
      Engine::Segment s{ids.back(), prompt, false};
      s.sample = &params[p];
      s.sample_step = 0;
      s.sample_logits = true;
      auto r = e->Forward({&s, 1});
      ASSERT_TRUE(r.ok()) << r.status();
      check(*r, 0, 0, p, "prompt");
      next[p] = r->sampled[0].token;
      steps[p] = 1;
    }
    for (int step = 0; step < 12; ++step) {
      std::vector<Engine::Segment> segs;
      for (size_t p = 0; p < params.size(); ++p) {
        Engine::Segment s{ids[p], absl::MakeConstSpan(&next[p], 1), false};
        s.sample = &params[p];
        s.sample_step = steps[p];
        s.sample_logits = true;
        segs.push_back(s);
      }
      auto r = e->Forward(segs);
      ASSERT_TRUE(r.ok()) << r.status();
      for (size_t p = 0; p < params.size(); ++p) {
        check(*r, p, r->row_begin[p], p, std::string(mode == StepGraphMode::kOn ? "graphs" : "eager") + " step " +
                                             std::to_string(step));
        next[p] = r->sampled[p].token;
        ++steps[p];
      }
    }
    if (mode == StepGraphMode::kOn) {
      EXPECT_GT(e->step_graph_stats().replays, 5);
      EXPECT_EQ(e->step_graph_stats().capture_failures, 0);
    }
    // A mixed step (a prompt with the decodes: not a graph step) samples the prompt too.
    const std::vector<int32_t> prompt = Tokens(50);
    const SeqId fresh = e->NewSequence();
    std::vector<Engine::Segment> segs;
    Engine::Segment ps{fresh, prompt, false};
    ps.sample = &params[3];
    ps.sample_step = 0;
    ps.sample_logits = true;
    segs.push_back(ps);
    for (size_t p = 0; p < params.size(); ++p) {
      Engine::Segment s{ids[p], absl::MakeConstSpan(&next[p], 1), false};
      s.sample = &params[p];
      s.sample_step = steps[p];
      s.sample_logits = true;
      segs.push_back(s);
    }
    auto r = e->Forward(segs);
    ASSERT_TRUE(r.ok()) << r.status();
    const uint64_t keep = steps[3];
    steps[3] = 0;
    check(*r, 0, r->row_begin[0], 3, "mixed prompt");
    steps[3] = keep;
    for (size_t p = 0; p < params.size(); ++p) check(*r, p + 1, r->row_begin[p + 1], p, "mixed decode");
  }
  EXPECT_EQ(mismatches, 0) << "of " << total;
}

INSTANTIATE_TEST_SUITE_P(Layouts, CudaGraphTest,
                         ::testing::Values(ModelCase{"GQA", 64}, ModelCase{"SQA", 128}, ModelCase{"MQA", 64},
                                           ModelCase{"rSQA", 64}, ModelCase{"MHA", 128}),
                         ModelCaseName);

}  // namespace
}  // namespace sqa
