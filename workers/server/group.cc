#include "workers/server/group.h"

#include <grpcpp/grpcpp.h>

#include <chrono>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "services/common/log.h"
#include "services/common/status.h"
#include "services/health_client.h"
#ifdef SQA_HAVE_NCCL
#include "workers/engine/shard/nccl_communicator.h"
#endif

namespace sqa::worker {

absl::StatusOr<std::unique_ptr<Group>> Group::Form(const GroupConfig& config) {
  auto g = std::unique_ptr<Group>(new Group());
  g->config_ = config;
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(config.timeout_s * 1000));
  if (config.rank == 0) {
    // The leader serves the rendezvous store on --leader's port.
    const size_t colon = config.leader.rfind(':');
    int port = 0;
    if (colon == std::string::npos || !absl::SimpleAtoi(config.leader.substr(colon + 1), &port)) {
      return absl::InvalidArgumentError(absl::StrCat("--leader '", config.leader, "' is not HOST:PORT"));
    }
    g->store_ = std::make_shared<InProcessStore>();
    g->rendezvous_service_ = std::make_unique<GroupRendezvousService>(g->store_);
    ServerOptions so;
    so.host = config.leader.substr(0, colon);
    so.port = port;
    SQA_ASSIGN_OR_RETURN(g->rendezvous_server_,
                         GrpcServer::Start(so, {{g->rendezvous_service_.get(), v1::Group::service_full_name()}}));
    g->rendezvous_server_->SetServing(true);
  } else {
    g->store_ = std::make_shared<GrpcRendezvousStore>(config.leader);
  }
  GlooOptions go;
  go.rank = config.rank;
  go.world_size = config.world;
  go.interface_host = config.host;
  go.timeout = timeout;
  SQA_ASSIGN_OR_RETURN(g->control_, CreateGlooCommunicator(go, *g->store_));
  if (config.gpu) {
#ifdef SQA_HAVE_NCCL
    NcclOptions no;
    no.rank = config.rank;
    no.world_size = config.world;
    no.gpu_index = config.gpu_index;
    no.timeout = timeout;
    SQA_ASSIGN_OR_RETURN(g->data_, CreateNcclCommunicator(no, *g->store_));
#else
    return absl::FailedPreconditionError("GPU groups need a build with NCCL (-DSQA_ENABLE_NCCL=ON)");
#endif
  }
  SQA_LOG(INFO) << "group formed: rank " << config.rank << " of " << config.world << " (leader " << config.leader
                << ", " << (g->data_ ? g->data_->backend_name() : g->control_->backend_name()) << ")";
  return g;
}

Group::~Group() {
  stop_ = true;
  if (monitor_.joinable()) monitor_.join();
  if (rendezvous_server_) rendezvous_server_->Shutdown(absl::Milliseconds(100));
}

absl::Status Group::PublishAddress(const std::string& address) {
  return store_->Set(absl::StrCat("addr/", config_.rank), std::vector<char>(address.begin(), address.end()));
}

void Group::StartMonitor(std::function<void(bool healthy)> on_change) {
  monitor_ = std::thread([this, on_change = std::move(on_change)] {
    std::vector<std::shared_ptr<grpc::Channel>> channels;
    std::vector<std::string> addresses;
    for (int r = 1; r < config_.world && !stop_; ++r) {
      auto a = store_->Get(absl::StrCat("addr/", r), std::chrono::milliseconds(static_cast<int64_t>(config_.timeout_s * 1000)));
      if (!a.ok()) {
        SQA_LOG(ERROR) << "rank " << r << " never published its address: " << a.status();
        on_change(false);
        return;
      }
      addresses.emplace_back(a->begin(), a->end());
      channels.push_back(grpc::CreateChannel(addresses.back(), grpc::InsecureChannelCredentials()));
    }
    bool reported = false;
    while (!stop_) {
      bool all = true;
      for (size_t i = 0; i < channels.size(); ++i) {
        absl::StatusOr<bool> serving = CheckHealthServing(channels[i], absl::Seconds(1));
        if (!serving.ok() || !*serving) {
          SQA_LOG(ERROR) << "group follower " << addresses[i] << " (rank " << i + 1 << ") is not serving: "
                         << (serving.ok() ? std::string("NOT_SERVING") : std::string(serving.status().message()));
          all = false;
        }
      }
      if (!all) {
        on_change(false);
        return;
      }
      if (!reported) {
        on_change(true);
        reported = true;
      }
      for (int i = 0; i < 10 && !stop_; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
}

}  // namespace sqa::worker
