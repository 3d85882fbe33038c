#include "workers/server/worker_service.h"

#include <atomic>
#include <chrono>
#include <deque>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "services/common/log.h"
#include "services/grpc_status.h"

namespace sqa::worker {
namespace {

absl::Time DeadlineOf(const grpc::CallbackServerContext* ctx) {
  const auto d = ctx->deadline();
  if (d == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(d);
}

// Deletes itself once both gRPC (OnDone) and the scheduler (on_done) are finished with it.
class RefCounted {
 public:
  explicit RefCounted(int refs) : refs_(refs) {}
  virtual ~RefCounted() = default;
  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }
  void AddRef() { refs_.fetch_add(1); }

 private:
  std::atomic<int> refs_;
};

class GenerateReactor final : public grpc::ServerWriteReactor<sqa::v1::GenerateResponse>, public RefCounted {
 public:
  GenerateReactor(Scheduler* scheduler, const WorkerServiceOptions& options, std::string request_id)
      : RefCounted(1), scheduler_(scheduler), max_queued_(std::max(2, options.max_queued_messages)),
        request_id_(std::move(request_id)) {}

  // Submits the request; on a submission error finishes the RPC at once.
  void Start(grpc::CallbackServerContext* ctx, const sqa::v1::GenerateRequest& req) {
    GenerateParams p;
    p.prompt.assign(req.prompt_tokens().begin(), req.prompt_tokens().end());
    p.resume_tokens.assign(req.resume_tokens().begin(), req.resume_tokens().end());
    p.stop_tokens.assign(req.stop_tokens().begin(), req.stop_tokens().end());
    p.sampling = FromProto(req.sampling());
    p.max_tokens = req.max_tokens();
    p.tag = request_id_;
    logprobs_ = req.return_logprobs();
    RequestCallbacks cb;
    cb.on_token = [this](int32_t token, float logprob) { OnToken(token, logprob); };
    cb.on_done = [this](const absl::Status& st, RequestResult result) { OnSchedulerDone(st, std::move(result)); };
    AddRef();  // the scheduler's reference, dropped in OnSchedulerDone
    absl::StatusOr<RequestId> id = scheduler_->SubmitGenerate(std::move(p), DeadlineOf(ctx), std::move(cb));
    if (!id.ok()) {
      Unref();  // the scheduler will never call back
      absl::MutexLock lock(&mu_);
      FinishLocked(ToGrpcStatus(id.status()));
      return;
    }
    absl::MutexLock lock(&mu_);
    id_ = *id;
    submitted_ = true;
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    write_in_flight_ = false;
    if (!queue_.empty()) queue_.pop_front();
    if (!ok) {  // the client is gone: stop work, answer nothing more
      queue_.clear();
      broken_ = true;
      if (submitted_) scheduler_->Cancel(id_);
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "stream broken"));
      return;
    }
    PumpLocked();
  }

  void OnCancel() override {
    RequestId id = 0;
    bool submitted = false;
    {
      absl::MutexLock lock(&mu_);
      id = id_;
      submitted = submitted_;
    }
    if (submitted) scheduler_->Cancel(id);  // the scheduler answers CANCELLED at its next step
  }

  void OnDone() override { Unref(); }

 private:
  void OnToken(int32_t token, float logprob) {
    absl::MutexLock lock(&mu_);
    if (finish_called_ || broken_) return;
    sqa::v1::GenerateResponse* msg = AppendTarget();
    msg->add_tokens(token);
    if (logprobs_) msg->add_logprobs(logprob);
    PumpLocked();
  }

  void OnSchedulerDone(const absl::Status& st, RequestResult result) {
    {
      absl::MutexLock lock(&mu_);
      if (!finish_called_ && !broken_) {
        if (st.ok()) {
          sqa::v1::GenerateResponse* msg = AppendTarget(/*merge=*/true);
          msg->set_finish_reason(ToProto(result.finish_reason));
          sqa::v1::Usage* u = msg->mutable_usage();
          u->set_prompt_tokens(static_cast<int32_t>(result.prompt_tokens));
          u->set_completion_tokens(static_cast<int32_t>(result.completion_tokens));
          u->set_time_to_first_token_seconds(result.time_to_first_token_seconds);
          u->set_total_seconds(result.total_seconds);
        }
        final_status_ = ToGrpcStatus(st);
        PumpLocked();
      }
    }
    Unref();
  }

  // The message new data goes to: a new one at the back, or, once the queue holds max_queued_
  // messages (or `merge` is set), the last queued message that is not being written.
  sqa::v1::GenerateResponse* AppendTarget(bool merge = false) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const size_t first_writable = write_in_flight_ ? 1 : 0;
    const bool have_writable = queue_.size() > first_writable;
    if (have_writable && (merge || static_cast<int>(queue_.size()) >= max_queued_)) return &queue_.back();
    queue_.emplace_back();
    queue_.back().set_request_id(request_id_);
    return &queue_.back();
  }

  void PumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finish_called_ || write_in_flight_) return;
    if (!queue_.empty()) {
      write_in_flight_ = true;
      StartWrite(&queue_.front());
      return;
    }
    if (final_status_) FinishLocked(*final_status_);
  }

  void FinishLocked(const grpc::Status& st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finish_called_) return;
    finish_called_ = true;
    Finish(st);
  }

  Scheduler* scheduler_;
  const int max_queued_;
  const std::string request_id_;
  bool logprobs_ = false;
  absl::Mutex mu_;
  RequestId id_ ABSL_GUARDED_BY(mu_) = 0;
  bool submitted_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<sqa::v1::GenerateResponse> queue_ ABSL_GUARDED_BY(mu_);  // front is in flight when write_in_flight_
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_called_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> final_status_ ABSL_GUARDED_BY(mu_);
};

class EncodeReactor final : public grpc::ServerUnaryReactor, public RefCounted {
 public:
  EncodeReactor(Scheduler* scheduler, sqa::v1::EncodeResponse* response, std::string request_id)
      : RefCounted(1), scheduler_(scheduler), response_(response), request_id_(std::move(request_id)) {}

  void Start(grpc::CallbackServerContext* ctx, const sqa::v1::EncodeRequest& req) {
    EncodeParams p;
    p.prompt.assign(req.prompt_tokens().begin(), req.prompt_tokens().end());
    p.output = req.output() == sqa::v1::EncodeRequest::OUTPUT_HIDDEN_STATE ? EncodeOutput::kHiddenState
                                                                          : EncodeOutput::kLogits;
    p.prompt_logprobs = req.return_prompt_logprobs();
    p.tag = request_id_;
    RequestCallbacks cb;
    cb.on_done = [this](const absl::Status& st, RequestResult result) {
      if (st.ok()) {
        response_->mutable_values()->Assign(result.values.begin(), result.values.end());
        response_->mutable_prompt_logprobs()->Assign(result.prompt_logprobs.begin(), result.prompt_logprobs.end());
        response_->set_request_id(request_id_);
        sqa::v1::Usage* u = response_->mutable_usage();
        u->set_prompt_tokens(static_cast<int32_t>(result.prompt_tokens));
        u->set_total_seconds(result.total_seconds);
      }
      Finish(ToGrpcStatus(st));
      Unref();
    };
    AddRef();
    absl::StatusOr<RequestId> id = scheduler_->SubmitEncode(std::move(p), DeadlineOf(ctx), std::move(cb));
    if (!id.ok()) {
      Unref();
      Finish(ToGrpcStatus(id.status()));
      return;
    }
    absl::MutexLock lock(&mu_);
    id_ = *id;
    submitted_ = true;
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    if (submitted_) scheduler_->Cancel(id_);
  }
  void OnDone() override { Unref(); }

 private:
  Scheduler* scheduler_;
  sqa::v1::EncodeResponse* response_;
  const std::string request_id_;
  absl::Mutex mu_;
  RequestId id_ ABSL_GUARDED_BY(mu_) = 0;
  bool submitted_ ABSL_GUARDED_BY(mu_) = false;
};

std::string DTypeDisplayName(DType t) {
  switch (t) {
    case DType::kF32: return "float32";
    case DType::kBF16: return "bfloat16";
    case DType::kF16: return "float16";
    default: return "int32";
  }
}

}  // namespace

sqa::v1::FinishReason ToProto(FinishReason r) {
  switch (r) {
    case FinishReason::kLength: return sqa::v1::FINISH_REASON_LENGTH;
    case FinishReason::kStop: return sqa::v1::FINISH_REASON_STOP;
    case FinishReason::kContext: return sqa::v1::FINISH_REASON_CONTEXT;
    default: return sqa::v1::FINISH_REASON_UNSPECIFIED;
  }
}

SamplingParams FromProto(const sqa::v1::SamplingParams& p) {
  SamplingParams s;
  s.temperature = p.temperature();
  s.top_k = p.top_k();
  s.top_p = p.top_p() == 0.f ? 1.f : p.top_p();
  s.seed = p.seed();
  return s;
}

WorkerService::WorkerService(Scheduler* scheduler, WorkerServiceOptions options)
    : scheduler_(scheduler), options_(std::move(options)) {}

std::string WorkerService::NextRequestId() { return absl::StrCat(options_.request_id_prefix, "-", next_request_++); }

grpc::ServerWriteReactor<sqa::v1::GenerateResponse>* WorkerService::Generate(grpc::CallbackServerContext* ctx,
                                                                             const sqa::v1::GenerateRequest* request) {
  auto* r = new GenerateReactor(scheduler_, options_,
                                request->request_id().empty() ? NextRequestId() : request->request_id());
  r->Start(ctx, *request);
  return r;
}

grpc::ServerUnaryReactor* WorkerService::Encode(grpc::CallbackServerContext* ctx, const sqa::v1::EncodeRequest* request,
                                                sqa::v1::EncodeResponse* response) {
  auto* r = new EncodeReactor(scheduler_, response,
                              request->request_id().empty() ? NextRequestId() : request->request_id());
  r->Start(ctx, *request);
  return r;
}

grpc::ServerUnaryReactor* WorkerService::GetModelInfo(grpc::CallbackServerContext* ctx,
                                                      const sqa::v1::GetModelInfoRequest*, sqa::v1::ModelInfo* info) {
  const ModelConfig& c = scheduler_->model_config();
  info->set_layout(c.LayoutName());
  info->set_num_attention_heads(static_cast<int32_t>(c.num_attention_heads));
  info->set_num_query_heads(static_cast<int32_t>(c.num_query_heads));
  info->set_num_key_value_heads(static_cast<int32_t>(c.num_key_value_heads));
  info->set_head_dim(static_cast<int32_t>(c.head_dim));
  info->set_hidden_size(static_cast<int32_t>(c.hidden_size));
  info->set_num_layers(static_cast<int32_t>(c.num_hidden_layers));
  info->set_vocab_size(static_cast<int32_t>(c.vocab_size));
  info->set_dtype(DTypeDisplayName(scheduler_->act_dtype()));
  const std::string dev = scheduler_->device_name();
  info->set_device(dev.rfind("cuda", 0) == 0 ? "cuda" : dev);
  info->set_max_position_embeddings(c.max_position_embeddings);
  sqa::v1::PoolInfo* pool = info->add_pools();
  pool->set_name(options_.group);
  pool->set_max_context_tokens(scheduler_->max_context_tokens());
  pool->set_healthy_groups(1);
  pool->set_group_size(options_.group_size);
  pool->set_shard_mode(options_.shard_mode);
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* WorkerService::GetLoad(grpc::CallbackServerContext* ctx, const sqa::v1::GetLoadRequest*,
                                                 sqa::v1::LoadReport* report) {
  const LoadSnapshot l = scheduler_->Load();
  report->set_queued_requests(l.queued_requests);
  report->set_running_requests(l.running_requests);
  report->set_queued_tokens(l.queued_tokens);
  report->set_running_tokens(l.running_tokens);
  report->set_kv_blocks_used(l.kv_blocks_used);
  report->set_kv_blocks_total(l.kv_blocks_total);
  report->set_kv_block_size(l.kv_block_size);
  report->set_admitting(l.admitting);
  report->set_max_context_tokens(l.max_context_tokens);
  report->set_group(options_.group);
  report->set_group_size(options_.group_size);
  report->set_shard_mode(options_.shard_mode);
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

void WorkerService::StartDrain() {
  scheduler_->StartDrain();
  if (!drain_notified_.exchange(true)) {
    SQA_LOG(INFO) << "draining: no new requests are admitted; running ones finish";
    if (options_.on_drain) options_.on_drain();
  }
}

grpc::ServerUnaryReactor* WorkerService::Drain(grpc::CallbackServerContext* ctx, const sqa::v1::DrainRequest*,
                                               sqa::v1::DrainResponse* response) {
  StartDrain();
  const LoadSnapshot l = scheduler_->Load();
  response->set_running_requests(l.running_requests + l.queued_requests);
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace sqa::worker
