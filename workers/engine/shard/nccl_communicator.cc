#include "workers/engine/shard/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "services/common/status.h"

namespace sqa {
namespace {

absl::Status NcclError(ncclResult_t r, const char* what, int rank) {
  return absl::UnavailableError(absl::StrCat("NCCL ", what, " failed on rank ", rank, ": ", ncclGetErrorString(r),
                                             " (", ncclGetLastError(nullptr) ? ncclGetLastError(nullptr) : "", ")"));
}
absl::Status CudaError(cudaError_t e, const char* what) {
  return absl::InternalError(absl::StrCat("CUDA error in ", what, ": ", cudaGetErrorString(e)));
}

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, cudaStream_t stream, int rank, int world, std::chrono::milliseconds timeout)
      : comm_(comm), stream_(stream), rank_(rank), world_(world), timeout_(timeout) {}
  ~NcclCommunicator() override {
    if (comm_) {
      if (ok_) {
        ncclCommFinalize(comm_);
        WaitComm().IgnoreError();
        ncclCommDestroy(comm_);
      } else {
        ncclCommAbort(comm_);
      }
    }
    if (stream_) cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string backend_name() const override { return "nccl"; }
  bool ok() const override { return ok_; }
  const CollectiveStats& stats() const override { return stats_; }

  std::chrono::milliseconds timeout() const override { return timeout_; }

  absl::Status Broadcast(void* data, size_t bytes, int root, std::chrono::milliseconds /*timeout*/) override {
    return Run("broadcast", stats_.broadcast, bytes,
               [&] { return ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_); });
  }
  absl::Status AllReduceSum(void* data, size_t count, DType dtype) override {
    ncclDataType_t t;
    switch (dtype) {
      case DType::kF32: t = ncclFloat32; break;
      case DType::kBF16: t = ncclBfloat16; break;
      case DType::kF16: t = ncclFloat16; break;
      default: return absl::InvalidArgumentError("NCCL all-reduce supports f32, bf16 and f16");
    }
    return Run("all-reduce", stats_.all_reduce, count * DTypeSize(dtype),
               [&] { return ncclAllReduce(data, data, count, t, ncclSum, comm_, stream_); });
  }
  absl::Status AllGather(const void* send, size_t bytes, void* recv) override {
    return Run("all-gather", stats_.all_gather, bytes,
               [&] { return ncclAllGather(send, recv, bytes, ncclUint8, comm_, stream_); });
  }
  absl::Status SendRecv(const void* send, size_t send_bytes, int to, void* recv, size_t recv_bytes,
                        int from) override {
    return Run("send/recv", stats_.send_recv, send_bytes, [&] {
      ncclResult_t r = ncclGroupStart();
      if (r != ncclSuccess) return r;
      r = ncclSend(send, send_bytes, ncclUint8, to, comm_, stream_);
      if (r != ncclSuccess && r != ncclInProgress) return r;
      r = ncclRecv(recv, recv_bytes, ncclUint8, from, comm_, stream_);
      if (r != ncclSuccess && r != ncclInProgress) return r;
      return ncclGroupEnd();
    });
  }
  absl::Status Barrier() override {
    float* d = nullptr;
    if (cudaError_t e = cudaMallocAsync(&d, sizeof(float), stream_); e != cudaSuccess) return CudaError(e, "barrier");
    cudaMemsetAsync(d, 0, sizeof(float), stream_);
    CollectiveStats::Entry unused;
    absl::Status s = Run("barrier", unused, 0,
                         [&] { return ncclAllReduce(d, d, 1, ncclFloat32, ncclSum, comm_, stream_); });
    cudaFreeAsync(d, stream_);
    return s;
  }

 private:
  // Waits for pending non-blocking NCCL work to be issued, bounded by the timeout.
  absl::Status WaitComm() {
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    ncclResult_t state = ncclInProgress;
    while (true) {
      ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
      if (r != ncclSuccess) return NcclError(r, "async error query", rank_);
      if (state != ncclInProgress) break;
      if (std::chrono::steady_clock::now() > deadline) return absl::DeadlineExceededError("NCCL call not issued in time");
      std::this_thread::yield();
    }
    if (state != ncclSuccess) return NcclError(state, "communicator", rank_);
    return absl::OkStatus();
  }

  template <typename F>
  absl::Status Run(const char* what, CollectiveStats::Entry& entry, size_t bytes, F&& issue) {
    if (!ok_) return absl::FailedPreconditionError(absl::StrCat("NCCL communicator (rank ", rank_, ") is broken by an earlier error; re-form the group"));
    const auto t0 = std::chrono::steady_clock::now();
    ncclResult_t r = issue();
    absl::Status s = (r == ncclSuccess || r == ncclInProgress) ? WaitComm() : NcclError(r, what, rank_);
    // Wait for completion on the stream, watching for asynchronous errors and the deadline.
    const auto deadline = t0 + timeout_;
    while (s.ok()) {
      cudaError_t q = cudaStreamQuery(stream_);
      if (q == cudaSuccess) break;
      if (q != cudaErrorNotReady) {
        s = CudaError(q, what);
        break;
      }
      ncclResult_t state = ncclSuccess;
      ncclCommGetAsyncError(comm_, &state);
      if (state != ncclSuccess && state != ncclInProgress) {
        s = NcclError(state, what, rank_);
        break;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        s = absl::UnavailableError(absl::StrCat("NCCL ", what, " on rank ", rank_, " of ", world_, " did not finish within ",
                                                timeout_.count(), " ms (a peer died or is stuck); communicator aborted"));
        break;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    if (!s.ok()) {
      ok_ = false;
      ncclCommAbort(comm_);
      comm_ = nullptr;
      return s;
    }
    entry.calls++;
    entry.bytes += bytes;
    entry.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return absl::OkStatus();
  }

  ncclComm_t comm_;
  cudaStream_t stream_;
  int rank_, world_;
  std::chrono::milliseconds timeout_;
  bool ok_ = true;
  CollectiveStats stats_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(const NcclOptions& options,
                                                                     RendezvousStore& store) {
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("invalid rank ", options.rank, " for world size ", options.world_size));
  }
  if (cudaError_t e = cudaSetDevice(options.gpu_index); e != cudaSuccess) return CudaError(e, "cudaSetDevice");
  ncclUniqueId id;
  const std::string key = options.prefix + "/unique_id";
  if (options.rank == 0) {
    if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) return NcclError(r, "ncclGetUniqueId", 0);
    std::vector<char> bytes(sizeof(id));
    std::memcpy(bytes.data(), &id, sizeof(id));
    SQA_RETURN_IF_ERROR(store.Set(key, bytes));
  } else {
    SQA_ASSIGN_OR_RETURN(std::vector<char> bytes, store.Get(key, options.timeout));
    if (bytes.size() != sizeof(id)) return absl::InternalError("NCCL unique id has the wrong size");
    std::memcpy(&id, bytes.data(), sizeof(id));
  }
  cudaStream_t stream = nullptr;
  if (cudaError_t e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking); e != cudaSuccess) {
    return CudaError(e, "cudaStreamCreateWithFlags");
  }
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRankConfig(&comm, options.world_size, id, options.rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    cudaStreamDestroy(stream);
    return NcclError(r, "ncclCommInitRankConfig", options.rank);
  }
  const auto deadline = std::chrono::steady_clock::now() + options.timeout;
  ncclResult_t state = ncclInProgress;
  while (state == ncclInProgress) {
    ncclCommGetAsyncError(comm, &state);
    if (std::chrono::steady_clock::now() > deadline) {
      ncclCommAbort(comm);
      cudaStreamDestroy(stream);
      return absl::UnavailableError(absl::StrCat("NCCL group of ", options.world_size, " did not form within ",
                                                 options.timeout.count(), " ms (rank ", options.rank, ")"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (state != ncclSuccess) {
    ncclCommAbort(comm);
    cudaStreamDestroy(stream);
    return NcclError(state, "communicator init", options.rank);
  }
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(comm, stream, options.rank, options.world_size, options.timeout));
}

}  // namespace sqa
