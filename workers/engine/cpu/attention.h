// CPU attention kernels over the paged fp32 KV cache (internal to the CPU backend; exposed for
// tests and benchmarks). Flash-style: queries are packed into rows, keys are visited in tiles of
// kTileKeys gathered through the block table, softmax is online (base 2 internally), and the
// result comes with its natural-log LSE. Multithreaded with OpenMP.
#pragma once

#include <cstdint>

namespace sqa::cpu {

inline constexpr int kTileKeys = 64;

// Where one layer's K/V lives: block b of KV head h starts at
//   k: base + b * block_stride + h * block_size * head_dim
//   v: the same + v_offset
struct KvLayout {
  const float* base = nullptr;
  int64_t block_stride = 0;  // floats per block (K and V of all heads)
  int64_t v_offset = 0;      // floats from a block's K to its V
  int64_t block_size = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
};

struct PrefillProblem {
  KvLayout kv;
  const int32_t* block_table = nullptr;
  int64_t kv_len = 0;
  const float* q = nullptr;  // [n, hq, dh]
  int64_t n = 0;
  int64_t hq = 0;
  int64_t q_pos0 = 0;
  bool causal = true;
  float scale = 0.f;  // already resolved (> 0)
  float* out = nullptr;  // [n, ha, dh]
  float* lse = nullptr;  // optional [n, ha]
};

struct DecodeSeq {
  const int32_t* block_table = nullptr;
  int64_t kv_len = 0;
};

struct DecodeProblem {
  KvLayout kv;
  const DecodeSeq* seqs = nullptr;
  int64_t batch = 0;
  const float* q = nullptr;  // [B, hq, dh]
  int64_t hq = 0;
  float scale = 0.f;
  float* out = nullptr;  // [B, ha, dh]
  float* lse = nullptr;  // optional [B, ha]
};

// Callers have validated shapes and block ids. num_threads <= 0: OpenMP default.
void AttentionPrefillF32(const PrefillProblem& p, int num_threads);
void AttentionDecodeF32(const DecodeProblem& p, int num_threads);

}  // namespace sqa::cpu
