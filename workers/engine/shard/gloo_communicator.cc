// Gloo (TCP) implementation of Communicator for CPU ranks.
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>

#include "gloo/allgather.h"
#include "gloo/allreduce.h"
#include "gloo/barrier.h"
#include "gloo/broadcast.h"
#include "gloo/common/error.h"
#include "gloo/math.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/store.h"
#include "gloo/transport/tcp/device.h"
#include "services/common/status.h"
#include "workers/engine/shard/communicator.h"

namespace sqa {

struct InProcessStore::State {
  std::mutex mu;
  std::condition_variable cv;
  std::map<std::string, std::vector<char>> values;
};

InProcessStore::InProcessStore() : state_(new State) {}
InProcessStore::~InProcessStore() { delete state_; }

absl::Status InProcessStore::Set(const std::string& key, const std::vector<char>& value) {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->values[key] = value;
  }
  state_->cv.notify_all();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<char>> InProcessStore::Get(const std::string& key, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(state_->mu);
  if (!state_->cv.wait_for(lock, timeout, [&] { return state_->values.count(key) > 0; })) {
    return absl::DeadlineExceededError(absl::StrCat("rendezvous key '", key, "' not set within ", timeout.count(), " ms"));
  }
  return state_->values[key];
}

namespace {

// Adapts RendezvousStore to Gloo's store interface (which reports errors by throwing).
class GlooStoreAdapter : public gloo::rendezvous::Store {
 public:
  GlooStoreAdapter(RendezvousStore& store, std::string prefix, std::chrono::milliseconds timeout)
      : store_(store), prefix_(std::move(prefix)), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    absl::Status s = store_.Set(prefix_ + "/" + key, data);
    if (!s.ok()) throw gloo::IoException(std::string(s.message()));
  }
  std::vector<char> get(const std::string& key) override {
    auto v = store_.Get(prefix_ + "/" + key, timeout_);
    if (!v.ok()) throw gloo::IoException(std::string(v.status().message()));
    return *std::move(v);
  }
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    for (const auto& k : keys) {
      auto v = store_.Get(prefix_ + "/" + k, timeout);
      if (!v.ok()) throw gloo::IoException(std::string(v.status().message()));
    }
  }

 private:
  RendezvousStore& store_;
  std::string prefix_;
  std::chrono::milliseconds timeout_;
};

class GlooCommunicator : public Communicator {
 public:
  GlooCommunicator(std::shared_ptr<gloo::rendezvous::Context> ctx, std::chrono::milliseconds timeout)
      : ctx_(std::move(ctx)), timeout_(timeout) {}

  int rank() const override { return ctx_->rank; }
  int world_size() const override { return ctx_->size; }
  std::string backend_name() const override { return "gloo"; }
  bool ok() const override { return ok_; }
  const CollectiveStats& stats() const override { return stats_; }

  std::chrono::milliseconds timeout() const override { return timeout_; }

  absl::Status Broadcast(void* data, size_t bytes, int root, std::chrono::milliseconds timeout) override {
    return Run("broadcast", stats_.broadcast, bytes, [&] {
      gloo::BroadcastOptions opts(ctx_);
      opts.setOutput(static_cast<uint8_t*>(data), bytes);
      opts.setRoot(root);
      opts.setTag(NextTag());
      opts.setTimeout(timeout);
      gloo::broadcast(opts);
    });
  }

  absl::Status AllReduceSum(void* raw, size_t count, DType dtype) override {
    if (dtype != DType::kF32) {
      return absl::InvalidArgumentError(absl::StrCat("gloo all-reduce supports f32 only, got ", std::string(DTypeName(dtype))));
    }
    float* data = static_cast<float*>(raw);
    return Run("all-reduce", stats_.all_reduce, count * sizeof(float), [&] {
      gloo::AllreduceOptions opts(ctx_);
      opts.setOutput(data, count);
      opts.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
      opts.setTag(NextTag());
      opts.setTimeout(timeout_);
      gloo::allreduce(opts);
    });
  }

  absl::Status AllGather(const void* send, size_t bytes, void* recv) override {
    return Run("all-gather", stats_.all_gather, bytes, [&] {
      gloo::AllgatherOptions opts(ctx_);
      opts.setInput(const_cast<uint8_t*>(static_cast<const uint8_t*>(send)), bytes);
      opts.setOutput(static_cast<uint8_t*>(recv), bytes * static_cast<size_t>(ctx_->size));
      opts.setTag(NextTag());
      opts.setTimeout(timeout_);
      gloo::allgather(opts);
    });
  }

  absl::Status SendRecv(const void* send, size_t send_bytes, int to, void* recv, size_t recv_bytes,
                        int from) override {
    return Run("send/recv", stats_.send_recv, send_bytes, [&] {
      const uint64_t slot = NextTag();
      auto sbuf = ctx_->createUnboundBuffer(const_cast<void*>(send), send_bytes);
      auto rbuf = ctx_->createUnboundBuffer(recv, recv_bytes);
      rbuf->recv(from, slot);
      sbuf->send(to, slot);
      if (!sbuf->waitSend(timeout_)) throw gloo::IoException("send aborted");
      if (!rbuf->waitRecv(timeout_)) throw gloo::IoException("recv aborted");
    });
  }

  absl::Status Barrier() override {
    CollectiveStats::Entry unused;
    return Run("barrier", unused, 0, [&] {
      gloo::BarrierOptions opts(ctx_);
      opts.setTag(NextTag());
      opts.setTimeout(timeout_);
      gloo::barrier(opts);
    });
  }

 private:
  uint32_t NextTag() { return tag_++; }

  template <typename F>
  absl::Status Run(const char* what, CollectiveStats::Entry& entry, size_t bytes, F&& fn) {
    if (!ok_) return absl::FailedPreconditionError(absl::StrCat("communicator (rank ", rank(), ") is broken by an earlier error; re-form the group"));
    const auto t0 = std::chrono::steady_clock::now();
    try {
      fn();
    } catch (const gloo::IoException& e) {
      ok_ = false;
      return absl::UnavailableError(absl::StrCat("gloo ", what, " failed on rank ", rank(), " of ", world_size(),
                                                 " (a peer died or timed out after ", timeout_.count(), " ms): ", e.what()));
    } catch (const std::exception& e) {
      ok_ = false;
      return absl::InternalError(absl::StrCat("gloo ", what, " failed on rank ", rank(), ": ", e.what()));
    }
    entry.calls++;
    entry.bytes += bytes;
    entry.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return absl::OkStatus();
  }

  std::shared_ptr<gloo::rendezvous::Context> ctx_;
  std::chrono::milliseconds timeout_;
  uint32_t tag_ = 1;
  bool ok_ = true;
  CollectiveStats stats_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(const GlooOptions& options,
                                                                     RendezvousStore& store) {
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("invalid rank ", options.rank, " for world size ", options.world_size));
  }
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = options.interface_host;
    auto device = gloo::transport::tcp::CreateDevice(attr);
    auto ctx = std::make_shared<gloo::rendezvous::Context>(options.rank, options.world_size);
    ctx->setTimeout(options.timeout);
    GlooStoreAdapter adapter(store, options.prefix, options.timeout);
    ctx->connectFullMesh(adapter, device);
    return std::unique_ptr<Communicator>(new GlooCommunicator(std::move(ctx), options.timeout));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("gloo rendezvous failed for rank ", options.rank, " of ",
                                               options.world_size, ": ", e.what()));
  }
}

}  // namespace sqa
