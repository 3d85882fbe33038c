#include "router/inference_proxy.h"

#include <chrono>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "services/common/log.h"
#include "services/grpc_status.h"
#include "router/validation.h"

namespace sqa::router {
namespace {

absl::Time DeadlineOf(const grpc::CallbackServerContext* ctx) {
  auto d = ctx->deadline();
  // gRPC reports "no deadline" as a time point far in the future.
  if (d >= std::chrono::system_clock::now() + std::chrono::hours(24 * 365 * 10)) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(d);
}

// Failures that say nothing about the request, only about the worker that got it.
bool Retriable(const grpc::Status& s, bool before_first_token) {
  switch (s.error_code()) {
    case grpc::UNAVAILABLE:
    case grpc::ABORTED:
      return true;
    case grpc::RESOURCE_EXHAUSTED:  // that worker is full; another may not be
      return before_first_token;
    default:
      return false;
  }
}

std::string NewRequestId() {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t base = static_cast<uint64_t>(absl::ToUnixMicros(absl::Now()));
  return absl::StrCat("r", absl::Hex(base), "-", counter.fetch_add(1));
}

// Errors about the request itself reach the client verbatim; errors about a worker name it (for
// the operator reading the client's report).
grpc::Status WithWorker(const grpc::Status& s, const std::string& address) {
  switch (s.error_code()) {
    case grpc::INVALID_ARGUMENT:
    case grpc::OUT_OF_RANGE:
    case grpc::FAILED_PRECONDITION:
    case grpc::RESOURCE_EXHAUSTED:
    case grpc::DEADLINE_EXCEEDED:
    case grpc::CANCELLED:
      return s;
    default:
      return grpc::Status(s.error_code(), absl::StrCat("worker ", address, ": ", s.error_message()));
  }
}

}  // namespace

absl::StatusOr<std::shared_ptr<Target>> PickTarget(const Registry& registry, RoutingPolicy& policy,
                                                   const RouteRequest& request,
                                                   int64_t prompt_tokens, int64_t max_tokens,
                                                   const absl::flat_hash_set<std::string>& exclude) {
  std::vector<Pool> pools = registry.HealthyPools();
  if (pools.empty()) {
    return absl::UnavailableError("no healthy worker; check the workers and the router's --workers");
  }
  const int64_t needed = prompt_tokens + max_tokens;
  size_t first = pools.size();
  for (size_t i = 0; i < pools.size(); ++i) {
    if (pools[i].max_context_tokens >= needed) {
      first = i;
      break;
    }
  }
  if (first == pools.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt has ", prompt_tokens, " tokens (+ max_tokens ", max_tokens,
        "); the largest pool accepts at most ", pools.back().max_context_tokens));
  }
  for (size_t i = first; i < pools.size(); ++i) {
    std::vector<Candidate> candidates;
    std::vector<std::shared_ptr<Target>> targets;
    for (const TargetView& m : pools[i].members) {
      if (exclude.contains(m.target->address)) continue;
      candidates.push_back({m.target->address, m.outstanding_tokens});
      targets.push_back(m.target);
    }
    if (candidates.empty()) continue;  // all failed this request: try a larger pool
    return targets[policy.Pick(request, candidates)];
  }
  return absl::UnavailableError(absl::StrCat("every healthy worker able to take this request failed it (",
                                             exclude.size(), " tried)"));
}

// ---------------------------------------------------------------------------------------------
// One Generate call. Lifetime: reference-counted by the server side (dropped in OnDone, after
// Finish) and by each upstream attempt (dropped at the end of OnWorkerDone), so neither the client
// stream nor a worker callback can reach a deleted call. The final message goes out with
// StartWriteAndFinish, so the client gets its last token and status without waiting for the
// upstream stream's trailers.
class GenerateCall final : public grpc::ServerWriteReactor<v1::GenerateResponse>,
                           public WorkerStreamObserver,
                           public AdmissionWaiter {
 public:
  GenerateCall(InferenceProxy* proxy, grpc::CallbackServerContext* ctx,
               const v1::GenerateRequest* request)
      : proxy_(proxy), request_(request), arrival_(absl::Now()), deadline_(DeadlineOf(ctx)) {
    request_id_ = request->request_id().empty() ? NewRequestId() : request->request_id();
    session_id_ = request->session_id();
  }

  void Begin() {
    if (proxy_->draining()) {
      return FinishCall(grpc::Status(grpc::UNAVAILABLE, "router is draining; retry on another router"));
    }
    if (absl::Status s = ValidateGenerateRequest(*request_); !s.ok()) return FinishCall(ToGrpcStatus(s));
    // A request no pool can take is refused before it waits in the queue.
    std::vector<Pool> pools = proxy_->registry_->HealthyPools();
    const int64_t needed = request_->prompt_tokens_size() + int64_t{request_->max_tokens()};
    if (!pools.empty() && pools.back().max_context_tokens < needed) {
      return FinishCall(grpc::Status(
          grpc::INVALID_ARGUMENT,
          absl::StrCat("prompt has ", request_->prompt_tokens_size(), " tokens (+ max_tokens ",
                       request_->max_tokens(), "); the largest pool accepts at most ",
                       pools.back().max_context_tokens)));
    }
    switch (proxy_->admission_.Enter(this)) {
      case Admission::Result::kRun:
        TookSlot();
        StartAttempt();
        return;
      case Admission::Result::kQueued:
        proxy_->metrics_->queued_requests.Increment();
        return;
      case Admission::Result::kRejected:
        return FinishCall(grpc::Status(
            grpc::RESOURCE_EXHAUSTED,
            absl::StrCat("router is at capacity (", proxy_->options_.max_inflight, " running, ",
                         proxy_->options_.max_queued, " queued); retry later")));
    }
  }

  void OnAdmitted() override {
    proxy_->metrics_->queued_requests.Decrement();
    TookSlot();
    StartAttempt();
  }

  void OnWorkerResponse(v1::GenerateResponse response) override {
    std::shared_ptr<WorkerStream> cancel, last;
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_ || finishing_) {
        cancel = upstream_;
      } else {
        const absl::Time now = absl::Now();
        const int n = response.tokens_size();
        if (n > 0) {
          if (sent_.empty()) {
            proxy_->metrics_->time_to_first_token.Observe(absl::ToDoubleSeconds(now - arrival_));
            first_token_ = now;
          } else {
            const double gap = absl::ToDoubleSeconds(now - last_token_) / n;
            for (int i = 0; i < n; ++i) proxy_->metrics_->inter_token_latency.Observe(gap);
          }
          last_token_ = now;
          sent_.insert(sent_.end(), response.tokens().begin(), response.tokens().end());
          proxy_->metrics_->generated_tokens.Increment(n);
        }
        out_ = std::move(response);
        out_.set_request_id(request_id_);
        if (out_.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
          saw_final_ = true;
          FillUsage(&out_, now);
          finishing_ = true;
          final_status_ = grpc::Status::OK;
          last = upstream_;
        }
      }
    }
    if (cancel) {
      cancel->Cancel();
      return;
    }
    if (last) {
      StartWriteAndFinish(&out_, grpc::WriteOptions(), grpc::Status::OK);
      last->ReadNext();  // lets the upstream stream end; OnWorkerDone then drops its reference
      return;
    }
    StartWrite(&out_);
  }

  void OnWriteDone(bool ok) override {
    std::shared_ptr<WorkerStream> stream;
    {
      absl::MutexLock lock(&mu_);
      if (!ok) cancelled_ = true;
      stream = upstream_;
    }
    if (!stream) return;  // cannot happen: upstream is held until we answer
    if (ok) {
      stream->ReadNext();
    } else {
      stream->Cancel();
    }
  }

  void OnWorkerDone(const grpc::Status& status) override {
    grpc::Status finish;
    bool retry = false, mark_failed = false, synth_final = false, done_only = false;
    std::string failed_address;
    {
      absl::MutexLock lock(&mu_);
      upstream_.reset();
      ReleaseAccounting();
      if (finishing_) {
        // The client already has its final message (or its error); nothing more to send.
        // `request_` may already be gone (the server side can finish first): use the copy.
        if (status.ok() && saw_final_) proxy_->policy_->RecordSession(session_id_, target_->address);
        done_only = true;
      } else if (cancelled_) {
        finish = grpc::Status(grpc::CANCELLED, "cancelled by the client");
      } else if (status.ok() || saw_final_) {
        finish = grpc::Status::OK;
        if (status.ok() && saw_final_) proxy_->policy_->RecordSession(session_id_, target_->address);
      } else if (Retriable(status, sent_.empty()) && absl::Now() < deadline_ &&
                 (sent_.empty() ? retries_ < proxy_->options_.max_retries
                                : resumes_ < proxy_->options_.max_resumes)) {
        failed_address = target_->address;
        exclude_.insert(failed_address);
        mark_failed = status.error_code() != grpc::RESOURCE_EXHAUSTED;
        last_error_ = WithWorker(status, failed_address);
        if (sent_.empty()) {
          ++retries_;
          proxy_->metrics_->retries.Increment();
        } else {
          ++resumes_;
          proxy_->metrics_->resumes.Increment();
        }
        SQA_LOG(WARNING) << "request " << request_id_ << ": worker " << failed_address << " failed ("
                         << status.error_message() << ") after " << sent_.size() << " tokens; "
                         << (sent_.empty() ? "retrying" : "resuming") << " on another worker";
        if (static_cast<int64_t>(sent_.size()) >= request_->max_tokens()) {
          synth_final = true;  // everything was sent; only the closing message was lost
          finishing_ = true;
          final_status_ = grpc::Status::OK;
          out_.Clear();
          out_.set_request_id(request_id_);
          out_.set_finish_reason(v1::FINISH_REASON_LENGTH);
          FillUsage(&out_, absl::Now());
        } else {
          retry = true;
        }
      } else {
        finish = WithWorker(status, target_->address);
      }
    }
    if (mark_failed) proxy_->registry_->MarkFailed(failed_address);
    if (synth_final) {
      StartWriteAndFinish(&out_, grpc::WriteOptions(), grpc::Status::OK);
    } else if (retry) {
      StartAttempt();
    } else if (!done_only) {
      FinishCall(finish);
    }
    Unref();  // this attempt's reference (StartAttempt took a new one for a retry)
  }

  void OnCancel() override {
    const bool was_queued = proxy_->admission_.Cancel(this);
    std::shared_ptr<WorkerStream> stream;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      stream = upstream_;
    }
    if (was_queued) {
      proxy_->metrics_->queued_requests.Decrement();
      return FinishCall(grpc::Status(grpc::CANCELLED, "cancelled while queued"));
    }
    if (stream) stream->Cancel();
  }

  void OnDone() override {
    grpc::Status final_status;
    bool held;
    {
      absl::MutexLock lock(&mu_);
      final_status = final_status_;
      held = holds_slot_;
    }
    if (held) {
      proxy_->metrics_->inflight_requests.Decrement();
      proxy_->admission_.Release();
    }
    proxy_->metrics_->CountRequest(final_status);
    if (final_status.ok()) {
      proxy_->metrics_->request_duration.Observe(absl::ToDoubleSeconds(absl::Now() - arrival_));
    }
    Unref();
  }

 private:
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    InferenceProxy* proxy = proxy_;
    delete this;
    proxy->CallEnded();
  }

  void TookSlot() {
    {
      absl::MutexLock lock(&mu_);
      holds_slot_ = true;
    }
    proxy_->metrics_->inflight_requests.Increment();
    proxy_->metrics_->queue_time.Observe(absl::ToDoubleSeconds(absl::Now() - arrival_));
  }

  void StartAttempt() {
    std::shared_ptr<WorkerStream> stream;
    grpc::Status fail;
    bool cancelled = false;
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_) {
        fail = grpc::Status(grpc::CANCELLED, "cancelled by the client");
      } else {
        RouteRequest route{request_->session_id(),
                           request_->prompt_tokens_size() + int64_t{request_->max_tokens()}};
        auto target = PickTarget(*proxy_->registry_, *proxy_->policy_, route,
                                 request_->prompt_tokens_size(), request_->max_tokens(), exclude_);
        if (!target.ok()) {
          fail = ToGrpcStatus(target.status());
          // Out of workers to try: report what the last one said (e.g. RESOURCE_EXHAUSTED).
          if (!last_error_.ok() && fail.error_code() == grpc::UNAVAILABLE) {
            fail = grpc::Status(last_error_.error_code(),
                                absl::StrCat(last_error_.error_message(), " (", fail.error_message(), ")"));
          }
        } else {
          target_ = *target;
          v1::GenerateRequest up = *request_;
          up.set_request_id(request_id_);
          up.mutable_resume_tokens()->Assign(sent_.begin(), sent_.end());
          accounted_tokens_ = route.tokens - static_cast<int64_t>(sent_.size());
          refs_.fetch_add(1, std::memory_order_relaxed);  // dropped at the end of OnWorkerDone
          target_->inflight_tokens.fetch_add(accounted_tokens_, std::memory_order_relaxed);
          target_->inflight_requests.fetch_add(1, std::memory_order_relaxed);
          stream = target_->client->Generate(up, deadline_, this);
          upstream_ = stream;
        }
      }
    }
    if (!stream) return FinishCall(fail);
    stream->Start();
    {
      absl::MutexLock lock(&mu_);
      cancelled = cancelled_;
    }
    if (cancelled) stream->Cancel();
  }

  void ReleaseAccounting() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!target_ || accounted_tokens_ == 0) return;
    target_->inflight_tokens.fetch_sub(accounted_tokens_, std::memory_order_relaxed);
    target_->inflight_requests.fetch_sub(1, std::memory_order_relaxed);
    accounted_tokens_ = 0;
  }

  // Usage as the client sees it, whatever number of workers served the stream.
  void FillUsage(v1::GenerateResponse* r, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    v1::Usage* u = r->mutable_usage();
    u->set_prompt_tokens(request_->prompt_tokens_size());
    u->set_completion_tokens(static_cast<int32_t>(sent_.size()));
    u->set_time_to_first_token_seconds(
        sent_.empty() ? 0.0 : absl::ToDoubleSeconds(first_token_ - arrival_));
    u->set_total_seconds(absl::ToDoubleSeconds(now - arrival_));
  }

  void FinishCall(const grpc::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      if (finishing_) return;
      finishing_ = true;
      final_status_ = status;
    }
    Finish(status);
  }

  InferenceProxy* const proxy_;
  // Owned by gRPC, valid until the server side's OnDone: not to be used once finishing_ is set.
  const v1::GenerateRequest* const request_;
  const absl::Time arrival_;
  const absl::Time deadline_;
  std::string request_id_;
  std::string session_id_;

  absl::Mutex mu_;
  bool holds_slot_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool saw_final_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<int> refs_{1};  // the server side's; +1 per upstream attempt
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_);
  grpc::Status last_error_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<WorkerStream> upstream_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<Target> target_ ABSL_GUARDED_BY(mu_);
  int64_t accounted_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<int32_t> sent_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> exclude_ ABSL_GUARDED_BY(mu_);
  int retries_ ABSL_GUARDED_BY(mu_) = 0;
  int resumes_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time first_token_ ABSL_GUARDED_BY(mu_);
  absl::Time last_token_ ABSL_GUARDED_BY(mu_);
  v1::GenerateResponse out_;  // the message being written (one write at a time)
};

// ---------------------------------------------------------------------------------------------
class EncodeCall final : public grpc::ServerUnaryReactor {
 public:
  EncodeCall(InferenceProxy* proxy, grpc::CallbackServerContext* ctx,
             const v1::EncodeRequest* request, v1::EncodeResponse* response)
      : proxy_(proxy), request_(request), response_(response), deadline_(DeadlineOf(ctx)) {}

  void Begin() {
    if (proxy_->draining()) {
      return Done(grpc::Status(grpc::UNAVAILABLE, "router is draining; retry on another router"));
    }
    if (absl::Status s = ValidateEncodeRequest(*request_); !s.ok()) return Done(ToGrpcStatus(s));
    Attempt();
  }

  void OnDone() override {
    proxy_->metrics_->CountRequest(status_);
    InferenceProxy* proxy = proxy_;
    delete this;
    proxy->CallEnded();
  }

 private:
  void Attempt() {
    RouteRequest route{request_->session_id(), request_->prompt_tokens_size()};
    auto target = PickTarget(*proxy_->registry_, *proxy_->policy_, route,
                             request_->prompt_tokens_size(), 0, exclude_);
    if (!target.ok()) return Done(ToGrpcStatus(target.status()));
    std::shared_ptr<Target> t = *target;
    t->client->Encode(*request_, deadline_,
                      [this, t](const grpc::Status& s, v1::EncodeResponse r) {
                        if (!s.ok() && Retriable(s, true) && attempts_ < proxy_->options_.max_retries &&
                            absl::Now() < deadline_) {
                          ++attempts_;
                          exclude_.insert(t->address);
                          if (s.error_code() == grpc::UNAVAILABLE) proxy_->registry_->MarkFailed(t->address);
                          proxy_->metrics_->retries.Increment();
                          return Attempt();
                        }
                        if (s.ok()) {
                          *response_ = std::move(r);
                          if (!request_->request_id().empty()) response_->set_request_id(request_->request_id());
                          return Done(s);
                        }
                        Done(WithWorker(s, t->address));
                      });
  }
  void Done(const grpc::Status& s) {
    status_ = s;
    Finish(s);
  }

  InferenceProxy* const proxy_;
  const v1::EncodeRequest* const request_;
  v1::EncodeResponse* const response_;
  const absl::Time deadline_;
  absl::flat_hash_set<std::string> exclude_;
  int attempts_ = 0;
  grpc::Status status_;
};

// ---------------------------------------------------------------------------------------------
InferenceProxy::InferenceProxy(ProxyOptions options, Registry* registry, RoutingPolicy* policy,
                               RouterMetrics* metrics)
    : options_(options),
      registry_(registry),
      policy_(policy),
      metrics_(metrics),
      admission_(options.max_inflight, options.max_queued) {}

InferenceProxy::~InferenceProxy() = default;

void InferenceProxy::CallEnded() { active_.fetch_sub(1); }

bool InferenceProxy::WaitIdle(absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  while (active_.load() > 0) {
    if (absl::Now() >= end) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

grpc::ServerWriteReactor<v1::GenerateResponse>* InferenceProxy::Generate(
    grpc::CallbackServerContext* ctx, const v1::GenerateRequest* request) {
  CallStarted();
  auto* call = new GenerateCall(this, ctx, request);
  call->Begin();
  return call;
}

grpc::ServerUnaryReactor* InferenceProxy::Encode(grpc::CallbackServerContext* ctx,
                                                 const v1::EncodeRequest* request,
                                                 v1::EncodeResponse* response) {
  CallStarted();
  auto* call = new EncodeCall(this, ctx, request, response);
  call->Begin();
  return call;
}

grpc::ServerUnaryReactor* InferenceProxy::GetModelInfo(grpc::CallbackServerContext* ctx,
                                                       const v1::GetModelInfoRequest* /*request*/,
                                                       v1::ModelInfo* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  std::shared_ptr<Target> target = registry_->AnyHealthy();
  if (!target) {
    reactor->Finish(grpc::Status(grpc::UNAVAILABLE, "no healthy worker to describe the model"));
    return reactor;
  }
  target->client->GetModelInfo(
      options_.model_info_timeout,
      [this, reactor, response, target](const grpc::Status& s, v1::ModelInfo info) {
        if (!s.ok()) return reactor->Finish(WithWorker(s, target->address));
        *response = std::move(info);
        response->clear_pools();
        for (const Pool& p : registry_->HealthyPools()) {
          v1::PoolInfo* pi = response->add_pools();
          pi->set_name(absl::StrCat("ctx", p.max_context_tokens));
          pi->set_max_context_tokens(p.max_context_tokens);
          pi->set_healthy_groups(static_cast<int32_t>(p.members.size()));
          pi->set_group_size(p.members.empty() ? 1 : p.members.front().group_size);
          pi->set_shard_mode(p.members.empty() ? "" : p.members.front().shard_mode);
        }
        reactor->Finish(grpc::Status::OK);
      });
  return reactor;
}

}  // namespace sqa::router
