// sqa-worker: one worker process (group of one). Flag parsing and wiring only; see
// workers/server/{scheduler,worker_service,worker_config}.h and services/.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "services/common/log.h"
#include "services/metrics.h"
#include "services/server.h"
#include "services/signals.h"
#include "sqa/v1/worker.grpc.pb.h"
#include "workers/engine/backend.h"
#include "workers/engine/engine.h"
#include "workers/engine/model/model.h"
#include "workers/server/scheduler.h"
#include "workers/server/worker_config.h"
#include "workers/server/worker_metrics.h"
#include "workers/server/worker_service.h"

namespace {

int Fail(const absl::Status& st) {
  std::fprintf(stderr, "sqa-worker: %s\n", std::string(st.message()).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace sqa;
  absl::StatusOr<worker::WorkerConfig> cfg = worker::ParseWorkerFlags(std::vector<std::string>(argv + 1, argv + argc));
  if (!cfg.ok()) {
    if (absl::IsNotFound(cfg.status())) {
      std::fputs(std::string(cfg.status().message()).c_str(), stdout);
      return 0;
    }
    std::fprintf(stderr, "sqa-worker: %s\n%s", std::string(cfg.status().message()).c_str(),
                 worker::WorkerUsage().c_str());
    return 2;
  }
  log::SetProcessTag(absl::StrCat("worker[", cfg->group, "]"));

  absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(cfg->model_dir);
  if (!model.ok()) return Fail(model.status());
  absl::StatusOr<DeviceKind> device = ParseDeviceKind(cfg->device);
  if (!device.ok()) return Fail(device.status());
  BackendOptions bo;
  bo.device = *device;
  bo.num_threads = cfg->threads;
  bo.gpu_index = cfg->gpu;
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend(bo);
  if (!backend.ok()) return Fail(backend.status());
  EngineOptions eo;
  eo.block_size = cfg->block_size;
  eo.kv_cache_bytes = cfg->kv_cache_mb << 20;
  eo.max_chunk_tokens = cfg->max_batch_tokens;
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(std::shared_ptr<const Model>(std::move(*model)), std::move(*backend), eo);
  if (!engine.ok()) return Fail(engine.status());

  worker::WorkerMetrics metrics(*ProcessRegistry());
  MetricsOptions mo;
  mo.host = cfg->metrics_host;
  mo.port = cfg->metrics_port;
  mo.port_file = cfg->metrics_port_file;
  absl::StatusOr<std::unique_ptr<MetricsServer>> metrics_server = MetricsServer::Start(mo, ProcessRegistry());
  if (!metrics_server.ok()) return Fail(metrics_server.status());

  worker::SchedulerOptions so;
  so.max_batch_tokens = cfg->max_batch_tokens;
  so.max_queued = cfg->max_queued;
  absl::StatusOr<std::unique_ptr<worker::Scheduler>> scheduler =
      worker::Scheduler::Create(std::move(*engine), so, &metrics);
  if (!scheduler.ok()) return Fail(scheduler.status());
  (*scheduler)->Start();

  std::unique_ptr<GrpcServer> server;
  worker::WorkerServiceOptions wo;
  wo.group = cfg->group;
  wo.on_drain = [&server] {
    if (server) server->SetServing(false);
  };
  worker::WorkerService service(scheduler->get(), wo);
  ServerOptions opts;
  opts.host = cfg->host;
  opts.port = cfg->port;
  opts.port_file = cfg->port_file;
  opts.max_message_bytes = cfg->max_message_mb << 20;
  absl::StatusOr<std::unique_ptr<GrpcServer>> started =
      GrpcServer::Start(opts, {{&service, sqa::v1::Worker::service_full_name()}});
  if (!started.ok()) return Fail(started.status());
  server = std::move(*started);
  server->SetServing(true);

  const absl::Duration drain_timeout = absl::Seconds(cfg->drain_timeout_s);
  absl::StatusOr<std::unique_ptr<ShutdownSignals>> signals = ShutdownSignals::Install([&](int signo) {
    SQA_LOG(INFO) << "signal " << signo << ": draining (up to " << absl::FormatDuration(drain_timeout) << ")";
    service.StartDrain();
    if (!(*scheduler)->WaitIdle(drain_timeout)) SQA_LOG(WARNING) << "drain timed out; cancelling what is left";
    server->Shutdown(absl::Seconds(1));
  });
  if (!signals.ok()) return Fail(signals.status());

  const ModelConfig& mc = (*scheduler)->model_config();
  const worker::LoadSnapshot load = (*scheduler)->Load();
  SQA_LOG(INFO) << "model " << cfg->model_dir << ": " << mc.LayoutName() << " H=" << mc.num_attention_heads
                << " Hq=" << mc.num_query_heads << " Hkv=" << mc.num_key_value_heads << " layers="
                << mc.num_hidden_layers << " on " << (*scheduler)->device_name() << "; KV " << load.kv_blocks_total
                << " blocks x " << load.kv_block_size << " tokens";
  // The one line scripts look for.
  std::fprintf(stderr, "worker listening on %s, metrics on :%d\n", server->address().c_str(),
               (*metrics_server)->port());
  std::fflush(stderr);

  server->Wait();  // until the signal handler (or a fatal error) shuts the server down
  (*scheduler)->Stop();
  signals->reset();
  SQA_LOG(INFO) << "worker stopped";
  return 0;
}
