#include "workers/engine/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"

namespace sqa {
namespace {

inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// log-softmax normaliser of the raw logits: max + log(sum exp(x - max)), in double.
double LogSumExp(const float* logits, int64_t vocab) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < vocab; ++i) {
    if (logits[i] > m) m = logits[i];
  }
  if (!std::isfinite(m)) return m;
  double s = 0;
  for (int64_t i = 0; i < vocab; ++i) s += std::exp(static_cast<double>(logits[i]) - m);
  return m + std::log(s);
}

int32_t Argmax(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i) {
    if (logits[i] > logits[best] || (std::isnan(logits[best]) && !std::isnan(logits[i]))) best = i;
  }
  return static_cast<int32_t>(best);
}

}  // namespace

double UniformFromSeed(uint64_t seed, uint64_t step) {
  const uint64_t h = SplitMix64(SplitMix64(seed) ^ (step * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull));
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0) {
    return absl::InvalidArgumentError(absl::StrCat("temperature must be a finite number >= 0, got ", p.temperature));
  }
  if (p.top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", p.top_k));
  if (!(p.top_p > 0.f && p.top_p <= 1.f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", p.top_p));
  }
  return absl::OkStatus();
}

SampledToken SampleToken(const float* logits, int64_t vocab, const SamplingParams& params, uint64_t step) {
  SampledToken out;
  if (vocab <= 0) return out;
  const double lse = LogSumExp(logits, vocab);
  auto logprob = [&](int32_t t) {
    return static_cast<float>(std::isfinite(lse) ? static_cast<double>(logits[t]) - lse : 0.0);
  };
  if (params.temperature <= 0.f || !std::isfinite(lse)) {
    out.token = Argmax(logits, vocab);
    out.logprob = logprob(out.token);
    return out;
  }
  // Candidates ordered by logit (descending), ties by id (ascending); NaN logits never chosen.
  // Only as much of the order as the walk below needs is sorted (a prefix, grown on demand): with
  // a large vocabulary and no top-k a full sort per token would dominate a GPU decode step.
  thread_local std::vector<int32_t> ids;
  ids.clear();
  for (int64_t i = 0; i < vocab; ++i) {
    if (!std::isnan(logits[i])) ids.push_back(static_cast<int32_t>(i));
  }
  auto better = [logits](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  size_t k = ids.size();
  size_t sorted = 0;
  auto ensure_sorted = [&](size_t m) {
    m = std::min(m, k);
    if (m <= sorted) return;
    m = std::max(m, std::min(k, std::max<size_t>(64, sorted * 8)));
    std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(m), ids.end(), better);
    sorted = m;
  };
  if (params.top_k > 0 && static_cast<size_t>(params.top_k) < k) {
    k = static_cast<size_t>(params.top_k);
    std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k), ids.end(), better);
    ids.resize(k);
    sorted = k;
  }
  // Probabilities under the temperature over the candidates (unnormalised, relative to the top).
  const double inv_t = 1.0 / static_cast<double>(params.temperature);
  double top = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < k; ++i) top = std::max(top, static_cast<double>(logits[ids[i]]));
  auto prob = [&](size_t i) { return std::exp((static_cast<double>(logits[ids[i]]) - top) * inv_t); };
  double total = 0;
  for (size_t i = 0; i < k; ++i) total += prob(i);
  // Smallest prefix whose probability reaches top_p.
  size_t keep = k;
  double kept = total;
  if (params.top_p < 1.f) {
    const double target = static_cast<double>(params.top_p) * total;
    double cum = 0;
    for (size_t i = 0; i < k; ++i) {
      ensure_sorted(i + 1);
      cum += prob(i);
      if (cum >= target) {
        keep = i + 1;
        break;
      }
    }
    kept = cum;
  }
  const double u = UniformFromSeed(params.seed, step) * kept;
  double cum = 0;
  size_t pick = keep - 1;
  for (size_t i = 0; i < keep; ++i) {
    ensure_sorted(i + 1);
    cum += prob(i);
    if (u < cum) {
      pick = i;
      break;
    }
  }
  ensure_sorted(pick + 1);
  out.token = ids[pick];
  out.logprob = logprob(out.token);
  return out;
}

}  // namespace sqa
