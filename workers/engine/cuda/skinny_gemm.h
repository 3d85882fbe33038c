// Skinny GEMM for decode-sized inputs: out[n, out_features] = x[n, in] * W[out_features, in]^T
// for n <= kSkinnyMaxRows, bf16 x and W, fp32 sums, bf16 or f32 out. With so few rows the product
// is a read of W; cuBLASLt's heuristic picks tiles that leave most SMs idle for these shapes
// (decode GEMMs of the 1b preset ran at about 1.4 TB/s), this kernel spreads W over every SM.
// Up to kSkinnyNarrowMaxRows rows the narrow form runs (16 features a CTA, x straight from
// global memory). LaunchSkinnyGemmMany also takes up to kSkinnyMaxRows, in the wide form (64
// features a CTA sharing one copy of x, K split over up to eight CTAs whose partial sums meet in a
// SkinnyWorkspace): one launch for q, k and v beats three cuBLASLt launches there,
// but one weight alone runs faster on cuBLASLt (skinny_gemm.cu), so LtGemm::Linear and
// LaunchSkinnySwiGlu stop at kSkinnyNarrowMaxRows. The stream form (below: TMA and wgmma, 9..
// kSkinnyStreamMaxRows rows) beats cuBLASLt on large weights with few K splits; the engine uses it
// where SkinnyStreamPreferred (gate and up in one launch, the LM head).
// LtGemm::Linear calls it when SkinnyGemmApplies; the CUDA backend's LinearMany and LinearSwiGlu
// call the multi-weight forms below (q/k/v in one launch; gate, up and SwiGLU in one).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "workers/engine/model/tensor.h"

namespace sqa::cuda {

inline constexpr int64_t kSkinnyMaxRows = 32;
inline constexpr int64_t kSkinnyNarrowMaxRows = 8;
inline constexpr int kSkinnyMaxSegments = 3;  // weights sharing x in one launch (q, k, v)
inline constexpr int64_t kSkinnyStreamMaxRows = 64;

// Scratch of the wide form's split K: fp32 partial sums and one arrival counter per 64-feature
// tile (zeroed once when allocated; each launch leaves them zero). One per stream: launches that
// share it must run one after another (a decode step's kernels do, each waiting for the one
// before). Empty (or too small for a launch): that launch does not split K, which is correct but
// slower; LinearMany and Linear then may no longer agree to the last bit.
struct SkinnyWorkspace {
  void* partials = nullptr;
  size_t partial_bytes = 0;
  int* counters = nullptr;
  int64_t counter_count = 0;
};
// What LtGemm allocates: enough for the 1b preset's and 7B-class decode GEMMs at 32 rows.
inline constexpr size_t kSkinnyPartialBytes = size_t{16} << 20;
inline constexpr int64_t kSkinnyCounters = 65536;

// CTA shape: kAuto runs 16-warp CTAs (one per SM) when a launch has no more CTAs than the GPU has
// SMs and K is deeper than 8 warps load in one round (more than 2048), 8-warp CTAs (two per SM)
// otherwise; k8 and k16 force one (benchmarks). The two sum K in different orders: the last bits
// of a result can depend on the shape chosen (LinearMany and Linear agree to the last bit while
// they choose alike: always, for K <= 2048).
enum class SkinnyWarps { kAuto, k8, k16 };

// n in 1..kSkinnyMaxRows, in a multiple of 8, x and w 16-byte aligned, out bf16 or f32 and aligned.
// The wide form's sums (n > kSkinnyNarrowMaxRows) are split along K by a count that depends only
// on each weight's shape and the GPU's SM count, so a weight's result does not depend on the other
// weights of its launch.
bool SkinnyGemmApplies(const void* x, const void* w, const void* out, DType out_type, int64_t n, int64_t in,
                       int64_t out_features);

absl::Status LaunchSkinnyGemm(const void* x, const void* w, void* out, DType out_type, int64_t n, int64_t in,
                              int64_t out_features, cudaStream_t stream, SkinnyWarps warps = SkinnyWarps::kAuto,
                              const SkinnyWorkspace& ws = {});

// One launch for up to kSkinnyMaxSegments weights of the same x: outs[i].out = x * outs[i].w^T.
struct SkinnyOutput {
  const void* w;
  void* out;
  int64_t out_features;
};
absl::Status LaunchSkinnyGemmMany(const void* x, int64_t n, int64_t in, absl::Span<const SkinnyOutput> outs,
                                  DType out_type, cudaStream_t stream, SkinnyWarps warps = SkinnyWarps::kAuto,
                                  const SkinnyWorkspace& ws = {});

// out = silu(x * w_gate^T) * (x * w_up^T), bf16 [n, inter], gate and up rounded to bf16 before
// the product (as Linear, Linear, SwiGlu would): one launch, no gate/up buffers. n in
// 1..kSkinnyNarrowMaxRows.
absl::Status LaunchSkinnySwiGlu(const void* x, const void* w_gate, const void* w_up, void* out, int64_t n, int64_t in,
                                int64_t inter, cudaStream_t stream, SkinnyWarps warps = SkinnyWarps::kAuto);

// The stream form (skinny_gemm.cu): W and x through a shared-memory ring filled by TMA, 128
// features a CTA, K split as the wide form splits it (the same workspace). For 1..
// kSkinnyStreamMaxRows rows (meant for 9 and more: the narrow form is faster below), in a
// multiple of 8, x and w 16-byte aligned; up to kSkinnyMaxSegments weights of one x in one launch.
// A weight's split plan depends only on its shape, so its result does not depend on the other
// weights of its launch.
bool SkinnyStreamApplies(const void* x, const void* w, const void* out, DType out_type, int64_t n, int64_t in,
                         int64_t out_features);
absl::Status LaunchSkinnyStream(const void* x, int64_t n, int64_t in, absl::Span<const SkinnyOutput> outs,
                                DType out_type, cudaStream_t stream, const SkinnyWorkspace& ws);
// Where decode GEMMs of more than kSkinnyNarrowMaxRows rows take the stream form: nowhere, where
// SkinnyStreamPreferred (the default), or wherever it applies (tests, benchmarks).
enum class SkinnyStream { kOff, kAuto, kAll };
inline constexpr int64_t kSkinnyStreamPreferredMaxRows = 32;
inline constexpr int kStreamPreferredMaxSplits = 3;
// Whether the stream form is the faster choice for one launch over these weights of one x
// (SkinnyStream::kAuto): 9..kSkinnyStreamPreferredMaxRows rows, every weight's plan splitting K at
// most kStreamPreferredMaxSplits ways, and at least 1.5 CTAs per SM in all. Measured on the H200
// (bench/results/gpu_gemm.md, bench/gpu/e2e/NOTES.md session 15): the form beats cuBLASLt where
// each CTA streams many stages with little to merge and the launch fills the SMs twice (the MLP's
// gate and up in one launch, about 1.1x; the LM head, up to 1.08x). It loses where the plan splits
// K many ways (weights of few 128-feature tiles: every split CTA's fixed cost and the merge of the
// splits, which one CTA per tile reads, grow with the rows), and on one 5632-feature weight alone
// (one CTA per SM, about 0.9x).
bool SkinnyStreamPreferred(int64_t n, int64_t in, absl::Span<const int64_t> out_features, const SkinnyWorkspace& ws);

}  // namespace sqa::cuda
