// Bounded admission: at most `max_inflight` requests run, at most `max_queued` wait (FIFO); the
// rest are rejected (the caller answers RESOURCE_EXHAUSTED). Thread-safe.
#pragma once

#include <cstdint>
#include <list>

#include "absl/synchronization/mutex.h"

namespace sqa::router {

class AdmissionWaiter {
 public:
  virtual ~AdmissionWaiter() = default;
  // The waiter now holds a running slot (called from the thread that released one, without locks).
  virtual void OnAdmitted() = 0;
};

class Admission {
 public:
  enum class Result { kRun, kQueued, kRejected };
  Admission(int64_t max_inflight, int64_t max_queued)
      : max_inflight_(max_inflight), max_queued_(max_queued) {}

  // kRun: the caller holds a slot now. kQueued: OnAdmitted() will be called later (unless
  // Cancel() removes it first). kRejected: nothing held.
  Result Enter(AdmissionWaiter* w);
  // Removes a queued waiter; true if it was still queued (it then holds nothing).
  bool Cancel(AdmissionWaiter* w);
  // Gives back a running slot; admits the oldest waiter, if any.
  void Release();

  int64_t running() const;
  int64_t queued() const;

 private:
  const int64_t max_inflight_;
  const int64_t max_queued_;
  mutable absl::Mutex mu_;
  int64_t running_ ABSL_GUARDED_BY(mu_) = 0;
  std::list<AdmissionWaiter*> queue_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sqa::router
