// sqa-load: concurrent Generate load over the public API (or a worker directly with --service
// worker); prints p50/p90/p99 of time to first token, inter-token latency and end-to-end latency,
// and requests/s. Bounded in requests (--requests) and time (--max-seconds).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "services/client/client.h"
#include "services/client/flag_names.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "Server address host:port");
ABSL_FLAG(std::string, service, "inference", "inference (router) or worker (a worker directly)");
ABSL_FLAG(int, concurrency, 4, "Requests in flight at once");
ABSL_FLAG(int, requests, 100, "Requests in total");
ABSL_FLAG(int, warmup, 0, "Requests sent (and not measured) before the measured ones");
ABSL_FLAG(int64_t, prompt_tokens, 32, "Synthetic prompt length");
ABSL_FLAG(int, max_tokens, 16, "Tokens generated per request");
ABSL_FLAG(double, temperature, 0.0, "Sampling temperature (0 = greedy)");
ABSL_FLAG(double, max_seconds, 300, "Stop sending new requests after this long");
ABSL_FLAG(int64_t, deadline_ms, 0, "Per-request deadline (0 = none)");
ABSL_FLAG(bool, json, false, "Print one JSON object");

namespace {

struct Sample {
  double ttft = 0;
  double e2e = 0;
  std::vector<double> itl;
  int tokens = 0;
};

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = q * (v.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - lo);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "sqa-load --target host:port --concurrency C --requests N [--prompt-tokens P] [--max-tokens M] [--json]");
  sqa::client::DashedFlagsToUnderscores(argc, argv);
  absl::ParseCommandLine(argc, argv);
  const int concurrency = absl::GetFlag(FLAGS_concurrency);
  const int requests = absl::GetFlag(FLAGS_requests);
  const int warmup = absl::GetFlag(FLAGS_warmup);
  if (concurrency <= 0 || requests <= 0 || warmup < 0 || absl::GetFlag(FLAGS_prompt_tokens) <= 0 ||
      absl::GetFlag(FLAGS_max_tokens) <= 0) {
    std::fprintf(stderr, "sqa-load: --concurrency, --requests, --prompt-tokens, --max-tokens must be > 0\n");
    return 2;
  }
  sqa::client::ClientOptions o;
  o.target = absl::GetFlag(FLAGS_target);
  o.service = absl::GetFlag(FLAGS_service);
  auto client = sqa::client::InferenceClient::Create(o);
  if (!client.ok()) {
    std::fprintf(stderr, "sqa-load: %s\n", std::string(client.status().message()).c_str());
    return 2;
  }
  auto info = (*client)->GetModelInfo();
  if (!info.ok()) {
    std::fprintf(stderr, "sqa-load: GetModelInfo on %s failed: %s\n", o.target.c_str(),
                 std::string(info.status().message()).c_str());
    return 1;
  }

  auto make_request = [&](int i) {
    sqa::v1::GenerateRequest req;
    auto prompt = sqa::client::SyntheticPrompt(absl::GetFlag(FLAGS_prompt_tokens), info->vocab_size(), i + 1);
    req.mutable_prompt_tokens()->Assign(prompt.begin(), prompt.end());
    req.set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
    req.mutable_sampling()->set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
    req.mutable_sampling()->set_seed(i);
    return req;
  };
  auto deadline = [&] {
    const int64_t ms = absl::GetFlag(FLAGS_deadline_ms);
    return ms > 0 ? absl::Now() + absl::Milliseconds(ms) : absl::InfiniteFuture();
  };

  // Warm-up: connections, caches, the workers' first steps.
  {
    std::atomic<int> next{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < std::min(concurrency, std::max(warmup, 1)); ++t) {
      threads.emplace_back([&] {
        for (int i = next++; i < warmup; i = next++) (void)(*client)->Generate(make_request(i), deadline());
      });
    }
    for (auto& th : threads) th.join();
  }

  std::mutex mu;
  std::vector<Sample> samples;
  absl::flat_hash_map<std::string, int> errors;
  std::atomic<int> next{0};
  const absl::Time start = absl::Now();
  const absl::Time stop_sending = start + absl::Seconds(absl::GetFlag(FLAGS_max_seconds));
  std::vector<std::thread> threads;
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&] {
      for (int i = next++; i < requests && absl::Now() < stop_sending; i = next++) {
        auto r = (*client)->Generate(make_request(warmup + i), deadline());
        std::lock_guard<std::mutex> lock(mu);
        if (!r.ok()) {
          errors[absl::StatusCodeToString(r.status().code())]++;
          continue;
        }
        Sample s;
        s.ttft = r->time_to_first_token_seconds;
        s.e2e = r->total_seconds;
        s.tokens = static_cast<int>(r->tokens.size());
        for (size_t k = 1; k < r->token_arrival_seconds.size(); ++k) {
          s.itl.push_back(r->token_arrival_seconds[k] - r->token_arrival_seconds[k - 1]);
        }
        samples.push_back(std::move(s));
      }
    });
  }
  for (auto& th : threads) th.join();
  const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);

  std::vector<double> ttft, e2e, itl;
  int64_t tokens = 0;
  for (const Sample& s : samples) {
    ttft.push_back(s.ttft);
    e2e.push_back(s.e2e);
    itl.insert(itl.end(), s.itl.begin(), s.itl.end());
    tokens += s.tokens;
  }
  int failed = 0;
  for (const auto& [k, v] : errors) failed += v;
  const double rps = elapsed > 0 ? samples.size() / elapsed : 0;
  const double tps = elapsed > 0 ? tokens / elapsed : 0;
  auto pct = [](const std::vector<double>& v) {
    return nlohmann::json{{"p50", Percentile(v, 0.5)}, {"p90", Percentile(v, 0.9)},
                          {"p99", Percentile(v, 0.99)}, {"mean", v.empty() ? 0.0 : [&] {
                            double s = 0;
                            for (double x : v) s += x;
                            return s / v.size();
                          }()}};
  };
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json j;
    j["target"] = o.target;
    j["service"] = o.service;
    j["concurrency"] = concurrency;
    j["prompt_tokens"] = absl::GetFlag(FLAGS_prompt_tokens);
    j["max_tokens"] = absl::GetFlag(FLAGS_max_tokens);
    j["completed"] = samples.size();
    j["failed"] = failed;
    j["errors"] = errors;
    j["elapsed_seconds"] = elapsed;
    j["requests_per_second"] = rps;
    j["tokens_per_second"] = tps;
    j["time_to_first_token_seconds"] = pct(ttft);
    j["inter_token_latency_seconds"] = pct(itl);
    j["e2e_latency_seconds"] = pct(e2e);
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("target %s (%s), concurrency %d, prompt %ld tokens, max_tokens %d\n", o.target.c_str(),
                o.service.c_str(), concurrency, static_cast<long>(absl::GetFlag(FLAGS_prompt_tokens)),
                absl::GetFlag(FLAGS_max_tokens));
    std::printf("completed %zu, failed %d in %.2f s: %.1f requests/s, %.0f tokens/s\n", samples.size(),
                failed, elapsed, rps, tps);
    for (const auto& [k, v] : errors) std::printf("  errors %s: %d\n", k.c_str(), v);
    std::printf("%-26s %10s %10s %10s\n", "latency (ms)", "p50", "p90", "p99");
    auto row = [](const char* name, const std::vector<double>& v) {
      std::printf("%-26s %10.3f %10.3f %10.3f\n", name, 1e3 * Percentile(v, 0.5), 1e3 * Percentile(v, 0.9),
                  1e3 * Percentile(v, 0.99));
    };
    row("time to first token", ttft);
    row("inter-token latency", itl);
    row("end-to-end", e2e);
  }
  return failed > 0 && samples.empty() ? 1 : 0;
}
