#include "tests/unit/workers/server/test_model.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <random>

#include "workers/engine/model/mkmodel.h"

namespace sqa::worker::testing {

std::shared_ptr<const Model> TinyModel(int64_t max_pos) {
  static std::map<int64_t, std::shared_ptr<const Model>> cache;
  auto it = cache.find(max_pos);
  if (it != cache.end()) return it->second;
  auto cfg = PresetConfig("tiny", "SQA");
  EXPECT_TRUE(cfg.ok()) << cfg.status();
  MkModelOptions o;
  o.config = *cfg;
  o.config.max_position_embeddings = max_pos;
  o.seed = 5;
  o.threads = 1;
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) /
                                    ("sqa_worker_test_" + std::to_string(::getpid()) + "_" + std::to_string(max_pos));
  absl::Status st = WriteRandomModel(o, dir.string());
  EXPECT_TRUE(st.ok()) << st;
  auto m = Model::Load(dir.string());
  EXPECT_TRUE(m.ok()) << m.status();
  std::shared_ptr<const Model> sp = std::move(m).value();
  cache[max_pos] = sp;
  return sp;
}

std::unique_ptr<Engine> MakeEngine(std::shared_ptr<const Model> model, int64_t block_size, int64_t num_blocks) {
  BackendOptions bo;
  bo.num_threads = 1;
  auto be = CreateBackend(bo);
  EXPECT_TRUE(be.ok()) << be.status();
  EngineOptions eo;
  eo.block_size = block_size;
  eo.num_kv_blocks = num_blocks;
  auto e = Engine::Create(std::move(model), std::move(be).value(), eo);
  EXPECT_TRUE(e.ok()) << e.status();
  return std::move(e).value();
}

std::vector<int32_t> ReferenceGenerate(std::shared_ptr<const Model> model, const std::vector<int32_t>& prompt,
                                       const std::vector<int32_t>& resume, const SamplingParams& sampling,
                                       int max_tokens, const std::vector<int32_t>& stop) {
  auto engine = MakeEngine(model, 16, 1024);
  std::vector<int32_t> feed = prompt;
  feed.insert(feed.end(), resume.begin(), resume.end());
  const SeqId seq = engine->NewSequence();
  auto logits = engine->Prefill(seq, feed, false);
  EXPECT_TRUE(logits.ok()) << logits.status();
  std::vector<int32_t> out;
  uint64_t step = resume.size();
  std::vector<float> row(logits->row(logits->rows() - 1), logits->row(logits->rows() - 1) + logits->vocab);
  while (true) {
    const SampledToken t = SampleToken(row.data(), static_cast<int64_t>(row.size()), sampling, step++);
    out.push_back(t.token);
    if (static_cast<int>(resume.size() + out.size()) >= max_tokens) break;
    if (std::find(stop.begin(), stop.end(), t.token) != stop.end()) break;
    Engine::Segment s{seq, absl::MakeConstSpan(&t.token, 1), false};
    auto next = engine->Forward(absl::MakeConstSpan(&s, 1));
    EXPECT_TRUE(next.ok()) << next.status();
    row.assign(next->row(0), next->row(0) + next->vocab);
  }
  return out;
}

std::vector<int32_t> RandomPrompt(int n, int seed, int vocab) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(0, vocab - 1);
  std::vector<int32_t> p(n);
  for (auto& t : p) t = d(rng);
  return p;
}

}  // namespace sqa::worker::testing
