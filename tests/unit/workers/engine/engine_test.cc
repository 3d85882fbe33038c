// Engine on the CPU backend with random models: chunked prefill equals single-shot, mixed
// segments equal separate runs, decode equals prefill, capacity errors change nothing, Release
// frees blocks, bad input is rejected with INVALID_ARGUMENT.
#include "workers/engine/engine.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "workers/engine/model/mkmodel.h"

namespace sqa {
namespace {

namespace fs = std::filesystem;

std::string TempDir() {
  const char* t = std::getenv("TEST_TMPDIR");
  fs::path p = fs::path(t ? t : "/tmp") / ("sqa_engine_test_" + std::to_string(::getpid()));
  fs::create_directories(p);
  return p.string();
}

// Removes the models' directory when the test binary ends.
class TempDirCleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(TempDir(), ec);
  }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new TempDirCleanup);

// Models by (preset, layout), written once per test binary.
std::shared_ptr<const Model> GetModel(const std::string& preset, const std::string& layout, int64_t max_pos = 0) {
  static std::map<std::string, std::shared_ptr<const Model>> cache;
  const std::string key = preset + "-" + layout + "-" + std::to_string(max_pos);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  auto cfg = PresetConfig(preset, layout);
  EXPECT_TRUE(cfg.ok()) << cfg.status();
  MkModelOptions o;
  o.config = *cfg;
  if (max_pos > 0) o.config.max_position_embeddings = max_pos;
  o.seed = 17;
  o.threads = 1;
  const std::string dir = TempDir() + "/" + key;
  absl::Status st = WriteRandomModel(o, dir);
  EXPECT_TRUE(st.ok()) << st;
  auto m = Model::Load(dir);
  EXPECT_TRUE(m.ok()) << m.status();
  std::shared_ptr<const Model> sp = std::move(m).value();
  cache[key] = sp;
  return sp;
}

std::unique_ptr<Engine> MakeEngine(std::shared_ptr<const Model> model, EngineOptions o) {
  auto be = CreateBackend(BackendOptions{});
  EXPECT_TRUE(be.ok());
  auto e = Engine::Create(std::move(model), std::move(be).value(), o);
  EXPECT_TRUE(e.ok()) << e.status();
  return std::move(e).value();
}

std::vector<int32_t> Prompt(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return t;
}

// max |a - b| <= tol * max |b|
void ExpectRowsClose(const float* a, const float* b, size_t n, const std::string& what, double tol = 1e-5) {
  double mx = 0, err = 0;
  for (size_t i = 0; i < n; ++i) {
    ASSERT_FALSE(std::isnan(a[i])) << what;
    mx = std::max(mx, std::abs(static_cast<double>(b[i])));
    err = std::max(err, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  EXPECT_LE(err, tol * mx) << what << ": max abs err " << err << ", max |ref| " << mx;
}

int32_t Argmax(const float* row, int64_t n) { return static_cast<int32_t>(std::max_element(row, row + n) - row); }

const char* kLayouts[] = {"MHA", "GQA", "MQA", "SQA", "xSMQA", "rSQA"};

TEST(EngineTest, ChunkedPrefillEqualsSingleShot) {
  struct Case {
    const char* layout;
    int64_t prompt, block_size;
    std::vector<int64_t> chunks;
  };
  const Case cases[] = {
      {"MHA", 150, 16, {7, 64, 149}}, {"GQA", 150, 7, {7, 64, 149}},  {"MQA", 150, 16, {13, 100}},
      {"SQA", 150, 7, {7, 64, 149}},  {"xSMQA", 150, 16, {9, 64}},    {"rSQA", 150, 16, {7, 64, 149}},
      {"SQA", 40, 16, {1}},           {"rSQA", 40, 7, {1}},
  };
  for (const Case& c : cases) {
    auto model = GetModel("tiny", c.layout);
    const int64_t vocab = model->config().vocab_size;
    const auto prompt = Prompt(c.prompt, vocab, 1);
    EngineOptions o;
    o.block_size = c.block_size;
    o.num_kv_blocks = 200;
    auto e = MakeEngine(model, o);
    auto ref = e->Prefill(e->NewSequence(), prompt, true);
    ASSERT_TRUE(ref.ok()) << ref.status();
    ASSERT_EQ(ref->rows(), c.prompt);
    for (int64_t chunk : c.chunks) {
      EngineOptions oc = o;
      oc.max_chunk_tokens = chunk;
      auto ec = MakeEngine(model, oc);
      const SeqId s = ec->NewSequence();
      auto got = ec->Prefill(s, prompt, true);
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_EQ(got->data.size(), ref->data.size());
      ExpectRowsClose(got->data.data(), ref->data.data(), ref->data.size(),
                      std::string(c.layout) + " bs=" + std::to_string(c.block_size) + " chunk=" + std::to_string(chunk));
      EXPECT_EQ(ec->SequenceLength(s), c.prompt);
      // Last-row-only prefill returns exactly the last row.
      auto last = ec->Prefill(ec->NewSequence(), prompt, false);
      ASSERT_TRUE(last.ok());
      ASSERT_EQ(last->rows(), 1);
      ExpectRowsClose(last->row(0), ref->row(c.prompt - 1), static_cast<size_t>(vocab), "last row");
    }
  }
}

TEST(EngineTest, DecodeStepsEqualPrefillOfTheWholeSequence) {
  for (const char* layout : kLayouts) {
    auto model = GetModel("tiny", layout);
    const int64_t vocab = model->config().vocab_size;
    EngineOptions o;
    o.block_size = 16;
    o.num_kv_blocks = 64;
    auto e = MakeEngine(model, o);
    auto prompt = Prompt(37, vocab, 2);
    const SeqId s = e->NewSequence();
    auto lg = e->Prefill(s, prompt, false);
    ASSERT_TRUE(lg.ok());
    std::vector<int32_t> seq = prompt;
    std::vector<std::vector<float>> decode_rows;
    int32_t tok = Argmax(lg->row(0), vocab);
    for (int step = 0; step < 12; ++step) {
      seq.push_back(tok);
      Engine::Segment seg{s, absl::MakeConstSpan(&seq.back(), 1), false};
      auto d = e->Forward({seg});
      ASSERT_TRUE(d.ok()) << d.status();
      decode_rows.emplace_back(d->row(0), d->row(0) + vocab);
      tok = Argmax(d->row(0), vocab);
    }
    auto full = e->Prefill(e->NewSequence(), seq, true);
    ASSERT_TRUE(full.ok());
    for (size_t t = 0; t < decode_rows.size(); ++t) {
      ExpectRowsClose(decode_rows[t].data(), full->row(static_cast<int64_t>(prompt.size() + t)),
                      static_cast<size_t>(vocab), std::string(layout) + " decode step " + std::to_string(t));
    }
  }
}

// One Forward over a decode token of A, a chunk of B, a decode of new sequence C and the first
// chunk of new sequence D equals running each of them alone.
TEST(EngineTest, MixedSegmentsEqualSeparateRuns) {
  for (const char* layout : {"SQA", "rSQA", "MHA"}) {
    auto model = GetModel("tiny", layout);
    const int64_t vocab = model->config().vocab_size;
    EngineOptions o;
    o.block_size = 8;
    o.num_kv_blocks = 100;
    const auto pa = Prompt(21, vocab, 3), pb = Prompt(40, vocab, 4), nb = Prompt(13, vocab, 5),
               pd = Prompt(30, vocab, 6);
    const std::vector<int32_t> na = {5}, pc = {9};

    auto e1 = MakeEngine(model, o);
    const SeqId a = e1->NewSequence(), b = e1->NewSequence(), c = e1->NewSequence(), d = e1->NewSequence();
    ASSERT_TRUE(e1->Prefill(a, pa, false).ok());
    ASSERT_TRUE(e1->Prefill(b, pb, false).ok());
    std::vector<Engine::Segment> segs = {{b, nb, true}, {a, na, false}, {d, pd, false}, {c, pc, true}};
    auto mixed = e1->Forward(segs);
    ASSERT_TRUE(mixed.ok()) << mixed.status();
    ASSERT_EQ(mixed->row_begin, (std::vector<int64_t>{0, 13, 14, 15}));
    ASSERT_EQ(mixed->rows(), 16);
    EXPECT_EQ(e1->SequenceLength(a), 22);
    EXPECT_EQ(e1->SequenceLength(b), 53);
    EXPECT_EQ(e1->SequenceLength(c), 1);
    EXPECT_EQ(e1->SequenceLength(d), 30);

    auto e2 = MakeEngine(model, o);
    const SeqId a2 = e2->NewSequence(), b2 = e2->NewSequence(), c2 = e2->NewSequence(), d2 = e2->NewSequence();
    ASSERT_TRUE(e2->Prefill(a2, pa, false).ok());
    ASSERT_TRUE(e2->Prefill(b2, pb, false).ok());
    auto rb = e2->Forward({{b2, nb, true}});
    auto ra = e2->Forward({{a2, na, false}});
    auto rd = e2->Forward({{d2, pd, false}});
    auto rc = e2->Forward({{c2, pc, true}});
    ASSERT_TRUE(ra.ok() && rb.ok() && rc.ok() && rd.ok());
    const size_t V = static_cast<size_t>(vocab);
    ExpectRowsClose(mixed->row(0), rb->row(0), 13 * V, std::string(layout) + " segment B");
    ExpectRowsClose(mixed->row(13), ra->row(0), V, std::string(layout) + " segment A");
    ExpectRowsClose(mixed->row(14), rd->row(0), V, std::string(layout) + " segment D");
    ExpectRowsClose(mixed->row(15), rc->row(0), V, std::string(layout) + " segment C");
  }
}

TEST(EngineTest, ResourceExhaustedChangesNothing) {
  auto model = GetModel("tiny", "SQA");
  const int64_t vocab = model->config().vocab_size;
  EngineOptions o;
  o.block_size = 16;
  o.num_kv_blocks = 6;
  auto e = MakeEngine(model, o);
  const SeqId a = e->NewSequence(), b = e->NewSequence();
  const auto pa = Prompt(40, vocab, 7);  // 3 blocks
  ASSERT_TRUE(e->Prefill(a, pa, false).ok());
  EXPECT_EQ(e->kv_pool().num_free(), 3);
  // b needs 3 blocks (40 tokens) and a needs 1 more (40 -> 49): 4 > 3 free.
  const auto pb = Prompt(40, vocab, 8);
  const std::vector<int32_t> more(9, 3);
  auto r = e->Forward({{a, more, false}, {b, pb, false}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("need 4 blocks, 3 free of 6"), std::string::npos) << r.status();
  EXPECT_EQ(e->kv_pool().num_free(), 3);
  EXPECT_EQ(e->SequenceLength(a), 40);
  EXPECT_EQ(e->SequenceLength(b), 0);
  auto big = e->Prefill(b, Prompt(100, vocab, 9), false);
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(e->kv_pool().num_free(), 3);
  EXPECT_EQ(e->SequenceLength(b), 0);
  // The engine continues exactly as if the failed calls never happened.
  auto after = e->Forward({{a, more, true}});
  ASSERT_TRUE(after.ok());
  auto e2 = MakeEngine(model, o);
  const SeqId a2 = e2->NewSequence();
  ASSERT_TRUE(e2->Prefill(a2, pa, false).ok());
  auto clean = e2->Forward({{a2, more, true}});
  ASSERT_TRUE(clean.ok());
  ExpectRowsClose(after->data.data(), clean->data.data(), clean->data.size(), "after RESOURCE_EXHAUSTED", 0.0);
}

TEST(EngineTest, ReleaseFreesBlocks) {
  auto model = GetModel("tiny", "GQA");
  EngineOptions o;
  o.block_size = 16;
  o.num_kv_blocks = 10;
  auto e = MakeEngine(model, o);
  const SeqId a = e->NewSequence(), b = e->NewSequence();
  ASSERT_TRUE(e->Prefill(a, Prompt(33, 256, 1), false).ok());
  ASSERT_TRUE(e->Prefill(b, Prompt(16, 256, 2), false).ok());
  EXPECT_EQ(e->kv_pool().num_used(), 4);
  e->Release(a);
  EXPECT_EQ(e->kv_pool().num_used(), 1);
  EXPECT_EQ(e->SequenceLength(a), 0);
  e->Release(a);  // unknown ids are ignored
  e->Release(12345);
  EXPECT_EQ(e->kv_pool().num_used(), 1);
  // The freed blocks are usable: 9 free blocks hold 144 tokens.
  const SeqId c = e->NewSequence();
  EXPECT_TRUE(e->Prefill(c, Prompt(144, 256, 3), false).ok());
  EXPECT_EQ(e->kv_pool().num_free(), 0);
  e->Release(b);
  e->Release(c);
  EXPECT_EQ(e->kv_pool().num_free(), 10);
  auto f = e->Forward({{a, std::vector<int32_t>{1}, false}});
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
}

TEST(EngineTest, RejectsBadInput) {
  auto model = GetModel("tiny", "MHA", /*max_pos=*/64);
  EngineOptions o;
  o.block_size = 16;
  o.num_kv_blocks = 20;
  auto e = MakeEngine(model, o);
  const SeqId a = e->NewSequence();
  const std::vector<int32_t> bad = {1, 256, 2};
  auto r = e->Forward({{a, bad, false}});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("256"), std::string::npos);
  EXPECT_EQ(e->Prefill(a, bad, false).status().code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> neg = {-1};
  EXPECT_EQ(e->Forward({{a, neg, false}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(e->Forward({{a, {}, false}}).status().code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> one = {1};
  EXPECT_EQ(e->Forward({{a, one, false}, {a, one, false}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(e->Forward({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(e->Prefill(a, {}, false).status().code(), absl::StatusCode::kInvalidArgument);
  auto too_long = e->Prefill(a, Prompt(65, 256, 1), false);
  EXPECT_EQ(too_long.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_long.status().message().find("64"), std::string::npos);
  EXPECT_EQ(e->SequenceLength(a), 0);
  EXPECT_EQ(e->kv_pool().num_used(), 0);
  EXPECT_TRUE(e->Prefill(a, Prompt(64, 256, 1), false).ok());
  EXPECT_EQ(e->Forward({{a, one, false}}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EngineTest, DerivesBlockCountFromBytes) {
  auto model = GetModel("tiny", "SQA");  // 2 layers, Hkv=2, head_dim=8
  const ModelConfig& c = model->config();
  EngineOptions o;
  o.block_size = 16;
  const int64_t per_block = 2 * 16 * c.num_key_value_heads * c.head_dim * 4 * c.num_hidden_layers;
  o.kv_cache_bytes = per_block * 37 + per_block / 2;
  auto e = MakeEngine(model, o);
  EXPECT_EQ(e->kv_pool().num_blocks(), 37);
  o.kv_cache_bytes = per_block - 1;
  auto be = CreateBackend(BackendOptions{});
  auto bad = Engine::Create(model, std::move(be).value(), o);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EngineTest, CudaRequestInCpuBuildIsAClearError) {
#ifndef SQA_HAVE_CUDA
  BackendOptions b;
  b.device = DeviceKind::kCuda;
  auto r = CreateBackend(b);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("SQA_ENABLE_CUDA"), std::string::npos);
#endif
  EXPECT_EQ(*ParseDeviceKind("cpu"), DeviceKind::kCpu);
  EXPECT_EQ(*ParseDeviceKind("auto"), DeviceKind::kAuto);
  EXPECT_FALSE(ParseDeviceKind("tpu").ok());
  BackendOptions a;
  a.device = DeviceKind::kAuto;
  EXPECT_TRUE(CreateBackend(a).ok());
}

}  // namespace
}  // namespace sqa
