// The CPU backend: fp32 activations and KV cache, OpenBLAS GEMMs, OpenMP-parallel elementwise
// ops and flash-style attention (cpu/attention.h). f32 weights are used in place from the mapped
// model file; bf16/f16 weights are converted to f32 once at upload.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "workers/engine/backend.h"

namespace sqa {

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const BackendOptions& options);

}  // namespace sqa
