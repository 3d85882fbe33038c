// Launchers of the CUDA backend's fused elementwise kernels. One shape for all: a host function
// taking device pointers, sizes, and the stream explicitly; asynchronous; returns INTERNAL when
// the launch fails and INVALID_ARGUMENT for a dtype it does not handle. Activations are f32 or
// bf16 (DType); math is fp32 inside. Pointers are device pointers unless a comment says host.
// Stateless; safe to call from any thread.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "workers/engine/model/tensor.h"

namespace sqa::cuda {

// dst[i] = dst_type(src[i]) for n elements; src f32/f16/bf16, dst f32 or bf16.
absl::Status LaunchConvert(const void* src, DType src_type, void* dst, DType dst_type, size_t n,
                           cudaStream_t stream);

// out[i, :] = table[tokens[i], :]; table [vocab, d] (bf16 or f32); tokens checked by the caller.
absl::Status LaunchEmbed(const void* table, DType table_type, const int32_t* tokens, int64_t n, int64_t d,
                         void* out, DType out_type, cudaStream_t stream);

// out = x * rsqrt(mean(x^2) + eps) * w, per row of x [n, d]; w [d] (f32 or bf16).
absl::Status LaunchRmsNorm(const void* x, DType x_type, const void* w, DType w_type, int64_t n, int64_t d,
                           float eps, void* out, DType out_type, cudaStream_t stream);

// x += y (bf16, rounded and stored), then out = RmsNorm(x) as LaunchRmsNorm: one kernel for both.
// Only the bf16 vector form (d % 8 == 0, 16-byte aligned x, y, out); false in *done otherwise, and
// the caller runs the two ops.
absl::Status LaunchAddRmsNorm(void* x, const void* y, DType type, const void* w, DType w_type, int64_t n, int64_t d,
                              float eps, void* out, cudaStream_t stream, bool* done);

// x += y elementwise (count elements); x and y each f32 or bf16.
absl::Status LaunchAddInPlace(void* x, DType x_type, const void* y, DType y_type, int64_t count,
                              cudaStream_t stream);

// HF rotate-half RoPE in place: x [n, heads, dh]; token i at positions[i] / position_scale;
// inv_freq_j = theta^(-2j/dh). Angles in double so long contexts keep full precision.
absl::Status LaunchRope(void* x, DType x_type, int64_t n, int64_t heads, int64_t dh, const int32_t* positions,
                        double theta, double position_scale, cudaStream_t stream);

// Where LaunchRopeQK also stores the rotated k and v: v [n, hk, dh] bf16, device slots (as
// LaunchWriteKv's), and one layer's bf16 caches.
struct RopeKvStore {
  const void* v = nullptr;
  const int64_t* slots = nullptr;
  void* k_cache = nullptr;
  void* v_cache = nullptr;
};

// LaunchRope on q [n, hq, dh] and k [n, hk, dh] (k may be null with hk = 0) in one kernel (bf16,
// dh % 16 == 0, aligned); false in *done when that does not apply (the caller then runs LaunchRope
// on each, which has a scalar kernel for the other cases). With `store`, the same kernel also
// does LaunchWriteKv(k after rotation, v); false in *done as well when that does not apply (k
// null, or v or a cache not 16-byte aligned).
absl::Status LaunchRopeQK(void* q, int64_t hq, void* k, int64_t hk, DType type, int64_t n, int64_t dh,
                          const int32_t* positions, double theta, double position_scale, cudaStream_t stream,
                          bool* done, const RopeKvStore* store = nullptr);

// out = silu(gate) * up over count elements.
absl::Status LaunchSwiGlu(const void* gate, const void* up, void* out, DType type, int64_t count,
                          cudaStream_t stream);

// out[i, :] = x[rows[i], :] for i < m; row_bytes per row (any dtype).
absl::Status LaunchGatherRows(const void* x, const int64_t* rows, int64_t m, int64_t row_bytes, void* out,
                              cudaStream_t stream);

// Writes k, v ([n, hkv, dh], bf16 or f32) into the bf16 paged caches of one layer
// ([num_blocks][block_size][hkv][dh], token-major blocks) at slots[i] = block * block_size + offset; slots < 0 are
// skipped (padding).
absl::Status LaunchWriteKv(const void* k, const void* v, DType kv_type, const int64_t* slots, int64_t n,
                           int64_t hkv, int64_t dh, int64_t block_size, void* k_cache, void* v_cache,
                           cudaStream_t stream);

}  // namespace sqa::cuda
