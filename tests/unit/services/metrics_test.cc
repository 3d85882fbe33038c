#include "services/metrics.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include "services/port_file.h"
#include "tests/unit/services/test_util.h"

namespace sqa {
namespace {

TEST(Metrics, ExposerOnPortZeroServesRegistry) {
  auto registry = std::make_shared<prometheus::Registry>();
  auto& fam = prometheus::BuildCounter().Name("sqa_test_events_total").Help("test").Register(*registry);
  auto& c = fam.Add({{kLabelOutcome, "ok"}});
  c.Increment(3);
  MetricsOptions opts;
  opts.port_file = ::testing::TempDir() + "/metrics_test." + std::to_string(::getpid()) + ".port";
  auto server = MetricsServer::Start(opts, registry);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);
  EXPECT_EQ(*ReadPortFile(opts.port_file), (*server)->port());
  auto body = testing::HttpGet("127.0.0.1", (*server)->port(), "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_NE(body->find("sqa_test_events_total{outcome=\"ok\"} 3"), std::string::npos) << *body;
  c.Increment();
  body = testing::HttpGet("127.0.0.1", (*server)->port(), "/metrics");
  EXPECT_NE(body->find("sqa_test_events_total{outcome=\"ok\"} 4"), std::string::npos) << *body;
  std::remove(opts.port_file.c_str());
}

TEST(Metrics, DisabledAndPortInUse) {
  MetricsOptions off;
  off.port = -1;
  auto none = MetricsServer::Start(off, ProcessRegistry());
  ASSERT_TRUE(none.ok());
  EXPECT_EQ((*none)->port(), -1);

  auto first = MetricsServer::Start(MetricsOptions(), ProcessRegistry());
  ASSERT_TRUE(first.ok());
  MetricsOptions same;
  same.port = (*first)->port();
  EXPECT_TRUE(absl::IsUnavailable(MetricsServer::Start(same, ProcessRegistry()).status()));
}

TEST(Metrics, ProcessRegistryIsOne) { EXPECT_EQ(ProcessRegistry().get(), ProcessRegistry().get()); }

void ExpectIncreasing(const std::vector<double>& b) {
  for (size_t i = 1; i < b.size(); ++i) EXPECT_LT(b[i - 1], b[i]) << i;
}

TEST(Metrics, Buckets) {
  const auto lat = LatencyBucketsSeconds();
  ExpectIncreasing(lat);
  EXPECT_DOUBLE_EQ(lat.front(), 0.001);
  EXPECT_DOUBLE_EQ(lat.back(), 600.0);
  const auto step = StepBucketsSeconds();
  ExpectIncreasing(step);
  EXPECT_DOUBLE_EQ(step.front(), 5e-5);
  EXPECT_DOUBLE_EQ(step.back(), 10.0);
  const auto e = ExponentialBuckets(1, 2, 4);
  EXPECT_EQ(e, (std::vector<double>{1, 2, 4, 8}));
  const auto r = ExponentialBucketsRange(0.001, 600, 12);
  ASSERT_EQ(r.size(), 12u);
  ExpectIncreasing(r);
  EXPECT_DOUBLE_EQ(r.back(), 600);
  const auto t = TokenCountBuckets();
  EXPECT_EQ(t.front(), 1);
  EXPECT_EQ(t.back(), 1 << 20);
}

}  // namespace
}  // namespace sqa
