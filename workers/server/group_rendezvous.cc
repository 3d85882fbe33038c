#include "workers/server/group_rendezvous.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <thread>

#include "services/grpc_status.h"

namespace sqa {

grpc::Status GroupRendezvousService::StoreSet(grpc::ServerContext*, const v1::StoreSetRequest* req,
                                              v1::StoreSetResponse*) {
  if (req->key().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "store key is empty");
  std::vector<char> value(req->value().begin(), req->value().end());
  return ToGrpcStatus(store_->Set(req->key(), value));
}

grpc::Status GroupRendezvousService::StoreGet(grpc::ServerContext* ctx, const v1::StoreGetRequest* req,
                                              v1::StoreGetResponse* resp) {
  // Wait in short slices so a cancelled caller does not pin a server thread for long.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(std::max<int64_t>(req->timeout_ms(), 0));
  while (true) {
    auto v = store_->Get(req->key(), std::chrono::milliseconds(100));
    if (v.ok()) {
      resp->set_value(std::string(v->begin(), v->end()));
      return grpc::Status::OK;
    }
    if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "caller went away");
    if (std::chrono::steady_clock::now() >= deadline) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          "group key '" + req->key() + "' was not published within " + std::to_string(req->timeout_ms()) +
                              " ms; is every rank of the group started?");
    }
  }
}

GrpcRendezvousStore::GrpcRendezvousStore(const std::string& leader_address)
    : leader_(leader_address),
      stub_(v1::Group::NewStub(grpc::CreateChannel(leader_address, grpc::InsecureChannelCredentials()))) {}

absl::Status GrpcRendezvousStore::Set(const std::string& key, const std::vector<char>& value) {
  v1::StoreSetRequest req;
  req.set_key(key);
  req.set_value(std::string(value.begin(), value.end()));
  v1::StoreSetResponse resp;
  grpc::ClientContext ctx;
  ctx.set_wait_for_ready(true);  // the leader may still be starting
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  grpc::Status s = stub_->StoreSet(&ctx, req, &resp);
  if (!s.ok()) {
    return absl::UnavailableError("cannot publish '" + key + "' to group leader " + leader_ + ": " + s.error_message());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<char>> GrpcRendezvousStore::Get(const std::string& key, std::chrono::milliseconds timeout) {
  v1::StoreGetRequest req;
  req.set_key(key);
  req.set_timeout_ms(timeout.count());
  v1::StoreGetResponse resp;
  grpc::ClientContext ctx;
  ctx.set_wait_for_ready(true);
  ctx.set_deadline(std::chrono::system_clock::now() + timeout + std::chrono::seconds(1));
  grpc::Status s = stub_->StoreGet(&ctx, req, &resp);
  if (!s.ok()) {
    absl::Status st = FromGrpcStatus(s);
    return absl::Status(st.code(), "group leader " + leader_ + ": " + std::string(st.message()));
  }
  return std::vector<char>(resp.value().begin(), resp.value().end());
}

}  // namespace sqa
