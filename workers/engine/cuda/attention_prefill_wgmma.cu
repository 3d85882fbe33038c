// Chunked causal flash attention (prefill) on Hopper warpgroup MMA (wgmma, sm_90a).
//
// Same work decomposition as the mma.sync kernel (attention_prefill.cu): the query heads that
// share one KV head are packed into M (packed row m of KV head kvh is token m / g, attention head
// kvh * g + m % g), so each K/V tile is read once per group; CTAs walk key tiles from the causal
// diagonal down, and are numbered longest-first.
//
// A CTA is two warpgroups (256 threads) over 128 packed rows (64 per warpgroup) and 128-key
// tiles. Q, K and V live in shared memory as 128-byte-swizzled tiles (wgmma.cuh). Per tile, each
// warpgroup computes S = Q K^T with m64n128k16 (both operands from shared memory), the online
// softmax in registers, and O += P V with P taken straight from the S accumulators as the A
// operand in registers and V read N-major (transposed) from shared memory. K/V tiles are
// double-buffered with cp.async issued by all 256 threads one tile ahead.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "workers/engine/cuda/attention.h"
#include "workers/engine/cuda/attention_internal.cuh"
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
  int paged_mode;  // PagedMode
  int hq, hkv, ha, g;
  int64_t n, q_pos0, kv_len;
  int64_t rows;       // n * g packed rows per KV head
  int64_t row_tiles;  // ceil(rows / kBlockM)
  float scale_log2;
  bool causal;
  bf16* out;
  float* lse;
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

template <int D>
__global__ void __launch_bounds__(kThreads, 1) PrefillWgmmaKernel(const Args a) {
  extern __shared__ unsigned char smem_raw[];
  constexpr int kChunks = D / 8;                          // 16-byte chunks per row
  constexpr uint32_t kTileBytes = kBlockN * D * sizeof(bf16);
  const uint32_t sQ = (SmemAddr(smem_raw) + 1023u) & ~1023u;
  const uint32_t sK = sQ + kBlockM * D * sizeof(bf16);    // 2 stages
  const uint32_t sV = sK + 2 * kTileBytes;                // 2 stages

  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32;
  const int wg = warp / 4, wl = warp % 4;
  const int64_t linear = blockIdx.x;
  const int kvh = static_cast<int>(linear % a.hkv);
  const int64_t row0 = (a.row_tiles - 1 - linear / a.hkv) * kBlockM;  // longest tiles first
  const int g = a.g;

  const int64_t row_end = min(row0 + kBlockM, a.rows);
  const int64_t t_first = row0 / g;
  const int64_t t_last = (row_end - 1) / g;
  int64_t kv_end = a.kv_len;
  if (a.causal) kv_end = min(kv_end, a.q_pos0 + t_last + 1);
  const int num_tiles = kv_end > 0 ? static_cast<int>((kv_end + kBlockN - 1) / kBlockN) : 0;
  const int64_t unmasked_end = a.causal ? min(a.kv_len, a.q_pos0 + t_first + 1) : a.kv_len;

  // --- Q tile.
  for (int i = tid; i < kBlockM * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const int64_t pr = row0 + r;
    const bool valid = pr < a.rows;
    const bf16* src = a.q;
    if (valid) {
      const int64_t t = pr / g;
      const int h = kvh * g + static_cast<int>(pr - t * g);
      src = a.q + (t * a.hq + h % a.hq) * D + c * 8;
    }
    CpAsync16(sQ + Sw128Offset(r, c, kBlockM), src, valid);
  }

  auto load_kv = [&](int jt, int st) {
    const int k0 = jt * kBlockN;
    const uint32_t dk = sK + st * kTileBytes, dv = sV + st * kTileBytes;
    // kPaged64: element offsets of keys k0 and k0 + 64 (each 64-key half lies in one block).
    int64_t base_lo = 0, base_hi = 0;
    if (a.paged_mode == kPaged64) {
      auto half = [&](int p0) -> int64_t {
        if (p0 >= kv_end) return 0;
        const int bi = p0 / a.block_size;
        return ((static_cast<int64_t>(a.block_table[bi]) * a.hkv + kvh) * a.block_size + (p0 - bi * a.block_size)) * D;
      };
      base_lo = half(k0);
      base_hi = half(k0 + 64);
    }
#pragma unroll
    for (int j = 0; j < kBlockN * kChunks / kThreads; ++j) {
      const int i = tid + j * kThreads;
      const int r = i / kChunks, c = i % kChunks;
      const int p = k0 + r;
      const bool valid = p < kv_end;
      int64_t off = 0;
      if (valid) {
        if (a.paged_mode == kPaged64) {
          off = (r < 64 ? base_lo : base_hi) + (r & 63) * D;
        } else if (a.paged_mode == kPagedAny) {
          const int bi = p / a.block_size;
          off = ((static_cast<int64_t>(a.block_table[bi]) * a.hkv + kvh) * a.block_size + (p - bi * a.block_size)) * D;
        } else {
          off = (static_cast<int64_t>(p) * a.hkv + kvh) * D;
        }
        off += c * 8;
      }
      const uint32_t so = Sw128Offset(r, c, kBlockN);
      CpAsync16(dk + so, a.k + off, valid);
      CpAsync16(dv + so, a.v + off, valid);
    }
  };

  if (num_tiles > 0) load_kv(num_tiles - 1, 0);
  CpAsyncCommit();

  // This thread's two rows inside the CTA tile: wg*64 + wl*16 + lane/4 (+ 8).
  const int r_in = wg * 64 + wl * 16 + lane / 4;
  int row_limit[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t t = (row0 + r_in + 8 * i) / g;
    row_limit[i] = static_cast<int>(a.causal ? min(a.q_pos0 + t, a.kv_len - 1) : a.kv_len - 1);
  }

  float o[D / 2];
  float s[kBlockN / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
#pragma unroll
  for (int i = 0; i < kBlockN / 2; ++i) s[i] = 0.f;
  float m_i[2] = {-INFINITY, -INFINITY}, l_i[2] = {0.f, 0.f};
  const float sl2 = a.scale_log2;
  const uint32_t q_base = sQ + wg * 64 * 128;

  for (int it = 0; it < num_tiles; ++it) {
    const int jt = num_tiles - 1 - it;
    const int st = it & 1;
    CpAsyncWait<0>();
    FenceProxyAsync();
    __syncthreads();  // tile `it` visible to all; everyone is done with stage st ^ 1
    if (it + 1 < num_tiles) {
      load_kv(jt - 1, st ^ 1);
      CpAsyncCommit();
    }
    const uint32_t k_base = sK + st * kTileBytes, v_base = sV + st * kTileBytes;

    // S = Q K^T (64 rows x 128 keys per warpgroup).
    WgmmaFence();
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      const uint32_t qa = q_base + (ks / 4) * (kBlockM * 128) + (ks % 4) * 32;
      const uint32_t kb = k_base + (ks / 4) * (kBlockN * 128) + (ks % 4) * 32;
      WgmmaSS_N128(s, MakeSmemDesc(qa, 16, 1024), MakeSmemDesc(kb, 16, 1024), ks > 0 ? 1 : 0);
    }
    WgmmaCommit();
    WgmmaWait<0>();
    FenceRegs(s);

    // Mask and online softmax (log2 domain). Accumulator s[4*nb + e]: row r_in + 8*(e/2),
    // key k0 + 8*nb + 2*(lane%4) + e%2.
    const int k0 = jt * kBlockN;
    if (k0 + kBlockN > unmasked_end) {
#pragma unroll
      for (int nb = 0; nb < kBlockN / 8; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = k0 + nb * 8 + (lane % 4) * 2 + (e & 1);
          if (key > row_limit[e >> 1]) s[4 * nb + e] = -INFINITY;
        }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int nb = 0; nb < kBlockN / 8; ++nb) mx = fmaxf(mx, fmaxf(s[4 * nb + 2 * i], s[4 * nb + 2 * i + 1]));
      mx = QuadMax(mx) * sl2;
      const float m_new = fmaxf(m_i[i], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = Exp2(m_i[i] - m_use);
      float sum = 0.f;
#pragma unroll
      for (int nb = 0; nb < kBlockN / 8; ++nb) {
        const float p0 = Exp2(fmaf(s[4 * nb + 2 * i], sl2, -m_use));
        const float p1 = Exp2(fmaf(s[4 * nb + 2 * i + 1], sl2, -m_use));
        s[4 * nb + 2 * i] = p0;
        s[4 * nb + 2 * i + 1] = p1;
        sum += p0 + p1;
      }
      l_i[i] = l_i[i] * alpha + sum;
      m_i[i] = m_new;
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd) {
        o[4 * nd + 2 * i] *= alpha;
        o[4 * nd + 2 * i + 1] *= alpha;
      }
    }

    // O += P V: P (bf16) from the S accumulators; k-step kk covers keys 16 kk .. 16 kk + 15.
    uint32_t pa[kBlockN / 16][4];
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      pa[kk][0] = PackBf16(s[8 * kk + 0], s[8 * kk + 1]);
      pa[kk][1] = PackBf16(s[8 * kk + 2], s[8 * kk + 3]);
      pa[kk][2] = PackBf16(s[8 * kk + 4], s[8 * kk + 5]);
      pa[kk][3] = PackBf16(s[8 * kk + 6], s[8 * kk + 7]);
    }
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      PvStep<D>(o, pa[kk], MakeSmemDesc(v_base + kk * 16 * 128, kBlockN * 128, 1024));
    }
    WgmmaCommit();
    WgmmaWait<0>();
    FenceRegs(o);
  }
  CpAsyncWait<0>();

  // Epilogue: normalize, write O and the LSE.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float l = QuadSum(l_i[i]);
    const int64_t pr = row0 + r_in + 8 * i;
    if (pr >= a.rows) continue;
    const int64_t t = pr / g;
    const int h = kvh * g + static_cast<int>(pr - t * g);
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

template <int D>
absl::Status Launch(const Args& a, cudaStream_t stream) {
  constexpr int smem = SmemBytes<D>();
  cudaError_t e = cudaFuncSetAttribute(PrefillWgmmaKernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return CudaStatus(e, "attention prefill (wgmma): cudaFuncSetAttribute");
  const int64_t blocks = a.row_tiles * a.hkv;
  if (blocks > 0x7fffffff) return absl::InvalidArgumentError("attention prefill: too many query rows for one launch");
  PrefillWgmmaKernel<D><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(a);
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
  const float scale = p.scale > 0.f ? p.scale : 1.f / std::sqrt(static_cast<float>(p.head_dim));
  a.scale_log2 = scale * kLog2e;
  a.causal = p.causal;
  a.out = static_cast<bf16*>(p.out);
  a.lse = p.lse;
  return p.head_dim == 64 ? Launch<64>(a, stream) : Launch<128>(a, stream);
}

}  // namespace attn_detail
}  // namespace sqa::cuda
