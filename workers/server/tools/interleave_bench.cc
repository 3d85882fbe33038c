// sqa-worker-bench: measures what continuous batching promises. K running decode streams, then one
// long prompt arrives; reports the decodes' inter-token gaps before and during the long prefill,
// the step times, and the prefill's time and throughput. Runs the real Scheduler on the real
// Engine (no gRPC), so the numbers are the worker's own.
//   sqa-worker-bench --model DIR [--prompt 8192] [--decoders 4] [--budget 512] [--device cpu]
//                    [--threads 0] [--kv-cache-mb 1024] [--block-size 64]
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "workers/engine/backend.h"
#include "workers/engine/engine.h"
#include "workers/engine/model/model.h"
#include "workers/server/scheduler.h"

namespace {

double Pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * static_cast<double>(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
  using namespace sqa;
  std::map<std::string, std::string> f = {{"model", ""},          {"prompt", "8192"},  {"decoders", "4"},
                                          {"budget", "512"},      {"device", "cpu"},   {"threads", "0"},
                                          {"kv-cache-mb", "1024"}, {"block-size", "64"}};
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k.rfind("--", 0) != 0 || !f.count(k.substr(2))) {
      std::fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
    f[k.substr(2)] = argv[i + 1];
  }
  if (f["model"].empty()) {
    std::fprintf(stderr, "usage: sqa-worker-bench --model DIR [--prompt N] [--decoders K] [--budget T] "
                         "[--device cpu|cuda] [--threads T] [--kv-cache-mb M] [--block-size B]\n");
    return 2;
  }
  auto num = [&](const char* k) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(f[k], &v)) {
      std::fprintf(stderr, "--%s wants an integer\n", k);
      std::exit(2);
    }
    return v;
  };
  auto model = Model::Load(f["model"]);
  if (!model.ok()) return std::fprintf(stderr, "%s\n", model.status().ToString().c_str()), 1;
  BackendOptions bo;
  bo.device = *ParseDeviceKind(f["device"]);
  bo.num_threads = static_cast<int>(num("threads"));
  auto backend = CreateBackend(bo);
  if (!backend.ok()) return std::fprintf(stderr, "%s\n", backend.status().ToString().c_str()), 1;
  EngineOptions eo;
  eo.block_size = num("block-size");
  eo.kv_cache_bytes = num("kv-cache-mb") << 20;
  eo.max_chunk_tokens = num("budget");
  auto engine = Engine::Create(std::shared_ptr<const Model>(std::move(*model)), std::move(*backend), eo);
  if (!engine.ok()) return std::fprintf(stderr, "%s\n", engine.status().ToString().c_str()), 1;
  const int64_t vocab = (*engine)->config().vocab_size;

  std::mutex mu;
  std::vector<worker::StepInfo> steps;
  std::vector<absl::Time> step_end;
  worker::SchedulerOptions so;
  so.max_batch_tokens = num("budget");
  so.on_step = [&](const worker::StepInfo& s) {
    std::lock_guard<std::mutex> l(mu);
    steps.push_back(s);
    step_end.push_back(absl::Now());
  };
  auto sched = worker::Scheduler::Create(std::move(*engine), so, nullptr);
  if (!sched.ok()) return std::fprintf(stderr, "%s\n", sched.status().ToString().c_str()), 1;
  (*sched)->Start();

  const int decoders = static_cast<int>(num("decoders"));
  const int64_t n = num("prompt");
  std::vector<std::vector<absl::Time>> token_times(decoders);
  std::atomic<int> done{0};
  std::vector<worker::RequestId> ids;
  for (int d = 0; d < decoders; ++d) {
    worker::GenerateParams p;
    for (int i = 0; i < 16; ++i) p.prompt.push_back(static_cast<int32_t>((d * 31 + i * 7) % vocab));
    // Long enough to outlast the prefill, small enough that all reservations fit the KV cache
    // together with the long prompt (admission is FIFO by reserved blocks).
    const worker::LoadSnapshot l = (*sched)->Load();
    const int64_t kv_tokens = l.kv_blocks_total * l.kv_block_size;
    int64_t per = (kv_tokens - n - 2 * l.kv_block_size * (decoders + 1)) / decoders - 16;
    const int64_t ctx = (*sched)->max_context_tokens();
    if (ctx > 0) per = std::min<int64_t>(per, ctx - 16);
    if (per < 64) {
      std::fprintf(stderr, "KV cache too small for %d decoders next to a %lld-token prompt; raise --kv-cache-mb\n",
                   decoders, static_cast<long long>(n));
      return 1;
    }
    p.max_tokens = static_cast<int32_t>(std::min<int64_t>(per, 1 << 30));
    worker::RequestCallbacks cb;
    cb.on_token = [&, d](int32_t, float) {
      std::lock_guard<std::mutex> l(mu);
      token_times[d].push_back(absl::Now());
    };
    cb.on_done = [&](const absl::Status&, worker::RequestResult) { ++done; };
    auto id = (*sched)->SubmitGenerate(std::move(p), absl::InfiniteFuture(), cb);
    if (!id.ok()) return std::fprintf(stderr, "%s\n", id.status().ToString().c_str()), 1;
    ids.push_back(*id);
  }
  absl::SleepFor(absl::Seconds(1));  // decodes running: baseline window
  const absl::Time long_start = absl::Now();
  worker::GenerateParams lp;
  for (int64_t i = 0; i < n; ++i) lp.prompt.push_back(static_cast<int32_t>((i * 2654435761u) % vocab));
  lp.max_tokens = 1;
  absl::Notification long_done;
  worker::RequestResult long_result;
  worker::RequestCallbacks lcb;
  lcb.on_done = [&](const absl::Status& st, worker::RequestResult r) {
    if (!st.ok()) std::fprintf(stderr, "long request: %s\n", st.ToString().c_str());
    long_result = std::move(r);
    long_done.Notify();
  };
  auto lid = (*sched)->SubmitGenerate(std::move(lp), absl::InfiniteFuture(), lcb);
  if (!lid.ok()) return std::fprintf(stderr, "%s\n", lid.status().ToString().c_str()), 1;
  long_done.WaitForNotification();
  const absl::Time long_end = absl::Now();
  for (auto id : ids) (*sched)->Cancel(id);
  (*sched)->WaitIdle(absl::Seconds(30));
  (*sched)->Stop();

  std::vector<double> gap_before, gap_during, step_before, step_during;
  int chunks = 0;
  int64_t max_step_tokens = 0;
  for (int d = 0; d < decoders; ++d)
    for (size_t i = 1; i < token_times[d].size(); ++i) {
      const double g = absl::ToDoubleMilliseconds(token_times[d][i] - token_times[d][i - 1]);
      if (token_times[d][i] <= long_start) gap_before.push_back(g);
      else if (token_times[d][i - 1] >= long_start && token_times[d][i] <= long_end) gap_during.push_back(g);
    }
  for (size_t i = 0; i < steps.size(); ++i) {
    bool has_long = false;
    for (const auto& p : steps[i].parts) has_long |= (p.request == *lid && !p.decode);
    max_step_tokens = std::max(max_step_tokens, steps[i].total_tokens);
    (step_end[i] <= long_start ? step_before : step_during).push_back(steps[i].seconds * 1e3);
    if (has_long) {
      ++chunks;
    }
  }
  const double prefill_s = absl::ToDoubleSeconds(long_end - long_start);
  std::printf("model %s, %d decode streams, budget %lld tokens/step, long prompt %lld tokens\n", f["model"].c_str(),
              decoders, static_cast<long long>(num("budget")), static_cast<long long>(n));
  std::printf("before the long prompt: inter-token gap p50 %.2f ms  max %.2f ms   step p50 %.2f ms\n",
              Pct(gap_before, 50), Pct(gap_before, 100), Pct(step_before, 50));
  std::printf("during its prefill:     inter-token gap p50 %.2f ms  max %.2f ms   step p50 %.2f ms  max %.2f ms\n",
              Pct(gap_during, 50), Pct(gap_during, 100), Pct(step_during, 50), Pct(step_during, 100));
  std::printf("long prompt: %d prefill chunks, time to first token %.2f s, %.0f prompt tokens/s; "
              "max tokens in one step %lld; decode tokens during prefill %zu\n",
              chunks, prefill_s, static_cast<double>(n) / prefill_s, static_cast<long long>(max_step_tokens),
              gap_during.size());
  return 0;
}
