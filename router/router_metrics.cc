#include "router/router_metrics.h"

#include "absl/strings/match.h"
#include "services/metrics.h"

namespace sqa::router {
namespace {

prometheus::Histogram& MakeHistogram(prometheus::Registry& r, const std::string& name,
                                     const std::string& help,
                                     const prometheus::Histogram::BucketBoundaries& buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, buckets);
}
prometheus::Counter& MakeCounter(prometheus::Registry& r, const std::string& name,
                                 const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
}
prometheus::Gauge& MakeGauge(prometheus::Registry& r, const std::string& name,
                             const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
}

}  // namespace

const char* GrpcCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::OK: return "OK";
    case grpc::CANCELLED: return "CANCELLED";
    case grpc::UNKNOWN: return "UNKNOWN";
    case grpc::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::NOT_FOUND: return "NOT_FOUND";
    case grpc::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::ABORTED: return "ABORTED";
    case grpc::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::INTERNAL: return "INTERNAL";
    case grpc::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::DATA_LOSS: return "DATA_LOSS";
    case grpc::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

RouterMetrics::RouterMetrics(prometheus::Registry& r)
    : time_to_first_token(MakeHistogram(r, "sqa_router_time_to_first_token_seconds",
                                        "Time from the arrival of a Generate request to its first token sent to the client",
                                        LatencyBucketsSeconds())),
      inter_token_latency(MakeHistogram(r, "sqa_router_inter_token_latency_seconds",
                                        "Time between consecutive tokens sent to the client",
                                        StepBucketsSeconds())),
      request_duration(MakeHistogram(r, "sqa_router_request_duration_seconds",
                                     "End-to-end time of successful Generate requests, from arrival to the last token",
                                     LatencyBucketsSeconds())),
      queue_time(MakeHistogram(r, "sqa_router_queue_time_seconds",
                               "Time requests waited in the router's admission queue",
                               LatencyBucketsSeconds())),
      retries(MakeCounter(r, "sqa_router_retries_total",
                          "Requests re-sent to another worker before their first token")),
      resumes(MakeCounter(r, "sqa_router_resumes_total",
                          "Streams resumed on another worker after a mid-stream failure")),
      generated_tokens(MakeCounter(r, "sqa_router_generated_tokens_total",
                                   "Tokens streamed to clients")),
      healthy_groups(MakeGauge(r, "sqa_router_healthy_groups", "Worker groups currently healthy")),
      inflight_requests(MakeGauge(r, "sqa_router_inflight_requests",
                                  "Generate requests holding an admission slot")),
      queued_requests(MakeGauge(r, "sqa_router_queued_requests",
                                "Generate requests waiting in the admission queue")),
      requests_(prometheus::BuildCounter()
                    .Name("sqa_router_requests_total")
                    .Help("Finished requests (Generate and Encode) by outcome and gRPC code")
                    .Register(r)) {}

void RouterMetrics::CountRequest(const grpc::Status& status) {
  const char* outcome = "error";
  switch (status.error_code()) {
    case grpc::OK: outcome = "ok"; break;
    case grpc::CANCELLED: outcome = "cancelled"; break;
    case grpc::DEADLINE_EXCEEDED: outcome = "deadline_exceeded"; break;
    case grpc::INVALID_ARGUMENT: outcome = "invalid"; break;
    case grpc::RESOURCE_EXHAUSTED: outcome = "rejected"; break;
    default: break;
  }
  if (status.error_code() == grpc::UNAVAILABLE &&
      absl::StrContains(status.error_message(), "draining")) {
    outcome = "rejected";
  }
  requests_.Add({{kLabelOutcome, outcome}, {kLabelCode, GrpcCodeName(status.error_code())}})
      .Increment();
}

}  // namespace sqa::router
