// sqa-worker: one worker process (group of one). Flag parsing and wiring only; see
// workers/server/{scheduler,worker_service,worker_config}.h and services/.
#include <chrono>
#include <cstdio>
#include <thread>
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
#include "workers/server/group.h"
#include "workers/server/group_metrics.h"
#include "workers/server/scheduler.h"
#include "workers/server/worker_config.h"
#include "workers/server/worker_metrics.h"
#include "workers/server/worker_service.h"

namespace {

int Fail(const absl::Status& st) {
  std::fprintf(stderr, "sqa-worker: %s\n", std::string(st.message()).c_str());
  return 1;
}

// A follower rank (> 0) of a group: answers health checks and runs the leader's steps until the
// leader stops the group (exit 0) or the group breaks (exit 1).
std::vector<const sqa::Communicator*> Communicators(sqa::worker::Group& group) {
  std::vector<const sqa::Communicator*> v = {group.control()};
  if (group.data() != group.control()) v.push_back(group.data());
  return v;
}

int RunFollower(const sqa::worker::WorkerConfig& cfg, sqa::Engine& engine, sqa::worker::Group& group) {
  using namespace sqa;
  MetricsOptions mo;
  mo.host = cfg.metrics_host;
  mo.port = cfg.metrics_port;
  mo.port_file = cfg.metrics_port_file;
  absl::StatusOr<std::unique_ptr<MetricsServer>> metrics_server = MetricsServer::Start(mo, ProcessRegistry());
  if (!metrics_server.ok()) return Fail(metrics_server.status());
  worker::GroupMetrics group_metrics(*ProcessRegistry(), cfg.group, cfg.rank, cfg.world, cfg.shard,
                                     Communicators(group));
  ServerOptions opts;
  opts.host = cfg.host;
  opts.port = cfg.port;
  opts.port_file = cfg.port_file;
  absl::StatusOr<std::unique_ptr<GrpcServer>> server = GrpcServer::Start(opts, {});
  if (!server.ok()) return Fail(server.status());
  (*server)->SetServing(true);
  if (absl::Status st = group.PublishAddress((*server)->address()); !st.ok()) return Fail(st);
  // On SIGTERM a follower waits for its leader to stop the group (the leader drains first), and
  // leaves on its own only if that does not happen in time.
  const double grace_s = cfg.drain_timeout_s + 5;
  absl::StatusOr<std::unique_ptr<ShutdownSignals>> signals = ShutdownSignals::Install([grace_s](int signo) {
    SQA_LOG(INFO) << "signal " << signo << ": waiting up to " << grace_s << " s for the leader to stop the group";
    std::thread([grace_s] {
      std::this_thread::sleep_for(std::chrono::duration<double>(grace_s));
      SQA_LOG(WARNING) << "the leader did not stop the group in time; leaving";
      std::_Exit(0);
    }).detach();
  });
  if (!signals.ok()) return Fail(signals.status());
  std::fprintf(stderr, "worker rank %d of group %s listening on %s\n", cfg.rank, cfg.group.c_str(),
               (*server)->address().c_str());
  std::fflush(stderr);
  absl::Status st = engine.ServeFollower(
      [&group_metrics, &engine](double seconds) { group_metrics.Observe(seconds, &engine.group_timings()); });
  (*server)->Shutdown(absl::Milliseconds(200));
  if (!st.ok()) {
    SQA_LOG(ERROR) << "group stopped with an error: " << st;
    return 1;
  }
  SQA_LOG(INFO) << "the leader stopped the group";
  return 0;
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
  log::SetProcessTag(cfg->world > 1 ? absl::StrCat("worker[", cfg->group, " rank=", cfg->rank, "]")
                                    : absl::StrCat("worker[", cfg->group, "]"));

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
  eo.cuda_graphs = cfg->cuda_graphs ? StepGraphMode::kOn : StepGraphMode::kOff;
  // A group forms before its engines: rendezvous through the leader, then the communicators.
  std::unique_ptr<worker::Group> group;
  if (cfg->world > 1) {
    worker::GroupConfig gc;
    gc.rank = cfg->rank;
    gc.world = cfg->world;
    gc.leader = cfg->leader;
    gc.host = cfg->host;
    gc.timeout_s = cfg->group_timeout_s;
    gc.gpu = (*backend)->name().rfind("cuda", 0) == 0;
    gc.gpu_index = cfg->gpu;
    absl::StatusOr<std::unique_ptr<worker::Group>> formed = worker::Group::Form(gc);
    if (!formed.ok()) return Fail(formed.status());
    group = std::move(*formed);
    absl::StatusOr<ShardMode> mode = ParseShardMode(cfg->shard);
    if (!mode.ok()) return Fail(mode.status());
    eo.group.mode = *mode;
    eo.group.control = group->control();
    eo.group.data = group->data();
    eo.group.time_attention = true;  // for sqa_worker_group_attention_seconds_total
  }
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(std::shared_ptr<const Model>(std::move(*model)), std::move(*backend), eo);
  if (!engine.ok()) return Fail(engine.status());
  if (cfg->world > 1 && cfg->rank > 0) return RunFollower(*cfg, **engine, *group);

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
  so.whole_prompts = cfg->world > 1 && cfg->shard == "sequence";
  std::unique_ptr<worker::GroupMetrics> group_metrics;
  if (group != nullptr) {
    group_metrics = std::make_unique<worker::GroupMetrics>(*ProcessRegistry(), cfg->group, 0, cfg->world, cfg->shard,
                                                           Communicators(*group));
    // The scheduler's thread runs the engine and calls on_step, so it may read the engine's timings.
    so.on_step = [gm = group_metrics.get(), e = engine->get()](const worker::StepInfo& step) {
      gm->Observe(step.seconds, &e->group_timings());
    };
  }
  absl::StatusOr<std::unique_ptr<worker::Scheduler>> scheduler =
      worker::Scheduler::Create(std::move(*engine), so, &metrics);
  if (!scheduler.ok()) return Fail(scheduler.status());
  (*scheduler)->Start();

  std::unique_ptr<GrpcServer> server;
  worker::WorkerServiceOptions wo;
  wo.group = cfg->group;
  wo.group_size = cfg->world;
  wo.shard_mode = cfg->world > 1 ? cfg->shard : "none";
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
  if (group == nullptr) {
    server->SetServing(true);
  } else {
    // A group serves once every follower answers, and stops serving for good when one stops.
    worker::Scheduler* sched = scheduler->get();
    group->StartMonitor([&server, sched](bool healthy) {
      if (!healthy) SQA_LOG(ERROR) << "a follower of this group failed; the group stops serving";
      server->SetServing(healthy && !sched->draining());
    });
  }

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
