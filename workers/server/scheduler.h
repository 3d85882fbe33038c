// Continuous-batching scheduler of one worker. Its thread owns the Engine and runs steps; each step
// is one Engine::Forward over:
//   1. one token for every running sequence in decode (rotating when they exceed the budget), then
//   2. prefill chunks of admitted requests, oldest first, filling the rest of the per-step token
//      budget (max_batch_tokens), so a long prefill delays running decodes by at most one chunk.
// Admission is by KV capacity: a request is admitted (FIFO) when the blocks for prompt + max_tokens
// can be reserved on top of all other reservations, so admitted requests never run out of KV.
// Requests that could never fit are refused at submission (RESOURCE_EXHAUSTED); the others wait
// in a bounded queue. Cancellation and deadlines are checked at every step boundary (also for
// queued requests) and free the request's blocks at once.
//
// Thread-safety: Submit*, Cancel, StartDrain, Load and the accessors are thread-safe. Callbacks
// run on the scheduler thread (or the thread calling Stop()) and must not block or call back into
// the scheduler except Cancel(). Without Start(), a test drives the scheduler with RunStep().
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "workers/engine/engine.h"
#include "workers/engine/sampling.h"

namespace sqa::worker {

class WorkerMetrics;

using RequestId = uint64_t;

// What one step did (tests and debugging).
struct StepInfo {
  struct Part {
    RequestId request = 0;
    int64_t tokens = 0;
    bool decode = false;  // one decode token; else a prefill chunk
  };
  int64_t index = 0;
  std::vector<Part> parts;  // in Forward's segment order: decodes first, then prefill chunks
  int64_t total_tokens = 0;
  double seconds = 0;
};

struct SchedulerOptions {
  int64_t max_batch_tokens = 512;  // tokens per step (decode tokens + prefill chunk tokens)
  int max_queued = 256;            // accepted requests waiting for admission; more -> RESOURCE_EXHAUSTED
  bool whole_prompts = false;      // prefill each prompt in one step (sequence-sharded groups)
  // Called on the scheduler thread after every step (tests).
  std::function<void(const StepInfo&)> on_step;
};

enum class FinishReason { kNone, kLength, kStop, kContext };

struct GenerateParams {
  std::vector<int32_t> prompt;
  // Tokens already produced for this request elsewhere (resume): prefilled after the prompt;
  // sampling steps continue from their count. They count towards max_tokens. When the last of
  // them is a stop token the request finishes at once with kStop and no new token.
  std::vector<int32_t> resume_tokens;
  SamplingParams sampling;          // already normalized (top_p in (0, 1])
  int32_t max_tokens = 0;           // total completion tokens, resume_tokens included
  std::vector<int32_t> stop_tokens; // finish after emitting one of these
  std::string tag;                  // request id for log lines
};

enum class EncodeOutput { kLogits, kHiddenState };

struct EncodeParams {
  std::vector<int32_t> prompt;
  EncodeOutput output = EncodeOutput::kLogits;
  bool prompt_logprobs = false;
  std::string tag;
};

struct RequestResult {
  FinishReason finish_reason = FinishReason::kNone;  // generate
  int64_t prompt_tokens = 0;       // the request's prompt (without resume tokens)
  int64_t completion_tokens = 0;   // generated, resume tokens included
  double queue_seconds = 0;        // submit -> admission
  double time_to_first_token_seconds = 0;  // submit -> first new token (generate)
  double total_seconds = 0;        // submit -> finish
  std::vector<float> values;          // encode: logits [vocab] or final-normed hidden state [hidden] of the last position
  std::vector<float> prompt_logprobs; // encode: log p(prompt[i] | prompt[<i]) for i >= 1
};

struct RequestCallbacks {
  // Generate: every sampled token, in order, with its log-probability.
  std::function<void(int32_t token, float logprob)> on_token;
  // Exactly once, after the last on_token. OK with the result, or the error: CANCELLED,
  // DEADLINE_EXCEEDED, UNAVAILABLE (shutdown), INTERNAL (engine failure).
  std::function<void(const absl::Status& status, RequestResult result)> on_done;
};

struct LoadSnapshot {
  int32_t queued_requests = 0;
  int32_t running_requests = 0;
  int64_t queued_tokens = 0;   // prompt tokens not yet prefilled (queued + prefilling)
  int64_t running_tokens = 0;  // tokens in KV of running requests
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_reserved = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_block_size = 0;
  bool admitting = true;
  int64_t max_context_tokens = 0;
};

class Scheduler {
 public:
  // `metrics` may be null; it must outlive the scheduler.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(std::unique_ptr<Engine> engine, SchedulerOptions options,
                                                           WorkerMetrics* metrics);
  ~Scheduler();  // Stop()

  void Start();  // starts the scheduler thread
  // Stops the thread; requests not finished get UNAVAILABLE. Idempotent.
  void Stop();

  // Validates and queues. Errors (returned here; callbacks are then never called):
  // INVALID_ARGUMENT (bad request), RESOURCE_EXHAUSTED (can never fit the KV cache, or the queue is
  // full), UNAVAILABLE (draining or stopped).
  absl::StatusOr<RequestId> SubmitGenerate(GenerateParams params, absl::Time deadline, RequestCallbacks callbacks);
  absl::StatusOr<RequestId> SubmitEncode(EncodeParams params, absl::Time deadline, RequestCallbacks callbacks);
  // The request finishes with CANCELLED at the next step boundary; unknown ids are ignored.
  void Cancel(RequestId id);

  // Stops admitting new submissions (UNAVAILABLE); accepted requests run to completion.
  void StartDrain();
  bool draining() const;
  // Blocks until no request is queued or running, or `timeout` passes. True when idle.
  bool WaitIdle(absl::Duration timeout);

  LoadSnapshot Load() const;
  const ModelConfig& model_config() const { return config_; }
  std::string device_name() const { return device_name_; }  // backend name: "cpu", "cuda:0"
  DType act_dtype() const { return act_dtype_; }
  int64_t max_context_tokens() const { return config_.max_position_embeddings; }

  // Test mode (not Start()ed): runs one step. False when there was nothing to do.
  bool RunStep();

 private:
  struct Request;
  Scheduler() = default;
  absl::Status ValidateCommon(const std::vector<int32_t>& tokens, const char* field) const;
  absl::StatusOr<RequestId> Enqueue(std::unique_ptr<Request> r);
  absl::StatusOr<RequestId> SubmitGenerateImpl(GenerateParams params, absl::Time deadline, RequestCallbacks callbacks);
  absl::StatusOr<RequestId> SubmitEncodeImpl(EncodeParams params, absl::Time deadline, RequestCallbacks callbacks);
  void Loop();
  bool Step();
  void Finish(Request& r, absl::Status status);
  void PublishLoad() ABSL_LOCKS_EXCLUDED(mu_);

  std::unique_ptr<Engine> engine_;
  SchedulerOptions options_;
  WorkerMetrics* metrics_ = nullptr;
  ModelConfig config_;
  std::string device_name_;
  DType act_dtype_ = DType::kF32;
  int64_t kv_blocks_total_ = 0;
  int64_t block_size_ = 0;

  // Scheduler-thread state.
  std::deque<std::unique_ptr<Request>> waiting_;
  std::list<std::unique_ptr<Request>> active_;  // admission order
  int64_t reserved_blocks_ = 0;
  size_t decode_rotation_ = 0;
  int64_t step_index_ = 0;
  // Prefill throughput window.
  double window_prefill_tokens_ = 0, window_prefill_seconds_ = 0;

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Request>> inbox_ ABSL_GUARDED_BY(mu_);
  std::vector<RequestId> cancels_ ABSL_GUARDED_BY(mu_);
  RequestId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  int queued_ ABSL_GUARDED_BY(mu_) = 0;  // inbox + waiting
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  LoadSnapshot load_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace sqa::worker
