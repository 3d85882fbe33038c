// The model runner: one Llama-style decoder over a Backend, with a paged KV cache. Same code for
// every backend. Not thread-safe: one thread (the worker's scheduler, or sqa-run) drives it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "workers/engine/backend.h"
#include "workers/engine/kv/block_pool.h"
#include "workers/engine/model/model.h"
#include "workers/engine/sampling.h"
#include "workers/engine/shard/communicator.h"
#include "workers/engine/shard/plan.h"
#include "workers/engine/shard/timings.h"

namespace sqa {

// A group of P ranks serving one model replica (ARCHITECTURE.md §4). Every rank makes an Engine
// with the same model and options; rank 0 (the leader) is driven by the scheduler and broadcasts
// each step to the followers, which run Engine::ServeFollower().
struct GroupOptions {
  ShardMode mode = ShardMode::kNone;
  Communicator* control = nullptr;  // host-side step plans (Gloo); not owned, outlives the engine
  Communicator* data = nullptr;     // activations (Gloo on CPU, NCCL on GPU); null = control
  // Time the attention of prefill passes outside sequence mode (GroupTimings::attention_seconds):
  // costs a backend synchronization before and after the attention of every layer of such a pass.
  // Sequence groups always time it (their ring synchronizes anyway). Also for single engines.
  bool time_attention = false;
};

// Decode steps as captured graphs (backends with Backend::step_graphs(), i.e. CUDA). A step whose
// segments are all one token (no hidden state) on an engine outside a group runs with its batch
// padded to a power of two and its KV length bound rounded up to a power of two (at least 256);
// such a (batch, length bound, sampling kind) shape is run eagerly the first time it is seen (which
// sizes every buffer and GEMM plan), captured the second time and replayed afterwards. A capture
// that fails is logged once and that shape stays eager. Other steps, and every step with kOff, run
// op by op as before.
enum class StepGraphMode {
  kOff,
  kOn,
  kPaddedEager,  // the graph path's padded buffers and arrays, never captured (tests: bitwise twin of kOn)
};
absl::StatusOr<StepGraphMode> ParseStepGraphMode(const std::string& s);  // "on", "off"

struct EngineOptions {
  int64_t block_size = 64;           // tokens per KV block
  int64_t num_kv_blocks = 0;         // blocks per layer; 0 = derive from kv_cache_bytes
  int64_t kv_cache_bytes = int64_t{1} << 30;  // total K+V budget over all layers
  int64_t max_chunk_tokens = 2048;   // Prefill() splits prompts into chunks of at most this
  StepGraphMode cuda_graphs = StepGraphMode::kOn;  // --cuda-graphs on|off
  GroupOptions group;                // P > 1 ranks: heads or sequence sharding
};

// What the graph path did (tests, benchmarks).
struct StepGraphStats {
  int64_t padded_steps = 0;   // steps through the graph path (eager or replayed)
  int64_t captures = 0;       // graphs captured
  int64_t replays = 0;        // steps replayed from a graph
  int64_t capture_failures = 0;
  int64_t invalidations = 0;  // engine buffers of graph steps reallocated
};

using SeqId = int64_t;

// f32 logits on the host, one row per requested position, and the sampled tokens.
struct Logits {
  int64_t vocab = 0;
  std::vector<float> data;          // rows * vocab
  std::vector<int64_t> row_begin;   // per segment: first row of that segment's logits
  // Per segment: the token sampled from its last position (segments with Segment::sample; the
  // others hold {0, 0}).
  std::vector<SampledToken> sampled;
  int64_t rows() const { return vocab ? static_cast<int64_t>(data.size()) / vocab : 0; }
  const float* row(int64_t r) const { return data.data() + r * vocab; }
  // Final-normed hidden states (the lm_head input) of the same rows, rows * hidden_size f32; filled
  // only when some segment sets `hidden_state` (then for every returned row). Added for Encode.
  int64_t hidden_size = 0;
  std::vector<float> hidden;
};

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::shared_ptr<const Model> model,
                                                        std::unique_ptr<Backend> backend,
                                                        const EngineOptions& options);
  ~Engine();

  const ModelConfig& config() const;
  Backend& backend();
  const BlockPool& kv_pool() const;
  const EngineOptions& options() const;

  SeqId NewSequence();
  // Frees the sequence's blocks at once. Unknown ids are ignored.
  void Release(SeqId seq);
  int64_t SequenceLength(SeqId seq) const;  // tokens in its KV cache

  struct Segment {
    SeqId seq = 0;
    absl::Span<const int32_t> tokens;  // appended after the sequence's current tokens
    bool all_logits = false;           // logits of every token, else only of the last
    bool hidden_state = false;         // also return Logits::hidden (final-normed hidden state)
    // Sample the next token from the last position's logits with these params (not owned; valid
    // during the call) and the draw UniformFromSeed(sample->seed, sample_step): on the device when
    // the backend has a sampler (only the token and its log-probability come back), else on the
    // host with SampleToken. Such a segment returns no logits rows unless sample_logits is set.
    const SamplingParams* sample = nullptr;
    uint64_t sample_step = 0;
    bool sample_logits = false;
  };
  // One forward pass over several segments (e.g. a prefill chunk plus a decode batch): appends
  // each segment's tokens to its sequence's KV cache and returns the requested logits in segment
  // order. Errors: INVALID_ARGUMENT (token id out of range, empty segment, a sequence twice),
  // RESOURCE_EXHAUSTED (not enough free KV blocks; nothing is changed).
  absl::StatusOr<Logits> Forward(absl::Span<const Segment> segments);

  // Switches decode graphs between steps (benchmarks compare both on one engine).
  void SetStepGraphMode(StepGraphMode mode);
  const StepGraphStats& step_graph_stats() const;

  // Prefill of one sequence in chunks of options().max_chunk_tokens (in sequence mode the whole
  // prompt is one pass: its zigzag split over the ranks is the chunking).
  absl::StatusOr<Logits> Prefill(SeqId seq, absl::Span<const int32_t> tokens, bool all_logits);

  // Groups. rank() == 0 leads. A follower calls ServeFollower(), which runs the leader's steps until
  // the leader calls StopGroup() (OK) or the group breaks (UNAVAILABLE: a peer died or timed out).
  // After a communication error every call returns UNAVAILABLE; the group must be re-formed.
  int rank() const;
  int world_size() const;
  ShardMode shard_mode() const;
  bool group_ok() const;
  // `after_step`, when set, gets the wall time of every step this follower ran.
  absl::Status ServeFollower(const std::function<void(double seconds)>& after_step = nullptr);
  absl::Status StopGroup();  // leader; idempotent; also done by the destructor
  // This rank's step, prefill-attention and exposed-communication time since creation (see
  // shard/timings.h). Read from the thread that drives the engine (or after it stopped).
  const GroupTimings& group_timings() const;

 private:
  struct Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sqa
