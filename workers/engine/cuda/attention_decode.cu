// Flash-decoding over the paged KV cache (sm_90, mma.sync m16n8k16 bf16, f32 accumulation).
//
// One CTA per (KV split, KV head x row group, sequence). The g = Ha / Hkv query heads that share
// a KV head are the M rows of one mma tile (16 or 32 rows), so each K/V byte is read once per
// group (groups wider than 32 heads, e.g. 64 query heads on one KV head, take two row groups and
// read the KV twice). The CTA's 4 warps each stream their own 32-key tiles (cp.async, two stages,
// warp-private shared memory), keep an online softmax, and are merged at the end through shared
// memory. With more than one split the partial (o, lse) go to the workspace in f32 and a second
// kernel merges them (same formula as MergeAttention).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "workers/engine/cuda/attention.h"
#include "workers/engine/cuda/attention_internal.cuh"

namespace sqa::cuda {
namespace {

using namespace attn_detail;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTileN = 32;         // keys per warp tile
constexpr int kStages = 3;         // warp-private cp.async stages (two tiles in flight per warp)
constexpr int kMaxSplits = 128;
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
  int64_t split_len;  // keys per split (multiple of kTileN)
  float scale_log2;
  bf16* out;
  float* lse;
  float* part_o;      // [splits][B][Ha][D] when num_splits > 1
  float* part_lse;    // [splits][B][Ha]
  int batch;
};

template <int D, int MT>
__global__ void __launch_bounds__(kThreads, 1) DecodeKernel(const DecodeKernelArgs a) {
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
      tile_base = ((static_cast<int64_t>(table[bi]) * a.hkv + kvh) * a.block_size + (k0 - bi * a.block_size)) * D;
    }
#pragma unroll 4
    for (int i = lane; i < kTileN * kChunks; i += 32) {
      const int r = i / kChunks, c = i % kChunks;
      const int p = k0 + r;
      const bool valid = p < ks1;
      int64_t off = 0;
      if (valid) {
        if (a.tile_in_block) {
          off = tile_base + r * D;
        } else {
          const int bi = p / a.block_size;
          off = ((static_cast<int64_t>(table[bi]) * a.hkv + kvh) * a.block_size + (p - bi * a.block_size)) * D;
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
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int h = head0 + r;
    const int64_t oidx = (static_cast<int64_t>(b) * a.ha + h);
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
}

// Merges the splits of each (sequence, head): one warp per (b, h), lanes over D.
template <int D>
__global__ void DecodeCombineKernel(const DecodeKernelArgs a) {
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

int NumSms() {
  static int sms = [] {
    int dev = 0, n = 132;
    if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    return n > 0 ? n : 132;
  }();
  return sms;
}

int ChooseSplits(int batch, int hkv, int row_groups, int64_t max_kv_len, int requested) {
  if (requested > 0) return std::min(requested, kMaxSplits);
  const int64_t ctas = static_cast<int64_t>(batch) * hkv * row_groups;
  // One CTA per SM fits (shared memory); fill about two waves without a ragged last one.
  const int64_t want = ctas >= NumSms() ? 1 : std::max<int64_t>(1, 2 * NumSms() / ctas);
  const int64_t by_len = std::max<int64_t>(1, max_kv_len / 512);       // at least 512 keys a split
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, by_len, kMaxSplits})));
}

int RowGroups(int g) { return (g + kRowsPerGroupMax - 1) / kRowsPerGroupMax; }

template <int D, int MT>
absl::Status LaunchDecodeT(const DecodeKernelArgs& a, cudaStream_t stream) {
  constexpr int smem = DecodeSmemBytes<D>();
  cudaError_t e = cudaFuncSetAttribute(DecodeKernel<D, MT>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return CudaStatus(e, "attention decode: cudaFuncSetAttribute");
  dim3 grid(a.num_splits, a.hkv * a.row_groups, a.batch);
  DecodeKernel<D, MT><<<grid, kThreads, smem, stream>>>(a);
  if (absl::Status st = LaunchStatus("attention decode"); !st.ok()) return st;
  if (a.num_splits > 1) {
    const int64_t total = static_cast<int64_t>(a.batch) * a.ha;
    const int warps_per_block = 4;
    DecodeCombineKernel<D><<<static_cast<unsigned>((total + warps_per_block - 1) / warps_per_block), 32 * warps_per_block,
                             0, stream>>>(a);
    return LaunchStatus("attention decode combine");
  }
  return absl::OkStatus();
}

}  // namespace

size_t DecodeWorkspaceBytes(int batch, int num_q_heads, int num_kv_heads, int head_dim, int64_t max_kv_len,
                            int num_splits) {
  if (batch <= 0 || num_q_heads <= 0 || num_kv_heads <= 0 || head_dim <= 0) return 0;
  const int ha = std::max(num_q_heads, num_kv_heads);
  const int g = ha / num_kv_heads;
  const int splits = ChooseSplits(batch, num_kv_heads, RowGroups(g), max_kv_len, num_splits);
  if (splits <= 1) return 0;
  return static_cast<size_t>(splits) * batch * ha * (static_cast<size_t>(head_dim) + 1) * sizeof(float);
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
  if (p.max_kv_len >= (int64_t{1} << 31) - kTileN) {
    return absl::InvalidArgumentError("attention decode: kv lengths must stay below 2^31");
  }
  if (p.batch > 65535) return absl::InvalidArgumentError("attention decode: batch above 65535");
  if (p.q == nullptr || p.out == nullptr || p.k_cache == nullptr || p.v_cache == nullptr ||
      p.block_tables == nullptr || p.kv_lens == nullptr) {
    return absl::InvalidArgumentError("attention decode: null pointer");
  }
  DecodeKernelArgs a{};
  a.q = static_cast<const bf16*>(p.q);
  a.k = static_cast<const bf16*>(p.k_cache);
  a.v = static_cast<const bf16*>(p.v_cache);
  a.block_tables = p.block_tables;
  a.table_stride = p.block_table_stride;
  a.kv_lens = p.kv_lens;
  a.block_size = p.block_size;
  a.tile_in_block = p.block_size % kTileN == 0;
  a.hq = hq;
  a.hkv = hkv;
  a.ha = std::max(hq, hkv);
  a.g = a.ha / hkv;
  a.row_groups = RowGroups(a.g);
  a.batch = p.batch;
  a.num_splits = ChooseSplits(p.batch, hkv, a.row_groups, p.max_kv_len, p.num_splits);
  int64_t split_len = (p.max_kv_len + a.num_splits - 1) / a.num_splits;
  split_len = std::max<int64_t>(kTileN, (split_len + kTileN - 1) / kTileN * kTileN);
  a.split_len = split_len;
  const float scale = p.scale > 0.f ? p.scale : 1.f / std::sqrt(static_cast<float>(p.head_dim));
  a.scale_log2 = scale * kLog2e;
  a.out = static_cast<bf16*>(p.out);
  a.lse = p.lse;
  if (a.num_splits > 1) {
    const size_t need = static_cast<size_t>(a.num_splits) * p.batch * a.ha * (p.head_dim + 1) * sizeof(float);
    if (p.workspace == nullptr || p.workspace_bytes < need) {
      return absl::InvalidArgumentError(absl::StrCat("attention decode: workspace of ", p.workspace_bytes,
                                                     " bytes is too small; DecodeWorkspaceBytes says ", need));
    }
    a.part_o = static_cast<float*>(p.workspace);
    a.part_lse = a.part_o + static_cast<size_t>(a.num_splits) * p.batch * a.ha * p.head_dim;
  }
  const bool wide = a.g > 16;
  if (p.head_dim == 64) return wide ? LaunchDecodeT<64, 2>(a, stream) : LaunchDecodeT<64, 1>(a, stream);
  return wide ? LaunchDecodeT<128, 2>(a, stream) : LaunchDecodeT<128, 1>(a, stream);
}

}  // namespace sqa::cuda
