// The public sqa.v1.Inference service of the router: validates, admits (bounded queue), routes
// (pools by context, then the RoutingPolicy), and proxies each call to a worker group leader.
// Generate streams are proxied with back-pressure (the next upstream message is read only after
// the previous one was written to the client); the client's deadline and cancellation propagate
// upstream. Before the first token an UNAVAILABLE worker is replaced (retry); after it, the stream
// resumes on another worker with resume_tokens = the tokens already sent, so the client sees no
// token lost or repeated.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "router/admission.h"
#include "router/registry.h"
#include "router/router_metrics.h"
#include "router/routing_policy.h"
#include "sqa/v1/inference.grpc.pb.h"

namespace sqa::router {

class GenerateCall;
class EncodeCall;

struct ProxyOptions {
  int64_t max_inflight = 256;  // Generate streams running at once
  int64_t max_queued = 1024;   // waiting for a slot; beyond: RESOURCE_EXHAUSTED
  int max_retries = 2;         // extra workers tried before the first token
  int max_resumes = 3;         // mid-stream replacements of a failed worker
  absl::Duration model_info_timeout = absl::Seconds(5);
};

// Smallest-context pool that fits `tokens_needed`, then the policy among its members that are
// not in `exclude` (larger pools when all of them are). INVALID_ARGUMENT when no pool is large
// enough; UNAVAILABLE when no healthy worker can take it.
absl::StatusOr<std::shared_ptr<Target>> PickTarget(const Registry& registry, RoutingPolicy& policy,
                                                   const RouteRequest& request,
                                                   int64_t prompt_tokens, int64_t max_tokens,
                                                   const absl::flat_hash_set<std::string>& exclude);

class InferenceProxy final : public v1::Inference::CallbackService {
 public:
  // All pointers must outlive the proxy (and the server it is registered on).
  InferenceProxy(ProxyOptions options, Registry* registry, RoutingPolicy* policy,
                 RouterMetrics* metrics);
  ~InferenceProxy() override;

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* ctx, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Encode(grpc::CallbackServerContext* ctx, const v1::EncodeRequest* request,
                                   v1::EncodeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* ctx,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;

  // New calls get UNAVAILABLE ("router is draining"); running ones continue.
  void StartDrain() { draining_.store(true); }
  bool draining() const { return draining_.load(); }
  // Calls in progress (Generate streams, queued or running, plus unary calls).
  int64_t active_calls() const { return active_.load(); }
  // Waits until no call is in progress; false on timeout.
  bool WaitIdle(absl::Duration timeout);

 private:
  friend class GenerateCall;
  friend class EncodeCall;
  void CallStarted() { active_.fetch_add(1); }
  void CallEnded();

  const ProxyOptions options_;
  Registry* registry_;
  RoutingPolicy* policy_;
  RouterMetrics* metrics_;
  Admission admission_;
  std::atomic<bool> draining_{false};
  std::atomic<int64_t> active_{0};
  absl::Mutex idle_mu_;
};

}  // namespace sqa::router
