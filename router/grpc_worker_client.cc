// gRPC implementation of WorkerClient: callback API for every call, one channel per address.
#include <mutex>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "services/health_client.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/client_callback.h"
#include "router/worker_client.h"
#include "sqa/v1/worker.grpc.pb.h"

namespace sqa::router {
namespace {

void SetDeadline(grpc::ClientContext* ctx, absl::Time deadline) {
  if (deadline != absl::InfiniteFuture()) ctx->set_deadline(absl::ToChronoTime(deadline));
}

// One upstream Generate stream. Owns itself through `self_` until OnDone has been delivered.
class GenerateReactor final : public grpc::ClientReadReactor<v1::GenerateResponse>,
                              public WorkerStream {
 public:
  GenerateReactor(WorkerStreamObserver* observer) : observer_(observer) {}

  void Prepare(std::shared_ptr<grpc::Channel> channel, v1::Worker::Stub* stub,
               const v1::GenerateRequest& request, absl::Time deadline,
               std::shared_ptr<GenerateReactor> self) {
    self_ = std::move(self);
    channel_ = std::move(channel);
    SetDeadline(&ctx_, deadline);
    request_ = request;
    stub_ = stub;
  }
  void Start() override {
    stub_->async()->Generate(&ctx_, &request_, this);
    StartRead(&response_);
    StartCall();
  }

  // A hold is taken while a response waits in the proxy, so OnDone cannot run before the proxy has
  // answered with ReadNext() or Cancel().
  void ReadNext() override {
    absl::MutexLock lock(&mu_);
    if (!held_) return;
    held_ = false;
    StartRead(&response_);
    RemoveHold();
  }
  void Cancel() override {
    ctx_.TryCancel();
    absl::MutexLock lock(&mu_);
    if (!held_) return;
    held_ = false;
    RemoveHold();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;
    {
      absl::MutexLock lock(&mu_);
      held_ = true;
      AddHold();
    }
    v1::GenerateResponse response = std::move(response_);
    response_.Clear();
    observer_->OnWorkerResponse(std::move(response));
  }
  void OnDone(const grpc::Status& status) override {
    observer_->OnWorkerDone(status);
    // Drop the self-reference last: the handle held by the proxy may be the only one left.
    std::shared_ptr<GenerateReactor> self = std::move(self_);
  }

 private:
  WorkerStreamObserver* observer_;
  std::shared_ptr<grpc::Channel> channel_;  // keeps the stub's channel alive for this call
  v1::Worker::Stub* stub_ = nullptr;
  v1::GenerateRequest request_;
  grpc::ClientContext ctx_;
  v1::GenerateResponse response_;
  absl::Mutex mu_;
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<GenerateReactor> self_;
};

template <typename Resp>
struct UnaryCall {
  grpc::ClientContext ctx;
  Resp response;
  RpcCallback<Resp> done;
};

class GrpcWorkerClient final : public WorkerClient {
 public:
  GrpcWorkerClient(std::string address, const GrpcWorkerClientOptions& options)
      : address_(std::move(address)) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(options.max_message_bytes);
    args.SetMaxSendMessageSize(options.max_message_bytes);
    // Keep a dead worker from looking alive for long: detect broken connections quickly.
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    // Reconnect promptly when a restarted worker comes back on the same address.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    channel_ = grpc::CreateCustomChannel(address_, grpc::InsecureChannelCredentials(), args);
    stub_ = v1::Worker::NewStub(channel_);
    generic_ = std::make_unique<grpc::GenericStub>(channel_);
  }

  const std::string& address() const override { return address_; }

  std::shared_ptr<WorkerStream> Generate(const v1::GenerateRequest& request, absl::Time deadline,
                                         WorkerStreamObserver* observer) override {
    auto reactor = std::make_shared<GenerateReactor>(observer);
    reactor->Prepare(channel_, stub_.get(), request, deadline, reactor);
    return reactor;
  }

  void Encode(const v1::EncodeRequest& request, absl::Time deadline,
              RpcCallback<v1::EncodeResponse> done) override {
    auto* call = new UnaryCall<v1::EncodeResponse>{};
    call->done = std::move(done);
    SetDeadline(&call->ctx, deadline);
    stub_->async()->Encode(&call->ctx, &request, &call->response, [call](grpc::Status s) {
      call->done(s, std::move(call->response));
      delete call;
    });
  }

  void GetModelInfo(absl::Duration timeout, RpcCallback<v1::ModelInfo> done) override {
    auto* call = new UnaryCall<v1::ModelInfo>{};
    call->done = std::move(done);
    SetDeadline(&call->ctx, absl::Now() + timeout);
    v1::GetModelInfoRequest request;
    stub_->async()->GetModelInfo(&call->ctx, &request, &call->response, [call](grpc::Status s) {
      call->done(s, std::move(call->response));
      delete call;
    });
  }

  void GetLoad(absl::Duration timeout, RpcCallback<v1::LoadReport> done) override {
    auto* call = new UnaryCall<v1::LoadReport>{};
    call->done = std::move(done);
    SetDeadline(&call->ctx, absl::Now() + timeout);
    v1::GetLoadRequest request;
    stub_->async()->GetLoad(&call->ctx, &request, &call->response, [call](grpc::Status s) {
      call->done(s, std::move(call->response));
      delete call;
    });
  }

  // The health messages are encoded by hand (HealthCheckRequest{service=""} is empty;
  // HealthCheckResponse is field 1, varint) because Debian ships no generated health stubs.
  void CheckHealth(absl::Duration timeout, RpcCallback<bool> done) override {
    struct Call {
      grpc::ClientContext ctx;
      grpc::ByteBuffer request;
      grpc::ByteBuffer response;
      RpcCallback<bool> done;
    };
    auto* call = new Call{};
    call->done = std::move(done);
    SetDeadline(&call->ctx, absl::Now() + timeout);
    grpc::Slice empty;
    call->request = grpc::ByteBuffer(&empty, 1);
    generic_->UnaryCall(&call->ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                        &call->request, &call->response, [call](grpc::Status s) {
                          const bool serving = s.ok() && HealthResponseIsServing(call->response);
                          call->done(s, serving);
                          delete call;
                        });
  }

 private:
  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Worker::Stub> stub_;
  std::unique_ptr<grpc::GenericStub> generic_;
};

class GrpcWorkerClientFactory final : public WorkerClientFactory {
 public:
  explicit GrpcWorkerClientFactory(GrpcWorkerClientOptions options) : options_(options) {}
  std::shared_ptr<WorkerClient> Create(const std::string& address) override {
    return std::make_shared<GrpcWorkerClient>(address, options_);
  }

 private:
  GrpcWorkerClientOptions options_;
};

}  // namespace

std::unique_ptr<WorkerClientFactory> NewGrpcWorkerClientFactory(GrpcWorkerClientOptions options) {
  return std::make_unique<GrpcWorkerClientFactory>(options);
}

}  // namespace sqa::router
