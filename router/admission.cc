#include "router/admission.h"

#include <algorithm>

namespace sqa::router {

Admission::Result Admission::Enter(AdmissionWaiter* w) {
  absl::MutexLock lock(&mu_);
  if (running_ < max_inflight_ && queue_.empty()) {
    ++running_;
    return Result::kRun;
  }
  if (static_cast<int64_t>(queue_.size()) < max_queued_) {
    queue_.push_back(w);
    return Result::kQueued;
  }
  return Result::kRejected;
}

bool Admission::Cancel(AdmissionWaiter* w) {
  absl::MutexLock lock(&mu_);
  auto it = std::find(queue_.begin(), queue_.end(), w);
  if (it == queue_.end()) return false;
  queue_.erase(it);
  return true;
}

void Admission::Release() {
  AdmissionWaiter* next = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (queue_.empty()) {
      --running_;
      return;
    }
    // The slot passes straight to the oldest waiter (running_ unchanged).
    next = queue_.front();
    queue_.pop_front();
  }
  next->OnAdmitted();
}

int64_t Admission::running() const {
  absl::MutexLock lock(&mu_);
  return running_;
}

int64_t Admission::queued() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(queue_.size());
}

}  // namespace sqa::router
