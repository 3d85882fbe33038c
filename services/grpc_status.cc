#include "services/grpc_status.h"

#include <string>

namespace sqa {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(static_cast<int>(status.code())),
                      std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  const int code = static_cast<int>(status.error_code());
  // Codes outside the canonical range (never produced by gRPC itself) become UNKNOWN.
  const absl::StatusCode c = (code > 0 && code <= 16) ? static_cast<absl::StatusCode>(code)
                                                      : absl::StatusCode::kUnknown;
  return absl::Status(c, status.error_message());
}

}  // namespace sqa
