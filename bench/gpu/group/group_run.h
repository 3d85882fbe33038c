// The parts of sqa-group-bench that need no GPU: run one prompt on a group of P engines (one thread
// and one backend per rank, Gloo step plans over loopback, activations over a communicator the
// caller makes: NCCL on GPUs, Gloo otherwise), read every rank's timings (shard/timings.h), and
// search for the longest prompt whose prefill fits. The CPU tests drive the same code with the
// CPU backend and a KV byte cap.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "workers/engine/engine.h"

namespace sqa::bench {

// Makes rank `rank`'s activation communicator; null means "use the Gloo control communicator".
using DataCommFactory = std::function<absl::StatusOr<std::unique_ptr<Communicator>>(
    int rank, int world, RendezvousStore& store, const std::string& prefix, std::chrono::milliseconds timeout)>;

struct GroupSpec {
  std::shared_ptr<const Model> model;
  int world = 1;                          // 1: one plain engine, no communicators
  ShardMode mode = ShardMode::kNone;      // heads or sequence when world > 1
  BackendOptions backend;                 // gpu_index is set to the rank
  EngineOptions engine;                   // its `group` is filled in per rank
  std::chrono::milliseconds timeout{120000};
  std::string prefix = "run";             // rendezvous keys; unique per run
  DataCommFactory make_data;
  // Memory probes: every backend call runs as usual (so every allocation is real) except the
  // prefill attention, which is cut to one query and one key (the quadratic part of a prefill).
  bool probe = false;
  // When > 0, each rank's KV cache is sized for exactly this many prompt tokens (what its rank
  // stores of them), capped at max_kv_bytes when that is > 0.
  int64_t kv_for_tokens = 0;
  int64_t max_kv_bytes = 0;
  // Called on each rank's thread after its engine and backend are gone (GPU: give the freed
  // activation pool back to the device so that the next run's KV cache can use it).
  std::function<void(int rank)> after_rank;
};

struct RankReport {
  int rank = 0;
  GroupTimings timings;      // over the measured prefill
  double comm_seconds = 0;   // the communicators' own collective seconds over it (waits included)
  double comm_bytes = 0;
  int64_t kv_cache_bytes = 0;
};

struct RunReport {
  absl::Status status;        // the measured prefill's (or the set-up's) status
  double seconds = 0;         // leader's wall time of the measured prefill
  std::vector<float> logits;  // last position
  std::vector<RankReport> ranks;
  // Balance: max over ranks of attention seconds / their mean (1 = perfect); 0 if none timed.
  double attention_balance() const;
};

// Per-rank KV tokens for a prompt of n tokens: sequence mode stores the rank's zigzag pieces (the
// largest rank's count), the others all n.
int64_t KvTokensPerRank(ShardMode mode, int world, int64_t n);
// Bytes of one rank's KV cache for `tokens` (whole blocks, all layers).
absl::StatusOr<int64_t> KvBytesPerRank(const ModelConfig& c, ShardMode mode, int rank, int world, int64_t block_size,
                                       int64_t tokens, DType act);

// Runs a warm-up prefill of min(warmup, n) tokens (not measured; 0 = none), then `prompt`.
RunReport RunPrefill(const GroupSpec& spec, const std::vector<int32_t>& prompt, int64_t warmup);

// A deterministic prompt of n token ids.
std::vector<int32_t> BenchPrompt(int64_t n, int64_t vocab);

// The longest prompt, a multiple of `step` in [step, max_tokens], whose prefill `fits` (OK) rather
// than failing with RESOURCE_EXHAUSTED (memory or KV blocks) or INVALID_ARGUMENT (longer than
// the model's positions). Doubles from `step` until a failure, then bisects; assumes that what
// fits at n also fits below n. Any other error ends the search with that error.
struct Probe {
  int64_t tokens = 0;
  absl::Status status;
  double seconds = 0;
};
struct LongestPrompt {
  int64_t longest = 0;        // 0: not even `step` fits
  int64_t first_failing = 0;  // the shortest failing length tried (0: none failed)
  absl::Status failure;       // why first_failing failed
  std::vector<Probe> probes;  // in the order tried
};
absl::StatusOr<LongestPrompt> FindLongestPrompt(int64_t step, int64_t max_tokens,
                                                const std::function<absl::Status(int64_t tokens)>& fits);

// One probe of the search on a fresh group: spec with probe = true and the KV sized for n tokens.
absl::Status ProbePrefill(const GroupSpec& spec, int64_t n);

}  // namespace sqa::bench
