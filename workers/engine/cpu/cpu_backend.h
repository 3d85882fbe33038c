// The CPU backend: fp32 activations and KV cache, OpenBLAS GEMMs, OpenMP-parallel elementwise
// ops and flash-style attention (cpu/attention.h). f32 weights are used in place from the mapped
// model file; bf16/f16 weights are converted to f32 once at upload.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "workers/engine/backend.h"

namespace sqa {

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const BackendOptions& options);

// OpenBLAS 0.3.21 (Debian 12) does not recognise recent Xeons and silently uses its SSE3
// "Prescott" kernels (~4x slower sgemm). This re-runs OpenBLAS's core selection as SkylakeX when
// that happened on an AVX-512 CPU and OPENBLAS_CORETYPE is unset; otherwise it does nothing.
// Idempotent and thread-safe; CreateCpuBackend calls it. Programs that call cblas directly
// (benchmarks) should call it first.
void EnsureOpenBlasKernels();

}  // namespace sqa
