// The Communicator seam: the collectives a group of worker ranks needs, with two real
// implementations (Gloo over TCP for CPU ranks, NCCL for GPU ranks). Every operation is bounded by
// the communicator's timeout: a dead or stuck peer turns into an error (UNAVAILABLE or
// DEADLINE_EXCEEDED), never a hang. After an error the communicator is broken for good
// (ok() == false); the group must be re-formed.
//
// Thread-safety: not thread-safe. All ranks must issue the same collectives in the same order.
// Buffers: host memory for Gloo; for NCCL, device memory ordered on the communicator's stream.
#pragma once

#include <chrono>
#include <memory>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "workers/engine/model/tensor.h"

namespace sqa {

// Bytes and seconds per collective kind, for the worker's metrics.
struct CollectiveStats {
  struct Entry {
    uint64_t calls = 0;
    uint64_t bytes = 0;  // payload bytes this rank sent or contributed
    double seconds = 0;
  };
  Entry broadcast, all_reduce, all_gather, send_recv;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual std::string backend_name() const = 0;  // "gloo", "nccl"
  virtual bool ok() const = 0;

  // `bytes` from `root`'s buffer into every rank's buffer (in place).
  absl::Status Broadcast(void* data, size_t bytes, int root) { return Broadcast(data, bytes, root, timeout()); }
  // The same with its own bound (a follower waiting for the leader's next step plan waits long).
  virtual absl::Status Broadcast(void* data, size_t bytes, int root, std::chrono::milliseconds timeout) = 0;
  virtual std::chrono::milliseconds timeout() const = 0;
  // In-place element-wise sum of `count` values over all ranks. Gloo takes f32; NCCL f32, bf16, f16.
  virtual absl::Status AllReduceSum(void* data, size_t count, DType dtype) = 0;
  // Every rank contributes `bytes` from `send`; `recv` receives world_size * bytes, rank-major.
  virtual absl::Status AllGather(const void* send, size_t bytes, void* recv) = 0;
  // Sends `send_bytes` to rank `to` while receiving `recv_bytes` from rank `from` (a ring step).
  virtual absl::Status SendRecv(const void* send, size_t send_bytes, int to, void* recv, size_t recv_bytes,
                                int from) = 0;
  virtual absl::Status Barrier() = 0;

  virtual const CollectiveStats& stats() const = 0;
};

// A small key-value store for rendezvous (set once, get/wait with a timeout). The group leader
// serves one over gRPC; tests may use the in-process one.
class RendezvousStore {
 public:
  virtual ~RendezvousStore() = default;
  virtual absl::Status Set(const std::string& key, const std::vector<char>& value) = 0;
  // Blocks until `key` is set or `timeout` passes (DEADLINE_EXCEEDED).
  virtual absl::StatusOr<std::vector<char>> Get(const std::string& key, std::chrono::milliseconds timeout) = 0;
};

// An in-process store shared by threads (tests, single-host groups in one process).
class InProcessStore : public RendezvousStore {
 public:
  InProcessStore();
  ~InProcessStore() override;
  absl::Status Set(const std::string& key, const std::vector<char>& value) override;
  absl::StatusOr<std::vector<char>> Get(const std::string& key, std::chrono::milliseconds timeout) override;

 private:
  struct State;
  State* state_;
};

struct GlooOptions {
  int rank = 0;
  int world_size = 1;
  std::string interface_host = "127.0.0.1";  // address this rank listens on
  std::chrono::milliseconds timeout{30000};  // per operation, and for rendezvous
  std::string prefix = "gloo";               // key prefix in the store (one per group incarnation)
};

// Forms a full-mesh Gloo TCP context through `store`. The store must outlive the call only.
absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(const GlooOptions& options,
                                                                     RendezvousStore& store);

}  // namespace sqa
