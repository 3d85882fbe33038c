// One checker for every GPU library error type the CUDA backend sees (CUDA runtime, cuBLAS /
// cuBLASLt): each failure becomes absl INTERNAL with the call, the library's error text and the
// source location, so that a user sees "cudaMalloc(&p, bytes) failed: out of memory (2) at ..."
// rather than a bare code.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <string>



#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "workers/engine/model/tensor.h"

namespace sqa::cuda {

// DTypeName as a std::string (absl::StrCat here does not take std::string_view).
inline std::string DTypeStr(DType t) { return std::string(DTypeName(t)); }

inline absl::Status GpuErrorToStatus(cudaError_t e, const char* expr, const char* file, int line) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(expr, " failed: ", cudaGetErrorString(e), " (", cudaGetErrorName(e),
                                          ") at ", file, ":", line));
}

inline absl::Status GpuErrorToStatus(cublasStatus_t e, const char* expr, const char* file, int line) {
  if (e == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(expr, " failed: ", cublasLtGetStatusString(e), " (",
                                          cublasLtGetStatusName(e), ") at ", file, ":", line));
}

}  // namespace sqa::cuda

// Evaluates a CUDA runtime or cuBLAS(Lt) call; returns INTERNAL from the enclosing function on
// failure.
#define SQA_GPU_RETURN_IF_ERROR(expr)                                                       \
  do {                                                                                      \
    ::absl::Status sqa_gpu_status_ = ::sqa::cuda::GpuErrorToStatus((expr), #expr, __FILE__, __LINE__); \
    if (!sqa_gpu_status_.ok()) return sqa_gpu_status_;                                      \
  } while (0)

// After a kernel launch: picks up launch-configuration errors without synchronizing.
#define SQA_GPU_RETURN_IF_LAUNCH_ERROR(what)                                                \
  do {                                                                                      \
    ::absl::Status sqa_gpu_status_ =                                                        \
        ::sqa::cuda::GpuErrorToStatus(cudaGetLastError(), what, __FILE__, __LINE__);        \
    if (!sqa_gpu_status_.ok()) return sqa_gpu_status_;                                      \
  } while (0)
