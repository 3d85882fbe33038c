// The proxy on a real in-process gRPC server, with fake workers behind it: streaming, retries
// before the first token, resume after a mid-stream failure, admission limits, cancellation.
#include <thread>

#include "gtest/gtest.h"
#include "router/inference_proxy.h"
#include "services/client/client.h"
#include "services/server.h"
#include "tests/unit/router/fake_worker.h"

namespace sqa::router {
namespace {

using testing::FakeFactory;
using testing::FakeToken;
using testing::FakeWorker;

class ProxyTest : public ::testing::Test {
 protected:
  void StartRouter(std::vector<std::shared_ptr<FakeWorker>> workers, ProxyOptions po = {}) {
    factory_ = std::make_shared<FakeFactory>();
    RegistryOptions ro;
    for (auto& w : workers) {
      factory_->Put(w);
      auto hp = ParseHostPort(w->address());
      ro.workers.push_back(*hp);
    }
    registry_ = std::make_unique<Registry>(ro, factory_, [](const HostPort& hp) -> absl::StatusOr<std::vector<std::string>> {
      return std::vector<std::string>{hp.host + ":" + hp.port};
    });
    registry_->RefreshNow(true);
    policy_ = NewAffinityP2CPolicy({.seed = 11});
    prom_ = std::make_shared<prometheus::Registry>();
    metrics_ = std::make_unique<RouterMetrics>(*prom_);
    proxy_ = std::make_unique<InferenceProxy>(po, registry_.get(), policy_.get(), metrics_.get());
    ServerOptions so;
    so.max_message_bytes = 1 << 20;
    auto server = GrpcServer::Start(so, {{proxy_.get(), v1::Inference::service_full_name()}});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    auto client = client::InferenceClient::Create({.target = server_->address()});
    ASSERT_TRUE(client.ok());
    client_ = std::move(*client);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(absl::Seconds(1));
  }
  static v1::GenerateRequest Request(int max_tokens) {
    v1::GenerateRequest r;
    for (int t : {5, 6, 7}) r.add_prompt_tokens(t);
    r.set_max_tokens(max_tokens);
    return r;
  }
  static std::vector<int32_t> Expected(const v1::GenerateRequest& r) {
    std::vector<int32_t> out;
    for (int s = 0; s < r.max_tokens(); ++s) out.push_back(FakeToken(r, s));
    return out;
  }

  std::shared_ptr<FakeFactory> factory_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<RoutingPolicy> policy_;
  std::shared_ptr<prometheus::Registry> prom_;
  std::unique_ptr<RouterMetrics> metrics_;
  std::unique_ptr<InferenceProxy> proxy_;
  std::unique_ptr<GrpcServer> server_;
  std::unique_ptr<client::InferenceClient> client_;
};

TEST_F(ProxyTest, StreamsAllTokensWithUsage) {
  auto w = std::make_shared<FakeWorker>("10.0.0.1:1", 4096);
  StartRouter({w});
  auto req = Request(12);
  auto r = client_->Generate(req, absl::InfiniteFuture());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens, Expected(req));
  EXPECT_EQ(r->finish_reason, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(r->usage.prompt_tokens(), 3);
  EXPECT_EQ(r->usage.completion_tokens(), 12);
  EXPECT_FALSE(r->request_id.empty());
  EXPECT_EQ(metrics_->retries.Value(), 0);
}

TEST_F(ProxyTest, RetriesOnAnotherWorkerBeforeFirstToken) {
  auto bad = std::make_shared<FakeWorker>("10.0.0.1:1", 4096);
  auto good = std::make_shared<FakeWorker>("10.0.0.2:1", 4096);
  bad->fail_before_first_ = true;
  good->set_load_tokens(1 << 20);  // the failing one looks idle, so it is picked first
  StartRouter({bad, good});
  auto req = Request(5);
  auto r = client_->Generate(req, absl::InfiniteFuture());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens, Expected(req));
  EXPECT_EQ(bad->requests().size(), 1u);
  EXPECT_EQ(good->requests().size(), 1u);
  EXPECT_EQ(metrics_->retries.Value(), 1);
}

TEST_F(ProxyTest, ResumesMidStreamWithoutLossOrRepeat) {
  auto first = std::make_shared<FakeWorker>("10.0.0.1:1", 4096);
  auto second = std::make_shared<FakeWorker>("10.0.0.2:1", 4096);
  first->fail_after_tokens_ = 4;
  first->tokens_per_message_ = 2;
  second->set_load_tokens(1 << 20);
  StartRouter({first, second});
  auto req = Request(10);
  auto r = client_->Generate(req, absl::InfiniteFuture());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens, Expected(req));
  EXPECT_EQ(r->usage.completion_tokens(), 10);
  ASSERT_EQ(second->requests().size(), 1u);
  const v1::GenerateRequest resumed = second->requests()[0];
  const std::vector<int32_t> all = Expected(req);
  EXPECT_EQ(std::vector<int32_t>(resumed.resume_tokens().begin(), resumed.resume_tokens().end()),
            std::vector<int32_t>(all.begin(), all.begin() + 4));
  EXPECT_EQ(resumed.max_tokens(), 10);
  EXPECT_EQ(metrics_->resumes.Value(), 1);
}

TEST_F(ProxyTest, SessionAffinitySticksToTheWorkerThatServedIt) {
  auto a = std::make_shared<FakeWorker>("10.0.0.1:1", 4096);
  auto b = std::make_shared<FakeWorker>("10.0.0.2:1", 4096);
  StartRouter({a, b});
  for (int i = 0; i < 30; ++i) {
    auto req = Request(3);
    req.set_session_id("chat-42");
    auto r = client_->Generate(req, absl::InfiniteFuture());
    ASSERT_TRUE(r.ok()) << r.status();
    // Affinity is recorded when the upstream stream has ended, which may be just after the
    // client got its answer.
    absl::SleepFor(absl::Milliseconds(10));
  }
  // The first request went anywhere; every later one followed it.
  const size_t na = a->requests().size(), nb = b->requests().size();
  EXPECT_EQ(na + nb, 30u);
  EXPECT_EQ(std::max(na, nb), 30u);
}

TEST_F(ProxyTest, FailsWhenEveryWorkerFails) {
  auto a = std::make_shared<FakeWorker>("10.0.0.1:1", 4096);
  auto b = std::make_shared<FakeWorker>("10.0.0.2:1", 4096);
  a->fail_before_first_ = true;
  b->fail_before_first_ = true;
  StartRouter({a, b});
  auto r = client_->Generate(Request(3), absl::InfiniteFuture());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
}

TEST_F(ProxyTest, RejectsRequestsNoPoolFits) {
  StartRouter({std::make_shared<FakeWorker>("10.0.0.1:1", 8)});
  auto r = client_->Generate(Request(6), absl::InfiniteFuture());  // 3 + 6 > 8
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "prompt has 3 tokens (+ max_tokens 6); the largest pool accepts at most 8");
  v1::GenerateRequest empty;
  empty.set_max_tokens(1);
  EXPECT_EQ(client_->Generate(empty, absl::InfiniteFuture()).status().code(), absl::StatusCode::kInvalidArgument);
  auto ok = client_->Generate(Request(5), absl::InfiniteFuture());
  EXPECT_TRUE(ok.ok()) << ok.status();
}

TEST_F(ProxyTest, AdmissionQueueBoundsAndEveryAcceptedRequestCompletes) {
  auto w = std::make_shared<FakeWorker>("10.0.0.1:1", 4096);
  w->step_delay_ms_ = 20;
  StartRouter({w}, {.max_inflight = 1, .max_queued = 1});
  std::vector<absl::Status> results(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      absl::SleepFor(absl::Milliseconds(30 * i));  // in order: run, queue, reject, reject
      auto r = client_->Generate(Request(8), absl::InfiniteFuture());
      results[i] = r.ok() ? absl::OkStatus() : r.status();
      if (r.ok()) EXPECT_EQ(r->tokens.size(), 8u);
    });
  }
  for (auto& t : threads) t.join();
  int ok = 0, exhausted = 0;
  for (const auto& s : results) {
    ok += s.ok();
    exhausted += s.code() == absl::StatusCode::kResourceExhausted;
  }
  EXPECT_EQ(ok, 2);
  EXPECT_EQ(exhausted, 2);
  EXPECT_TRUE(proxy_->WaitIdle(absl::Seconds(5)));
}

TEST_F(ProxyTest, ClientCancelCancelsUpstream) {
  auto w = std::make_shared<FakeWorker>("10.0.0.1:1", 4096);
  w->step_delay_ms_ = 10;
  StartRouter({w});
  int seen = 0;
  auto r = client_->Generate(Request(1000), absl::InfiniteFuture(),
                             [&](const v1::GenerateResponse& m) { return ++seen < 3; });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(proxy_->WaitIdle(absl::Seconds(5)));
  ASSERT_EQ(w->requests().size(), 1u);
}

TEST_F(ProxyTest, DeadlinePropagates) {
  auto w = std::make_shared<FakeWorker>("10.0.0.1:1", 4096);
  w->step_delay_ms_ = 20;
  StartRouter({w});
  auto r = client_->Generate(Request(1000), absl::Now() + absl::Milliseconds(150));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(proxy_->WaitIdle(absl::Seconds(5)));
}

TEST_F(ProxyTest, NoHealthyWorkerIsUnavailableAndModelInfoCarriesPools) {
  auto w = std::make_shared<FakeWorker>("10.0.0.1:1", 4096);
  StartRouter({w});
  auto info = client_->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->pools_size(), 1);
  EXPECT_EQ(info->pools(0).max_context_tokens(), 4096);
  EXPECT_EQ(info->pools(0).healthy_groups(), 1);
  w->set_serving(false);
  registry_->RefreshNow();
  EXPECT_EQ(client_->GetModelInfo().status().code(), absl::StatusCode::kUnavailable);
  auto r = client_->Generate(Request(2), absl::InfiniteFuture());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(r.status().message().find("no healthy worker"), std::string::npos) << r.status();
  w->set_serving(true);
  registry_->RefreshNow();
  EXPECT_TRUE(client_->Generate(Request(2), absl::InfiniteFuture()).ok());
}

TEST_F(ProxyTest, DrainRefusesNewCalls) {
  StartRouter({std::make_shared<FakeWorker>("10.0.0.1:1", 4096)});
  proxy_->StartDrain();
  auto r = client_->Generate(Request(2), absl::InfiniteFuture());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace sqa::router
