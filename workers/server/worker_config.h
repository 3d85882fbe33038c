// Typed configuration of the sqa-worker process, parsed and validated once from the command line.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sqa::worker {

struct WorkerConfig {
  std::string model_dir;              // --model DIR (required)
  std::string host = "127.0.0.1";     // --host
  int port = 0;                       // --port (0 = pick a free port)
  std::string port_file;              // --port-file F: the chosen gRPC port, "PORT\n"
  std::string metrics_host;           // --metrics-host (default: --host)
  int metrics_port = 0;               // --metrics-port (0 = pick a free port, -1 = off)
  std::string metrics_port_file;      // --metrics-port-file F
  std::string device = "auto";        // --device cpu|cuda|auto
  int threads = 0;                    // --threads (CPU backend; 0 = all cores)
  int gpu = 0;                        // --gpu INDEX
  bool cuda_graphs = true;            // --cuda-graphs on|off: decode steps as CUDA graphs
  int64_t kv_cache_mb = 1024;         // --kv-cache-mb: K+V budget over all layers
  int64_t block_size = 64;            // --block-size: tokens per KV block
  int64_t max_batch_tokens = 512;     // --max-batch-tokens: tokens per scheduler step
  int max_queued = 256;               // --max-queued: waiting requests before RESOURCE_EXHAUSTED
  std::string group = "default";      // --group NAME (reported in load reports)
  int rank = 0;                       // --rank R of the group (0 leads)
  int world = 1;                      // --world P: ranks in the group
  std::string leader;                 // --leader HOST:PORT: where rank 0 serves the group rendezvous
  std::string shard = "none";         // --shard heads|sequence (needed when --world > 1)
  double group_timeout_s = 60;        // --group-timeout-s: rendezvous and collective timeout
  double drain_timeout_s = 30;        // --drain-timeout-s: on SIGTERM, wait this long for running requests
  int max_message_mb = 64;            // --max-message-mb: gRPC message size limit
};

// Accepts "--flag=value" and "--flag value". Unknown flags, missing values and out-of-range values
// are INVALID_ARGUMENT with a message naming the flag. "--help" gives NOT_FOUND with the usage text.
absl::StatusOr<WorkerConfig> ParseWorkerFlags(const std::vector<std::string>& args);
std::string WorkerUsage();

}  // namespace sqa::worker
