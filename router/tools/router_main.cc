// sqa-router: flag parsing and wiring only (the router is the sqa_router library).
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "services/client/flag_names.h"
#include "router/router_server.h"
#include "services/common/log.h"
#include "services/signals.h"

ABSL_FLAG(std::string, workers, "", "Worker group leaders: host:port,... (DNS names are re-resolved)");
ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on");
ABSL_FLAG(int, port, 50051, "gRPC port (0 = any free port; see --port-file)");
ABSL_FLAG(std::string, port_file, "", "Write the bound gRPC port to this file");
ABSL_FLAG(std::string, metrics_host, "0.0.0.0", "Address of the Prometheus exposer");
ABSL_FLAG(int, metrics_port, 9090, "Prometheus /metrics port (0 = any; -1 = off)");
ABSL_FLAG(std::string, metrics_port_file, "", "Write the bound metrics port to this file");
ABSL_FLAG(int, health_interval_ms, 1000, "Health and load probe period per worker");
ABSL_FLAG(int, dns_refresh_seconds, 30, "Re-resolve worker host names this often");
ABSL_FLAG(int64_t, max_inflight, 256, "Generate streams running at once");
ABSL_FLAG(int64_t, max_queued, 1024, "Requests waiting for a slot; beyond: RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_retries, 2, "Other workers tried when one fails before the first token");
ABSL_FLAG(int, max_resumes, 3, "Mid-stream resumptions on another worker per request");
ABSL_FLAG(int, max_message_mb, 16, "Largest client message accepted (RESOURCE_EXHAUSTED above)");
ABSL_FLAG(int, drain_timeout_seconds, 60, "On SIGTERM: wait this long for running requests");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Routes sqa.v1.Inference calls to sqa-worker groups.\n"
                               "  sqa-router --workers host:port,host:port [--port P]");
  sqa::client::DashedFlagsToUnderscores(argc, argv);
  absl::ParseCommandLine(argc, argv);
  sqa::log::SetProcessTag("router");
  sqa::router::RouterOptions o;
  o.workers = absl::GetFlag(FLAGS_workers);
  o.server.host = absl::GetFlag(FLAGS_host);
  o.server.port = absl::GetFlag(FLAGS_port);
  o.server.port_file = absl::GetFlag(FLAGS_port_file);
  o.server.max_message_bytes = absl::GetFlag(FLAGS_max_message_mb) << 20;
  o.metrics.host = absl::GetFlag(FLAGS_metrics_host);
  o.metrics.port = absl::GetFlag(FLAGS_metrics_port);
  o.metrics.port_file = absl::GetFlag(FLAGS_metrics_port_file);
  o.health_interval = absl::Milliseconds(absl::GetFlag(FLAGS_health_interval_ms));
  o.dns_refresh = absl::Seconds(absl::GetFlag(FLAGS_dns_refresh_seconds));
  o.proxy.max_inflight = absl::GetFlag(FLAGS_max_inflight);
  o.proxy.max_queued = absl::GetFlag(FLAGS_max_queued);
  o.proxy.max_retries = absl::GetFlag(FLAGS_max_retries);
  o.proxy.max_resumes = absl::GetFlag(FLAGS_max_resumes);
  if (o.workers.empty()) {
    std::fprintf(stderr, "sqa-router: --workers is required (host:port,...)\n");
    return 2;
  }
  auto router = sqa::router::RouterServer::Start(o);
  if (!router.ok()) {
    std::fprintf(stderr, "sqa-router: %s\n", std::string(router.status().message()).c_str());
    return 1;
  }
  const absl::Duration drain = absl::Seconds(absl::GetFlag(FLAGS_drain_timeout_seconds));
  auto signals = sqa::ShutdownSignals::Install([&](int signo) {
    SQA_LOG(INFO) << "signal " << signo << ": draining";
    (*router)->Drain(drain);
  });
  if (!signals.ok()) {
    std::fprintf(stderr, "sqa-router: %s\n", std::string(signals.status().message()).c_str());
    return 1;
  }
  (*router)->Wait();
  signals->reset();  // joins the watcher thread: Drain() has returned before the router is destroyed
  return 0;
}
