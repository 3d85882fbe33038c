// The CUDA backend: bf16 activations and weights, fp32 accumulation, cuBLASLt GEMMs, fused
// elementwise kernels, paged KV cache in device memory, and the attention kernels of
// attention.h. This header needs no CUDA headers, so backend.cc includes it in every build that
// has SQA_HAVE_CUDA.
//
// Threading: like every Backend, one engine thread drives an instance. All work goes to one
// non-blocking stream owned by the backend; calls return after enqueueing, except CopyToHost,
// Synchronize and UploadWeight (which wait for the copy they need).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "workers/engine/backend.h"
#include "workers/engine/sampling.h"

namespace sqa {

// Number of CUDA devices usable by this process; 0 (not an error) when there is no GPU, no driver
// or the driver is too old, so a CUDA build still runs on a CPU-only machine.
int CudaDeviceCount();

// Makes a backend on GPU options.gpu_index. FAILED_PRECONDITION when the index names no device;
// INTERNAL when CUDA or cuBLASLt fails to start.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const BackendOptions& options);

// Samples one token per row of f32 logits [rows, vocab] held by a CUDA backend (e.g. the LM
// head's output) on the GPU, with the rule of sampling.h: row i uses params[i] and the uniform
// draw uniforms[i] = UniformFromSeed(params[i].seed, step_i). Returns SampleToken's result up to
// rounding (see cuda/sampling_kernels.h). Synchronizes the backend's stream. INVALID_ARGUMENT for
// a backend that is not CUDA, a shape mismatch, or invalid params.
absl::StatusOr<std::vector<SampledToken>> SampleOnCudaWithUniforms(Backend& backend, const TensorView& logits,
                                                                  absl::Span<const SamplingParams> params,
                                                                  absl::Span<const double> uniforms);

// The same with the draws computed from (seed, step) here (inline, so that this header's users,
// who link sqa_engine, provide UniformFromSeed).
inline absl::StatusOr<std::vector<SampledToken>> SampleOnCuda(Backend& backend, const TensorView& logits,
                                                              absl::Span<const SamplingParams> params,
                                                              absl::Span<const uint64_t> steps) {
  if (params.size() != steps.size()) {
    return absl::InvalidArgumentError("SampleOnCuda: params and steps differ in length");
  }
  std::vector<double> u(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    absl::Status st = ValidateSamplingParams(params[i]);
    if (!st.ok()) return st;
    u[i] = UniformFromSeed(params[i].seed, steps[i]);
  }
  return SampleOnCudaWithUniforms(backend, logits, params, u);
}

}  // namespace sqa
