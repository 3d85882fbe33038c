// Scheduler without gRPC, on the CPU backend with a tiny random model, driven step by step
// (RunStep) except where the thread is the point.
#include "workers/server/scheduler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <future>
#include <limits>
#include <map>

#include "tests/unit/workers/server/test_model.h"

namespace sqa::worker {
namespace {

using testing::MakeEngine;
using testing::RandomPrompt;
using testing::ReferenceGenerate;
using testing::TinyModel;

// Collects one request's stream.
struct Collector {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  bool done = false;
  absl::Status status;
  RequestResult result;
  RequestCallbacks Callbacks() {
    RequestCallbacks cb;
    cb.on_token = [this](int32_t t, float lp) {
      EXPECT_FALSE(done) << "token after on_done";
      tokens.push_back(t);
      logprobs.push_back(lp);
    };
    cb.on_done = [this](const absl::Status& st, RequestResult r) {
      EXPECT_FALSE(done) << "on_done twice";
      done = true;
      status = st;
      result = std::move(r);
    };
    return cb;
  }
};

struct Harness {
  std::unique_ptr<Scheduler> sched;
  std::vector<StepInfo> steps;
  explicit Harness(int64_t budget, int64_t num_blocks = 256, int64_t block_size = 16, int max_queued = 256,
                   int64_t max_pos = 4096) {
    SchedulerOptions o;
    o.max_batch_tokens = budget;
    o.max_queued = max_queued;
    o.on_step = [this](const StepInfo& s) { steps.push_back(s); };
    auto s = Scheduler::Create(MakeEngine(TinyModel(max_pos), block_size, num_blocks), o, nullptr);
    EXPECT_TRUE(s.ok()) << s.status();
    sched = std::move(s).value();
  }
  void RunUntilIdle(int max_steps = 10000) {
    for (int i = 0; i < max_steps; ++i) {
      if (!sched->RunStep()) return;
    }
    ADD_FAILURE() << "scheduler still busy after " << max_steps << " steps";
  }
};

GenerateParams Gen(std::vector<int32_t> prompt, int max_tokens, SamplingParams sp = {}) {
  GenerateParams p;
  p.prompt = std::move(prompt);
  p.max_tokens = max_tokens;
  p.sampling = sp;
  return p;
}

const absl::Time kNoDeadline = absl::InfiniteFuture();

TEST(Scheduler, ConcurrentRequestsEqualPlainEngineRuns) {
  Harness h(/*budget=*/32);
  SamplingParams seeded;
  seeded.temperature = 0.8f;
  seeded.top_k = 40;
  seeded.top_p = 0.9f;
  seeded.seed = 1234;
  struct Case {
    std::vector<int32_t> prompt;
    SamplingParams sp;
    int max_tokens;
  };
  std::vector<Case> cases = {{RandomPrompt(5, 1), {}, 9},
                             {RandomPrompt(37, 2), {}, 12},
                             {RandomPrompt(100, 3), seeded, 10},
                             {RandomPrompt(1, 4), seeded, 6}};
  std::vector<Collector> out(cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    auto id = h.sched->SubmitGenerate(Gen(cases[i].prompt, cases[i].max_tokens, cases[i].sp), kNoDeadline,
                                      out[i].Callbacks());
    ASSERT_TRUE(id.ok()) << id.status();
  }
  h.RunUntilIdle();
  for (size_t i = 0; i < cases.size(); ++i) {
    ASSERT_TRUE(out[i].done);
    ASSERT_TRUE(out[i].status.ok()) << out[i].status;
    EXPECT_EQ(out[i].tokens, ReferenceGenerate(TinyModel(), cases[i].prompt, {}, cases[i].sp, cases[i].max_tokens))
        << "request " << i;
    EXPECT_EQ(out[i].result.finish_reason, FinishReason::kLength);
    EXPECT_EQ(out[i].result.completion_tokens, cases[i].max_tokens);
    EXPECT_EQ(out[i].result.prompt_tokens, static_cast<int64_t>(cases[i].prompt.size()));
    for (float lp : out[i].logprobs) EXPECT_LE(lp, 0.f);
  }
  // Everything was batched: fewer steps than running the requests one after another.
  EXPECT_LT(h.steps.size(), 9u + 12 + 10 + 6);
  const LoadSnapshot l = h.sched->Load();
  EXPECT_EQ(l.kv_blocks_used, 0);
  EXPECT_EQ(l.kv_blocks_reserved, 0);
  EXPECT_EQ(l.running_requests, 0);
}

TEST(Scheduler, BudgetRespectedAndDecodesInterleaveWithLongPrefill) {
  const int64_t budget = 24;
  Harness h(budget);
  Collector a, b;
  // A short request gets into decode first.
  ASSERT_TRUE(h.sched->SubmitGenerate(Gen(RandomPrompt(4, 7), 40), kNoDeadline, a.Callbacks()).ok());
  ASSERT_TRUE(h.sched->RunStep());
  ASSERT_EQ(a.tokens.size(), 1u);
  const RequestId long_id = *h.sched->SubmitGenerate(Gen(RandomPrompt(300, 8), 3), kNoDeadline, b.Callbacks());
  h.RunUntilIdle();
  ASSERT_TRUE(a.status.ok() && b.status.ok());
  int prefill_chunks = 0;
  for (const StepInfo& s : h.steps) {
    EXPECT_LE(s.total_tokens, budget);
    int64_t sum = 0;
    bool has_long_prefill = false, has_decode_of_a = false;
    for (const auto& p : s.parts) {
      sum += p.tokens;
      if (p.request == long_id && !p.decode) has_long_prefill = true;
      if (p.request != long_id && p.decode) has_decode_of_a = true;
    }
    EXPECT_EQ(sum, s.total_tokens);
    if (has_long_prefill) {
      ++prefill_chunks;
      // A (40 tokens) runs during all of B's prefill: every prefill chunk of B shares its step
      // with a decode of A, so A waits at most one chunk between tokens.
      EXPECT_TRUE(has_decode_of_a) << "step " << s.index;
    }
  }
  // 300 tokens with 23 per step next to A's decode -> ceil(300 / 23) chunks.
  EXPECT_EQ(prefill_chunks, (300 + 22) / 23);
  EXPECT_EQ(b.tokens, ReferenceGenerate(TinyModel(), RandomPrompt(300, 8), {}, {}, 3));
  EXPECT_EQ(a.tokens, ReferenceGenerate(TinyModel(), RandomPrompt(4, 7), {}, {}, 40));
}

TEST(Scheduler, CancellationFreesBlocksAtNextStep) {
  Harness h(64);
  Collector a, b;
  const RequestId ida = *h.sched->SubmitGenerate(Gen(RandomPrompt(50, 9), 100), kNoDeadline, a.Callbacks());
  ASSERT_TRUE(h.sched->SubmitGenerate(Gen(RandomPrompt(20, 10), 5), kNoDeadline, b.Callbacks()).ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(h.sched->RunStep());
  EXPECT_GT(h.sched->Load().kv_blocks_used, 0);
  h.sched->Cancel(ida);
  ASSERT_TRUE(h.sched->RunStep());
  ASSERT_TRUE(a.done);
  EXPECT_EQ(a.status.code(), absl::StatusCode::kCancelled) << a.status;
  h.RunUntilIdle();
  EXPECT_TRUE(b.status.ok());
  EXPECT_EQ(h.sched->Load().kv_blocks_used, 0);
  EXPECT_EQ(h.sched->Load().kv_blocks_reserved, 0);
  h.sched->Cancel(ida);  // unknown by now: ignored
  EXPECT_FALSE(h.sched->RunStep());
}

TEST(Scheduler, CancelWhileQueued) {
  Harness h(64, /*num_blocks=*/4);
  Collector a, b;
  ASSERT_TRUE(h.sched->SubmitGenerate(Gen(RandomPrompt(30, 1), 30), kNoDeadline, a.Callbacks()).ok());  // 4 blocks
  const RequestId idb = *h.sched->SubmitGenerate(Gen(RandomPrompt(10, 2), 5), kNoDeadline, b.Callbacks());
  ASSERT_TRUE(h.sched->RunStep());
  EXPECT_EQ(h.sched->Load().queued_requests, 1);
  h.sched->Cancel(idb);
  ASSERT_TRUE(h.sched->RunStep());
  EXPECT_EQ(b.status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(h.sched->Load().queued_requests, 0);
  h.RunUntilIdle();
  EXPECT_TRUE(a.status.ok());
}

TEST(Scheduler, AdmissionWaitsForKvThenAdmits) {
  // 8 blocks of 16 tokens. A reserves ceil((60 + 30) / 16) = 6; B needs ceil((40 + 8) / 16) = 3.
  Harness h(64, /*num_blocks=*/8);
  Collector a, b;
  const RequestId ida = *h.sched->SubmitGenerate(Gen(RandomPrompt(60, 11), 30), kNoDeadline, a.Callbacks());
  const RequestId idb = *h.sched->SubmitGenerate(Gen(RandomPrompt(40, 12), 8), kNoDeadline, b.Callbacks());
  ASSERT_TRUE(h.sched->RunStep());
  LoadSnapshot l = h.sched->Load();
  EXPECT_EQ(l.running_requests, 1);
  EXPECT_EQ(l.queued_requests, 1);
  EXPECT_EQ(l.queued_tokens, 40);
  EXPECT_EQ(l.kv_blocks_reserved, 6);
  h.RunUntilIdle();
  ASSERT_TRUE(a.status.ok()) << a.status;
  ASSERT_TRUE(b.status.ok()) << b.status;
  // B ran only after A had finished, and gives the same tokens as alone.
  int64_t last_a = -1, first_b = -1;
  for (const StepInfo& s : h.steps)
    for (const auto& p : s.parts) {
      if (p.request == ida) last_a = s.index;
      if (p.request == idb && first_b < 0) first_b = s.index;
    }
  EXPECT_GT(first_b, last_a);
  EXPECT_EQ(b.tokens, ReferenceGenerate(TinyModel(), RandomPrompt(40, 12), {}, {}, 8));
  EXPECT_GT(b.result.queue_seconds, 0);
}

TEST(Scheduler, RejectionsAreImmediateAndActionable) {
  Harness h(64, /*num_blocks=*/8, /*block_size=*/16, /*max_queued=*/1, /*max_pos=*/512);
  auto code = [&](GenerateParams p) {
    return h.sched->SubmitGenerate(std::move(p), kNoDeadline, {}).status();
  };
  // Never fits: 100 + 100 tokens need 13 blocks of 16; the worker has 8.
  absl::Status st = code(Gen(RandomPrompt(100, 1), 100));
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(st.message().find("needs 13 KV blocks"), std::string::npos) << st;
  EXPECT_NE(st.message().find("this worker has 8"), std::string::npos) << st;

  EXPECT_EQ(code(Gen({}, 5)).code(), absl::StatusCode::kInvalidArgument);
  st = code(Gen({1, 256, 3}, 5));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("prompt_tokens[1] = 256"), std::string::npos) << st;
  EXPECT_EQ(code(Gen({-1}, 5)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Gen({1}, 0)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Gen({1}, -3)).code(), absl::StatusCode::kInvalidArgument);
  st = code(Gen(RandomPrompt(500, 1), 13));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("exceeds the model's context of 512"), std::string::npos) << st;
  SamplingParams sp;
  sp.temperature = -1;
  EXPECT_EQ(code(Gen({1}, 5, sp)).code(), absl::StatusCode::kInvalidArgument);
  sp.temperature = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(code(Gen({1}, 5, sp)).code(), absl::StatusCode::kInvalidArgument);
  sp = {};
  sp.top_p = 1.5f;
  EXPECT_EQ(code(Gen({1}, 5, sp)).code(), absl::StatusCode::kInvalidArgument);
  sp.top_p = -0.1f;
  EXPECT_EQ(code(Gen({1}, 5, sp)).code(), absl::StatusCode::kInvalidArgument);
  sp = {};
  sp.top_k = -1;
  EXPECT_EQ(code(Gen({1}, 5, sp)).code(), absl::StatusCode::kInvalidArgument);
  GenerateParams resume_all = Gen({1}, 2);
  resume_all.resume_tokens = {3, 4};
  EXPECT_EQ(code(resume_all).code(), absl::StatusCode::kInvalidArgument);
  EncodeParams enc;
  EXPECT_EQ(h.sched->SubmitEncode(enc, kNoDeadline, {}).status().code(), absl::StatusCode::kInvalidArgument);
  enc.prompt = RandomPrompt(513, 1);
  EXPECT_EQ(h.sched->SubmitEncode(enc, kNoDeadline, {}).status().code(), absl::StatusCode::kInvalidArgument);

  // Queue of 1: the second waiting request is refused; the first completes.
  Collector a;
  ASSERT_TRUE(h.sched->SubmitGenerate(Gen({1, 2, 3}, 4), kNoDeadline, a.Callbacks()).ok());
  st = code(Gen({1, 2, 3}, 4));
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(st.message().find("queue is full"), std::string::npos) << st;
  h.RunUntilIdle();
  EXPECT_TRUE(a.status.ok());
  EXPECT_EQ(h.sched->Load().queued_requests, 0);
}

TEST(Scheduler, DeadlinesExpireQueuedAndRunning) {
  Harness h(64, /*num_blocks=*/4);
  Collector a, b;
  ASSERT_TRUE(h.sched->SubmitGenerate(Gen(RandomPrompt(30, 1), 30), absl::Now() + absl::Milliseconds(200),
                                      a.Callbacks()).ok());
  ASSERT_TRUE(h.sched->SubmitGenerate(Gen(RandomPrompt(10, 2), 5), absl::Now() + absl::Milliseconds(50),
                                      b.Callbacks()).ok());
  ASSERT_TRUE(h.sched->RunStep());
  EXPECT_EQ(h.sched->Load().queued_requests, 1);  // b waits for a's blocks
  absl::SleepFor(absl::Milliseconds(60));
  ASSERT_TRUE(h.sched->RunStep());
  ASSERT_TRUE(b.done);
  EXPECT_EQ(b.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(b.status.message().find("while queued"), std::string::npos) << b.status;
  absl::SleepFor(absl::Milliseconds(200));
  ASSERT_TRUE(h.sched->RunStep());
  ASSERT_TRUE(a.done);
  EXPECT_EQ(a.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(h.sched->Load().kv_blocks_used, 0);
  EXPECT_EQ(h.sched->Load().kv_blocks_reserved, 0);
}

TEST(Scheduler, StopTokenFinishesWithStop) {
  Harness h(64);
  const auto prompt = RandomPrompt(12, 21);
  const auto ref = ReferenceGenerate(TinyModel(), prompt, {}, {}, 6);
  Collector a;
  GenerateParams p = Gen(prompt, 6);
  p.stop_tokens = {ref[2]};
  ASSERT_TRUE(h.sched->SubmitGenerate(p, kNoDeadline, a.Callbacks()).ok());
  h.RunUntilIdle();
  ASSERT_TRUE(a.status.ok());
  // Ends at the first occurrence of the stop token, which is emitted.
  const size_t first = std::find(ref.begin(), ref.end(), ref[2]) - ref.begin();
  EXPECT_EQ(a.tokens, std::vector<int32_t>(ref.begin(), ref.begin() + first + 1));
  EXPECT_EQ(a.result.finish_reason, FinishReason::kStop);
}

TEST(Scheduler, RequestFillingTheWholeContextCompletes) {
  // The model accepts 40 positions; prompt 30 + max_tokens 10 fits exactly.
  Harness h(64, 256, 16, 256, /*max_pos=*/40);
  Collector a;
  ASSERT_TRUE(h.sched->SubmitGenerate(Gen(RandomPrompt(30, 3), 10), kNoDeadline, a.Callbacks()).ok());
  h.RunUntilIdle();
  ASSERT_TRUE(a.status.ok()) << a.status;
  EXPECT_EQ(a.tokens.size(), 10u);
  EXPECT_EQ(a.result.finish_reason, FinishReason::kLength);
}

TEST(Scheduler, ResumeContinuesTheSameStream) {
  Harness h(16);
  SamplingParams sp;
  sp.temperature = 1.0f;
  sp.seed = 99;
  const auto prompt = RandomPrompt(40, 5);
  Collector full, resumed;
  ASSERT_TRUE(h.sched->SubmitGenerate(Gen(prompt, 10, sp), kNoDeadline, full.Callbacks()).ok());
  h.RunUntilIdle();
  ASSERT_TRUE(full.status.ok());
  ASSERT_EQ(full.tokens.size(), 10u);
  GenerateParams p = Gen(prompt, 10, sp);
  p.resume_tokens.assign(full.tokens.begin(), full.tokens.begin() + 4);
  ASSERT_TRUE(h.sched->SubmitGenerate(p, kNoDeadline, resumed.Callbacks()).ok());
  h.RunUntilIdle();
  ASSERT_TRUE(resumed.status.ok());
  EXPECT_EQ(resumed.tokens, std::vector<int32_t>(full.tokens.begin() + 4, full.tokens.end()));
  EXPECT_EQ(resumed.result.completion_tokens, 10);
  EXPECT_EQ(resumed.result.prompt_tokens, 40);

  // A stream that had ended on a stop token (only the closing message was lost) is not continued.
  Collector after_stop;
  GenerateParams q = Gen(prompt, 10, sp);
  q.resume_tokens.assign(full.tokens.begin(), full.tokens.begin() + 3);
  q.stop_tokens = {full.tokens[2]};
  ASSERT_TRUE(h.sched->SubmitGenerate(q, kNoDeadline, after_stop.Callbacks()).ok());
  h.RunUntilIdle();
  ASSERT_TRUE(after_stop.status.ok());
  EXPECT_TRUE(after_stop.tokens.empty());
  EXPECT_EQ(after_stop.result.finish_reason, FinishReason::kStop);
  EXPECT_EQ(after_stop.result.completion_tokens, 3);
  EXPECT_EQ(h.sched->Load().kv_blocks_used, 0);
}

TEST(Scheduler, EncodeMatchesEngineLogitsAndPromptLogprobs) {
  Harness h(/*budget=*/16);  // the 50-token prompt is prefilled in 4 chunks
  const auto prompt = RandomPrompt(50, 6);
  Collector c;
  EncodeParams p;
  p.prompt = prompt;
  p.prompt_logprobs = true;
  ASSERT_TRUE(h.sched->SubmitEncode(p, kNoDeadline, c.Callbacks()).ok());
  h.RunUntilIdle();
  ASSERT_TRUE(c.status.ok()) << c.status;
  EXPECT_EQ(h.steps.size(), 4u);

  auto engine = MakeEngine(TinyModel(), 16, 64);
  const SeqId seq = engine->NewSequence();
  auto all = engine->Prefill(seq, prompt, true);
  ASSERT_TRUE(all.ok());
  const int64_t vocab = all->vocab;
  ASSERT_EQ(c.result.values.size(), static_cast<size_t>(vocab));
  for (int64_t v = 0; v < vocab; ++v) EXPECT_NEAR(c.result.values[v], all->row(49)[v], 1e-4);
  ASSERT_EQ(c.result.prompt_logprobs.size(), prompt.size() - 1);
  for (size_t i = 1; i < prompt.size(); ++i) {
    const float* row = all->row(static_cast<int64_t>(i) - 1);
    double m = row[0], s = 0;
    for (int64_t v = 0; v < vocab; ++v) m = std::max(m, static_cast<double>(row[v]));
    for (int64_t v = 0; v < vocab; ++v) s += std::exp(row[v] - m);
    EXPECT_NEAR(c.result.prompt_logprobs[i - 1], row[prompt[i]] - (m + std::log(s)), 1e-3) << i;
  }
  EXPECT_EQ(h.sched->Load().kv_blocks_used, 0);
}

TEST(Scheduler, EncodeHiddenStateTimesLmHeadGivesTheLogits) {
  Harness h(/*budget=*/16);
  const auto prompt = RandomPrompt(37, 8);
  Collector logits, hidden;
  EncodeParams p;
  p.prompt = prompt;
  ASSERT_TRUE(h.sched->SubmitEncode(p, kNoDeadline, logits.Callbacks()).ok());
  p.output = EncodeOutput::kHiddenState;
  ASSERT_TRUE(h.sched->SubmitEncode(p, kNoDeadline, hidden.Callbacks()).ok());
  h.RunUntilIdle();
  ASSERT_TRUE(logits.status.ok() && hidden.status.ok()) << hidden.status;
  const ModelConfig& c = TinyModel()->config();
  ASSERT_EQ(hidden.result.values.size(), static_cast<size_t>(c.hidden_size));
  const TensorView& w = TinyModel()->weights().lm_head;  // [V, d], f32 on disk
  ASSERT_EQ(w.dtype, DType::kF32);
  const float* wd = static_cast<const float*>(w.data);
  for (int64_t v = 0; v < c.vocab_size; ++v) {
    double dot = 0;
    for (int64_t j = 0; j < c.hidden_size; ++j) dot += static_cast<double>(hidden.result.values[j]) * wd[v * c.hidden_size + j];
    EXPECT_NEAR(dot, logits.result.values[v], 1e-3) << v;
  }
}

TEST(Scheduler, DrainRefusesNewWorkAndFinishesAccepted) {
  Harness h(64);
  Collector a;
  ASSERT_TRUE(h.sched->SubmitGenerate(Gen({1, 2, 3}, 5), kNoDeadline, a.Callbacks()).ok());
  h.sched->StartDrain();
  EXPECT_FALSE(h.sched->Load().admitting);
  absl::Status st = h.sched->SubmitGenerate(Gen({1, 2, 3}, 5), kNoDeadline, {}).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(st.message().find("draining"), std::string::npos);
  h.RunUntilIdle();
  EXPECT_TRUE(a.status.ok());
}

TEST(Scheduler, ThreadedRunAndStopFailsTheRest) {
  SchedulerOptions o;
  o.max_batch_tokens = 32;
  auto s = Scheduler::Create(MakeEngine(TinyModel(), 16, 256), o, nullptr);
  ASSERT_TRUE(s.ok());
  (*s)->Start();
  std::vector<std::promise<std::pair<absl::Status, std::vector<int32_t>>>> done(4);
  std::vector<std::vector<int32_t>> toks(4);
  for (int i = 0; i < 4; ++i) {
    RequestCallbacks cb;
    cb.on_token = [&toks, i](int32_t t, float) { toks[i].push_back(t); };
    cb.on_done = [&, i](const absl::Status& st, RequestResult) { done[i].set_value({st, toks[i]}); };
    ASSERT_TRUE((*s)->SubmitGenerate(Gen(RandomPrompt(10 + i, 30 + i), 6), kNoDeadline, cb).ok());
  }
  for (int i = 0; i < 4; ++i) {
    auto [st, t] = done[i].get_future().get();
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(t, ReferenceGenerate(TinyModel(), RandomPrompt(10 + i, 30 + i), {}, {}, 6));
  }
  EXPECT_TRUE((*s)->WaitIdle(absl::Seconds(5)));
  // A long request still running at Stop() gets UNAVAILABLE.
  std::promise<absl::Status> last;
  RequestCallbacks cb;
  cb.on_done = [&](const absl::Status& st, RequestResult) { last.set_value(st); };
  ASSERT_TRUE((*s)->SubmitGenerate(Gen(RandomPrompt(10, 1), 4000), kNoDeadline, cb).ok());
  absl::SleepFor(absl::Milliseconds(20));
  (*s)->Stop();
  EXPECT_EQ(last.get_future().get().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*s)->SubmitGenerate(Gen({1}, 1), kNoDeadline, {}).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace sqa::worker
