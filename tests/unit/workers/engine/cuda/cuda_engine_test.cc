// The whole engine on CUDA against the whole engine on the CPU backend, for every attention
// layout, on small random models (bf16 on disk, so both backends read identical weights):
// prefill logits of every position (one chunk on CPU; several chunk sizes on CUDA), then greedy
// decode steps over a batch of sequences of mixed lengths, and a forward pass that mixes a
// prefill chunk with decode tokens. Tolerance: bf16 activations through every layer, so
// max |diff| <= 2e-2 * max |logit| per row set. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "tests/unit/workers/engine/cuda/cuda_model_fixture.h"
#include "workers/engine/backend.h"
#include "workers/engine/cpu/cpu_backend.h"
#include "workers/engine/cuda/cuda_backend.h"
#include "workers/engine/engine.h"
#include "workers/engine/model/model.h"

namespace sqa {
namespace {

constexpr double kTol = 2e-2;

using testing_cuda::ModelCase;
using testing_cuda::ModelCaseName;

class CudaEngineTest : public testing_cuda::CudaModelTest {
 protected:
  std::unique_ptr<Engine> MakeEngine(DeviceKind kind, int64_t chunk, int64_t block_size) {
    BackendOptions bo;
    bo.device = kind;
    auto be = CreateBackend(bo);
    EXPECT_TRUE(be.ok()) << be.status();
    EngineOptions eo;
    eo.block_size = block_size;
    eo.num_kv_blocks = 256;
    eo.max_chunk_tokens = chunk;
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

  static void ExpectLogitsClose(const Logits& got, const Logits& want, const std::string& what) {
    ASSERT_EQ(got.vocab, want.vocab) << what;
    ASSERT_EQ(got.data.size(), want.data.size()) << what;
    double max_ref = 0, max_err = 0;
    size_t worst = 0;
    for (size_t i = 0; i < want.data.size(); ++i) {
      ASSERT_TRUE(std::isfinite(got.data[i])) << what << ": logit " << i << " is not finite";
      max_ref = std::max(max_ref, std::fabs(static_cast<double>(want.data[i])));
      const double e = std::fabs(static_cast<double>(got.data[i]) - want.data[i]);
      if (e > max_err) max_err = e, worst = i;
    }
    EXPECT_LE(max_err, kTol * max_ref) << what << ": worst logit " << worst << " got " << got.data[worst] << " want "
                                       << want.data[worst] << " (max |logit| " << max_ref << ")";
  }

  static int32_t Argmax(const float* row, int64_t vocab) {
    return static_cast<int32_t>(std::max_element(row, row + vocab) - row);
  }

};

TEST_P(CudaEngineTest, PrefillLogitsMatchCpuForAnyChunking) {
  const std::vector<int32_t> prompt = Tokens(333);
  auto cpu = MakeEngine(DeviceKind::kCpu, 4096, 64);
  const SeqId cs = cpu->NewSequence();
  auto want = cpu->Prefill(cs, prompt, /*all_logits=*/true);
  ASSERT_TRUE(want.ok()) << want.status();
  for (int64_t chunk : {4096, 100, 64}) {
    for (int64_t block : {64, 16}) {
      auto gpu = MakeEngine(DeviceKind::kCuda, chunk, block);
      const SeqId gs = gpu->NewSequence();
      auto got = gpu->Prefill(gs, prompt, true);
      ASSERT_TRUE(got.ok()) << got.status();
      ExpectLogitsClose(*got, *want, "prefill chunk " + std::to_string(chunk) + " block " + std::to_string(block));
    }
  }
}

// Batched greedy decode over sequences of different prompt lengths; the CPU's argmax feeds both
// engines so they stay on the same tokens. Even steps decode the first three (the skinny GEMM's
// narrow form), odd steps all 17 (q/k/v through its wide form, the rest through cuBLASLt). The last step mixes a new prompt's chunk into
// the same forward pass as the decode tokens of the first three.
TEST_P(CudaEngineTest, BatchedDecodeAndMixedStepsMatchCpu) {
  auto cpu = MakeEngine(DeviceKind::kCpu, 4096, 64);
  auto gpu = MakeEngine(DeviceKind::kCuda, 128, 64);
  const std::vector<int64_t> lens = {5, 200, 77, 9, 31, 12, 64, 3, 18, 40, 7, 22, 15, 50, 11, 26, 33};
  std::vector<SeqId> cs, gs;
  std::vector<int32_t> next;
  for (int64_t len : lens) {
    const std::vector<int32_t> p = Tokens(len);
    cs.push_back(cpu->NewSequence());
    gs.push_back(gpu->NewSequence());
    auto w = cpu->Prefill(cs.back(), p, false);
    auto g = gpu->Prefill(gs.back(), p, false);
    ASSERT_TRUE(w.ok() && g.ok());
    ExpectLogitsClose(*g, *w, "prompt of " + std::to_string(len));
    next.push_back(Argmax(w->row(0), w->vocab));
  }
  for (int step = 0; step < 6; ++step) {
    std::vector<Engine::Segment> cseg, gseg;
    const size_t batch = step % 2 == 0 ? 3 : cs.size();
    for (size_t i = 0; i < batch; ++i) {
      cseg.push_back({cs[i], absl::MakeConstSpan(&next[i], 1), false});
      gseg.push_back({gs[i], absl::MakeConstSpan(&next[i], 1), false});
    }
    auto w = cpu->Forward(cseg);
    auto g = gpu->Forward(gseg);
    ASSERT_TRUE(w.ok() && g.ok());
    ExpectLogitsClose(*g, *w, "decode step " + std::to_string(step) + " batch " + std::to_string(batch));
    for (size_t i = 0; i < batch; ++i) next[i] = Argmax(w->row(static_cast<int64_t>(i)), w->vocab);
  }
  // Mixed pass: a fresh 90-token prompt (all logits) together with the three decode tokens.
  const std::vector<int32_t> p = Tokens(90);
  const SeqId cn = cpu->NewSequence(), gn = gpu->NewSequence();
  std::vector<Engine::Segment> cseg = {{cn, p, true}}, gseg = {{gn, p, true}};
  for (size_t i = 0; i < 3; ++i) {
    cseg.push_back({cs[i], absl::MakeConstSpan(&next[i], 1), false});
    gseg.push_back({gs[i], absl::MakeConstSpan(&next[i], 1), false});
  }
  auto w = cpu->Forward(cseg);
  auto g = gpu->Forward(gseg);
  ASSERT_TRUE(w.ok() && g.ok());
  EXPECT_EQ(g->row_begin, w->row_begin);
  ExpectLogitsClose(*g, *w, "mixed prefill + decode");
  for (size_t i = 0; i < cs.size(); ++i) EXPECT_EQ(gpu->SequenceLength(gs[i]), cpu->SequenceLength(cs[i]));
}

INSTANTIATE_TEST_SUITE_P(Layouts, CudaEngineTest,
                         ::testing::Values(ModelCase{"MHA", 64}, ModelCase{"GQA", 64}, ModelCase{"MQA", 64},
                                           ModelCase{"SQA", 64}, ModelCase{"sSQA", 64}, ModelCase{"xSQA", 64},
                                           ModelCase{"xSMQA", 64}, ModelCase{"rSQA", 64}, ModelCase{"MHA", 128},
                                           ModelCase{"SQA", 128}, ModelCase{"xSQA", 128}),
                         ModelCaseName);

}  // namespace
}  // namespace sqa
