// Skinny GEMM (see skinny_gemm.h). A decode step multiplies one to eight activation rows by each
// weight matrix: the work is reading W once, at the memory's rate. Each CTA owns 16 output
// features (rows of W) and its 8 warps split K; a warp walks its 32-wide K blocks with mma.sync
// m16n8k16, W as A (16 features) and x as B (its 8 columns are the x rows, zero past n).
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
#include "workers/engine/cuda/pdl.cuh"
#include "workers/engine/cuda/skinny_gemm.h"

namespace sqa::cuda {
namespace {

constexpr int kWarps = 8;     // warps per CTA, splitting K
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

template <int NR, typename O>
__global__ void __launch_bounds__(kWarps * 32) SkinnyGemmKernel(const __nv_bfloat16* __restrict__ x,
                                                                 const __nv_bfloat16* __restrict__ w,
                                                                 O* __restrict__ out, int64_t in, int64_t nout) {
  __shared__ float red[kWarps][32][4];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, c = lane % 4;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const __nv_bfloat16* w_lo = w + std::min(o0 + g, nout - 1) * in + 8 * c;
  const __nv_bfloat16* w_hi = w + std::min(o0 + g + 8, nout - 1) * in + 8 * c;
  const bool x_row = g < NR;
  const __nv_bfloat16* xr = x + (x_row ? g : 0) * in + 8 * c;
  const int64_t nkb = (in + 31) / 32;  // 32-wide K blocks; this lane's chunk of block kb is valid
  const int64_t chunks = in / 8;       // when 4 kb + c < chunks (in is a multiple of 8)

  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  uint4 a_lo[kUnroll], a_hi[kUnroll];
  auto load_w = [&](int64_t kb0) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t kb = kb0 + static_cast<int64_t>(u) * kWarps;
      const bool ok = kb < nkb && 4 * kb + c < chunks;
      a_lo[u] = ok ? LoadStream(w_lo + 32 * kb) : make_uint4(0, 0, 0, 0);
      a_hi[u] = ok ? LoadStream(w_hi + 32 * kb) : make_uint4(0, 0, 0, 0);
    }
  };
  load_w(warp);
  PdlTrigger();
  PdlWait();  // x is the previous kernel's output
  for (int64_t kb0 = warp; kb0 < nkb; kb0 += static_cast<int64_t>(kUnroll) * kWarps) {
    uint4 b[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t kb = kb0 + static_cast<int64_t>(u) * kWarps;
      const bool ok = x_row && kb < nkb && 4 * kb + c < chunks;
      b[u] = ok ? __ldg(reinterpret_cast<const uint4*>(xr + 32 * kb)) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      MmaBf16(acc, a_lo[u].x, a_hi[u].x, a_lo[u].y, a_hi[u].y, b[u].x, b[u].y);
      MmaBf16(acc, a_lo[u].z, a_hi[u].z, a_lo[u].w, a_hi[u].w, b[u].z, b[u].w);
    }
    const int64_t next = kb0 + static_cast<int64_t>(kUnroll) * kWarps;
    if (next < nkb) load_w(next);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) red[warp][lane][i] = acc[i];
  __syncthreads();
  if (warp == 0) {
    float s[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int v = 0; v < kWarps; ++v)
#pragma unroll
      for (int i = 0; i < 4; ++i) s[i] += red[v][lane][i];
    // C fragment: s[0], s[1] are feature g, x rows 2c and 2c + 1; s[2], s[3] feature g + 8.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = 2 * c + (i & 1);
      const int64_t o = o0 + g + (i >= 2 ? 8 : 0);
      if (r < NR && o < nout) Store(out + r * nout + o, s[i]);
    }
  }
}

template <int NR, typename O>
cudaError_t Launch(const void* x, const void* w, void* out, int64_t in, int64_t nout, cudaStream_t stream) {
  const int64_t blocks = (nout + kRows - 1) / kRows;
  return LaunchPdl(SkinnyGemmKernel<NR, O>, dim3(static_cast<unsigned>(blocks)), dim3(kWarps * 32), 0, stream,
                   static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(w), static_cast<O*>(out),
                   in, nout);
}

template <typename O>
cudaError_t LaunchRows(int64_t n, const void* x, const void* w, void* out, int64_t in, int64_t nout,
                       cudaStream_t stream) {
  switch (n) {
    case 1: return Launch<1, O>(x, w, out, in, nout, stream);
    case 2: return Launch<2, O>(x, w, out, in, nout, stream);
    case 3: return Launch<3, O>(x, w, out, in, nout, stream);
    case 4: return Launch<4, O>(x, w, out, in, nout, stream);
    case 5: return Launch<5, O>(x, w, out, in, nout, stream);
    case 6: return Launch<6, O>(x, w, out, in, nout, stream);
    case 7: return Launch<7, O>(x, w, out, in, nout, stream);
    default: return Launch<8, O>(x, w, out, in, nout, stream);
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

absl::Status LaunchSkinnyGemm(const void* x, const void* w, void* out, DType out_type, int64_t n, int64_t in,
                              int64_t out_features, cudaStream_t stream) {
  if (!SkinnyGemmApplies(x, w, out, out_type, n, in, out_features)) {
    return absl::InvalidArgumentError(absl::StrCat("skinny GEMM: n=", n, " in=", in, " out=", out_features, " (",
                                                   DTypeStr(out_type),
                                                   ") needs 1..8 rows, in % 8 == 0 and 16-byte aligned x and w"));
  }
  const cudaError_t e = out_type == DType::kF32 ? LaunchRows<float>(n, x, w, out, in, out_features, stream)
                                                : LaunchRows<__nv_bfloat16>(n, x, w, out, in, out_features, stream);
  SQA_GPU_RETURN_IF_ERROR(e);
  return absl::OkStatus();
}

}  // namespace sqa::cuda
