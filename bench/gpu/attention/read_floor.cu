// A read-only kernel for sqa-attn-bench's decode rows: it streams the same number of bytes as a
// decode launch, from DRAM, with every SM and no other work, so its time is what reading that
// much in one launch costs at that size (launch, ramp-up and tail included), which the copy
// ceiling of large transfers does not show for small calls.
#include "bench/gpu/attention/read_floor.h"

#include <cstdint>

namespace sqa::bench {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

__global__ void __launch_bounds__(kThreads) ReadFloorKernel(const uint4* __restrict__ a, const uint4* __restrict__ b,
                                                            size_t n16, unsigned* sink) {
  uint32_t acc = 0;
  const size_t stride = static_cast<size_t>(gridDim.x) * kThreads;
  size_t i = static_cast<size_t>(blockIdx.x) * kThreads + threadIdx.x;
  for (; i + (kUnroll - 1) * stride < n16; i += kUnroll * stride) {
    uint4 x[kUnroll], y[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      x[u] = __ldcs(a + i + u * stride);
      y[u] = __ldcs(b + i + u * stride);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) acc ^= x[u].x ^ x[u].y ^ x[u].z ^ x[u].w ^ y[u].x ^ y[u].y ^ y[u].z ^ y[u].w;
  }
  for (; i < n16; i += stride) {
    const uint4 x = __ldcs(a + i), y = __ldcs(b + i);
    acc ^= x.x ^ x.y ^ x.z ^ x.w ^ y.x ^ y.y ^ y.z ^ y.w;
  }
  // The sink keeps the loads alive; the condition is data-dependent and practically never true.
  if (acc == 0x9e3779b9u) atomicAdd(sink, 1u);
}

// Chunk i of the CTA's run is 16-byte chunk i % per_block of block table[i / per_block] (32-bit
// indices: the launcher takes fewer than 2^31 chunks).
__global__ void __launch_bounds__(kThreads) ReadFloorPagedKernel(const uint4* __restrict__ a, const uint4* __restrict__ b,
                                                                 const int32_t* __restrict__ table, uint32_t n16,
                                                                 uint32_t per_block, unsigned* sink) {
  uint32_t acc = 0;
  const uint32_t begin = static_cast<uint32_t>(uint64_t{n16} * blockIdx.x / gridDim.x);
  const uint32_t end = static_cast<uint32_t>(uint64_t{n16} * (blockIdx.x + 1) / gridDim.x);
  auto at = [&](uint32_t i) { return static_cast<int64_t>(table[i / per_block]) * per_block + i % per_block; };
  uint32_t i = begin + threadIdx.x;
  for (; i + (kUnroll - 1) * kThreads < end; i += kUnroll * kThreads) {
    uint4 x[kUnroll], y[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t o = at(i + u * kThreads);
      x[u] = __ldcs(a + o);
      y[u] = __ldcs(b + o);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) acc ^= x[u].x ^ x[u].y ^ x[u].z ^ x[u].w ^ y[u].x ^ y[u].y ^ y[u].z ^ y[u].w;
  }
  for (; i < end; i += kThreads) {
    const int64_t o = at(i);
    const uint4 x = __ldcs(a + o), y = __ldcs(b + o);
    acc ^= x.x ^ x.y ^ x.z ^ x.w ^ y.x ^ y.y ^ y.z ^ y.w;
  }
  if (acc == 0x9e3779b9u) atomicAdd(sink, 1u);
}

}  // namespace

cudaError_t LaunchReadFloorPaged(const void* a, const void* b, const int32_t* table, int64_t num_blocks,
                                 size_t block_bytes, unsigned* sink, int sms, int ctas_per_sm, cudaStream_t stream) {
  const int64_t per_block = static_cast<int64_t>(block_bytes / 16);
  const int64_t n16 = num_blocks * per_block;
  if (n16 == 0) return cudaSuccess;
  if (n16 >= (int64_t{1} << 31)) return cudaErrorInvalidValue;
  const int64_t want = (n16 + kThreads - 1) / kThreads;
  const int64_t cap = static_cast<int64_t>(ctas_per_sm) * sms;
  const unsigned blocks = static_cast<unsigned>(want < cap ? want : cap);
  ReadFloorPagedKernel<<<blocks, kThreads, 0, stream>>>(static_cast<const uint4*>(a), static_cast<const uint4*>(b),
                                                        table, static_cast<uint32_t>(n16),
                                                        static_cast<uint32_t>(per_block), sink);
  return cudaGetLastError();
}

cudaError_t LaunchReadFloor(const void* a, const void* b, size_t bytes, unsigned* sink, int sms, int ctas_per_sm,
                            cudaStream_t stream) {
  const size_t n16 = bytes / 16;
  if (n16 == 0) return cudaSuccess;
  // ctas_per_sm CTAs of 256 threads per SM (8: 2048 threads), each thread with 2 x 4 loads of 16
  // bytes in flight: 32 KB per CTA.
  const size_t want = (n16 + kThreads - 1) / kThreads;
  const size_t cap = static_cast<size_t>(ctas_per_sm) * sms;
  const unsigned blocks = static_cast<unsigned>(want < cap ? want : cap);
  ReadFloorKernel<<<blocks, kThreads, 0, stream>>>(static_cast<const uint4*>(a), static_cast<const uint4*>(b), n16,
                                                   sink);
  return cudaGetLastError();
}

}  // namespace sqa::bench
