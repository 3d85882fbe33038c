// Flash-decoding over the paged KV cache (sm_90, mma.sync m16n8k16 or, v8's wide groups, wgmma;
// bf16 inputs, f32 accumulation).
//
// One CTA per (KV split, KV head x row group, sequence). The g = Ha / Hkv query heads that share
// a KV head are the M rows of one mma tile (16 or 32 rows), so each K/V byte is read once per
// group (groups wider than 32 heads, e.g. 64 query heads on one KV head, take two row groups and
// read the KV twice). The CTA's 4 warps each stream their own 32-key tiles (cp.async, two stages,
// warp-private shared memory), keep an online softmax, and are merged at the end through shared
// memory. With more than one split the partial (o, lse) go to the workspace in f32 and a second
// kernel merges them (same formula as MergeAttention). v4, v5, v6, v8 and v10 (the default) refine
// this: see the notes above namespace v4, above MergeSplitsInKernel and above the merge kernels.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "workers/engine/cuda/attention.h"
#include "workers/engine/cuda/attention_internal.cuh"
#include "workers/engine/cuda/pdl.cuh"
#include "workers/engine/cuda/wgmma.cuh"

namespace sqa::cuda {
namespace {

using namespace attn_detail;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTileN = 32;         // keys per warp tile
constexpr int kStages = 3;         // warp-private cp.async stages (two tiles in flight per warp)
constexpr int kMaxSplits = 256;    // v4
constexpr int kMaxSplitsV3 = 128;
constexpr int kRowsPerGroupMax = 32;  // MT = 2 m16 tiles

template <int D>
__host__ __device__ constexpr int DecodeSmemBytes() {
  // Per warp: kStages x (K + V) x [kTileN][D] bf16. Reused at the end for the warp merge
  // (kWarps x 32 rows x D f32 + m, l), which must fit.
  constexpr int kv = kWarps * kStages * 2 * kTileN * D * 2;
  constexpr int merge = kWarps * kRowsPerGroupMax * (D + 2) * 4;
  constexpr int q = kRowsPerGroupMax * D * 2;
  return (kv > merge ? kv : merge) + q;
}

struct DecodeKernelArgs {
  const bf16* q;
  const bf16* k;
  const bf16* v;
  const int32_t* block_tables;
  int64_t table_stride;
  const int32_t* kv_lens;
  int block_size;
  bool tile_in_block;  // block_size % kTileN == 0
  int hq, hkv, ha, g, row_groups;
  int num_splits;
  int64_t split_len;  // the plan's keys per split (multiple of kTileN): v3's split length
  // v4+: a sequence's own keys are spread evenly over min(num_splits, ceil(kv_len / min_split_keys))
  // splits (SplitLen): a shorter sequence of a ragged batch still uses its splits, and a longer
  // one than the plan's length (DecodeParams::plan_kv_len) is still covered.
  int min_split_keys;
  float scale_log2;
  bf16* out;
  float* lse;
  float* part_o;      // [splits][B][Ha][D] when num_splits > 1
  float* part_lse;    // [splits][B][Ha]
  int batch;
  // v5 only.
  unsigned* counters;  // [B][Hkv x row groups] arrivals, zero between launches (fused merge)
  bool fused;          // merge the splits in the split kernel (the grid fits on the GPU at once)
  int fresh;           // DecodeParams::fresh_kv_tokens
  uint64_t* timeline;  // DecodeParams::timeline
  int fuse_min_keys;   // DecodeParams::fuse_min_split_keys
  bool pre_all;        // DecodeParams::early_tiles == every stage (v5 and later, with fresh >= 0)
  int combine_trigger;  // DecodeParams::combine_trigger
  bool combine_sliced;  // DecodeParams::combine_sliced
  uint64_t* combine_timeline;  // DecodeParams::combine_timeline
};

// The time (%globaltimer, ns) or, for kTlSm, the SM: what a timeline slot records.
__device__ __forceinline__ uint64_t StampValue(int slot) {
  uint64_t v;
  if (slot == kTlSm) {
    unsigned sm;
    asm volatile("mov.u32 %0, %%smid;\n" : "=r"(sm));
    v = sm;
  } else {
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(v)::"memory");
  }
  return v;
}

// DecodeParams::timeline: thread 0 records the time (or the SM) in its CTA's slot.
__device__ __forceinline__ void Stamp(const DecodeKernelArgs& a, int slot) {
  if (a.timeline == nullptr || threadIdx.x != 0) return;
  const int64_t cta = blockIdx.x + static_cast<int64_t>(gridDim.x) * (blockIdx.y + static_cast<int64_t>(gridDim.y) * blockIdx.z);
  a.timeline[cta * kDecodeTimelineSlots + slot] = StampValue(slot);
}

// DecodeParams::combine_timeline: the same for a merge-kernel CTA.
__device__ __forceinline__ void CombineStamp(const DecodeKernelArgs& a, int slot) {
  if (a.combine_timeline == nullptr || threadIdx.x != 0) return;
  a.combine_timeline[static_cast<int64_t>(blockIdx.x) * kDecodeTimelineSlots + slot] = StampValue(slot);
}

// Writes element d of (sequence, head) row oidx after the CTA's merge: acc / l, and the LSE from
// the log2-domain max mx, to the split's partial (f32) or, without splits, to out (bf16) and lse.
template <int D>
__device__ __forceinline__ void StoreRow(const DecodeKernelArgs& a, bool partial, int split, int64_t oidx, int d,
                                         float acc, float l, float mx) {
  const float inv = l > 0.f ? 1.f / l : 0.f;
  const float lse = l > 0.f ? (mx + log2f(l)) * kLn2 : -INFINITY;
  if (partial) {
    const int64_t sidx = static_cast<int64_t>(split) * a.batch * a.ha + oidx;
    a.part_o[sidx * D + d] = acc * inv;
    if (d == 0) a.part_lse[sidx] = lse;
  } else {
    a.out[oidx * D + d] = __float2bfloat16(acc * inv);
    if (d == 0 && a.lse != nullptr) a.lse[oidx] = lse;
  }
}

template <int D, int MT>
__global__ void __launch_bounds__(kThreads, 1) DecodeKernelV3(const DecodeKernelArgs a) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  constexpr int kChunks = D / 8;
  constexpr int kRows = 16 * MT;
  bf16* sKV = reinterpret_cast<bf16*>(smem_raw);
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw + DecodeSmemBytes<D>() - kRowsPerGroupMax * D * 2);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int split = blockIdx.x;
  const int kvh = blockIdx.y / a.row_groups;
  const int rg = blockIdx.y % a.row_groups;
  const int b = blockIdx.z;
  const int head0 = kvh * a.g + rg * kRows;                   // first attention head of this CTA
  const int rows = min(kRows, a.g - rg * kRows);               // valid rows (heads)
  const int64_t kv_len = a.kv_lens[b];
  const int64_t ks0 = static_cast<int64_t>(split) * a.split_len;
  const int64_t ks1 = min(kv_len, ks0 + a.split_len);
  const int32_t* table = a.block_tables + b * a.table_stride;

  // Q rows -> shared.
  for (int i = tid; i < kRows * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const bool valid = r < rows;
    const bf16* src = a.q;
    if (valid) src = a.q + (static_cast<int64_t>(b) * a.hq + (head0 + r) % a.hq) * D + c * 8;
    CpAsync16(SmemAddr(sQ + Swz<D>(r, c)), src, valid);
  }
  CpAsyncCommit();

  bf16* wK = sKV + warp * (kStages * 2 * kTileN * D);  // [stage][K|V][kTileN][D]
  // When block_size is a multiple of kTileN a tile sits in one block: one table read per tile
  // and no per-row division (positions fit in int32).
  auto load_tile = [&](int64_t k0_64, int st) {
    const int k0 = static_cast<int>(k0_64);
    bf16* dk = wK + st * 2 * kTileN * D;
    bf16* dv = dk + kTileN * D;
    int64_t tile_base = 0;
    if (a.tile_in_block) {
      const int bi = k0 / a.block_size;
      tile_base = PagedOffset<D>(table[bi], a.block_size, k0 - bi * a.block_size, a.hkv, kvh);
    }
#pragma unroll 4
    for (int i = lane; i < kTileN * kChunks; i += 32) {
      const int r = i / kChunks, c = i % kChunks;
      const int p = k0 + r;
      const bool valid = p < ks1;
      int64_t off = 0;
      if (valid) {
        if (a.tile_in_block) {
          off = tile_base + static_cast<int64_t>(r) * a.hkv * D;
        } else {
          const int bi = p / a.block_size;
          off = PagedOffset<D>(table[bi], a.block_size, p - bi * a.block_size, a.hkv, kvh);
        }
        off += c * 8;
      }
      CpAsync16(SmemAddr(dk + Swz<D>(r, c)), a.k + off, valid);
      CpAsync16(SmemAddr(dv + Swz<D>(r, c)), a.v + off, valid);
    }
  };

  const int64_t n_keys = ks1 > ks0 ? ks1 - ks0 : 0;
  const int n_tiles = static_cast<int>((n_keys + kTileN - 1) / kTileN);
  // Warp w takes tiles w, w + kWarps, ...
  const int my_tiles = n_tiles > warp ? (n_tiles - warp + kWarps - 1) / kWarps : 0;
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < my_tiles) load_tile(ks0 + static_cast<int64_t>(warp + st * kWarps) * kTileN, st);
    CpAsyncCommit();
  }

  float o[MT][D / 8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
  float m_i[MT][2], l_i[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) m_i[mt][0] = m_i[mt][1] = -INFINITY, l_i[mt][0] = l_i[mt][1] = 0.f;

  // Q stays in shared memory (all warps read all rows); its fragments are re-read per tile,
  // which keeps registers free for the accumulators (this kernel is bandwidth-bound).
  CpAsyncWait<kStages - 1>();
  __syncthreads();

  for (int it = 0; it < my_tiles; ++it) {
    const int st = it % kStages;
    const int64_t k0 = ks0 + static_cast<int64_t>(warp + it * kWarps) * kTileN;
    if (it + kStages - 1 < my_tiles) {
      load_tile(k0 + (kStages - 1) * kWarps * kTileN, (it + kStages - 1) % kStages);
    }
    CpAsyncCommit();  // possibly empty: keeps the group count fixed
    CpAsyncWait<kStages - 1>();
    __syncwarp();
    const bf16* tK = wK + st * 2 * kTileN * D;
    const bf16* tV = tK + kTileN * D;

    float s[MT][kTileN / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < kTileN / 8; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t qf[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int r = mt * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        Ldsm4(qf[mt], SmemAddr(sQ + Swz<D>(r, ks * 2 + lane / 16)));
      }
#pragma unroll
      for (int nb2 = 0; nb2 < kTileN / 16; ++nb2) {
        uint32_t bb[4];
        const int r = nb2 * 16 + (lane % 8) + (lane / 16) * 8;
        Ldsm4(bb, SmemAddr(tK + Swz<D>(r, ks * 2 + (lane / 8) % 2)));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Mma(s[mt][2 * nb2], qf[mt], bb[0], bb[1]);
          Mma(s[mt][2 * nb2 + 1], qf[mt], bb[2], bb[3]);
        }
      }
    }
    const bool need_mask = k0 + kTileN > ks1;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int nb = 0; nb < kTileN / 8; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[mt][nb][e] * a.scale_log2;
          if (need_mask && k0 + nb * 8 + (lane % 4) * 2 + (e & 1) >= ks1) x = -INFINITY;
          s[mt][nb][e] = x;
        }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float mx = -INFINITY;
#pragma unroll
        for (int nb = 0; nb < kTileN / 8; ++nb) mx = fmaxf(mx, fmaxf(s[mt][nb][2 * i], s[mt][nb][2 * i + 1]));
        mx = QuadMax(mx);
        const float m_new = fmaxf(m_i[mt][i], mx);
        const float m_use = m_new == -INFINITY ? 0.f : m_new;
        const float alpha = exp2f(m_i[mt][i] - m_use);
        float sum = 0.f;
#pragma unroll
        for (int nb = 0; nb < kTileN / 8; ++nb) {
          const float p0 = exp2f(s[mt][nb][2 * i] - m_use);
          const float p1 = exp2f(s[mt][nb][2 * i + 1] - m_use);
          s[mt][nb][2 * i] = p0;
          s[mt][nb][2 * i + 1] = p1;
          sum += p0 + p1;
        }
        l_i[mt][i] = l_i[mt][i] * alpha + sum;
        m_i[mt][i] = m_new;
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd) {
          o[mt][nd][2 * i] *= alpha;
          o[mt][nd][2 * i + 1] *= alpha;
        }
      }
    }
#pragma unroll
    for (int ks = 0; ks < kTileN / 16; ++ks) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        pa[mt][0] = PackBf16(s[mt][2 * ks][0], s[mt][2 * ks][1]);
        pa[mt][1] = PackBf16(s[mt][2 * ks][2], s[mt][2 * ks][3]);
        pa[mt][2] = PackBf16(s[mt][2 * ks + 1][0], s[mt][2 * ks + 1][1]);
        pa[mt][3] = PackBf16(s[mt][2 * ks + 1][2], s[mt][2 * ks + 1][3]);
      }
#pragma unroll
      for (int nd2 = 0; nd2 < D / 16; ++nd2) {
        uint32_t bb[4];
        const int r = ks * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        Ldsm4T(bb, SmemAddr(tV + Swz<D>(r, nd2 * 2 + lane / 16)));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Mma(o[mt][2 * nd2], pa[mt], bb[0], bb[1]);
          Mma(o[mt][2 * nd2 + 1], pa[mt], bb[2], bb[3]);
        }
      }
    }
    __syncwarp();
  }
  CpAsyncWait<0>();
  __syncthreads();  // every warp is done with its K/V stages: reuse them for the merge

  // Warp partials -> shared: sO [warp][row][D] f32, sM/sL [warp][row].
  float* sO = reinterpret_cast<float*>(smem_raw);
  float* sM = sO + kWarps * kRowsPerGroupMax * D;
  float* sL = sM + kWarps * kRowsPerGroupMax;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = mt * 16 + lane / 4 + i * 8;
      const float l = QuadSum(l_i[mt][i]);
      float* dst = sO + (warp * kRowsPerGroupMax + r) * D + (lane % 4) * 2;
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd) {
        dst[nd * 8] = o[mt][nd][2 * i];
        dst[nd * 8 + 1] = o[mt][nd][2 * i + 1];
      }
      if (lane % 4 == 0) {
        sM[warp * kRowsPerGroupMax + r] = m_i[mt][i];
        sL[warp * kRowsPerGroupMax + r] = l;
      }
    }
  __syncthreads();

  // Combine the warps: thread handles (row, d) pairs.
  const bool partial = a.num_splits > 1;
  for (int i = tid; i < rows * D; i += kThreads) {
    const int r = i / D, d = i % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sM[w * kRowsPerGroupMax + r]);
    const float m_use = mx == -INFINITY ? 0.f : mx;
    float l = 0.f, acc = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = exp2f(sM[w * kRowsPerGroupMax + r] - m_use);
      l += sL[w * kRowsPerGroupMax + r] * f;
      acc += sO[(w * kRowsPerGroupMax + r) * D + d] * f;
    }
    StoreRow<D>(a, partial, split, static_cast<int64_t>(b) * a.ha + head0 + r, d, acc, l, mx);
  }
}

// Merges the splits of each (sequence, head): one warp per (b, h), lanes over D.
template <int D>
__global__ void DecodeCombineKernelV3(const DecodeKernelArgs a) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t total = static_cast<int64_t>(a.batch) * a.ha;
  if (idx >= total) return;
  const int64_t stride = total;
  float mx = -INFINITY;
  for (int s = lane; s < a.num_splits; s += 32) mx = fmaxf(mx, a.part_lse[s * stride + idx]);
#pragma unroll
  for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  float acc[D / 32];
#pragma unroll
  for (int j = 0; j < D / 32; ++j) acc[j] = 0.f;
  float sum = 0.f;
  if (mx != -INFINITY) {
    for (int s = 0; s < a.num_splits; ++s) {
      const float ls = a.part_lse[s * stride + idx];
      if (ls == -INFINITY) continue;
      const float w = __expf(ls - mx);
      sum += w;
      const float* po = a.part_o + (s * stride + idx) * D;
#pragma unroll
      for (int j = 0; j < D / 32; ++j) acc[j] += w * po[lane + 32 * j];
    }
  }
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
#pragma unroll
  for (int j = 0; j < D / 32; ++j) a.out[idx * D + lane + 32 * j] = __float2bfloat16(acc[j] * inv);
  if (lane == 0 && a.lse != nullptr) a.lse[idx] = sum > 0.f ? mx + logf(sum) : -INFINITY;
}

int ChooseSplitsV3(int batch, int hkv, int row_groups, int64_t max_kv_len, int requested) {
  if (requested > 0) return std::min(requested, kMaxSplitsV3);
  const int64_t ctas = static_cast<int64_t>(batch) * hkv * row_groups;
  // One CTA per SM fits (shared memory); fill about two waves without a ragged last one.
  const int64_t want = ctas >= NumSms() ? 1 : std::max<int64_t>(1, 2 * NumSms() / ctas);
  const int64_t by_len = std::max<int64_t>(1, max_kv_len / 512);       // at least 512 keys a split
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, by_len, kMaxSplitsV3})));
}

int RowGroupsV3(int g) { return (g + kRowsPerGroupMax - 1) / kRowsPerGroupMax; }

template <int D, int MT>
absl::Status LaunchDecodeV3(const DecodeKernelArgs& a, cudaStream_t stream) {
  constexpr int smem = DecodeSmemBytes<D>();
  cudaError_t e = cudaFuncSetAttribute(DecodeKernelV3<D, MT>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return CudaStatus(e, "attention decode: cudaFuncSetAttribute");
  dim3 grid(a.num_splits, a.hkv * a.row_groups, a.batch);
  DecodeKernelV3<D, MT><<<grid, kThreads, smem, stream>>>(a);
  if (absl::Status st = LaunchStatus("attention decode"); !st.ok()) return st;
  if (a.num_splits > 1) {
    const int64_t total = static_cast<int64_t>(a.batch) * a.ha;
    const int warps_per_block = 4;
    DecodeCombineKernelV3<D><<<static_cast<unsigned>((total + warps_per_block - 1) / warps_per_block), 32 * warps_per_block,
                             0, stream>>>(a);
    return LaunchStatus("attention decode combine");
  }
  return absl::OkStatus();
}


// Keys per split of one sequence (DecodeKernelArgs::min_split_keys): its kv_len spread over
// min(splits, ceil(kv_len / min_keys)) splits, rounded up to whole tiles. When kv_len is the length
// the plan was made for, this is the plan's split length; a shorter sequence (a ragged batch)
// still uses its splits instead of crowding into the first ones, and a longer one (a graph
// planned for half its bound, DecodeParams::plan_kv_len) is still covered.
// 32-bit unsigned arithmetic (kv_len < 2^31 - 2 tiles, min_keys and splits small): no 64-bit
// division on the way to the first loads.
__device__ __forceinline__ int SplitLen(int kv_len, int splits, int min_keys, int tile) {
  const unsigned len = static_cast<unsigned>(kv_len);
  const unsigned active = max(1u, min(static_cast<unsigned>(splits), (len + min_keys - 1) / min_keys));
  return static_cast<int>(((len + active - 1) / active + tile - 1) / tile * tile);
}

// ---------------------------------------------------------------------------------------------
// v4 (default). Two changes from v3, from its profile (one warp per scheduler, ~3 cycles between
// issued instructions, dependency-bound rather than bandwidth-bound; and a combine kernel that
// walked the splits one dependent load at a time):
//  - more warps per SM: groups of up to 16 heads run 2 CTAs per SM with 16-key tiles; wider
//    groups (17-32 heads) run 8 warps per CTA, two warps per K/V stream, each on 16 of the rows;
//    each warp keeps its Q fragments in registers;
//  - the combine reads all splits of a (sequence, head) at once (4 warps, vector loads) and is
//    launched as a programmatic dependent of the split kernel, so its launch overlaps the tail.
// v5 (DecodeKernelV4<D, RW, 5>) is the same split kernel with three changes:
//  - when the grid fits on the GPU at once and splits hold >= kFuseMinSplitKeys keys, the last
//    CTAs of each (sequence, KV head) to finish merge the splits (MergeSplitsInKernel): no
//    second kernel and no second launch's latency;
//  - with DecodeParams::fresh_kv_tokens >= 0 its first K/V tiles are issued before PdlWait when
//    they end below the fresh keys, so they load while the kernels before it finish; Q follows
//    with plain loads after the wait;
//  - the stream partials in shared memory have rows padded by 8 floats (no bank conflicts in
//    the epilogue's float2 stores).
// v6 (<D, RW, 6>, the default) is v5 with a faster merge tail (measured with DecodeParams::
// timeline: MergeSplitsInKernel's combine of 32 split lanes per column was a serial chain of
// shared loads and exps): each lane's weight is computed once, the column sums then use
// independent loads; a batch of split partials is folded with one max instead of a running one;
// and the epilogue's output loop has a fixed, unrolled trip count.
// v8 (<D, 2, 8>, wide groups only; narrow groups run v6) is v6 with the loop on warpgroup MMA:
// two K/V streams of 64-key tiles, each stream a warpgroup of four warps. The MMA's 64 rows are
// the CTA's 32 heads twice: rows 0-31 (warps 0, 1) take the tile's keys 0-31 and rows 32-63
// (warps 2, 3) its keys 32-63, so S = Q K^T (m64n64) is half used and P V (m64n128, the other
// half's P zero) sums each half's keys into its own rows. Each half is a partial of its own
// (running max and sum), merged with the other three in the epilogue as v6 merges its four
// streams. K/V tiles are SW128 panels (wgmma.cuh) read from shared memory once per stream (v6's
// two warps per stream each read the whole tile with ldmatrix); Q and P are register fragments;
// three stages per stream keep the bytes in flight of v6's four streams of three stages. v8 also
// copies the block-table entries of its split to shared memory before its first loads, so that a
// tile's addresses take a shared load instead of a dependent global one. (The same copy in v6's
// narrow groups made the 1b decode steps 1-1.5% slower: bench/gpu/attention/NOTES.md v23.)
// v10 launches v8's kernels (v6 for narrow groups) with other choices, made in
// LaunchAttentionDecode: wide groups with many long splits are merged by the sliced merge kernel
// (DecodeCombineKernelSliced) instead of in the split kernel, so the split CTAs leave as soon as
// their partial is stored; narrow groups read all three K/V stages before the wait.
namespace v4 {

constexpr int kStreams = 4;  // K/V tile streams per CTA (v4-v6)
constexpr int kStages = 3;   // cp.async stages per stream (two tiles in flight; v4-v6)

template <int D, int RW, int V = 4>
struct Cfg {
  static constexpr bool kWg = V >= 8 && RW == 2;         // v8, wide groups: a warpgroup per stream
  static constexpr int kStreams = kWg ? 2 : v4::kStreams;
  static constexpr int kStages = v4::kStages;
  static constexpr int kWarpsPerStream = kWg ? 4 : RW;
  static constexpr int kTN = kWg ? 64 : RW == 1 ? 16 : 32;  // keys per stream tile
  static constexpr int kParts = kWg ? 2 * kStreams : kStreams;  // partials per row to merge
  static constexpr int kRows = 16 * RW;                  // query heads of one CTA
  static constexpr int kThreads = kStreams * 32 * kWarpsPerStream;
  static constexpr int kChunks = D / 8;                  // 16-byte chunks per K/V row
  static constexpr int kTileElems = kTN * D;             // K (or V) of one tile
  static constexpr int kStreamElems = kStages * 2 * kTileElems;
  static constexpr int kKvBytes = kStreams * kStreamElems * 2;
  // Row stride of the stream partials in shared memory. v5 pads rows by 8 floats: the float2
  // stores of a half-warp (4 rows x 8 columns) then hit 32 different banks instead of 8.
  static constexpr int kOS = V >= 5 ? D + 8 : D;
  static constexpr int kMergeBytes = kParts * kRows * (kOS + 2) * 4;
  static constexpr int kQOffset = kKvBytes > kMergeBytes ? kKvBytes : kMergeBytes;
  // v8's SW128 panels need 1024-byte alignment: the kernel rounds its base up within the slack.
  static constexpr int kAlignSlack = kWg ? 1024 : 0;
  // v8 (wide groups): the block-table entries of the CTA's split, copied to shared memory once (up
  // to kTabMax of them; longer splits read the table from global memory per tile).
  static constexpr int kTabMax = kWg ? 256 : 0;
  static constexpr int kTabOffset = kQOffset + kRows * D * 2;
  static constexpr int kSmem = kTabOffset + kTabMax * 4 + kAlignSlack;
  static constexpr int kMinBlocks = RW == 1 ? 2 : 1;
  static constexpr int kLoaders = 32 * kWarpsPerStream;  // threads filling one stream
  static constexpr int kPerLoader = kTN * kChunks / kLoaders;
  static constexpr int kRowStep = kLoaders / kChunks;
  static_assert(kLoaders % kChunks == 0 && (kTN * kChunks) % kLoaders == 0, "loader mapping");
  static_assert(kMinBlocks * (kSmem + 1024) <= 232448, "shared memory per SM");
};

// Barrier of the W warps that share one stream (one warp: a warp barrier).
template <int W>
__device__ __forceinline__ void StreamSync(int stream) {
  if constexpr (W == 1) {
    __syncwarp();
  } else {
    asm volatile("bar.sync %0, %1;\n" ::"r"(1 + stream), "n"(32 * W) : "memory");
  }
}

// O += P V for one 16-key step of the v8 loop (m64 rows, all D columns).
template <int D>
__device__ __forceinline__ void WgPvStep(float (&o)[D / 8][4], const uint32_t (&pa)[4], uint64_t desc_v) {
  if constexpr (D == 128) {
    attn_detail::WgmmaRS_N128(reinterpret_cast<float (&)[64]>(o), pa, desc_v);
  } else {
    attn_detail::WgmmaRS_N64(reinterpret_cast<float (&)[32]>(o), pa, desc_v);
  }
}

template <int D, int kThreads, int V>
__device__ void MergeSplitsInKernel(const DecodeKernelArgs& a, unsigned char* smem, int b, int head0, int rows);

template <int D, int RW, int V>
__global__ void __launch_bounds__(Cfg<D, RW, V>::kThreads, Cfg<D, RW, V>::kMinBlocks) DecodeKernelV4(const DecodeKernelArgs a) {
  using C = Cfg<D, RW, V>;
  constexpr int kTN = C::kTN;
  constexpr int kStreams = C::kStreams;
  constexpr int kStages = C::kStages;
  constexpr int kWps = C::kWarpsPerStream;
  // Launched as a programmatic dependent (pdl.cuh): Q and the newest K/V come from the kernels
  // before this one. v5 with a.fresh >= 0 issues its first K/V tiles before waiting, when they
  // lie below the fresh positions.
  const bool early = V >= 5 && a.fresh >= 0;
  if constexpr (V >= 5) {
    Stamp(a, kTlEntry);
    Stamp(a, kTlSm);
  }
  if (!early) PdlWait();
  extern __shared__ __align__(128) unsigned char smem_dyn[];
  unsigned char* smem_raw = smem_dyn;
  if constexpr (C::kAlignSlack > 0) {
    smem_raw += (C::kAlignSlack - (SmemAddr(smem_dyn) & (C::kAlignSlack - 1))) & (C::kAlignSlack - 1);
  }
  bf16* sKV = reinterpret_cast<bf16*>(smem_raw);
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw + C::kQOffset);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // v4-v6: stream s has warps s, s + kStreams, ...; v8: warpgroup s (wgmma needs four
  // consecutive warps), whose warp rw holds MMA rows 16 rw .. 16 rw + 15.
  const int stream = C::kWg ? warp / kWps : warp % kStreams;
  const int rw = C::kWg ? warp % kWps : warp / kStreams;
  const int split = blockIdx.x;
  const int kvh = blockIdx.y / a.row_groups;
  const int rg = blockIdx.y % a.row_groups;
  const int b = blockIdx.z;
  const int head0 = kvh * a.g + rg * C::kRows;
  const int rows = min(C::kRows, a.g - rg * C::kRows);
  const int kv_len = a.kv_lens[b];
  const int split_len = SplitLen(kv_len, a.num_splits, a.min_split_keys, kTN);
  const int ks0 = split * split_len;
  // ks0 + split_len can pass 2^31 for the last split of a near-2^31 context: add in 64 bits.
  const int ks1 = static_cast<int>(min(static_cast<int64_t>(kv_len), static_cast<int64_t>(ks0) + split_len));
  const int32_t* table = a.block_tables + b * a.table_stride;
  // v8 (wide groups): this split's table entries in shared memory when they fit (the table is an
  // input of earlier steps, so it may be read before the wait). tab(bi) is entry bi either way.
  int* sTab = reinterpret_cast<int*>(smem_raw + C::kTabOffset);
  const int tab0 = ks1 > ks0 ? ks0 / a.block_size : 0;
  const int tab_n = ks1 > ks0 ? (ks1 - 1) / a.block_size + 1 - tab0 : 0;
  const bool tab_shared = C::kTabMax > 0 && tab_n <= C::kTabMax;
  if constexpr (C::kTabMax > 0) {
    if (tab_shared) {
      for (int i = tid; i < tab_n; i += C::kThreads) sTab[i] = table[tab0 + i];
      __syncthreads();
    }
  }
  auto tab = [&](int bi) -> int32_t {
    if constexpr (C::kTabMax > 0) {
      if (tab_shared) return sTab[bi - tab0];
    }
    return table[bi];
  };

  if constexpr (V < 5) {
    for (int i = tid; i < C::kRows * C::kChunks; i += C::kThreads) {
      const int r = i / C::kChunks, c = i % C::kChunks;
      const bool valid = r < rows;
      const bf16* src = a.q;
      if (valid) src = a.q + (static_cast<int64_t>(b) * a.hq + (head0 + r) % a.hq) * D + c * 8;
      CpAsync16(SmemAddr(sQ + Swz<D>(r, c)), src, valid);
    }
    CpAsyncCommit();
  }

  bf16* wK = sKV + stream * C::kStreamElems;  // [stage][K|V][kTN][D]
  const int li = rw * 32 + lane;              // this thread's place among the stream's loaders
  const int lc = li % C::kChunks;             // its chunk column; rows lr, lr + kRowStep, ...
  const int lr = li / C::kChunks;
  // Element offset of chunk c of key row r in a K or V tile: v8's SW128 panels, else Swz rows.
  auto tile_off = [](int r, int c) -> int {
    if constexpr (C::kWg) {
      return static_cast<int>(attn_detail::Sw128Offset(r, c, kTN) / 2);
    } else {
      return Swz<D>(r, c);
    }
  };
  auto load_tile = [&](int k0, int st) {
    bf16* dk = wK + st * 2 * C::kTileElems;
    bf16* dv = dk + C::kTileElems;
    if (a.tile_in_block && (!C::kWg || a.block_size % kTN == 0) && k0 + kTN <= ks1) {
      // The whole tile lies in one block: kTN rows of D, Hkv * D apart, in K and in V.
      const int bi = k0 / a.block_size;
      const int64_t base = PagedOffset<D>(tab(bi), a.block_size, k0 - bi * a.block_size + lr, a.hkv, kvh) + lc * 8;
      const int64_t step = static_cast<int64_t>(C::kRowStep) * a.hkv * D;
      const bf16* gk = a.k + base;
      const bf16* gv = a.v + base;
#pragma unroll
      for (int k = 0; k < C::kPerLoader; ++k) {
        const int so = tile_off(lr + k * C::kRowStep, lc);
        CpAsync16(SmemAddr(dk + so), gk + k * step, true);
        CpAsync16(SmemAddr(dv + so), gv + k * step, true);
      }
    } else {
#pragma unroll
      for (int k = 0; k < C::kPerLoader; ++k) {
        const int r = lr + k * C::kRowStep;
        const int p = k0 + r;
        const bool valid = p < ks1;
        int64_t off = 0;
        if (valid) {
          const int bi = p / a.block_size;
          off = PagedOffset<D>(tab(bi), a.block_size, p - bi * a.block_size, a.hkv, kvh) + lc * 8;
        }
        const int so = tile_off(r, lc);
        CpAsync16(SmemAddr(dk + so), a.k + off, valid);
        CpAsync16(SmemAddr(dv + so), a.v + off, valid);
      }
    }
  };

  const int n_keys = ks1 > ks0 ? ks1 - ks0 : 0;
  const int n_tiles = (n_keys + kTN - 1) / kTN;
  // Stream s takes tiles s, s + kStreams, ...
  const int my_tiles = n_tiles > stream ? (n_tiles - stream + kStreams - 1) / kStreams : 0;
  // The prologue fills kStages - 1 stages, or (pre_all) every stage; then the loop's first
  // iteration has nothing to issue.
  const bool pre_all = V >= 5 && early && a.pre_all;
  auto load_prologue = [&] {
#pragma unroll
    for (int st = 0; st < kStages; ++st) {
      if (st < kStages - 1 || pre_all) {
        if (st < my_tiles) load_tile(ks0 + (stream + st * kStreams) * kTN, st);
        CpAsyncCommit();
      }
    }
  };
  if constexpr (V >= 5) {
    // The stream's first tiles go out before the wait when they end below the fresh keys.
    const int n_pro = min(pre_all ? kStages : kStages - 1, my_tiles);
    const int pro_end = ks0 + (stream + (n_pro - 1) * kStreams) * kTN + kTN;
    const bool pre = early && (n_pro == 0 || pro_end <= kv_len - a.fresh);
    if (pre) load_prologue();
    if (early) PdlWait();
    Stamp(a, kTlWaited);
    if (!pre) load_prologue();
    // Q with plain loads (it is the predecessor's output, so it cannot join the groups above),
    // while the tiles are in flight.
    for (int i = tid; i < C::kRows * C::kChunks; i += C::kThreads) {
      const int r = i / C::kChunks, c = i % C::kChunks;
      uint4 x = make_uint4(0u, 0u, 0u, 0u);
      if (r < rows) {
        x = *reinterpret_cast<const uint4*>(a.q + (static_cast<int64_t>(b) * a.hq + (head0 + r) % a.hq) * D + c * 8);
      }
      *reinterpret_cast<uint4*>(sQ + Swz<D>(r, c)) = x;
    }
    // The next kernel may launch; it waits for this grid to finish before it reads what this
    // grid writes.
    PdlTrigger();
    __syncthreads();  // Q is in shared memory
  } else {
    load_prologue();
    // Let the combine kernel (a programmatic dependent) launch; it waits for this grid to finish.
    PdlTrigger();
    CpAsyncWait<kStages - 1>();  // Q has landed
    __syncthreads();
  }
  uint32_t qf[D / 16][4];
  // The heads of this warp's 16 rows: v8's warps 2 and 3 repeat those of warps 0 and 1.
  const int hw = C::kWg ? rw % 2 : rw;
  // v8: the half of each 64-key tile this warp's rows take, and its partial's index.
  const int half = C::kWg ? rw / 2 : 0;
  const int part = C::kWg ? stream * 2 + half : stream;
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    const int r = hw * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
    Ldsm4(qf[ks], SmemAddr(sQ + Swz<D>(r, ks * 2 + lane / 16)));
  }

  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_i[2] = {-INFINITY, -INFINITY}, l_i[2] = {0.f, 0.f};

  for (int it = 0; it < my_tiles; ++it) {
    // This thread's part of tile `it` has landed (with pre_all, tile kStages - 1's group was
    // committed in the prologue and may still be pending at it = 0).
    if (pre_all && it == 0) {
      CpAsyncWait<kStages - 1>();
    } else {
      CpAsyncWait<kStages - 2>();
    }
    if constexpr (C::kWg) attn_detail::FenceProxyAsync();  // ... and is visible to wgmma
    StreamSync<kWps>(stream);    // ... everyone's, and the stage of tile it - 1 is free
    if constexpr (V >= 5) {
      if (it == 0) Stamp(a, kTlFirstTile);
    }
    if (!pre_all || it > 0) {
      if (it + kStages - 1 < my_tiles) {
        load_tile(ks0 + (stream + (it + kStages - 1) * kStreams) * kTN, (it + kStages - 1) % kStages);
      }
      CpAsyncCommit();  // possibly empty: keeps the group count fixed
    }
    const int k0 = ks0 + (stream + it * kStreams) * kTN;
    const bf16* tK = wK + (it % kStages) * 2 * C::kTileElems;
    const bf16* tV = tK + C::kTileElems;

    float s[kTN / 8][4];
#pragma unroll
    for (int i = 0; i < kTN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
    if constexpr (C::kWg) {
      // S (64 x 64) = Q K^T: K-major K panels of kTN rows, 32 bytes per 16-column step.
      float (&s32)[32] = reinterpret_cast<float (&)[32]>(s);
      const uint32_t kb = SmemAddr(tK);
      attn_detail::WgmmaFence();
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        const uint32_t addr = kb + (ks / 4) * (kTN * 128) + (ks % 4) * 32;
        attn_detail::WgmmaRS_KB_N64(s32, qf[ks], attn_detail::MakeSmemDesc(addr, 16, 1024), ks > 0 ? 1 : 0);
      }
      attn_detail::WgmmaCommit();
      attn_detail::WgmmaWait<0>();
      attn_detail::FenceRegs(s32);
      attn_detail::FenceRegs(qf);
    } else {
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
#pragma unroll
        for (int nb2 = 0; nb2 < kTN / 16; ++nb2) {
          uint32_t bb[4];
          const int r = nb2 * 16 + (lane % 8) + (lane / 16) * 8;
          Ldsm4(bb, SmemAddr(tK + Swz<D>(r, ks * 2 + (lane / 8) % 2)));
          Mma(s[2 * nb2], qf[ks], bb[0], bb[1]);
          Mma(s[2 * nb2 + 1], qf[ks], bb[2], bb[3]);
        }
      }
    }
    const bool need_mask = k0 + kTN > ks1;
    float alpha[2];
    // The online softmax over the score blocks nb0 .. nb0 + kNb - 1 of this warp's rows (v8: its
    // half of the tile; the other half is never exponentiated and enters P V as zeros).
    constexpr int kNb = C::kWg ? kTN / 16 : kTN / 8;
    auto softmax = [&](auto nb0_c) {
      constexpr int nb0 = decltype(nb0_c)::value;
#pragma unroll
      for (int nb = nb0; nb < nb0 + kNb; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[nb][e] * a.scale_log2;
          if (need_mask && k0 + nb * 8 + (lane % 4) * 2 + (e & 1) >= ks1) x = -INFINITY;
          s[nb][e] = x;
        }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float mx = -INFINITY;
#pragma unroll
        for (int nb = nb0; nb < nb0 + kNb; ++nb) mx = fmaxf(mx, fmaxf(s[nb][2 * i], s[nb][2 * i + 1]));
        mx = QuadMax(mx);
        const float m_new = fmaxf(m_i[i], mx);
        const float m_use = m_new == -INFINITY ? 0.f : m_new;
        alpha[i] = Exp2(m_i[i] - m_use);
        float sum = 0.f;
#pragma unroll
        for (int nb = nb0; nb < nb0 + kNb; ++nb) {
          const float p0 = Exp2(s[nb][2 * i] - m_use);
          const float p1 = Exp2(s[nb][2 * i + 1] - m_use);
          s[nb][2 * i] = p0;
          s[nb][2 * i + 1] = p1;
          sum += p0 + p1;
        }
        l_i[i] = l_i[i] * alpha[i] + sum;
        m_i[i] = m_new;
      }
    };
    if constexpr (C::kWg) {
      if (half == 1) {
        softmax(std::integral_constant<int, kNb>{});
      } else {
        softmax(std::integral_constant<int, 0>{});
      }
    } else {
      softmax(std::integral_constant<int, 0>{});
    }
    // Once the running maxima settle, alpha is exactly 1: skip the rescale (warp-uniform).
    if (!__all_sync(0xffffffffu, alpha[0] == 1.f && alpha[1] == 1.f)) {
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd) {
        o[nd][0] *= alpha[0];
        o[nd][1] *= alpha[0];
        o[nd][2] *= alpha[1];
        o[nd][3] *= alpha[1];
      }
    }
    if constexpr (C::kWg) {
      // O += P V: V panels read MN-major, 16 keys (2 KB of a panel) per step; P is zero on the
      // other half's keys.
      uint32_t pa[kTN / 16][4];
#pragma unroll
      for (int ks = 0; ks < kTN / 16; ++ks) {
        const bool mine = ks / (kTN / 32) == half;
        pa[ks][0] = mine ? PackBf16(s[2 * ks][0], s[2 * ks][1]) : 0u;
        pa[ks][1] = mine ? PackBf16(s[2 * ks][2], s[2 * ks][3]) : 0u;
        pa[ks][2] = mine ? PackBf16(s[2 * ks + 1][0], s[2 * ks + 1][1]) : 0u;
        pa[ks][3] = mine ? PackBf16(s[2 * ks + 1][2], s[2 * ks + 1][3]) : 0u;
      }
      const uint32_t vb = SmemAddr(tV);
      attn_detail::WgmmaFence();
#pragma unroll
      for (int ks = 0; ks < kTN / 16; ++ks) {
        WgPvStep<D>(o, pa[ks], attn_detail::MakeSmemDesc(vb + ks * 16 * 128, kTN * 128, 1024));
      }
      attn_detail::WgmmaCommit();
      attn_detail::WgmmaWait<0>();
      attn_detail::FenceRegs(reinterpret_cast<float (&)[D / 2]>(o));
      attn_detail::FenceRegs(pa);
      continue;
    }
#pragma unroll
    for (int ks = 0; ks < kTN / 16; ++ks) {
      uint32_t pa[4];
      pa[0] = PackBf16(s[2 * ks][0], s[2 * ks][1]);
      pa[1] = PackBf16(s[2 * ks][2], s[2 * ks][3]);
      pa[2] = PackBf16(s[2 * ks + 1][0], s[2 * ks + 1][1]);
      pa[3] = PackBf16(s[2 * ks + 1][2], s[2 * ks + 1][3]);
#pragma unroll
      for (int nd2 = 0; nd2 < D / 16; ++nd2) {
        uint32_t bb[4];
        const int r = ks * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        Ldsm4T(bb, SmemAddr(tV + Swz<D>(r, nd2 * 2 + lane / 16)));
        Mma(o[2 * nd2], pa, bb[0], bb[1]);
        Mma(o[2 * nd2 + 1], pa, bb[2], bb[3]);
      }
    }
  }
  CpAsyncWait<0>();
  __syncthreads();  // all streams are done with their stages: reuse them for the merge
  if constexpr (V >= 5) Stamp(a, kTlLoopEnd);

  // Stream partials -> shared: sO [part][row][D] f32, sM/sL [part][row] (a part is a stream, or
  // v8's half of one).
  float* sO = reinterpret_cast<float*>(smem_raw);
  float* sM = sO + C::kParts * C::kRows * C::kOS;
  float* sL = sM + C::kParts * C::kRows;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = hw * 16 + lane / 4 + i * 8;
    const float l = QuadSum(l_i[i]);
    float* dst = sO + (part * C::kRows + r) * C::kOS + (lane % 4) * 2;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) *reinterpret_cast<float2*>(dst + nd * 8) = make_float2(o[nd][2 * i], o[nd][2 * i + 1]);
    if (lane % 4 == 0) {
      sM[part * C::kRows + r] = m_i[i];
      sL[part * C::kRows + r] = l;
    }
  }
  __syncthreads();

  // One thread per row: the streams' weights exp2(m_w - max) / l, written over sM, and the row's
  // LSE. The element loop below is then four FMAs per output column.
  const bool partial = a.num_splits > 1;
  const int64_t split_base = static_cast<int64_t>(split) * a.batch * a.ha;
  if (tid < rows) {
    const int r = tid;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < C::kParts; ++w) mx = fmaxf(mx, sM[w * C::kRows + r]);
    const float m_use = mx == -INFINITY ? 0.f : mx;
    float f[C::kParts];
    float l = 0.f;
#pragma unroll
    for (int w = 0; w < C::kParts; ++w) {
      f[w] = Exp2(sM[w * C::kRows + r] - m_use);
      l += sL[w * C::kRows + r] * f[w];
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int w = 0; w < C::kParts; ++w) sM[w * C::kRows + r] = f[w] * inv;
    const float lse = l > 0.f ? (mx + log2f(l)) * kLn2 : -INFINITY;
    const int64_t oidx = static_cast<int64_t>(b) * a.ha + head0 + r;
    if (partial) {
      a.part_lse[split_base + oidx] = lse;
    } else if (a.lse != nullptr) {
      a.lse[oidx] = lse;
    }
  }
  __syncthreads();
  constexpr int kVec = 4;  // output columns per thread and step (float4 partials, 8-byte bf16 stores)
  const bool out_vec = (reinterpret_cast<uintptr_t>(a.out) & 7) == 0;
  auto out_step = [&](int i) {
    const int r = i / (D / kVec), d = (i % (D / kVec)) * kVec;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < C::kParts; ++w) {
      const float f = sM[w * C::kRows + r];
      const float4 x = *reinterpret_cast<const float4*>(sO + (w * C::kRows + r) * C::kOS + d);
      acc.x += f * x.x;
      acc.y += f * x.y;
      acc.z += f * x.z;
      acc.w += f * x.w;
    }
    const int64_t oidx = static_cast<int64_t>(b) * a.ha + head0 + r;
    if (partial) {
      *reinterpret_cast<float4*>(a.part_o + (split_base + oidx) * D + d) = acc;
    } else if (out_vec) {
      uint2 packed;
      packed.x = PackBf16(acc.x, acc.y);
      packed.y = PackBf16(acc.z, acc.w);
      *reinterpret_cast<uint2*>(a.out + oidx * D + d) = packed;
    } else {
      bf16* dst = a.out + oidx * D + d;
      dst[0] = __float2bfloat16(acc.x);
      dst[1] = __float2bfloat16(acc.y);
      dst[2] = __float2bfloat16(acc.z);
      dst[3] = __float2bfloat16(acc.w);
    }
  };
  if constexpr (V >= 6) {
    // A fixed trip count, unrolled: the shared loads of every step go out together.
    constexpr int kSteps = (C::kRows * (D / kVec) + C::kThreads - 1) / C::kThreads;
#pragma unroll
    for (int k = 0; k < kSteps; ++k) {
      const int i = tid + k * C::kThreads;
      if (i < rows * (D / kVec)) out_step(i);
    }
  } else {
    for (int i = tid; i < rows * (D / kVec); i += C::kThreads) out_step(i);
  }
  if constexpr (V >= 5) {
    Stamp(a, kTlStored);  // thread 0's stores; the merge below starts with a barrier
    if (a.fused) MergeSplitsInKernel<D, C::kThreads, V>(a, smem_raw, b, head0, rows);
    Stamp(a, kTlExit);
  }
}

__device__ __forceinline__ unsigned LoadAcquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// v5's merge of the splits, run by every thread of a split CTA after its partial is written.
// The CTAs of one (sequence, KV head, row group) take tickets in the order they finish; the last
// M = min(splits, rows x D / 32) of them each wait for the rest and then merge the 32-column
// slices u, u + M, ... (unit = row x D / 32 + slice) with u = splits - 1 - ticket. Waiting is
// safe because the launcher uses this path only when the whole grid fits on the GPU at once:
// the CTAs still to arrive are running or have a free slot. The last merger to finish resets
// the counter to zero for the next launch.
// A pass merges up to kLanes of the merger's units at once: 8 threads (one float4 each) per
// unit and split lane, the kLanes / units split lanes of a unit each keeping an online (max,
// sum, o) over their splits, combined in a fixed order (the result does not depend on timing).
template <int D, int kThreads, int V>
__device__ void MergeSplitsInKernel(const DecodeKernelArgs& a, unsigned char* smem, int b, int head0, int rows) {
  constexpr int kSlices = D / 32;
  constexpr int kLanes = kThreads / 8;          // (unit, split lane) pairs of one pass
  constexpr int kBatch = 8;                     // splits a thread loads before using any
  float* sRed = reinterpret_cast<float*>(smem);  // [kLanes][32]: the lanes' o sums
  float* sMax = sRed + kLanes * 32;              // [kLanes]: the lanes' maxima
  float* sSum = sMax + kLanes;                   // [kLanes]: the lanes' weight sums
  float* sW = sSum + kLanes;                     // v6 [kLanes]: each lane's weight in its unit
  float* sUnitMax = sW + kLanes;                 // v6 [kLanes]: each unit's max (one per unit)
  unsigned* sTicket = reinterpret_cast<unsigned*>(sUnitMax + kLanes);
  const int tid = threadIdx.x;
  const int S = a.num_splits;
  unsigned* cnt = a.counters + static_cast<int64_t>(b) * gridDim.y + blockIdx.y;
  __syncthreads();  // this CTA's partial is stored; the stream partials in shared memory are read
  if (tid == 0) {
    __threadfence();
    *sTicket = atomicAdd(cnt, 1u);
  }
  __syncthreads();
  const int ticket = static_cast<int>(*sTicket);
  const int units = rows * kSlices;
  const int M = min(S, units);
  if (ticket < S - M) return;
  if (tid == 0) {
    while (LoadAcquire(cnt) < static_cast<unsigned>(S)) __nanosleep(32);
  }
  Stamp(a, kTlMerge);
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(a.batch) * a.ha;
  const int first = S - 1 - ticket;
  const int mine = (units - first + M - 1) / M;  // units first, first + M, ...
  const int chunk = tid % 8, lane8 = tid / 8;
  // Column c of this merger's k-th unit: the weighted sum over the splits (num / den) and, from
  // column 0 of a row, the row's LSE (mx: the max of the split LSEs it was weighted against).
  auto store = [&](int k, int c, float num, float den, float mx) {
    const int u = first + k * M;
    const int64_t oidx = static_cast<int64_t>(b) * a.ha + head0 + u / kSlices;
    const int c0 = (u % kSlices) * 32;
    a.out[oidx * D + c0 + c] = __float2bfloat16(den > 0.f ? num / den : 0.f);
    if (c == 0 && c0 == 0 && a.lse != nullptr) a.lse[oidx] = den > 0.f ? mx + logf(den) : -INFINITY;
  };
  for (int k0 = 0; k0 < mine; k0 += kLanes) {
    const int n = min(kLanes, mine - k0);  // units of this pass
    const int P = kLanes / n;              // split lanes per unit
    const int ul = lane8 / P, ps = lane8 % P;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    float m = -INFINITY, wsum = 0.f;
    if (ul < n) {
      const int u = first + (k0 + ul) * M;
      const int64_t oidx = static_cast<int64_t>(b) * a.ha + head0 + u / kSlices;
      const int col = (u % kSlices) * 32 + chunk * 4;
      for (int s0 = ps; s0 < S; s0 += kBatch * P) {
        float4 x[kBatch];
        float ls[kBatch];
#pragma unroll
        for (int j = 0; j < kBatch; ++j) {
          const int s = s0 + j * P;
          x[j] = make_float4(0.f, 0.f, 0.f, 0.f);
          ls[j] = -INFINITY;
          if (s < S) {
            // L2 reads: the partials come from other SMs.
            x[j] = __ldcg(reinterpret_cast<const float4*>(a.part_o + (s * stride + oidx) * D + col));
            ls[j] = __ldcg(a.part_lse + s * stride + oidx);
          }
        }
        if constexpr (V >= 6) {
          // The batch's max first, then every weight at once (no chain through m).
          float bm = m;
#pragma unroll
          for (int j = 0; j < kBatch; ++j) bm = fmaxf(bm, ls[j]);
          if (bm != -INFINITY) {
            const float sc = __expf(m - bm);  // 0 while m is -inf
            acc.x *= sc;
            acc.y *= sc;
            acc.z *= sc;
            acc.w *= sc;
            wsum *= sc;
#pragma unroll
            for (int j = 0; j < kBatch; ++j) {
              const float w = __expf(ls[j] - bm);  // 0 for a split without keys (its o is 0)
              acc.x += w * x[j].x;
              acc.y += w * x[j].y;
              acc.z += w * x[j].z;
              acc.w += w * x[j].w;
              wsum += w;
            }
            m = bm;
          }
        } else {
#pragma unroll
          for (int j = 0; j < kBatch; ++j) {
            if (ls[j] == -INFINITY) continue;  // a split without keys (its o is 0)
            const float m_new = fmaxf(m, ls[j]);
            const float sc = __expf(m - m_new);  // 0 while m is -inf
            const float w = __expf(ls[j] - m_new);
            acc.x = acc.x * sc + w * x[j].x;
            acc.y = acc.y * sc + w * x[j].y;
            acc.z = acc.z * sc + w * x[j].z;
            acc.w = acc.w * sc + w * x[j].w;
            wsum = wsum * sc + w;
            m = m_new;
          }
        }
      }
    }
    if (k0 == 0) Stamp(a, kTlMergeLoaded);
    *reinterpret_cast<float4*>(sRed + lane8 * 32 + chunk * 4) = acc;
    if (chunk == 0) {
      sMax[lane8] = m;
      sSum[lane8] = wsum;
    }
    __syncthreads();
    if constexpr (V >= 6) {
      // Each lane's weight in its unit, one thread per lane, then the column sums over the
      // lanes with every shared load independent (unrolled to kLanes, predicated to P).
      if (tid < kLanes) {
        const int ul2 = tid / P;
        float mx = -INFINITY;
#pragma unroll
        for (int p = 0; p < kLanes; ++p) {
          if (p < P) mx = fmaxf(mx, sMax[ul2 * P + p]);
        }
        sW[tid] = mx == -INFINITY ? 0.f : __expf(sMax[tid] - mx);  // 0 for a lane without keys
        if (tid % P == 0) sUnitMax[ul2] = mx;
      }
      __syncthreads();
      for (int o = tid; o < n * 32; o += kThreads) {
        const int ul2 = o / 32, c = o % 32;
        float num = 0.f, den = 0.f;
#pragma unroll
        for (int p = 0; p < kLanes; ++p) {
          if (p < P) {
            const int l = ul2 * P + p;
            const float f = sW[l];
            num += f * sRed[l * 32 + c];
            den += f * sSum[l];
          }
        }
        store(k0 + ul2, c, num, den, sUnitMax[ul2]);
      }
      if (k0 == 0) Stamp(a, kTlMergeCombined);
      __syncthreads();  // the shared arrays are reused by the next pass
      continue;
    }
    for (int o = tid; o < n * 32; o += kThreads) {
      const int ul2 = o / 32, c = o % 32;
      float mx = -INFINITY;
      for (int p = 0; p < P; ++p) mx = fmaxf(mx, sMax[ul2 * P + p]);
      float num = 0.f, den = 0.f;
      if (mx != -INFINITY) {
        for (int p = 0; p < P; ++p) {
          const int l = ul2 * P + p;
          const float f = __expf(sMax[l] - mx);  // 0 for a lane without keys
          num += f * sRed[l * 32 + c];
          den += f * sSum[l];
        }
      }
      store(k0 + ul2, c, num, den, mx);
    }
    if (k0 == 0) Stamp(a, kTlMergeCombined);
    __syncthreads();  // the shared arrays are reused by the next pass
  }
  if (tid == 0) {
    // Every merger has passed its wait (all S arrived) before any of these increments.
    const unsigned old = atomicAdd(cnt, 1u);
    if (old == static_cast<unsigned>(S + M - 1)) atomicExch(cnt, 0u);
  }
}

// Merges the splits of one (sequence, head) per CTA: warp 0 turns the split LSEs into weights,
// then 8 warps each sum an eighth of the splits with vector loads (all independent), and the
// eight sums are added in shared memory.
constexpr int kCombineThreads = 256;

template <int D>
__global__ void __launch_bounds__(kCombineThreads) DecodeCombineKernelV4(const DecodeKernelArgs a) {
  // The next kernel of the step (the output projection, or the next decode launch) may launch
  // and start reading its weights or its early K/V (DecodeParams::combine_trigger): once the
  // split kernel has finished, or as soon as every CTA of this grid is resident (while the split
  // kernel's last CTAs still run), or once this CTA has its partials.
  CombineStamp(a, kTlEntry);
  CombineStamp(a, kTlSm);
  if (a.combine_trigger == 1) PdlTrigger();
  PdlWait();  // the split kernel has finished
  if (a.combine_trigger == 0) PdlTrigger();
  CombineStamp(a, kTlWaited);
  constexpr int kPer = D / 32;  // output columns per lane
  __shared__ float sW[kMaxSplits];
  __shared__ float sAcc[kCombineThreads / 32][D];
  __shared__ float sStat[2];
  const int64_t idx = blockIdx.x;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t stride = static_cast<int64_t>(a.batch) * a.ha;
  const int S = a.num_splits;
  if (warp == 0) {
    float v[kMaxSplits / 32];
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < kMaxSplits / 32; ++j) {
      const int s = lane + 32 * j;
      v[j] = s < S ? a.part_lse[s * stride + idx] : -INFINITY;
      mx = fmaxf(mx, v[j]);
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < kMaxSplits / 32; ++j) {
      const float w = (v[j] == -INFINITY) ? 0.f : __expf(v[j] - mx);
      if (lane + 32 * j < S) sW[lane + 32 * j] = w;
      sum += w;
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0) {
      sStat[0] = mx;
      sStat[1] = sum;
    }
  }
  __syncthreads();
  float acc[kPer];
#pragma unroll
  for (int j = 0; j < kPer; ++j) acc[j] = 0.f;
#pragma unroll 8
  for (int s = warp; s < S; s += kCombineThreads / 32) {
    const float w = sW[s];  // 0 for a split without keys (its partial o is 0)
    const float* po = a.part_o + (s * stride + idx) * D + lane * kPer;
    if constexpr (kPer == 4) {
      const float4 x = *reinterpret_cast<const float4*>(po);
      acc[0] += w * x.x;
      acc[1] += w * x.y;
      acc[2] += w * x.z;
      acc[3] += w * x.w;
    } else {
      const float2 x = *reinterpret_cast<const float2*>(po);
      acc[0] += w * x.x;
      acc[1] += w * x.y;
    }
  }
#pragma unroll
  for (int j = 0; j < kPer; ++j) sAcc[warp][lane * kPer + j] = acc[j];
  __syncthreads();
  if (a.combine_trigger == 2) PdlTrigger();
  CombineStamp(a, kTlMergeLoaded);
  const float sum = sStat[1];
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  for (int d = tid; d < D; d += kCombineThreads) {
    float t = 0.f;
#pragma unroll
    for (int w = 0; w < kCombineThreads / 32; ++w) t += sAcc[w][d];
    a.out[idx * D + d] = __float2bfloat16(t * inv);
  }
  if (tid == 0 && a.lse != nullptr) a.lse[idx] = sum > 0.f ? sStat[0] + logf(sum) : -INFINITY;
  CombineStamp(a, kTlExit);
}

// The sliced merge kernel (DecodeParams::combine_sliced): a CTA per (sequence, head, 32-column
// slice), every load issued at once. Its 256 threads are 32 split lanes x 8 column lanes (a float4
// each); split lane sl takes splits sl, sl + 32, ... and keeps its own max and sums, so the
// partials and their LSEs come in one round trip; the 32 split lanes are then combined in shared
// memory (the largest max first, then the rescaled sums), in a fixed order.
constexpr int kSliceCols = 32;
// v10's wide groups use the sliced kernel, instead of the merge in the split kernel, from this
// many splits (at 16 splits, MQA batch 8, the sliced kernel was 9% slower than the per-head one;
// at 132, MQA 128k batch 1, 5% faster than the in-kernel merge: bench/gpu/attention/NOTES.md v24).
constexpr int kSlicedMinSplits = 32;
// ... and from this many keys a split (at 512, MQA 32k batch 1, it was 3% slower than the
// in-kernel merge).
constexpr int64_t kSlicedMinSplitKeys = 1024;
constexpr int kSliceLanes = kCombineThreads / (kSliceCols / 4);  // 32 split lanes

template <int D>
__global__ void __launch_bounds__(kCombineThreads) DecodeCombineKernelSliced(const DecodeKernelArgs a) {
  CombineStamp(a, kTlEntry);
  CombineStamp(a, kTlSm);
  if (a.combine_trigger == 1) PdlTrigger();
  PdlWait();  // the split kernel has finished
  if (a.combine_trigger == 0) PdlTrigger();
  CombineStamp(a, kTlWaited);
  constexpr int kSlices = D / kSliceCols;
  constexpr int kPerLane = kMaxSplits / kSliceLanes;
  __shared__ float sMax[kSliceLanes];
  __shared__ float sSum[kSliceLanes];
  __shared__ float4 sAcc[kSliceLanes][kSliceCols / 4];
  const int64_t idx = blockIdx.x / kSlices;  // (sequence, head)
  const int slice = blockIdx.x % kSlices;
  const int tid = threadIdx.x;
  const int sl = tid / (kSliceCols / 4), cl = tid % (kSliceCols / 4);
  const int64_t stride = static_cast<int64_t>(a.batch) * a.ha;
  const int S = a.num_splits;
  float lse[kPerLane];
  float4 x[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int s = sl + kSliceLanes * j;
    lse[j] = -INFINITY;
    x[j] = make_float4(0.f, 0.f, 0.f, 0.f);
    if (s < S) {
      lse[j] = a.part_lse[s * stride + idx];
      x[j] = *reinterpret_cast<const float4*>(a.part_o + (s * stride + idx) * D + slice * kSliceCols + cl * 4);
    }
  }
  float m = -INFINITY;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) m = fmaxf(m, lse[j]);
  float sum = 0.f;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const float w = lse[j] == -INFINITY ? 0.f : __expf(lse[j] - m);  // 0 for a split without keys
    sum += w;
    acc.x += w * x[j].x;
    acc.y += w * x[j].y;
    acc.z += w * x[j].z;
    acc.w += w * x[j].w;
  }
  if (cl == 0) sMax[sl] = m;
  __syncthreads();  // every thread's partials have landed
  if (a.combine_trigger == 2) PdlTrigger();
  float mx = -INFINITY;
#pragma unroll
  for (int i = 0; i < kSliceLanes; ++i) mx = fmaxf(mx, sMax[i]);
  const float f = m == -INFINITY ? 0.f : __expf(m - mx);
  sAcc[sl][cl] = make_float4(f * acc.x, f * acc.y, f * acc.z, f * acc.w);
  if (cl == 0) sSum[sl] = f * sum;
  __syncthreads();
  CombineStamp(a, kTlMergeLoaded);
  if (tid < kSliceCols) {
    float t = 0.f, den = 0.f;
#pragma unroll
    for (int i = 0; i < kSliceLanes; ++i) {
      t += reinterpret_cast<const float*>(&sAcc[i][0])[tid];
      den += sSum[i];
    }
    const float inv = den > 0.f ? 1.f / den : 0.f;
    a.out[idx * D + slice * kSliceCols + tid] = __float2bfloat16(t * inv);
    if (tid == 0 && slice == 0 && a.lse != nullptr) a.lse[idx] = den > 0.f ? mx + logf(den) : -INFINITY;
  }
  CombineStamp(a, kTlExit);
}

// Splits for `ctas0` CTAs without a split on `slots` resident CTAs: the count that fills the
// waves best (up to three waves; an extra wave must fill 10% better to be worth its CTAs' fixed
// cost), each split >= min_keys keys.
constexpr double kWavePenalty = 0.1;
int ChooseSplits(int64_t ctas0, int slots, int64_t max_kv_len, int min_keys) {
  if (ctas0 <= 0 || ctas0 >= slots) return 1;
  const int64_t max_s = std::max<int64_t>(1, std::min<int64_t>(kMaxSplits, max_kv_len / min_keys));
  int best = 1;
  double best_score = -1.0;
  for (int64_t s = 1; s <= max_s; ++s) {
    const int64_t ctas = ctas0 * s;
    const int64_t waves = (ctas + slots - 1) / slots;
    if (waves > 3) break;
    const double score = static_cast<double>(ctas) / static_cast<double>(waves * slots) - kWavePenalty * static_cast<double>(waves - 1);
    if (score > best_score + 1e-9) {
      best_score = score;
      best = static_cast<int>(s);
    }
  }
  return best;
}

// v5 merges in the split kernel only when each split has at least this many keys.
constexpr int64_t kFuseMinSplitKeys = 512;

// CTAs of the split kernel that can be resident at once on the current GPU (queried once per
// device; 0, which turns the in-kernel merge off, if a query fails). Per device, not per
// process: a grid that fits on one GPU may not fit on a smaller one, and waiting inside a grid
// that does not fit would never end.
template <int D, int RW, int V>
int ResidentCtas() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];  // 0 = not queried yet, else count + 1
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) {
    cudaGetLastError();
    return 0;
  }
  if (const int c = cache[dev].load(std::memory_order_relaxed); c > 0) return c - 1;
  int sms = 0, per_sm = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, DecodeKernelV4<D, RW, V>, Cfg<D, RW, V>::kThreads,
                                                    Cfg<D, RW, V>::kSmem) != cudaSuccess) {
    cudaGetLastError();
    sms = per_sm = 0;
  }
  const int n = std::max(0, sms) * std::max(0, per_sm);
  cache[dev].store(n + 1, std::memory_order_relaxed);
  return n;
}

template <int D, int RW, int V>
absl::Status Launch(DecodeKernelArgs a, cudaStream_t stream) {
  using C = Cfg<D, RW, V>;
  cudaError_t e = cudaFuncSetAttribute(DecodeKernelV4<D, RW, V>, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem);
  if (e != cudaSuccess) return CudaStatus(e, "attention decode: cudaFuncSetAttribute");
  dim3 grid(a.num_splits, a.hkv * a.row_groups, a.batch);
  if constexpr (V >= 5) {
    // The in-kernel merge waits for CTAs of its own grid, so the grid must fit at once.
    const int64_t ctas = static_cast<int64_t>(grid.x) * grid.y * grid.z;
    const int64_t groups = static_cast<int64_t>(grid.y) * grid.z;
    // With few keys per split, the merge kernel (launched while the split kernel runs, and
    // letting the next kernel start sooner) costs less than holding the split CTAs for the merge:
    // at 64 keys a split (MHA, 1k context, batch 1) the step was 0.10 ms slower fused.
    const int64_t min_keys = a.fuse_min_keys > 0 ? a.fuse_min_keys : kFuseMinSplitKeys;
    a.fused = a.num_splits > 1 && a.counters != nullptr && a.split_len >= min_keys &&
              ctas <= ResidentCtas<D, RW, V>() &&
              groups * static_cast<int64_t>(sizeof(unsigned)) <= static_cast<int64_t>(kDecodeCounterBytes);
  } else {
    a.fused = false;
  }
  e = LaunchPdl(DecodeKernelV4<D, RW, V>, grid, dim3(C::kThreads), C::kSmem, stream, a);
  if (e != cudaSuccess) return CudaStatus(e, "attention decode: cudaLaunchKernelEx");
  if (absl::Status st = LaunchStatus("attention decode"); !st.ok()) return st;
  if (a.num_splits <= 1 || a.fused) return absl::OkStatus();
  const int64_t rows = static_cast<int64_t>(a.batch) * a.ha;
  if (a.combine_sliced) {
    e = LaunchPdl(DecodeCombineKernelSliced<D>, dim3(static_cast<unsigned>(rows * (D / kSliceCols))),
                  dim3(kCombineThreads), 0, stream, a);
  } else {
    e = LaunchPdl(DecodeCombineKernelV4<D>, dim3(static_cast<unsigned>(rows)), dim3(kCombineThreads), 0, stream, a);
  }
  if (e != cudaSuccess) return CudaStatus(e, "attention decode combine: cudaLaunchKernelEx");
  return LaunchStatus("attention decode combine");
}

// Launch<D, RW, V> for the runtime version, head_dim and width, from version V0 up.
template <int V0>
absl::Status LaunchVersion(int ver, int head_dim, bool wide, const DecodeKernelArgs& a, cudaStream_t stream) {
  if (ver == 8) {  // v8 for wide groups, v6 for narrow ones
    if (head_dim == 64) return wide ? Launch<64, 2, 8>(a, stream) : Launch<64, 1, 6>(a, stream);
    return wide ? Launch<128, 2, 8>(a, stream) : Launch<128, 1, 6>(a, stream);
  }
  if constexpr (V0 < 6) {
    if (ver != V0) return LaunchVersion<V0 + 1>(ver, head_dim, wide, a, stream);
  }
  if (head_dim == 64) return wide ? Launch<64, 2, V0>(a, stream) : Launch<64, 1, V0>(a, stream);
  return wide ? Launch<128, 2, V0>(a, stream) : Launch<128, 1, V0>(a, stream);
}

}  // namespace v4

// The shape of one decode launch: rows per CTA, row groups, splits and keys per split.
struct DecodePlan {
  bool v4 = true;
  bool v5 = true;  // v5, v6 or v8 (the counters at the end of the workspace)
  bool v6 = false;
  bool v8 = false;
  bool v10 = false;  // v8's kernels, launched as DecodeKernel::kV10 says
  int rows_per_cta = 32;
  int row_groups = 1;
  int splits = 1;
  int64_t split_len = 0;
  int64_t min_split_keys = kTileN;  // DecodeKernelArgs::min_split_keys
  int tile = kTileN;
};

DecodePlan MakePlan(int batch, int hq, int hkv, int64_t max_kv_len, int requested, DecodeKernel kernel) {
  DecodePlan pl;
  const int ha = std::max(hq, hkv);
  const int g = ha / hkv;
  pl.v4 = kernel != DecodeKernel::kV3;
  pl.v10 = kernel == DecodeKernel::kV10 || kernel == DecodeKernel::kAuto;
  pl.v8 = kernel == DecodeKernel::kV8 || pl.v10;
  pl.v5 = kernel == DecodeKernel::kV5 || kernel == DecodeKernel::kV6 || kernel == DecodeKernel::kAuto || pl.v8;
  pl.v6 = kernel == DecodeKernel::kV6 || kernel == DecodeKernel::kAuto || pl.v8;
  if (pl.v4) {
    const bool narrow = g <= 16;
    pl.rows_per_cta = narrow ? 16 : 32;
    pl.tile = narrow ? 16 : 32;
    pl.row_groups = (g + pl.rows_per_cta - 1) / pl.rows_per_cta;
    const int slots = NumSms() * (narrow ? 2 : 1);
    const int64_t ctas0 = static_cast<int64_t>(batch) * hkv * pl.row_groups;
    // At least two tiles per stream and split; four for wide groups, whose partials (32 heads'
    // outputs per split) would otherwise add more traffic than they save (H200, MQA batch 1).
    const int min_keys = v4::kStreams * (narrow ? 2 : 4) * pl.tile;
    pl.splits = requested > 0 ? std::min(requested, kMaxSplits) : v4::ChooseSplits(ctas0, slots, max_kv_len, min_keys);
    // A requested count is used as given, however short the sequence.
    pl.min_split_keys = requested > 0 ? pl.tile : min_keys;
  } else {
    pl.rows_per_cta = kRowsPerGroupMax;
    pl.tile = kTileN;
    pl.row_groups = RowGroupsV3(g);
    pl.splits = ChooseSplitsV3(batch, hkv, pl.row_groups, max_kv_len, requested);
  }
  int64_t split_len = (max_kv_len + pl.splits - 1) / pl.splits;
  pl.split_len = std::max<int64_t>(pl.tile, (split_len + pl.tile - 1) / pl.tile * pl.tile);
  return pl;
}

// Workspace of one plan: the split partials (o and lse in f32) and, for v5, the merge counters.
size_t PlanWorkspaceBytes(const DecodePlan& pl, int batch, int ha, int head_dim) {
  if (pl.splits <= 1) return 0;
  return static_cast<size_t>(pl.splits) * batch * ha * (static_cast<size_t>(head_dim) + 1) * sizeof(float) +
         (pl.v5 ? kDecodeCounterBytes : 0);
}

}  // namespace

size_t DecodeWorkspaceBytes(int batch, int num_q_heads, int num_kv_heads, int head_dim, int64_t plan_kv_len,
                            int num_splits, DecodeKernel kernel) {
  if (batch <= 0 || num_q_heads <= 0 || num_kv_heads <= 0 || head_dim <= 0) return 0;
  const int ha = std::max(num_q_heads, num_kv_heads);
  const DecodePlan pl = MakePlan(batch, num_q_heads, num_kv_heads, plan_kv_len, num_splits, kernel);
  return PlanWorkspaceBytes(pl, batch, ha, head_dim);
}

int64_t DecodePlanKvLen(const DecodeParams& p) {
  if (p.kernel == DecodeKernel::kV3 || p.plan_kv_len <= 0) return p.max_kv_len;
  return std::min(p.plan_kv_len, p.max_kv_len);
}

int DecodeSplits(const DecodeParams& p) {
  if (p.num_q_heads <= 0 || p.num_kv_heads <= 0) return 1;
  return MakePlan(p.batch, p.num_q_heads, p.num_kv_heads, DecodePlanKvLen(p), p.num_splits, p.kernel).splits;
}

absl::Status LaunchAttentionDecode(const DecodeParams& p, cudaStream_t stream) {
  if (p.head_dim != 64 && p.head_dim != 128) {
    return absl::InvalidArgumentError(absl::StrCat("attention decode: head_dim ", p.head_dim, " unsupported (64 or 128)"));
  }
  const int hq = p.num_q_heads, hkv = p.num_kv_heads;
  if (hq <= 0 || hkv <= 0 || (hq >= hkv && hq % hkv != 0) || (hq < hkv && hkv % hq != 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention decode: Hq=", hq, " and Hkv=", hkv, " must be positive and divide one another"));
  }
  if (p.batch < 0 || p.max_kv_len < 0 || p.block_size <= 0) {
    return absl::InvalidArgumentError("attention decode: negative batch/max_kv_len or non-positive block_size");
  }
  if (p.batch == 0) return absl::OkStatus();
  if (p.max_kv_len >= (int64_t{1} << 31) - 2 * kTileN) {
    return absl::InvalidArgumentError("attention decode: kv lengths must stay below 2^31");
  }
  if (p.batch > 65535) return absl::InvalidArgumentError("attention decode: batch above 65535");
  if (p.combine_trigger < -1 || p.combine_trigger > 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention decode: combine_trigger ", p.combine_trigger, " unsupported (-1, 0, 1 or 2)"));
  }
  if (p.combine_sliced < -1 || p.combine_sliced > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention decode: combine_sliced ", p.combine_sliced, " unsupported (-1, 0 or 1)"));
  }
  if (p.early_tiles != 0 && p.early_tiles != v4::kStages - 1 && p.early_tiles != v4::kStages) {
    return absl::InvalidArgumentError(absl::StrCat("attention decode: early_tiles ", p.early_tiles, " unsupported (0, ",
                                                   v4::kStages - 1, " or ", v4::kStages, ")"));
  }
  if (p.q == nullptr || p.out == nullptr || p.k_cache == nullptr || p.v_cache == nullptr ||
      p.block_tables == nullptr || p.kv_lens == nullptr) {
    return absl::InvalidArgumentError("attention decode: null pointer");
  }
  const DecodePlan pl = MakePlan(p.batch, hq, hkv, DecodePlanKvLen(p), p.num_splits, p.kernel);
  DecodeKernelArgs a{};
  a.q = static_cast<const bf16*>(p.q);
  a.k = static_cast<const bf16*>(p.k_cache);
  a.v = static_cast<const bf16*>(p.v_cache);
  a.block_tables = p.block_tables;
  a.table_stride = p.block_table_stride;
  a.kv_lens = p.kv_lens;
  a.block_size = p.block_size;
  a.tile_in_block = p.block_size % pl.tile == 0;
  a.hq = hq;
  a.hkv = hkv;
  a.ha = std::max(hq, hkv);
  a.g = a.ha / hkv;
  a.row_groups = pl.row_groups;
  a.batch = p.batch;
  a.num_splits = pl.splits;
  a.split_len = pl.split_len;
  a.min_split_keys = static_cast<int>(pl.min_split_keys);
  const float scale = p.scale > 0.f ? p.scale : 1.f / std::sqrt(static_cast<float>(p.head_dim));
  a.scale_log2 = scale * kLog2e;
  a.out = static_cast<bf16*>(p.out);
  a.lse = p.lse;
  a.fresh = p.fresh_kv_tokens;
  a.timeline = p.timeline;
  a.fuse_min_keys = p.fuse_min_split_keys;
  // v10: wide groups with many long splits merge in the merge kernel instead of the split kernel
  // (unless a benchmark sets fuse_min_split_keys), its sliced form unless combine_sliced says
  // otherwise; narrow groups read every stage early.
  const bool wide_group = pl.rows_per_cta == 32;
  const bool v10_sliced = pl.v10 && wide_group && pl.splits >= v4::kSlicedMinSplits &&
                          pl.split_len >= v4::kSlicedMinSplitKeys;
  a.pre_all = p.early_tiles == v4::kStages || (p.early_tiles == 0 && pl.v10 && !wide_group);
  a.combine_trigger = std::max(p.combine_trigger, 0);
  a.combine_sliced = p.combine_sliced >= 0 ? p.combine_sliced != 0 : v10_sliced;
  if (v10_sliced && a.fuse_min_keys == 0) a.fuse_min_keys = std::numeric_limits<int>::max();
  a.combine_timeline = p.combine_timeline;
  if (a.num_splits > 1) {
    const size_t need = PlanWorkspaceBytes(pl, p.batch, a.ha, p.head_dim);
    if (p.workspace == nullptr || p.workspace_bytes < need) {
      return absl::InvalidArgumentError(absl::StrCat("attention decode: workspace of ", p.workspace_bytes,
                                                     " bytes is too small; DecodeWorkspaceBytes says ", need));
    }
    a.part_o = static_cast<float*>(p.workspace);
    a.part_lse = a.part_o + static_cast<size_t>(a.num_splits) * p.batch * a.ha * p.head_dim;
    if (pl.v5) {
      // The counters sit at the end of the buffer as given, not of what this call needs, so that
      // calls of other sizes never lay partials over them.
      a.counters = reinterpret_cast<unsigned*>(static_cast<unsigned char*>(p.workspace) +
                                               (p.workspace_bytes - kDecodeCounterBytes) / 4 * 4);
    }
  }
  if (pl.v4) {
    const bool wide = pl.rows_per_cta == 32;
    const int ver = pl.v8 ? 8 : pl.v6 ? 6 : pl.v5 ? 5 : 4;
    return v4::LaunchVersion<4>(ver, p.head_dim, wide, a, stream);
  }
  const bool wide = a.g > 16;
  if (p.head_dim == 64) return wide ? LaunchDecodeV3<64, 2>(a, stream) : LaunchDecodeV3<64, 1>(a, stream);
  return wide ? LaunchDecodeV3<128, 2>(a, stream) : LaunchDecodeV3<128, 1>(a, stream);
}

}  // namespace sqa::cuda
