// Chunked causal flash attention (prefill) on Hopper warpgroup MMA (wgmma, sm_90a).
//
// Same work decomposition as the mma.sync kernel (attention_prefill.cu): the query heads that
// share one KV head are packed into M (packed row m of KV head kvh is token m / g, attention head
// kvh * g + m % g), so each K/V tile is read once per group; CTAs walk key tiles from the causal
// diagonal down. CTAs are numbered in groups of KV heads (as many as fill the GPU and keep their
// K/V within L2), longest row tiles first across each group.
//
// Two consumer warpgroups work on 128 packed rows (64 each) and 128-key tiles. Q, K and V live in
// shared memory as 128-byte-swizzled tiles (wgmma.cuh). Per tile, each warpgroup computes
// S = Q K^T with m64n128k16 (both operands from shared memory), the online softmax in registers,
// and O += P V with P packed from the S accumulators into bf16 A fragments in registers and V
// read N-major (transposed) from shared memory.
//
// Two kernels share these pieces. The default (PrefillWgmmaPingPongKernel) adds a producer
// warpgroup that copies K/V through a 3-stage ring and has the consumers take turns on the tensor
// cores, so that one warpgroup's softmax runs during the other's GEMMs; with kOverlap (the
// default, NOTES.md v13b) each warpgroup's softmax also runs during its own previous P V, and with
// kTma (the default where the KV allows it, NOTES.md v14) one producer thread issues the copies as
// TMA boxes instead of the warpgroup's cp.async. The overlapped softmax (NOTES.md v17-v18) moves a
// row's max only by more than 8 (log2 units), takes the max only on tiles where exponentiating
// against the running one would exceed that, and packs P into one of two fragment sets while the
// previous P V reads the other. The lockstep kernel
// (PrefillWgmmaLockstepKernel, PrefillKernel::kWgmmaLockstep) has all 256 threads copy one tile
// ahead and both warpgroups meet at a barrier per tile; it issues P V in two halves so that the
// first half's GEMM runs while the second is exponentiated. bench/gpu/attention/NOTES.md has the
// versions that were measured.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "workers/engine/cuda/attention.h"
#include "workers/engine/cuda/attention_internal.cuh"
#include "workers/engine/cuda/tma.h"
#include "workers/engine/cuda/wgmma.cuh"

namespace sqa::cuda {
namespace {

using namespace attn_detail;

constexpr int kThreads = 256;  // two warpgroups
constexpr int kBlockM = 128;   // packed rows per CTA
constexpr int kBlockN = 128;   // keys per tile

template <int D>
constexpr int SmemBytes() {
  return (kBlockM * D + 4 * kBlockN * D) * static_cast<int>(sizeof(bf16)) + 1024;  // + alignment slack
}

enum PagedMode : int { kContiguous = 0, kPaged64 = 1, kPagedAny = 2 };

struct Args {
  const bf16* q;
  const bf16* k;
  const bf16* v;
  const int32_t* block_table;
  int block_size;
  int bs_shift;        // log2(block_size) when a power of two, else -1
  int64_t num_blocks;  // in the pool (paged; 0 = unknown)
  int paged_mode;  // PagedMode
  int hq, hkv, ha, g;
  int64_t n, q_pos0, kv_len;
  int64_t rows;       // n * g packed rows per KV head
  int64_t row_tiles;  // ceil(rows / kBlockM)
  int head_group;     // CTA numbering: KV heads per group (PrefillParams::cta_head_group)
  float scale_log2;
  bool causal;
  bf16* out;
  float* lse;
};

// TMA descriptors of K and V (the kTma producer), whose boxes are one 64-key, 64-column panel of
// a tile: {D, Hkv, tokens}, tokens = kv_len (contiguous) or blocks * block_size pool slots
// (Paged64; blocks are token-major, so the pool is one [slots][Hkv][D] array).
struct TmaMaps {
  CUtensorMap k;
  CUtensorMap v;
};

template <int D>
__device__ __forceinline__ void PvStep(float (&o)[D / 2], const uint32_t (&a)[4], uint64_t desc_b);
template <>
__device__ __forceinline__ void PvStep<128>(float (&o)[64], const uint32_t (&a)[4], uint64_t desc_b) {
  WgmmaRS_N128(o, a, desc_b);
}
template <>
__device__ __forceinline__ void PvStep<64>(float (&o)[32], const uint32_t (&a)[4], uint64_t desc_b) {
  WgmmaRS_N64(o, a, desc_b);
}

// Copies the [kBlockM][D] packed-row Q tile of (row0, kvh) into sQ (all kThreads threads).
template <int D>
__device__ __forceinline__ void LoadQ(const Args& a, uint32_t sQ, int64_t row0, int kvh, int tid) {
  constexpr int kChunks = D / 8;
  for (int i = tid; i < kBlockM * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const int64_t pr = row0 + r;
    const bool valid = pr < a.rows;
    const bf16* src = a.q;
    if (valid) {
      const int64_t t = pr / a.g;
      const int h = kvh * a.g + static_cast<int>(pr - t * a.g);
      src = a.q + (t * a.hq + h % a.hq) * D + c * 8;
    }
    CpAsync16(sQ + Sw128Offset(r, c, kBlockM), src, valid);
  }
}

// Pool slots (block * block_size + offset) of the first keys of the two 64-key halves of the
// tile at k0 (kPaged64; 0 past kv_end). Read and computed ahead of LoadKvTile and the TMA issue,
// so neither the table's latency nor the block arithmetic (shifts for a power-of-two block
// size, else a division) sits between a freed stage and its refill.
struct TileBlocks {
  int lo = 0, hi = 0;
};
__device__ __forceinline__ int PoolSlot(const Args& a, int p) {
  if (a.bs_shift >= 0) return (a.block_table[p >> a.bs_shift] << a.bs_shift) + (p & (a.block_size - 1));
  const int bi = p / a.block_size;
  return a.block_table[bi] * a.block_size + (p - bi * a.block_size);
}
template <int kMode>
__device__ __forceinline__ TileBlocks ReadTileBlocks(const Args& a, int k0, int64_t kv_end) {
  TileBlocks b;
  if constexpr (kMode == kPaged64) {
    if (k0 < kv_end) b.lo = PoolSlot(a, k0);
    if (k0 + 64 < kv_end) b.hi = PoolSlot(a, k0 + 64);
  }
  return b;
}

// Issues the cp.async copies of key tile [k0, k0 + kBlockN) of KV head kvh into (dk, dv), by
// kLoaders threads (t = 0 .. kLoaders-1); keys at or past kv_end are zero-filled. Thread t copies
// chunk t % kChunks of rows t / kChunks + j * kRowsPerStep, so its shared-memory offsets (the
// swizzle term depends on the row only mod 8) and, for contiguous or 64-aligned paged KV, its
// global offsets advance by constants per step.
template <int D, int kLoaders, int kMode>
__device__ __forceinline__ void LoadKvTile(const Args& a, uint32_t dk, uint32_t dv, int k0, int64_t kv_end, int kvh,
                                           int t, TileBlocks blocks = TileBlocks{}) {
  constexpr int kChunks = D / 8;
  constexpr int kRowsPerStep = kLoaders / kChunks;  // a multiple of 8
  constexpr int kSteps = kBlockN / kRowsPerStep;
  static_assert(kRowsPerStep % 8 == 0 && 64 % kRowsPerStep == 0, "load pattern");
  const int r0 = t / kChunks, c = t % kChunks;
  const uint32_t so0 = Sw128Offset(r0, c, kBlockN);
  const int64_t keys_left = kv_end - k0;
  const int rows_left = static_cast<int>(keys_left < kBlockN ? keys_left : kBlockN) - r0;  // r0 + x valid iff x < rows_left
  if constexpr (kMode == kContiguous) {
    const int64_t off0 = (static_cast<int64_t>(k0 + r0) * a.hkv + kvh) * D + c * 8;
    const int64_t step = static_cast<int64_t>(kRowsPerStep) * a.hkv * D;
#pragma unroll
    for (int j = 0; j < kSteps; ++j) {
      const bool valid = j * kRowsPerStep < rows_left;
      const uint32_t so = so0 + j * kRowsPerStep * 128;
      const int64_t off = valid ? off0 + j * step : 0;
      CpAsync16(dk + so, a.k + off, valid);
      CpAsync16(dv + so, a.v + off, valid);
    }
  } else if constexpr (kMode == kPaged64) {
    // Each 64-key half of the tile lies in one block (consecutive slots); rows are Hkv * D apart.
    auto half = [&](int slot) -> int64_t { return (static_cast<int64_t>(slot + r0) * a.hkv + kvh) * D + c * 8; };
    const int64_t lo = half(blocks.lo), hi = half(blocks.hi);
    const int64_t row = static_cast<int64_t>(a.hkv) * D;
#pragma unroll
    for (int j = 0; j < kSteps; ++j) {
      const bool valid = j * kRowsPerStep < rows_left;
      const uint32_t so = so0 + j * kRowsPerStep * 128;
      const int64_t off = valid ? (j * kRowsPerStep < 64 ? lo : hi) + ((j * kRowsPerStep) % 64) * row : 0;
      CpAsync16(dk + so, a.k + off, valid);
      CpAsync16(dv + so, a.v + off, valid);
    }
  } else {
    // Any block size: one table read per row. Offsets as PagedOffset, the row index in 32 bits
    // (the producer warpgroup runs with 40 registers): slot * Hkv + kvh < 2^31, since a layer's
    // K of 2^31 rows of D >= 64 bf16 would not fit in device memory.
#pragma unroll 4
    for (int j = 0; j < kSteps; ++j) {
      const bool valid = j * kRowsPerStep < rows_left;
      const uint32_t so = so0 + j * kRowsPerStep * 128;
      int64_t off = 0;
      if (valid) {
        const int p = k0 + r0 + j * kRowsPerStep;
        const int bi = p / a.block_size;
        const int slot = a.block_table[bi] * a.block_size + (p - bi * a.block_size);
        off = static_cast<int64_t>(slot * a.hkv + kvh) * D + c * 8;
      }
      CpAsync16(dk + so, a.k + off, valid);
      CpAsync16(dv + so, a.v + off, valid);
    }
  }
}

// Sets S to -inf for the keys past each of this thread's two rows' causal limit (diagonal tiles).
__device__ __forceinline__ void MaskTile(float (&s)[kBlockN / 2], const int (&row_limit)[2], int k0, int lane) {
#pragma unroll
  for (int nb = 0; nb < kBlockN / 8; ++nb)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = k0 + nb * 8 + (lane % 4) * 2 + (e & 1);
      if (key > row_limit[e >> 1]) s[4 * nb + e] = -INFINITY;
    }
}

// The online softmax in two parts, so that P V of the first 64 keys runs on the tensor cores
// while the second half is exponentiated. SoftmaxRescale masks, takes the new row max over the
// whole tile, rescales O and l, and returns the max used for the exponent; ExpPackHalf<h>
// exponentiates keys 64 h .. 64 h + 63, adds them to l and packs them as k-steps 4 h .. 4 h + 3.
template <int D>
__device__ __forceinline__ void SoftmaxRescale(float (&s)[kBlockN / 2], float (&o)[D / 2], float (&m_i)[2],
                                               float (&l_i)[2], float (&m_use)[2], const int (&row_limit)[2], int k0,
                                               bool need_mask, float sl2, int lane) {
  if (need_mask) MaskTile(s, row_limit, k0, lane);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float mx = -INFINITY;
#pragma unroll
    for (int nb = 0; nb < kBlockN / 8; ++nb) mx = fmaxf(mx, fmaxf(s[4 * nb + 2 * i], s[4 * nb + 2 * i + 1]));
    mx = QuadMax(mx) * sl2;
    const float m_new = fmaxf(m_i[i], mx);
    m_use[i] = m_new == -INFINITY ? 0.f : m_new;
    const float alpha = Exp2(m_i[i] - m_use[i]);
    l_i[i] *= alpha;
    m_i[i] = m_new;
    if (__any_sync(0xffffffffu, alpha != 1.f)) {
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd) {
        o[4 * nd + 2 * i] *= alpha;
        o[4 * nd + 2 * i + 1] *= alpha;
      }
    }
  }
}

template <int kHalf>
__device__ __forceinline__ void ExpPackHalf(const float (&s)[kBlockN / 2], const float (&m_use)[2], float sl2,
                                            float (&l_i)[2], uint32_t (&pa)[kBlockN / 16][4]) {
  // The exponentials go straight into the bf16 fragments: S is only read here, so no non-wgmma
  // instruction writes a wgmma accumulator while P V runs (ptxas would serialize the wgmmas).
  float sum[2] = {0.f, 0.f};
#pragma unroll
  for (int kk = kHalf * kBlockN / 32; kk < (kHalf + 1) * kBlockN / 32; ++kk) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {  // q: (n8 block 2kk + q/2, row half q%2)
      const int i = q & 1;
      const int idx = 8 * kk + 4 * (q >> 1) + 2 * i;
      const float p0 = Exp2(fmaf(s[idx], sl2, -m_use[i]));
      const float p1 = Exp2(fmaf(s[idx + 1], sl2, -m_use[i]));
      sum[i] += p0 + p1;
      pa[kk][q] = PackBf16(p0, p1);
    }
  }
  l_i[0] += sum[0];
  l_i[1] += sum[1];
}

// O += P V over k-steps kk0 .. kk1-1 (issue only).
template <int D, int kk0, int kk1>
__device__ __forceinline__ void IssuePVRange(float (&o)[D / 2], const uint32_t (&pa)[kBlockN / 16][4],
                                             uint32_t v_base) {
#pragma unroll
  for (int kk = kk0; kk < kk1; ++kk) {
    PvStep<D>(o, pa[kk], MakeSmemDesc(v_base + kk * 16 * 128, kBlockN * 128, 1024));
  }
}

// Softmax of the S tile and O += P V, the first half of P V overlapping the second half's
// exponentials; returns with the P V GEMMs committed (not waited for).
template <int D>
__device__ __forceinline__ void SoftmaxAndPV(float (&s)[kBlockN / 2], float (&o)[D / 2], float (&m_i)[2],
                                             float (&l_i)[2], uint32_t (&pa)[kBlockN / 16][4],
                                             const int (&row_limit)[2], int k0, bool need_mask, float sl2, int lane,
                                             uint32_t v_base) {
  float m_use[2];
  SoftmaxRescale<D>(s, o, m_i, l_i, m_use, row_limit, k0, need_mask, sl2, lane);
  ExpPackHalf<0>(s, m_use, sl2, l_i, pa);
  WgmmaFence();
  IssuePVRange<D, 0, kBlockN / 32>(o, pa, v_base);
  WgmmaCommit();
  ExpPackHalf<1>(s, m_use, sl2, l_i, pa);
  WgmmaFence();
  IssuePVRange<D, kBlockN / 32, kBlockN / 16>(o, pa, v_base);
  WgmmaCommit();
}

// The overlapped schedule's softmax (kOverlap), run while the previous tile's P V still reads the
// other fragment set on the tensor cores: P goes into the bf16 fragments pb (S stays intact),
// which the caller hands to this tile's P V after rescaling O and l once the previous P V has
// finished.
// A row's running max (log2 units) moves only when a tile's max exceeds it by more than
// kMaxSlack, so P stays below 2^kMaxSlack (fp32 sums and bf16 P keep their relative precision).
// Most tiles then need no max at all: P is exponentiated against the running max, and only if a
// thread's partial row sum (which bounds every P it adds up) exceeds 2^kMaxSlack or is not finite
// does the warp take the tile's maxima and redo P. A row with no max yet (-inf) always takes the
// max. alpha = 1 on the fast path, so the caller skips O's rescale.
constexpr float kMaxSlack = 8.f;
constexpr float kSumLimit = 256.f;  // 2^kMaxSlack
__device__ __forceinline__ void ExpPackTile(const float (&s)[kBlockN / 2], const float (&m_use)[2], float sl2,
                                            float (&sum)[2], uint32_t (&pb)[kBlockN / 16][4]) {
  sum[0] = sum[1] = 0.f;
#pragma unroll
  for (int kk = 0; kk < kBlockN / 16; ++kk) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {  // q: (n8 block 2kk + q/2, row half q%2)
      const int i = q & 1;
      const int idx = 8 * kk + 2 * q;
      const float p0 = Exp2(fmaf(s[idx], sl2, -m_use[i]));
      const float p1 = Exp2(fmaf(s[idx + 1], sl2, -m_use[i]));
      sum[i] += p0 + p1;
      pb[kk][q] = PackBf16(p0, p1);
    }
  }
}
__device__ __forceinline__ void OverlapSoftmaxPack(const float (&s)[kBlockN / 2], float (&m_i)[2], float (&alpha)[2],
                                                   float (&sum)[2], uint32_t (&pb)[kBlockN / 16][4], float sl2) {
  alpha[0] = alpha[1] = 1.f;
  bool redo = !__all_sync(0xffffffffu, m_i[0] != -INFINITY && m_i[1] != -INFINITY);
  if (!redo) {
    ExpPackTile(s, m_i, sl2, sum, pb);
    redo = __any_sync(0xffffffffu, !(sum[0] <= kSumLimit && sum[1] <= kSumLimit));
  }
  if (redo) {
    float m_use[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int nb = 0; nb < kBlockN / 8; ++nb) mx = fmaxf(mx, fmaxf(s[4 * nb + 2 * i], s[4 * nb + 2 * i + 1]));
      mx = QuadMax(mx) * sl2;
      // -inf + kMaxSlack is -inf: a row's first keys always set its max.
      const float m_new = mx > m_i[i] + kMaxSlack ? mx : m_i[i];
      m_use[i] = m_new == -INFINITY ? 0.f : m_new;
      alpha[i] = Exp2(m_i[i] - m_use[i]);
      m_i[i] = m_new;
    }
    ExpPackTile(s, m_use, sl2, sum, pb);
  }
}

// S = Q K^T for this warpgroup's 64 rows (issue only; the caller commits and waits).
template <int D>
__device__ __forceinline__ void IssueQK(float (&s)[kBlockN / 2], uint32_t q_base, uint32_t k_base) {
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    const uint32_t qa = q_base + (ks / 4) * (kBlockM * 128) + (ks % 4) * 32;
    const uint32_t kb = k_base + (ks / 4) * (kBlockN * 128) + (ks % 4) * 32;
    WgmmaSS_N128(s, MakeSmemDesc(qa, 16, 1024), MakeSmemDesc(kb, 16, 1024), ks > 0 ? 1 : 0);
  }
}

// Per-CTA geometry shared by the kernels.
struct CtaTiles {
  int kvh;
  int64_t row0, kv_end, unmasked_end;
  int num_tiles;
};
__device__ __forceinline__ CtaTiles CtaGeometry(const Args& a) {
  CtaTiles c;
  const int64_t linear = blockIdx.x;
  // Groups of head_group KV heads, one after the other; within a group, longest row tiles first
  // and the group's heads side by side. The CTAs resident at one time then read the K/V of few
  // heads (shared in L2), and each group ends on its shortest tiles.
  const int64_t span = static_cast<int64_t>(a.head_group) * a.row_tiles;
  const int grp = static_cast<int>(linear / span);
  const int64_t within = linear - grp * span;
  const int heads_here = min(a.head_group, a.hkv - grp * a.head_group);
  c.kvh = grp * a.head_group + static_cast<int>(within % heads_here);
  c.row0 = (a.row_tiles - 1 - within / heads_here) * kBlockM;
  const int64_t row_end = min(c.row0 + kBlockM, a.rows);
  const int64_t t_first = c.row0 / a.g, t_last = (row_end - 1) / a.g;
  c.kv_end = a.causal ? min(a.kv_len, a.q_pos0 + t_last + 1) : a.kv_len;
  c.num_tiles = c.kv_end > 0 ? static_cast<int>((c.kv_end + kBlockN - 1) / kBlockN) : 0;
  c.unmasked_end = a.causal ? min(a.kv_len, a.q_pos0 + t_first + 1) : a.kv_len;
  return c;
}

// A consumer thread's starting state: the last key each of its two rows (r_in, r_in + 8 of the
// CTA tile) may see, zero accumulators, and empty softmax statistics.
template <int D>
__device__ __forceinline__ void InitConsumer(const Args& a, const CtaTiles& ct, int r_in, int (&row_limit)[2],
                                             float (&o)[D / 2], float (&s)[kBlockN / 2], float (&m_i)[2],
                                             float (&l_i)[2]) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t t = (ct.row0 + r_in + 8 * i) / a.g;
    row_limit[i] = static_cast<int>(a.causal ? min(a.q_pos0 + t, a.kv_len - 1) : a.kv_len - 1);
    m_i[i] = -INFINITY;
    l_i[i] = 0.f;
  }
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
#pragma unroll
  for (int i = 0; i < kBlockN / 2; ++i) s[i] = 0.f;
}

// Normalizes O and writes it and the LSE for this thread's two rows.
template <int D>
__device__ __forceinline__ void Epilogue(const Args& a, const float (&o)[D / 2], const float (&m_i)[2],
                                         const float (&l_i)[2], int64_t row0, int r_in, int kvh, int lane) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float l = QuadSum(l_i[i]);
    const int64_t pr = row0 + r_in + 8 * i;
    if (pr >= a.rows) continue;
    const int64_t t = pr / a.g;
    const int h = kvh * a.g + static_cast<int>(pr - t * a.g);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    bf16* dst = a.out + (t * a.ha + h) * D + (lane % 4) * 2;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) {
      *reinterpret_cast<__nv_bfloat162*>(dst + nd * 8) =
          __floats2bfloat162_rn(o[4 * nd + 2 * i] * inv, o[4 * nd + 2 * i + 1] * inv);
    }
    if (a.lse != nullptr && lane % 4 == 0) {
      a.lse[t * a.ha + h] = l > 0.f ? (m_i[i] + log2f(l)) * kLn2 : -INFINITY;
    }
  }
}

template <int D, int kMode>
__global__ void __launch_bounds__(kThreads, 1) PrefillWgmmaLockstepKernel(const Args a) {
  extern __shared__ unsigned char smem_raw[];
  constexpr uint32_t kTileBytes = kBlockN * D * sizeof(bf16);
  const uint32_t sQ = (SmemAddr(smem_raw) + 1023u) & ~1023u;
  const uint32_t sK = sQ + kBlockM * D * sizeof(bf16);  // 2 stages
  const uint32_t sV = sK + 2 * kTileBytes;              // 2 stages
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wg = warp / 4, wl = warp % 4;
  const CtaTiles ct = CtaGeometry(a);
  const int T = ct.num_tiles;
  // Tile x (0 = the diagonal tile) covers keys from (T - 1 - x) * kBlockN and lives in stage x % 2.
  auto key0 = [&](int x) { return (T - 1 - x) * kBlockN; };

  LoadQ<D>(a, sQ, ct.row0, ct.kvh, tid);
  if (T > 0) {
    LoadKvTile<D, kThreads, kMode>(a, sK, sV, key0(0), ct.kv_end, ct.kvh, tid,
                                   ReadTileBlocks<kMode>(a, key0(0), ct.kv_end));
  }
  CpAsyncCommit();
  TileBlocks next_blocks;  // of tile it + 1, read one iteration ahead
  if (T > 1) next_blocks = ReadTileBlocks<kMode>(a, key0(1), ct.kv_end);

  // This thread's two rows inside the CTA tile: wg*64 + wl*16 + lane/4 (+ 8).
  const int r_in = wg * 64 + wl * 16 + lane / 4;
  int row_limit[2];
  float o[D / 2], s[kBlockN / 2], m_i[2], l_i[2];
  InitConsumer<D>(a, ct, r_in, row_limit, o, s, m_i, l_i);
  uint32_t pa[kBlockN / 16][4];
  const uint32_t q_base = sQ + wg * 64 * 128;

  for (int it = 0; it < T; ++it) {
    const int st = it & 1;
    CpAsyncWait<0>();
    FenceProxyAsync();
    __syncthreads();  // tile `it` visible to all; everyone is done with stage st ^ 1
    WgmmaFence();
    IssueQK<D>(s, q_base, sK + st * kTileBytes);
    WgmmaCommit();
    if (it + 1 < T) {  // the copies overlap the S GEMM
      LoadKvTile<D, kThreads, kMode>(a, sK + (st ^ 1) * kTileBytes, sV + (st ^ 1) * kTileBytes, key0(it + 1), ct.kv_end,
                                     ct.kvh, tid, next_blocks);
      CpAsyncCommit();
      if (it + 2 < T) next_blocks = ReadTileBlocks<kMode>(a, key0(it + 2), ct.kv_end);
    }
    WgmmaWait<0>();
    FenceRegs(s);
    const int k0 = key0(it);
    SoftmaxAndPV<D>(s, o, m_i, l_i, pa, row_limit, k0, k0 + kBlockN > ct.unmasked_end, a.scale_log2, lane,
                    sV + st * kTileBytes);
    WgmmaWait<0>();
    FenceRegs(o);
  }
  CpAsyncWait<0>();
  Epilogue<D>(a, o, m_i, l_i, ct.row0, r_in, ct.kvh, lane);
}

// The default kernel (NOTES.md v10-v14): warp-specialized ping-pong. Warps 0-7 are two consumer
// warpgroups, warps 8-11 a producer warpgroup that copies K/V tiles into a 3-stage ring
// (mbarriers full and empty; cp.async by the warpgroup, or with kTma TMA boxes from one thread)
// and gives its registers to the consumers (setmaxnreg). The consumers take turns on
// the tensor cores (named barriers 1 and 2): in its turn a warpgroup issues P V of tile j and
// S = Q K^T of tile j + 1; the other warpgroup meanwhile does its softmax. With kOverlap the turn
// issues S(j + 1) first and only S(j + 1) is waited for, so the softmax of tile j + 1 runs while
// P V(j) is still on the tensor cores (PrefillKernel::kWgmma; without: kWgmmaPingPong). The consumer path has
// no data-dependent branch around a wgmma (arrives and waits are predicated or parity-selected),
// so ptxas keeps the wgmmas asynchronous.
constexpr int kPpStages = 3;
constexpr int kPpThreads = kThreads + 128;

template <int D>
constexpr int PingPongSmemBytes() {
  return (kBlockM * D + 2 * kPpStages * kBlockN * D) * static_cast<int>(sizeof(bf16)) + 1024 + 2 * kPpStages * 8;
}

template <int D, int kMode, bool kOverlap, bool kTma = false>
__global__ void __launch_bounds__(kPpThreads, 1)
    PrefillWgmmaPingPongKernel(const __grid_constant__ Args a, const __grid_constant__ TmaMaps tm) {
  extern __shared__ unsigned char smem_raw[];
  constexpr uint32_t kTileBytes = kBlockN * D * sizeof(bf16);
  const uint32_t sQ = (SmemAddr(smem_raw) + 1023u) & ~1023u;
  const uint32_t sK = sQ + kBlockM * D * sizeof(bf16);   // kPpStages stages
  const uint32_t sV = sK + kPpStages * kTileBytes;        // kPpStages stages
  const uint32_t bar_full = sV + kPpStages * kTileBytes;  // kPpStages mbarriers
  const uint32_t bar_empty = bar_full + kPpStages * 8;    // kPpStages mbarriers
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const CtaTiles ct = CtaGeometry(a);
  const int T = ct.num_tiles;
  auto key0 = [&](int x) { return (T - 1 - x) * kBlockN; };

  if (tid == 0) {
    for (int i = 0; i < kPpStages; ++i) {
      MbarInit(bar_full + 8 * i, kTma ? 1 : 128);  // the TMA issuer, or the producer warpgroup's threads
      MbarInit(bar_empty + 8 * i, 8);   // one arrival per consumer warp
    }
  }
  // TMA producer: the pool slots of the first four tiles, read before the barrier so that their
  // latency overlaps Q's copy; later tiles' slots are read four tiles ahead (a queue q0..q3).
  TileBlocks q0, q1, q2, q3;
  if constexpr (kTma) {
    if (warp >= 8) {
      if (T > 0) q0 = ReadTileBlocks<kMode>(a, key0(0), ct.kv_end);
      if (T > 1) q1 = ReadTileBlocks<kMode>(a, key0(1), ct.kv_end);
      if (T > 2) q2 = ReadTileBlocks<kMode>(a, key0(2), ct.kv_end);
      if (T > 3) q3 = ReadTileBlocks<kMode>(a, key0(3), ct.kv_end);
    }
  }
  if (tid < kThreads) LoadQ<D>(a, sQ, ct.row0, ct.kvh, tid);
  CpAsyncCommit();
  CpAsyncWait<0>();
  FenceProxyAsync();
  __syncthreads();

  if (warp >= 8) {  // producer warpgroup
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    const int t = tid - kThreads;
    if constexpr (kTma) {
      // The diagonal tile, when it ends past kv_end, is copied by the whole warpgroup with
      // cp.async and zero fill (keys past kv_end must be finite: P V multiplies them by 0);
      // every full tile is 2 x 2 x D/64 TMA boxes issued by one thread.
      int x0 = 0;
      auto pop = [&](int x_next) {  // the queue's head is tile x_next - 4's; refill with x_next's
        const TileBlocks head = q0;
        q0 = q1;
        q1 = q2;
        q2 = q3;
        q3 = x_next < T ? ReadTileBlocks<kMode>(a, key0(x_next), ct.kv_end) : TileBlocks{};
        return head;
      };
      if (T > 0 && key0(0) + kBlockN > ct.kv_end) {
        LoadKvTile<D, 128, kMode>(a, sK, sV, key0(0), ct.kv_end, ct.kvh, t, pop(4));
        CpAsyncCommit();  // wait_group waits for committed groups only
        CpAsyncWait<0>();
        FenceProxyAsync();
        NamedBarSync(3, 128);
        MbarArriveIf(bar_full, t == 0);
        x0 = 1;
      }
      if (t == 0) {
        for (int x = x0; x < T; ++x) {
          const int st = x % kPpStages;
          const TileBlocks cur = pop(x + 4);
          if (x >= kPpStages) MbarWait(bar_empty + 8 * st, ((x / kPpStages) - 1) & 1);
          const uint32_t full = bar_full + 8 * st;
          MbarArriveExpectTx(full, 2 * kTileBytes);
          const int k0 = key0(x);
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            // Both forms are token-major ({D, Hkv, tokens} maps): the token coordinate is the
            // position (contiguous) or the pool slot (paged).
            const int c1 = ct.kvh;
            int c2;
            if constexpr (kMode == kPaged64) {
              c2 = h == 0 ? cur.lo : cur.hi;
            } else {
              c2 = k0 + 64 * h;
            }
#pragma unroll
            for (int pnl = 0; pnl < D / 64; ++pnl) {
              const uint32_t off = st * kTileBytes + pnl * kBlockN * 128 + h * 64 * 128;
              TmaLoad3d(sK + off, &tm.k, 64 * pnl, c1, c2, full);
              TmaLoad3d(sV + off, &tm.v, 64 * pnl, c1, c2, full);
            }
          }
        }
      }
    } else {
      TileBlocks next;
      if (T > 0) next = ReadTileBlocks<kMode>(a, key0(0), ct.kv_end);
      for (int x = 0; x < T; ++x) {
        const int st = x % kPpStages;
        const TileBlocks cur = next;
        if (x + 1 < T) next = ReadTileBlocks<kMode>(a, key0(x + 1), ct.kv_end);
        if (x >= kPpStages) MbarWait(bar_empty + 8 * st, ((x / kPpStages) - 1) & 1);
        LoadKvTile<D, 128, kMode>(a, sK + st * kTileBytes, sV + st * kTileBytes, key0(x), ct.kv_end, ct.kvh, t, cur);
        CpAsyncMbarArrive(bar_full + 8 * st);
      }
      CpAsyncWait<0>();
    }
  } else {  // consumer warpgroups
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
    // Warp-uniform (a shuffle from lane 0): the compiler then forms the wgmma descriptors, which
    // depend on wg, in uniform registers instead of moving them there before each wgmma.
    const int wg = __shfl_sync(0xffffffffu, warp / 4, 0), wl = warp % 4;
    const int r_in = wg * 64 + wl * 16 + lane / 4;
    int row_limit[2];
    float o[D / 2], s[kBlockN / 2], m_i[2], l_i[2];
    InitConsumer<D>(a, ct, r_in, row_limit, o, s, m_i, l_i);
    uint32_t pa[kBlockN / 16][4];
    const uint32_t q_base = sQ + wg * 64 * 128;
    const int my_turn = 1 + wg, other_turn = 2 - wg;

    // With no tile (T == 0) the S GEMMs below read stale shared memory and their result is
    // dropped; the waits select a parity that is already complete instead of branching.
    NamedBarArriveIf(1, 256, wg == 1);  // warpgroup 0 goes first
    MbarWait(bar_full, T > 0 ? 0 : 1);
    FenceProxyAsync();
    NamedBarSync(my_turn, 256);
    WgmmaFence();
    IssueQK<D>(s, q_base, sK);
    WgmmaCommit();
    NamedBarArriveIf(other_turn, 256, !(wg == 1 && T == 0));
    WgmmaWait<0>();
    FenceRegs(s);
    if constexpr (!kOverlap) {
      for (int j = 0; j < T; ++j) {
        const int k0 = key0(j);
        float m_use[2];
        SoftmaxRescale<D>(s, o, m_i, l_i, m_use, row_limit, k0, k0 + kBlockN > ct.unmasked_end, a.scale_log2, lane);
        ExpPackHalf<0>(s, m_use, a.scale_log2, l_i, pa);
        ExpPackHalf<1>(s, m_use, a.scale_log2, l_i, pa);
        const int sj = j % kPpStages, sn = (j + 1) % kPpStages;
        // The last tile's S GEMM for "tile T" reads a stale stage (result unused): no wait.
        MbarWait(bar_full + 8 * sn, j + 1 < T ? ((j + 1) / kPpStages) & 1 : (((j + 1) / kPpStages) & 1) ^ 1);
        FenceProxyAsync();
        NamedBarSync(my_turn, 256);
        WgmmaFence();
        IssuePVRange<D, 0, kBlockN / 16>(o, pa, sV + sj * kTileBytes);
        WgmmaCommit();
        IssueQK<D>(s, q_base, sK + sn * kTileBytes);
        WgmmaCommit();
        NamedBarArriveIf(other_turn, 256, !(wg == 1 && j == T - 1));
        WgmmaWait<1>();
        FenceRegs(o);
        MbarArriveIf(bar_empty + 8 * sj, lane == 0);
        WgmmaWait<0>();
        FenceRegs(s);
      }
    } else {  // the softmax of tile j overlaps the warpgroup's own P V of tile j - 1
      // P of tile j goes into one fragment set while P V of tile j - 1 still reads the other, so
      // the loop is unrolled by two with fixed roles. After each wait, FenceRegs keeps the set
      // that the finished P V read live up to there, so the compiler cannot place the new P in
      // its registers (the PTX rule: no write to a wgmma's A registers before its wait).
      uint32_t (&pa0)[kBlockN / 16][4] = pa;
      uint32_t pa1[kBlockN / 16][4];
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk)
#pragma unroll
        for (int q = 0; q < 4; ++q) pa0[kk][q] = pa1[kk][q] = 0u;
      auto step = [&](int j, uint32_t (&pw)[kBlockN / 16][4], uint32_t (&pr)[kBlockN / 16][4]) {
        const int k0 = key0(j);
        float alpha[2], sum[2];
        if (k0 + kBlockN > ct.unmasked_end) MaskTile(s, row_limit, k0, lane);
        OverlapSoftmaxPack(s, m_i, alpha, sum, pw, a.scale_log2);
        WgmmaWait<0>();  // P V of tile j - 1 has finished
        FenceRegs(o);
        FenceRegs(pr);
        MbarArriveIf(bar_empty + 8 * ((j + kPpStages - 1) % kPpStages), lane == 0 && j > 0);
#pragma unroll
        for (int i = 0; i < 2; ++i) l_i[i] = l_i[i] * alpha[i] + sum[i];
        if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
          for (int nd = 0; nd < D / 8; ++nd) {
            o[4 * nd] *= alpha[0];
            o[4 * nd + 1] *= alpha[0];
            o[4 * nd + 2] *= alpha[1];
            o[4 * nd + 3] *= alpha[1];
          }
        }
        const int sj = j % kPpStages, sn = (j + 1) % kPpStages;
        MbarWait(bar_full + 8 * sn, j + 1 < T ? ((j + 1) / kPpStages) & 1 : (((j + 1) / kPpStages) & 1) ^ 1);
        FenceProxyAsync();
        NamedBarSync(my_turn, 256);
        WgmmaFence();
        IssueQK<D>(s, q_base, sK + sn * kTileBytes);
        WgmmaCommit();
        IssuePVRange<D, 0, kBlockN / 16>(o, pw, sV + sj * kTileBytes);
        WgmmaCommit();
        NamedBarArriveIf(other_turn, 256, !(wg == 1 && j == T - 1));
        WgmmaWait<1>();  // S(j + 1) is ready; P V of tile j may still run
        FenceRegs(s);
      };
#pragma unroll 1
      for (int j = 0; j < T; j += 2) {
        step(j, pa0, pa1);
        if (j + 1 >= T) break;
        step(j + 1, pa1, pa0);
      }
      WgmmaWait<0>();
      FenceRegs(o);
      FenceRegs(pa0);
      FenceRegs(pa1);
    }
    Epilogue<D>(a, o, m_i, l_i, ct.row0, r_in, ct.kvh, lane);
  }
}

// Encodes the TMA descriptors of K and V for kPaged64 or kContiguous (see TmaMaps).
absl::Status MakeTmaMaps(const Args& a, int head_dim, TmaMaps* tm) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = TensorMapEncoder();
  if (encode == nullptr) return absl::InternalError("attention prefill: the driver has no cuTensorMapEncodeTiled");
  const uint64_t row_bytes = static_cast<uint64_t>(head_dim) * sizeof(bf16);
  cuuint64_t dims[3], strides[2];
  cuuint32_t box[3];
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  // {D, Hkv, tokens}: contiguous K/V has kv_len tokens, the paged pool num_blocks * block_size
  // slots (token-major blocks), so the two differ only in the token coordinate.
  dims[0] = head_dim;
  dims[1] = a.hkv;
  dims[2] = static_cast<cuuint64_t>(
      std::max<int64_t>(a.paged_mode == kPaged64 ? a.num_blocks * a.block_size : a.kv_len, 1));
  strides[0] = row_bytes;
  strides[1] = row_bytes * a.hkv;
  box[0] = 64;
  box[1] = 1;
  box[2] = 64;
  for (int i = 0; i < 2; ++i) {
    CUtensorMap* m = i == 0 ? &tm->k : &tm->v;
    void* base = const_cast<bf16*>(i == 0 ? a.k : a.v);
    const CUresult r = encode(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, base, dims, strides, box, elem_strides,
                              CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                              CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
      return absl::InternalError(absl::StrCat("attention prefill: cuTensorMapEncodeTiled failed (CUresult ", r, ")"));
    }
  }
  return absl::OkStatus();
}

// kind: 0 lockstep, 1 ping-pong, 2 ping-pong with the softmax overlapping the own P V (cp.async
// producer), 3 = 2 with the TMA producer where the KV allows it (else 2).
template <int D, int kMode>
absl::Status Launch(const Args& a, int kind, cudaStream_t stream) {
  const bool pingpong = kind != 0;
  const int smem = pingpong ? PingPongSmemBytes<D>() : SmemBytes<D>();
  const int threads = pingpong ? kPpThreads : kThreads;
  TmaMaps tm{};
  // TMA needs every box inside its tensor map: for paged KV, the pool's block count, and rows
  // that an int32 coordinate reaches.
  // When the maps cannot be made (no driver entry point, an unaligned pointer) the cp.async
  // producer runs instead.
  const bool tma = kind == 3 && kMode != kPagedAny &&
                   (kMode == kContiguous ||
                    (a.num_blocks > 0 && a.num_blocks * a.block_size <= int64_t{0x7fffffff})) &&
                   MakeTmaMaps(a, D, &tm).ok();
  constexpr bool kCanTma = kMode != kPagedAny;
  auto kernel = tma                     ? PrefillWgmmaPingPongKernel<D, kMode, true, kCanTma>
                : kind == 2 || kind == 3 ? PrefillWgmmaPingPongKernel<D, kMode, true>
                : kind == 1              ? PrefillWgmmaPingPongKernel<D, kMode, false>
                                         : nullptr;
  const int64_t blocks = a.row_tiles * a.hkv;
  if (blocks > 0x7fffffff) return absl::InvalidArgumentError("attention prefill: too many query rows for one launch");
  if (kernel == nullptr) {
    auto lockstep = PrefillWgmmaLockstepKernel<D, kMode>;
    cudaError_t e = cudaFuncSetAttribute(lockstep, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return CudaStatus(e, "attention prefill (wgmma): cudaFuncSetAttribute");
    lockstep<<<static_cast<unsigned>(blocks), threads, smem, stream>>>(a);
    return LaunchStatus("attention prefill (wgmma)");
  }
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return CudaStatus(e, "attention prefill (wgmma): cudaFuncSetAttribute");
  kernel<<<static_cast<unsigned>(blocks), threads, smem, stream>>>(a, tm);
  return LaunchStatus("attention prefill (wgmma)");
}

}  // namespace

namespace attn_detail {

// Shapes are validated by LaunchAttentionPrefill before it calls this.
absl::Status LaunchPrefillWgmma(const PrefillParams& p, cudaStream_t stream) {
  Args a{};
  a.q = static_cast<const bf16*>(p.q);
  a.k = static_cast<const bf16*>(p.kv.k);
  a.v = static_cast<const bf16*>(p.kv.v);
  a.block_table = p.kv.block_table;
  a.block_size = p.kv.block_size;
  a.bs_shift = -1;
  for (int s = 0; s < 31; ++s) {
    if ((1 << s) == a.block_size) a.bs_shift = s;
  }
  a.num_blocks = p.kv.num_blocks;
  a.paged_mode = p.kv.block_table == nullptr ? kContiguous : (p.kv.block_size % 64 == 0 ? kPaged64 : kPagedAny);
  a.hq = p.num_q_heads;
  a.hkv = p.num_kv_heads;
  a.ha = a.hq > a.hkv ? a.hq : a.hkv;
  a.g = a.ha / a.hkv;
  a.n = p.n;
  a.q_pos0 = p.q_pos0;
  a.kv_len = p.kv_len;
  a.rows = p.n * a.g;
  a.row_tiles = (a.rows + kBlockM - 1) / kBlockM;
  if (p.cta_head_group > 0) {
    a.head_group = std::min(p.cta_head_group, a.hkv);
  } else {
    // At least enough heads that one group's tiles fill every SM once (one CTA per SM fits),
    // and as many as keep the group's K/V within ~32 MB of L2.
    const int64_t fill = (NumSms() + a.row_tiles - 1) / std::max<int64_t>(a.row_tiles, 1);
    const int64_t kv_per_head = std::max<int64_t>(a.kv_len, 1) * p.head_dim * 2 * 2;
    const int64_t by_l2 = std::max<int64_t>(1, (int64_t{32} << 20) / kv_per_head);
    a.head_group = static_cast<int>(std::clamp<int64_t>(std::max(fill, by_l2), 1, a.hkv));
  }
  const float scale = p.scale > 0.f ? p.scale : 1.f / std::sqrt(static_cast<float>(p.head_dim));
  a.scale_log2 = scale * kLog2e;
  a.causal = p.causal;
  a.out = static_cast<bf16*>(p.out);
  a.lse = p.lse;
  const int kind = p.kernel == PrefillKernel::kWgmmaLockstep  ? 0
                   : p.kernel == PrefillKernel::kWgmmaPingPong ? 1
                   : p.kernel == PrefillKernel::kWgmmaCpAsync  ? 2
                                                               : 3;
  if (p.head_dim == 64) {
    switch (a.paged_mode) {
      case kContiguous: return Launch<64, kContiguous>(a, kind, stream);
      case kPaged64: return Launch<64, kPaged64>(a, kind, stream);
      default: return Launch<64, kPagedAny>(a, kind, stream);
    }
  }
  switch (a.paged_mode) {
    case kContiguous: return Launch<128, kContiguous>(a, kind, stream);
    case kPaged64: return Launch<128, kPaged64>(a, kind, stream);
    default: return Launch<128, kPagedAny>(a, kind, stream);
  }
}

}  // namespace attn_detail
}  // namespace sqa::cuda
