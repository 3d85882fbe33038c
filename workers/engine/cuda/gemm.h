// cuBLASLt GEMM for the model's projections: out[n, out_features] = x[n, in] * W[out_features, in]^T
// with bf16 inputs, fp32 accumulation, and a bf16 or f32 output (f32 for the LM head's logits).
// Up to min(skinny_max_rows(), kSkinnyNarrowMaxRows) rows (decode) go to the skinny kernel of
// skinny_gemm.h when it applies, and from there up to kSkinnyStreamMaxRows to its stream form where
// UseStream (the backend's LinearMany takes the wide form up to skinny_max_rows() otherwise);
// otherwise the algorithm for each (shape, output type, pointer alignment) is chosen once by the
// cuBLASLt heuristic and cached. Not thread-safe: one per backend, used on the backend's stream.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <tuple>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "workers/engine/cuda/raii.h"
#include "workers/engine/cuda/skinny_gemm.h"
#include "workers/engine/model/tensor.h"

namespace sqa::cuda {

class LtGemm {
 public:
  static absl::StatusOr<LtGemm> Create(size_t workspace_bytes = size_t{32} << 20);
  LtGemm() = default;  // empty: Linear fails until assigned from Create()
  ~LtGemm();
  LtGemm(LtGemm&&) noexcept;
  LtGemm& operator=(LtGemm&&) noexcept;

  // x: bf16 [n, in]; w: bf16 [out_features, in]; out: out_type (bf16 or f32) [n, out_features].
  absl::Status Linear(const void* x, const void* w, void* out, DType out_type, int64_t n, int64_t in,
                      int64_t out_features, cudaStream_t stream);

  // Rows up to which the skinny kernel is used (0: always cuBLASLt; at most kSkinnyMaxRows; Linear
  // stops at kSkinnyNarrowMaxRows).
  void set_skinny_max_rows(int64_t rows) { skinny_max_rows_ = rows; }
  int64_t skinny_max_rows() const { return skinny_max_rows_; }
  // Where one weight of more than kSkinnyNarrowMaxRows rows takes the skinny kernel's stream form
  // (skinny_gemm.h; elsewhere cuBLASLt).
  void set_stream_mode(SkinnyStream m) { stream_mode_ = m; }
  SkinnyStream stream_mode() const { return stream_mode_; }
  // Whether x [n, in] times weights of these feature counts, in one launch, takes the stream form
  // under stream_mode().
  bool UseStream(int64_t n, int64_t in, absl::Span<const int64_t> out_features) const {
    if (stream_mode_ == SkinnyStream::kOff || n <= kSkinnyNarrowMaxRows || n > kSkinnyStreamMaxRows) return false;
    return stream_mode_ == SkinnyStream::kAll || SkinnyStreamPreferred(n, in, out_features, skinny_workspace());
  }
  // The skinny kernel's CTA shape (SkinnyWarps::kAuto unless a benchmark compares them).
  void set_skinny_warps(SkinnyWarps w) { skinny_warps_ = w; }
  SkinnyWarps skinny_warps() const { return skinny_warps_; }
  // Split-K scratch of the skinny kernel's wide form, for launches on this LtGemm's stream (the
  // backend's LinearMany).
  SkinnyWorkspace skinny_workspace() const;

 private:
  struct Plan;
  using Key = std::tuple<int64_t, int64_t, int64_t, int, int>;  // n, in, out, out_type, alignment
  absl::StatusOr<Plan*> GetPlan(const Key& key);

  LtHandle handle_;
  DeviceMemory workspace_;
  DeviceMemory skinny_ws_;  // kSkinnyPartialBytes of partials, then kSkinnyCounters ints (zeroed)
  std::map<Key, Plan*> plans_;
  int64_t skinny_max_rows_ = kSkinnyMaxRows;
  SkinnyStream stream_mode_ = SkinnyStream::kAuto;
  SkinnyWarps skinny_warps_ = SkinnyWarps::kAuto;
};

}  // namespace sqa::cuda
