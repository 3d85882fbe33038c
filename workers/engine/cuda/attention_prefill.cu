// Chunked causal flash attention (prefill) for sm_90: FlashAttention-2 style on mma.sync
// m16n8k16 (bf16 in, f32 accumulate), cp.async double-buffered K/V tiles. The launcher validates
// the parameters for both prefill kernels and hands the default case to the wgmma kernel
// (attention_prefill_wgmma.cu); this kernel runs for PrefillKernel::kMmaSync.
//
// Work decomposition. The query heads that share one KV head are packed into the M dimension:
// packed row m of KV head kvh is (token m / g, attention head kvh * g + m % g) with g = Ha / Hkv,
// so each K/V tile is loaded once for the whole group (GQA/MQA/SQA). rSQA (Hq < Hkv) has g = 1
// and head h reads query head h % Hq. A CTA (4 warps, 32 rows each) owns 128 packed rows of one
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

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kMT = 2;                        // m16 tiles per warp: 32 query rows per warp
constexpr int kBlockM = kWarps * 16 * kMT;    // 128 packed rows per CTA
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
  bool tile_in_block;  // paged and block_size % kBlockN == 0: a key tile never crosses a block
  int hq, hkv, ha, g;
  int64_t n, q_pos0, kv_len;
  int64_t rows;        // n * g packed rows per KV head
  int64_t row_tiles;   // ceil(rows / kBlockM)
  float scale_log2;    // softmax scale * log2(e)
  bool causal;
  bf16* out;
  float* lse;
};

// Two CTAs of 4 warps per SM (255 registers at most per thread): each warp owns 32 rows, so every
// K/V fragment read from shared memory feeds two m16 tiles; Q fragments are re-read from shared
// memory per k-step to leave the registers to the S and O accumulators.
template <int D>
__global__ void __launch_bounds__(kThreads, 2) PrefillKernel(const PrefillKernelArgs a) {
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
  const int64_t mt_idx = a.row_tiles - 1 - linear / a.hkv;  // longest (last) row tiles first
  const int64_t row0 = mt_idx * kBlockM;
  const int g = a.g;

  const int64_t row_end = min(row0 + kBlockM, a.rows);
  const int64_t t_first = row0 / g;
  const int64_t t_last = (row_end - 1) / g;
  int64_t kv_end = a.kv_len;
  if (a.causal) kv_end = min(kv_end, a.q_pos0 + t_last + 1);
  const int num_tiles = kv_end > 0 ? static_cast<int>((kv_end + kBlockN - 1) / kBlockN) : 0;
  // Tiles whose keys all lie below unmasked_end need no mask for any row of this CTA.
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
    const int k0 = jt * kBlockN;
    bf16* dk = sK + st * kBlockN * D;
    bf16* dv = sV + st * kBlockN * D;
    int64_t tile_base = 0;
    if (a.tile_in_block) {
      const int bi = k0 / a.block_size;
      const int64_t blk = a.block_table[bi];
      tile_base = PagedOffset<D>(blk, a.block_size, k0 - static_cast<int64_t>(bi) * a.block_size, a.hkv, kvh);
    }
#pragma unroll 2
    for (int i = tid; i < kBlockN * kChunks; i += kThreads) {
      const int r = i / kChunks, c = i % kChunks;
      const int p = k0 + r;
      const bool valid = p < kv_end;
      int64_t off = 0;
      if (valid) {
        if (a.tile_in_block) {
          off = tile_base + static_cast<int64_t>(r) * a.hkv * D;
        } else if (a.block_table != nullptr) {
          const int bi = p / a.block_size;
          off = PagedOffset<D>(a.block_table[bi], a.block_size, p - bi * a.block_size, a.hkv, kvh);
        } else {
          off = (static_cast<int64_t>(p) * a.hkv + kvh) * D;
        }
        off += c * 8;
      }
      CpAsync16(SmemAddr(dk + Swz<D>(r, c)), a.k + off, valid);
      CpAsync16(SmemAddr(dv + Swz<D>(r, c)), a.v + off, valid);
    }
  };

  if (num_tiles > 0) load_kv(num_tiles - 1, 0);
  CpAsyncCommit();

  // Per-thread rows: for m-tile mt and half i, row warp*32 + mt*16 + lane/4 + 8*i.
  const int r_base = warp * 16 * kMT + lane / 4;
  int row_limit[kMT][2];  // last visible key position per row (positions fit in int32)
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int64_t pr = row0 + r_base + mt * 16 + i * 8;
      const int64_t t = pr / g;
      row_limit[mt][i] = static_cast<int>(a.causal ? min(a.q_pos0 + t, a.kv_len - 1) : a.kv_len - 1);
    }

  float o[kMT][D / 8][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
  float m_i[kMT][2], l_i[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) m_i[mt][0] = m_i[mt][1] = -INFINITY, l_i[mt][0] = l_i[mt][1] = 0.f;

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
    const bf16* tK = sK + st * kBlockN * D;
    const bf16* tV = sV + st * kBlockN * D;

    // S = Q K^T for this warp's 32 rows x 64 keys.
    float s[kMT][kBlockN / 8][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int i = 0; i < kBlockN / 8; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t qf[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        const int r = warp * 16 * kMT + mt * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        Ldsm4(qf[mt], SmemAddr(sQ + Swz<D>(r, ks * 2 + lane / 16)));
      }
#pragma unroll
      for (int nb2 = 0; nb2 < kBlockN / 16; ++nb2) {
        uint32_t b[4];
        const int r = nb2 * 16 + (lane % 8) + (lane / 16) * 8;
        Ldsm4(b, SmemAddr(tK + Swz<D>(r, ks * 2 + (lane / 8) % 2)));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          Mma(s[mt][2 * nb2], qf[mt], b[0], b[1]);
          Mma(s[mt][2 * nb2 + 1], qf[mt], b[2], b[3]);
        }
      }
    }

    // Mask, online softmax in the log2 domain: p = 2^(s * scale_log2 - m) as one FFMA + EX2.
    const int k0 = jt * kBlockN;
    const bool need_mask = k0 + kBlockN > unmasked_end;
    const float sl2 = a.scale_log2;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      if (need_mask) {
#pragma unroll
        for (int nb = 0; nb < kBlockN / 8; ++nb)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = k0 + nb * 8 + (lane % 4) * 2 + (e & 1);
            if (key > row_limit[mt][e >> 1]) s[mt][nb][e] = -INFINITY;
          }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float mx = -INFINITY;
#pragma unroll
        for (int nb = 0; nb < kBlockN / 8; ++nb) mx = fmaxf(mx, fmaxf(s[mt][nb][2 * i], s[mt][nb][2 * i + 1]));
        mx = QuadMax(mx) * sl2;  // scale > 0 keeps the order
        const float m_new = fmaxf(m_i[mt][i], mx);
        const float m_use = m_new == -INFINITY ? 0.f : m_new;
        const float alpha = Exp2(m_i[mt][i] - m_use);
        float sum = 0.f;
#pragma unroll
        for (int nb = 0; nb < kBlockN / 8; ++nb) {
          const float p0 = Exp2(fmaf(s[mt][nb][2 * i], sl2, -m_use));
          const float p1 = Exp2(fmaf(s[mt][nb][2 * i + 1], sl2, -m_use));
          s[mt][nb][2 * i] = p0;
          s[mt][nb][2 * i + 1] = p1;
          sum += p0 + p1;
        }
        l_i[mt][i] = l_i[mt][i] * alpha + sum;
        m_i[mt][i] = m_new;
        // The running max rarely moves after the first tiles: skip the O rescale when no row of
        // the warp needs it (warp-uniform branch).
        if (__any_sync(0xffffffffu, alpha != 1.f)) {
#pragma unroll
          for (int nd = 0; nd < D / 8; ++nd) {
            o[mt][nd][2 * i] *= alpha;
            o[mt][nd][2 * i + 1] *= alpha;
          }
        }
      }
    }

    // O += P V.
#pragma unroll
    for (int ks = 0; ks < kBlockN / 16; ++ks) {
      uint32_t pa[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        pa[mt][0] = PackBf16(s[mt][2 * ks][0], s[mt][2 * ks][1]);
        pa[mt][1] = PackBf16(s[mt][2 * ks][2], s[mt][2 * ks][3]);
        pa[mt][2] = PackBf16(s[mt][2 * ks + 1][0], s[mt][2 * ks + 1][1]);
        pa[mt][3] = PackBf16(s[mt][2 * ks + 1][2], s[mt][2 * ks + 1][3]);
      }
#pragma unroll
      for (int nd2 = 0; nd2 < D / 16; ++nd2) {
        uint32_t b[4];
        const int r = ks * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        Ldsm4T(b, SmemAddr(tV + Swz<D>(r, nd2 * 2 + lane / 16)));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          Mma(o[mt][2 * nd2], pa[mt], b[0], b[1]);
          Mma(o[mt][2 * nd2 + 1], pa[mt], b[2], b[3]);
        }
      }
    }
    __syncthreads();
  }
  CpAsyncWait<0>();

  // Epilogue: normalize, write out and LSE.
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float l = QuadSum(l_i[mt][i]);
      const int64_t pr = row0 + r_base + mt * 16 + i * 8;
      if (pr >= a.rows) continue;
      const int64_t t = pr / g;
      const int h = kvh * g + static_cast<int>(pr - t * g);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      bf16* dst = a.out + (t * a.ha + h) * D + (lane % 4) * 2;
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd) {
        *reinterpret_cast<__nv_bfloat162*>(dst + nd * 8) =
            __floats2bfloat162_rn(o[mt][nd][2 * i] * inv, o[mt][nd][2 * i + 1] * inv);
      }
      if (a.lse != nullptr && lane % 4 == 0) {
        a.lse[t * a.ha + h] = l > 0.f ? (m_i[mt][i] + log2f(l)) * kLn2 : -INFINITY;
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
  if (p.kv_len >= (int64_t{1} << 31) - kBlockN || p.q_pos0 + p.n >= (int64_t{1} << 31)) {
    return absl::InvalidArgumentError("attention prefill: positions must stay below 2^31");
  }
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
  if (p.kernel != PrefillKernel::kMmaSync) return attn_detail::LaunchPrefillWgmma(p, stream);
  PrefillKernelArgs a{};
  a.q = static_cast<const bf16*>(p.q);
  a.k = static_cast<const bf16*>(p.kv.k);
  a.v = static_cast<const bf16*>(p.kv.v);
  a.block_table = p.kv.block_table;
  a.block_size = p.kv.block_size;
  a.tile_in_block = p.kv.block_table != nullptr && p.kv.block_size % kBlockN == 0;
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
