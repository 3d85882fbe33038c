// The router process wired together (used by sqa-router and, in-process, by sqa-local): registry
// + policy + proxy + gRPC server (health, reflection) + metrics exposer.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "router/inference_proxy.h"
#include "router/registry.h"
#include "router/router_metrics.h"
#include "router/routing_policy.h"
#include "services/metrics.h"
#include "services/server.h"

namespace sqa::router {

struct RouterOptions {
  std::string workers;  // "host:port,host:port" (DNS names re-resolved every dns_refresh)
  ServerOptions server;
  MetricsOptions metrics;
  absl::Duration health_interval = absl::Seconds(1);
  absl::Duration dns_refresh = absl::Seconds(30);
  ProxyOptions proxy;
  int max_worker_message_bytes = 64 << 20;
};

class RouterServer {
 public:
  // Errors: INVALID_ARGUMENT (bad worker list or options), UNAVAILABLE (cannot bind).
  static absl::StatusOr<std::unique_ptr<RouterServer>> Start(const RouterOptions& options);
  ~RouterServer();

  int port() const { return server_->port(); }
  std::string address() const { return server_->address(); }
  int metrics_port() const { return metrics_server_->port(); }
  Registry& registry() { return *registry_; }

  // Blocks until at least `n` workers are healthy; DEADLINE_EXCEEDED after `timeout`.
  absl::Status WaitForHealthyWorkers(int n, absl::Duration timeout);
  // Health NOT_SERVING, new calls refused (UNAVAILABLE), waits up to `timeout` for calls in
  // progress, then stops the server. Idempotent; thread-safe.
  void Drain(absl::Duration timeout);
  // Blocks until Drain() (from another thread, e.g. the signal watcher) has stopped the server.
  void Wait();

 private:
  RouterServer() = default;
  void UpdateServing(int healthy);

  std::unique_ptr<RouterMetrics> metrics_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<RoutingPolicy> policy_;
  std::unique_ptr<InferenceProxy> proxy_;
  std::unique_ptr<GrpcServer> server_;
  std::unique_ptr<MetricsServer> metrics_server_;
  absl::Mutex mu_;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace sqa::router
