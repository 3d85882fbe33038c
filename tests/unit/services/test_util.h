// Raw clients for tests of the shared services: grpc.health.v1 Check, reflection ListServices
// (both through the generic stub with hand-encoded protobuf, since Debian ships no generated
// stubs for them), and an HTTP GET for /metrics.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/channel.h>

#include "absl/status/statusor.h"

namespace sqa::testing {

// Returns the ServingStatus enum value (1 = SERVING, 2 = NOT_SERVING) or the RPC error.
absl::StatusOr<int> HealthCheck(const std::shared_ptr<grpc::Channel>& channel, const std::string& service);
// Returns the raw ServerReflectionResponse bytes of a list_services request.
absl::StatusOr<std::string> ReflectionListServices(const std::shared_ptr<grpc::Channel>& channel);
// GET http://host:port/path; returns the body of a 200 answer.
absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& path);

}  // namespace sqa::testing
