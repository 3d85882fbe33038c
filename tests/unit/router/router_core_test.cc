// Unit tests of the router's parts with fakes: policy, admission, registry, validation.
#include <map>
#include <set>

#include "gtest/gtest.h"
#include "router/admission.h"
#include "router/inference_proxy.h"
#include "router/registry.h"
#include "router/routing_policy.h"
#include "router/validation.h"
#include "tests/unit/router/fake_worker.h"

namespace sqa::router {
namespace {

using testing::FakeFactory;

TEST(RoutingPolicy, SessionAffinityWhileCandidate) {
  auto policy = NewAffinityP2CPolicy({.seed = 7});
  std::vector<Candidate> c = {{"a", 100}, {"b", 0}, {"c", 50}};
  policy->RecordSession("s1", "a");
  for (int i = 0; i < 20; ++i) EXPECT_EQ(policy->Pick({"s1", 10}, c), 0u);
  // "a" left the candidates (unhealthy or excluded): load decides.
  std::vector<Candidate> without_a = {{"b", 0}, {"c", 50}};
  EXPECT_EQ(policy->Pick({"s1", 10}, without_a), 0u);
}

TEST(RoutingPolicy, PowerOfTwoPrefersLessLoaded) {
  auto policy = NewAffinityP2CPolicy({.seed = 1});
  std::vector<Candidate> two = {{"busy", 1000}, {"idle", 0}};
  for (int i = 0; i < 50; ++i) EXPECT_EQ(policy->Pick({"", 1}, two), 1u);
  // With many candidates the most loaded one is never picked (it loses every comparison).
  std::vector<Candidate> many = {{"a", 5}, {"b", 1}, {"c", 9}, {"d", 3}};
  std::map<size_t, int> counts;
  for (int i = 0; i < 400; ++i) counts[policy->Pick({"", 1}, many)]++;
  EXPECT_EQ(counts[2], 0);
  EXPECT_GT(counts[1], counts[0]);
}

TEST(RoutingPolicy, AffinityTableIsBounded) {
  auto policy = NewAffinityP2CPolicy({.max_sessions = 2, .seed = 3});
  policy->RecordSession("s1", "a");
  policy->RecordSession("s2", "a");
  policy->RecordSession("s3", "a");  // evicts s1
  std::vector<Candidate> c = {{"a", 1000}, {"b", 0}};
  EXPECT_EQ(policy->Pick({"s3", 1}, c), 0u);
  EXPECT_EQ(policy->Pick({"s1", 1}, c), 1u);
}

struct Waiter : AdmissionWaiter {
  int admitted = 0;
  void OnAdmitted() override { ++admitted; }
};

TEST(Admission, RunQueueRejectCancelRelease) {
  Admission a(2, 2);
  Waiter w[6];
  EXPECT_EQ(a.Enter(&w[0]), Admission::Result::kRun);
  EXPECT_EQ(a.Enter(&w[1]), Admission::Result::kRun);
  EXPECT_EQ(a.Enter(&w[2]), Admission::Result::kQueued);
  EXPECT_EQ(a.Enter(&w[3]), Admission::Result::kQueued);
  EXPECT_EQ(a.Enter(&w[4]), Admission::Result::kRejected);
  EXPECT_TRUE(a.Cancel(&w[2]));
  EXPECT_FALSE(a.Cancel(&w[2]));
  EXPECT_EQ(a.queued(), 1);
  a.Release();  // slot goes to w[3]
  EXPECT_EQ(w[3].admitted, 1);
  EXPECT_EQ(w[2].admitted, 0);
  EXPECT_EQ(a.running(), 2);
  a.Release();
  a.Release();
  EXPECT_EQ(a.running(), 0);
  EXPECT_EQ(a.Enter(&w[5]), Admission::Result::kRun);
}

TEST(Registry, ParseWorkerList) {
  auto l = ParseWorkerList("a:1, 10.0.0.1:80,[::1]:9000");
  ASSERT_TRUE(l.ok()) << l.status();
  ASSERT_EQ(l->size(), 3u);
  EXPECT_EQ((*l)[2].host, "::1");
  EXPECT_EQ((*l)[2].port, "9000");
  EXPECT_FALSE(ParseWorkerList("").ok());
  EXPECT_FALSE(ParseWorkerList("nohost").ok());
  EXPECT_FALSE(ParseWorkerList("h:0").ok());
  EXPECT_FALSE(ParseWorkerList("h:99999").ok());
}

TEST(Registry, ResolvesLocalhostOnce) {
  auto r = ResolveWithGetaddrinfo({"localhost", "1234"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->size(), 1u);
  auto n = ResolveWithGetaddrinfo({"127.0.0.1", "5"});
  ASSERT_TRUE(n.ok());
  EXPECT_EQ((*n)[0], "127.0.0.1:5");
  EXPECT_FALSE(ResolveWithGetaddrinfo({"no-such-host.invalid", "1"}).ok());
}

TEST(Registry, PoolsHealthAndDnsChanges) {
  auto factory = std::make_shared<FakeFactory>();
  factory->Put(std::make_shared<testing::FakeWorker>("10.0.0.1:1", 4096));
  factory->Put(std::make_shared<testing::FakeWorker>("10.0.0.2:1", 4096));
  factory->Put(std::make_shared<testing::FakeWorker>("10.0.0.3:1", 65536));
  std::vector<std::string> answer = {"10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"};
  std::mutex mu;
  Resolver resolver = [&](const HostPort&) -> absl::StatusOr<std::vector<std::string>> {
    std::lock_guard<std::mutex> l(mu);
    return answer;
  };
  RegistryOptions o;
  o.workers = {{"workers.svc", "1"}};
  o.dns_refresh = absl::ZeroDuration();
  Registry reg(o, factory, resolver);
  int last_healthy = -1;
  reg.SetOnHealthChange([&](int n) { last_healthy = n; });
  reg.RefreshNow(true);
  auto pools = reg.HealthyPools();
  ASSERT_EQ(pools.size(), 2u);
  EXPECT_EQ(pools[0].max_context_tokens, 4096);
  EXPECT_EQ(pools[0].members.size(), 2u);
  EXPECT_EQ(pools[1].max_context_tokens, 65536);
  EXPECT_EQ(last_healthy, 3);

  factory->Get("10.0.0.2:1")->set_serving(false);
  reg.RefreshNow();
  EXPECT_EQ(reg.HealthyCount(), 2);
  EXPECT_EQ(last_healthy, 2);
  factory->Get("10.0.0.2:1")->set_serving(true);
  reg.RefreshNow();
  EXPECT_EQ(reg.HealthyCount(), 3);
  reg.MarkFailed("10.0.0.1:1");
  EXPECT_EQ(reg.HealthyCount(), 2);
  reg.RefreshNow();  // a good probe brings it back
  EXPECT_EQ(reg.HealthyCount(), 3);

  {
    std::lock_guard<std::mutex> l(mu);
    answer = {"10.0.0.3:1"};  // a pod went away
  }
  reg.RefreshNow();
  EXPECT_EQ(reg.HealthyCount(), 1);
  ASSERT_EQ(reg.HealthyPools().size(), 1u);
}

TEST(PickTarget, PoolsByContextAndErrors) {
  auto factory = std::make_shared<FakeFactory>();
  factory->Put(std::make_shared<testing::FakeWorker>("s:1", 1000));
  factory->Put(std::make_shared<testing::FakeWorker>("l:1", 100000));
  RegistryOptions o;
  o.workers = {{"s", "1"}, {"l", "1"}};
  Registry reg(o, factory, [](const HostPort& hp) -> absl::StatusOr<std::vector<std::string>> {
    return std::vector<std::string>{hp.host + ":" + hp.port};
  });
  reg.RefreshNow(true);
  auto policy = NewAffinityP2CPolicy({.seed = 5});
  auto small = PickTarget(reg, *policy, {"", 0}, 500, 100, {});
  ASSERT_TRUE(small.ok());
  EXPECT_EQ((*small)->address, "s:1");
  auto large = PickTarget(reg, *policy, {"", 0}, 5000, 100, {});
  ASSERT_TRUE(large.ok());
  EXPECT_EQ((*large)->address, "l:1");
  // The small pool's only member failed this request: a larger pool may take it.
  auto spill = PickTarget(reg, *policy, {"", 0}, 500, 100, {"s:1"});
  ASSERT_TRUE(spill.ok());
  EXPECT_EQ((*spill)->address, "l:1");
  auto too_big = PickTarget(reg, *policy, {"", 0}, 200000, 16, {});
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(too_big.status().message(),
            "prompt has 200000 tokens (+ max_tokens 16); the largest pool accepts at most 100000");
  auto none = PickTarget(reg, *policy, {"", 0}, 10, 1, {"s:1", "l:1"});
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable);
}

TEST(Validation, RejectsBadRequests) {
  v1::GenerateRequest ok;
  ok.add_prompt_tokens(1);
  ok.set_max_tokens(4);
  EXPECT_TRUE(ValidateGenerateRequest(ok).ok());
  auto bad = [&](auto mutate) {
    v1::GenerateRequest r = ok;
    mutate(r);
    return ValidateGenerateRequest(r).code();
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(bad([](auto& r) { r.clear_prompt_tokens(); }), kInvalid);
  EXPECT_EQ(bad([](auto& r) { r.add_prompt_tokens(-1); }), kInvalid);
  EXPECT_EQ(bad([](auto& r) { r.set_max_tokens(0); }), kInvalid);
  EXPECT_EQ(bad([](auto& r) { r.mutable_sampling()->set_temperature(-0.5f); }), kInvalid);
  EXPECT_EQ(bad([](auto& r) { r.mutable_sampling()->set_top_p(1.5f); }), kInvalid);
  EXPECT_EQ(bad([](auto& r) { r.mutable_sampling()->set_top_p(-0.1f); }), kInvalid);
  EXPECT_EQ(bad([](auto& r) { r.mutable_sampling()->set_top_k(-1); }), kInvalid);
  EXPECT_EQ(bad([](auto& r) { r.add_resume_tokens(3); }), kInvalid);
  v1::EncodeRequest e;
  EXPECT_EQ(ValidateEncodeRequest(e).code(), kInvalid);
}

}  // namespace
}  // namespace sqa::router
