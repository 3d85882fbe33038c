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
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "workers/engine/cuda/cuda_check.h"
#include "workers/engine/cuda/device_sms.h"
#include "workers/engine/cuda/pdl.cuh"
#include "workers/engine/cuda/skinny_gemm.h"

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

}  // namespace

bool SkinnyGemmApplies(const void* x, const void* w, const void* out, DType out_type, int64_t n, int64_t in,
                       int64_t out_features) {
  const auto a16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const size_t osize = out_type == DType::kF32 ? 4 : 2;
  return n >= 1 && n <= kSkinnyMaxRows && in > 0 && in % 8 == 0 && out_features > 0 && a16(x) && a16(w) &&
         reinterpret_cast<uintptr_t>(out) % osize == 0 && (out_type == DType::kF32 || out_type == DType::kBF16);
}

absl::Status LaunchSkinnyGemmMany(const void* x, int64_t n, int64_t in, absl::Span<const SkinnyOutput> outs,
                                  DType out_type, cudaStream_t stream, SkinnyWarps warps) {
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
                                                     ") needs 1..8 rows, in % 8 == 0 and 16-byte aligned x and w"));
    }
    a.w[s] = static_cast<const __nv_bfloat16*>(o.w);
    a.out[s] = o.out;
    a.nout[s] = o.out_features;
    a.first_block[s + 1] = a.first_block[s] + (o.out_features + kRows - 1) / kRows;
  }
  if (a.first_block[a.count] > (int64_t{1} << 31) - 1) {
    return absl::InvalidArgumentError("skinny GEMM: too many features");
  }
  const cudaError_t e = out_type == DType::kF32 ? LaunchRows<float, false>(n, a, warps, stream)
                                                : LaunchRows<__nv_bfloat16, false>(n, a, warps, stream);
  SQA_GPU_RETURN_IF_ERROR(e);
  return absl::OkStatus();
}

absl::Status LaunchSkinnyGemm(const void* x, const void* w, void* out, DType out_type, int64_t n, int64_t in,
                              int64_t out_features, cudaStream_t stream, SkinnyWarps warps) {
  const SkinnyOutput o{w, out, out_features};
  return LaunchSkinnyGemmMany(x, n, in, absl::MakeConstSpan(&o, 1), out_type, stream, warps);
}

absl::Status LaunchSkinnySwiGlu(const void* x, const void* w_gate, const void* w_up, void* out, int64_t n, int64_t in,
                                int64_t inter, cudaStream_t stream, SkinnyWarps warps) {
  if (!SkinnyGemmApplies(x, w_gate, out, DType::kBF16, n, in, inter) ||
      reinterpret_cast<uintptr_t>(w_up) % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("skinny SwiGLU: n=", n, " in=", in, " inter=", inter,
                                                   " needs 1..8 rows, in % 8 == 0 and 16-byte aligned x and weights"));
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

}  // namespace sqa::cuda
