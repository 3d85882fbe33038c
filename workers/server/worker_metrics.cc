#include "workers/server/worker_metrics.h"

#include "services/metrics.h"

namespace sqa::worker {
namespace {

prometheus::Gauge& G(prometheus::Registry& r, const char* name, const char* help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
}
prometheus::Counter& C(prometheus::Registry& r, const char* name, const char* help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
}
prometheus::Histogram& H(prometheus::Registry& r, const char* name, const char* help,
                         const prometheus::Histogram::BucketBoundaries& b) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, b);
}

}  // namespace

WorkerMetrics::WorkerMetrics(prometheus::Registry& r)
    : running_requests(G(r, "sqa_worker_running_requests", "Requests admitted (prefilling or decoding)")),
      waiting_requests(G(r, "sqa_worker_waiting_requests", "Requests accepted and waiting for KV capacity")),
      prompt_tokens(C(r, "sqa_worker_prompt_tokens_total", "Prompt tokens prefilled (including resume tokens)")),
      generation_tokens(C(r, "sqa_worker_generation_tokens_total", "Tokens sampled and streamed")),
      step_seconds(H(r, "sqa_worker_step_duration_seconds", "Wall time of one scheduler step (one forward pass)",
                     StepBucketsSeconds())),
      batch_tokens(H(r, "sqa_worker_batch_size_tokens", "Tokens in one scheduler step (decode + prefill)",
                     TokenCountBuckets())),
      kv_blocks_used(G(r, "sqa_worker_kv_blocks_used", "KV cache blocks holding tokens")),
      kv_blocks_reserved(G(r, "sqa_worker_kv_blocks_reserved",
                           "KV cache blocks reserved by admitted requests (prompt + max_tokens)")),
      kv_blocks_capacity(G(r, "sqa_worker_kv_blocks_capacity", "KV cache blocks of this worker")),
      prefill_step_seconds(C(r, "sqa_worker_prefill_step_seconds_total",
                             "Wall time of scheduler steps that carried prefill tokens (mixed steps count in full)")),
      prefill_tokens_per_second(G(r, "sqa_worker_prefill_tokens_per_second",
                                  "Prompt tokens per second of wall time of the steps that carried them, "
                                  "over the last ~5 s of such steps (mixed steps count in full)")),
      queue_seconds(H(r, "sqa_worker_queue_time_seconds", "Time from submission to admission",
                      LatencyBucketsSeconds())),
      ttft_seconds(H(r, "sqa_worker_time_to_first_token_seconds", "Time from submission to the first token",
                     LatencyBucketsSeconds())),
      admitting(G(r, "sqa_worker_admitting", "1 while the worker admits requests, 0 while draining")),
      requests_(prometheus::BuildCounter()
                    .Name("sqa_worker_requests_total")
                    .Help("Finished requests by kind and outcome")
                    .Register(r)) {
  // Every series exists from the start (zero), so rates and dashboards work before the first event.
  for (const char* kind : {"generate", "encode"})
    for (const char* outcome : {kOutcomeOk, kOutcomeCancelled, kOutcomeDeadline, kOutcomeInvalid, kOutcomeRejected,
                                kOutcomeError})
      requests_.Add({{kLabelKind, kind}, {kLabelOutcome, outcome}});
  admitting.Set(1);
}

void WorkerMetrics::CountRequest(const std::string& kind, const std::string& outcome) {
  requests_.Add({{kLabelKind, kind}, {kLabelOutcome, outcome}}).Increment();
}

}  // namespace sqa::worker
