// sqa.v1.Worker served in-process on port 0 (GrpcServer + WorkerService + Scheduler thread), called
// through the generated stub as the router would.
#include "workers/server/worker_service.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include <grpcpp/grpcpp.h>

#include "services/metrics.h"
#include "services/server.h"
#include "workers/server/worker_metrics.h"
#include "tests/unit/services/test_util.h"
#include "tests/unit/workers/server/test_model.h"

namespace sqa::worker {
namespace {

using testing::MakeEngine;
using testing::RandomPrompt;
using testing::ReferenceGenerate;
using testing::TinyModel;

class WorkerServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SchedulerOptions so;
    so.max_batch_tokens = 64;
    registry_ = std::make_shared<prometheus::Registry>();
    metrics_ = std::make_unique<WorkerMetrics>(*registry_);
    auto ms = MetricsServer::Start(MetricsOptions(), registry_);
    ASSERT_TRUE(ms.ok()) << ms.status();
    metrics_server_ = std::move(ms).value();
    auto s = Scheduler::Create(MakeEngine(TinyModel(), 16, 512), so, metrics_.get());
    ASSERT_TRUE(s.ok()) << s.status();
    scheduler_ = std::move(s).value();
    scheduler_->Start();
    WorkerServiceOptions wo;
    wo.group = "g0";
    wo.on_drain = [this] { server_->SetServing(false); };
    service_ = std::make_unique<WorkerService>(scheduler_.get(), wo);
    auto srv = GrpcServer::Start(ServerOptions(), {{service_.get(), sqa::v1::Worker::service_full_name()}});
    ASSERT_TRUE(srv.ok()) << srv.status();
    server_ = std::move(srv).value();
    server_->SetServing(true);
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    stub_ = sqa::v1::Worker::NewStub(channel_);
  }
  void TearDown() override {
    server_->Shutdown(absl::Seconds(1));
    scheduler_->Stop();
  }

  struct StreamResult {
    std::vector<int32_t> tokens;
    std::vector<float> logprobs;
    std::vector<sqa::v1::GenerateResponse> messages;
    grpc::Status status;
  };
  StreamResult Generate(const sqa::v1::GenerateRequest& req, int deadline_ms = 30000) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
    auto reader = stub_->Generate(&ctx, req);
    StreamResult r;
    sqa::v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
      r.tokens.insert(r.tokens.end(), msg.tokens().begin(), msg.tokens().end());
      r.logprobs.insert(r.logprobs.end(), msg.logprobs().begin(), msg.logprobs().end());
      r.messages.push_back(msg);
    }
    r.status = reader->Finish();
    return r;
  }
  sqa::v1::LoadReport Load() {
    grpc::ClientContext ctx;
    sqa::v1::LoadReport rep;
    EXPECT_TRUE(stub_->GetLoad(&ctx, sqa::v1::GetLoadRequest(), &rep).ok());
    return rep;
  }
  // Polls until the worker holds no KV blocks and runs nothing.
  bool WaitForEmpty() {
    for (int i = 0; i < 500; ++i) {
      const auto l = Load();
      if (l.kv_blocks_used() == 0 && l.running_requests() == 0 && l.queued_requests() == 0) return true;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }

  // Value of one sample line ("name{labels} value") of the /metrics text, or -1 when absent.
  double Metric(const std::string& series) {
    auto body = sqa::testing::HttpGet("127.0.0.1", metrics_server_->port(), "/metrics");
    EXPECT_TRUE(body.ok()) << body.status();
    const std::string key = series + " ";
    const size_t at = body->find("\n" + key);
    if (at == std::string::npos) return -1;
    return std::stod(body->substr(at + 1 + key.size()));
  }

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<WorkerMetrics> metrics_;
  std::unique_ptr<MetricsServer> metrics_server_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<WorkerService> service_;
  std::unique_ptr<GrpcServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<sqa::v1::Worker::Stub> stub_;
};

sqa::v1::GenerateRequest Req(const std::vector<int32_t>& prompt, int max_tokens) {
  sqa::v1::GenerateRequest r;
  r.mutable_prompt_tokens()->Assign(prompt.begin(), prompt.end());
  r.set_max_tokens(max_tokens);
  return r;
}

TEST_F(WorkerServiceTest, GenerateStreamsTheEngineTokens) {
  const auto prompt = RandomPrompt(150, 3);
  auto req = Req(prompt, 20);
  req.set_return_logprobs(true);
  req.set_request_id("req-1");
  req.mutable_sampling()->set_temperature(0.7f);
  req.mutable_sampling()->set_seed(77);  // top_p 0 = unset
  const StreamResult r = Generate(req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  SamplingParams sp;
  sp.temperature = 0.7f;
  sp.seed = 77;
  EXPECT_EQ(r.tokens, ReferenceGenerate(TinyModel(), prompt, {}, sp, 20));
  EXPECT_EQ(r.logprobs.size(), r.tokens.size());
  ASSERT_FALSE(r.messages.empty());
  for (size_t i = 0; i + 1 < r.messages.size(); ++i) {
    EXPECT_EQ(r.messages[i].finish_reason(), sqa::v1::FINISH_REASON_UNSPECIFIED);
    EXPECT_FALSE(r.messages[i].has_usage());
  }
  const auto& last = r.messages.back();
  EXPECT_EQ(last.finish_reason(), sqa::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(last.usage().prompt_tokens(), 150);
  EXPECT_EQ(last.usage().completion_tokens(), 20);
  EXPECT_GT(last.usage().time_to_first_token_seconds(), 0);
  EXPECT_GE(last.usage().total_seconds(), last.usage().time_to_first_token_seconds());
  for (const auto& m : r.messages) EXPECT_EQ(m.request_id(), "req-1");
}

TEST_F(WorkerServiceTest, BadRequestsGetClearErrorsAndTheWorkerKeepsServing) {
  auto expect = [&](sqa::v1::GenerateRequest req, grpc::StatusCode code, const std::string& needle) {
    const StreamResult r = Generate(req);
    EXPECT_EQ(r.status.error_code(), code) << r.status.error_message();
    EXPECT_NE(r.status.error_message().find(needle), std::string::npos) << r.status.error_message();
    EXPECT_TRUE(r.tokens.empty());
  };
  expect(Req({}, 5), grpc::StatusCode::INVALID_ARGUMENT, "empty");
  expect(Req({1, 999}, 5), grpc::StatusCode::INVALID_ARGUMENT, "vocabulary");
  expect(Req({1}, 0), grpc::StatusCode::INVALID_ARGUMENT, "max_tokens");
  expect(Req({1}, 5000), grpc::StatusCode::INVALID_ARGUMENT, "context");
  auto t = Req({1}, 5);
  t.mutable_sampling()->set_temperature(-1);
  expect(t, grpc::StatusCode::INVALID_ARGUMENT, "temperature");
  t = Req({1}, 5);
  t.mutable_sampling()->set_top_p(1.5f);
  expect(t, grpc::StatusCode::INVALID_ARGUMENT, "top_p");
  // 512 blocks of 16 = 8192 tokens, but the context (4096) is checked first; a prompt that fits
  // the context and the KV cache is served.
  const StreamResult ok = Generate(Req({1, 2, 3}, 3));
  EXPECT_TRUE(ok.status.ok());
  EXPECT_EQ(ok.tokens.size(), 3u);
}

TEST_F(WorkerServiceTest, EncodeReturnsLogitsAndPromptLogprobs) {
  sqa::v1::EncodeRequest req;
  const auto prompt = RandomPrompt(70, 4);
  req.mutable_prompt_tokens()->Assign(prompt.begin(), prompt.end());
  req.set_return_prompt_logprobs(true);
  grpc::ClientContext ctx;
  sqa::v1::EncodeResponse resp;
  ASSERT_TRUE(stub_->Encode(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.values_size(), 256);
  EXPECT_EQ(resp.prompt_logprobs_size(), 69);
  EXPECT_EQ(resp.usage().prompt_tokens(), 70);
  for (float lp : resp.prompt_logprobs()) EXPECT_LE(lp, 0.f);
  req.set_output(sqa::v1::EncodeRequest::OUTPUT_HIDDEN_STATE);
  req.set_return_prompt_logprobs(false);
  grpc::ClientContext ctx2;
  ASSERT_TRUE(stub_->Encode(&ctx2, req, &resp).ok());
  EXPECT_EQ(resp.values_size(), 64);  // hidden_size of the tiny preset
  EXPECT_EQ(resp.prompt_logprobs_size(), 0);
}

TEST_F(WorkerServiceTest, ModelInfoAndLoad) {
  grpc::ClientContext ctx;
  sqa::v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&ctx, sqa::v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.layout(), "SQA");
  EXPECT_EQ(info.num_attention_heads(), 8);
  EXPECT_EQ(info.num_query_heads(), 4);
  EXPECT_EQ(info.vocab_size(), 256);
  EXPECT_EQ(info.device(), "cpu");
  EXPECT_EQ(info.dtype(), "float32");
  EXPECT_EQ(info.max_position_embeddings(), 4096);
  const auto l = Load();
  EXPECT_EQ(l.kv_blocks_total(), 512);
  EXPECT_EQ(l.kv_block_size(), 16);
  EXPECT_TRUE(l.admitting());
  EXPECT_EQ(l.max_context_tokens(), 4096);
  EXPECT_EQ(l.group(), "g0");
}

TEST_F(WorkerServiceTest, ClientCancelFreesKvBlocks) {
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, Req(RandomPrompt(200, 5), 3800));
  sqa::v1::GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  EXPECT_GT(Load().kv_blocks_used(), 0);
  ctx.TryCancel();
  while (reader->Read(&msg)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitForEmpty());
}

TEST_F(WorkerServiceTest, ExpiredDeadlineIsDeadlineExceededAndFreesBlocks) {
  const StreamResult r = Generate(Req(RandomPrompt(1000, 6), 3000), /*deadline_ms=*/100);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_LT(r.tokens.size(), 3000u);
  EXPECT_TRUE(WaitForEmpty());
}

TEST_F(WorkerServiceTest, DrainTurnsHealthNotServingAndRefusesNewWork) {
  EXPECT_EQ(*sqa::testing::HealthCheck(channel_, "sqa.v1.Worker"), 1);
  grpc::ClientContext ctx;
  sqa::v1::DrainResponse resp;
  ASSERT_TRUE(stub_->Drain(&ctx, sqa::v1::DrainRequest(), &resp).ok());
  EXPECT_EQ(*sqa::testing::HealthCheck(channel_, "sqa.v1.Worker"), 2);
  EXPECT_FALSE(Load().admitting());
  const StreamResult r = Generate(Req({1, 2}, 2));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(r.status.error_message().find("draining"), std::string::npos);
}

TEST_F(WorkerServiceTest, SlowReaderGetsCoalescedTokensAndNothingIsLost) {
  // A client with a tiny HTTP/2 window that does not read for a while: the server's writes stall,
  // its per-stream queue fills, and further tokens are appended to the last queued message.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
  auto slow = sqa::v1::Worker::NewStub(
      grpc::CreateCustomChannel(server_->address(), grpc::InsecureChannelCredentials(), args));
  const auto prompt = RandomPrompt(8, 9);
  grpc::ClientContext ctx;
  auto reader = slow->Generate(&ctx, Req(prompt, 2000));
  absl::SleepFor(absl::Milliseconds(1500));  // the worker generates everything meanwhile
  std::vector<int32_t> tokens;
  size_t messages = 0, largest = 0;
  sqa::v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    tokens.insert(tokens.end(), msg.tokens().begin(), msg.tokens().end());
    ++messages;
    largest = std::max<size_t>(largest, msg.tokens_size());
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(tokens, ReferenceGenerate(TinyModel(), prompt, {}, {}, 2000));
  EXPECT_LT(messages, 2000u);  // coalesced
  EXPECT_GT(largest, 1u);
}

TEST_F(WorkerServiceTest, MetricsMoveAsRequestsCompleteAndPassPromtool) {
  EXPECT_EQ(Metric("sqa_worker_generation_tokens_total"), 0);
  EXPECT_EQ(Metric("sqa_worker_kv_blocks_capacity"), 512);
  ASSERT_TRUE(Generate(Req(RandomPrompt(40, 1), 7)).status.ok());
  EXPECT_EQ(Metric("sqa_worker_generation_tokens_total"), 7);
  EXPECT_EQ(Metric("sqa_worker_prompt_tokens_total"), 40);
  EXPECT_EQ(Metric("sqa_worker_requests_total{kind=\"generate\",outcome=\"ok\"}"), 1);
  EXPECT_GT(Metric("sqa_worker_step_duration_seconds_count"), 0);
  EXPECT_GT(Metric("sqa_worker_prefill_tokens_per_second"), 0);
  EXPECT_EQ(Metric("sqa_worker_kv_blocks_used"), 0);
  EXPECT_EQ(Metric("sqa_worker_running_requests"), 0);
  Generate(Req({}, 7));
  EXPECT_EQ(Metric("sqa_worker_requests_total{kind=\"generate\",outcome=\"invalid_argument\"}"), 1);

  // A cancelled stream: KV in use while it runs, released after (visible in the metrics).
  {
    grpc::ClientContext ctx;
    auto reader = stub_->Generate(&ctx, Req(RandomPrompt(300, 2), 3000));
    sqa::v1::GenerateResponse msg;
    ASSERT_TRUE(reader->Read(&msg));
    EXPECT_GT(Metric("sqa_worker_kv_blocks_used"), 0);
    EXPECT_EQ(Metric("sqa_worker_running_requests"), 1);
    ctx.TryCancel();
    while (reader->Read(&msg)) {
    }
    reader->Finish();
  }
  ASSERT_TRUE(WaitForEmpty());
  EXPECT_EQ(Metric("sqa_worker_kv_blocks_used"), 0);
  EXPECT_EQ(Metric("sqa_worker_requests_total{kind=\"generate\",outcome=\"cancelled\"}"), 1);

  if (std::system("command -v promtool >/dev/null 2>&1") != 0) GTEST_SKIP() << "promtool not installed";
  auto body = sqa::testing::HttpGet("127.0.0.1", metrics_server_->port(), "/metrics");
  ASSERT_TRUE(body.ok());
  const std::string path = ::testing::TempDir() + "/worker_metrics_" + std::to_string(::getpid()) + ".txt";
  FILE* f = std::fopen(path.c_str(), "w");
  std::fwrite(body->data(), 1, body->size(), f);
  std::fclose(f);
  const std::string cmd = "promtool check metrics < " + path + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[256];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  const int rc = pclose(p);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out, "") << out;
  std::remove(path.c_str());
}

}  // namespace
}  // namespace sqa::worker
