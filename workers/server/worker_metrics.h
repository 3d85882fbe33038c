// Prometheus metrics of a worker (sqa_worker_*), declared once at start-up on a registry.
// Metric objects are thread-safe (prometheus-cpp uses atomics); the struct itself is immutable
// after construction.
//
//   sqa_worker_running_requests                    gauge      admitted (prefilling or decoding)
//   sqa_worker_waiting_requests                    gauge      accepted, waiting for KV capacity
//   sqa_worker_prompt_tokens_total                 counter    prompt tokens prefilled (incl. resume)
//   sqa_worker_generation_tokens_total             counter    tokens sampled and streamed
//   sqa_worker_step_duration_seconds               histogram  wall time of one scheduler step
//   sqa_worker_batch_size_tokens                   histogram  tokens in one step (decode + prefill)
//   sqa_worker_kv_blocks_used                      gauge      KV blocks holding tokens now
//   sqa_worker_kv_blocks_reserved                  gauge      KV blocks reserved by admitted requests
//   sqa_worker_kv_blocks_capacity                  gauge      KV blocks of this worker
//   sqa_worker_prefill_step_seconds_total          counter    wall time of steps that carried prefill
//                                                              (mixed steps count in full)
//   sqa_worker_prefill_tokens_per_second           gauge      prompt tokens / wall time of the steps
//                                                              that carried them, over the last
//                                                              ~5 s of such steps (mixed steps count
//                                                              in full, so decode time is included)
//   sqa_worker_queue_time_seconds                  histogram  submit -> admission
//   sqa_worker_time_to_first_token_seconds         histogram  submit -> first token (generate)
//   sqa_worker_requests_total{kind,outcome}        counter    finished requests by outcome
//   sqa_worker_admitting                           gauge      1 while admitting, 0 while draining
#pragma once

#include <string>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace sqa::worker {

inline constexpr char kLabelKind[] = "kind";  // generate, encode
// Outcome label values.
inline constexpr char kOutcomeOk[] = "ok";
inline constexpr char kOutcomeCancelled[] = "cancelled";
inline constexpr char kOutcomeDeadline[] = "deadline_exceeded";
inline constexpr char kOutcomeInvalid[] = "invalid_argument";
inline constexpr char kOutcomeRejected[] = "rejected";  // RESOURCE_EXHAUSTED or UNAVAILABLE at submit
inline constexpr char kOutcomeError[] = "error";

class WorkerMetrics {
 public:
  explicit WorkerMetrics(prometheus::Registry& registry);

  prometheus::Gauge& running_requests;
  prometheus::Gauge& waiting_requests;
  prometheus::Counter& prompt_tokens;
  prometheus::Counter& generation_tokens;
  prometheus::Histogram& step_seconds;
  prometheus::Histogram& batch_tokens;
  prometheus::Gauge& kv_blocks_used;
  prometheus::Gauge& kv_blocks_reserved;
  prometheus::Gauge& kv_blocks_capacity;
  prometheus::Counter& prefill_step_seconds;
  prometheus::Gauge& prefill_tokens_per_second;
  prometheus::Histogram& queue_seconds;
  prometheus::Histogram& ttft_seconds;
  prometheus::Gauge& admitting;

  // kind: "generate" or "encode"; outcome: one of kOutcome*.
  void CountRequest(const std::string& kind, const std::string& outcome);

 private:
  prometheus::Family<prometheus::Counter>& requests_;
};

}  // namespace sqa::worker
