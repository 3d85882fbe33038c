// The SM count of the current CUDA device, for launch shapes that fill the GPU.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>

namespace sqa::cuda {

// Queried once per device (a launch shape that fills one GPU may not fill another); 132 (an
// H100/H200) if the query fails.
inline int NumSms() {
  constexpr int kMaxDevices = 64;
  constexpr int kFallback = 132;
  static std::atomic<int> cache[kMaxDevices];  // 0 = not queried yet
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) {
    cudaGetLastError();
    return kFallback;
  }
  if (const int c = cache[dev].load(std::memory_order_relaxed); c > 0) return c;
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
    cudaGetLastError();
    n = kFallback;
  }
  cache[dev].store(n, std::memory_order_relaxed);
  return n;
}

}  // namespace sqa::cuda
