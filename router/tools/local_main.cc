// sqa-local: the embedded default. N CPU (or GPU) workers as child processes plus a router, on
// loopback. Ctrl-C or SIGTERM stops everything.
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "services/client/flag_names.h"
#include "absl/synchronization/notification.h"
#include "router/local_cluster.h"
#include "services/common/log.h"
#include "services/port_file.h"
#include "services/signals.h"

ABSL_FLAG(std::string, model, "", "Model directory (config.json + model.safetensors)");
ABSL_FLAG(int, workers, 2, "Number of worker processes");
ABSL_FLAG(int, group_size, 1, "Ranks per worker group (each group is one router target)");
ABSL_FLAG(std::string, shard, "heads", "How a group splits the model: heads or sequence");
ABSL_FLAG(std::string, host, "127.0.0.1", "Address everything listens on");
ABSL_FLAG(int, port, 50051, "Router gRPC port (0 = any)");
ABSL_FLAG(std::string, port_file, "", "Write the router's bound gRPC port to this file");
ABSL_FLAG(int, metrics_port, 9090, "Router /metrics port (0 = any; -1 = off)");
ABSL_FLAG(std::string, device, "cpu", "Worker device: cpu or cuda");
ABSL_FLAG(int, kv_cache_mb, 0, "KV cache per worker in MiB (0 = worker default)");
ABSL_FLAG(int, threads_per_worker, 0, "CPU threads per worker (0 = worker default)");
ABSL_FLAG(int, start_timeout_seconds, 180, "Give up if the workers are not healthy by then");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Runs a router and N workers on loopback.\n"
                               "  sqa-local --model DIR --workers N [--group-size P --shard heads|sequence] --port P --metrics-port M");
  sqa::client::DashedFlagsToUnderscores(argc, argv);
  absl::ParseCommandLine(argc, argv);
  sqa::log::SetProcessTag("local");
  sqa::router::LocalClusterOptions o;
  o.model_dir = absl::GetFlag(FLAGS_model);
  o.num_workers = absl::GetFlag(FLAGS_workers);
  o.group_size = absl::GetFlag(FLAGS_group_size);
  o.shard = absl::GetFlag(FLAGS_shard);
  o.host = absl::GetFlag(FLAGS_host);
  o.port = absl::GetFlag(FLAGS_port);
  o.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  o.device = absl::GetFlag(FLAGS_device);
  o.kv_cache_mb = absl::GetFlag(FLAGS_kv_cache_mb);
  o.threads_per_worker = absl::GetFlag(FLAGS_threads_per_worker);
  o.start_timeout = absl::Seconds(absl::GetFlag(FLAGS_start_timeout_seconds));

  // Signals first, so a Ctrl-C during start-up also stops the children.
  absl::Notification stop;
  auto signals = sqa::ShutdownSignals::Install([&](int signo) {
    if (!stop.HasBeenNotified()) stop.Notify();
  });
  if (!signals.ok()) {
    std::fprintf(stderr, "sqa-local: %s\n", std::string(signals.status().message()).c_str());
    return 1;
  }
  auto cluster = sqa::router::LocalCluster::Start(o);
  if (!cluster.ok()) {
    std::fprintf(stderr, "sqa-local: %s\n", std::string(cluster.status().message()).c_str());
    return 1;
  }
  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty()) {
    if (absl::Status s = sqa::WritePortFile(port_file, (*cluster)->router().port()); !s.ok()) {
      std::fprintf(stderr, "sqa-local: %s\n", std::string(s.message()).c_str());
      return 1;
    }
  }
  std::printf("sqa-local: ready (%d workers, model %s)\n%s", o.num_workers, o.model_dir.c_str(),
              (*cluster)->Describe().c_str());
  std::printf("Ctrl-C or SIGTERM stops everything.\n");
  std::fflush(stdout);
  int rc = 0;
  while (!stop.WaitForNotificationWithTimeout(absl::Milliseconds(500))) {
    std::string dead = (*cluster)->DeadWorkers();
    if (!dead.empty()) {
      std::fprintf(stderr, "sqa-local: %s; stopping\n", dead.c_str());
      rc = 1;
      break;
    }
  }
  std::printf("sqa-local: stopping\n");
  std::fflush(stdout);
  (*cluster)->Stop();
  std::printf("sqa-local: stopped\n");
  return rc;
}
