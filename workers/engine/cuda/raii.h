// RAII owners for the CUDA handles the backend uses: streams (always non-blocking, so nothing
// ever serializes with the legacy default stream), events, device memory, pinned host memory,
// the cuBLASLt handle, and the current device. Each is move-only; the destructor releases the
// handle and ignores errors (there is nobody to report them to; a sticky context error shows up
// at the next checked call). Creation returns absl::Status through SQA_GPU_RETURN_IF_ERROR.
// None is thread-safe; a backend owns them and drives them from one thread.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>

#include "absl/status/statusor.h"
#include "services/common/status.h"
#include "workers/engine/cuda/cuda_check.h"

namespace sqa::cuda {

// Makes `device` current for the scope and restores the previous one.
class ScopedDevice {
 public:
  explicit ScopedDevice(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    status_ = GpuErrorToStatus(cudaSetDevice(device), "cudaSetDevice", __FILE__, __LINE__);
  }
  ~ScopedDevice() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;
  const absl::Status& status() const { return status_; }

 private:
  int previous_ = -1;
  absl::Status status_;
};

// A handle holder: T is a pointer-like handle, Deleter a stateless callable.
template <typename T, typename Deleter>
class UniqueHandle {
 public:
  UniqueHandle() = default;
  explicit UniqueHandle(T h) : h_(h) {}
  ~UniqueHandle() { reset(); }
  UniqueHandle(UniqueHandle&& o) noexcept : h_(std::exchange(o.h_, T{})) {}
  UniqueHandle& operator=(UniqueHandle&& o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, T{});
    }
    return *this;
  }
  UniqueHandle(const UniqueHandle&) = delete;
  UniqueHandle& operator=(const UniqueHandle&) = delete;
  T get() const { return h_; }
  explicit operator bool() const { return h_ != T{}; }
  void reset() {
    if (h_ != T{}) Deleter()(h_);
    h_ = T{};
  }

 private:
  T h_{};
};

struct StreamDeleter {
  void operator()(cudaStream_t s) const { cudaStreamDestroy(s); }
};
struct EventDeleter {
  void operator()(cudaEvent_t e) const { cudaEventDestroy(e); }
};
struct LtDeleter {
  void operator()(cublasLtHandle_t h) const { cublasLtDestroy(h); }
};

class CudaStream : public UniqueHandle<cudaStream_t, StreamDeleter> {
 public:
  using UniqueHandle::UniqueHandle;
  // A non-blocking stream: it never synchronizes implicitly with the legacy default stream.
  static absl::StatusOr<CudaStream> Create() {
    cudaStream_t s = nullptr;
    SQA_GPU_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    return CudaStream(s);
  }
};

class CudaEvent : public UniqueHandle<cudaEvent_t, EventDeleter> {
 public:
  using UniqueHandle::UniqueHandle;
  // Timing off by default: cheaper to record and to wait on.
  static absl::StatusOr<CudaEvent> Create(bool timing = false) {
    cudaEvent_t e = nullptr;
    SQA_GPU_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming));
    return CudaEvent(e);
  }
};

class LtHandle : public UniqueHandle<cublasLtHandle_t, LtDeleter> {
 public:
  using UniqueHandle::UniqueHandle;
  static absl::StatusOr<LtHandle> Create() {
    cublasLtHandle_t h = nullptr;
    SQA_GPU_RETURN_IF_ERROR(cublasLtCreate(&h));
    return LtHandle(h);
  }
};

// Device memory from cudaMalloc (long-lived: weights, KV cache). Synchronous free.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  ~DeviceMemory() { reset(); }
  DeviceMemory(DeviceMemory&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceMemory& operator=(DeviceMemory&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  static absl::StatusOr<DeviceMemory> Allocate(size_t bytes) {
    DeviceMemory m;
    if (bytes == 0) return m;
    SQA_GPU_RETURN_IF_ERROR(cudaMalloc(&m.p_, bytes));
    m.n_ = bytes;
    return m;
  }
  void* get() const { return p_; }
  size_t size() const { return n_; }
  void reset() {
    if (p_) cudaFree(p_);
    p_ = nullptr;
    n_ = 0;
  }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

// Page-locked host memory (cudaMallocHost): what async copies need to be truly asynchronous.
class PinnedHostMemory {
 public:
  PinnedHostMemory() = default;
  ~PinnedHostMemory() { reset(); }
  PinnedHostMemory(PinnedHostMemory&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  PinnedHostMemory& operator=(PinnedHostMemory&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  PinnedHostMemory(const PinnedHostMemory&) = delete;
  PinnedHostMemory& operator=(const PinnedHostMemory&) = delete;

  static absl::StatusOr<PinnedHostMemory> Allocate(size_t bytes) {
    PinnedHostMemory m;
    if (bytes == 0) return m;
    SQA_GPU_RETURN_IF_ERROR(cudaMallocHost(&m.p_, bytes));
    m.n_ = bytes;
    return m;
  }
  void* get() const { return p_; }
  size_t size() const { return n_; }
  void reset() {
    if (p_) cudaFreeHost(p_);
    p_ = nullptr;
    n_ = 0;
  }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace sqa::cuda
