// A blocking grpc.health.v1 Check for the overall ("") status. Debian ships no generated health
// stubs, so the two tiny messages are encoded by hand over the generic stub.
#pragma once

#include <grpcpp/channel.h>
#include <grpcpp/support/byte_buffer.h>

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sqa {

// Whether an encoded grpc.health.v1.HealthCheckResponse says SERVING.
bool HealthResponseIsServing(const grpc::ByteBuffer& response);

// True for SERVING, false for any other status; an error when the call fails.
absl::StatusOr<bool> CheckHealthServing(const std::shared_ptr<grpc::Channel>& channel, absl::Duration timeout);

}  // namespace sqa
