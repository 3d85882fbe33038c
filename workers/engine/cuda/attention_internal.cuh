// Device helpers shared by the attention kernels (private to attention_*.cu; not a public API).
// mma.sync m16n8k16 bf16 fragments, ldmatrix, cp.async, and the 16-byte-chunk XOR swizzle used
// for every [rows][head_dim] bf16 tile in shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "workers/engine/cuda/attention.h"
#include "workers/engine/cuda/cp_async.cuh"
#include "workers/engine/cuda/device_sms.h"

namespace sqa::cuda::attn_detail {

// The wgmma prefill kernel (attention_prefill_wgmma.cu); `p` is already validated.
absl::Status LaunchPrefillWgmma(const PrefillParams& p, cudaStream_t stream);

using bf16 = __nv_bfloat16;

inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;

inline absl::Status LaunchStatus(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    return absl::InternalError(absl::StrCat(what, " launch failed: ", cudaGetErrorName(e), ": ", cudaGetErrorString(e)));
  }
  return absl::OkStatus();
}

inline absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorName(e), ": ", cudaGetErrorString(e)));
  }
  return absl::OkStatus();
}

// Element offset of 16-byte chunk `chunk` of row `row` in a [rows][D] bf16 tile. The chunk index
// is XORed with row % 8 so that the 8 row addresses of one ldmatrix hit 8 different bank groups.
template <int D>
__device__ __forceinline__ int Swz(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

using ::sqa::cuda::CpAsync16;
using ::sqa::cuda::CpAsyncCommit;
using ::sqa::cuda::CpAsyncWait;
using ::sqa::cuda::SmemAddr;

using ::sqa::cuda::Ldsm4;
using ::sqa::cuda::Ldsm4T;

// c += a * b for one m16n8k16 tile (bf16 inputs, f32 accumulators).
__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// 2^x on the special-function unit (flush-to-zero; exp2(-inf) = 0).
__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float QuadMax(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  return x;
}
__device__ __forceinline__ float QuadSum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}

// The paged pool's layout: block blk holds its block_size tokens token-major, [block_size][Hkv][D],
// so a token's KV heads sit side by side as in the contiguous [kv_len][Hkv][D] form. Element
// offset of the key at offset `off` of block blk, KV head kvh.
template <int D>
__device__ __forceinline__ int64_t PagedOffset(int64_t blk, int block_size, int64_t off, int hkv, int kvh) {
  return ((blk * block_size + off) * hkv + kvh) * D;
}

// Element offset of key position p of KV head kvh: paged when table != null, else contiguous.
template <int D>
__device__ __forceinline__ int64_t KvOffset(const int32_t* table, int block_size, int hkv, int kvh, int64_t p) {
  if (table != nullptr) {
    const int64_t bi = p / block_size;
    return PagedOffset<D>(table[bi], block_size, p - bi * block_size, hkv, kvh);
  }
  return (p * hkv + kvh) * D;
}

// Merges `parts` partials (o_s, lse_s) for one (row, head): writes o (length dh) and returns L.
// lse is natural log; exp via exp2.
template <typename T>
__device__ __forceinline__ float ToF32(T v);
template <>
__device__ __forceinline__ float ToF32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float ToF32<bf16>(bf16 v) {
  return __bfloat162float(v);
}

}  // namespace sqa::cuda::attn_detail
