// sqa-group-bench: prefill of one long prompt on a group of P GPUs (one thread and one CUDA
// backend per GPU; Gloo carries the step plans, NCCL the activations) in heads or sequence mode,
// against the same prompt on one GPU. Prints one JSON line per run: time, tokens/s, time spent in
// collectives, and the last-position logits' relative difference to the single-GPU run.
//
//   sqa-group-bench --model DIR --tokens 32768,131072 --world 2 --modes heads,sequence
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "workers/engine/engine.h"
#include "workers/engine/sampling.h"
#include "workers/engine/shard/nccl_communicator.h"

namespace sqa {
namespace {

std::vector<int32_t> Prompt(int64_t n, int64_t vocab) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[static_cast<size_t>(i)] = static_cast<int32_t>(UniformFromSeed(11, static_cast<uint64_t>(i)) * static_cast<double>(vocab));
  return t;
}

std::unique_ptr<Engine> Make(std::shared_ptr<const Model> model, int gpu, int64_t tokens, GroupOptions g) {
  BackendOptions bo;
  bo.device = DeviceKind::kCuda;
  bo.gpu_index = gpu;
  auto be = CreateBackend(bo);
  if (!be.ok()) {
    std::fprintf(stderr, "backend: %s\n", std::string(be.status().message()).c_str());
    return nullptr;
  }
  EngineOptions eo;
  eo.block_size = 64;
  eo.num_kv_blocks = tokens / 64 + 64;
  eo.max_chunk_tokens = 16384;
  eo.group = g;
  auto e = Engine::Create(std::move(model), std::move(be).value(), eo);
  if (!e.ok()) {
    std::fprintf(stderr, "engine: %s\n", std::string(e.status().message()).c_str());
    return nullptr;
  }
  return std::move(e).value();
}

struct Result {
  double seconds = 0;
  std::vector<float> logits;
  double comm_seconds = 0;
  double comm_bytes = 0;
};

// Runs a warm-up prefill and then the timed one on rank 0 (or the single engine).
Result Run(Engine& e, const std::vector<int32_t>& prompt) {
  Result r;
  {
    const SeqId w = e.NewSequence();
    std::vector<int32_t> warm(prompt.begin(), prompt.begin() + std::min<size_t>(prompt.size(), 4096));
    (void)e.Prefill(w, warm, false);
    e.Release(w);
  }
  const SeqId s = e.NewSequence();
  const auto t0 = std::chrono::steady_clock::now();
  auto l = e.Prefill(s, prompt, false);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (l.ok()) r.logits = l->data;
  else std::fprintf(stderr, "prefill: %s\n", std::string(l.status().message()).c_str());
  e.Release(s);
  return r;
}

double RelDiff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size() || a.empty()) return -1;
  double m = 0, e = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    m = std::max(m, std::abs(static_cast<double>(b[i])));
    e = std::max(e, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  return e / m;
}

}  // namespace
}  // namespace sqa

int main(int argc, char** argv) {
  using namespace sqa;
  std::string model_dir, tokens_s = "32768", modes_s = "heads,sequence";
  int world = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string f = argv[i], v = argv[i + 1];
    if (f == "--model") model_dir = v;
    else if (f == "--tokens") tokens_s = v;
    else if (f == "--world") world = std::atoi(v.c_str());
    else if (f == "--modes") modes_s = v;
    else {
      std::fprintf(stderr, "unknown flag %s\n", f.c_str());
      return 2;
    }
  }
  auto loaded = Model::Load(model_dir);
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", std::string(loaded.status().message()).c_str());
    return 1;
  }
  std::shared_ptr<const Model> model = std::move(loaded).value();
  for (absl::string_view ts : absl::StrSplit(tokens_s, ',')) {
    int64_t n = 0;
    if (!absl::SimpleAtoi(ts, &n)) return 2;
    const std::vector<int32_t> prompt = Prompt(n, model->config().vocab_size);
    Result single;
    {
      auto e = Make(model, 0, n, {});
      if (!e) return 1;
      single = Run(*e, prompt);
    }
    std::printf("{\"mode\":\"single\",\"gpus\":1,\"tokens\":%lld,\"seconds\":%.4f,\"tokens_per_s\":%.0f}\n",
                static_cast<long long>(n), single.seconds, n / single.seconds);
    std::fflush(stdout);
    for (absl::string_view ms : absl::StrSplit(modes_s, ',')) {
      auto mode = ParseShardMode(std::string(ms));
      if (!mode.ok()) return 2;
      InProcessStore store;
      Result group;
      std::vector<std::thread> ranks;
      for (int r = 0; r < world; ++r) {
        ranks.emplace_back([&, r] {
          GlooOptions go;
          go.rank = r;
          go.world_size = world;
          go.timeout = std::chrono::milliseconds(120000);
          go.prefix = std::string(ms) + std::to_string(n);
          auto control = CreateGlooCommunicator(go, store);
          NcclOptions no;
          no.rank = r;
          no.world_size = world;
          no.gpu_index = r;
          no.timeout = std::chrono::milliseconds(120000);
          no.prefix = go.prefix;
          auto data = CreateNcclCommunicator(no, store);
          if (!control.ok() || !data.ok()) {
            std::fprintf(stderr, "rank %d: group: %s %s\n", r, std::string(control.status().message()).c_str(),
                         std::string(data.status().message()).c_str());
            return;
          }
          GroupOptions g;
          g.mode = *mode;
          g.control = control->get();
          g.data = data->get();
          auto e = Make(model, r, n, g);
          if (!e) return;
          if (r == 0) {
            group = Run(*e, prompt);
            for (const Communicator* c : {g.control, g.data}) {
              for (const auto* s : {&c->stats().all_reduce, &c->stats().all_gather, &c->stats().send_recv}) {
                group.comm_seconds += s->seconds;
                group.comm_bytes += static_cast<double>(s->bytes);
              }
            }
            (void)e->StopGroup();
          } else {
            absl::Status st = e->ServeFollower();
            if (!st.ok()) std::fprintf(stderr, "rank %d: %s\n", r, std::string(st.message()).c_str());
          }
        });
      }
      for (auto& t : ranks) t.join();
      std::printf(
          "{\"mode\":\"%s\",\"gpus\":%d,\"tokens\":%lld,\"seconds\":%.4f,\"tokens_per_s\":%.0f,"
          "\"efficiency\":%.3f,\"rank0_collective_seconds\":%.4f,\"rank0_collective_bytes\":%.0f,"
          "\"last_logits_rel_diff\":%.5f}\n",
          std::string(ms).c_str(), world, static_cast<long long>(n), group.seconds, n / group.seconds,
          single.seconds / (world * group.seconds), group.comm_seconds, group.comm_bytes,
          RelDiff(group.logits, single.logits));
      std::fflush(stdout);
    }
  }
  return 0;
}
