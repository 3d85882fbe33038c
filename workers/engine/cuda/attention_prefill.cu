// Chunked causal flash attention (prefill) for sm_90: FlashAttention-2 style on mma.sync
// m16n8k16 (bf16 in, f32 accumulate), cp.async double-buffered K/V tiles.
//
// Work decomposition. The query heads that share one KV head are packed into the M dimension:
// packed row m of KV head kvh is (token m / g, attention head kvh * g + m % g) with g = Ha / Hkv,
// so each K/V tile is loaded once for the whole group (GQA/MQA/SQA). rSQA (Hq < Hkv) has g = 1
// and head h reads query head h % Hq. A CTA (8 warps, 16 rows each) owns 128 packed rows of one
// KV head and walks the key tiles of 64 from the causal diagonal down to 0 (the masked tiles
// first). CTAs are numbered so that the tiles with the most keys (the last rows) start first,
// which balances the causal triangle across waves.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "workers/engine/cuda/attention.h"
#include "workers/engine/cuda/attention_internal.cuh"

namespace sqa::cuda {
namespace {

using namespace attn_detail;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kBlockM = kWarps * 16;
constexpr int kBlockN = 64;

template <int D>
__host__ __device__ constexpr int PrefillSmemBytes() {
  return (kBlockM * D + 4 * kBlockN * D) * static_cast<int>(sizeof(bf16));
}

struct PrefillKernelArgs {
  const bf16* q;
  const bf16* k;
  const bf16* v;
  const int32_t* block_table;
  int block_size;
  int hq, hkv, ha, g;
  int64_t n, q_pos0, kv_len;
  int64_t rows;        // n * g packed rows per KV head
  int64_t row_tiles;   // ceil(rows / kBlockM)
  float scale_log2;    // softmax scale * log2(e)
  bool causal;
  bf16* out;
  float* lse;
};

template <int D>
__global__ void __launch_bounds__(kThreads, 1) PrefillKernel(const PrefillKernelArgs a) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* sK = sQ + kBlockM * D;        // 2 stages of [kBlockN][D]
  bf16* sV = sK + 2 * kBlockN * D;    // 2 stages
  constexpr int kChunks = D / 8;      // 16-byte chunks per row

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int64_t linear = blockIdx.x;
  const int kvh = static_cast<int>(linear % a.hkv);
  const int64_t mt = a.row_tiles - 1 - linear / a.hkv;  // longest (last) row tiles first
  const int64_t row0 = mt * kBlockM;
  const int g = a.g;

  const int64_t row_end = min(row0 + kBlockM, a.rows);
  const int64_t t_first = row0 / g;
  const int64_t t_last = (row_end - 1) / g;
  int64_t kv_end = a.kv_len;
  if (a.causal) kv_end = min(kv_end, a.q_pos0 + t_last + 1);
  const int num_tiles = kv_end > 0 ? static_cast<int>((kv_end + kBlockN - 1) / kBlockN) : 0;
  // Tiles whose last key is <= unmasked_end - 1 need no mask for any row of this CTA.
  const int64_t unmasked_end = a.causal ? min(a.kv_len, a.q_pos0 + t_first + 1) : a.kv_len;

  // --- Q tile -> shared memory.
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
    CpAsync16(SmemAddr(sQ + Swz<D>(r, c)), src, valid);
  }

  auto load_kv = [&](int jt, int st) {
    const int64_t k0 = static_cast<int64_t>(jt) * kBlockN;
    bf16* dk = sK + st * kBlockN * D;
    bf16* dv = sV + st * kBlockN * D;
#pragma unroll
    for (int i = tid; i < kBlockN * kChunks; i += kThreads) {
      const int r = i / kChunks, c = i % kChunks;
      const int64_t p = k0 + r;
      const bool valid = p < kv_end;
      const int64_t off = valid ? KvOffset<D>(a.block_table, a.block_size, a.hkv, kvh, p) + c * 8 : 0;
      CpAsync16(SmemAddr(dk + Swz<D>(r, c)), a.k + off, valid);
      CpAsync16(SmemAddr(dv + Swz<D>(r, c)), a.v + off, valid);
    }
  };

  if (num_tiles > 0) load_kv(num_tiles - 1, 0);
  CpAsyncCommit();

  // Per-thread rows: r_lo = warp*16 + lane/4 and r_lo + 8.
  const int r_lo = warp * 16 + lane / 4;
  int64_t row_limit[2];  // last visible key position per row (causal), else kv_len - 1
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t pr = row0 + r_lo + i * 8;
    const int64_t t = pr / g;
    row_limit[i] = a.causal ? min(a.q_pos0 + t, a.kv_len - 1) : a.kv_len - 1;
  }

  uint32_t qf[D / 16][4];
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_i[2] = {-INFINITY, -INFINITY};
  float l_i[2] = {0.f, 0.f};

  for (int it = 0; it < num_tiles; ++it) {
    const int jt = num_tiles - 1 - it;
    const int st = it & 1;
    if (it + 1 < num_tiles) {
      load_kv(jt - 1, st ^ 1);
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    if (it == 0) {
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        const int r = warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        Ldsm4(qf[ks], SmemAddr(sQ + Swz<D>(r, ks * 2 + lane / 16)));
      }
    }
    const bf16* tK = sK + st * kBlockN * D;
    const bf16* tV = sV + st * kBlockN * D;

    // S = Q K^T for this warp's 16 rows x 64 keys.
    float s[kBlockN / 8][4];
#pragma unroll
    for (int i = 0; i < kBlockN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
#pragma unroll
      for (int nb2 = 0; nb2 < kBlockN / 16; ++nb2) {
        uint32_t b[4];
        const int r = nb2 * 16 + (lane % 8) + (lane / 16) * 8;
        Ldsm4(b, SmemAddr(tK + Swz<D>(r, ks * 2 + (lane / 8) % 2)));
        Mma(s[2 * nb2], qf[ks], b[0], b[1]);
        Mma(s[2 * nb2 + 1], qf[ks], b[2], b[3]);
      }
    }

    // Scale (log2 domain) and mask.
    const int64_t k0 = static_cast<int64_t>(jt) * kBlockN;
    const bool need_mask = k0 + kBlockN > unmasked_end;
#pragma unroll
    for (int nb = 0; nb < kBlockN / 8; ++nb) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[nb][e] * a.scale_log2;
        if (need_mask) {
          const int64_t key = k0 + nb * 8 + (lane % 4) * 2 + (e & 1);
          if (key > row_limit[e >> 1]) x = -INFINITY;
        }
        s[nb][e] = x;
      }
    }

    // Online softmax.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int nb = 0; nb < kBlockN / 8; ++nb) mx = fmaxf(mx, fmaxf(s[nb][2 * i], s[nb][2 * i + 1]));
      mx = QuadMax(mx);
      const float m_new = fmaxf(m_i[i], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(m_i[i] - m_use);
      float sum = 0.f;
#pragma unroll
      for (int nb = 0; nb < kBlockN / 8; ++nb) {
        const float p0 = exp2f(s[nb][2 * i] - m_use);
        const float p1 = exp2f(s[nb][2 * i + 1] - m_use);
        s[nb][2 * i] = p0;
        s[nb][2 * i + 1] = p1;
        sum += p0 + p1;
      }
      l_i[i] = l_i[i] * alpha + sum;
      m_i[i] = m_new;
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd) {
        o[nd][2 * i] *= alpha;
        o[nd][2 * i + 1] *= alpha;
      }
    }

    // O += P V.
#pragma unroll
    for (int ks = 0; ks < kBlockN / 16; ++ks) {
      const uint32_t pa[4] = {PackBf16(s[2 * ks][0], s[2 * ks][1]), PackBf16(s[2 * ks][2], s[2 * ks][3]),
                              PackBf16(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                              PackBf16(s[2 * ks + 1][2], s[2 * ks + 1][3])};
#pragma unroll
      for (int nd2 = 0; nd2 < D / 16; ++nd2) {
        uint32_t b[4];
        const int r = ks * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        Ldsm4T(b, SmemAddr(tV + Swz<D>(r, nd2 * 2 + lane / 16)));
        Mma(o[2 * nd2], pa, b[0], b[1]);
        Mma(o[2 * nd2 + 1], pa, b[2], b[3]);
      }
    }
    __syncthreads();
  }
  CpAsyncWait<0>();

  // Epilogue: normalize, write out and LSE.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float l = QuadSum(l_i[i]);
    const int64_t pr = row0 + r_lo + i * 8;
    if (pr >= a.rows) continue;
    const int64_t t = pr / g;
    const int h = kvh * g + static_cast<int>(pr - t * g);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    bf16* dst = a.out + (t * a.ha + h) * D + (lane % 4) * 2;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) {
      *reinterpret_cast<__nv_bfloat162*>(dst + nd * 8) =
          __floats2bfloat162_rn(o[nd][2 * i] * inv, o[nd][2 * i + 1] * inv);
    }
    if (a.lse != nullptr && lane % 4 == 0) {
      a.lse[t * a.ha + h] = l > 0.f ? (m_i[i] + log2f(l)) * kLn2 : -INFINITY;
    }
  }
}

template <int D>
absl::Status LaunchPrefill(const PrefillKernelArgs& a, cudaStream_t stream) {
  constexpr int smem = PrefillSmemBytes<D>();
  // Per call (cheap, host-only, allowed during graph capture) so that every device is covered.
  cudaError_t e = cudaFuncSetAttribute(PrefillKernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return CudaStatus(e, "attention prefill: cudaFuncSetAttribute");
  const int64_t blocks = a.row_tiles * a.hkv;
  if (blocks > 0x7fffffff) return absl::InvalidArgumentError("attention prefill: too many query rows for one launch");
  PrefillKernel<D><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(a);
  return LaunchStatus("attention prefill");
}

}  // namespace

absl::Status LaunchAttentionPrefill(const PrefillParams& p, cudaStream_t stream) {
  if (p.head_dim != 64 && p.head_dim != 128) {
    return absl::InvalidArgumentError(absl::StrCat("attention prefill: head_dim ", p.head_dim, " unsupported (64 or 128)"));
  }
  if (p.num_q_heads <= 0 || p.num_kv_heads <= 0) {
    return absl::InvalidArgumentError("attention prefill: head counts must be positive");
  }
  const int hq = p.num_q_heads, hkv = p.num_kv_heads;
  if ((hq >= hkv && hq % hkv != 0) || (hq < hkv && hkv % hq != 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention prefill: Hq=", hq, " and Hkv=", hkv, " must divide one another"));
  }
  if (p.n < 0 || p.kv_len < 0 || p.q_pos0 < 0) return absl::InvalidArgumentError("attention prefill: negative size");
  if (p.causal && p.q_pos0 + p.n > p.kv_len) {
    return absl::InvalidArgumentError(absl::StrCat("attention prefill: queries end at position ", p.q_pos0 + p.n,
                                                   " but only ", p.kv_len, " keys are given (causal)"));
  }
  if (p.kv.block_table != nullptr && p.kv.block_size <= 0) {
    return absl::InvalidArgumentError("attention prefill: block_size must be positive");
  }
  if (p.n == 0) return absl::OkStatus();
  if (p.q == nullptr || p.out == nullptr || (p.kv_len > 0 && (p.kv.k == nullptr || p.kv.v == nullptr))) {
    return absl::InvalidArgumentError("attention prefill: null tensor pointer");
  }
  PrefillKernelArgs a{};
  a.q = static_cast<const bf16*>(p.q);
  a.k = static_cast<const bf16*>(p.kv.k);
  a.v = static_cast<const bf16*>(p.kv.v);
  a.block_table = p.kv.block_table;
  a.block_size = p.kv.block_size;
  a.hq = hq;
  a.hkv = hkv;
  a.ha = hq > hkv ? hq : hkv;
  a.g = a.ha / hkv;
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
  return p.head_dim == 64 ? LaunchPrefill<64>(a, stream) : LaunchPrefill<128>(a, stream);
}

}  // namespace sqa::cuda
