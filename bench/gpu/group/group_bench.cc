// sqa-group-bench: prefill of one long prompt on a group of P GPUs (one thread and one CUDA
// backend per GPU; Gloo carries the step plans, NCCL the activations) in heads or sequence mode,
// against the same prompt on one GPU. Prints one JSON line per run: time, tokens/s, efficiency,
// every rank's attention, exposed-communication, step and collective seconds, the attention
// balance (max / mean over ranks), and the last-position logits' relative difference to the
// single-GPU run.
//
//   sqa-group-bench --model DIR --tokens 32768,131072 --world 2 --modes heads,sequence
//
// With --longest, it instead searches for the longest prompt (a multiple of --step up to
// --max-tokens) whose prefill fits on P GPUs in each mode (one GPU when --world 1), the KV cache of
// every probe sized for exactly that prompt (capped by --max-kv-bytes per rank when given) and the
// rest of the memory left to the activations; probes skip the attention arithmetic (see
// group_run.h) and print one JSON line per mode. --device cpu runs either on the CPU backend with
// Gloo for everything (tests).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/gpu/group/group_run.h"
#include "nlohmann/json.hpp"
#ifdef SQA_HAVE_NCCL
#include "workers/engine/shard/nccl_communicator.h"
#endif
#ifdef SQA_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace sqa {
namespace {

double RelDiff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size() || a.empty()) return -1;
  double m = 0, e = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    m = std::max(m, std::abs(static_cast<double>(b[i])));
    e = std::max(e, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  return e / m;
}

// Gives the memory an engine's activations took from the device's stream-ordered pool back to the
// device, so that the next run's KV cache (plain cudaMalloc) can have it.
void ReleaseGpuPool(int gpu) {
#ifdef SQA_HAVE_CUDA
  if (cudaSetDevice(gpu) != cudaSuccess) return;
  cudaDeviceSynchronize();
  cudaMemPool_t pool = nullptr;
  if (cudaDeviceGetDefaultMemPool(&pool, gpu) == cudaSuccess) cudaMemPoolTrimTo(pool, 0);
  cudaGetLastError();
#else
  (void)gpu;
#endif
}

int64_t FreeGpuBytes(int gpu) {
#ifdef SQA_HAVE_CUDA
  size_t free_b = 0, total_b = 0;
  if (cudaSetDevice(gpu) != cudaSuccess || cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return static_cast<int64_t>(free_b);
#else
  (void)gpu;
  return -1;
#endif
}

nlohmann::json RankFields(const bench::RunReport& r) {
  nlohmann::json j;
  std::vector<double> attn, exposed, step, comm;
  for (const bench::RankReport& k : r.ranks) {
    attn.push_back(k.timings.attention_seconds);
    exposed.push_back(k.timings.exposed_comm_seconds);
    step.push_back(k.timings.step_seconds);
    comm.push_back(k.comm_seconds);
  }
  j["rank_attention_seconds"] = attn;
  j["rank_exposed_comm_seconds"] = exposed;
  j["rank_step_seconds"] = step;
  j["rank_collective_seconds"] = comm;
  j["attention_balance"] = r.attention_balance();
  return j;
}

void Print(const nlohmann::json& j) {
  std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  std::fflush(stdout);
}

int Usage(const char* why) {
  std::fprintf(stderr,
               "%s\nusage: sqa-group-bench --model DIR [--tokens N,N] [--world P] [--modes heads,sequence]\n"
               "         [--warmup N] [--chunk N] [--device cuda|cpu] [--threads N] [--timeout-s S]\n"
               "       sqa-group-bench --longest --model DIR [--world P] [--modes ...] [--step N] [--max-tokens N]\n"
               "         [--max-kv-bytes B]\n",
               why);
  return 2;
}

}  // namespace
}  // namespace sqa

int main(int argc, char** argv) {
  using namespace sqa;
  std::string model_dir, tokens_s = "32768", modes_s = "heads,sequence", device_s = "cuda";
  int world = 2, threads = 0;
  int64_t warmup = 4096, chunk = 16384, step = 16384, max_tokens = 0, max_kv_bytes = 0, timeout_s = 120;
  bool longest = false;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "--longest") {
      longest = true;
      continue;
    }
    if (i + 1 >= argc) return Usage(("missing value for " + f).c_str());
    const std::string v = argv[++i];
    auto num = [&](int64_t* out) { return absl::SimpleAtoi(v, out); };
    int64_t n = 0;
    bool ok = true;
    if (f == "--model") model_dir = v;
    else if (f == "--tokens") tokens_s = v;
    else if (f == "--modes") modes_s = v;
    else if (f == "--device") device_s = v;
    else if (f == "--world") ok = num(&n) && n >= 1 && n <= 64, world = static_cast<int>(n);
    else if (f == "--threads") ok = num(&n) && n >= 0, threads = static_cast<int>(n);
    else if (f == "--warmup") ok = num(&warmup) && warmup >= 0;
    else if (f == "--chunk") ok = num(&chunk) && chunk > 0;
    else if (f == "--step") ok = num(&step) && step > 0;
    else if (f == "--max-tokens") ok = num(&max_tokens) && max_tokens > 0;
    else if (f == "--max-kv-bytes") ok = num(&max_kv_bytes) && max_kv_bytes >= 0;
    else if (f == "--timeout-s") ok = num(&timeout_s) && timeout_s > 0;
    else return Usage(("unknown flag " + f).c_str());
    if (!ok) return Usage(("bad value for " + f + ": " + v).c_str());
  }
  if (model_dir.empty()) return Usage("--model DIR is required");
  absl::StatusOr<DeviceKind> device = ParseDeviceKind(device_s);
  if (!device.ok()) return Usage(std::string(device.status().message()).c_str());
  auto loaded = Model::Load(model_dir);
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", std::string(loaded.status().message()).c_str());
    return 1;
  }
  std::shared_ptr<const Model> model = std::move(loaded).value();
  const bool gpu = *device == DeviceKind::kCuda;

  bench::GroupSpec base;
  base.model = model;
  base.backend.device = *device;
  base.backend.num_threads = threads;
  base.engine.block_size = 64;
  base.engine.max_chunk_tokens = chunk;
  base.timeout = std::chrono::milliseconds(timeout_s * 1000);
  if (gpu) base.after_rank = [](int r) { ReleaseGpuPool(r); };
#ifdef SQA_HAVE_NCCL
  if (gpu) {
    base.make_data = [](int r, int p, RendezvousStore& store, const std::string& prefix,
                        std::chrono::milliseconds timeout) {
      NcclOptions no;
      no.rank = r;
      no.world_size = p;
      no.gpu_index = r;
      no.timeout = timeout;
      no.prefix = prefix;
      return CreateNcclCommunicator(no, store);
    };
  }
#endif
  std::vector<ShardMode> modes;
  for (absl::string_view ms : absl::StrSplit(modes_s, ',', absl::SkipEmpty())) {
    auto mode = ParseShardMode(std::string(ms));
    if (!mode.ok() || *mode == ShardMode::kNone) return Usage("--modes takes heads and/or sequence");
    modes.push_back(*mode);
  }

  if (longest) {
    const int64_t limit = max_tokens > 0 ? max_tokens : std::max<int64_t>(step, model->config().max_position_embeddings);
    const std::vector<ShardMode> search = world == 1 ? std::vector<ShardMode>{ShardMode::kNone} : modes;
    int rc = 0;
    for (ShardMode mode : search) {
      bench::GroupSpec spec = base;
      spec.world = world;
      spec.mode = mode;
      spec.max_kv_bytes = max_kv_bytes;
      spec.prefix = std::string("longest-") + ShardModeName(mode);
      const int64_t free0 = gpu ? FreeGpuBytes(0) : -1;
      const auto t0 = std::chrono::steady_clock::now();
      absl::StatusOr<bench::LongestPrompt> found =
          bench::FindLongestPrompt(step, limit, [&](int64_t n) {
            absl::Status st = bench::ProbePrefill(spec, n);
            std::fprintf(stderr, "probe %s P=%d %lld tokens: %s\n", world == 1 ? "single" : ShardModeName(mode), world,
                         static_cast<long long>(n), st.ok() ? "fits" : std::string(st.message()).c_str());
            return st;
          });
      nlohmann::json j;
      j["kind"] = "longest_prompt";
      j["mode"] = world == 1 ? "single" : ShardModeName(mode);
      j["gpus"] = world;
      j["device"] = device_s;
      j["step"] = step;
      j["max_tokens"] = limit;
      j["max_kv_bytes"] = max_kv_bytes;
      j["max_position_embeddings"] = model->config().max_position_embeddings;
      j["kv_bytes_per_token_all_ranks"] =
          bench::KvBytesPerRank(model->config(), ShardMode::kNone, 0, 1, 1, 1, gpu ? DType::kBF16 : DType::kF32)
              .value_or(0);
      if (free0 >= 0) j["gpu0_free_bytes_before"] = free0;
      j["search_seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!found.ok()) {
        j["error"] = std::string(found.status().message());
        rc = 1;
      } else {
        j["longest_tokens"] = found->longest;
        j["first_failing_tokens"] = found->first_failing;
        j["failure"] = std::string(found->failure.message());
        j["failure_code"] = absl::StatusCodeToString(found->failure.code());
        nlohmann::json probes = nlohmann::json::array();
        for (const bench::Probe& p : found->probes) {
          probes.push_back({{"tokens", p.tokens}, {"fits", p.status.ok()}, {"seconds", p.seconds}});
        }
        j["probes"] = probes;
      }
      Print(j);
    }
    return rc;
  }

  for (absl::string_view ts : absl::StrSplit(tokens_s, ',', absl::SkipEmpty())) {
    int64_t n = 0;
    if (!absl::SimpleAtoi(ts, &n) || n <= 0) return Usage("--tokens takes positive counts");
    const std::vector<int32_t> prompt = bench::BenchPrompt(n, model->config().vocab_size);
    bench::GroupSpec one = base;
    one.world = 1;
    one.engine.num_kv_blocks = n / 64 + 64;
    const bench::RunReport single = bench::RunPrefill(one, prompt, warmup);
    if (!single.status.ok()) {
      std::fprintf(stderr, "single: %s\n", std::string(single.status.message()).c_str());
      return 1;
    }
    nlohmann::json js = RankFields(single);
    js["mode"] = "single";
    js["gpus"] = 1;
    js["tokens"] = n;
    js["seconds"] = single.seconds;
    js["tokens_per_s"] = static_cast<double>(n) / single.seconds;
    Print(js);
    if (world == 1) continue;  // a group of one is the single engine
    for (ShardMode mode : modes) {
      bench::GroupSpec spec = base;
      spec.world = world;
      spec.mode = mode;
      spec.engine.num_kv_blocks = n / 64 + 64;
      spec.prefix = std::string(ShardModeName(mode)) + std::to_string(n);
      const bench::RunReport group = bench::RunPrefill(spec, prompt, warmup);
      if (!group.status.ok()) {
        std::fprintf(stderr, "%s P=%d: %s\n", ShardModeName(mode), world, std::string(group.status.message()).c_str());
        return 1;
      }
      nlohmann::json j = RankFields(group);
      j["mode"] = ShardModeName(mode);
      j["gpus"] = world;
      j["tokens"] = n;
      j["seconds"] = group.seconds;
      j["tokens_per_s"] = static_cast<double>(n) / group.seconds;
      j["efficiency"] = single.seconds / (world * group.seconds);
      j["rank0_collective_seconds"] = group.ranks[0].comm_seconds;
      j["rank0_collective_bytes"] = group.ranks[0].comm_bytes;
      j["last_logits_rel_diff"] = RelDiff(group.logits, single.logits);
      Print(j);
    }
  }
  return 0;
}
