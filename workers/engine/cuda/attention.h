// Attention kernels of the CUDA backend (sm_90a, bf16 storage, fp32 accumulation).
//
// Files that belong to target sqa_engine_cuda (self-contained; they need only CUDA::cudart,
// absl::status and absl::strings):
//   workers/engine/cuda/attention_prefill.cu, attention_prefill_wgmma.cu
//   workers/engine/cuda/attention_decode.cu
//   workers/engine/cuda/attention_merge.cu
// (attention_internal.cuh is their private header of device helpers.)
// Compile flags: -gencode=arch=compute_90a,code=sm_90a (CMAKE_CUDA_ARCHITECTURES=90a).
//
// Conventions (the same as workers/engine/backend.h):
// - Ha = max(Hq, Hkv) attention heads are computed; head h uses query head h % Hq and KV head
//   h / (Ha / Hkv). Hq and Hkv must divide each other. Outputs have Ha heads.
// - q: bf16 [n, Hq, dh]; out: bf16 [n, Ha, dh]; lse: f32 [n, Ha] natural-log sum of
//   exp(scale * q.k) over the keys seen (-inf when a row sees no key; its out row is then 0).
// - Paged KV: a layer's K (and separately V) is num_blocks blocks of [block_size][Hkv][dh] bf16
//   (token-major: a token's KV heads side by side, as in the contiguous form); key position p
//   of a sequence lives in block block_table[p / block_size] at offset p % block_size. Any
//   block_size >= 1 works; multiples of 64 (prefill) and 32 (decode) are fastest: a key tile
//   then needs one block-table read instead of one per key.
// - Positions and lengths must stay below 2^31.
// - Every pointer in the params structs is a DEVICE pointer unless its comment says host.
// - head_dim must be 64 or 128.
// - Launchers are asynchronous on `stream`, never synchronize, and are safe to capture into a
//   CUDA graph (no allocation, no host reads of device data). They return INVALID_ARGUMENT for
//   bad shapes and INTERNAL with the CUDA error string when a launch fails.
// Thread-safety: launchers keep no state; they may be called from any thread.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace sqa::cuda {

// Where the keys/values of one sequence (prefill) live.
//   Paged (block_table != nullptr): k/v are the layer's block-pool bases (block 0), with
//   layout [num_blocks][block_size][Hkv][dh].
//   Contiguous (block_table == nullptr): k/v are [kv_len, Hkv, dh] (token-major), as a
//   projection GEMM writes them; block_size is ignored. Used by benchmarks and tests.
struct KvView {
  const void* k = nullptr;            // bf16
  const void* v = nullptr;            // bf16
  const int32_t* block_table = nullptr;  // device int32, ceil(kv_len / block_size) entries
  int block_size = 64;
  int64_t num_blocks = 0;  // blocks in the pool (paged); 0 = unknown, which rules out TMA copies
};

// Which prefill kernel runs. kAuto is kWgmma: sm_90a warpgroup MMA with a producer warpgroup and
// two consumer warpgroups that take turns on the tensor cores, each running the softmax of a tile
// while its own previous P V is still on them (FA3's order); the producer copies K/V tiles with
// TMA (one thread, 128-byte swizzle) when the KV allows it (contiguous, or paged with a block size
// that is a multiple of 64 and KvView::num_blocks set), else with cp.async. kWgmmaCpAsync is the
// same kernel always copying with cp.async, kWgmmaPingPong that one without the softmax overlap,
// kWgmmaLockstep the simpler form without producer and turns, kMmaSync the earlier mma.sync
// kernel; they are kept for comparison in tests and benchmarks.
enum class PrefillKernel { kAuto, kWgmma, kWgmmaCpAsync, kWgmmaPingPong, kWgmmaLockstep, kMmaSync };

struct PrefillParams {
  const void* q = nullptr;  // bf16 [n, Hq, dh], queries at positions q_pos0 .. q_pos0 + n - 1
  int64_t n = 0;
  int64_t q_pos0 = 0;
  KvView kv;
  int64_t kv_len = 0;       // keys [0, kv_len); causal needs q_pos0 + n <= kv_len
  int num_q_heads = 0;      // Hq
  int num_kv_heads = 0;     // Hkv
  int head_dim = 0;         // 64 or 128
  bool causal = true;       // query at position p sees keys at positions <= p
  float scale = 0.f;        // 0 means 1/sqrt(head_dim)
  void* out = nullptr;      // bf16 [n, Ha, dh]
  float* lse = nullptr;     // optional f32 [n, Ha]
  PrefillKernel kernel = PrefillKernel::kAuto;
  // wgmma kernels: CTAs are numbered in groups of this many KV heads, longest row tiles first
  // across the group (so the resident CTAs share few heads' K/V in L2 and the last wave holds
  // short tiles). 0 = automatic: at least enough heads that a group's tiles fill the GPU once,
  // and as many as keep the group's K/V within ~32 MB.
  int cta_head_group = 0;
};

// Chunked causal (or full) flash attention of one sequence's chunk over its KV.
absl::Status LaunchAttentionPrefill(const PrefillParams& p, cudaStream_t stream);

// Which decode kernel runs. kAuto is kV10.
//  - kV4: up to 16 heads per KV head run two CTAs per SM, wider groups eight warps per CTA (two
//    per K/V stream); the splits are merged by a second kernel launched as a programmatic
//    dependent.
//  - kV5: kV4's split kernel, which also merges the splits itself when its grid fits on the GPU
//    at once: the last CTAs of each (sequence, KV head) to finish each merge a 32-column slice
//    of its heads (no second kernel). It can also issue its first K/V loads before waiting for
//    the kernels before it (fresh_kv_tokens below). Larger grids use kV4's merge kernel.
//  - kV6: kV5 whose in-kernel merge combines its split lanes without a serial chain (the
//    lanes' weights first, then independent sums) and whose epilogue is unrolled.
//  - kV3: the earlier kernel (four warps, one CTA per SM, a serial combine), kept for comparison
//    in tests and benchmarks.
//  - kV8: for groups of 17-32 heads per KV head (MQA-like), kV6 with its loop on warpgroup MMA
//    (wgmma): two streams of 64-key tiles, one warpgroup each, every K/V tile read from shared
//    memory once per stream, and the split's block-table entries copied to shared memory once.
//    Narrower groups run kV6.
//  - kV10: kV8's kernels launched differently. Wide groups split 32 ways or more into splits of
//    1024 keys or more (MQA-like groups at batch 1 from 128k tokens) are merged by the sliced
//    merge kernel (combine_sliced) instead of in the split kernel. Narrow groups issue all three
//    K/V stages before the wait (early_tiles 3).
enum class DecodeKernel { kAuto, kV6, kV5, kV4, kV3, kV8, kV10 };

struct DecodeParams {
  const void* q = nullptr;             // bf16 [B, Hq, dh], one query per sequence
  int batch = 0;                       // B
  const void* k_cache = nullptr;       // bf16 layer base [num_blocks][block_size][Hkv][dh]
  const void* v_cache = nullptr;
  int block_size = 64;
  const int32_t* block_tables = nullptr;  // device int32 [B, block_table_stride]
  int64_t block_table_stride = 0;         // entries per row (>= max blocks of any sequence)
  const int32_t* kv_lens = nullptr;       // device int32 [B]; 0 allowed (out = 0, lse = -inf)
  // Host upper bound of kv_lens: it MUST be >= every kv_lens[b] (kV3 fixes its split length from
  // it and would leave keys beyond num_splits * split length out; kv_lens is device data and
  // cannot be checked here). A graph captured for max_kv_len stays valid while lengths grow up
  // to it.
  int64_t max_kv_len = 0;
  // kV4 and later: the longest-sequence length the split count is chosen for (0: max_kv_len;
  // at most max_kv_len). Each sequence's own kv_len is spread over the splits at run time, so a
  // graph captured for a bound can plan for the shortest longest sequence it serves (the bound's
  // half) instead of leaving the splits past the real length empty. kV3 plans for max_kv_len.
  int64_t plan_kv_len = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float scale = 0.f;
  void* out = nullptr;                 // bf16 [B, Ha, dh]
  float* lse = nullptr;                // optional f32 [B, Ha]
  // Scratch for split-KV partial results, at least DecodeWorkspaceBytes(...) bytes (may be
  // nullptr when that is 0). Must not be shared by launches running concurrently. kV5 and
  // later keep counters in its last kDecodeCounterBytes: the buffer must be zero-filled once when
  // it is allocated (cudaMemset), and every launch leaves those counters at zero again.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  int num_splits = 0;                  // 0 = automatic (from max_kv_len and the SM count)
  DecodeKernel kernel = DecodeKernel::kAuto;
  // kV5 and later, launched as a programmatic dependent (pdl.cuh), may read the K/V of
  // positions below kv_lens[b] - fresh_kv_tokens, the block tables and kv_lens before its
  // predecessors finish.
  // Set it to the number of trailing positions of each sequence that kernels still running
  // may write (1 for a decode step that appends one token per sequence right before); those
  // inputs must then come from earlier steps or copies. Negative: wait first, read nothing early.
  int fresh_kv_tokens = -1;
  // kV5 and later merge in the split kernel only when each split has at least this many keys
  // (0: the built-in 512). A tuning knob for benchmarks; the grid must still fit on the GPU at
  // once.
  int fuse_min_split_keys = 0;
  // kV5 and later with fresh_kv_tokens >= 0: K/V tiles per stream issued before the wait, 0
  // for the kernel's default (2, two of the three stages; kV10's narrow groups 3) or 2 or 3
  // (every stage; the loop's first iteration then issues nothing).
  int early_tiles = 0;
  // When the merge kernel (used when the splits are not merged in the split kernel) lets the
  // next kernel launch: 0 once the split kernel has finished; 1 as soon as all of its own CTAs
  // are resident (the next kernel's CTAs then take the SMs that finished splits leave, and its
  // reads before its wait, weights or early K/V, overlap the split kernel's tail); 2 once each
  // of its CTAs has loaded its partials (the next kernel's early reads then do not delay them).
  // -1: the default, 0.
  int combine_trigger = -1;
  // 1: the merge kernel as one CTA per (sequence, head, 32 columns) that issues every partial's
  // load at once; 0: one CTA per (sequence, head) that reads the LSEs first; -1: the kernel's
  // default (kV10's wide groups: sliced from 32 splits up, else per head).
  int combine_sliced = -1;
  // Diagnostics (kV5 and later): when set, thread 0 of every split CTA writes kDecodeTimelineSlots
  // values at timeline[cta * kDecodeTimelineSlots], cta = split + splits * (group + groups * b),
  // the groups being (KV head, row group) pairs: see DecodeTimelineSlot. Unset slots stay as they
  // were.
  uint64_t* timeline = nullptr;
  // Diagnostics: the merge kernel's CTAs (when it runs) stamp kTlEntry, kTlWaited, kTlMergeLoaded
  // (the partials loaded and combined), kTlExit and kTlSm at combine_timeline[cta *
  // kDecodeTimelineSlots]: batch x max(Hq, Hkv) CTAs, or that times head_dim / 32 with
  // combine_sliced.
  uint64_t* combine_timeline = nullptr;
};

// The slots of DecodeParams::timeline: %globaltimer (ns) at each point, and the CTA's SM.
enum DecodeTimelineSlot {
  kTlEntry = 0,      // kernel entry
  kTlWaited = 1,     // after the wait on the kernels before it
  kTlFirstTile = 2,  // the first K/V tile of stream 0 has landed
  kTlLoopEnd = 3,    // every stream is done with its tiles
  kTlStored = 4,     // the CTA's partial (or output) is stored
  kTlMerge = 5,      // a merging CTA's wait for the other splits is over
  kTlExit = 6,       // the CTA is done
  kTlSm = 7,         // %smid
  kTlMergeLoaded = 8,    // a merging CTA has its first pass's partials (loaded and summed)
  kTlMergeCombined = 9,  // ... and has combined them and stored that pass's output
};
inline constexpr int kDecodeTimelineSlots = 10;

// Bytes at the end of a kV5-and-later workspace that hold its merge counters (zero between launches).
inline constexpr size_t kDecodeCounterBytes = 16384;

// Workspace the decode launcher needs for these sizes (0 if no split is needed). Depends only
// on host values, so a backend can size it once for its largest batch / context. plan_kv_len:
// the length the launch plans for (DecodePlanKvLen of its params).
size_t DecodeWorkspaceBytes(int batch, int num_q_heads, int num_kv_heads, int head_dim, int64_t plan_kv_len,
                            int num_splits = 0, DecodeKernel kernel = DecodeKernel::kAuto);

// The length a launch with these params plans its splits for: plan_kv_len when set (kV4 and
// later), capped at max_kv_len; else max_kv_len.
int64_t DecodePlanKvLen(const DecodeParams& p);

// The number of KV splits LaunchAttentionDecode uses for these params (1 = no split).
int DecodeSplits(const DecodeParams& p);

// Flash-decoding over the paged cache: one CTA per (sequence, KV head, split) reads each K/V
// block once for all query heads that share it (up to 32 per KV head; wider groups read it once
// per 32 heads); splits are merged with LSE by a second kernel on the same stream.
absl::Status LaunchAttentionDecode(const DecodeParams& p, cudaStream_t stream);

enum class PartialType { kBF16, kF32 };

struct MergeParams {
  // Host array of `num_parts` device pointers to partial outputs [n, heads, dh] (of `part_type`)
  // and host array of their LSEs f32 [n, heads]. A partial over no keys has lse = -inf.
  const void* const* outs = nullptr;
  const float* const* lses = nullptr;
  int num_parts = 0;                   // 1 .. kMaxMergeParts
  PartialType part_type = PartialType::kBF16;
  int64_t n = 0;
  int heads = 0;
  int head_dim = 0;                    // any value in 1..256 (vectorized when a multiple of 8)
  void* out = nullptr;                 // bf16 [n, heads, dh]; may alias none of the inputs
  float* lse_out = nullptr;            // optional f32 [n, heads]
};
inline constexpr int kMaxMergeParts = 16;

// L = m + log(sum_s exp(lse_s - m)), o = sum_s exp(lse_s - L) o_s (fp32; all -inf gives o = 0,
// L = -inf).
absl::Status LaunchAttentionMerge(const MergeParams& p, cudaStream_t stream);

}  // namespace sqa::cuda
