// Test double of WorkerClient: a scripted "model" whose token at step s is a function of the
// prompt and s, so resumed streams can be checked for continuity, plus fault injection.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "router/worker_client.h"

namespace sqa::router::testing {

inline int32_t FakeToken(const v1::GenerateRequest& r, int64_t step) {
  int64_t sum = 0;
  for (int t : r.prompt_tokens()) sum += t;
  return static_cast<int32_t>((sum * 31 + step * 7 + 3) % 1000);
}

class FakeWorker;

class FakeStream final : public WorkerStream {
 public:
  FakeStream(FakeWorker* w, v1::GenerateRequest req, WorkerStreamObserver* obs)
      : worker_(w), req_(std::move(req)), obs_(obs) {}
  ~FakeStream() override {
    if (thread_.joinable()) thread_.join();
  }
  void Start() override;
  void ReadNext() override {
    absl::MutexLock l(&mu_);
    next_ = true;
  }
  void Cancel() override {
    absl::MutexLock l(&mu_);
    cancelled_ = true;
  }
  // Waits for ReadNext/Cancel; false when cancelled.
  bool WaitNext() {
    absl::MutexLock l(&mu_);
    mu_.Await(absl::Condition(+[](FakeStream* s) { return s->next_ || s->cancelled_; }, this));
    next_ = false;
    return !cancelled_;
  }
  bool cancelled() {
    absl::MutexLock l(&mu_);
    return cancelled_;
  }

 private:
  void Run();
  FakeWorker* worker_;
  v1::GenerateRequest req_;
  WorkerStreamObserver* obs_;
  absl::Mutex mu_;
  bool next_ = false;
  bool cancelled_ = false;
  std::thread thread_;
};

class FakeWorker final : public WorkerClient {
 public:
  FakeWorker(std::string address, int64_t max_context) : address_(std::move(address)) {
    load_.set_max_context_tokens(max_context);
    load_.set_admitting(true);
  }
  ~FakeWorker() override {
    std::lock_guard<std::mutex> l(mu_);
    streams_.clear();  // joins their threads
  }
  const std::string& address() const override { return address_; }

  std::shared_ptr<WorkerStream> Generate(const v1::GenerateRequest& request, absl::Time,
                                         WorkerStreamObserver* observer) override {
    auto s = std::make_shared<FakeStream>(this, request, observer);
    std::lock_guard<std::mutex> l(mu_);
    requests_.push_back(request);
    streams_.push_back(s);
    return s;
  }
  void Encode(const v1::EncodeRequest& request, absl::Time, RpcCallback<v1::EncodeResponse> done) override {
    v1::EncodeResponse r;
    r.add_values(static_cast<float>(request.prompt_tokens_size()));
    done(fail_before_first_.load() ? grpc::Status(grpc::UNAVAILABLE, "down") : grpc::Status::OK, r);
  }
  void GetModelInfo(absl::Duration, RpcCallback<v1::ModelInfo> done) override {
    v1::ModelInfo info;
    info.set_vocab_size(1000);
    done(grpc::Status::OK, info);
  }
  void GetLoad(absl::Duration, RpcCallback<v1::LoadReport> done) override {
    v1::LoadReport l;
    {
      std::lock_guard<std::mutex> g(mu_);
      l = load_;
    }
    done(serving_.load() ? grpc::Status::OK : grpc::Status(grpc::UNAVAILABLE, "down"), l);
  }
  void CheckHealth(absl::Duration, RpcCallback<bool> done) override {
    done(serving_.load() ? grpc::Status::OK : grpc::Status(grpc::UNAVAILABLE, "down"), serving_.load());
  }

  void set_serving(bool s) { serving_ = s; }
  void set_load_tokens(int64_t t) {
    std::lock_guard<std::mutex> g(mu_);
    load_.set_running_tokens(t);
  }
  std::vector<v1::GenerateRequest> requests() {
    std::lock_guard<std::mutex> l(mu_);
    return requests_;
  }

  // Fault injection: fail with UNAVAILABLE before any token / after emitting this many tokens.
  std::atomic<bool> fail_before_first_{false};
  std::atomic<int> fail_after_tokens_{-1};
  std::atomic<int> tokens_per_message_{1};
  std::atomic<int> step_delay_ms_{0};

 private:
  std::string address_;
  std::atomic<bool> serving_{true};
  std::mutex mu_;
  v1::LoadReport load_;
  std::vector<v1::GenerateRequest> requests_;
  std::vector<std::shared_ptr<FakeStream>> streams_;
  friend class FakeStream;
};

inline void FakeStream::Start() { thread_ = std::thread([this] { Run(); }); }

inline void FakeStream::Run() {
  if (worker_->fail_before_first_.load()) {
    obs_->OnWorkerDone(grpc::Status(grpc::UNAVAILABLE, "connection refused"));
    return;
  }
  int64_t step = req_.resume_tokens_size();
  int emitted = 0;
  while (step < req_.max_tokens()) {
    if (worker_->step_delay_ms_.load() > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(worker_->step_delay_ms_.load()));
    }
    if (cancelled()) {
      obs_->OnWorkerDone(grpc::Status(grpc::CANCELLED, "cancelled"));
      return;
    }
    if (worker_->fail_after_tokens_.load() >= 0 && emitted >= worker_->fail_after_tokens_.load()) {
      obs_->OnWorkerDone(grpc::Status(grpc::UNAVAILABLE, "Socket closed"));
      return;
    }
    v1::GenerateResponse r;
    for (int k = 0; k < worker_->tokens_per_message_.load() && step < req_.max_tokens(); ++k) {
      r.add_tokens(FakeToken(req_, step++));
      ++emitted;
    }
    if (step >= req_.max_tokens()) {
      r.set_finish_reason(v1::FINISH_REASON_LENGTH);
      r.mutable_usage()->set_completion_tokens(static_cast<int>(step));
    }
    obs_->OnWorkerResponse(std::move(r));
    if (!WaitNext()) {
      obs_->OnWorkerDone(grpc::Status(grpc::CANCELLED, "cancelled"));
      return;
    }
  }
  obs_->OnWorkerDone(grpc::Status::OK);
}

class FakeFactory final : public WorkerClientFactory {
 public:
  std::shared_ptr<WorkerClient> Create(const std::string& address) override {
    std::lock_guard<std::mutex> l(mu_);
    auto it = workers.find(address);
    if (it != workers.end()) return it->second;
    auto w = std::make_shared<FakeWorker>(address, default_context);
    workers[address] = w;
    return w;
  }
  std::shared_ptr<FakeWorker> Get(const std::string& address) {
    std::lock_guard<std::mutex> l(mu_);
    return workers.at(address);
  }
  void Put(std::shared_ptr<FakeWorker> w) {
    std::lock_guard<std::mutex> l(mu_);
    workers[w->address()] = std::move(w);
  }
  int64_t default_context = 4096;

 private:
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<FakeWorker>> workers;
};

}  // namespace sqa::router::testing
