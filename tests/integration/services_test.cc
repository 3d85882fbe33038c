// Integration tests of the services: real sqa-worker and sqa-router processes on loopback (port 0
// + port files), a tiny model from sqa-mkmodel, talked to through the client library as a user
// would. Binaries come from SQA_BIN_DIR (the build's bin/).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "router/launcher.h"
#include "services/client/client.h"
#include "services/port_file.h"
#include "workers/engine/npy.h"
#include "sqa/v1/worker.grpc.pb.h"

namespace sqa {
namespace {

using router::ChildProcess;

std::string Bin(const std::string& name) { return std::string(SQA_BIN_DIR) + "/" + name; }

// Runs a command to completion; returns its exit status (-1 if it could not start).
int RunToCompletion(const std::vector<std::string>& argv, const std::string& log) {
  auto c = ChildProcess::Spawn(argv, log);
  if (!c.ok()) return -1;
  while ((*c)->Running()) absl::SleepFor(absl::Milliseconds(20));
  const int st = (*c)->wait_status();
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return "";
  }
  std::string req = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: localhost\r\n\r\n");
  (void)!write(fd, req.data(), req.size());
  std::string out;
  char buf[8192];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) out.append(buf, n);
  close(fd);
  size_t body = out.find("\r\n\r\n");
  return body == std::string::npos ? "" : out.substr(body + 4);
}

// Sum of the samples of `name` whose label set contains every string in `labels`.
double MetricValue(const std::string& text, const std::string& name,
                   const std::vector<std::string>& labels = {}) {
  double sum = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    if (!absl::StartsWith(line, name) || line.size() <= name.size()) continue;
    const char next = line[name.size()];
    if (next != '{' && next != ' ') continue;
    bool all = true;
    for (const auto& l : labels) all &= absl::StrContains(line, l);
    if (!all) continue;
    double v = 0;
    if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &v)) sum += v;
  }
  return sum;
}

struct Proc {
  std::unique_ptr<ChildProcess> child;
  int port = 0;
  int metrics_port = 0;
  std::string log;
};

// Starts a binary with --port 0 --port-file --metrics-port 0 --metrics-port-file and waits for
// both files.
Proc StartService(const std::string& dir, const std::string& name, std::vector<std::string> argv) {
  Proc p;
  const std::string base = absl::StrCat(dir, "/", name);
  p.log = base + ".log";
  for (const char* a : {"--port", "0", "--metrics-port", "0"}) argv.push_back(a);
  argv.push_back("--port-file");
  argv.push_back(base + ".port");
  argv.push_back("--metrics-port-file");
  argv.push_back(base + ".mport");
  auto c = ChildProcess::Spawn(argv, p.log);
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return p;
  p.child = std::move(*c);
  auto port = WaitForPortFile(base + ".port", absl::Seconds(60));
  auto mport = WaitForPortFile(base + ".mport", absl::Seconds(60));
  EXPECT_TRUE(port.ok() && mport.ok()) << name << " did not start; log:\n" << router::TailOfFile(p.log);
  if (port.ok()) p.port = *port;
  if (mport.ok()) p.metrics_port = *mport;
  return p;
}

Proc StartWorker(const std::string& dir, const std::string& model, const std::string& name) {
  return StartService(dir, name, {Bin("sqa-worker"), "--model", model, "--host", "127.0.0.1", "--device",
                                  "cpu", "--threads", "1", "--kv-cache-mb", "32"});
}

Proc StartRouter(const std::string& dir, const std::string& name, const std::vector<Proc*>& workers,
                 std::vector<std::string> extra = {}) {
  std::vector<std::string> addrs;
  for (Proc* w : workers) addrs.push_back(absl::StrCat("127.0.0.1:", w->port));
  std::vector<std::string> argv = {Bin("sqa-router"), "--workers", absl::StrJoin(addrs, ","), "--host",
                                   "127.0.0.1", "--metrics-host", "127.0.0.1", "--health-interval-ms", "200"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return StartService(dir, name, argv);
}

std::unique_ptr<client::InferenceClient> Client(int port, const std::string& service = "inference") {
  auto c = client::InferenceClient::Create({.target = absl::StrCat("127.0.0.1:", port), .service = service});
  return c.ok() ? std::move(*c) : nullptr;
}

// Waits until the router reports `n` healthy workers (its readiness follows them).
void WaitHealthy(const Proc& router, int n) {
  const absl::Time end = absl::Now() + absl::Seconds(30);
  while (absl::Now() < end) {
    if (MetricValue(HttpGet(router.metrics_port, "/metrics"), "sqa_router_healthy_groups") == n) return;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ADD_FAILURE() << "router did not see " << n << " healthy workers; log:\n" << router::TailOfFile(router.log);
}

absl::StatusOr<v1::LoadReport> GetLoad(int port) {
  auto ch = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
  auto stub = v1::Worker::NewStub(ch);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  v1::LoadReport r;
  grpc::Status s = stub->GetLoad(&ctx, v1::GetLoadRequest(), &r);
  if (!s.ok()) return absl::UnavailableError(s.error_message());
  return r;
}

v1::GenerateRequest Request(std::vector<int32_t> prompt, int max_tokens) {
  v1::GenerateRequest r;
  r.mutable_prompt_tokens()->Assign(prompt.begin(), prompt.end());
  r.set_max_tokens(max_tokens);
  return r;
}

class ServicesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/sqa-services-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = new std::string(tmpl);
    model_ = new std::string(*dir_ + "/model");
    ASSERT_EQ(RunToCompletion({Bin("sqa-mkmodel"), "--preset", "tiny", "--layout", "SQA", "--seed", "3",
                               "--out", *model_},
                              *dir_ + "/mkmodel.log"),
              0)
        << router::TailOfFile(*dir_ + "/mkmodel.log");
    w0_ = new Proc(StartWorker(*dir_, *model_, "w0"));
    w1_ = new Proc(StartWorker(*dir_, *model_, "w1"));
    router_ = new Proc(StartRouter(*dir_, "router", {w0_, w1_}, {"--max-message-mb", "1"}));
    WaitHealthy(*router_, 2);
  }
  static void TearDownTestSuite() {
    for (Proc* p : {router_, w0_, w1_}) {
      if (p && p->child) p->child->Stop(absl::Seconds(10));
      delete p;
    }
    std::error_code ec;
    if (!HasFailure()) std::filesystem::remove_all(*dir_, ec);
    delete dir_;
    delete model_;
  }

  // sqa-run's tokens for the same model, prompt and sampling.
  static std::vector<int32_t> SqaRun(const std::vector<int32_t>& prompt, int n,
                                     std::vector<std::string> sampling = {}) {
    static int k = 0;
    const std::string out = absl::StrCat(*dir_, "/run", k++, ".json");
    std::vector<std::string> argv = {Bin("sqa-run"), "--model", *model_, "--prompt-tokens",
                                     absl::StrJoin(prompt, ","), "--generate", absl::StrCat(n),
                                     "--tokens-out", out, "--threads", "1"};
    argv.insert(argv.end(), sampling.begin(), sampling.end());
    EXPECT_EQ(RunToCompletion(argv, out + ".log"), 0) << router::TailOfFile(out + ".log");
    std::ifstream in(out);
    if (!in) return {};
    auto j = nlohmann::json::parse(in);
    return j["sequences"][0]["generated"].get<std::vector<int32_t>>();
  }

  static std::string* dir_;
  static std::string* model_;
  static Proc* w0_;
  static Proc* w1_;
  static Proc* router_;
};
std::string* ServicesTest::dir_ = nullptr;
std::string* ServicesTest::model_ = nullptr;
Proc* ServicesTest::w0_ = nullptr;
Proc* ServicesTest::w1_ = nullptr;
Proc* ServicesTest::router_ = nullptr;

TEST_F(ServicesTest, TokensThroughRouterEqualSqaRun) {
  auto c = Client(router_->port);
  const std::vector<int32_t> prompt = {1, 2, 3, 40, 50, 60, 7};
  // Greedy.
  auto greedy = c->Generate(Request(prompt, 24), absl::Now() + absl::Seconds(30));
  ASSERT_TRUE(greedy.ok()) << greedy.status();
  EXPECT_EQ(greedy->tokens, SqaRun(prompt, 24));
  EXPECT_EQ(greedy->finish_reason, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(greedy->usage.completion_tokens(), 24);
  // Seeded sampling, several times (both workers get some): same tokens as sqa-run each time.
  const std::vector<int32_t> expected =
      SqaRun(prompt, 24, {"--temperature", "0.9", "--top-k", "50", "--top-p", "0.95", "--seed", "1234"});
  ASSERT_EQ(expected.size(), 24u);
  for (int i = 0; i < 4; ++i) {
    auto req = Request(prompt, 24);
    req.mutable_sampling()->set_temperature(0.9f);
    req.mutable_sampling()->set_top_k(50);
    req.mutable_sampling()->set_top_p(0.95f);
    req.mutable_sampling()->set_seed(1234);
    auto r = c->Generate(req, absl::Now() + absl::Seconds(30));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->tokens, expected) << "attempt " << i;
  }
}

TEST_F(ServicesTest, HealthAndReflectionAnswer) {
  auto c = Client(router_->port);
  auto h = c->Health();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_TRUE(*h);
  auto hs = c->Health("sqa.v1.Inference");
  ASSERT_TRUE(hs.ok()) << hs.status();
  EXPECT_TRUE(*hs);
  auto services = c->ListServices();
  ASSERT_TRUE(services.ok()) << services.status();
  EXPECT_NE(std::find(services->begin(), services->end(), "sqa.v1.Inference"), services->end())
      << absl::StrJoin(*services, ",");
  EXPECT_NE(std::find(services->begin(), services->end(), "grpc.health.v1.Health"), services->end());
  auto wc = Client(w0_->port, "worker");
  auto wh = wc->Health("sqa.v1.Worker");
  ASSERT_TRUE(wh.ok()) << wh.status();
  EXPECT_TRUE(*wh);
  auto ws = wc->ListServices();
  ASSERT_TRUE(ws.ok()) << ws.status();
  EXPECT_NE(std::find(ws->begin(), ws->end(), "sqa.v1.Worker"), ws->end());
  // GetModelInfo through the router carries the pool.
  auto info = c->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->layout(), "SQA");
  ASSERT_EQ(info->pools_size(), 1);
  EXPECT_EQ(info->pools(0).healthy_groups(), 2);
  EXPECT_GT(info->pools(0).max_context_tokens(), 0);
}

TEST_F(ServicesTest, EncodeThroughRouterEqualsWorker) {
  v1::EncodeRequest req;
  for (int t : {3, 14, 15, 92, 65}) req.add_prompt_tokens(t);
  req.set_return_prompt_logprobs(true);
  auto via_router = Client(router_->port)->Encode(req, absl::Now() + absl::Seconds(30));
  ASSERT_TRUE(via_router.ok()) << via_router.status();
  auto direct = Client(w0_->port, "worker")->Encode(req, absl::Now() + absl::Seconds(30));
  ASSERT_TRUE(direct.ok()) << direct.status();
  ASSERT_GT(via_router->values_size(), 0);
  ASSERT_EQ(via_router->values_size(), direct->values_size());
  for (int i = 0; i < direct->values_size(); ++i) EXPECT_FLOAT_EQ(via_router->values(i), direct->values(i)) << i;
  EXPECT_EQ(via_router->prompt_logprobs_size(), 4);
  v1::EncodeRequest empty;
  EXPECT_EQ(Client(router_->port)->Encode(empty, absl::Now() + absl::Seconds(5)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ServicesTest, MetricsPassPromtoolAndCountersMove) {
  const std::string ok_label = "outcome=\"ok\"";
  const std::string before = HttpGet(router_->metrics_port, "/metrics");
  auto c = Client(router_->port);
  for (int i = 0; i < 3; ++i) {
    auto r = c->Generate(Request({5, 6, 7}, 4), absl::Now() + absl::Seconds(30));
    ASSERT_TRUE(r.ok()) << r.status();
  }
  // The router counts a request when its server side is done, which can be a moment after the
  // client got the final message and status.
  std::string after;
  const double want_ok = MetricValue(before, "sqa_router_requests_total", {ok_label}) + 3;
  for (const absl::Time end = absl::Now() + absl::Seconds(5); absl::Now() < end;) {
    after = HttpGet(router_->metrics_port, "/metrics");
    if (MetricValue(after, "sqa_router_requests_total", {ok_label}) >= want_ok) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(MetricValue(after, "sqa_router_requests_total", {ok_label}) -
                MetricValue(before, "sqa_router_requests_total", {ok_label}),
            3);
  EXPECT_EQ(MetricValue(after, "sqa_router_time_to_first_token_seconds_count") -
                MetricValue(before, "sqa_router_time_to_first_token_seconds_count"),
            3);
  EXPECT_EQ(MetricValue(after, "sqa_router_generated_tokens_total") -
                MetricValue(before, "sqa_router_generated_tokens_total"),
            12);
  EXPECT_EQ(MetricValue(after, "sqa_router_healthy_groups"), 2);
  EXPECT_GT(MetricValue(after, "sqa_router_request_duration_seconds_count"), 0);
  for (const auto& [name, port] : std::vector<std::pair<std::string, int>>{
           {"router", router_->metrics_port}, {"worker", w0_->metrics_port}}) {
    const std::string file = absl::StrCat(*dir_, "/", name, ".prom");
    std::ofstream(file) << HttpGet(port, "/metrics");
    const std::string cmd = absl::StrCat("promtool check metrics < ", file, " > ", file, ".out 2>&1");
    EXPECT_EQ(std::system(cmd.c_str()), 0) << name << ":\n" << router::TailOfFile(file + ".out");
  }
}

TEST_F(ServicesTest, BadRequestsAreRejectedAndServicesKeepServing) {
  auto c = Client(router_->port);
  auto info = c->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  const int64_t max_ctx = info->pools(0).max_context_tokens();
  const absl::Time dl = absl::Now() + absl::Seconds(30);
  auto code = [&](v1::GenerateRequest r) { return c->Generate(r, dl).status().code(); };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(code(Request({}, 4)), kInvalid);                                   // empty prompt
  EXPECT_EQ(code(Request(std::vector<int32_t>(max_ctx + 1, 1), 1)), kInvalid);  // over the pool
  EXPECT_EQ(code(Request({1, info->vocab_size()}, 4)), kInvalid);              // token >= vocab
  EXPECT_EQ(code(Request({1, 2}, 0)), kInvalid);                               // max_tokens 0
  EXPECT_EQ(code(Request({1, 2}, -3)), kInvalid);
  EXPECT_EQ(code(Request({1, 2}, static_cast<int>(max_ctx))), kInvalid);       // beyond context
  auto t = Request({1, 2}, 4);
  t.mutable_sampling()->set_temperature(-1);
  EXPECT_EQ(code(t), kInvalid);
  for (float p : {1.5f, -0.2f}) {
    auto r = Request({1, 2}, 4);
    r.mutable_sampling()->set_top_p(p);
    EXPECT_EQ(code(r), kInvalid) << p;
  }
  // Oversized message: the router was started with --max-message-mb 1.
  EXPECT_EQ(code(Request(std::vector<int32_t>(300000, 1 << 28), 1)), absl::StatusCode::kResourceExhausted);
  // The worker itself rejects a bad token too (the router passed its answer through above).
  auto w = Client(w1_->port, "worker");
  EXPECT_EQ(w->Generate(Request({1, info->vocab_size() + 5}, 2), dl).status().code(), kInvalid);
  // Still serving.
  auto ok = c->Generate(Request({1, 2, 3}, 3), dl);
  EXPECT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->tokens.size(), 3u);
}

TEST_F(ServicesTest, CancellationFreesKvBlocksAndDeadlinesExpire) {
  auto c = Client(router_->port);
  int64_t used_during = 0;
  int seen = 0;
  auto r = c->Generate(Request({9, 8, 7, 6}, 3000), absl::Now() + absl::Seconds(60),
                       [&](const v1::GenerateResponse&) {
                         if (++seen == 2) {
                           for (Proc* w : {w0_, w1_}) {
                             auto l = GetLoad(w->port);
                             if (l.ok()) used_during += l->kv_blocks_used();
                           }
                         }
                         return seen < 5;
                       });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  EXPECT_GT(used_during, 0);
  auto wait_free = [&] {
    const absl::Time end = absl::Now() + absl::Seconds(10);
    while (absl::Now() < end) {
      int64_t used = 0;
      for (Proc* w : {w0_, w1_}) {
        auto l = GetLoad(w->port);
        used += l.ok() ? l->kv_blocks_used() : 1000;
      }
      if (used == 0) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  };
  EXPECT_TRUE(wait_free()) << "KV blocks not freed after cancellation";
  // The same through the worker metrics.
  for (Proc* w : {w0_, w1_}) {
    EXPECT_EQ(MetricValue(HttpGet(w->metrics_port, "/metrics"), "sqa_worker_kv_blocks_used"), 0);
  }
  // An expired deadline.
  auto d = c->Generate(Request({9, 8, 7, 6}, 3000), absl::Now() + absl::Milliseconds(40));
  EXPECT_EQ(d.status().code(), absl::StatusCode::kDeadlineExceeded) << d.status();
  EXPECT_TRUE(wait_free()) << "KV blocks not freed after the deadline";
}

TEST_F(ServicesTest, AdmissionQueueFullRejectsExcessAndCompletesTheRest) {
  Proc small = StartRouter(*dir_, "router-small", {w0_, w1_}, {"--max-inflight", "1", "--max-queued", "1"});
  WaitHealthy(small, 2);
  auto c = Client(small.port);
  constexpr int kN = 6;
  std::vector<absl::StatusCode> codes(kN);
  std::vector<size_t> lengths(kN);
  std::vector<std::thread> threads;
  for (int i = 0; i < kN; ++i) {
    threads.emplace_back([&, i] {
      auto r = c->Generate(Request({3, 1, 4, 1, 5}, 400), absl::Now() + absl::Seconds(60));
      codes[i] = r.status().code();
      lengths[i] = r.ok() ? r->tokens.size() : 0;
    });
  }
  for (auto& t : threads) t.join();
  int ok = 0, exhausted = 0;
  for (int i = 0; i < kN; ++i) {
    if (codes[i] == absl::StatusCode::kOk) {
      ++ok;
      EXPECT_EQ(lengths[i], 400u);
    }
    exhausted += codes[i] == absl::StatusCode::kResourceExhausted;
  }
  EXPECT_EQ(ok + exhausted, kN);
  EXPECT_GE(ok, 2);  // one running + one queued at least
  EXPECT_GE(exhausted, 1);
  double counted = 0;
  for (const absl::Time end = absl::Now() + absl::Seconds(5); absl::Now() < end;) {
    counted = MetricValue(HttpGet(small.metrics_port, "/metrics"), "sqa_router_requests_total",
                          {"code=\"RESOURCE_EXHAUSTED\""});
    if (counted >= exhausted) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(counted, exhausted);
  small.child->Stop(absl::Seconds(10));
}

TEST_F(ServicesTest, RouterDrainsOnSigtermFinishingInFlightStreams) {
  Proc r = StartRouter(*dir_, "router-drain", {w0_, w1_}, {"--drain-timeout-seconds", "30"});
  WaitHealthy(r, 2);
  auto c = Client(r.port);
  std::atomic<int> seen{0};
  absl::StatusOr<client::GenerateResult> long_result = absl::UnknownError("not run");
  std::thread t([&] {
    long_result = c->Generate(Request({2, 7, 1, 8}, 1500), absl::Now() + absl::Seconds(60),
                              [&](const v1::GenerateResponse& m) {
                                seen += m.tokens_size();
                                return true;
                              });
  });
  while (seen.load() < 3) absl::SleepFor(absl::Milliseconds(2));
  r.child->Signal(SIGTERM);
  absl::SleepFor(absl::Milliseconds(100));
  // Draining: not ready, and new calls are refused while the running stream continues.
  auto h = c->Health();
  EXPECT_TRUE(!h.ok() || !*h) << "router still SERVING while draining";
  auto refused = c->Generate(Request({1, 2}, 2), absl::Now() + absl::Seconds(5));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
  t.join();
  ASSERT_TRUE(long_result.ok()) << long_result.status();
  EXPECT_EQ(long_result->tokens.size(), 1500u);
  const absl::Time end = absl::Now() + absl::Seconds(20);
  while (r.child->Running() && absl::Now() < end) absl::SleepFor(absl::Milliseconds(20));
  ASSERT_FALSE(r.child->Running()) << "router did not exit after draining";
  EXPECT_TRUE(WIFEXITED(r.child->wait_status()) && WEXITSTATUS(r.child->wait_status()) == 0);
}

// Own workers: this test kills one.
TEST(WorkerFailureTest, KilledWorkerMidStreamIsResumedWithoutLossOrRepeat) {
  char tmpl[] = "/tmp/sqa-failover-test-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string model = dir + "/model";
  ASSERT_EQ(RunToCompletion({Bin("sqa-mkmodel"), "--preset", "tiny", "--seed", "5", "--out", model},
                            dir + "/mkmodel.log"),
            0);
  Proc w0 = StartWorker(dir, model, "w0");
  Proc w1 = StartWorker(dir, model, "w1");
  Proc router = StartRouter(dir, "router", {&w0, &w1});
  WaitHealthy(router, 2);
  auto c = Client(router.port);
  auto req = Request({11, 22, 33, 44, 55}, 1500);
  req.mutable_sampling()->set_temperature(0.8f);
  req.mutable_sampling()->set_top_k(40);
  req.mutable_sampling()->set_seed(99);
  auto undisturbed = c->Generate(req, absl::Now() + absl::Seconds(60));
  ASSERT_TRUE(undisturbed.ok()) << undisturbed.status();
  ASSERT_EQ(undisturbed->tokens.size(), 1500u);

  int killed_port = 0;
  int seen = 0;
  auto disturbed = c->Generate(req, absl::Now() + absl::Seconds(60), [&](const v1::GenerateResponse& m) {
    seen += m.tokens_size();
    if (killed_port == 0 && seen >= 3) {
      for (Proc* w : {&w0, &w1}) {
        auto l = GetLoad(w->port);
        if (l.ok() && l->running_requests() + l->queued_requests() > 0) {
          w->child->Signal(SIGKILL);
          killed_port = w->port;
          break;
        }
      }
    }
    return true;
  });
  ASSERT_NE(killed_port, 0) << "no worker was running the request";
  ASSERT_TRUE(disturbed.ok()) << disturbed.status() << "\nrouter log:\n" << router::TailOfFile(router.log);
  EXPECT_EQ(disturbed->tokens, undisturbed->tokens);
  EXPECT_EQ(disturbed->usage.completion_tokens(), 1500);
  const std::string m = HttpGet(router.metrics_port, "/metrics");
  EXPECT_EQ(MetricValue(m, "sqa_router_resumes_total"), 1)
      << "the worker finished before it was killed: the test did not exercise a resume";
  // The router keeps serving on the survivor.
  auto after = c->Generate(Request({1, 2, 3}, 4), absl::Now() + absl::Seconds(30));
  EXPECT_TRUE(after.ok()) << after.status();
  for (Proc* p : {&router, &w0, &w1}) p->child->Stop(absl::Seconds(10));
  std::error_code ec;
  if (!::testing::Test::HasFailure()) std::filesystem::remove_all(dir, ec);
}

// A worker group of `world` processes (heads or sequence sharding) on loopback. The ranks are
// spawned together (the leader waits for its followers before it serves), then their port files
// are awaited.
struct GroupProcs {
  std::vector<Proc> ranks;  // ranks[0] leads and is the router's target
};

GroupProcs StartGroup(const std::string& dir, const std::string& model, const std::string& name, int world,
                      const std::string& shard) {
  GroupProcs g;
  auto leader_port = router::PickFreePort();
  EXPECT_TRUE(leader_port.ok());
  const std::string leader = absl::StrCat("127.0.0.1:", leader_port.ok() ? *leader_port : 0);
  for (int r = 0; r < world; ++r) {
    Proc p;
    const std::string base = absl::StrCat(dir, "/", name, "-r", r);
    p.log = base + ".log";
    auto c = ChildProcess::Spawn({Bin("sqa-worker"), "--model", model, "--host", "127.0.0.1", "--device", "cpu",
                                  "--threads", "1", "--kv-cache-mb", "32", "--port", "0", "--port-file",
                                  base + ".port", "--metrics-port", "0", "--metrics-port-file", base + ".mport",
                                  "--group", name, "--rank", absl::StrCat(r), "--world", absl::StrCat(world),
                                  "--leader", leader, "--shard", shard, "--group-timeout-s", "5"},
                                 p.log);
    EXPECT_TRUE(c.ok()) << c.status();
    if (c.ok()) p.child = std::move(*c);
    g.ranks.push_back(std::move(p));
  }
  for (int r = 0; r < world; ++r) {
    const std::string base = absl::StrCat(dir, "/", name, "-r", r);
    auto port = WaitForPortFile(base + ".port", absl::Seconds(60));
    auto mport = WaitForPortFile(base + ".mport", absl::Seconds(60));
    EXPECT_TRUE(port.ok() && mport.ok()) << name << " rank " << r << " did not start; log:\n"
                                         << router::TailOfFile(g.ranks[r].log);
    if (port.ok()) g.ranks[r].port = *port;
    if (mport.ok()) g.ranks[r].metrics_port = *mport;
  }
  return g;
}

void StopGroupProcs(GroupProcs& g) {
  // The leader stops first (it stops the group); its followers then exit on their own.
  if (!g.ranks.empty() && g.ranks[0].child) g.ranks[0].child->Stop(absl::Seconds(10));
  for (size_t r = 1; r < g.ranks.size(); ++r)
    if (g.ranks[r].child) g.ranks[r].child->Stop(absl::Seconds(10));
}

bool WaitNotServing(int port, absl::Duration timeout) {
  auto c = Client(port, "worker");
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    auto h = c->Health();
    if (!h.ok() || !*h) return true;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return false;
}

// Groups of two ranks, one sharding heads and one the sequence, behind one router: tokens equal
// sqa-run's; a follower killed mid-stream turns its group unhealthy within seconds and the router
// resumes the stream on the other group with no token lost or repeated.
TEST(GroupTest, ShardedGroupsServeExactlyAndAFollowerDeathIsResumedElsewhere) {
  char tmpl[] = "/tmp/sqa-group-test-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string model = dir + "/model";
  ASSERT_EQ(RunToCompletion({Bin("sqa-mkmodel"), "--preset", "tiny", "--layout", "SQA", "--seed", "8", "--out", model},
                            dir + "/mkmodel.log"),
            0);
  GroupProcs heads = StartGroup(dir, model, "heads", 2, "heads");
  GroupProcs seq = StartGroup(dir, model, "seq", 2, "sequence");
  ASSERT_GT(heads.ranks[0].port, 0);
  ASSERT_GT(seq.ranks[0].port, 0);
  Proc router = StartRouter(dir, "router", {&heads.ranks[0], &seq.ranks[0]});
  WaitHealthy(router, 2);

  // Each group directly, then through the router, against sqa-run.
  const std::vector<int32_t> prompt = {5, 17, 29, 3, 101, 77, 64, 9, 250, 33, 12};
  const std::string out = dir + "/run.json";
  ASSERT_EQ(RunToCompletion({Bin("sqa-run"), "--model", model, "--prompt-tokens", absl::StrJoin(prompt, ","),
                             "--generate", "40", "--tokens-out", out, "--threads", "1"},
                            out + ".log"),
            0);
  std::ifstream in(out);
  const std::vector<int32_t> expected = nlohmann::json::parse(in)["sequences"][0]["generated"].get<std::vector<int32_t>>();
  for (GroupProcs* g : {&heads, &seq}) {
    auto direct = Client(g->ranks[0].port, "worker")->Generate(Request(prompt, 40), absl::Now() + absl::Seconds(60));
    ASSERT_TRUE(direct.ok()) << direct.status() << "\n" << router::TailOfFile(g->ranks[0].log);
    EXPECT_EQ(direct->tokens, expected);
    auto load = GetLoad(g->ranks[0].port);
    ASSERT_TRUE(load.ok());
    EXPECT_EQ(load->group_size(), 2);
    EXPECT_EQ(load->shard_mode(), g == &heads ? "heads" : "sequence");
  }
  auto c = Client(router.port);
  for (int i = 0; i < 3; ++i) {
    auto r = c->Generate(Request(prompt, 40), absl::Now() + absl::Seconds(60));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->tokens, expected);
  }

  // Every rank exports its collectives (bytes and seconds by operation) and step times, labelled
  // with its rank, the group size and the mode.
  for (GroupProcs* g : {&heads, &seq}) {
    for (size_t r = 0; r < g->ranks.size(); ++r) {
      const std::string m = HttpGet(g->ranks[r].metrics_port, "/metrics");
      const std::string mode = g == &heads ? "heads" : "sequence";
      const std::vector<std::string> labels = {absl::StrCat("rank=\"", r, "\""), "group_size=\"2\"",
                                               absl::StrCat("shard_mode=\"", mode, "\"")};
      EXPECT_GT(MetricValue(m, "sqa_worker_collective_bytes_total", labels), 0) << m;
      EXPECT_GT(MetricValue(m, "sqa_worker_group_step_duration_seconds_count", labels), 0) << m;
      // Balance and overlap: prefill attention within the step time, exposed communication within
      // the time in collectives.
      const double attention = MetricValue(m, "sqa_worker_group_attention_seconds_total", labels);
      const double exposed = MetricValue(m, "sqa_worker_group_exposed_comm_seconds_total", labels);
      EXPECT_GT(attention, 0) << m;
      EXPECT_LE(attention, MetricValue(m, "sqa_worker_group_step_duration_seconds_sum", labels)) << m;
      EXPECT_GT(exposed, 0) << m;
      EXPECT_LE(exposed, MetricValue(m, "sqa_worker_collective_seconds_total", labels)) << m;
    }
  }

  // Kill the follower of whichever group runs a long stream.
  auto req = Request(prompt, 1200);
  req.mutable_sampling()->set_temperature(0.7f);
  req.mutable_sampling()->set_seed(31);
  auto undisturbed = c->Generate(req, absl::Now() + absl::Seconds(120));
  ASSERT_TRUE(undisturbed.ok()) << undisturbed.status();
  GroupProcs* victim = nullptr;
  int seen = 0;
  absl::Time killed_at;
  auto disturbed = c->Generate(req, absl::Now() + absl::Seconds(120), [&](const v1::GenerateResponse& m) {
    seen += m.tokens_size();
    if (victim == nullptr && seen >= 3) {
      for (GroupProcs* g : {&heads, &seq}) {
        auto l = GetLoad(g->ranks[0].port);
        if (l.ok() && l->running_requests() + l->queued_requests() > 0) {
          g->ranks[1].child->Signal(SIGKILL);
          victim = g;
          killed_at = absl::Now();
          break;
        }
      }
    }
    return true;
  });
  ASSERT_NE(victim, nullptr) << "no group was running the request";
  ASSERT_TRUE(disturbed.ok()) << disturbed.status() << "\nrouter log:\n" << router::TailOfFile(router.log);
  EXPECT_EQ(disturbed->tokens, undisturbed->tokens);
  EXPECT_EQ(MetricValue(HttpGet(router.metrics_port, "/metrics"), "sqa_router_resumes_total"), 1);
  // The broken group reports itself unhealthy within seconds, and its leader does not hang.
  EXPECT_TRUE(WaitNotServing(victim->ranks[0].port, absl::Seconds(10)))
      << router::TailOfFile(victim->ranks[0].log);
  EXPECT_LT(absl::Now() - killed_at, absl::Seconds(15));
  auto after = c->Generate(Request({1, 2, 3}, 4), absl::Now() + absl::Seconds(30));
  EXPECT_TRUE(after.ok()) << after.status();

  router.child->Stop(absl::Seconds(10));
  for (GroupProcs* g : {&heads, &seq}) StopGroupProcs(*g);
  std::error_code ec;
  if (!::testing::Test::HasFailure()) std::filesystem::remove_all(dir, ec);
}

bool ProcessGone(pid_t pid, absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    if (kill(pid, 0) != 0 && errno == ESRCH) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

std::vector<pid_t> WorkerPids(const std::string& log) {
  std::vector<pid_t> pids;
  for (absl::string_view line : absl::StrSplit(router::TailOfFile(log, 100000), '\n')) {
    if (!absl::StartsWith(line, "worker ")) continue;
    size_t at = line.find("pid ");
    if (at == absl::string_view::npos) continue;
    absl::string_view rest = line.substr(at + 4);
    int pid = 0;
    if (absl::SimpleAtoi(rest.substr(0, rest.find(' ')), &pid)) pids.push_back(pid);
  }
  return pids;
}

std::vector<float> LogSoftmaxRow(const float* row, int64_t n) {
  double m = row[0];
  for (int64_t i = 1; i < n; ++i) m = std::max(m, static_cast<double>(row[i]));
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(row[i] - m);
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = static_cast<float>(row[i] - m - std::log(s));
  return out;
}

// Groups of 2, 3 and 4 real worker processes in both modes, for every layout, against sqa-run on
// one process: the last prompt position's logits and every prompt log-probability (Encode), and
// the greedy tokens with their log-probabilities over decode steps (Generate), within fp32
// tolerance.
TEST(GroupTest, EveryLayoutAndGroupSizeMatchesOneProcess) {
  char tmpl[] = "/tmp/sqa-group-layouts-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::vector<int32_t> prompt = {3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26, 43, 38, 32, 79, 50, 28, 84};
  const int kGenerate = 6;
  for (const char* layout : {"MHA", "GQA", "MQA", "SQA", "sSQA", "xSQA", "xSMQA", "rSQA"}) {
    // 16 heads split every layout over 2 and 4 ranks, 12 heads over 3.
    for (int heads : {16, 12}) {
      const std::string model = absl::StrCat(dir, "/", layout, "-", heads);
      ASSERT_EQ(RunToCompletion({Bin("sqa-mkmodel"), "--preset", "tiny", "--layout", layout, "--heads",
                                 absl::StrCat(heads), "--hidden", absl::StrCat(heads * 8), "--intermediate", "192",
                                 "--seed", "4", "--out", model},
                                model + ".log"),
                0)
          << router::TailOfFile(model + ".log");
      const std::string run = model + "-run";
      ASSERT_EQ(RunToCompletion({Bin("sqa-run"), "--model", model, "--prompt-tokens", absl::StrJoin(prompt, ","),
                                 "--generate", absl::StrCat(kGenerate), "--logits-out", run + ".npy",
                                 "--decode-logits-out", run + "-decode.npy", "--tokens-out", run + ".json",
                                 "--threads", "1"},
                                run + ".log"),
                0)
          << router::TailOfFile(run + ".log");
      auto logits = ReadNpyF32(run + ".npy");
      auto decode = ReadNpyF32(run + "-decode.npy");
      ASSERT_TRUE(logits.ok() && decode.ok());
      std::ifstream in(run + ".json");
      const auto tokens = nlohmann::json::parse(in)["sequences"][0]["generated"].get<std::vector<int32_t>>();
      const int64_t vocab = logits->shape[1];
      const int64_t last = static_cast<int64_t>(prompt.size()) - 1;
      double scale = 0;
      for (float v : logits->data) scale = std::max(scale, std::abs(static_cast<double>(v)));

      for (int world : heads == 16 ? std::vector<int>{2, 4} : std::vector<int>{3}) {
        for (const char* mode : {"heads", "sequence"}) {
          SCOPED_TRACE(absl::StrCat(layout, " H=", heads, " P=", world, " ", mode));
          GroupProcs g = StartGroup(dir, model, absl::StrCat(layout, heads, mode, world), world, mode);
          ASSERT_GT(g.ranks[0].port, 0);
          auto c = Client(g.ranks[0].port, "worker");
          v1::EncodeRequest er;
          er.mutable_prompt_tokens()->Assign(prompt.begin(), prompt.end());
          er.set_return_prompt_logprobs(true);
          auto enc = c->Encode(er, absl::Now() + absl::Seconds(30));
          ASSERT_TRUE(enc.ok()) << enc.status() << "\n" << router::TailOfFile(g.ranks[0].log);
          ASSERT_EQ(enc->values_size(), vocab);
          double err = 0;
          for (int64_t v = 0; v < vocab; ++v)
            err = std::max(err, std::abs(static_cast<double>(enc->values(static_cast<int>(v))) -
                                         logits->data[static_cast<size_t>(last * vocab + v)]));
          EXPECT_LE(err / scale, 1e-4) << "last-position logits";
          ASSERT_EQ(enc->prompt_logprobs_size(), last);
          for (int64_t i = 1; i <= last; ++i) {
            const auto lp = LogSoftmaxRow(logits->data.data() + (i - 1) * vocab, vocab);
            EXPECT_NEAR(enc->prompt_logprobs(static_cast<int>(i - 1)), lp[static_cast<size_t>(prompt[i])], 1e-3)
                << "prompt position " << i;
          }
          v1::GenerateRequest gr = Request(prompt, kGenerate);
          gr.set_return_logprobs(true);
          auto gen = c->Generate(gr, absl::Now() + absl::Seconds(30));
          ASSERT_TRUE(gen.ok()) << gen.status();
          EXPECT_EQ(gen->tokens, tokens);
          ASSERT_EQ(gen->logprobs.size(), tokens.size());
          for (size_t t = 1; t < tokens.size(); ++t) {  // token t was sampled from decode row t-1
            const auto lp = LogSoftmaxRow(decode->data.data() + (t - 1) * vocab, vocab);
            EXPECT_NEAR(gen->logprobs[t], lp[static_cast<size_t>(tokens[t])], 1e-3) << "decode step " << t;
          }
          StopGroupProcs(g);
        }
      }
    }
  }
  std::error_code ec;
  if (!::testing::Test::HasFailure()) std::filesystem::remove_all(dir, ec);
}

// sqa-local forms groups: 4 workers as 2 sequence-sharded groups of 2 behind its router.
TEST(LocalTest, FormsGroups) {
  char tmpl[] = "/tmp/sqa-local-groups-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string model = dir + "/model";
  ASSERT_EQ(RunToCompletion({Bin("sqa-mkmodel"), "--preset", "tiny", "--layout", "GQA", "--out", model}, dir + "/mk.log"), 0);
  auto local = ChildProcess::Spawn({Bin("sqa-local"), "--model", model, "--workers", "4", "--group-size", "2", "--shard",
                                    "sequence", "--port", "0", "--port-file", dir + "/local.port", "--metrics-port",
                                    "0", "--threads-per-worker", "1"},
                                   dir + "/local.log");
  ASSERT_TRUE(local.ok()) << local.status();
  auto port = WaitForPortFile(dir + "/local.port", absl::Seconds(90));
  ASSERT_TRUE(port.ok()) << router::TailOfFile(dir + "/local.log");
  const std::vector<int32_t> prompt = {9, 8, 7, 6, 5, 4, 3, 2, 1};
  const std::string out = dir + "/run.json";
  ASSERT_EQ(RunToCompletion({Bin("sqa-run"), "--model", model, "--prompt-tokens", absl::StrJoin(prompt, ","),
                             "--generate", "12", "--tokens-out", out, "--threads", "1"},
                            out + ".log"),
            0);
  std::ifstream in(out);
  const auto expected = nlohmann::json::parse(in)["sequences"][0]["generated"].get<std::vector<int32_t>>();
  auto c = Client(*port);
  for (int i = 0; i < 3; ++i) {
    auto r = c->Generate(Request(prompt, 12), absl::Now() + absl::Seconds(30));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->tokens, expected);
  }
  auto info = c->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_GE(info->pools_size(), 1);
  EXPECT_EQ(info->pools(0).healthy_groups(), 2);
  EXPECT_EQ(info->pools(0).group_size(), 2);
  EXPECT_EQ(info->pools(0).shard_mode(), "sequence");
  (*local)->Signal(SIGTERM);
  const absl::Time end = absl::Now() + absl::Seconds(30);
  while ((*local)->Running() && absl::Now() < end) absl::SleepFor(absl::Milliseconds(20));
  ASSERT_FALSE((*local)->Running());
  EXPECT_TRUE(WIFEXITED((*local)->wait_status()) && WEXITSTATUS((*local)->wait_status()) == 0)
      << router::TailOfFile(dir + "/local.log");
  std::error_code ec;
  if (!::testing::Test::HasFailure()) std::filesystem::remove_all(dir, ec);
}

// sqa-local: serves, stops its workers on SIGTERM, and its workers die with it on SIGKILL.
TEST(LocalTest, ServesAndLeavesNoOrphans) {
  char tmpl[] = "/tmp/sqa-local-test-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string model = dir + "/model";
  ASSERT_EQ(RunToCompletion({Bin("sqa-mkmodel"), "--preset", "tiny", "--out", model}, dir + "/mk.log"), 0);
  for (int signo : {SIGTERM, SIGKILL}) {
    SCOPED_TRACE(signo == SIGTERM ? "SIGTERM" : "SIGKILL");
    const std::string base = absl::StrCat(dir, "/local", signo);
    auto local = ChildProcess::Spawn({Bin("sqa-local"), "--model", model, "--workers", "2", "--port", "0",
                                      "--port-file", base + ".port", "--metrics-port", "0",
                                      "--threads-per-worker", "1"},
                                     base + ".log");
    ASSERT_TRUE(local.ok()) << local.status();
    auto port = WaitForPortFile(base + ".port", absl::Seconds(60));
    ASSERT_TRUE(port.ok()) << router::TailOfFile(base + ".log");
    auto c = Client(*port);
    auto r = c->Generate(Request({4, 5, 6}, 8), absl::Now() + absl::Seconds(30));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->tokens.size(), 8u);
    const std::vector<pid_t> pids = WorkerPids(base + ".log");
    ASSERT_EQ(pids.size(), 2u) << router::TailOfFile(base + ".log");
    for (pid_t p : pids) EXPECT_EQ(kill(p, 0), 0);
    (*local)->Signal(signo);
    const absl::Time end = absl::Now() + absl::Seconds(30);
    while ((*local)->Running() && absl::Now() < end) absl::SleepFor(absl::Milliseconds(20));
    ASSERT_FALSE((*local)->Running());
    if (signo == SIGTERM) {
      EXPECT_TRUE(WIFEXITED((*local)->wait_status()) && WEXITSTATUS((*local)->wait_status()) == 0)
          << router::TailOfFile(base + ".log");
    }
    for (pid_t p : pids) EXPECT_TRUE(ProcessGone(p, absl::Seconds(10))) << "worker " << p << " outlived sqa-local";
  }
  std::error_code ec;
  if (!::testing::Test::HasFailure()) std::filesystem::remove_all(dir, ec);
}

}  // namespace
}  // namespace sqa
