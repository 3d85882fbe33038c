// The gRPC service sqa.v1.Worker of one worker (group leader, rank 0), on the callback API:
// Generate streams tokens from the Scheduler through one ServerWriteReactor per call (bounded
// queue of responses, one write in flight; when the queue is full new tokens are appended to the
// last queued message instead, so a slow reader never blocks the scheduler and memory stays
// bounded by max_tokens); Encode is a unary reactor; GetModelInfo, GetLoad and Drain answer at once.
// Client cancellation (OnCancel) cancels the scheduler request; the context deadline becomes the
// request's deadline. Thread-safe; the Scheduler must outlive the service and the server.
#pragma once

#include <functional>
#include <string>

#include "sqa/v1/worker.grpc.pb.h"
#include "workers/server/scheduler.h"

namespace sqa::worker {

struct WorkerServiceOptions {
  std::string group = "default";  // reported in LoadReport.group
  int group_size = 1;             // ranks in the group this leader leads
  std::string shard_mode = "none";
  std::string request_id_prefix = "w";
  // Called once by the first Drain RPC, after the scheduler stopped admitting (e.g. to turn
  // health NOT_SERVING).
  std::function<void()> on_drain;
  int max_queued_messages = 64;  // per Generate stream, before tokens are coalesced
};

class WorkerService final : public sqa::v1::Worker::CallbackService {
 public:
  WorkerService(Scheduler* scheduler, WorkerServiceOptions options);

  grpc::ServerWriteReactor<sqa::v1::GenerateResponse>* Generate(grpc::CallbackServerContext* ctx,
                                                                const sqa::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Encode(grpc::CallbackServerContext* ctx, const sqa::v1::EncodeRequest* request,
                                   sqa::v1::EncodeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* ctx, const sqa::v1::GetModelInfoRequest* request,
                                         sqa::v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* ctx, const sqa::v1::GetLoadRequest* request,
                                    sqa::v1::LoadReport* response) override;
  grpc::ServerUnaryReactor* Drain(grpc::CallbackServerContext* ctx, const sqa::v1::DrainRequest* request,
                                  sqa::v1::DrainResponse* response) override;

  // Drain without an RPC (SIGTERM path). Idempotent.
  void StartDrain();

 private:
  std::string NextRequestId();

  Scheduler* scheduler_;
  WorkerServiceOptions options_;
  std::atomic<uint64_t> next_request_ = 1;
  std::atomic<bool> drain_notified_ = false;
};

// Conversions between the wire types and the scheduler's (exposed for tests).
sqa::v1::FinishReason ToProto(FinishReason r);
// Maps top_p == 0 ("unset") to 1.
SamplingParams FromProto(const sqa::v1::SamplingParams& p);

}  // namespace sqa::worker
