#include "workers/engine/cuda/gemm.h"

#include <algorithm>
#include <bit>
#include <utility>

#include "absl/strings/str_cat.h"
#include "services/common/status.h"
#include "workers/engine/cuda/cuda_check.h"
#include "workers/engine/cuda/skinny_gemm.h"

namespace sqa::cuda {

// Column-major view of the row-major product: out^T[out, n] = W^T'[out, in] * x^T[in, n], i.e.
// cuBLASLt with A = W (stored [in, out] column-major, ld = in, op T), B = x ([in, n], ld = in,
// op N), D = out ([out, n], ld = out).
struct LtGemm::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

absl::StatusOr<LtGemm> LtGemm::Create(size_t workspace_bytes) {
  LtGemm g;
  SQA_ASSIGN_OR_RETURN(g.handle_, LtHandle::Create());
  SQA_ASSIGN_OR_RETURN(g.workspace_, DeviceMemory::Allocate(workspace_bytes));
  const size_t counter_bytes = static_cast<size_t>(kSkinnyCounters) * sizeof(int);
  SQA_ASSIGN_OR_RETURN(g.skinny_ws_, DeviceMemory::Allocate(kSkinnyPartialBytes + counter_bytes));
  SQA_GPU_RETURN_IF_ERROR(
      cudaMemset(static_cast<char*>(g.skinny_ws_.get()) + kSkinnyPartialBytes, 0, counter_bytes));
  SQA_GPU_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return g;
}

SkinnyWorkspace LtGemm::skinny_workspace() const {
  if (!skinny_ws_.get()) return {};
  return {skinny_ws_.get(), kSkinnyPartialBytes,
          reinterpret_cast<int*>(static_cast<char*>(skinny_ws_.get()) + kSkinnyPartialBytes), kSkinnyCounters};
}

LtGemm::~LtGemm() {
  for (auto& [k, p] : plans_) delete p;
}
LtGemm::LtGemm(LtGemm&& o) noexcept
    : handle_(std::move(o.handle_)), workspace_(std::move(o.workspace_)), skinny_ws_(std::move(o.skinny_ws_)),
      plans_(std::move(o.plans_)),
      skinny_max_rows_(o.skinny_max_rows_), stream_mode_(o.stream_mode_), skinny_warps_(o.skinny_warps_) {
  o.plans_.clear();
}
LtGemm& LtGemm::operator=(LtGemm&& o) noexcept {
  if (this != &o) {
    for (auto& [k, p] : plans_) delete p;
    handle_ = std::move(o.handle_);
    workspace_ = std::move(o.workspace_);
    skinny_ws_ = std::move(o.skinny_ws_);
    plans_ = std::move(o.plans_);
    skinny_max_rows_ = o.skinny_max_rows_;
    stream_mode_ = o.stream_mode_;
    skinny_warps_ = o.skinny_warps_;
    o.plans_.clear();
  }
  return *this;
}

absl::StatusOr<LtGemm::Plan*> LtGemm::GetPlan(const Key& key) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  const auto [n, in, out, out_type_i, alignment] = key;
  const cudaDataType_t d_type = static_cast<DType>(out_type_i) == DType::kF32 ? CUDA_R_32F : CUDA_R_16BF;
  auto plan = std::make_unique<Plan>();
  SQA_GPU_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
  SQA_GPU_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof(op_t)));
  SQA_GPU_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof(op_n)));
  SQA_GPU_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->a, CUDA_R_16BF, in, out, in));
  SQA_GPU_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->b, CUDA_R_16BF, in, n, in));
  SQA_GPU_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->d, d_type, out, n, out));

  cublasLtMatmulPreference_t pref = nullptr;
  SQA_GPU_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = workspace_.size();
  const uint32_t align = static_cast<uint32_t>(alignment);
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                           sizeof(ws));
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof(align));
  }
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulAlgoGetHeuristic(handle_.get(), plan->desc, plan->a, plan->b, plan->d, plan->d, pref, 1,
                                        &result, &found);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  SQA_GPU_RETURN_IF_ERROR(st);
  if (found == 0) {
    return absl::InternalError(absl::StrCat("cuBLASLt found no algorithm for GEMM n=", n, " in=", in, " out=", out,
                                            " out_type=", DTypeStr(static_cast<DType>(out_type_i))));
  }
  plan->algo = result.algo;
  Plan* p = plan.release();
  plans_.emplace(key, p);
  return p;
}

absl::Status LtGemm::Linear(const void* x, const void* w, void* out, DType out_type, int64_t n, int64_t in,
                            int64_t out_features, cudaStream_t stream) {
  if (n == 0 || out_features == 0) return absl::OkStatus();
  if (!handle_) return absl::FailedPreconditionError("LtGemm used before Create()");
  if (out_type != DType::kF32 && out_type != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("Linear: output dtype ", DTypeStr(out_type),
                                                   " unsupported on CUDA (bf16 or f32)"));
  }
  // One weight: the skinny kernel's narrow form up to kSkinnyNarrowMaxRows rows, its stream form
  // from there where UseStream, otherwise cuBLASLt. (The wide form loses to cuBLASLt on one
  // weight, skinny_gemm.cu.)
  if (n <= std::min(skinny_max_rows_, kSkinnyNarrowMaxRows) && SkinnyGemmApplies(x, w, out, out_type, n, in, out_features)) {
    return LaunchSkinnyGemm(x, w, out, out_type, n, in, out_features, stream, skinny_warps_);
  }
  if (UseStream(n, in, absl::MakeConstSpan(&out_features, 1)) &&
      SkinnyStreamApplies(x, w, out, out_type, n, in, out_features)) {
    const SkinnyOutput o{w, out, out_features};
    return LaunchSkinnyStream(x, n, in, absl::MakeConstSpan(&o, 1), out_type, stream, skinny_workspace());
  }
  // The largest power of two (<= 256) dividing every pointer: what the algorithm may assume.
  uintptr_t bits = reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(w) |
                   reinterpret_cast<uintptr_t>(out) | uintptr_t{256};
  const int alignment = static_cast<int>(bits & (~bits + 1));
  SQA_ASSIGN_OR_RETURN(Plan * plan, GetPlan(Key{n, in, out_features, static_cast<int>(out_type), alignment}));
  const float alpha = 1.f, beta = 0.f;
  SQA_GPU_RETURN_IF_ERROR(cublasLtMatmul(handle_.get(), plan->desc, &alpha, w, plan->a, x, plan->b, &beta, out,
                                         plan->d, out, plan->d, &plan->algo, workspace_.get(), workspace_.size(),
                                         stream));
  return absl::OkStatus();
}

}  // namespace sqa::cuda
