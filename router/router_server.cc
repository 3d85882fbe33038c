#include "router/router_server.h"

#include "absl/time/clock.h"
#include "services/common/log.h"

namespace sqa::router {

absl::StatusOr<std::unique_ptr<RouterServer>> RouterServer::Start(const RouterOptions& options) {
  auto workers = ParseWorkerList(options.workers);
  if (!workers.ok()) return workers.status();
  if (options.proxy.max_inflight <= 0 || options.proxy.max_queued < 0 ||
      options.proxy.max_retries < 0 || options.proxy.max_resumes < 0) {
    return absl::InvalidArgumentError(
        "need --max-inflight > 0, --max-queued >= 0, --max-retries >= 0, --max-resumes >= 0");
  }
  if (options.health_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--health-interval-ms must be > 0");
  }
  std::unique_ptr<RouterServer> self(new RouterServer());
  self->metrics_ = std::make_unique<RouterMetrics>(*ProcessRegistry());
  RegistryOptions ro;
  ro.workers = *workers;
  ro.health_interval = options.health_interval;
  ro.probe_timeout = std::min(absl::Milliseconds(800), options.health_interval);
  ro.dns_refresh = options.dns_refresh;
  GrpcWorkerClientOptions co;
  co.max_message_bytes = options.max_worker_message_bytes;
  self->registry_ = std::make_unique<Registry>(ro, NewGrpcWorkerClientFactory(co));
  self->policy_ = NewAffinityP2CPolicy();
  self->proxy_ = std::make_unique<InferenceProxy>(options.proxy, self->registry_.get(),
                                                  self->policy_.get(), self->metrics_.get());
  auto metrics_server = MetricsServer::Start(options.metrics, ProcessRegistry());
  if (!metrics_server.ok()) return metrics_server.status();
  self->metrics_server_ = std::move(*metrics_server);
  auto server = GrpcServer::Start(options.server,
                                  {{self->proxy_.get(), v1::Inference::service_full_name()}});
  if (!server.ok()) return server.status();
  self->server_ = std::move(*server);
  RouterServer* raw = self.get();
  self->registry_->SetOnHealthChange([raw](int healthy) { raw->UpdateServing(healthy); });
  self->registry_->Start();
  SQA_LOG(INFO) << "router listening on " << self->address() << ", metrics on port "
                << self->metrics_port() << ", " << self->registry_->HealthyCount()
                << " healthy worker(s)";
  return self;
}

RouterServer::~RouterServer() {
  Drain(absl::ZeroDuration());
  if (registry_) registry_->Stop();
}

void RouterServer::UpdateServing(int healthy) {
  metrics_->healthy_groups.Set(healthy);
  absl::MutexLock lock(&mu_);
  if (draining_ || !server_) return;
  server_->SetServing(healthy > 0);
}

absl::Status RouterServer::WaitForHealthyWorkers(int n, absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  while (registry_->HealthyCount() < n) {
    if (absl::Now() >= end) {
      return absl::DeadlineExceededError(absl::StrCat("only ", registry_->HealthyCount(), " of ", n,
                                                      " workers became healthy within ",
                                                      absl::FormatDuration(timeout)));
    }
    registry_->RefreshNow();
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::OkStatus();
}

void RouterServer::Drain(absl::Duration timeout) {
  {
    absl::MutexLock lock(&mu_);
    if (draining_ || !server_) return;
    draining_ = true;
  }
  SQA_LOG(INFO) << "router draining: " << proxy_->active_calls() << " call(s) in progress";
  server_->SetServing(false);
  proxy_->StartDrain();
  if (!proxy_->WaitIdle(timeout)) {
    SQA_LOG(WARNING) << "router: " << proxy_->active_calls() << " call(s) still running after "
                     << absl::FormatDuration(timeout) << "; cancelling them";
  }
  server_->Shutdown(absl::Seconds(1));
  registry_->Stop();
}

void RouterServer::Wait() { server_->Wait(); }

}  // namespace sqa::router
