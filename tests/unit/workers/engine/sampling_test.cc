// Sampling: greedy ties, determinism per (seed, step), top-k/top-p limits, logprobs, and the
// sampled distribution against the softmax with a chi-square bound.
#include "workers/engine/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

namespace sqa {
namespace {

double ChiSquare(const std::vector<int>& counts, const std::vector<double>& probs, int n) {
  double chi = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double e = probs[i] * n;
    chi += (counts[i] - e) * (counts[i] - e) / e;
  }
  return chi;
}

std::vector<double> Softmax(const std::vector<float>& logits, double temperature) {
  double m = -INFINITY;
  for (float x : logits) m = std::max(m, static_cast<double>(x));
  std::vector<double> p(logits.size());
  double s = 0;
  for (size_t i = 0; i < logits.size(); ++i) s += p[i] = std::exp((logits[i] - m) / temperature);
  for (double& x : p) x /= s;
  return p;
}

TEST(SamplingTest, GreedyTakesArgmaxAndLowestIdOnTies) {
  std::vector<float> logits = {0.5f, 2.f, -1.f, 2.f, 1.f};
  SamplingParams p;  // temperature 0
  for (uint64_t step = 0; step < 5; ++step) EXPECT_EQ(SampleToken(logits.data(), 5, p, step).token, 1);
  std::vector<float> flat(7, 3.f);
  EXPECT_EQ(SampleToken(flat.data(), 7, p, 0).token, 0);
}

TEST(SamplingTest, LogprobIsLogSoftmaxOfRawLogits) {
  std::vector<float> logits = {0.1f, 1.3f, -0.7f, 2.2f};
  const std::vector<double> probs = Softmax(logits, 1.0);
  SamplingParams p;
  SampledToken t = SampleToken(logits.data(), 4, p, 0);
  EXPECT_EQ(t.token, 3);
  EXPECT_NEAR(t.logprob, std::log(probs[3]), 1e-6);
  p.temperature = 5.f;  // temperature must not change the reported logprob
  for (uint64_t step = 0; step < 20; ++step) {
    SampledToken s = SampleToken(logits.data(), 4, p, step);
    EXPECT_NEAR(s.logprob, std::log(probs[s.token]), 1e-6);
  }
}

TEST(SamplingTest, UniformFromSeedIsDeterministicAndInRange) {
  double sum = 0;
  std::set<double> seen;
  for (uint64_t step = 0; step < 10000; ++step) {
    const double u = UniformFromSeed(42, step);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    EXPECT_EQ(u, UniformFromSeed(42, step));
    sum += u;
    seen.insert(u);
  }
  EXPECT_NEAR(sum / 10000, 0.5, 0.02);
  EXPECT_EQ(seen.size(), 10000u);
  EXPECT_NE(UniformFromSeed(1, 0), UniformFromSeed(2, 0));
  EXPECT_NE(UniformFromSeed(0, 1), UniformFromSeed(1, 0));
}

TEST(SamplingTest, ReproduciblePerSeedAndStep) {
  std::vector<float> logits(50);
  for (int i = 0; i < 50; ++i) logits[i] = std::sin(i * 0.7f);
  SamplingParams p;
  p.temperature = 1.f;
  p.seed = 7;
  std::vector<int32_t> a, b;
  for (uint64_t s = 0; s < 200; ++s) a.push_back(SampleToken(logits.data(), 50, p, s).token);
  for (uint64_t s = 0; s < 200; ++s) b.push_back(SampleToken(logits.data(), 50, p, s).token);
  EXPECT_EQ(a, b);
  // Resuming at step 100 continues identically.
  for (uint64_t s = 100; s < 200; ++s) EXPECT_EQ(SampleToken(logits.data(), 50, p, s).token, a[s]);
  p.seed = 8;
  std::vector<int32_t> c;
  for (uint64_t s = 0; s < 200; ++s) c.push_back(SampleToken(logits.data(), 50, p, s).token);
  EXPECT_NE(a, c);
  EXPECT_GT(std::set<int32_t>(a.begin(), a.end()).size(), 10u);
}

TEST(SamplingTest, TopKOneAndTinyTopPAreGreedy) {
  std::vector<float> logits(100);
  for (int i = 0; i < 100; ++i) logits[i] = std::cos(i * 1.3f) * 3;
  logits[37] = logits[61] = 5.f;  // a tie at the top: lowest id wins
  SamplingParams k1;
  k1.temperature = 1.5f;
  k1.top_k = 1;
  SamplingParams p0;
  p0.temperature = 1.5f;
  p0.top_p = 1e-6f;
  for (uint64_t s = 0; s < 100; ++s) {
    k1.seed = p0.seed = s * 31;
    EXPECT_EQ(SampleToken(logits.data(), 100, k1, s).token, 37);
    EXPECT_EQ(SampleToken(logits.data(), 100, p0, s).token, 37);
  }
}

// The empirical distribution over many steps must match softmax(logits / T): chi-square with 5
// degrees of freedom below 30 (p ~ 1.5e-5 for a correct sampler), and the same counts must be
// far from a wrong distribution (temperature 1 instead of 2), so the bound has teeth.
TEST(SamplingTest, DistributionMatchesSoftmax) {
  const std::vector<float> logits = {1.f, 0.f, 2.f, -1.f, 0.5f, 1.5f};
  const int n = 30000;
  SamplingParams p;
  p.temperature = 2.f;
  p.seed = 12345;
  std::vector<int> counts(6, 0);
  for (int s = 0; s < n; ++s) counts[SampleToken(logits.data(), 6, p, s).token]++;
  const double chi = ChiSquare(counts, Softmax(logits, 2.0), n);
  EXPECT_LT(chi, 30.0);
  EXPECT_GT(ChiSquare(counts, Softmax(logits, 1.0), n), 300.0);
  const std::vector<double> uniform(6, 1.0 / 6);
  EXPECT_GT(ChiSquare(counts, uniform, n), 300.0);
}

TEST(SamplingTest, TopKRestrictsAndRenormalises) {
  const std::vector<float> logits = {0.f, 3.f, 1.f, 2.5f, -2.f};
  SamplingParams p;
  p.temperature = 1.f;
  p.top_k = 2;
  const int n = 20000;
  std::vector<int> counts(5, 0);
  for (int s = 0; s < n; ++s) counts[SampleToken(logits.data(), 5, p, s).token]++;
  EXPECT_EQ(counts[0] + counts[2] + counts[4], 0);
  const double p1 = 1.0 / (1.0 + std::exp(-0.5));
  EXPECT_LT(ChiSquare({counts[1], counts[3]}, {p1, 1 - p1}, n), 20.0);
}

TEST(SamplingTest, TopPKeepsSmallestPrefix) {
  // probabilities 0.5, 0.3, 0.15, 0.05
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  SamplingParams p;
  p.temperature = 1.f;
  p.top_p = 0.75f;  // 0.5 < 0.75 <= 0.8: keeps tokens 0 and 1
  const int n = 20000;
  std::vector<int> counts(4, 0);
  for (int s = 0; s < n; ++s) counts[SampleToken(logits.data(), 4, p, s).token]++;
  EXPECT_EQ(counts[2] + counts[3], 0);
  EXPECT_LT(ChiSquare({counts[0], counts[1]}, {0.625, 0.375}, n), 20.0);
  p.top_p = 0.85f;  // now token 2 is in, token 3 never
  counts.assign(4, 0);
  for (int s = 0; s < n; ++s) counts[SampleToken(logits.data(), 4, p, s).token]++;
  EXPECT_GT(counts[2], 0);
  EXPECT_EQ(counts[3], 0);
}

// The sampler sorts only the prefix it walks; it must pick exactly what the plain definition
// (sort all candidates by logit desc / id asc, keep top-k, keep the smallest prefix reaching
// top_p, draw u * kept mass along that order) picks.
int32_t ReferenceSample(const std::vector<float>& logits, const SamplingParams& p, uint64_t step) {
  std::vector<int32_t> ids(logits.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  std::sort(ids.begin(), ids.end(),
            [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  size_t k = p.top_k > 0 ? std::min<size_t>(p.top_k, ids.size()) : ids.size();
  const double top = logits[ids[0]];
  std::vector<double> pr(k);
  for (size_t i = 0; i < k; ++i) pr[i] = std::exp((logits[ids[i]] - top) / static_cast<double>(p.temperature));
  // Total mass summed in id order (the sampler's order) over the same candidate set.
  std::vector<int32_t> cand(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k));
  std::sort(cand.begin(), cand.end());
  double total = 0;
  for (int32_t c : cand) total += std::exp((logits[c] - top) / static_cast<double>(p.temperature));
  if (p.top_k > 0) {  // with top-k the sampler sums in sorted order
    total = 0;
    for (size_t i = 0; i < k; ++i) total += pr[i];
  }
  size_t keep = k;
  double kept = total;
  if (p.top_p < 1.f) {
    double cum = 0;
    for (size_t i = 0; i < k; ++i) {
      cum += pr[i];
      if (cum >= p.top_p * total) {
        keep = i + 1;
        break;
      }
    }
    kept = cum;
  }
  const double u = UniformFromSeed(p.seed, step) * kept;
  double cum = 0;
  for (size_t i = 0; i < keep; ++i) {
    cum += pr[i];
    if (u < cum) return ids[i];
  }
  return ids[keep - 1];
}

TEST(SamplingTest, MatchesFullSortDefinition) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 3.f);
  std::vector<float> logits(5000);
  for (float& x : logits) x = std::round(nd(rng) * 4) / 4;  // many exact ties
  struct P {
    float t;
    int32_t k;
    float p;
  };
  int differing_from_greedy = 0;
  for (const P& c : {P{1.f, 0, 1.f}, P{0.7f, 0, 0.9f}, P{2.f, 0, 0.5f}, P{1.f, 50, 1.f}, P{1.3f, 200, 0.8f},
                     P{5.f, 0, 1.f}}) {
    SamplingParams sp;
    sp.temperature = c.t;
    sp.top_k = c.k;
    sp.top_p = c.p;
    sp.seed = 99;
    for (uint64_t step = 0; step < 150; ++step) {
      const int32_t got = SampleToken(logits.data(), 5000, sp, step).token;
      ASSERT_EQ(got, ReferenceSample(logits, sp, step)) << "t=" << c.t << " k=" << c.k << " p=" << c.p;
      differing_from_greedy += got != SampleToken(logits.data(), 5000, SamplingParams{}, step).token;
    }
  }
  EXPECT_GT(differing_from_greedy, 600) << "of 900: " << differing_from_greedy;  // real draws, not argmax  // the comparison is over real draws, not argmax
}

TEST(SamplingTest, ValidateSamplingParams) {
  SamplingParams ok;
  EXPECT_TRUE(ValidateSamplingParams(ok).ok());
  SamplingParams p;
  p.temperature = -1.f;
  EXPECT_EQ(ValidateSamplingParams(p).code(), absl::StatusCode::kInvalidArgument);
  p = {};
  p.temperature = NAN;
  EXPECT_FALSE(ValidateSamplingParams(p).ok());
  p = {};
  p.top_k = -3;
  EXPECT_FALSE(ValidateSamplingParams(p).ok());
  p = {};
  p.top_p = 0.f;
  EXPECT_FALSE(ValidateSamplingParams(p).ok());
  p.top_p = 1.5f;
  EXPECT_FALSE(ValidateSamplingParams(p).ok());
  p.top_p = 1.f;
  EXPECT_TRUE(ValidateSamplingParams(p).ok());
}

}  // namespace
}  // namespace sqa
