// NCCL implementation of Communicator for GPU ranks (one GPU per rank). Buffers are device
// memory; every call is enqueued on the communicator's own non-blocking stream and waited for
// with a deadline: a peer that stops answering aborts the communicator (ncclCommAbort) and the
// call returns UNAVAILABLE instead of hanging.
#pragma once

#include <chrono>
#include <memory>

#include "absl/status/statusor.h"
#include "workers/engine/shard/communicator.h"

namespace sqa {

struct NcclOptions {
  int rank = 0;
  int world_size = 1;
  int gpu_index = 0;
  std::chrono::milliseconds timeout{60000};
  std::string prefix = "nccl";  // key of the unique id in the store
};

// Rank 0 makes the NCCL unique id and publishes it through `store`; the others read it.
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(const NcclOptions& options,
                                                                     RendezvousStore& store);

}  // namespace sqa
