// Forming and watching a worker group (ARCHITECTURE.md §4). Rank 0 serves the group rendezvous
// (sqa.v1.Group) at --leader; every rank builds its communicators through that store: Gloo for the
// host-side step plans (and the activations on CPU), NCCL for the activations of GPU ranks.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "services/server.h"
#include "workers/engine/shard/communicator.h"
#include "workers/server/group_rendezvous.h"

namespace sqa::worker {

struct GroupConfig {
  int rank = 0;
  int world = 1;
  std::string leader;             // host:port of rank 0's rendezvous service
  std::string host = "127.0.0.1"; // address this rank's collectives listen on
  double timeout_s = 60;
  bool gpu = false;               // activations through NCCL
  int gpu_index = 0;
};

class Group {
 public:
  // Blocks until every rank has joined (or the timeout passes: UNAVAILABLE / DEADLINE_EXCEEDED).
  static absl::StatusOr<std::unique_ptr<Group>> Form(const GroupConfig& config);
  ~Group();

  Communicator* control() { return control_.get(); }
  Communicator* data() { return data_ ? data_.get() : control_.get(); }
  RendezvousStore& store() { return *store_; }

  // Follower: tells the leader where its health service answers.
  absl::Status PublishAddress(const std::string& address);
  // Leader: checks every follower's grpc.health.v1 once a second; `on_change(false)` when one stops
  // answering SERVING (it stays false: a broken group is not re-formed), `on_change(true)` once all
  // followers have answered after start-up.
  void StartMonitor(std::function<void(bool healthy)> on_change);

 private:
  Group() = default;
  GroupConfig config_;
  std::shared_ptr<RendezvousStore> store_;
  std::unique_ptr<GroupRendezvousService> rendezvous_service_;
  std::unique_ptr<GrpcServer> rendezvous_server_;
  std::unique_ptr<Communicator> control_, data_;
  std::atomic<bool> stop_{false};
  std::thread monitor_;
};

}  // namespace sqa::worker
