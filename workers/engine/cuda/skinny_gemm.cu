// Skinny GEMM (see skinny_gemm.h). A decode step multiplies one to eight activation rows by each
// weight matrix: the work is reading W once, at the memory's rate. Each CTA owns 16 output
// features (rows of W) and its warps split K; a warp walks its 32-wide K blocks with mma.sync
// m16n8k16, W as A (16 features) and x as B (its 8 columns are the x rows, zero past n).
//
// A CTA has 8 warps (two CTAs per SM) or 16 (one per SM). 16 run when the launch has no more
// CTAs than the GPU has SMs and K is deep enough that 8 warps would load their blocks in more
// rounds than 16: otherwise such a grid keeps one 8-warp CTA per SM, half the loads in flight
// that the SM can hold, round after round (5632 -> 2048, the MLP's down projection, ran at 58%
// of the copy ceiling that way). The two shapes split K differently, so their sums round
// differently; the choice depends only on the launch's CTA count and K.
//
// The fragments come straight from global memory with 16-byte loads. A dot product does not care
// in which order K is summed, so the kernel gives the mma a permuted K: in each 32-wide block,
// lane c = lane % 4 loads physical k = 8c .. 8c+7 of its W rows (lane / 4 and lane / 4 + 8) and of
// x row lane / 4, and the first mma takes 8c .. 8c+3 as the logical k = 2c, 2c+1, 2c+8, 2c+9 that
// the A and B fragment layouts assign to that lane, the second mma 8c+4 .. 8c+7. A and B are
// permuted alike, so the sum is the same; each W row's 64 bytes per block are one load per lane.
//
// Launched with LaunchPdl: the first K blocks of W (constants) are loaded before PdlWait, so the
// weight stream starts while the previous kernel of the step is still running.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "services/common/status.h"
#include "workers/engine/cuda/cp_async.cuh"
#include "workers/engine/cuda/cuda_check.h"
#include "workers/engine/cuda/device_sms.h"
#include "workers/engine/cuda/pdl.cuh"
#include "workers/engine/cuda/skinny_gemm.h"
#include "workers/engine/cuda/tma.h"
#include "workers/engine/cuda/wgmma.cuh"

namespace sqa::cuda {
namespace {

constexpr int kRows = 16;     // output features per CTA
constexpr int kUnroll = 8;    // K blocks in flight per warp (two 16-byte W loads each)

// W is read once: keep it out of L1 so the x rows stay there.
__device__ __forceinline__ uint4 LoadStream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ void MmaBf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                        uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void Store(float* p, float v) { *p = v; }
__device__ __forceinline__ void Store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// Up to kMaxSegments weight matrices that share x, one launch: CTAs [first_block[s],
// first_block[s + 1]) compute segment s. In GLU mode there is one segment, whose CTAs also read
// w_up's rows of the same features and write silu(gate) * up.
struct SkinnyArgs {
  const __nv_bfloat16* x = nullptr;
  int64_t in = 0;
  int count = 0;
  const __nv_bfloat16* w[kSkinnyMaxSegments] = {};
  void* out[kSkinnyMaxSegments] = {};
  int64_t nout[kSkinnyMaxSegments] = {};
  int64_t first_block[kSkinnyMaxSegments + 1] = {};
  const __nv_bfloat16* w_up = nullptr;
};

// At most 128 registers: two 8-warp CTAs or one 16-warp CTA per SM (an earlier variant at 134
// registers, one 8-warp CTA per SM, had half the loads in flight and lost 10-15% on every shape).
template <int NR, typename O, bool kGlu, int kWarps>
__global__ void __launch_bounds__(kWarps * 32, 16 / kWarps) SkinnyGemmKernel(const SkinnyArgs a) {
  static_assert(kWarps == 8 || kWarps == 16, "8 or 16 warps");
  constexpr int kM = kGlu ? 2 : 1;         // weight matrices read per CTA
  constexpr int kU = kGlu ? kUnroll / 2 : kUnroll;
  __shared__ float red[kWarps][32][4 * kM];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, c = lane % 4;
  int seg = 0;
#pragma unroll
  for (int s = 1; s < kSkinnyMaxSegments; ++s) seg += s < a.count && blockIdx.x >= a.first_block[s];
  const int64_t nout = a.nout[seg], in = a.in;
  const int64_t o0 = (static_cast<int64_t>(blockIdx.x) - a.first_block[seg]) * kRows;
  const int64_t r_lo = std::min(o0 + g, nout - 1) * in + 8 * c, r_hi = std::min(o0 + g + 8, nout - 1) * in + 8 * c;
  const __nv_bfloat16* wm[kM];
  wm[0] = a.w[seg];
  if constexpr (kGlu) wm[1] = a.w_up;
  const bool x_row = g < NR;
  const __nv_bfloat16* xr = a.x + (x_row ? g : 0) * in + 8 * c;
  const int64_t nkb = (in + 31) / 32;  // 32-wide K blocks; this lane's chunk of block kb is valid
  const int64_t chunks = in / 8;       // when 4 kb + c < chunks (in is a multiple of 8)

  float acc[kM][4] = {};
  uint4 a_lo[kM][kU], a_hi[kM][kU];
  auto load_w = [&](int64_t kb0) {
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t kb = kb0 + static_cast<int64_t>(u) * kWarps;
      const bool ok = kb < nkb && 4 * kb + c < chunks;
#pragma unroll
      for (int m = 0; m < kM; ++m) {
        a_lo[m][u] = ok ? LoadStream(wm[m] + r_lo + 32 * kb) : make_uint4(0, 0, 0, 0);
        a_hi[m][u] = ok ? LoadStream(wm[m] + r_hi + 32 * kb) : make_uint4(0, 0, 0, 0);
      }
    }
  };
  load_w(warp);
  PdlTrigger();
  PdlWait();  // x is the previous kernel's output
  for (int64_t kb0 = warp; kb0 < nkb; kb0 += static_cast<int64_t>(kU) * kWarps) {
    uint4 b[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t kb = kb0 + static_cast<int64_t>(u) * kWarps;
      const bool ok = x_row && kb < nkb && 4 * kb + c < chunks;
      b[u] = ok ? __ldg(reinterpret_cast<const uint4*>(xr + 32 * kb)) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kU; ++u)
#pragma unroll
      for (int m = 0; m < kM; ++m) {
        MmaBf16(acc[m], a_lo[m][u].x, a_hi[m][u].x, a_lo[m][u].y, a_hi[m][u].y, b[u].x, b[u].y);
        MmaBf16(acc[m], a_lo[m][u].z, a_hi[m][u].z, a_lo[m][u].w, a_hi[m][u].w, b[u].z, b[u].w);
      }
    const int64_t next = kb0 + static_cast<int64_t>(kU) * kWarps;
    if (next < nkb) load_w(next);
  }
#pragma unroll
  for (int m = 0; m < kM; ++m)
#pragma unroll
    for (int i = 0; i < 4; ++i) red[warp][lane][4 * m + i] = acc[m][i];
  __syncthreads();
  if (warp == 0) {
    float s[4 * kM] = {};
#pragma unroll
    for (int v = 0; v < kWarps; ++v)
#pragma unroll
      for (int i = 0; i < 4 * kM; ++i) s[i] += red[v][lane][i];
    O* out = static_cast<O*>(a.out[seg]);
    // C fragment: s[0], s[1] are feature g, x rows 2c and 2c + 1; s[2], s[3] feature g + 8.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = 2 * c + (i & 1);
      const int64_t o = o0 + g + (i >= 2 ? 8 : 0);
      if (r >= NR || o >= nout) continue;
      if constexpr (kGlu) {
        // As the unfused Linear, Linear, SwiGlu: gate and up rounded to bf16 first.
        const float gt = __bfloat162float(__float2bfloat16_rn(s[i]));
        const float up = __bfloat162float(__float2bfloat16_rn(s[4 + i]));
        Store(out + r * nout + o, gt / (1.f + __expf(-gt)) * up);
      } else {
        Store(out + r * nout + o, s[i]);
      }
    }
  }
}

// SkinnyWarps::kAuto: 16-warp CTAs when the launch's CTAs fit on the GPU at one per SM and 16
// warps load K in fewer rounds of kUnroll blocks than 8 (counted alike for the GLU form, whose
// rounds are half as deep, so that it chooses as its unfused Linear calls do).
bool UseWide(const SkinnyArgs& a, SkinnyWarps warps) {
  if (warps != SkinnyWarps::kAuto) return warps == SkinnyWarps::k16;
  const int64_t nkb = (a.in + 31) / 32;
  const auto rounds = [&](int64_t w) { return (nkb + w * kUnroll - 1) / (w * kUnroll); };
  return a.first_block[a.count] <= NumSms() && rounds(16) < rounds(8);
}

template <int NR, typename O, bool kGlu>
cudaError_t Launch(const SkinnyArgs& a, SkinnyWarps warps, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.first_block[a.count]));
  if (UseWide(a, warps)) return LaunchPdl(SkinnyGemmKernel<NR, O, kGlu, 16>, grid, dim3(16 * 32), 0, stream, a);
  return LaunchPdl(SkinnyGemmKernel<NR, O, kGlu, 8>, grid, dim3(8 * 32), 0, stream, a);
}

template <typename O, bool kGlu>
cudaError_t LaunchRows(int64_t n, const SkinnyArgs& a, SkinnyWarps warps, cudaStream_t stream) {
  switch (n) {
    case 1: return Launch<1, O, kGlu>(a, warps, stream);
    case 2: return Launch<2, O, kGlu>(a, warps, stream);
    case 3: return Launch<3, O, kGlu>(a, warps, stream);
    case 4: return Launch<4, O, kGlu>(a, warps, stream);
    case 5: return Launch<5, O, kGlu>(a, warps, stream);
    case 6: return Launch<6, O, kGlu>(a, warps, stream);
    case 7: return Launch<7, O, kGlu>(a, warps, stream);
    default: return Launch<8, O, kGlu>(a, warps, stream);
  }
}

// ---- The wide form (LaunchSkinnyGemmMany only): kSkinnyNarrowMaxRows < n <= kSkinnyMaxRows ----
// Each CTA owns 64 features (16 per warp: one m16 tile, W as A as above) for all n rows (up to
// four n8 tiles of x as B). Its four warps walk the same K range and share one shared-memory copy
// of its x rows, so x is read from L2 once per CTA, half the CTA's W bytes at 32 rows (with 16
// features a CTA, as the narrow form has, x at 32 rows would be twice the W traffic). K goes in
// rounds of 256: a warp loads the round's eight K blocks of its 16 W rows into registers at once
// (as the narrow form loads its blocks), and the CTA's threads copy the round's x rows into one of
// two shared buffers (cp.async, the next round's while this one computes); rows are 64 bytes
// apart modulo 128, so the 16-byte fragment loads of a quarter-warp hit 32 different banks. Up to
// four CTAs share an SM. K is split over up to eight CTAs so that a launch has about two CTAs per
// SM: each stores its fp32 partial in the workspace; the last to arrive (an atomic ticket) adds
// all of them in split order, so the sum does not depend on which CTA came last, and writes out.
//
// Measured (bench/gpu/e2e/NOTES.md, session 14): on one weight the wide form loses to cuBLASLt on
// most decode shapes (0.6-1.4x; a first form with W in a cp.async ring lost more); on q, k and v
// in one launch it wins (1.2-1.5x for 3 x 2048 features, 2.2-3.3x for 3 x 512) because it
// replaces three cuBLASLt launches. So LinearMany uses it; Linear and the GLU form stay with
// cuBLASLt above kSkinnyNarrowMaxRows, or take the stream form below where it is preferred.
constexpr int kWideWarps = 4;
constexpr int kWideFeatures = 16 * kWideWarps;
constexpr int kWideMaxSplits = 8;
constexpr int kWideRoundK = 256;                 // K per round (and the unit of a split)
constexpr int kWideRowElems = kWideRoundK + 32;  // padded x row: 576 bytes
constexpr int kWideXElems = 32 * kWideRowElems;  // one buffer of a round's x rows
constexpr int kWideSmem = 2 * kWideXElems * 2;   // 36 KB
static_assert((2 * kWideRowElems) % 128 == 64, "rows 64 bytes apart modulo 128");

struct WideArgs {
  const __nv_bfloat16* x = nullptr;
  int64_t in = 0;
  int n = 0;
  int count = 0;
  const __nv_bfloat16* w[kSkinnyMaxSegments] = {};
  void* out[kSkinnyMaxSegments] = {};
  int64_t nout[kSkinnyMaxSegments] = {};
  int64_t first_block[kSkinnyMaxSegments + 1] = {};  // CTAs: tiles x splits per segment
  int64_t first_tile[kSkinnyMaxSegments] = {};       // arrival counters of split segments
  int64_t first_part[kSkinnyMaxSegments] = {};       // their partials (float4 units)
  int splits[kSkinnyMaxSegments] = {};
  int64_t split_k[kSkinnyMaxSegments] = {};  // K per split (a multiple of kWideRoundK)
  float4* partials = nullptr;
  int* counters = nullptr;
};

template <int NB, typename O>
__global__ void __launch_bounds__(kWideWarps * 32, 4) SkinnyWideKernel(const WideArgs a) {
  extern __shared__ __align__(16) unsigned char wide_smem[];
  __shared__ int s_last;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, c = lane % 4;
  int seg = 0;
#pragma unroll
  for (int s = 1; s < kSkinnyMaxSegments; ++s) seg += s < a.count && blockIdx.x >= a.first_block[s];
  const int splits = a.splits[seg];
  const int64_t local = static_cast<int64_t>(blockIdx.x) - a.first_block[seg];
  const int64_t tile = local / splits;
  const int ks = static_cast<int>(local % splits);
  const int64_t nout = a.nout[seg], in = a.in;
  const int64_t f0 = tile * kWideFeatures + warp * 16;
  const int64_t kbeg = ks * a.split_k[seg], kend = min(in, kbeg + a.split_k[seg]);
  const int rounds = static_cast<int>((kend - kbeg + kWideRoundK - 1) / kWideRoundK);
  __nv_bfloat16* xbuf = reinterpret_cast<__nv_bfloat16*>(wide_smem);
  const __nv_bfloat16* w = a.w[seg];
  const int64_t r_lo = min(f0 + g, nout - 1) * in + 8 * c, r_hi = min(f0 + g + 8, nout - 1) * in + 8 * c;
  uint4 a_lo[8], a_hi[8];
  auto load_w = [&](int r) {
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const int64_t k = kbeg + static_cast<int64_t>(r) * kWideRoundK + 32 * u;
      const bool ok = k + 8 * c < kend;
      a_lo[u] = ok ? LoadStream(w + r_lo + k) : make_uint4(0, 0, 0, 0);
      a_hi[u] = ok ? LoadStream(w + r_hi + k) : make_uint4(0, 0, 0, 0);
    }
  };
  auto load_x = [&](int r) {
    if (r >= rounds) return;
    __nv_bfloat16* dst = xbuf + (r & 1) * kWideXElems;
    const int64_t k0 = kbeg + static_cast<int64_t>(r) * kWideRoundK;
    constexpr int kChunks = kWideRoundK / 8;
#pragma unroll
    for (int i = 0; i < 32 * kChunks / (kWideWarps * 32); ++i) {
      const int id = threadIdx.x + kWideWarps * 32 * i, row = id / kChunks, ch = id % kChunks;
      const int64_t k = k0 + 8 * ch;
      const bool ok = row < a.n && k < kend;
      CpAsync16(SmemAddr(dst + row * kWideRowElems + 8 * ch), ok ? a.x + row * in + k : a.x, ok);
    }
  };
  load_w(0);  // W is a constant: its first round streams in while the previous kernel finishes
  PdlTrigger();
  PdlWait();  // x is the previous kernel's output; the workspace is free once it has finished
  load_x(0);
  CpAsyncCommit();
  float acc[NB][4] = {};
  for (int r = 0; r < rounds; ++r) {
    load_x(r + 1);
    CpAsyncCommit();
    CpAsyncWait<1>();  // round r's x
    __syncthreads();
    const __nv_bfloat16* xs = xbuf + (r & 1) * kWideXElems;
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      uint4 xb[NB];
#pragma unroll
      for (int j = 0; j < NB; ++j) {
        xb[j] = *reinterpret_cast<const uint4*>(xs + (8 * j + g) * kWideRowElems + 32 * u + 8 * c);
      }
#pragma unroll
      for (int j = 0; j < NB; ++j) {
        MmaBf16(acc[j], a_lo[u].x, a_hi[u].x, a_lo[u].y, a_hi[u].y, xb[j].x, xb[j].y);
        MmaBf16(acc[j], a_lo[u].z, a_hi[u].z, a_lo[u].w, a_hi[u].w, xb[j].z, xb[j].w);
      }
    }
    if (r + 1 < rounds) load_w(r + 1);
    __syncthreads();  // round r's x buffer is refilled at round r + 2
  }
  CpAsyncWait<0>();

  if (splits > 1) {
    const int64_t t = a.first_tile[seg] + tile;
    auto part = [&](int q) {
      return a.partials + a.first_part[seg] + ((tile * splits + q) * kWideWarps + warp) * (NB * 32) + lane;
    };
    float4* mine = part(ks);
#pragma unroll
    for (int j = 0; j < NB; ++j) mine[j * 32] = make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]);
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(a.counters + t, 1) == splits - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    float sum[NB][4] = {};
    for (int q = 0; q < splits; ++q) {
      const float4* pq = part(q);
#pragma unroll
      for (int j = 0; j < NB; ++j) {
        const float4 v = q == ks ? make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]) : __ldcg(pq + j * 32);
        sum[j][0] += v.x;
        sum[j][1] += v.y;
        sum[j][2] += v.z;
        sum[j][3] += v.w;
      }
    }
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[j][i] = sum[j][i];
    if (threadIdx.x == 0) a.counters[t] = 0;  // for the next launch
  }
  O* out = static_cast<O*>(a.out[seg]);
  // C fragment of n-tile j: [0], [1] are feature g, x rows 8j + 2c and 8j + 2c + 1; [2], [3]
  // feature g + 8.
#pragma unroll
  for (int j = 0; j < NB; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = 8 * j + 2 * c + (i & 1);
      const int64_t o = f0 + g + (i >= 2 ? 8 : 0);
      if (r < a.n && o < nout) Store(out + r * nout + o, acc[j][i]);
    }
}

// Splits of K for a weight of `tiles` 64-feature tiles and `rounds` kWideRoundK-wide parts of K:
// about two CTAs per SM, at most eight splits. A function of the weight's shape (and the GPU)
// only, so a weight's result does not depend on the other weights of its launch.
int WideSplits(int64_t tiles, int64_t rounds) {
  const int64_t s = std::min<int64_t>({(2 * NumSms() + tiles - 1) / tiles, kWideMaxSplits, rounds});
  return static_cast<int>(std::max<int64_t>(1, s));
}

template <int NB, typename O>
cudaError_t LaunchWideNb(const WideArgs& a, cudaStream_t stream) {
  return LaunchPdl(SkinnyWideKernel<NB, O>, dim3(static_cast<unsigned>(a.first_block[a.count])),
                   dim3(kWideWarps * 32), kWideSmem, stream, a);
}

// Fills the split plan of `a` (segments, w, out, nout set) and launches.
template <typename O>
cudaError_t LaunchWide(WideArgs& a, const SkinnyWorkspace& ws, cudaStream_t stream) {
  const int64_t units = (a.in + kWideRoundK - 1) / kWideRoundK;
  const int nb = (a.n + 7) / 8;
  int64_t partials = 0, tiles_split = 0;
  for (int s = 0; s < a.count; ++s) {
    const int64_t tiles = (a.nout[s] + kWideFeatures - 1) / kWideFeatures;
    int sp = WideSplits(tiles, units);
    const int64_t per = (units + sp - 1) / sp;
    sp = static_cast<int>((units + per - 1) / per);  // no empty split
    a.splits[s] = sp;
    a.split_k[s] = per * kWideRoundK;
    if (sp > 1) {
      partials += tiles * sp * kWideWarps * nb * 32;
      tiles_split += tiles;
    }
  }
  const bool fits = ws.partials != nullptr && ws.counters != nullptr &&
                    static_cast<size_t>(partials) * sizeof(float4) <= ws.partial_bytes && tiles_split <= ws.counter_count;
  int64_t t = 0, p = 0;
  for (int s = 0; s < a.count; ++s) {
    const int64_t tiles = (a.nout[s] + kWideFeatures - 1) / kWideFeatures;
    if (!fits) {
      a.splits[s] = 1;
      a.split_k[s] = units * kWideRoundK;
    }
    a.first_tile[s] = t;
    a.first_part[s] = p;
    if (a.splits[s] > 1) {
      t += tiles;
      p += tiles * a.splits[s] * kWideWarps * nb * 32;
    }
    a.first_block[s + 1] = a.first_block[s] + tiles * a.splits[s];
  }
  a.partials = static_cast<float4*>(ws.partials);
  a.counters = ws.counters;
  if (a.first_block[a.count] > (int64_t{1} << 31) - 1) return cudaErrorInvalidConfiguration;
  switch (nb) {
    case 2: return LaunchWideNb<2, O>(a, stream);
    case 3: return LaunchWideNb<3, O>(a, stream);
    default: return LaunchWideNb<4, O>(a, stream);
  }
}

// ---------------------------------------------------------------------------------------------
// The stream form (9..kSkinnyStreamMaxRows rows). The wide form keeps each warp's W in registers:
// a round in flight per warp, and with K split for occupancy most CTAs have one or two rounds, so
// the stream pauses at every round (bench/gpu/e2e/NOTES.md, session 14). Here one producer thread
// streams W and x through a four-stage shared-memory ring with TMA: per stage one 128-feature x
// 64-K box of W (16 KB) and one 64-row x 64-K box of x (rows past n and K past `in` arrive as
// zeros), 128-byte swizzled so that the eight row addresses of an ldmatrix hit eight bank groups,
// completing on the stage's mbarrier. The producer runs up to four stages ahead of the consumer
// warpgroup, which multiplies each stage with wgmma straight from shared memory (two m64 tiles of
// features, n = 16, 32 or 64 rows). A CTA owns 128 features and a K range of whole 64-wide stages. K is split
// over up to kStreamMaxSplits CTAs (about two CTAs per SM for each weight), with the wide form's
// workspace protocol: each split stores an fp32 partial, and the last to arrive adds them in split
// order and writes out. The producer issues the first stages of W (constants) before PdlWait, so
// in a decode step the weight stream starts while the previous kernel finishes. (A first version
// with one 128-byte bulk copy per row piece ran at ~20% of the copy ceiling: bulk copies that
// small are issued at about one per 30 cycles per SM; NOTES.md, session 15.)
constexpr int kStreamWarps = 4;                             // consumer warps
constexpr int kStreamThreads = (kStreamWarps + 1) * 32;     // and one producer warp
constexpr int kStreamFeatures = 32 * kStreamWarps;          // per CTA
constexpr int kStreamKc = 64;                               // K per stage: one 128-byte swizzle row
constexpr int kStreamStages = 4;
constexpr int kStreamXRows = static_cast<int>(kSkinnyStreamMaxRows);
constexpr int kStreamWBytes = kStreamFeatures * kStreamKc * 2;  // 16 KB
constexpr int kStreamXBytes = kStreamXRows * kStreamKc * 2;     // 8 KB
constexpr int kStreamStageBytes = kStreamWBytes + kStreamXBytes;
constexpr int kStreamSmem = 1024 + kStreamStages * kStreamStageBytes + 2 * kStreamStages * 8;  // + alignment
constexpr int kStreamMaxSplits = 16;
static_assert(2 * (kStreamSmem + 1024) <= 232448, "two CTAs per SM");
static_assert(kStreamWBytes % 1024 == 0 && kStreamXBytes % 1024 == 0, "swizzled boxes 1024-byte aligned");

struct StreamArgs {
  CUtensorMap wmap[kSkinnyMaxSegments];  // {in, nout} of each weight, box {64, 128}
  CUtensorMap xmap;                      // {in, n}, box {64, 64}
  int64_t in = 0;
  int n = 0;
  int count = 0;
  void* out[kSkinnyMaxSegments] = {};
  int64_t nout[kSkinnyMaxSegments] = {};
  int64_t first_block[kSkinnyMaxSegments + 1] = {};  // CTAs: tiles x splits per segment
  int64_t first_tile[kSkinnyMaxSegments] = {};       // arrival counters of split segments
  int64_t first_part[kSkinnyMaxSegments] = {};       // their partials (float4 units)
  int splits[kSkinnyMaxSegments] = {};
  int split_chunks[kSkinnyMaxSegments] = {};  // 64-wide K stages per split
  float4* partials = nullptr;
  int* counters = nullptr;
};

using attn_detail::FenceRegs;
using attn_detail::MakeSmemDesc;
using attn_detail::WgmmaCommit;
using attn_detail::WgmmaFence;
using attn_detail::WgmmaWait;

template <int N>
__device__ __forceinline__ void WgmmaSS(float (&d)[N / 2], uint64_t da, uint64_t db) {
  if constexpr (N == 16) {
    attn_detail::WgmmaSS_N16(d, da, db, 1);
  } else if constexpr (N == 32) {
    attn_detail::WgmmaSS_N32(d, da, db, 1);
  } else {
    static_assert(N == 64, "n 16, 32 or 64");
    attn_detail::WgmmaSS_N64(d, da, db, 1);
  }
}

__device__ __forceinline__ void ConsumerSync() {
  asm volatile("bar.sync 1, %0;\n" ::"n"(kStreamWarps * 32) : "memory");
}

template <int NB, typename O>
__global__ void __launch_bounds__(kStreamThreads, 2) SkinnyStreamKernel(const __grid_constant__ StreamArgs a) {
  extern __shared__ __align__(1024) unsigned char stream_smem[];
  __shared__ int s_last;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, c = lane % 4;
  int seg = 0;
#pragma unroll
  for (int s = 1; s < kSkinnyMaxSegments; ++s) seg += s < a.count && blockIdx.x >= a.first_block[s];
  const int splits = a.splits[seg];
  const int64_t local = static_cast<int64_t>(blockIdx.x) - a.first_block[seg];
  const int64_t tile = local / splits;
  const int ks = static_cast<int>(local % splits);
  const int64_t nout = a.nout[seg];
  const int chunks = static_cast<int>((a.in + kStreamKc - 1) / kStreamKc);
  const int ch0 = ks * a.split_chunks[seg];
  const int nch = min(chunks, ch0 + a.split_chunks[seg]) - ch0;  // >= 1: the plan has no empty split
  const int64_t ft0 = tile * kStreamFeatures;
  const uint32_t base = (SmemAddr(stream_smem) + 1023) & ~1023u;
  const uint32_t full = base + kStreamStages * kStreamStageBytes, empty = full + 8 * kStreamStages;
  if (threadIdx.x == 0) {
#pragma unroll
    for (int st = 0; st < kStreamStages; ++st) {
      MbarInit(full + 8 * st, 1);               // the producer's expect_tx arrival
      MbarInit(empty + 8 * st, kStreamWarps);   // one arrival per consumer warp
    }
  }
  __syncthreads();
  PdlTrigger();

  if (warp == kStreamWarps) {  // the producer warp: one thread issues every copy
    if (lane == 0) {
      const CUtensorMap* wm = &a.wmap[seg];
      const int f = static_cast<int>(ft0);
      const int pro = min(nch, kStreamStages);
      for (int ch = 0; ch < pro; ++ch) {
        MbarArriveExpectTx(full + 8 * ch, kStreamStageBytes);
        TmaLoad2d(base + ch * kStreamStageBytes, wm, (ch0 + ch) * kStreamKc, f, full + 8 * ch);
      }
      PdlWait();  // x is the previous kernel's output
      for (int ch = 0; ch < pro; ++ch) {
        TmaLoad2d(base + ch * kStreamStageBytes + kStreamWBytes, &a.xmap, (ch0 + ch) * kStreamKc, 0, full + 8 * ch);
      }
      for (int ch = kStreamStages; ch < nch; ++ch) {
        const int st = ch % kStreamStages;
        MbarWait(empty + 8 * st, ((ch / kStreamStages) - 1) & 1);
        MbarArriveExpectTx(full + 8 * st, kStreamStageBytes);
        TmaLoad2d(base + st * kStreamStageBytes, wm, (ch0 + ch) * kStreamKc, f, full + 8 * st);
        TmaLoad2d(base + st * kStreamStageBytes + kStreamWBytes, &a.xmap, (ch0 + ch) * kStreamKc, 0, full + 8 * st);
      }
    }
    return;
  }

  PdlWait();  // the workspace and the outputs are free once the previous kernel has finished
  // The four consumer warps are one warpgroup: per stage and 16-wide K step, one wgmma per 64
  // features (A: W's box, B: x's box, both K-major and swizzled), accumulating [64 features][8 NB
  // rows] each. Stage ch's wgmmas are left in flight while stage ch + 1's are issued; the stage is
  // released once they have completed.
  constexpr int kN = 8 * NB;
  float acc[2][4 * NB];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int i = 0; i < 4 * NB; ++i) acc[mt][i] = 0.f;
  for (int ch = 0; ch < nch; ++ch) {
    const int st = ch % kStreamStages;
    MbarWait(full + 8 * st, (ch / kStreamStages) & 1);
    const uint32_t sw = base + st * kStreamStageBytes, sx = sw + kStreamWBytes;
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kStreamKc / 16; ++kk) {
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        WgmmaSS<kN>(acc[mt], MakeSmemDesc(sw + mt * 64 * 128 + kk * 32, 16, 1024), MakeSmemDesc(sx + kk * 32, 16, 1024));
      }
    }
    WgmmaCommit();
    WgmmaWait<1>();  // the previous stage's wgmmas are done (the accumulators are not touched here)
    if (ch > 0 && lane == 0) MbarArrive(empty + 8 * ((ch - 1) % kStreamStages));
  }
  WgmmaWait<0>();
  FenceRegs(acc[0]);
  FenceRegs(acc[1]);

  if (splits > 1) {
    const int64_t t = a.first_tile[seg] + tile;
    auto part = [&](int q) {
      return a.partials + a.first_part[seg] + ((tile * splits + q) * kStreamWarps + warp) * (2 * NB * 32) + lane;
    };
    float4* mine = part(ks);
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int j = 0; j < NB; ++j) {
        mine[(mt * NB + j) * 32] =
            make_float4(acc[mt][4 * j], acc[mt][4 * j + 1], acc[mt][4 * j + 2], acc[mt][4 * j + 3]);
      }
    __threadfence();
    ConsumerSync();
    if (threadIdx.x == 0) s_last = atomicAdd(a.counters + t, 1) == splits - 1;
    ConsumerSync();
    if (!s_last) return;
    __threadfence();
    // The partials are added in split order (this CTA's own from its registers, which hold the
    // bits it stored). kU splits' loads are issued before their adds: about 16 loads in flight
    // per thread instead of one split's 2 NB, one L2 round trip per kU splits.
    constexpr int kU = NB <= 2 ? 4 : NB <= 4 ? 2 : 1;
    float sum[2][4 * NB] = {};
    for (int q0 = 0; q0 < splits; q0 += kU) {
      float4 v[kU][2][NB];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int q = q0 + u;
        const float4* pq = part(q < splits ? q : ks);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int j = 0; j < NB; ++j) {
            v[u][mt][j] = q == ks || q >= splits
                              ? make_float4(acc[mt][4 * j], acc[mt][4 * j + 1], acc[mt][4 * j + 2], acc[mt][4 * j + 3])
                              : __ldcg(pq + (mt * NB + j) * 32);
          }
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (q0 + u >= splits) break;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int j = 0; j < NB; ++j) {
            sum[mt][4 * j] += v[u][mt][j].x;
            sum[mt][4 * j + 1] += v[u][mt][j].y;
            sum[mt][4 * j + 2] += v[u][mt][j].z;
            sum[mt][4 * j + 3] += v[u][mt][j].w;
          }
      }
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int i = 0; i < 4 * NB; ++i) acc[mt][i] = sum[mt][i];
    if (threadIdx.x == 0) a.counters[t] = 0;  // for the next launch
  }
  O* out = static_cast<O*>(a.out[seg]);
  // wgmma's accumulator of features mt * 64 + [0, 64): warp w holds features 16 w + g (elements
  // 4 j, 4 j + 1: x rows 8 j + 2 c and 8 j + 2 c + 1) and 16 w + g + 8 (4 j + 2, 4 j + 3).
  const int64_t f0 = ft0 + warp * 16;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = 8 * j + 2 * c + (i & 1);
        const int64_t o = f0 + mt * 64 + g + (i >= 2 ? 8 : 0);
        if (r < a.n && o < nout) Store(out + r * nout + o, acc[mt][4 * j + i]);
      }
}

// Splits of K for a weight of `tiles` 128-feature tiles, `chunks` 64-wide stages of K and `nb`
// n-tiles: about one CTA per SM (each CTA's fixed cost, the merge of the splits among it, is
// what limits the short ones), at least two stages a split, at most kStreamMaxSplits, and partials
// within a third of the workspace (so that the three weights of a launch fit). A function of the weight's shape, the
// row count, the workspace size and the GPU only, so a weight's result does not depend on the
// other weights of its launch.
int StreamSplits(int64_t tiles, int64_t chunks, int nb, size_t workspace_bytes) {
  const int64_t per_split = tiles * kStreamWarps * 2 * nb * 32 * static_cast<int64_t>(sizeof(float4));
  const int64_t by_ws = static_cast<int64_t>(workspace_bytes / kSkinnyMaxSegments) / per_split;
  const int64_t s =
      std::min<int64_t>({(NumSms() + tiles - 1) / tiles, kStreamMaxSplits, std::max<int64_t>(1, chunks / 2), by_ws});
  return static_cast<int>(std::max<int64_t>(1, s));
}

template <int NB, typename O>
cudaError_t LaunchStreamNb(const StreamArgs& a, cudaStream_t stream) {
  const cudaError_t e =
      cudaFuncSetAttribute(SkinnyStreamKernel<NB, O>, cudaFuncAttributeMaxDynamicSharedMemorySize, kStreamSmem);
  if (e != cudaSuccess) return e;
  return LaunchPdl(SkinnyStreamKernel<NB, O>, dim3(static_cast<unsigned>(a.first_block[a.count])),
                   dim3(kStreamThreads), kStreamSmem, stream, a);
}

template <typename O>
cudaError_t LaunchStream(StreamArgs& a, const SkinnyWorkspace& ws, cudaStream_t stream) {
  const int64_t chunks = (a.in + kStreamKc - 1) / kStreamKc;
  const int nb = a.n <= 16 ? 2 : a.n <= 32 ? 4 : 8;  // n-tiles of 8 rows: wgmma n = 16, 32 or 64
  int64_t partials = 0, tiles_split = 0;
  for (int s = 0; s < a.count; ++s) {
    const int64_t tiles = (a.nout[s] + kStreamFeatures - 1) / kStreamFeatures;
    int sp = StreamSplits(tiles, chunks, nb, ws.partial_bytes);
    const int64_t per = (chunks + sp - 1) / sp;
    sp = static_cast<int>((chunks + per - 1) / per);  // no empty split
    a.splits[s] = sp;
    a.split_chunks[s] = static_cast<int>(per);
    if (sp > 1) {
      partials += tiles * sp * kStreamWarps * 2 * nb * 32;
      tiles_split += tiles;
    }
  }
  const bool fits = ws.partials != nullptr && ws.counters != nullptr &&
                    static_cast<size_t>(partials) * sizeof(float4) <= ws.partial_bytes && tiles_split <= ws.counter_count;
  int64_t t = 0, p = 0;
  for (int s = 0; s < a.count; ++s) {
    const int64_t tiles = (a.nout[s] + kStreamFeatures - 1) / kStreamFeatures;
    if (!fits) {
      a.splits[s] = 1;
      a.split_chunks[s] = static_cast<int>(chunks);
    }
    a.first_tile[s] = t;
    a.first_part[s] = p;
    if (a.splits[s] > 1) {
      t += tiles;
      p += tiles * a.splits[s] * kStreamWarps * 2 * nb * 32;
    }
    a.first_block[s + 1] = a.first_block[s] + tiles * a.splits[s];
  }
  a.partials = static_cast<float4*>(ws.partials);
  a.counters = ws.counters;
  if (a.first_block[a.count] > (int64_t{1} << 31) - 1) return cudaErrorInvalidConfiguration;
  switch (nb) {
    case 2: return LaunchStreamNb<2, O>(a, stream);
    case 4: return LaunchStreamNb<4, O>(a, stream);
    default: return LaunchStreamNb<8, O>(a, stream);
  }
}

}  // namespace

bool SkinnyGemmApplies(const void* x, const void* w, const void* out, DType out_type, int64_t n, int64_t in,
                       int64_t out_features) {
  const auto a16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const size_t osize = out_type == DType::kF32 ? 4 : 2;
  return n >= 1 && n <= kSkinnyMaxRows && in > 0 && in % 8 == 0 && out_features > 0 && a16(x) && a16(w) &&
         reinterpret_cast<uintptr_t>(out) % osize == 0 && (out_type == DType::kF32 || out_type == DType::kBF16);
}

absl::Status LaunchSkinnyGemmMany(const void* x, int64_t n, int64_t in, absl::Span<const SkinnyOutput> outs,
                                  DType out_type, cudaStream_t stream, SkinnyWarps warps, const SkinnyWorkspace& ws) {
  if (outs.empty() || outs.size() > static_cast<size_t>(kSkinnyMaxSegments)) {
    return absl::InvalidArgumentError(absl::StrCat("skinny GEMM: 1..", kSkinnyMaxSegments, " weights, got ",
                                                   outs.size()));
  }
  SkinnyArgs a;
  a.x = static_cast<const __nv_bfloat16*>(x);
  a.in = in;
  a.count = static_cast<int>(outs.size());
  for (int s = 0; s < a.count; ++s) {
    const SkinnyOutput& o = outs[static_cast<size_t>(s)];
    if (!SkinnyGemmApplies(x, o.w, o.out, out_type, n, in, o.out_features)) {
      return absl::InvalidArgumentError(absl::StrCat("skinny GEMM: n=", n, " in=", in, " out=", o.out_features, " (",
                                                     DTypeStr(out_type),
                                                     ") needs 1..", kSkinnyMaxRows,
                                                     " rows, in % 8 == 0 and 16-byte aligned x and w"));
    }
    a.w[s] = static_cast<const __nv_bfloat16*>(o.w);
    a.out[s] = o.out;
    a.nout[s] = o.out_features;
    a.first_block[s + 1] = a.first_block[s] + (o.out_features + kRows - 1) / kRows;
  }
  if (a.first_block[a.count] > (int64_t{1} << 31) - 1) {
    return absl::InvalidArgumentError("skinny GEMM: too many features");
  }
  if (n > kSkinnyNarrowMaxRows) {
    WideArgs wa;
    wa.x = a.x;
    wa.in = in;
    wa.n = static_cast<int>(n);
    wa.count = a.count;
    for (int s = 0; s < a.count; ++s) {
      wa.w[s] = a.w[s];
      wa.out[s] = a.out[s];
      wa.nout[s] = a.nout[s];
    }
    const cudaError_t e = out_type == DType::kF32 ? LaunchWide<float>(wa, ws, stream)
                                                  : LaunchWide<__nv_bfloat16>(wa, ws, stream);
    SQA_GPU_RETURN_IF_ERROR(e);
    return absl::OkStatus();
  }
  const cudaError_t e = out_type == DType::kF32 ? LaunchRows<float, false>(n, a, warps, stream)
                                                : LaunchRows<__nv_bfloat16, false>(n, a, warps, stream);
  SQA_GPU_RETURN_IF_ERROR(e);
  return absl::OkStatus();
}

absl::Status LaunchSkinnyGemm(const void* x, const void* w, void* out, DType out_type, int64_t n, int64_t in,
                              int64_t out_features, cudaStream_t stream, SkinnyWarps warps, const SkinnyWorkspace& ws) {
  const SkinnyOutput o{w, out, out_features};
  return LaunchSkinnyGemmMany(x, n, in, absl::MakeConstSpan(&o, 1), out_type, stream, warps, ws);
}

absl::Status LaunchSkinnySwiGlu(const void* x, const void* w_gate, const void* w_up, void* out, int64_t n, int64_t in,
                                int64_t inter, cudaStream_t stream, SkinnyWarps warps) {
  if (n > kSkinnyNarrowMaxRows || !SkinnyGemmApplies(x, w_gate, out, DType::kBF16, n, in, inter) ||
      reinterpret_cast<uintptr_t>(w_up) % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("skinny SwiGLU: n=", n, " in=", in, " inter=", inter,
                                                   " needs 1..", kSkinnyNarrowMaxRows,
                                                   " rows, in % 8 == 0 and 16-byte aligned x and weights"));
  }
  SkinnyArgs a;
  a.x = static_cast<const __nv_bfloat16*>(x);
  a.in = in;
  a.count = 1;
  a.w[0] = static_cast<const __nv_bfloat16*>(w_gate);
  a.w_up = static_cast<const __nv_bfloat16*>(w_up);
  a.out[0] = out;
  a.nout[0] = inter;
  a.first_block[1] = (inter + kRows - 1) / kRows;
  SQA_GPU_RETURN_IF_ERROR((LaunchRows<__nv_bfloat16, true>(n, a, warps, stream)));
  return absl::OkStatus();
}

bool SkinnyStreamApplies(const void* x, const void* w, const void* out, DType out_type, int64_t n, int64_t in,
                         int64_t out_features) {
  const auto a16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const size_t osize = out_type == DType::kF32 ? 4 : 2;
  // TMA: 16-byte aligned bases and row strides, coordinates within int32.
  return n >= 1 && n <= kSkinnyStreamMaxRows && in > 0 && in % 8 == 0 && in < (int64_t{1} << 31) && out_features > 0 &&
         out_features < (int64_t{1} << 31) && a16(x) && a16(w) && reinterpret_cast<uintptr_t>(out) % osize == 0 &&
         (out_type == DType::kF32 || out_type == DType::kBF16);
}

bool SkinnyStreamPreferred(int64_t n, int64_t in, absl::Span<const int64_t> out_features, const SkinnyWorkspace& ws) {
  if (n <= kSkinnyNarrowMaxRows || n > kSkinnyStreamPreferredMaxRows || in <= 0 || out_features.empty()) return false;
  const int64_t chunks = (in + kStreamKc - 1) / kStreamKc;
  const int nb = n <= 16 ? 2 : 4;
  int64_t ctas = 0;
  for (const int64_t of : out_features) {
    if (of <= 0) return false;
    const int64_t tiles = (of + kStreamFeatures - 1) / kStreamFeatures;
    const int splits = StreamSplits(tiles, chunks, nb, ws.partial_bytes);
    if (splits > kStreamPreferredMaxSplits) return false;
    ctas += tiles * splits;
  }
  return 2 * ctas >= 3 * static_cast<int64_t>(NumSms());
}

namespace {
// A 2-d tensor map over a row-major bf16 [rows, in] matrix with boxes of box_rows x 64 columns,
// 128-byte swizzled; out-of-range rows and columns read as zeros.
absl::Status EncodeRows(CUtensorMap* m, const void* base, int64_t in, int64_t rows, uint32_t box_rows) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = TensorMapEncoder();
  if (encode == nullptr) return absl::InternalError("skinny GEMM (stream form): the driver has no cuTensorMapEncodeTiled");
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(in), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(in) * 2};
  const cuuint32_t box[2] = {kStreamKc, box_rows};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult r = encode(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims, strides, box,
                            elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    return absl::InternalError(absl::StrCat("skinny GEMM (stream form): cuTensorMapEncodeTiled failed (CUresult ", r, ")"));
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status LaunchSkinnyStream(const void* x, int64_t n, int64_t in, absl::Span<const SkinnyOutput> outs,
                                DType out_type, cudaStream_t stream, const SkinnyWorkspace& ws) {
  if (outs.empty() || outs.size() > static_cast<size_t>(kSkinnyMaxSegments)) {
    return absl::InvalidArgumentError(absl::StrCat("skinny GEMM (stream form): 1..", kSkinnyMaxSegments,
                                                   " weights, got ", outs.size()));
  }
  StreamArgs a;
  a.in = in;
  a.n = static_cast<int>(n);
  a.count = static_cast<int>(outs.size());
  for (int s = 0; s < a.count; ++s) {
    const SkinnyOutput& o = outs[static_cast<size_t>(s)];
    if (!SkinnyStreamApplies(x, o.w, o.out, out_type, n, in, o.out_features)) {
      return absl::InvalidArgumentError(absl::StrCat("skinny GEMM (stream form): n=", n, " in=", in, " out=",
                                                     o.out_features, " (", DTypeStr(out_type), ") needs 1..",
                                                     kSkinnyStreamMaxRows,
                                                     " rows, in % 8 == 0 and 16-byte aligned x and w"));
    }
    SQA_RETURN_IF_ERROR(EncodeRows(&a.wmap[s], o.w, in, o.out_features, kStreamFeatures));
    a.out[s] = o.out;
    a.nout[s] = o.out_features;
  }
  SQA_RETURN_IF_ERROR(EncodeRows(&a.xmap, x, in, n, kStreamXRows));
  const cudaError_t e = out_type == DType::kF32 ? LaunchStream<float>(a, ws, stream)
                                                : LaunchStream<__nv_bfloat16>(a, ws, stream);
  SQA_GPU_RETURN_IF_ERROR(e);
  return absl::OkStatus();
}

}  // namespace sqa::cuda
