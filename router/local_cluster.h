// The embedded default (sqa-local): N sqa-worker child processes on loopback, port 0 with port
// files in a private temporary directory, plus a router in this process pointing at them.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "router/launcher.h"
#include "router/router_server.h"

namespace sqa::router {

struct LocalClusterOptions {
  std::string model_dir;
  int num_workers = 2;          // worker processes in all
  int group_size = 1;           // ranks per group: num_workers / group_size groups, each one router target
  std::string shard = "heads";  // heads or sequence, for groups of several ranks
  std::string host = "127.0.0.1";
  int port = 0;          // router gRPC port (0 = any)
  int metrics_port = 0;  // router metrics port (0 = any; < 0 = none)
  std::string device = "cpu";
  int kv_cache_mb = 0;          // 0 = the worker's default
  int threads_per_worker = 0;   // 0 = the worker's default (all cores)
  std::string bin_dir;          // where sqa-worker lives; empty = next to this executable
  std::vector<std::string> extra_worker_args;
  absl::Duration start_timeout = absl::Minutes(3);
  ProxyOptions proxy;
};

struct WorkerInfo {
  int group = 0;
  int rank = 0;
  int port = 0;
  int metrics_port = 0;
  std::string log_file;
};

class LocalCluster {
 public:
  // Starts the workers, waits for their port files, starts the router and waits until every
  // worker is healthy. On failure everything started is stopped and the error names the worker
  // and the tail of its log.
  static absl::StatusOr<std::unique_ptr<LocalCluster>> Start(const LocalClusterOptions& options);
  ~LocalCluster();  // Stop()

  RouterServer& router() { return *router_; }
  const std::vector<WorkerInfo>& workers() const { return infos_; }
  const std::string& work_dir() const { return dir_; }
  // A human-readable summary: router address, metrics URLs of the router and every worker.
  std::string Describe() const;
  // Drains the router, then stops every worker (SIGTERM, then SIGKILL after `grace`). Idempotent.
  void Stop(absl::Duration grace = absl::Seconds(10));
  // Non-empty when a worker exited on its own (checked by sqa-local's watch loop).
  std::string DeadWorkers();

 private:
  LocalCluster() = default;
  LocalClusterOptions options_;
  std::string dir_;
  std::vector<std::unique_ptr<ChildProcess>> children_;
  std::vector<WorkerInfo> infos_;
  std::unique_ptr<RouterServer> router_;
  bool stopped_ = false;
};

}  // namespace sqa::router
