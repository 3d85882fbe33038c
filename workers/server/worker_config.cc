#include "workers/server/worker_config.h"

#include <functional>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace sqa::worker {

std::string WorkerUsage() {
  return R"(usage: sqa-worker --model DIR [flags]
  --model DIR               model directory (config.json + safetensors)
  --host H                  gRPC listen address (default 127.0.0.1)
  --port P                  gRPC port, 0 = pick a free one (default 0)
  --port-file F             write the chosen gRPC port to F ("PORT\n", atomically)
  --metrics-host H          metrics listen address (default: --host)
  --metrics-port M          Prometheus /metrics port, 0 = pick, -1 = off (default 0)
  --metrics-port-file F     write the chosen metrics port to F
  --device cpu|cuda|auto    backend (default auto)
  --threads T               CPU threads, 0 = all cores (default 0)
  --gpu I                   CUDA device index (default 0)
  --cuda-graphs on|off      CUDA: run decode steps as captured CUDA graphs (default on)
  --kv-cache-mb M           KV cache budget over all layers in MiB (default 1024)
  --block-size B            tokens per KV block (default 64)
  --max-batch-tokens T      tokens per scheduler step: decodes + prefill chunk (default 512)
  --max-queued N            requests waiting for KV capacity before RESOURCE_EXHAUSTED (default 256)
  --group NAME              group name reported in load reports (default "default")
  --rank R                  this process's rank in its group; 0 leads (default 0)
  --world P                 ranks in the group, one process each (default 1)
  --leader HOST:PORT        where rank 0 serves the group rendezvous (needed when --world > 1)
  --shard heads|sequence    how the group splits the model (needed when --world > 1)
  --group-timeout-s S       rendezvous and collective timeout: a dead rank is detected within it (default 60)
  --drain-timeout-s S       on SIGTERM/SIGINT, wait up to S seconds for running requests (default 30)
  --max-message-mb M        gRPC message size limit in MiB (default 64)
)";
}

absl::StatusOr<WorkerConfig> ParseWorkerFlags(const std::vector<std::string>& args) {
  WorkerConfig c;
  using Setter = std::function<absl::Status(const std::string& flag, const std::string& v)>;
  auto str = [](std::string* dst) -> Setter {
    return [dst](const std::string&, const std::string& v) {
      *dst = v;
      return absl::OkStatus();
    };
  };
  auto i64 = [](int64_t* dst, int64_t lo, int64_t hi) -> Setter {
    return [=](const std::string& flag, const std::string& v) {
      int64_t x;
      if (!absl::SimpleAtoi(v, &x) || x < lo || x > hi)
        return absl::InvalidArgumentError(absl::StrCat("--", flag, " wants an integer in [", lo, ", ", hi, "], got '", v, "'"));
      *dst = x;
      return absl::OkStatus();
    };
  };
  auto i32 = [&](int* dst, int64_t lo, int64_t hi) -> Setter {
    return [=](const std::string& flag, const std::string& v) {
      int64_t x;
      if (!absl::SimpleAtoi(v, &x) || x < lo || x > hi)
        return absl::InvalidArgumentError(absl::StrCat("--", flag, " wants an integer in [", lo, ", ", hi, "], got '", v, "'"));
      *dst = static_cast<int>(x);
      return absl::OkStatus();
    };
  };
  std::map<std::string, Setter> flags = {
      {"model", str(&c.model_dir)},
      {"host", str(&c.host)},
      {"port", i32(&c.port, 0, 65535)},
      {"port-file", str(&c.port_file)},
      {"metrics-host", str(&c.metrics_host)},
      {"metrics-port", i32(&c.metrics_port, -1, 65535)},
      {"metrics-port-file", str(&c.metrics_port_file)},
      {"device", [&](const std::string& flag, const std::string& v) {
         if (v != "cpu" && v != "cuda" && v != "auto")
           return absl::InvalidArgumentError(absl::StrCat("--device wants cpu, cuda or auto, got '", v, "'"));
         c.device = v;
         return absl::OkStatus();
       }},
      {"threads", i32(&c.threads, 0, 4096)},
      {"gpu", i32(&c.gpu, 0, 1024)},
      {"cuda-graphs", [&](const std::string& flag, const std::string& v) {
         if (v != "on" && v != "off")
           return absl::InvalidArgumentError(absl::StrCat("--cuda-graphs wants on or off, got '", v, "'"));
         c.cuda_graphs = v == "on";
         return absl::OkStatus();
       }},
      {"kv-cache-mb", i64(&c.kv_cache_mb, 1, int64_t{1} << 24)},
      {"block-size", i64(&c.block_size, 1, 1 << 16)},
      {"max-batch-tokens", i64(&c.max_batch_tokens, 1, int64_t{1} << 24)},
      {"max-queued", i32(&c.max_queued, 0, 1 << 24)},
      {"group", str(&c.group)},
      {"rank", i32(&c.rank, 0, 1023)},
      {"world", i32(&c.world, 1, 1024)},
      {"leader", str(&c.leader)},
      {"shard", [&](const std::string& flag, const std::string& v) {
         if (v != "heads" && v != "sequence" && v != "none")
           return absl::InvalidArgumentError(absl::StrCat("--shard wants heads or sequence, got '", v, "'"));
         c.shard = v;
         return absl::OkStatus();
       }},
      {"group-timeout-s", [&](const std::string& flag, const std::string& v) {
         double x;
         if (!absl::SimpleAtod(v, &x) || !(x > 0))
           return absl::InvalidArgumentError(absl::StrCat("--group-timeout-s wants seconds > 0, got '", v, "'"));
         c.group_timeout_s = x;
         return absl::OkStatus();
       }},
      {"drain-timeout-s", [&](const std::string& flag, const std::string& v) {
         double x;
         if (!absl::SimpleAtod(v, &x) || !(x >= 0))
           return absl::InvalidArgumentError(absl::StrCat("--drain-timeout-s wants seconds >= 0, got '", v, "'"));
         c.drain_timeout_s = x;
         return absl::OkStatus();
       }},
      {"max-message-mb", i32(&c.max_message_mb, 1, 2047)},
  };
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") return absl::NotFoundError(WorkerUsage());
    if (a.rfind("--", 0) != 0)
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", a, "' (flags start with --)"));
    std::string name = a.substr(2), value;
    const size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else {
      if (i + 1 >= args.size()) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      value = args[++i];
    }
    auto it = flags.find(name);
    if (it == flags.end()) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, "; see --help"));
    absl::Status st = it->second(name, value);
    if (!st.ok()) return st;
  }
  if (c.model_dir.empty()) return absl::InvalidArgumentError("--model DIR is required");
  if (c.rank >= c.world) {
    return absl::InvalidArgumentError(absl::StrCat("--rank ", c.rank, " must be below --world ", c.world));
  }
  if (c.world > 1 && (c.leader.empty() || c.shard == "none")) {
    return absl::InvalidArgumentError("a group (--world > 1) needs --leader HOST:PORT and --shard heads|sequence");
  }
  if (c.metrics_host.empty()) c.metrics_host = c.host;
  return c;
}

}  // namespace sqa::worker
