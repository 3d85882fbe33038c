// Fused elementwise kernels of the CUDA backend (see elementwise.h). These are memory-bound and
// small next to the GEMMs and attention; they aim for coalesced access and one pass over the data,
// not for peak bandwidth. Runtime dtypes are dispatched to template parameters in one place
// (DispatchAct) per launcher.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "services/common/status.h"
#include "workers/engine/cuda/cuda_check.h"
#include "workers/engine/cuda/elementwise.h"
#include "workers/engine/cuda/pdl.cuh"

namespace sqa::cuda {
namespace {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float ToF(float v) { return v; }
__device__ __forceinline__ float ToF(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ToF(__half v) { return __half2float(v); }
template <typename T>
__device__ __forceinline__ T FromF(float v);
template <>
__device__ __forceinline__ float FromF<float>(float v) { return v; }
template <>
__device__ __forceinline__ bf16 FromF<bf16>(float v) { return __float2bfloat16_rn(v); }

constexpr int kThreads = 256;

// 16-byte vectors of 8 bf16: the fast path of the memory-bound kernels when sizes and pointers
// allow it (every activation of the model does: rows are multiples of 8 elements).
struct alignas(16) Bf16x8 {
  __nv_bfloat162 h[4];
};
__device__ __forceinline__ void Unpack(const Bf16x8& v, float (&f)[8]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(v.h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}
__device__ __forceinline__ Bf16x8 Pack(const float (&f)[8]) {
  Bf16x8 v;
#pragma unroll
  for (int i = 0; i < 4; ++i) v.h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  return v;
}
bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int GridFor(int64_t count) {
  int64_t blocks = (count + kThreads - 1) / kThreads;
  return static_cast<int>(std::clamp<int64_t>(blocks, 1, int64_t{1} << 20));
}


absl::Status BadType(const char* op, DType t) {
  return absl::InvalidArgumentError(absl::StrCat(op, ": unsupported dtype ", DTypeStr(t), " on the CUDA backend"));
}

// Calls f(T{}) with T = float or bf16 according to t.
template <typename F>
absl::Status DispatchAct(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::kF32:
      return f(float{});
    case DType::kBF16:
      return f(bf16{});
    default:
      return BadType(op, t);
  }
}

// ---- convert --------------------------------------------------------------------------------
template <typename S, typename D>
__global__ void ConvertKernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    dst[i] = FromF<D>(ToF(src[i]));
}

// ---- embed ----------------------------------------------------------------------------------
template <typename S, typename D>
__global__ void EmbedKernel(const S* __restrict__ table, const int32_t* __restrict__ tokens, int64_t n,
                            int64_t d, D* __restrict__ out) {
  PdlEnter();  // launched with LaunchPdl (pdl.cuh)
  const int64_t total = n * d;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t row = i / d, col = i - row * d;
    out[i] = FromF<D>(ToF(table[int64_t{tokens[row]} * d + col]));
  }
}

// ---- RMSNorm: one block per row, fp32 sum of squares, then scale ----------------------------
// The sum of v over the block (every thread gets it); blockDim.x a multiple of 32, at most 1024.
__device__ __forceinline__ float BlockSum(float v) {
  __shared__ float partial[32];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int nwarps = blockDim.x / 32;
    v = lane < nwarps ? partial[lane] : 0.f;
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0) partial[0] = v;
  }
  __syncthreads();
  return partial[0];
}

template <typename X, typename W, typename D>
__global__ void RmsNormKernel(const X* __restrict__ x, const W* __restrict__ w, int64_t d, float eps,
                              D* __restrict__ out) {
  PdlEnter();  // launched with LaunchPdl (pdl.cuh)
  const int64_t row = blockIdx.x;
  const X* xr = x + row * d;
  D* orow = out + row * d;
  float ss = 0.f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float v = ToF(xr[j]);
    ss += v * v;
  }
  ss = BlockSum(ss);
  const float inv = rsqrtf(ss / static_cast<float>(d) + eps);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) orow[j] = FromF<D>(ToF(xr[j]) * inv * ToF(w[j]));
}

// ---- residual add ---------------------------------------------------------------------------
template <typename X, typename Y>
__global__ void AddKernel(X* __restrict__ x, const Y* __restrict__ y, int64_t count) {
  PdlEnter();  // launched with LaunchPdl (pdl.cuh)
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x)
    x[i] = FromF<X>(ToF(x[i]) + ToF(y[i]));
}

// ---- RoPE: one thread per (token, rotation pair), looping over heads so that each angle's
// sincos is computed once per token.
template <typename T>
__global__ void RopeKernel(T* __restrict__ x, int64_t n, int64_t heads, int64_t dh,
                           const int32_t* __restrict__ positions, double theta, double inv_scale) {
  PdlEnter();  // launched with LaunchPdl (pdl.cuh)
  const int64_t half = dh / 2;
  const int64_t total = n * half;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = i / half, j = i - t * half;
    const double inv_freq = pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(dh));
    const double angle = static_cast<double>(positions[t]) * inv_scale * inv_freq;
    double sd, cd;
    sincos(angle, &sd, &cd);
    const float s = static_cast<float>(sd), c = static_cast<float>(cd);
    T* row = x + t * heads * dh;
    for (int64_t h = 0; h < heads; ++h) {
      T* p = row + h * dh;
      const float x1 = ToF(p[j]), x2 = ToF(p[j + half]);
      p[j] = FromF<T>(x1 * c - x2 * s);
      p[j + half] = FromF<T>(x2 * c + x1 * s);
    }
  }
}

// ---- SwiGLU ---------------------------------------------------------------------------------
template <typename T>
__global__ void SwiGluKernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out,
                             int64_t count) {
  PdlEnter();  // launched with LaunchPdl (pdl.cuh)
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x) {
    const float g = ToF(gate[i]);
    out[i] = FromF<T>(g / (1.f + __expf(-g)) * ToF(up[i]));
  }
}

// ---- GatherRows: byte rows copied in 4-byte words when aligned ------------------------------
template <typename W>
__global__ void GatherKernel(const W* __restrict__ x, const int64_t* __restrict__ rows, int64_t m,
                             int64_t row_words, W* __restrict__ out) {
  PdlEnter();  // launched with LaunchPdl (pdl.cuh)
  const int64_t total = m * row_words;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / row_words, c = i - r * row_words;
    out[i] = x[rows[r] * row_words + c];
  }
}

// ---- WriteKv --------------------------------------------------------------------------------
template <typename T>
__global__ void WriteKvKernel(const T* __restrict__ k, const T* __restrict__ v, const int64_t* __restrict__ slots,
                              int64_t n, int64_t hkv, int64_t dh, bf16* __restrict__ kc,
                              bf16* __restrict__ vc) {
  PdlEnter();  // launched with LaunchPdl (pdl.cuh)
  const int64_t per_tok = hkv * dh;
  const int64_t total = n * per_tok;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = i / per_tok, r = i - t * per_tok;
    const int64_t slot = slots[t];
    if (slot < 0) continue;
    // Token-major blocks ([block_size][Hkv][dh]): the token's row is at slot * hkv * dh.
    const int64_t dst = slot * per_tok + r;
    kc[dst] = FromF<bf16>(ToF(k[i]));
    vc[dst] = FromF<bf16>(ToF(v[i]));
  }
}


// ---- vectorized bf16 variants (count and row lengths multiples of 8, 16-byte aligned) --------
__global__ void AddBf16x8Kernel(Bf16x8* __restrict__ x, const Bf16x8* __restrict__ y, int64_t vecs) {
  PdlEnter();  // launched with LaunchPdl (pdl.cuh)
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < vecs; i += int64_t{gridDim.x} * blockDim.x) {
    float a[8], b[8];
    Unpack(x[i], a);
    Unpack(y[i], b);
#pragma unroll
    for (int j = 0; j < 8; ++j) a[j] += b[j];
    x[i] = Pack(a);
  }
}

__global__ void SwiGluBf16x8Kernel(const Bf16x8* __restrict__ gate, const Bf16x8* __restrict__ up,
                                   Bf16x8* __restrict__ out, int64_t vecs) {
  PdlEnter();  // launched with LaunchPdl (pdl.cuh)
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < vecs; i += int64_t{gridDim.x} * blockDim.x) {
    float g[8], u[8];
    Unpack(gate[i], g);
    Unpack(up[i], u);
#pragma unroll
    for (int j = 0; j < 8; ++j) g[j] = g[j] / (1.f + __expf(-g[j])) * u[j];
    out[i] = Pack(g);
  }
}

// out = RmsNorm(x) on 8-wide bf16 vectors, one block per row. kAdd: first x += y (rounded to bf16
// and stored), and the norm is of the rounded sums (AddBf16x8 + RmsNormBf16x8 in one pass);
// without kAdd, x is only read and y is unused. The norm weights are constants: a thread's first
// kPreW vectors of them are loaded before PdlWait, so that in a decode step (one block, a row of
// a few KB) their load overlaps the kernel before instead of following the block's reduction.
constexpr int kPreW = 2;
template <typename W, bool kAdd>
__global__ void RmsNormBf16x8Kernel(Bf16x8* __restrict__ x, const Bf16x8* __restrict__ y, const W* __restrict__ w,
                                    int64_t dv, float eps, Bf16x8* __restrict__ out) {
  float wf[kPreW][8];
#pragma unroll
  for (int i = 0; i < kPreW; ++i) {
    const int64_t j = threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
#pragma unroll
    for (int k = 0; k < 8; ++k) wf[i][k] = j < dv ? ToF(w[j * 8 + k]) : 0.f;
  }
  PdlEnter();  // launched with LaunchPdl (pdl.cuh)
  const int64_t row = blockIdx.x;
  Bf16x8* xr = x + row * dv;
  Bf16x8* orow = out + row * dv;
  float ss = 0.f;
  for (int64_t j = threadIdx.x; j < dv; j += blockDim.x) {
    float a[8];
    Unpack(xr[j], a);
    if constexpr (kAdd) {
      float b[8];
      Unpack(y[row * dv + j], b);
#pragma unroll
      for (int k = 0; k < 8; ++k) a[k] += b[k];
      const Bf16x8 sum = Pack(a);
      xr[j] = sum;
      Unpack(sum, a);
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) ss += a[k] * a[k];
  }
  ss = BlockSum(ss);
  const float inv = rsqrtf(ss / static_cast<float>(dv * 8) + eps);
  int i = 0;
  for (int64_t j = threadIdx.x; j < dv; j += blockDim.x, ++i) {
    float f[8];
    Unpack(xr[j], f);  // with kAdd, this thread's own store above
    if (i < kPreW) {
#pragma unroll
      for (int k = 0; k < 8; ++k) f[k] = f[k] * inv * wf[i][k];
    } else {
#pragma unroll
      for (int k = 0; k < 8; ++k) f[k] = f[k] * inv * ToF(w[j * 8 + k]);
    }
    orow[j] = Pack(f);
  }
}

// One thread per 8 consecutive elements of one (token, head) row; bf16 source.
__global__ void WriteKvBf16x8Kernel(const Bf16x8* __restrict__ k, const Bf16x8* __restrict__ v,
                                    const int64_t* __restrict__ slots, int64_t n, int64_t hkv, int64_t dv,
                                    Bf16x8* __restrict__ kc, Bf16x8* __restrict__ vc) {
  PdlEnter();  // launched with LaunchPdl (pdl.cuh)
  const int64_t per_tok = hkv * dv;
  const int64_t total = n * per_tok;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = i / per_tok, r = i - t * per_tok;
    const int64_t slot = slots[t];
    if (slot < 0) continue;
    const int64_t dst = slot * per_tok + r;  // token-major blocks, as above
    kc[dst] = k[i];
    vc[dst] = v[i];
  }
}

// RoPE, one CTA per token (head_dim a multiple of 16, at most 2 * kRopeMaxHalf): the token's
// cos/sin pairs are computed once (angle in double, as the CPU backend does) into shared memory,
// then the CTA rotates every head's 8-pair groups with 16-byte loads of both halves. A decode
// token thus runs heads x groups threads at once, not the groups alone with the heads in a loop.
// The positions (and slots) are host-staged constants, never a predecessor kernel's output, so
// the first token's angles are computed before PdlWait, while the kernel before (the q/k/v
// projection) finishes. With `slots` (RopeKvStore), the rotated k heads and v are also stored in
// the paged cache at the token's slot (WriteKv's layout; slot < 0: not stored), so that the cache
// write needs no kernel of its own.
constexpr int kRopeMaxHalf = 256;
constexpr int kRopeThreads = 128;
__global__ void __launch_bounds__(kRopeThreads) RopeBf16x8Kernel(__nv_bfloat16* __restrict__ x, int64_t heads,
                                                                 __nv_bfloat16* __restrict__ x2, int64_t heads2,
                                                                 int64_t n, int64_t dh,
                                                                 const int32_t* __restrict__ positions, double theta,
                                                                 double inv_scale, const Bf16x8* __restrict__ v,
                                                                 const int64_t* __restrict__ slots,
                                                                 __nv_bfloat16* __restrict__ kc,
                                                                 Bf16x8* __restrict__ vc) {
  // x: [n, heads, dh]; x2 (may be null, heads2 = 0): [n, heads2, dh], rotated with the same angles.
  // With slots: x2 is k, v is [n, heads2, dh], kc / vc the layer's caches.
  __shared__ float sc[kRopeMaxHalf], ss[kRopeMaxHalf];
  const int half = static_cast<int>(dh / 2), groups = half / 8;
  const int items = static_cast<int>(heads + heads2) * groups;
  const int64_t per_tok = heads2 * dh;  // cache elements of one token
  auto angles = [&](int64_t t) {
    const double p = static_cast<double>(positions[t]) * inv_scale;
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
      const double inv_freq = pow(theta, -2.0 * static_cast<double>(j) / static_cast<double>(dh));
      double sd, cd;
      sincos(p * inv_freq, &sd, &cd);
      ss[j] = static_cast<float>(sd);
      sc[j] = static_cast<float>(cd);
    }
  };
  PdlTrigger();  // launched with LaunchPdl (pdl.cuh)
  int64_t t = blockIdx.x;
  int64_t slot = -1;
  if (t < n) {
    angles(t);
    if (slots != nullptr) slot = slots[t];
  }
  PdlWait();  // q and k (and v) are the predecessor's output
  for (; t < n; t += gridDim.x) {
    if (t != blockIdx.x) {
      angles(t);
      if (slots != nullptr) slot = slots[t];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < items; i += blockDim.x) {
      const int h = i / groups, j0 = (i - h * groups) * 8;
      __nv_bfloat16* head = h < heads ? x + (t * heads + h) * dh : x2 + (t * heads2 + (h - heads)) * dh;
      Bf16x8* lo = reinterpret_cast<Bf16x8*>(head + j0);
      Bf16x8* hi = reinterpret_cast<Bf16x8*>(head + j0 + half);
      float a[8], b[8], ra[8], rb[8];
      Unpack(*lo, a);
      Unpack(*hi, b);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const float c = sc[j0 + k], s = ss[j0 + k];
        ra[k] = a[k] * c - b[k] * s;
        rb[k] = b[k] * c + a[k] * s;
      }
      const Bf16x8 plo = Pack(ra), phi = Pack(rb);
      *lo = plo;
      *hi = phi;
      if (h >= heads && slot >= 0) {
        __nv_bfloat16* ch = kc + slot * per_tok + (h - heads) * dh;
        *reinterpret_cast<Bf16x8*>(ch + j0) = plo;
        *reinterpret_cast<Bf16x8*>(ch + j0 + half) = phi;
      }
    }
    if (slot >= 0) {
      const int64_t pv = per_tok / 8;
      for (int64_t i = threadIdx.x; i < pv; i += blockDim.x) vc[slot * pv + i] = v[t * pv + i];
    }
    __syncthreads();  // the next token overwrites sc / ss
  }
}

}  // namespace

absl::Status LaunchConvert(const void* src, DType src_type, void* dst, DType dst_type, size_t n,
                           cudaStream_t stream) {
  if (n == 0) return absl::OkStatus();
  const int64_t count = static_cast<int64_t>(n);
  auto with_src = [&](auto d) -> absl::Status {
    using D = decltype(d);
    switch (src_type) {
      case DType::kF32:
        ConvertKernel<<<GridFor(count), kThreads, 0, stream>>>(static_cast<const float*>(src), static_cast<D*>(dst), count);
        break;
      case DType::kBF16:
        ConvertKernel<<<GridFor(count), kThreads, 0, stream>>>(static_cast<const bf16*>(src), static_cast<D*>(dst), count);
        break;
      case DType::kF16:
        ConvertKernel<<<GridFor(count), kThreads, 0, stream>>>(static_cast<const __half*>(src), static_cast<D*>(dst), count);
        break;
      default:
        return BadType("Convert", src_type);
    }
    SQA_GPU_RETURN_IF_LAUNCH_ERROR("ConvertKernel");
    return absl::OkStatus();
  };
  return DispatchAct(dst_type, "Convert", with_src);
}

absl::Status LaunchEmbed(const void* table, DType table_type, const int32_t* tokens, int64_t n, int64_t d, void* out,
                         DType out_type, cudaStream_t stream) {
  if (n == 0) return absl::OkStatus();
  return DispatchAct(table_type, "Embed", [&](auto s) -> absl::Status {
    using S = decltype(s);
    return DispatchAct(out_type, "Embed", [&](auto o) -> absl::Status {
      using D = decltype(o);
      SQA_GPU_RETURN_IF_ERROR(LaunchPdl(EmbedKernel<S, D>, GridFor(n * d), kThreads, 0, stream,
                                        static_cast<const S*>(table), tokens, n, d, static_cast<D*>(out)));
      return absl::OkStatus();
    });
  });
}

absl::Status LaunchRmsNorm(const void* x, DType x_type, const void* w, DType w_type, int64_t n, int64_t d, float eps,
                           void* out, DType out_type, cudaStream_t stream) {
  if (n == 0) return absl::OkStatus();
  if (n > (int64_t{1} << 31) - 1) return absl::InvalidArgumentError("RmsNorm: too many rows");
  const int threads = d >= 1024 ? 512 : (d >= 256 ? 256 : 128);
  if (x_type == DType::kBF16 && out_type == DType::kBF16 && d % 8 == 0 && Aligned16(x) && Aligned16(out)) {
    const int vthreads = d >= 8192 ? 512 : (d >= 2048 ? 256 : 128);
    return DispatchAct(w_type, "RmsNorm", [&](auto ws) -> absl::Status {
      using W = decltype(ws);
      // Without the add the kernel only reads x.
      SQA_GPU_RETURN_IF_ERROR(LaunchPdl(RmsNormBf16x8Kernel<W, false>, static_cast<unsigned>(n), vthreads, 0, stream,
                                        const_cast<Bf16x8*>(static_cast<const Bf16x8*>(x)),
                                        static_cast<const Bf16x8*>(nullptr), static_cast<const W*>(w), d / 8, eps,
                                        static_cast<Bf16x8*>(out)));
      return absl::OkStatus();
    });
  }
  return DispatchAct(x_type, "RmsNorm", [&](auto xs) -> absl::Status {
    using X = decltype(xs);
    return DispatchAct(w_type, "RmsNorm", [&](auto ws) -> absl::Status {
      using W = decltype(ws);
      return DispatchAct(out_type, "RmsNorm", [&](auto os) -> absl::Status {
        using D = decltype(os);
        SQA_GPU_RETURN_IF_ERROR(LaunchPdl(RmsNormKernel<X, W, D>, static_cast<unsigned>(n), threads, 0, stream,
                                          static_cast<const X*>(x), static_cast<const W*>(w), d, eps,
                                          static_cast<D*>(out)));
        return absl::OkStatus();
      });
    });
  });
}

absl::Status LaunchAddRmsNorm(void* x, const void* y, DType type, const void* w, DType w_type, int64_t n, int64_t d,
                              float eps, void* out, cudaStream_t stream, bool* done) {
  *done = false;
  if (n == 0) {
    *done = true;
    return absl::OkStatus();
  }
  if (type != DType::kBF16 || d % 8 != 0 || !Aligned16(x) || !Aligned16(y) || !Aligned16(out) ||
      n > (int64_t{1} << 31) - 1) {
    return absl::OkStatus();
  }
  const int vthreads = d >= 8192 ? 512 : (d >= 2048 ? 256 : 128);
  return DispatchAct(w_type, "AddRmsNorm", [&](auto ws) -> absl::Status {
    using W = decltype(ws);
    SQA_GPU_RETURN_IF_ERROR(LaunchPdl(RmsNormBf16x8Kernel<W, true>, static_cast<unsigned>(n), vthreads, 0, stream,
                                      static_cast<Bf16x8*>(x), static_cast<const Bf16x8*>(y), static_cast<const W*>(w),
                                      d / 8, eps, static_cast<Bf16x8*>(out)));
    *done = true;
    return absl::OkStatus();
  });
}

absl::Status LaunchAddInPlace(void* x, DType x_type, const void* y, DType y_type, int64_t count, cudaStream_t stream) {
  if (count == 0) return absl::OkStatus();
  if (x_type == DType::kBF16 && y_type == DType::kBF16 && count % 8 == 0 && Aligned16(x) && Aligned16(y)) {
    SQA_GPU_RETURN_IF_ERROR(LaunchPdl(AddBf16x8Kernel, GridFor(count / 8), kThreads, 0, stream, static_cast<Bf16x8*>(x),
                                      static_cast<const Bf16x8*>(y), count / 8));
    return absl::OkStatus();
  }
  return DispatchAct(x_type, "AddInPlace", [&](auto xs) -> absl::Status {
    using X = decltype(xs);
    return DispatchAct(y_type, "AddInPlace", [&](auto ys) -> absl::Status {
      using Y = decltype(ys);
      SQA_GPU_RETURN_IF_ERROR(LaunchPdl(AddKernel<X, Y>, GridFor(count), kThreads, 0, stream, static_cast<X*>(x),
                                        static_cast<const Y*>(y), count));
      return absl::OkStatus();
    });
  });
}

absl::Status LaunchRopeQK(void* q, int64_t hq, void* k, int64_t hk, DType type, int64_t n, int64_t dh,
                          const int32_t* positions, double theta, double position_scale, cudaStream_t stream,
                          bool* done, const RopeKvStore* store) {
  *done = false;
  if (type != DType::kBF16 || dh % 16 != 0 || dh > 2 * kRopeMaxHalf || !Aligned16(q) || !Aligned16(k) ||
      !(position_scale > 0)) {
    return absl::OkStatus();
  }
  if (store != nullptr && (k == nullptr || hk == 0 || store->slots == nullptr || !Aligned16(store->v) ||
                           !Aligned16(store->k_cache) || !Aligned16(store->v_cache))) {
    return absl::OkStatus();
  }
  *done = true;
  if (n == 0 || hq + hk == 0) return absl::OkStatus();
  const int grid = static_cast<int>(std::min<int64_t>(n, int64_t{1} << 20));
  SQA_GPU_RETURN_IF_ERROR(LaunchPdl(
      RopeBf16x8Kernel, grid, kRopeThreads, 0, stream, static_cast<__nv_bfloat16*>(q), hq,
      static_cast<__nv_bfloat16*>(k), hk, n, dh, positions, theta, 1.0 / position_scale,
      store ? static_cast<const Bf16x8*>(store->v) : nullptr, store ? store->slots : nullptr,
      store ? static_cast<__nv_bfloat16*>(store->k_cache) : nullptr,
      store ? static_cast<Bf16x8*>(store->v_cache) : nullptr));
  return absl::OkStatus();
}

absl::Status LaunchRope(void* x, DType x_type, int64_t n, int64_t heads, int64_t dh, const int32_t* positions,
                        double theta, double position_scale, cudaStream_t stream) {
  if (n == 0 || heads == 0) return absl::OkStatus();
  if (dh % 2 != 0) return absl::InvalidArgumentError(absl::StrCat("Rope: head_dim ", dh, " is odd"));
  if (!(position_scale > 0)) return absl::InvalidArgumentError("Rope: position_scale must be > 0");
  bool done = false;  // the vector kernel, with no second tensor
  SQA_RETURN_IF_ERROR(
      LaunchRopeQK(x, heads, nullptr, 0, x_type, n, dh, positions, theta, position_scale, stream, &done));
  if (done) return absl::OkStatus();
  return DispatchAct(x_type, "Rope", [&](auto xs) -> absl::Status {
    using T = decltype(xs);
    SQA_GPU_RETURN_IF_ERROR(LaunchPdl(RopeKernel<T>, GridFor(n * dh / 2), kThreads, 0, stream, static_cast<T*>(x), n,
                                      heads, dh, positions, theta, 1.0 / position_scale));
    return absl::OkStatus();
  });
}

absl::Status LaunchSwiGlu(const void* gate, const void* up, void* out, DType type, int64_t count, cudaStream_t stream) {
  if (count == 0) return absl::OkStatus();
  if (type == DType::kBF16 && count % 8 == 0 && Aligned16(gate) && Aligned16(up) && Aligned16(out)) {
    SQA_GPU_RETURN_IF_ERROR(LaunchPdl(SwiGluBf16x8Kernel, GridFor(count / 8), kThreads, 0, stream,
                                      static_cast<const Bf16x8*>(gate), static_cast<const Bf16x8*>(up),
                                      static_cast<Bf16x8*>(out), count / 8));
    return absl::OkStatus();
  }
  return DispatchAct(type, "SwiGlu", [&](auto ts) -> absl::Status {
    using T = decltype(ts);
    SQA_GPU_RETURN_IF_ERROR(LaunchPdl(SwiGluKernel<T>, GridFor(count), kThreads, 0, stream, static_cast<const T*>(gate),
                                      static_cast<const T*>(up), static_cast<T*>(out), count));
    return absl::OkStatus();
  });
}

absl::Status LaunchGatherRows(const void* x, const int64_t* rows, int64_t m, int64_t row_bytes, void* out,
                              cudaStream_t stream) {
  if (m == 0 || row_bytes == 0) return absl::OkStatus();
  const bool words =
      row_bytes % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 4 == 0 && reinterpret_cast<uintptr_t>(out) % 4 == 0;
  if (words) {
    const int64_t rw = row_bytes / 4;
    SQA_GPU_RETURN_IF_ERROR(LaunchPdl(GatherKernel<uint32_t>, GridFor(m * rw), kThreads, 0, stream,
                                      static_cast<const uint32_t*>(x), rows, m, rw, static_cast<uint32_t*>(out)));
  } else {
    SQA_GPU_RETURN_IF_ERROR(LaunchPdl(GatherKernel<uint8_t>, GridFor(m * row_bytes), kThreads, 0, stream,
                                      static_cast<const uint8_t*>(x), rows, m, row_bytes, static_cast<uint8_t*>(out)));
  }
  return absl::OkStatus();
}

absl::Status LaunchWriteKv(const void* k, const void* v, DType kv_type, const int64_t* slots, int64_t n, int64_t hkv,
                           int64_t dh, int64_t block_size, void* k_cache, void* v_cache, cudaStream_t stream) {
  if (n == 0) return absl::OkStatus();
  if (block_size <= 0) return absl::InvalidArgumentError("WriteKv: block_size must be > 0");
  if (kv_type == DType::kBF16 && dh % 8 == 0 && Aligned16(k) && Aligned16(v) && Aligned16(k_cache) &&
      Aligned16(v_cache)) {
    SQA_GPU_RETURN_IF_ERROR(LaunchPdl(WriteKvBf16x8Kernel, GridFor(n * hkv * dh / 8), kThreads, 0, stream,
                                      static_cast<const Bf16x8*>(k), static_cast<const Bf16x8*>(v), slots, n, hkv,
                                      dh / 8, static_cast<Bf16x8*>(k_cache), static_cast<Bf16x8*>(v_cache)));
    return absl::OkStatus();
  }
  return DispatchAct(kv_type, "WriteKv", [&](auto ts) -> absl::Status {
    using T = decltype(ts);
    SQA_GPU_RETURN_IF_ERROR(LaunchPdl(WriteKvKernel<T>, GridFor(n * hkv * dh), kThreads, 0, stream,
                                      static_cast<const T*>(k), static_cast<const T*>(v), slots, n, hkv, dh,
                                      static_cast<bf16*>(k_cache), static_cast<bf16*>(v_cache)));
    return absl::OkStatus();
  });
}

}  // namespace sqa::cuda
