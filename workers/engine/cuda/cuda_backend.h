// The CUDA backend: bf16 activations and weights, fp32 accumulation, cuBLASLt GEMMs, fused
// elementwise kernels, paged KV cache in device memory, and the attention kernels of
// attention.h. This header needs no CUDA headers, so backend.cc includes it in every build that
// has SQA_HAVE_CUDA.
//
// Threading: like every Backend, one engine thread drives an instance. All work goes to one
// non-blocking stream owned by the backend; calls return after enqueueing, except CopyToHost,
// Synchronize and UploadWeight (which wait for the copy they need).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "workers/engine/backend.h"

namespace sqa {

// Number of CUDA devices usable by this process; 0 (not an error) when there is no GPU, no driver
// or the driver is too old, so a CUDA build still runs on a CPU-only machine.
int CudaDeviceCount();

// Makes a backend on GPU options.gpu_index. FAILED_PRECONDITION when the index names no device;
// INTERNAL when CUDA or cuBLASLt fails to start.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const BackendOptions& options);

}  // namespace sqa
