#include "workers/server/scheduler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "services/common/log.h"
#include "services/common/status.h"
#include "workers/server/worker_metrics.h"

namespace sqa::worker {

struct Scheduler::Request {
  RequestId id = 0;
  bool encode = false;
  GenerateParams gen;
  EncodeParams enc;
  std::vector<int32_t> feed;   // tokens to prefill: prompt (+ resume tokens)
  int64_t prefilled = 0;       // tokens of `feed` in the KV cache
  int64_t reserve_blocks = 0;
  absl::Time submitted, deadline;
  bool admitted = false;
  SeqId seq = 0;
  bool cancelled = false;
  bool done = false;
  bool decoding = false;
  int32_t last_token = 0;      // decode input of the next step
  int64_t generated = 0;       // completion tokens so far, resume tokens included
  bool first_token_sent = false;
  bool stopped_before_start = false;  // resume_tokens end with a stop token: nothing to generate
  RequestCallbacks cb;
  RequestResult result;
};

namespace {

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

double LogSumExp(const float* x, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(x[i]));
  if (!std::isfinite(m)) return m;
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(static_cast<double>(x[i]) - m);
  return m + std::log(s);
}

const char* OutcomeFor(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kOk: return kOutcomeOk;
    case absl::StatusCode::kCancelled: return kOutcomeCancelled;
    case absl::StatusCode::kDeadlineExceeded: return kOutcomeDeadline;
    case absl::StatusCode::kInvalidArgument: return kOutcomeInvalid;
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kUnavailable: return kOutcomeRejected;
    default: return kOutcomeError;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(std::unique_ptr<Engine> engine, SchedulerOptions options,
                                                             WorkerMetrics* metrics) {
  if (engine == nullptr) return absl::InvalidArgumentError("Scheduler needs an engine");
  if (options.max_batch_tokens <= 0)
    return absl::InvalidArgumentError(absl::StrCat("max_batch_tokens must be > 0, got ", options.max_batch_tokens));
  if (options.max_queued < 0)
    return absl::InvalidArgumentError(absl::StrCat("max_queued must be >= 0, got ", options.max_queued));
  std::unique_ptr<Scheduler> s(new Scheduler());
  s->config_ = engine->config();
  s->device_name_ = engine->backend().name();
  s->act_dtype_ = engine->backend().act_dtype();
  s->kv_blocks_total_ = engine->kv_pool().num_blocks();
  s->block_size_ = engine->kv_pool().block_size();
  s->engine_ = std::move(engine);
  s->options_ = std::move(options);
  s->metrics_ = metrics;
  if (metrics) metrics->kv_blocks_capacity.Set(static_cast<double>(s->kv_blocks_total_));
  s->PublishLoad();
  return s;
}

Scheduler::~Scheduler() { Stop(); }

void Scheduler::Start() {
  absl::MutexLock lock(&mu_);
  if (thread_.joinable() || stopping_) return;
  thread_ = std::thread([this] { Loop(); });
}

void Scheduler::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  // Nothing runs steps any more: fail what is left (this thread now owns the scheduler state).
  std::vector<std::unique_ptr<Request>> inbox;
  {
    absl::MutexLock lock(&mu_);
    inbox.swap(inbox_);
  }
  for (auto& r : inbox) waiting_.push_back(std::move(r));
  const absl::Status st = absl::UnavailableError("worker is shutting down; retry on another worker");
  for (auto& r : waiting_) Finish(*r, st);
  for (auto& r : active_) Finish(*r, st);
  waiting_.clear();
  active_.clear();
  PublishLoad();
}

void Scheduler::StartDrain() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  load_.admitting = false;
  if (metrics_) metrics_->admitting.Set(0);
}

bool Scheduler::draining() const {
  absl::MutexLock lock(&mu_);
  return draining_;
}

bool Scheduler::WaitIdle(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return queued_ == 0 && running_ == 0; };
  return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

LoadSnapshot Scheduler::Load() const {
  absl::MutexLock lock(&mu_);
  LoadSnapshot l = load_;
  l.queued_requests = queued_;
  l.running_requests = running_;
  for (const auto& r : inbox_) l.queued_tokens += static_cast<int64_t>(r->feed.size());
  return l;
}

absl::Status Scheduler::ValidateCommon(const std::vector<int32_t>& tokens, const char* field) const {
  const int64_t vocab = config_.vocab_size;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab)
      return absl::InvalidArgumentError(absl::StrCat(field, "[", i, "] = ", tokens[i],
                                                     " is outside the vocabulary [0, ", vocab, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<RequestId> Scheduler::SubmitGenerate(GenerateParams p, absl::Time deadline, RequestCallbacks cb) {
  absl::StatusOr<RequestId> id = SubmitGenerateImpl(std::move(p), deadline, std::move(cb));
  if (!id.ok() && metrics_) metrics_->CountRequest("generate", OutcomeFor(id.status()));
  return id;
}

absl::StatusOr<RequestId> Scheduler::SubmitEncode(EncodeParams p, absl::Time deadline, RequestCallbacks cb) {
  absl::StatusOr<RequestId> id = SubmitEncodeImpl(std::move(p), deadline, std::move(cb));
  if (!id.ok() && metrics_) metrics_->CountRequest("encode", OutcomeFor(id.status()));
  return id;
}

absl::StatusOr<RequestId> Scheduler::SubmitGenerateImpl(GenerateParams p, absl::Time deadline, RequestCallbacks cb) {
  if (p.prompt.empty()) return absl::InvalidArgumentError("prompt_tokens is empty; send at least one token");
  SQA_RETURN_IF_ERROR(ValidateCommon(p.prompt, "prompt_tokens"));
  SQA_RETURN_IF_ERROR(ValidateCommon(p.resume_tokens, "resume_tokens"));
  SQA_RETURN_IF_ERROR(ValidateCommon(p.stop_tokens, "stop_tokens"));
  if (p.max_tokens <= 0) return absl::InvalidArgumentError(absl::StrCat("max_tokens must be > 0, got ", p.max_tokens));
  if (static_cast<int64_t>(p.resume_tokens.size()) >= p.max_tokens)
    return absl::InvalidArgumentError(absl::StrCat("resume_tokens (", p.resume_tokens.size(),
                                                   ") already reach max_tokens (", p.max_tokens,
                                                   "); nothing is left to generate"));
  SQA_RETURN_IF_ERROR(ValidateSamplingParams(p.sampling));
  const int64_t n = static_cast<int64_t>(p.prompt.size());
  const int64_t ctx = config_.max_position_embeddings;
  if (ctx > 0 && n + p.max_tokens > ctx)
    return absl::InvalidArgumentError(absl::StrCat("prompt (", n, " tokens) + max_tokens (", p.max_tokens, ") = ",
                                                   n + p.max_tokens, " exceeds the model's context of ", ctx,
                                                   " tokens; shorten the prompt or lower max_tokens"));
  const int64_t blocks = (n + p.max_tokens + block_size_ - 1) / block_size_;
  if (blocks > kv_blocks_total_)
    return absl::ResourceExhaustedError(absl::StrCat(
        "prompt (", n, " tokens) + max_tokens (", p.max_tokens, ") needs ", blocks, " KV blocks of ", block_size_,
        " tokens; this worker has ", kv_blocks_total_, " (", kv_blocks_total_ * block_size_,
        " tokens): lower max_tokens, or send it to a worker with a larger --kv-cache-mb"));
  auto r = std::make_unique<Request>();
  r->encode = false;
  r->feed = p.prompt;
  r->feed.insert(r->feed.end(), p.resume_tokens.begin(), p.resume_tokens.end());
  r->generated = static_cast<int64_t>(p.resume_tokens.size());
  // A resumed stream whose last sent token was a stop token had finished; only its closing message
  // was lost. Answer STOP with no new tokens instead of generating past the stop token.
  r->stopped_before_start = !p.resume_tokens.empty() && std::find(p.stop_tokens.begin(), p.stop_tokens.end(),
                                                                  p.resume_tokens.back()) != p.stop_tokens.end();
  r->result.prompt_tokens = n;
  r->reserve_blocks = blocks;
  r->gen = std::move(p);
  r->deadline = deadline;
  r->cb = std::move(cb);
  return Enqueue(std::move(r));
}

absl::StatusOr<RequestId> Scheduler::SubmitEncodeImpl(EncodeParams p, absl::Time deadline, RequestCallbacks cb) {
  if (p.prompt.empty()) return absl::InvalidArgumentError("prompt_tokens is empty; send at least one token");
  SQA_RETURN_IF_ERROR(ValidateCommon(p.prompt, "prompt_tokens"));
  const int64_t n = static_cast<int64_t>(p.prompt.size());
  const int64_t ctx = config_.max_position_embeddings;
  if (ctx > 0 && n > ctx)
    return absl::InvalidArgumentError(
        absl::StrCat("prompt has ", n, " tokens; the model's context is ", ctx, " tokens"));
  const int64_t blocks = (n + block_size_ - 1) / block_size_;
  if (blocks > kv_blocks_total_)
    return absl::ResourceExhaustedError(absl::StrCat("prompt (", n, " tokens) needs ", blocks, " KV blocks of ",
                                                     block_size_, " tokens; this worker has ", kv_blocks_total_,
                                                     ": send it to a worker with a larger --kv-cache-mb"));
  auto r = std::make_unique<Request>();
  r->encode = true;
  r->feed = p.prompt;
  r->result.prompt_tokens = n;
  r->reserve_blocks = blocks;
  r->enc = std::move(p);
  r->deadline = deadline;
  r->cb = std::move(cb);
  return Enqueue(std::move(r));
}

absl::StatusOr<RequestId> Scheduler::Enqueue(std::unique_ptr<Request> r) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("worker is shutting down; retry on another worker");
  if (draining_) return absl::UnavailableError("worker is draining; retry on another worker");
  if (queued_ >= options_.max_queued)
    return absl::ResourceExhaustedError(absl::StrCat("worker queue is full (", queued_,
                                                     " requests waiting for KV capacity); retry later or elsewhere"));
  r->id = next_id_++;
  r->submitted = absl::Now();
  const RequestId id = r->id;
  ++queued_;
  inbox_.push_back(std::move(r));
  return id;
}

void Scheduler::Cancel(RequestId id) {
  absl::MutexLock lock(&mu_);
  cancels_.push_back(id);
}

void Scheduler::Loop() {
  while (true) {
    const bool has_work = !waiting_.empty() || !active_.empty();
    {
      absl::MutexLock lock(&mu_);
      auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !inbox_.empty() || !cancels_.empty();
      };
      // Idle: sleep until something arrives. Busy: step at once. (The timeout bounds how late a
      // queued request's deadline is noticed if it ever waits with nothing running.)
      if (!has_work) mu_.AwaitWithTimeout(absl::Condition(&wake), absl::Milliseconds(100));
      if (stopping_) return;
    }
    if (!Step() && has_work) absl::SleepFor(absl::Milliseconds(1));
  }
}

bool Scheduler::RunStep() { return Step(); }

void Scheduler::Finish(Request& r, absl::Status status) {
  if (r.done) return;
  r.done = true;
  {
    absl::MutexLock lock(&mu_);
    if (r.admitted) --running_;
    else --queued_;
  }
  if (r.admitted) {
    engine_->Release(r.seq);
    reserved_blocks_ -= r.reserve_blocks;
  }
  const absl::Time now = absl::Now();
  r.result.total_seconds = Seconds(now - r.submitted);
  r.result.completion_tokens = r.encode ? 0 : r.generated;
  const char* kind = r.encode ? "encode" : "generate";
  if (metrics_) metrics_->CountRequest(kind, OutcomeFor(status));
  if (!status.ok() && status.code() != absl::StatusCode::kCancelled)
    SQA_LOG(INFO) << "request " << (r.encode ? r.enc.tag : r.gen.tag) << " (" << kind << ") ended: " << status;
  if (r.cb.on_done) r.cb.on_done(status, std::move(r.result));
}

bool Scheduler::Step() {
  const absl::Time start = absl::Now();
  std::vector<RequestId> cancels;
  {
    absl::MutexLock lock(&mu_);
    for (auto& r : inbox_) waiting_.push_back(std::move(r));
    inbox_.clear();
    cancels.swap(cancels_);
  }
  bool did = false;
  // Cancellation and deadlines, for queued and running requests alike.
  auto check = [&](Request& r) {
    if (r.done) return;
    if (!cancels.empty() && std::find(cancels.begin(), cancels.end(), r.id) != cancels.end()) r.cancelled = true;
    if (r.stopped_before_start) {
      r.result.finish_reason = FinishReason::kStop;
      Finish(r, absl::OkStatus());
      did = true;
    } else if (r.cancelled) {
      Finish(r, absl::CancelledError("request cancelled by the client"));
      did = true;
    } else if (r.deadline < start) {
      Finish(r, absl::DeadlineExceededError(absl::StrCat(
                    "deadline expired after ", absl::FormatDuration(start - r.submitted),
                    r.admitted ? absl::StrCat(" (", r.generated, " tokens generated)") : std::string(" while queued"))));
      did = true;
    }
  };
  for (auto& r : waiting_) check(*r);
  for (auto& r : active_) check(*r);
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(), [](const auto& r) { return r->done; }),
                 waiting_.end());
  active_.remove_if([](const auto& r) { return r->done; });

  // Admission, first come first served (no overtaking, so a large request is not starved).
  while (!waiting_.empty() && reserved_blocks_ + waiting_.front()->reserve_blocks <= kv_blocks_total_) {
    std::unique_ptr<Request> r = std::move(waiting_.front());
    waiting_.pop_front();
    r->admitted = true;
    r->seq = engine_->NewSequence();
    reserved_blocks_ += r->reserve_blocks;
    r->result.queue_seconds = Seconds(start - r->submitted);
    if (metrics_) metrics_->queue_seconds.Observe(r->result.queue_seconds);
    {
      absl::MutexLock lock(&mu_);
      --queued_;
      ++running_;
    }
    active_.push_back(std::move(r));
    did = true;
  }

  // The step's plan: decodes first, then prefill chunks under the remaining budget.
  std::vector<Engine::Segment> segs;
  std::vector<Request*> seg_req;
  StepInfo info;
  info.index = step_index_;
  int64_t budget = options_.max_batch_tokens;
  std::vector<Request*> decoders;
  for (auto& r : active_)
    if (r->decoding) decoders.push_back(r.get());
  if (!decoders.empty()) {
    const size_t n = std::min<size_t>(decoders.size(), static_cast<size_t>(budget));
    const size_t first = decoders.size() > n ? decode_rotation_ % decoders.size() : 0;
    for (size_t k = 0; k < n; ++k) {
      Request* r = decoders[(first + k) % decoders.size()];
      Engine::Segment seg{r->seq, absl::MakeConstSpan(&r->last_token, 1), false};
      // The engine samples (on the GPU with a CUDA backend): only the token comes back.
      seg.sample = &r->gen.sampling;
      seg.sample_step = static_cast<uint64_t>(r->generated);
      segs.push_back(seg);
      seg_req.push_back(r);
      info.parts.push_back({r->id, 1, true});
    }
    decode_rotation_ += n;
    budget -= static_cast<int64_t>(n);
  }
  int64_t prefill_tokens = 0;
  for (auto& rp : active_) {
    if (budget <= 0) break;
    Request* r = rp.get();
    const int64_t left = static_cast<int64_t>(r->feed.size()) - r->prefilled;
    if (r->decoding || left <= 0) continue;
    // Sequence-sharded groups prefill a prompt in one pass (its zigzag split is the chunking).
    const int64_t c = options_.whole_prompts ? left : std::min(left, budget);
    Engine::Segment seg{r->seq, absl::MakeConstSpan(r->feed.data() + r->prefilled, static_cast<size_t>(c)),
                        r->encode && r->enc.prompt_logprobs};
    // The hidden state is only needed from the last chunk.
    seg.hidden_state = r->encode && r->enc.output == EncodeOutput::kHiddenState && c == left;
    if (!r->encode && c == left) {  // the first token comes from the prompt's last position
      seg.sample = &r->gen.sampling;
      seg.sample_step = static_cast<uint64_t>(r->generated);
    }
    segs.push_back(seg);
    seg_req.push_back(r);
    info.parts.push_back({r->id, c, false});
    budget -= c;
    prefill_tokens += c;
  }
  if (segs.empty()) {
    if (did) PublishLoad();
    return did;
  }
  ++step_index_;

  absl::StatusOr<Logits> logits = engine_->Forward(segs);
  if (!logits.ok()) {
    SQA_LOG(ERROR) << "forward pass of step " << info.index << " failed: " << logits.status();
    // UNAVAILABLE (the worker group broke) tells the router to resume the request elsewhere.
    const absl::Status st =
        absl::IsUnavailable(logits.status())
            ? logits.status()
            : absl::InternalError(absl::StrCat("forward pass failed: ", logits.status().message()));
    for (Request* r : seg_req) Finish(*r, st);
    active_.remove_if([](const auto& r) { return r->done; });
    PublishLoad();
    return true;
  }
  const int64_t vocab = logits->vocab;
  const int64_t ctx = config_.max_position_embeddings;

  // Takes the next token of a generate request (sampled by the engine) and decides whether it is
  // finished.
  auto emit = [&](Request& r, const SampledToken& t) {
    ++r.generated;
    if (!r.first_token_sent) {
      r.first_token_sent = true;
      r.result.time_to_first_token_seconds = Seconds(absl::Now() - r.submitted);
      if (metrics_) metrics_->ttft_seconds.Observe(r.result.time_to_first_token_seconds);
    }
    if (metrics_) metrics_->generation_tokens.Increment();
    if (r.cb.on_token) r.cb.on_token(t.token, t.logprob);
    const auto& stops = r.gen.stop_tokens;
    if (std::find(stops.begin(), stops.end(), t.token) != stops.end()) {
      r.result.finish_reason = FinishReason::kStop;
    } else if (r.generated >= r.gen.max_tokens) {
      r.result.finish_reason = FinishReason::kLength;
    } else if (ctx > 0 && engine_->SequenceLength(r.seq) + 1 > ctx) {
      r.result.finish_reason = FinishReason::kContext;  // the next input would not fit the model
    } else {
      r.decoding = true;
      r.last_token = t.token;
      return;
    }
    Finish(r, absl::OkStatus());
  };

  for (size_t i = 0; i < segs.size(); ++i) {
    Request& r = *seg_req[i];
    const int64_t base = logits->row_begin[i];
    const int64_t n = static_cast<int64_t>(segs[i].tokens.size());
    if (r.decoding) {
      emit(r, logits->sampled[i]);
      continue;
    }
    const int64_t begin = r.prefilled;
    r.prefilled += n;
    if (metrics_) metrics_->prompt_tokens.Increment(static_cast<double>(n));
    if (r.encode && r.enc.prompt_logprobs) {
      for (int64_t j = 0; j < n; ++j) {
        const int64_t next = begin + j + 1;
        if (next >= static_cast<int64_t>(r.feed.size())) break;
        const float* row = logits->row(base + j);
        r.result.prompt_logprobs.push_back(
            static_cast<float>(static_cast<double>(row[r.feed[static_cast<size_t>(next)]]) - LogSumExp(row, vocab)));
      }
    }
    if (r.prefilled < static_cast<int64_t>(r.feed.size())) continue;
    if (!r.encode) {
      emit(r, logits->sampled[i]);
      continue;
    }
    const int64_t last_row = base + (segs[i].all_logits ? n - 1 : 0);
    const float* last = logits->row(last_row);
    if (r.enc.output == EncodeOutput::kHiddenState) {
      const int64_t d = logits->hidden_size;
      if (d <= 0 || static_cast<int64_t>(logits->hidden.size()) < (last_row + 1) * d) {
        Finish(r, absl::InternalError("the engine returned no hidden state"));
        continue;
      }
      r.result.values.assign(logits->hidden.begin() + last_row * d, logits->hidden.begin() + (last_row + 1) * d);
    } else {
      r.result.values.assign(last, last + vocab);
    }
    Finish(r, absl::OkStatus());
  }
  active_.remove_if([](const auto& r) { return r->done; });

  const absl::Time end = absl::Now();
  info.total_tokens = options_.max_batch_tokens - budget;
  info.seconds = Seconds(end - start);
  if (metrics_) {
    metrics_->step_seconds.Observe(info.seconds);
    metrics_->batch_tokens.Observe(static_cast<double>(info.total_tokens));
    if (prefill_tokens > 0) {
      metrics_->prefill_step_seconds.Increment(info.seconds);
      window_prefill_tokens_ += static_cast<double>(prefill_tokens);
      window_prefill_seconds_ += info.seconds;
      if (window_prefill_seconds_ > 0)
        metrics_->prefill_tokens_per_second.Set(window_prefill_tokens_ / window_prefill_seconds_);
      if (window_prefill_seconds_ >= 5.0) window_prefill_tokens_ = window_prefill_seconds_ = 0;
    }
  }
  PublishLoad();
  if (options_.on_step) options_.on_step(info);
  return true;
}

void Scheduler::PublishLoad() {
  LoadSnapshot l;
  for (const auto& r : waiting_) l.queued_tokens += static_cast<int64_t>(r->feed.size());
  for (const auto& r : active_) {
    l.queued_tokens += static_cast<int64_t>(r->feed.size()) - r->prefilled;
    l.running_tokens += engine_->SequenceLength(r->seq);
  }
  l.kv_blocks_used = engine_->kv_pool().num_used();
  l.kv_blocks_reserved = reserved_blocks_;
  l.kv_blocks_total = kv_blocks_total_;
  l.kv_block_size = block_size_;
  l.max_context_tokens = config_.max_position_embeddings;
  int queued, running;
  {
    absl::MutexLock lock(&mu_);
    l.admitting = !draining_;
    load_ = l;
    queued = queued_;
    running = running_;
  }
  if (metrics_) {
    metrics_->running_requests.Set(running);
    metrics_->waiting_requests.Set(queued);
    metrics_->kv_blocks_used.Set(static_cast<double>(l.kv_blocks_used));
    metrics_->kv_blocks_reserved.Set(static_cast<double>(l.kv_blocks_reserved));
  }
}

}  // namespace sqa::worker
