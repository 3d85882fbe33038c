// absl::Status <-> grpc::Status at service boundaries. The canonical codes of absl and gRPC are the
// same numbers (OK=0 .. UNAUTHENTICATED=16), so the mapping is 1:1; the message is kept verbatim.
// Thread-safe (pure functions).
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace sqa {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace sqa
