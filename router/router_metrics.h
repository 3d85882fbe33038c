// The router's Prometheus metrics, declared once at start-up on one registry. Thread-safe.
#pragma once

#include <string>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "grpcpp/support/status.h"

namespace sqa::router {

class RouterMetrics {
 public:
  explicit RouterMetrics(prometheus::Registry& registry);

  // sqa_router_requests_total{outcome, code}: outcome is ok, cancelled, deadline_exceeded,
  // rejected (admission full or draining), invalid (bad request), error.
  void CountRequest(const grpc::Status& status);

  prometheus::Histogram& time_to_first_token;  // sqa_router_time_to_first_token_seconds
  prometheus::Histogram& inter_token_latency;  // sqa_router_inter_token_latency_seconds
  prometheus::Histogram& request_duration;     // sqa_router_request_duration_seconds (e2e, ok only)
  prometheus::Histogram& queue_time;           // sqa_router_queue_time_seconds
  prometheus::Counter& retries;                // sqa_router_retries_total
  prometheus::Counter& resumes;                // sqa_router_resumes_total
  prometheus::Counter& generated_tokens;       // sqa_router_generated_tokens_total
  prometheus::Gauge& healthy_groups;           // sqa_router_healthy_groups
  prometheus::Gauge& inflight_requests;        // sqa_router_inflight_requests
  prometheus::Gauge& queued_requests;          // sqa_router_queued_requests

 private:
  prometheus::Family<prometheus::Counter>& requests_;
};

// "OK", "INVALID_ARGUMENT", ... (the canonical upper-case names).
const char* GrpcCodeName(grpc::StatusCode code);

}  // namespace sqa::router
