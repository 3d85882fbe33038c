// The router's view of one worker group leader (the seam unit tests mock). A WorkerClient wraps
// the internal sqa.v1.Worker service plus grpc.health.v1 of one address; every method is
// asynchronous and thread-safe, and callbacks run on gRPC threads (they must not block).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/support/status.h"
#include "sqa/v1/worker.pb.h"

namespace sqa::router {

// Receives the events of one upstream Generate stream, in order: zero or more OnWorkerResponse,
// then exactly one OnWorkerDone. After OnWorkerResponse, nothing further is read (and OnWorkerDone
// cannot come) until the stream's ReadNext() or Cancel() is called: the proxy gets back-pressure
// without a queue, and must answer every response with one of the two.
class WorkerStreamObserver {
 public:
  virtual ~WorkerStreamObserver() = default;
  virtual void OnWorkerResponse(v1::GenerateResponse response) = 0;
  virtual void OnWorkerDone(const grpc::Status& status) = 0;
};

// Handle of a running upstream Generate stream. Thread-safe. Calls after OnDone are ignored.
class WorkerStream {
 public:
  virtual ~WorkerStream() = default;
  // Starts the call (separate from creation so the caller can store the handle first).
  virtual void Start() = 0;
  virtual void ReadNext() = 0;
  // Cancels the upstream call (TryCancel); OnDone follows (CANCELLED unless it already ended).
  virtual void Cancel() = 0;
};

template <typename T>
using RpcCallback = std::function<void(const grpc::Status&, T)>;

class WorkerClient {
 public:
  virtual ~WorkerClient() = default;
  virtual const std::string& address() const = 0;

  // Prepares a Generate stream (Start() sends it). `deadline` = absl::InfiniteFuture() for none. `observer` must
  // stay alive until its OnWorkerDone has returned.
  virtual std::shared_ptr<WorkerStream> Generate(const v1::GenerateRequest& request,
                                                 absl::Time deadline,
                                                 WorkerStreamObserver* observer) = 0;
  virtual void Encode(const v1::EncodeRequest& request, absl::Time deadline,
                      RpcCallback<v1::EncodeResponse> done) = 0;
  virtual void GetModelInfo(absl::Duration timeout, RpcCallback<v1::ModelInfo> done) = 0;
  virtual void GetLoad(absl::Duration timeout, RpcCallback<v1::LoadReport> done) = 0;
  // grpc.health.v1.Health/Check for the overall server (service ""): true when SERVING.
  virtual void CheckHealth(absl::Duration timeout, RpcCallback<bool> done) = 0;
};

// Creates clients for resolved addresses ("ip:port", "[v6]:port"). Thread-safe.
class WorkerClientFactory {
 public:
  virtual ~WorkerClientFactory() = default;
  virtual std::shared_ptr<WorkerClient> Create(const std::string& address) = 0;
};

struct GrpcWorkerClientOptions {
  int max_message_bytes = 64 << 20;
};

// The real implementation over a gRPC channel per address.
std::unique_ptr<WorkerClientFactory> NewGrpcWorkerClientFactory(GrpcWorkerClientOptions options);

}  // namespace sqa::router
