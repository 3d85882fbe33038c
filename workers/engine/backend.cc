#include "workers/engine/backend.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "services/common/status.h"
#include "workers/engine/cpu/cpu_backend.h"
#ifdef SQA_HAVE_CUDA
#include "workers/engine/cuda/cuda_backend.h"
#endif

namespace sqa {

absl::StatusOr<std::unique_ptr<DeviceBuffer>> Backend::AllocTensor(std::vector<int64_t> shape, TensorView* view,
                                                                   DType dtype) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError(absl::StrCat("negative dimension in shape ", ShapeString(shape)));
    n *= d;
  }
  SQA_ASSIGN_OR_RETURN(std::unique_ptr<DeviceBuffer> buf, Allocate(static_cast<size_t>(n) * DTypeSize(dtype)));
  if (view != nullptr) {
    view->data = buf->data();
    view->dtype = dtype;
    view->space = MemSpace::kDevice;
    view->shape = std::move(shape);
  }
  return buf;
}

absl::StatusOr<DeviceKind> ParseDeviceKind(const std::string& s) {
  const std::string l = absl::AsciiStrToLower(s);
  if (l == "cpu") return DeviceKind::kCpu;
  if (l == "cuda" || l == "gpu") return DeviceKind::kCuda;
  if (l == "auto" || l.empty()) return DeviceKind::kAuto;
  return absl::InvalidArgumentError(absl::StrCat("unknown device \"", s, "\"; expected cpu, cuda or auto"));
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options) {
  switch (options.device) {
    case DeviceKind::kCpu:
      return CreateCpuBackend(options);
    case DeviceKind::kCuda:
#ifdef SQA_HAVE_CUDA
      return CreateCudaBackend(options);
#else
      return absl::FailedPreconditionError("this build has no CUDA backend (configure with -DSQA_ENABLE_CUDA=ON)");
#endif
    case DeviceKind::kAuto:
#ifdef SQA_HAVE_CUDA
      if (CudaDeviceCount() > 0) return CreateCudaBackend(options);
#endif
      return CreateCpuBackend(options);
  }
  return absl::InvalidArgumentError("unknown device kind");
}

}  // namespace sqa
