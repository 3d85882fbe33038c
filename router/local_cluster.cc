#include "router/local_cluster.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "services/common/log.h"
#include "services/port_file.h"

namespace sqa::router {

absl::StatusOr<std::unique_ptr<LocalCluster>> LocalCluster::Start(const LocalClusterOptions& options) {
  if (options.num_workers <= 0) return absl::InvalidArgumentError("--workers must be >= 1");
  if (options.model_dir.empty()) return absl::InvalidArgumentError("--model is required");
  if (options.group_size < 1 || options.num_workers % options.group_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--workers ", options.num_workers, " must be a multiple of --group-size ",
                                                   options.group_size));
  }
  if (options.group_size > 1 && options.shard != "heads" && options.shard != "sequence") {
    return absl::InvalidArgumentError(absl::StrCat("--shard wants heads or sequence, got '", options.shard, "'"));
  }
  if (!std::filesystem::exists(std::filesystem::path(options.model_dir) / "config.json")) {
    return absl::NotFoundError(absl::StrCat("no config.json in model directory ", options.model_dir));
  }
  std::unique_ptr<LocalCluster> c(new LocalCluster());
  c->options_ = options;
  std::string bin_dir = options.bin_dir;
  if (bin_dir.empty()) {
    auto d = SelfExeDir();
    if (!d.ok()) return d.status();
    bin_dir = *d;
  }
  const std::string worker_bin = bin_dir + "/sqa-worker";
  std::string tmpl = (std::filesystem::temp_directory_path() / "sqa-local-XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) return absl::InternalError("cannot create a temporary directory");
  c->dir_ = tmpl;

  std::string leader;
  for (int i = 0; i < options.num_workers; ++i) {
    WorkerInfo info;
    info.group = i / options.group_size;
    info.rank = i % options.group_size;
    const std::string base = absl::StrCat(c->dir_, "/worker-", i);
    info.log_file = base + ".log";
    std::vector<std::string> argv = {worker_bin,
                                     "--model", options.model_dir,
                                     "--host", options.host,
                                     "--port", "0",
                                     "--port-file", base + ".port",
                                     "--metrics-port", "0",
                                     "--metrics-port-file", base + ".metrics-port",
                                     "--device", options.device};
    if (options.group_size > 1) {
      if (info.rank == 0) {
        auto port = PickFreePort();
        if (!port.ok()) return port.status();
        leader = absl::StrCat(options.host, ":", *port);
      }
      argv.insert(argv.end(), {"--group", absl::StrCat("g", info.group), "--rank", absl::StrCat(info.rank), "--world",
                               absl::StrCat(options.group_size), "--leader", leader, "--shard", options.shard});
    }
    if (options.device == "cuda") {
      argv.push_back("--gpu");
      argv.push_back(absl::StrCat(i));
    }
    if (options.threads_per_worker > 0) {
      argv.push_back("--threads");
      argv.push_back(absl::StrCat(options.threads_per_worker));
    }
    if (options.kv_cache_mb > 0) {
      argv.push_back("--kv-cache-mb");
      argv.push_back(absl::StrCat(options.kv_cache_mb));
    }
    argv.insert(argv.end(), options.extra_worker_args.begin(), options.extra_worker_args.end());
    auto child = ChildProcess::Spawn(argv, info.log_file);
    if (!child.ok()) return child.status();
    c->children_.push_back(std::move(*child));
    c->infos_.push_back(info);
  }
  for (int i = 0; i < options.num_workers; ++i) {
    const std::string base = absl::StrCat(c->dir_, "/worker-", i);
    const absl::Time end = absl::Now() + options.start_timeout;
    while (true) {
      auto port = ReadPortFile(base + ".port");
      auto mport = ReadPortFile(base + ".metrics-port");
      if (port.ok() && mport.ok()) {
        c->infos_[i].port = *port;
        c->infos_[i].metrics_port = *mport;
        break;
      }
      if (!c->children_[i]->Running() || absl::Now() >= end) {
        return absl::UnavailableError(absl::StrCat(
            "worker ", i, " did not start (", c->children_[i]->Running() ? "timed out" : "exited",
            "); its log ", c->infos_[i].log_file, " ends with:\n", TailOfFile(c->infos_[i].log_file)));
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
  }
  RouterOptions ro;
  std::vector<std::string> addrs;
  for (const WorkerInfo& w : c->infos_) {
    if (w.rank == 0) addrs.push_back(absl::StrCat(options.host, ":", w.port));  // a group is one target
  }
  ro.workers = absl::StrJoin(addrs, ",");
  ro.server.host = options.host;
  ro.server.port = options.port;
  ro.metrics.host = options.host;
  ro.metrics.port = options.metrics_port;
  ro.proxy = options.proxy;
  auto router = RouterServer::Start(ro);
  if (!router.ok()) return router.status();
  c->router_ = std::move(*router);
  absl::Status healthy =
      c->router_->WaitForHealthyWorkers(options.num_workers / options.group_size, options.start_timeout);
  if (!healthy.ok()) {
    return absl::UnavailableError(absl::StrCat(healthy.message(), "; worker logs are in ", c->dir_));
  }
  return c;
}

LocalCluster::~LocalCluster() { Stop(); }

std::string LocalCluster::Describe() const {
  std::string s = absl::StrCat("router      grpc ", options_.host, ":", router_->port());
  if (router_->metrics_port() > 0) {
    absl::StrAppend(&s, "   metrics http://", options_.host, ":", router_->metrics_port(), "/metrics");
  }
  absl::StrAppend(&s, "\n");
  for (size_t i = 0; i < infos_.size(); ++i) {
    absl::StrAppend(&s, "worker ", i, options_.group_size > 1 ? absl::StrCat(" (group g", infos_[i].group, " rank ", infos_[i].rank, ")") : "",
                    "    grpc ", options_.host, ":", infos_[i].port,
                    "   metrics http://", options_.host, ":", infos_[i].metrics_port, "/metrics",
                    "   pid ", children_[i]->pid(), "   log ", infos_[i].log_file, "\n");
  }
  return s;
}

std::string LocalCluster::DeadWorkers() {
  std::vector<std::string> dead;
  for (size_t i = 0; i < children_.size(); ++i) {
    if (!children_[i]->Running()) {
      const int st = children_[i]->wait_status();
      dead.push_back(absl::StrCat("worker ", i, " (pid ", children_[i]->pid(), ") ",
                                  WIFSIGNALED(st) ? absl::StrCat("killed by signal ", WTERMSIG(st))
                                                  : absl::StrCat("exited with status ", WEXITSTATUS(st))));
    }
  }
  return absl::StrJoin(dead, "; ");
}

void LocalCluster::Stop(absl::Duration grace) {
  if (stopped_) return;
  stopped_ = true;
  if (router_) router_->Drain(grace);
  for (auto& child : children_) child->Signal(SIGTERM);
  for (auto& child : children_) child->Stop(grace);
  router_.reset();
  std::error_code ec;
  // The logs are kept only when a worker failed (for the error message to point at).
  bool all_clean = true;
  for (auto& child : children_) {
    const int st = child->wait_status();
    all_clean &= WIFEXITED(st) && WEXITSTATUS(st) == 0;
  }
  if (all_clean) std::filesystem::remove_all(dir_, ec);
}

}  // namespace sqa::router
