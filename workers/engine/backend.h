// The Backend seam: every numeric operation the model code needs, implemented once for the CPU
// (fp32, OpenBLAS, OpenMP) and once for CUDA (bf16 storage, fp32 accumulation). The model code in
// engine.cc is the same for both. Not thread-safe: one engine thread drives a backend.
//
// Conventions. Activations are dense row-major tensors in the backend's memory with dtype
// act_dtype() (f32 on CPU, bf16 on CUDA) unless stated; LSE and logits are always f32. Host
// arrays (token ids, positions, slots, block tables) are plain host pointers; a GPU backend
// stages them itself. Shapes are checked; violations return INVALID_ARGUMENT/INTERNAL, never UB.
//
// Attention heads. Ha = max(Hq, Hkv) heads are computed. Attention head h uses query head
// h % Hq and KV head h / (Ha / Hkv). (Hq >= Hkv: GQA-style sharing; Hq < Hkv, rSQA: queries
// tiled over the KV heads.) Outputs have Ha heads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "workers/engine/model/tensor.h"

namespace sqa {

// Backend-owned memory. The destructor frees it.
class DeviceBuffer {
 public:
  virtual ~DeviceBuffer() = default;
  virtual void* data() = 0;
  virtual size_t size() const = 0;
};

// A weight as the backend holds it: `view` points either into the mapped model file (CPU, f32
// on disk) or into `storage`.
struct BackendWeight {
  TensorView view;
  std::unique_ptr<DeviceBuffer> storage;
};

// Geometry of the paged KV cache. Each layer has `num_blocks` blocks; a block holds K and V for
// `block_size` consecutive tokens of one sequence, block_elems() values each. The order inside a
// block is the backend's own (CPU: [Hkv][block_size][head_dim]; CUDA: [block_size][Hkv][head_dim],
// token-major); the engine and the KV tiers move whole blocks only.
// A token's slot is block_id * block_size + offset_in_block.
struct KvCacheShape {
  int64_t num_layers = 0;
  int64_t num_blocks = 0;
  int64_t block_size = 64;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t block_elems() const { return block_size * num_kv_heads * head_dim; }
};

// KV storage made by a backend; opaque to the model code.
class KvCacheStorage {
 public:
  virtual ~KvCacheStorage() = default;
  virtual const KvCacheShape& shape() const = 0;
  // Bytes of K+V per block per layer.
  virtual size_t bytes_per_block() const = 0;
};

// One sequence's view of the KV cache: the keys/values at positions [0, kv_len) live in
// blocks block_table[pos / block_size].
struct KvSequenceRef {
  const int32_t* block_table = nullptr;  // host array, at least ceil(kv_len / block_size) ids
  int64_t kv_len = 0;
};

struct PrefillAttentionArgs {
  const KvCacheStorage* cache = nullptr;
  int64_t layer = 0;
  TensorView q;            // [n, Hq, dh]: queries at positions q_pos0 .. q_pos0 + n - 1
  int64_t q_pos0 = 0;
  KvSequenceRef kv;        // keys at positions [0, kv.kv_len); must include the queries' own
  bool causal = true;      // query at position p sees keys at positions <= p
  float scale = 0.f;       // softmax scale; 0 means 1/sqrt(dh)
  TensorView out;          // [n, Ha, dh]
  float* lse = nullptr;    // optional backend-memory f32 [n, Ha]: natural-log sum of exp(scores)
};

struct DecodeAttentionArgs {
  const KvCacheStorage* cache = nullptr;
  int64_t layer = 0;
  TensorView q;                           // [B, Hq, dh], one query per sequence (its last token)
  std::vector<KvSequenceRef> seqs;        // B entries; query b attends to all kv_len keys of seq b
  float scale = 0.f;
  TensorView out;                         // [B, Ha, dh]
  float* lse = nullptr;                   // optional [B, Ha]
  // Padded form, used instead of `seqs` when kv_lens is set (the engine's graph steps; only
  // backends with step_graphs() need to accept it): host int32 kv_lens[B] (0 allowed: out = 0)
  // and block_tables[B, table_stride], and a bound max_kv_len >= every kv_len that sizes the
  // work, so that one captured step serves any lengths up to it.
  const int32_t* kv_lens = nullptr;
  const int32_t* block_tables = nullptr;
  int64_t table_stride = 0;
  int64_t max_kv_len = 0;
  // The longest-sequence length the work is planned for, when it can be less than max_kv_len (a
  // captured step serves longest sequences from just over half its bound up to the bound): the
  // backend then splits the keys for this length and spreads each sequence's real length over
  // the splits. 0: plan for max_kv_len.
  int64_t plan_kv_len = 0;
  // How many of each sequence's last keys the ops issued just before this one may still be
  // writing (1 when they appended one token per sequence); the keys before them come from
  // earlier steps. A backend may start reading those early. Negative: unknown.
  int64_t fresh_kv_tokens = -1;
};

// One row of device sampling (Backend::SampleTokens): the rule of sampling.h with the uniform draw
// u = UniformFromSeed(seed, step) computed by the caller. Plain data: it may live in a step's input
// block (StepGraphs).
struct SampleRowArgs {
  float temperature = 0.f;  // <= 0: greedy
  int32_t top_k = 0;        // 0: off
  float top_p = 1.f;        // in (0, 1]
  double u = 0.0;           // in [0, 1)
};

// Whole-step graphs, an optional capability of a backend (Backend::step_graphs(); CUDA graphs on
// the CUDA backend). The engine runs a decode-only step through it:
//   1. void* in = Inputs(bytes): a pinned host block with a device mirror. The engine writes every
//      host array of the step (tokens, positions, slots, block tables, kv lens, sampling rows)
//      into it, then Upload(bytes) copies it to the mirror in one asynchronous copy.
//   2. Either Replay(key), when Has(key), or the step's ops, with host-array arguments pointing
//      into the block: the backend then reads the mirror instead of staging them per op. Between
//      BeginCapture() and EndCapture(key) the ops are recorded into a graph instead of run;
//      EndCapture instantiates it, stores it under `key` and launches it once.
// A graph bakes in every device address its ops saw (weights, KV cache, activation buffers, the
// mirror, the backend's step workspaces): the engine keeps its buffers for graph steps fixed and
// calls Invalidate() when it must reallocate one; the backend invalidates by itself when it
// reallocates the mirror or a step workspace. Not thread-safe (the backend's engine thread).
class StepGraphs {
 public:
  virtual ~StepGraphs() = default;
  // The host block, at least `bytes` long (its contents are kept only until the next call). Waits
  // until the previous Upload has read the block.
  virtual absl::StatusOr<void*> Inputs(size_t bytes) = 0;
  virtual absl::Status Upload(size_t bytes) = 0;
  virtual bool Has(uint64_t key) const = 0;
  virtual absl::Status Replay(uint64_t key) = 0;
  virtual absl::Status BeginCapture() = 0;
  // On error nothing is stored and nothing of the captured step has run; the capture has ended.
  virtual absl::Status EndCapture(uint64_t key) = 0;
  // Ends a capture after an op failed inside it (no-op when none is in progress).
  virtual void AbortCapture() = 0;
  virtual void Invalidate() = 0;
  virtual int64_t num_graphs() const = 0;
};

struct RopeArgs {
  double theta = 10000.0;
  double position_scale = 1.0;  // linear rope scaling: positions are divided by this factor
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string name() const = 0;       // "cpu", "cuda:0"
  virtual DType act_dtype() const = 0;

  // Memory.
  virtual absl::StatusOr<std::unique_ptr<DeviceBuffer>> Allocate(size_t bytes) = 0;
  virtual absl::Status CopyToHost(const TensorView& src, void* dst) = 0;
  virtual absl::Status CopyFromHost(const void* src, const TensorView& dst) = 0;
  virtual absl::Status Synchronize() = 0;
  // Converts a host (mapped) weight into the backend's weight format.
  virtual absl::StatusOr<BackendWeight> UploadWeight(const TensorView& host) = 0;
  // Allocates an activation tensor of act_dtype() (or `dtype`).
  absl::StatusOr<std::unique_ptr<DeviceBuffer>> AllocTensor(std::vector<int64_t> shape, TensorView* view,
                                                           DType dtype);

  // Elementwise and GEMM ops. x: [n, d] row-major.
  virtual absl::Status Embed(const TensorView& table, const int32_t* tokens, int64_t n, const TensorView& out) = 0;
  virtual absl::Status RmsNorm(const TensorView& x, const TensorView& weight, float eps, const TensorView& out) = 0;
  // out[n, out_features] = x[n, in] * w[out_features, in]^T
  virtual absl::Status Linear(const TensorView& x, const TensorView& w, const TensorView& out) = 0;
  virtual absl::Status AddInPlace(const TensorView& x, const TensorView& y) = 0;  // x += y
  // HF rotate-half RoPE in place on x: [n, heads, dh]; token i has position positions[i].
  virtual absl::Status Rope(const TensorView& x, const int32_t* positions, const RopeArgs& rope) = 0;
  // out = silu(gate) * up, all [n, I].
  virtual absl::Status SwiGlu(const TensorView& gate, const TensorView& up, const TensorView& out) = 0;
  // out[i, :] = x[rows[i], :]
  virtual absl::Status GatherRows(const TensorView& x, const int64_t* rows, int64_t m, const TensorView& out) = 0;

  // Fused forms of sequences a layer runs. The defaults run the ops above in order; a backend
  // overrides what it can fuse, with the same results (rounding of intermediates included) up to
  // the GEMMs' summation order.
  // outs[i] = x * ws[i]^T for every i (the q, k and v projections of one x).
  virtual absl::Status LinearMany(const TensorView& x, absl::Span<const TensorView> ws,
                                  absl::Span<const TensorView> outs);
  // out = silu(x * w_gate^T) * (x * w_up^T), with gate and up rounded to the activation type
  // first; gate and up ([n, I]) are scratch that an unfused backend writes.
  virtual absl::Status LinearSwiGlu(const TensorView& x, const TensorView& w_gate, const TensorView& w_up,
                                    const TensorView& gate, const TensorView& up, const TensorView& out);
  // x += y (rounded to x's type), then out = RmsNorm(x, weight).
  virtual absl::Status AddRmsNorm(const TensorView& x, const TensorView& y, const TensorView& weight, float eps,
                                  const TensorView& out);
  // Rope on q ([n, Hq, dh]) and on k ([n, Hkv, dh]) with the same positions.
  virtual absl::Status RopeQK(const TensorView& q, const TensorView& k, const int32_t* positions,
                              const RopeArgs& rope);
  // RopeQK, then WriteKv(cache, layer, k, v, slots) of the rotated k and of v (every row; a row
  // with slot -1 is not stored).
  virtual absl::Status RopeQKWriteKv(const TensorView& q, const TensorView& k, const TensorView& v,
                                     const int32_t* positions, const RopeArgs& rope, KvCacheStorage& cache,
                                     int64_t layer, const int64_t* slots);

  // KV cache.
  virtual absl::StatusOr<std::unique_ptr<KvCacheStorage>> CreateKvCache(const KvCacheShape& shape) = 0;
  // Writes k, v ([n, Hkv, dh]) of `layer` into slots[i] (host array of n slot ids).
  virtual absl::Status WriteKv(KvCacheStorage& cache, int64_t layer, const TensorView& k, const TensorView& v,
                               const int64_t* slots) = 0;

  // Attention (see the conventions above).
  virtual absl::Status AttentionPrefill(const PrefillAttentionArgs& args) = 0;
  virtual absl::Status AttentionDecode(const DecodeAttentionArgs& args) = 0;
  // Merges S partial attention results over disjoint key sets (o_s: [n, Ha, dh], lse_s: [n, Ha])
  // into out/lse_out: L = m + log(sum exp(lse_s - m)), o = sum exp(lse_s - L) o_s.
  virtual absl::Status MergeAttention(absl::Span<const TensorView> outs, absl::Span<const float* const> lses,
                                      const TensorView& out, float* lse_out) = 0;

  // Device sampling (optional; has_device_sampler() says whether it exists). Samples one token per
  // row of f32 logits [rows, vocab] with rows[i] (host array of `rows` entries), writing the ids
  // to `tokens` (i32 [rows]) and log softmax(logits)[id] to `logprobs` (f32 [rows]), both
  // backend tensors. Asynchronous. Without a device sampler the caller samples on the host.
  virtual bool has_device_sampler() const { return false; }
  virtual absl::Status SampleTokens(const TensorView& /*logits*/, const SampleRowArgs* /*rows*/,
                                    const TensorView& /*tokens*/, const TensorView& /*logprobs*/) {
    return absl::UnimplementedError(name() + " has no device sampler");
  }

  // Whole-step graphs (see StepGraphs); null when the backend has none. Owned by the backend.
  virtual StepGraphs* step_graphs() { return nullptr; }
};

// The unfused defaults of the fused ops (inline: backends link without backend.cc).
inline absl::Status Backend::LinearMany(const TensorView& x, absl::Span<const TensorView> ws,
                                absl::Span<const TensorView> outs) {
  if (ws.size() != outs.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("LinearMany: ", ws.size(), " weights but ", outs.size(), " outputs"));
  }
  for (size_t i = 0; i < ws.size(); ++i) {
    absl::Status st = Linear(x, ws[i], outs[i]);
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

inline absl::Status Backend::LinearSwiGlu(const TensorView& x, const TensorView& w_gate, const TensorView& w_up,
                                  const TensorView& gate, const TensorView& up, const TensorView& out) {
  absl::Status st = Linear(x, w_gate, gate);
  if (st.ok()) st = Linear(x, w_up, up);
  return st.ok() ? SwiGlu(gate, up, out) : st;
}

inline absl::Status Backend::AddRmsNorm(const TensorView& x, const TensorView& y, const TensorView& weight, float eps,
                                const TensorView& out) {
  absl::Status st = AddInPlace(x, y);
  return st.ok() ? RmsNorm(x, weight, eps, out) : st;
}

inline absl::Status Backend::RopeQK(const TensorView& q, const TensorView& k, const int32_t* positions,
                            const RopeArgs& rope) {
  absl::Status st = Rope(q, positions, rope);
  return st.ok() ? Rope(k, positions, rope) : st;
}

inline absl::Status Backend::RopeQKWriteKv(const TensorView& q, const TensorView& k, const TensorView& v,
                                           const int32_t* positions, const RopeArgs& rope, KvCacheStorage& cache,
                                           int64_t layer, const int64_t* slots) {
  absl::Status st = RopeQK(q, k, positions, rope);
  return st.ok() ? WriteKv(cache, layer, k, v, slots) : st;
}

enum class DeviceKind { kCpu, kCuda, kAuto };
absl::StatusOr<DeviceKind> ParseDeviceKind(const std::string& s);  // "cpu", "cuda", "auto"

struct BackendOptions {
  DeviceKind device = DeviceKind::kCpu;
  int num_threads = 0;  // CPU: 0 = all cores
  int gpu_index = 0;
  // CUDA: decode GEMMs use the skinny kernel instead of cuBLASLt, up to 8 rows for every weight
  // and up to 32 for q/k/v in one launch (off: cuBLASLt for every GEMM, to compare the two);
  // skinny_max_rows lowers the bound (8: q/k/v too go to cuBLASLt from 9 rows), 0 = 32.
  bool skinny_gemm = true;
  int skinny_max_rows = 0;
  // CUDA: decode GEMMs of 9-64 rows on the skinny kernel's stream form (cuda/skinny_gemm.h: one
  // weight, q/k/v in one launch, gate and up in one launch before the SwiGLU kernel): "auto" where
  // it is the faster choice (cuda::SkinnyStreamPreferred: 9-32 rows, K split at most 3 ways, 1.5
  // CTAs per SM; for the 1b preset the MLP's gate/up and the LM head), "all" wherever it applies
  // (tests, benchmarks), "off" (cuBLASLt, and the wide form for q/k/v). Off with skinny_gemm = false.
  std::string skinny_stream = "auto";
  // CUDA: the skinny kernel's CTA shape, to compare them (cuda/skinny_gemm.h): auto, 8 or 16 warps.
  std::string skinny_warps = "auto";
  // CUDA decode attention kernel, to compare them (cuda/attention.h): auto, v10, v8, v6, v5, v5w (v5
  // without reading any K/V before the kernels before it finish) or v4 (a second kernel merges
  // the splits).
  std::string decode_kernel = "auto";
  // CUDA decode attention: splits per (sequence, KV head), 0 = the kernel's own choice; and the
  // fewest keys per split at which the splits merge inside the split kernel, 0 = the default.
  // Both to compare choices (sqa-e2e-bench).
  int decode_splits = 0;
  int decode_fuse_min_keys = 0;
  // CUDA: RopeQKWriteKv as one kernel (off: RoPE and the cache write as two, to compare them).
  bool fuse_rope_kv = true;
};
// Makes the backend for `options`; kAuto picks CUDA when built with it and a GPU is present.
// Asking for CUDA in a CPU-only build gives FAILED_PRECONDITION with a message saying so.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options);

}  // namespace sqa
