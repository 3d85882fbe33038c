// Rendezvous for a worker group through its leader over gRPC. The leader (rank 0) serves
// sqa.v1.Group backed by an in-process store; followers reach it with GrpcRendezvousStore. Both
// sides then build their Communicator (Gloo or NCCL) from the same RendezvousStore interface.
#pragma once

#include <memory>
#include <string>

#include "proto/sqa/v1/group.grpc.pb.h"
#include "workers/engine/shard/communicator.h"

namespace sqa {

// Served by the leader. Thread-safe.
class GroupRendezvousService final : public v1::Group::Service {
 public:
  explicit GroupRendezvousService(std::shared_ptr<RendezvousStore> store) : store_(std::move(store)) {}
  grpc::Status StoreSet(grpc::ServerContext* ctx, const v1::StoreSetRequest* req, v1::StoreSetResponse* resp) override;
  grpc::Status StoreGet(grpc::ServerContext* ctx, const v1::StoreGetRequest* req, v1::StoreGetResponse* resp) override;

 private:
  std::shared_ptr<RendezvousStore> store_;
};

// A follower's view of the leader's store. Retries while the leader is not up yet, within the
// Get timeout. Thread-safe.
class GrpcRendezvousStore final : public RendezvousStore {
 public:
  explicit GrpcRendezvousStore(const std::string& leader_address);
  absl::Status Set(const std::string& key, const std::vector<char>& value) override;
  absl::StatusOr<std::vector<char>> Get(const std::string& key, std::chrono::milliseconds timeout) override;

 private:
  std::string leader_;
  std::unique_ptr<v1::Group::Stub> stub_;
};

}  // namespace sqa
